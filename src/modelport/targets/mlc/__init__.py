"""MLC / WebLLM target: embedding and chat packages WebLLM loads in the browser (WebGPU + wasm32 libraries).

  encoder.py   the sentence-encoder converter (MLCEncoder) and its Node runner
  decoder.py   the decoder-LLM converter (MLCDecoder): chat packages, and its Node LM runner
  chat_model.py  the chat model as a Relax module with WebLLM's function set
  build.py     TVM web runtime, Relax import and builds, emscripten links
  browser.py   the WebLLM check in headless Chromium (SwiftShader WebGPU)
  layout.py    artifact paths shared by encoder.py and browser.py
  js/          the npm harnesses (node_runner.mjs, chromium_check.mjs, ...)

No toolchain (torch, tvm) is imported at module level: the validator image has neither.
"""

from __future__ import annotations

from ...recipes import DECODER_EMBEDDER, MULTI_VECTOR
from ..registry import REGISTRY, TargetSpec

# What WebLLM cannot load, and why (the refusal says it). WebLLM 0.2's embeddings API
# (engine.embeddings.create) runs mlc-llm's BERT model and returns one dense vector per input.
REFUSES = {
    DECODER_EMBEDDER: "WebLLM's embedding pipeline runs BERT-architecture encoders only (mlc-llm's `bert` "
                      "model); a decoder-trunk embedder (Qwen3-Embedding, EmbeddingGemma) has no WebLLM model to "
                      "load it. In the browser, use -t onnx (transformers.js, WebGPU)",
    MULTI_VECTOR: "WebLLM's embeddings API returns one dense vector per input, so BGE-M3's sparse weights and "
                  "ColBERT vectors would be dropped, and its XLM-R trunk is not an mlc-llm embedding model. In the "
                  "browser, use -t onnx (transformers.js returns all three outputs)",
}
SPEC = REGISTRY.add_target(TargetSpec(name="mlc", description="MLC / WebLLM package (WebGPU + wasm32)",
                                      extra="mlc", image="mlc", refuses=REFUSES))

from . import decoder, encoder  # noqa: E402,F401  (register MLCDecoder, MLCEncoder)
