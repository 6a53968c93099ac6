"""Core ML decoder LLMs: stateful KV cache packages for the four decoder families, run by the MIL
interpreter (states included) through the whole `convert` pipeline, plus what makes them pass.

Each family (tiny Llama, Qwen2, Qwen3, SmolLM3) is converted once per module with every variant
(fp32, w8, w4) at a 64-token context (the state length: short keeps the interpreter quick) and
validated by `convert` itself: prefill, 16 cached steps teacher-forced and greedy, cached decode
vs the package's own full recompute, against PyTorch fp32 (fp32) or PyTorch on the weights read
back from the package (w8, w4).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport import lm, manifest, milinterp
from modelport.errors import ModelportError
from modelport.thresholds import LM_THRESHOLDS
from modelport.validate import validate

pytest.importorskip("coremltools")
from modelport.source import read_model_card  # noqa: E402
from modelport.targets.coreml import decoder  # noqa: E402
from modelport.targets.coreml import package as coreml_package  # noqa: E402

FAMILIES = ("tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-smollm3")
VARIANTS = ("fp32", "w8", "w4")
CONTEXT = 64
SPEC_VERSION_IOS18 = 9


@pytest.fixture(scope="module")
def artifact(shared_artifact):
    """`artifact(name)` converts (and validates) on first use (tiny-llama is shared with the registry
    contract test)."""
    return lambda name: shared_artifact(name, "coreml", ",".join(VARIANTS), "--context", str(CONTEXT))


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


# --- the gates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_every_variant_passes_token_by_token(artifact, name: str) -> None:
    """fp32 vs PyTorch fp32 and w8/w4 vs PyTorch on their own dequantized weights: prefill, every
    cached step and cached-vs-full <= 1e-5 max abs, all 80 greedy tokens equal."""
    root = artifact(name)
    validation = manifest.load(root)["validation"]
    assert validation["status"] == "pass", json.dumps(validation, indent=1)[:3000]
    assert list(validation["variants"]) == list(VARIANTS)
    for variant, v in validation["variants"].items():
        m = v["metrics"]
        assert v["thresholds"] == LM_THRESHOLDS[variant].to_json()
        assert max(m["prefill_max_abs"], m["step_max_abs"], m["kv_vs_full_max_abs"]) <= 1e-5, (variant, m)
        assert m["greedy_equal"] == m["greedy_total"] == 80, (variant, m)
        if variant != "fp32":
            vs = v["extra"]["vs_fp32"]  # the quantization's cost: reported, not gated
            assert vs["greedy_total"] == 80 and 0 < vs["kl_mean"] < 0.1, vs
            assert (vs["step_max_abs"] > 1e-3) and (variant == "w8") == (vs["step_max_abs"] < 0.5), vs
    assert validation["notes"][0].startswith("Core ML runtime not available")


def test_package_contract(artifact) -> None:
    """What an app sees: iOS18, int32 ids [1, 1..C], float32 mask [1, 1, Q, E], fp16 states, logits."""
    root = artifact("tiny-llama")
    man = manifest.load(root)
    target = man["target"]
    assert target["family"] == "causal-lm" and target["context_length"] == CONTEXT
    for variant in VARIANTS:
        package = root / decoder.VARIANTS[variant].path
        spec, _ = milinterp.read_spec(package)
        assert spec.specificationVersion == SPEC_VERSION_IOS18
        ids, mask = milinterp.input_specs(spec)
        assert (ids.name, ids.dtype, ids.ranges) == ("input_ids", np.int32, ((1, 1), (1, CONTEXT)))
        assert (mask.name, mask.dtype) == ("causal_mask", np.float32)
        assert mask.ranges == ((1, 1), (1, 1), (1, CONTEXT), (1, CONTEXT))
        states = milinterp.state_specs(spec)
        assert sorted(s.name for s in states) == ["key_cache", "key_cache_residual", "key_cache_residual2",
                                                  "value_cache", "value_cache_residual", "value_cache_residual2"]
        assert all(s.dtype == np.float16 and s.shape == (2, 1, 2, CONTEXT, 32) for s in states)
        meta = spec.description.metadata.userDefined
        assert meta["modelport.context_length"] == str(CONTEXT) and meta["modelport.kind"] == "causal-lm"
        counts = milinterp.op_counts(package)
        assert counts["read_state"] == 6 and counts["write_state"] == 6 and counts["slice_update"] > 0
        assert ("constexpr_blockwise_shift_scale" in counts) == (variant != "fp32")
        assert target["variants"][variant]["minimum_deployment_target"] == "iOS18 / macOS15"
    tok = json.loads((root / "tokenizer_config.json").read_text())
    assert tok["model_max_length"] == CONTEXT and (root / "tokenizer.json").is_file()
    for variant in ("w8", "w4"):
        assert lm.LMGolden.exists(root, lm.golden_name(variant))


def test_config_has_top_level_rope_theta(artifact) -> None:
    """The shipped config.json goes through layout.write_client_files: the rope-parameters quirk
    copies rope_theta to the top level, where readers built for transformers 4 look for it."""
    from modelport.source import resolve

    root = artifact("tiny-llama")
    source = resolve("tiny-llama").config
    shipped = json.loads((root / "config.json").read_text())
    assert source.get("rope_theta") is None, "the checkpoint no longer needs the fix: pick one that does"
    assert shipped["rope_theta"] == source["rope_parameters"]["rope_theta"]
    assert shipped["rope_parameters"] == source["rope_parameters"]


def test_options_are_per_family() -> None:
    """--shape is an encoder option and --context a decoder one: each pair refuses the other's flag."""
    from modelport.targets.coreml.encoder import CoreMLEncoder
    from modelport.targets.registry import parse_options

    assert parse_options(decoder.CoreMLDecoder, {"context": "64"}).context == "64"
    with pytest.raises(ModelportError, match="--shape does not apply to the coreml target for causal-lm models"):
        parse_options(decoder.CoreMLDecoder, {"shape": "fixed"})
    with pytest.raises(ModelportError, match="--context does not apply to the coreml target for sentence-encoder"):
        parse_options(CoreMLEncoder, {"context": "64"})


