"""Real client, browser (issue #6): MiniLM in headless Chromium on WebGPU (SwiftShader) and wasm.

The page is served from 127.0.0.1 with COOP/COEP; every other origin is blocked and recorded. WebGPU
runs the quick subset (SwiftShader costs ~4 s per call), wasm every golden case.
"""

from __future__ import annotations

from modelport.clients.compare import FP32_VS_ORT
from modelport.thresholds import THRESHOLDS


def _check_against_table(v: dict) -> None:
    t, m = THRESHOLDS[v["precision"]], v["metrics"]
    assert v["verdict"] == "pass", (v["variant"], v["failures"])
    if t.max_abs is not None:
        assert m["tokens_max_abs"] <= t.max_abs and m["pooled_max_abs"] <= t.max_abs
    if t.cos_min is not None:
        assert m["cos_min"] >= t.cos_min
    if m["top5_mean"] is not None:  # a full run: the set-level gates apply too
        assert t.cos_mean is None or m["cos_mean"] >= t.cos_mean
        assert t.top5_mean is None or m["top5_mean"] >= t.top5_mean


def test_webgpu_runs_fp32_and_q4_on_swiftshader(chromium_clients: dict) -> None:
    gpu = chromium_clients["chromium-webgpu"]
    adapter = gpu["environment"]["adapter"]
    assert adapter["available"] and adapter["architecture"] == "swiftshader"
    assert gpu["environment"]["crossOriginIsolated"] is True
    for name in ("fp32", "q4"):
        v = gpu["variants"][name]
        _check_against_table(v)
        assert v["cases"] == 4 and any("neither is gated" in n for n in v["notes"])
    assert gpu["variants"]["fp32"]["vs_python_ort"]["pooled_max_abs"] <= FP32_VS_ORT
    assert gpu["tokenizer"]["status"] == "pass"  # the quick subset has no over-long input
    assert gpu["status"] == "pass"


def test_webgpu_fp16_is_reported_not_supported(chromium_clients: dict) -> None:
    gpu = chromium_clients["chromium-webgpu"]
    assert "shader-f16" not in gpu["environment"]["adapter"]["features"]
    v = gpu["variants"]["fp16"]
    assert v["verdict"] == "unsupported" and v["metrics"] is None and not v["failures"]
    assert "shader-f16" in v["notes"][0]


def test_wasm_runs_fp32_and_fp16_on_every_case(chromium_clients: dict) -> None:
    wasm = chromium_clients["chromium-wasm"]
    assert wasm["environment"]["crossOriginIsolated"] is True  # threaded wasm needs COOP/COEP
    for name in ("fp32", "fp16"):
        v = wasm["variants"][name]
        _check_against_table(v)
        assert v["cases"] == 50 and v["metrics"]["top5_mean"] is not None  # full set: top-5 is gated
    assert wasm["variants"]["fp32"]["vs_python_ort"]["pooled_max_abs"] <= FP32_VS_ORT
    # the validation texts are fitted to what every tokenizer encodes alike (validation_set.texts): no
    # mismatch at all, the same as Node's JS tokenizer
    assert wasm["tokenizer"]["mismatches"] == [] and wasm["tokenizer"]["status"] == "pass"


def test_nothing_is_loaded_from_outside_127_0_0_1(chromium_clients: dict) -> None:
    for name, entry in chromium_clients.items():
        assert entry["off_origin_requests"] == [], name
        assert all(v["verdict"] != "error" for v in entry["variants"].values()), name
