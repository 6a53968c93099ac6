"""Where things are in an MLC / WebLLM artifact (and where the npm harnesses live).

Shared by the converter (encoder.py) and the WebLLM Chromium check (browser.py), which import this
module and never each other.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelportError
from ..registry import Variant

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("f32", "f32/resolve/main/tensor-cache.json", "fp32", "float32 weights and compute (q0f32)"),
        Variant("f16", "f16/resolve/main/tensor-cache.json", "fp16",
                "float16 weights and compute, float32 matmul accumulation (q0f16); WebGPU shader-f16"),
    )
}
# The npm folder of the Node and Chromium harnesses (node_runner.mjs, chromium_check.mjs).
JS = Path(__file__).parent / "js"


def package_dir(out: Path, variant: str) -> Path:
    return out / variant / "resolve" / "main"


def lib_path(out: Path, model: str, variant: str, kind: str) -> Path:
    return out / "libs" / f"{model}-{variant}-{kind}.wasm"


def model_name(out: Path) -> str:
    libs = sorted((out / "libs").glob("*-webgpu.wasm"))
    if not libs:
        raise ModelportError(f"no WebGPU model library in {out / 'libs'}")
    return libs[0].name.rsplit("-", 2)[0]
