"""Where things are in an MLC / WebLLM artifact (and where the npm harnesses live).

Shared by the converter (encoder.py), the WebLLM Chromium check (browser.py) and the benchmarks,
which import this module and never each other.

    <out>/<v>/      one WebLLM package per variant, shaped like a hub repository's files:
                    mlc-chat-config.json  tensor-cache.json  params_shard_*.bin  tokenizer files
                    <model>-<v>-webgpu.wasm   the model library (ModelRecord.model_lib)
    <out>/libs/<model>-<v>-wasm32-cpu.wasm   the same module on wasm32 CPU kernels (the Node check)
    <out>/webllm-app-config.js               appConfig(base) / fromHub(repo) for every variant

Why the package folder holds its own model library: WebLLM 0.2.86 (`cleanModelUrl`) appends
`resolve/main/` to a ModelRecord.model URL unless it already contains `/resolve/<rev>/`, and reads
the chat config, tensor cache and tokenizer relative to that URL; `model_lib` is fetched as given
(an absolute URL, or relative to the page, never to the model). So an artifact published as hub
repo `<org>/<name>` serves variant <v> at `https://huggingface.co/<org>/<name>/resolve/main/<v>/`
and its library at `.../resolve/main/<v>/<model>-<v>-webgpu.wasm`, both built from the hub id.
One repo holds every variant beside manifest.json and reference/, so `modelport validate` still
runs on a downloaded copy (a repo per variant would split them).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelportError
from ..registry import Variant

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("f32", "f32/tensor-cache.json", "fp32", "float32 weights and compute (q0f32)"),
        Variant("f16", "f16/tensor-cache.json", "fp16",
                "float16 weights and compute, float32 matmul accumulation (q0f16); WebGPU shader-f16"),
        Variant("q4f32_1", "q4f32_1/tensor-cache.json", "q4",
                "4-bit weights in groups of 32 with float32 scales, dequantized inside the kernels, float32 "
                "compute (MLC's q4f32_1)"),
        Variant("q4f16_1", "q4f16_1/tensor-cache.json", "q4f16",
                "4-bit weights in groups of 32 with float16 scales, float16 compute (MLC's q4f16_1); "
                "WebGPU shader-f16"),
    )
}
# The npm folder of the Node and Chromium harnesses (node_runner.mjs, chromium_check.mjs).
JS = Path(__file__).parent / "js"
# The app config at the artifact's root (encoder.app_config_js writes it).
APP_CONFIG = "webllm-app-config.js"
# The folder of the validation-only libraries (wasm32 CPU), outside every package folder.
VALIDATION_LIBS = "libs"


def package_dir(out: Path, variant: str) -> Path:
    """The variant's WebLLM package: what ModelRecord.model points at."""
    return out / variant


def lib_path(out: Path, model: str, variant: str, kind: str) -> Path:
    """The WebGPU library (kind "webgpu") sits in its package; the wasm32 CPU one in libs/."""
    folder = package_dir(out, variant) if kind == "webgpu" else out / VALIDATION_LIBS
    return folder / f"{model}-{variant}-{kind}.wasm"


def model_name(out: Path) -> str:
    """The model name the library file names start with (`<model>-<variant>-<kind>.wasm`)."""
    for variant in VARIANTS:
        suffix = f"-{variant}-webgpu.wasm"
        libs = sorted(package_dir(out, variant).glob(f"*{suffix}"))
        if libs:
            return libs[0].name[: -len(suffix)]
    if any((out / variant / "resolve" / "main").is_dir() for variant in VARIANTS):
        raise ModelportError(f"{out} is in the earlier <variant>/resolve/main/ layout (libraries in libs/), which this "
                             f"version no longer reads: convert the model again (--force) to get the hub-loadable layout")
    raise ModelportError(f"no WebGPU model library in any variant folder of {out} ({', '.join(VARIANTS)})")

