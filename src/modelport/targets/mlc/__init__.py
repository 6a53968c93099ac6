"""MLC / WebLLM target: embedding packages WebLLM loads in the browser (WebGPU + wasm32 libraries).

  encoder.py   the sentence-encoder converter (MLCEncoder) and its Node runner
  build.py     TVM web runtime, Relax import and builds, emscripten links
  browser.py   the WebLLM check in headless Chromium (SwiftShader WebGPU)
  layout.py    artifact paths shared by encoder.py and browser.py
  js/          the npm harnesses (node_runner.mjs, chromium_check.mjs, ...)

No toolchain (torch, tvm) is imported at module level: the validator image has neither.
"""

from __future__ import annotations

from ..registry import REGISTRY, TargetSpec

SPEC = REGISTRY.add_target(TargetSpec(name="mlc", description="MLC / WebLLM package (WebGPU + wasm32)",
                                      extra="mlc", image="mlc"))

from . import encoder  # noqa: E402,F401  (registers MLCEncoder)