# --- why the packages are built the way they are ------------------------------------------------------


class Fp16OnlyCache:
    """The fp32 package with its residual states zeroed after every call: what a single float16
    cache (Core ML states are fp16 only) would give; `keep` residual parts survive."""

    def __init__(self, runner: decoder.CoreMLLMRunner, keep: int = 0) -> None:
        self.runner, self.keep = runner, keep

    def _drop(self, state: decoder.LMState) -> decoder.LMState:
        for suffix in decoder.PART_SUFFIXES[1 + self.keep:]:
            for name in decoder.STATE_NAMES:
                state.state[name + suffix][...] = 0
        return state

    def prefill(self, ids: np.ndarray):
        logits, state = self.runner.prefill(ids)
        return logits, self._drop(state)

    def decode(self, state, token: int):
        logits, state = self.runner.decode(state, token)
        return logits, self._drop(state)


def test_fp16_cache_alone_misses_the_fp32_gate(artifact) -> None:
    """The residual states are what make the fp32 cache exact: without them decode is ~100x off;
    with one of the two (22 significant bits) it is closer but still not float32."""
    root = artifact("tiny-llama")
    golden = lm.LMGolden.load(root)
    runner = decoder.load_lm_runner(root, "fp32")
    exact = lm.evaluate_lm(golden, runner)
    rounded = lm.evaluate_lm(golden, Fp16OnlyCache(runner))
    assert exact.step_max_abs <= 1e-5
    assert rounded.step_max_abs > 1e-4, rounded.step_max_abs  # measured 1.5e-3 at context 2048
    assert rounded.prefill_max_abs == exact.prefill_max_abs  # prefill reads only this call's keys
    two = lm.evaluate_lm(golden, Fp16OnlyCache(runner, keep=1))
    assert two.step_max_abs < rounded.step_max_abs / 10


