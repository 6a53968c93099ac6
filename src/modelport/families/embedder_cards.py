"""Model-card usage for embedders whose graph finishes the embedding (decoder embedders, BGE-M3).

Their snippets differ from a plain sentence encoder's in one way that matters: the client reads the
graph's `sentence_embedding` output (pooling, Dense layers, normalization and truncation already
applied) and adds the model's prompt to queries itself. transformers.js' feature-extraction pipeline
pools `last_hidden_state` on its own and would skip the Dense layers or take the wrong token,
silently (EmbeddingGemma: cosine ~0 against the real embeddings).
"""

from __future__ import annotations

import json
from typing import Any

from .cards import TargetCard

EMBEDDER_CARDS: dict[str, TargetCard] = {
    "onnx": TargetCard(
        "transformers.js (browser: WebGPU or wasm; Node)", "js",
        """\
import {{ AutoModel, AutoTokenizer }} from "@huggingface/transformers";

// dtype picks the file: {dtypes}
const tokenizer = await AutoTokenizer.from_pretrained("{repo}");
const model = await AutoModel.from_pretrained("{repo}", {{ dtype: "{variant}", device: "webgpu" }});
// Prompts as sentence-transformers applies them: prepended to the text.
const queries = [{query_prompt_js} + "What is the capital of France?"];
const documents = [{document_prompt_js} + "Paris is the capital of France."];
const inputs = await tokenizer([...queries, ...documents], {{ padding: true, truncation: true }});
// The graph computes the whole head ({head}): read sentence_embedding, not last_hidden_state.
const {{ {js_outputs} }} = await model(inputs);
console.log(sentence_embedding.dims); // [2, {embedding_dim}]{js_extra}""",
    ),
    "coreml": TargetCard(
        "Core ML (Swift, iOS / macOS)", "swift",
        """\
import CoreML

// {variant_file} from this repo; Core ML compiles a package once, then loads the compiled model.
let compiled = try await MLModel.compileModel(at: packageURL)
let model = try MLModel(contentsOf: compiled)
// Token ids from tokenizer.json for {query_prompt_swift} + "your query" (queries) or
// {document_prompt_swift} + "your text" (documents); truncate at {max_length}; shape [1, sequence length].
{swift_inputs}
let features = try MLDictionaryFeatureProvider(dictionary: [{swift_feeds}])
let out = try await model.prediction(from: features)
// {head}: already applied in the package
let embedding = out.featureValue(for: "sentence_embedding")!.multiArrayValue!  // {embedding_dim} floats{swift_extra}""",
    ),
    "mlx": TargetCard(
        "MLX (Python, Apple silicon)", "python",
        """\
from pathlib import Path

from huggingface_hub import snapshot_download

from modelport.targets.mlx.embedder import load_model  # the forward pass the validation ran

# One folder per variant: {variant_dirs}
folder = Path(snapshot_download("{repo}", allow_patterns=["{variant_dir}/*"])) / "{variant_dir}"
model = load_model(folder)
# encode() adds the folder's prompt (config_sentence_transformers.json: {query_prompt_py}) and pads on
# the tokenizer's side; {head} are applied in the model: {embedding_dim} dims per text.
queries = model.encode(["What is the capital of France?"], prompt_name="query")
documents = model.encode(["Paris is the capital of France."], prompt_name="document")
# model(input_ids, attention_mask) returns every output: {outputs}""",
    ),
}


def embedder_fields(man: dict[str, Any]) -> dict[str, str]:
    """Prompts, head description and output names of the embedder snippets, from the manifest's recipe."""
    recipe = man.get("recipe", {})
    prompts = recipe.get("prompts") or {}
    query, document = prompts.get("query", ""), prompts.get("document", "")
    outputs = list(recipe.get("outputs") or ["last_hidden_state", "sentence_embedding"])
    head = [f"{recipe.get('pooling', 'mean')} pooling"]
    head += [f"Dense {d['in_features']}->{d['out_features']}" for d in recipe.get("dense") or []]
    if recipe.get("normalize"):
        head.append("L2 normalize")
    if recipe.get("truncate_dim"):
        head.append(f"first {recipe['truncate_dim']} dims")
    multi = "sparse_weights" in outputs
    return {
        "query_prompt_js": json.dumps(query), "document_prompt_js": json.dumps(document),
        "query_prompt_swift": json.dumps(query), "document_prompt_swift": json.dumps(document),
        "query_prompt_py": json.dumps(query),
        "head": ", ".join(head),
        "embedding_dim": str(recipe.get("embedding_dim", recipe.get("hidden_size", "?"))),
        "outputs": ", ".join(outputs),
        "js_outputs": "sentence_embedding, sparse_weights, colbert_vectors" if multi else "sentence_embedding",
        "js_extra": ("\n// sparse_weights [batch, seq]: lexical weight per token (max per token id = BGE-M3's sparse "
                     "vector);\n// colbert_vectors [batch, seq - 1, dim]: ColBERT vectors of tokens 1.., zero on padding"
                     if multi else ""),
        "swift_extra": ("\nlet sparse = out.featureValue(for: \"sparse_weights\")!.multiArrayValue!  // per token\n"
                        "let colbert = out.featureValue(for: \"colbert_vectors\")!.multiArrayValue!  // per token 1.."
                        if multi else ""),
    }