def test_full_context_and_overflow(artifact) -> None:
    """Q = C (a prefill filling the context) and E = C (the last decode step) are the edges the
    export ranges stop short of (see export_program): both match PyTorch; one more token is refused."""
    import torch
    from transformers import AutoModelForCausalLM

    from modelport.source import resolve

    root = artifact("tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(resolve("tiny-llama").path, dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(3, 500, size=(1, CONTEXT))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits[0].numpy()
    runner = decoder.load_lm_runner(root, "fp32")
    full, _ = runner.prefill(ids)
    assert np.abs(full - ref).max() <= 1e-5
    logits, state = runner.prefill(ids[:, :CONTEXT - 8])
    for t in range(CONTEXT - 8, CONTEXT):
        logits, state = runner.decode(state, int(ids[0, t]))
        assert np.abs(logits - ref[t]).max() <= 1e-5, t
    with pytest.raises(ModelportError, match="exceed the package's context"):
        runner.decode(state, 5)


def test_interpreter_decodes_weights_like_coremltools(artifact) -> None:
    """int8 and int4 block-wise weights as the interpreter decodes them (and the dequantized golden
    uses) equal coremltools' own reading: its C++ blob reader and the MIL op's decompress."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_blockwise_shift_scale

    root = artifact("tiny-qwen2")  # tied embeddings: one compressed table serves gather and lm_head
    for variant, dtype in (("w8", np.int8), ("w4", np.int8)):
        package = root / decoder.VARIANTS[variant].path
        ours = milinterp.constexpr_values(package)
        spec, weights_dir = milinterp.read_spec(package)
        prog = milproto_load(spec, spec.specificationVersion, str(weights_dir))
        quant = [op for op in prog.functions["main"].operations if op.op_type == "constexpr_blockwise_shift_scale"]
        theirs = {op.outputs[0].name: constexpr_blockwise_shift_scale.decompress(
            op.data.val, op.scale.val, op.offset.val if op.offset is not None else None) for op in quant}
        assert set(ours) == set(theirs) and len(ours) >= 8
        for name, value in ours.items():
            np.testing.assert_array_equal(value, np.asarray(theirs[name], dtype=value.dtype), err_msg=name)
        data = quant[0].data.val
        assert data.dtype == dtype and (variant == "w8" or (data.min() >= -8 and data.max() <= 7 and data.min() < 0))


def _scale_blob(package: Path) -> tuple[Path, int, int, Any]:
    """(weight file, data offset, byte size, dtype) of the first block-wise scale in the package."""
    spec, weights_dir = milinterp.read_spec(package)
    fn = spec.mlProgram.functions["main"]
    ops = {o.outputs[0].name: o for o in fn.block_specializations[fn.opset].operations if o.outputs}
    quant = next(o for o in ops.values() if o.type == "constexpr_blockwise_shift_scale")
    arg = quant.inputs["scale"].arguments[0]  # a reference to a const op, or the value inline
    blob = (ops[arg.name].attributes["val"] if arg.name else arg.value).blobFileValue
    path = weights_dir / blob.fileName.replace("@model_path/weights/", "")
    _, dtype, size, offset = milinterp.BLOB_HEADER.unpack_from(path.read_bytes(), blob.offset)
    return path, offset, size, milinterp.BLOB_DTYPES[dtype]


def test_a_changed_scale_fails_against_the_dequantized_golden(artifact, tmp_path: Path) -> None:
    """The dequantized golden is the package's weights at convert time: a file changed later fails."""
    root = _copy(artifact("tiny-llama"), tmp_path)
    path, offset, size, dtype = _scale_blob(root / "w4/model.mlpackage")
    data = bytearray(path.read_bytes())
    scales = np.frombuffer(bytes(data[offset:offset + size]), dtype=dtype).copy()
    scales *= dtype(1.01)
    data[offset:offset + size] = scales.tobytes()
    path.write_bytes(bytes(data))
    report = validate(root, ["w4"])
    assert not report.passed
    assert any("max abs" in f and "dequantized golden" in f for f in report.results[0].failures)


def test_packages_are_deterministic(artifact, tmp_path: Path) -> None:
    """A second build of the same checkpoint gives byte-identical packages (the conversion runs in a
    worker with a fixed hash seed: coremltools' passes are otherwise order-dependent)."""
    from modelport.source import resolve

    root = artifact("tiny-qwen3")
    source = resolve("tiny-qwen3")
    card = read_model_card(source.path)
    import dataclasses

    decoder.run_worker({"model_dir": str(source.path), "out": str(tmp_path), "variants": list(VARIANTS),
                        "context": CONTEXT, "source_name": source.name, "revision": source.revision,
                        "card": dataclasses.asdict(card)})
    for variant in VARIANTS:
        rel = decoder.VARIANTS[variant].path
        coreml_package.normalize_package(tmp_path / rel)
        a = sorted(p.relative_to(root / rel) for p in (root / rel).rglob("*") if p.is_file())
        b = sorted(p.relative_to(tmp_path / rel) for p in (tmp_path / rel).rglob("*") if p.is_file())
        assert a == b
        for f in a:
            assert (root / rel / f).read_bytes() == (tmp_path / rel / f).read_bytes(), (variant, f)


# --- macOS: MLModel.predict with an MLState (faked here) ----------------------------------------------


def test_fake_macos_predict_path(artifact, monkeypatch: pytest.MonkeyPatch) -> None:
    """On macOS the same runner drives MLModel.predict(feeds, state=model.make_state()); here the
    MLModel is the interpreter behind Core ML's API, and a drifting ALL run must fail its gate."""
    import coremltools as ct

    root = artifact("tiny-llama")
    calls: list[tuple[str, str, tuple[int, ...]]] = []

    class FakeMLModel:
        offset = 0.0  # added to the logits on ALL compute units

        def __init__(self, path: str, compute_units=None) -> None:
            self.units = compute_units.name
            self.interp = milinterp.Interpreter(Path(path))

        def make_state(self) -> dict[str, np.ndarray]:
            return self.interp.make_state()

        def predict(self, feeds: dict[str, np.ndarray], state: Any = None) -> dict[str, np.ndarray]:
            assert feeds["input_ids"].dtype == np.int32 and feeds["causal_mask"].dtype == np.float32
            calls.append((Path(self.interp.package).parent.name, self.units, feeds["input_ids"].shape))
            out = self.interp.run(feeds, state)
            return {k: v + np.float32(self.offset if self.units == "ALL" else 0.0) for k, v in out.items()}

    monkeypatch.setattr(coreml_package, "coreml_runtime_available", lambda: True)
    monkeypatch.setattr(ct.models, "MLModel", FakeMLModel)
    golden = lm.LMGolden.load(root)
    extra = decoder.lm_extra_metrics(root, "fp32", golden)
    assert extra["failures"] == []
    assert extra["coreml_cpu_only"]["gate"] == "fp32" and extra["coreml_all"]["gate"] == "fp16"
    assert extra["coreml_cpu_only"]["step_max_abs"] <= 1e-5
    # the KLD report through Core ML's API too (fp32: rounding only, measured ~1e-12 with the interpreter)
    assert extra["coreml_cpu_only"]["kld"]["kld_mean"] < 1e-9 and extra["coreml_all"]["kld"]["same_top1"] == 1.0
    assert {u for _, u, _ in calls} == {"CPU_ONLY", "ALL"} and (1, 1) in {s for _, _, s in calls}
    assert "MLModel.predict" in decoder.CoreMLDecoder().open(root).notes()[0]
    FakeMLModel.offset = 0.5  # beyond the fp16 decoder gate (4e-3 x max |logit| ~ 0.05 here)
    extra = decoder.lm_extra_metrics(root, "fp32", golden)
    assert extra["failures"] and all(f.startswith("Core ML ALL:") for f in extra["failures"])


# --- the interpreter's state handling -----------------------------------------------------------------


def test_interpreter_states_are_checked(artifact) -> None:
    package = artifact("tiny-llama") / "fp32/model.mlpackage"
    interp = milinterp.Interpreter(package)
    feeds = {"input_ids": np.array([[5, 6]], dtype=np.int32), "causal_mask": decoder.causal_mask(2, 0)}
    with pytest.raises(ModelportError, match="pass the state"):
        interp.run(feeds)
    bad = interp.make_state()
    bad["key_cache"] = bad["key_cache"].astype(np.float32)
    with pytest.raises(ModelportError, match="key_cache must be a float16 array"):
        interp.run(feeds, bad)
    state = interp.make_state()
    interp.run(feeds, state)
    assert np.abs(state["key_cache"][:, :, :, :2]).max() > 0 and not state["key_cache"][:, :, :, 2:].any()
    with pytest.raises(ModelportError, match="accepts"):  # E > C: Core ML refuses the shape
        interp.run({"input_ids": np.array([[5]], dtype=np.int32), "causal_mask": decoder.causal_mask(1, CONTEXT)},
                   state)


def test_slice_update() -> None:
    x = np.zeros((2, 3, 4), dtype=np.float32)
    out = milinterp.OPS["slice_update"](x=x, update=np.ones((1, 3, 2), np.float32), begin=np.array([1, 0, 1]),
                                        end=np.array([2, 3, 3]))
    assert out[1, :, 1:3].all() and out.sum() == 6 and not x.any()
    squeezed = milinterp.OPS["slice_update"](x=x, update=np.ones((3, 4), np.float32), begin=np.array([0, 0, 0]),
                                             end=np.array([1, 3, 4]), squeeze_mask=np.array([True, False, False]))
    assert squeezed[0].all() and not squeezed[1].any()
    with pytest.raises(ModelportError, match="update of shape"):  # Core ML does not broadcast updates
        milinterp.OPS["slice_update"](x=x, update=np.ones((1, 3, 1), np.float32), begin=np.array([1, 0, 1]),
                                      end=np.array([2, 3, 3]))


def test_int4_blobs_are_twos_complement(tmp_path: Path) -> None:
    """An INT4 blob (data type 8): nibbles low first, 8..15 meaning -8..-1."""
    path = tmp_path / "weight.bin"
    header = struct.pack("<IIQQ", milinterp.BLOB_SENTINEL, 8, 2, 128)
    path.write_bytes(bytes(64) + header + bytes(128 - 64 - len(header)) + bytes([0x8F, 0x07]) + bytes(62))
    value = milinterp.MIL_pb2.Value()
    value.type.tensorType.dataType = milinterp.DT.INT4
    value.type.tensorType.rank = 1
    value.type.tensorType.dimensions.add().constant.size = 4
    value.blobFileValue.fileName = "@model_path/weights/weight.bin"
    value.blobFileValue.offset = 64
    decoded = milinterp.decode_value(value, {"weight.bin": milinterp.WeightFile(path)})
    assert decoded.dtype == np.int8 and decoded.tolist() == [-1, -8, 7, 0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
