"""What modelport knows about each architecture, in one registry.

One `Architecture` entry per Hugging Face `model_type`: which inputs the exported graph takes,
the default pooling, position-id offsets, and every quirk that changes how it must be converted.
A `Recipe` is an architecture applied to one concrete checkpoint: pooling and normalization read
from its sentence-transformers config, and the max length it is really used at.

Adding an architecture means adding one entry here (and a tiny test model in `tiny.py`), not
sprinkling `if model_type == ...` through the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .embedding import (EmbeddingContract, MultiVectorHeads, padding_side, read_contract, read_heads,
                        with_truncate_dim)
from .errors import ModelportError
from .fsutil import read_json


@dataclass(frozen=True)
class Quirk:
    """A named property of a checkpoint family that a converter must handle deliberately.

    A quirk is code, not a label, where it can be: `config_fix` is the rewrite of config.json the
    quirk asks for; `layout.write_client_files` applies it to every artifact of every target, so no
    target can forget it (Core ML decoders once shipped configs without the rope fix).
    """

    name: str
    why: str
    # config dict -> notes; rewrites the config.json an artifact ships (in place)
    config_fix: Callable[[dict[str, Any]], list[str]] | None = None
    # (tensor name, float32 values) -> other forms a converter may store the tensor in, by name; the
    # weight check (weight_stats) accepts those forms too, so a folded constant is not a false alarm
    stored_forms: Callable[[str, Any], dict[str, Any]] | None = None
    # (transformers model, recipe) -> notes; rewrites the PyTorch model every torch-traced export (and
    # the golden) is built from, without changing what it computes (torch_model.make_encoder applies it)
    model_fix: Callable[[Any, Any], list[str]] | None = None
    # the graph must come from torch.export, never a trace (targets/onnx/export.py reads it)
    needs_torch_export: bool = False

    def apply_config(self, config: dict[str, Any]) -> list[str]:
        return self.config_fix(config) if self.config_fix else []

    def forms(self, name: str, values: Any) -> dict[str, Any]:
        return self.stored_forms(name, values) if self.stored_forms else {}


@dataclass(frozen=True)
class EmbedderRole:
    """How a decoder architecture is converted when a checkpoint uses it as an embedder: no KV cache
    (inputs are ids + mask), its own targets, and the quirks of that use."""

    targets: tuple[str, ...]
    quirks: tuple[Quirk, ...] = ()
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class Architecture:
    model_type: str
    family: str
    inputs: tuple[str, ...]
    default_pooling: str
    # Usable positions = max_position_embeddings - position_offset (RoBERTa-style models start
    # position ids at padding_idx + 1).
    position_offset: int = 0
    quirks: tuple[Quirk, ...] = ()
    # Targets whose converter handles this architecture (the CLI refuses the others up front).
    targets: tuple[str, ...] = ("onnx", "coreml", "mlx")
    # Group size for group-wise weight quantization (MLX q8/q4): 64 is mlx-lm's default; a smaller
    # divisor is chosen when a layer's input width is not a multiple of it.
    quant_group_size: int = 64
    # Decoders (family "causal-lm"): the transformers class the reference and exporters load.
    causal_lm_class: str | None = None
    # A decoder architecture that also serves as an embedder when the checkpoint carries a
    # sentence-transformers Pooling module (Qwen3-Embedding is `qwen3` weights).
    embedder: "EmbedderRole | None" = None

    @property
    def is_decoder(self) -> bool:
        return self.family == CAUSAL_LM


TORCH_EXPORT_ONLY = Quirk(
    "torch-export-only",
    "transformers 5 builds causal and sliding-window masks with length-dependent code: a TorchScript "
    "trace bakes the example's length into them, and a window only starts to matter past its length, "
    "so no short probe catches it. Exported with torch.export (dynamo), which traces shapes "
    "symbolically; other encoders are traced and kept only if probe shapes reproduce PyTorch.",
    needs_torch_export=True,
)
PADDING_ROWS_UNDEFINED = Quirk(
    "padding-rows-undefined",
    "Hidden states at padding positions depend on the attention kernel (6.5e-5 between eager and "
    "SDPA in PyTorch itself): only non-padding positions are compared.",
)

SENTENCE_ENCODER = "sentence-encoder"
CAUSAL_LM = "causal-lm"
# Embedders built on a decoder trunk (Qwen3-Embedding, EmbeddingGemma): their own family, because
# the trunk (RoPE, GQA, RMSNorm, causal or bidirectional masks) is what a target converts differently.
DECODER_EMBEDDER = "decoder-embedder"
# Encoders with more than one output (BGE-M3: dense + sparse lexical weights + ColBERT vectors).
MULTI_VECTOR = "multi-vector-encoder"
EMBEDDING_FAMILIES = (SENTENCE_ENCODER, DECODER_EMBEDDER, MULTI_VECTOR)
EMBEDDER_INPUTS = ("input_ids", "attention_mask")

# --- decoder quirks: what each converter (ONNX, MLX, Core ML) must do deliberately -----------------
TIED_EMBEDDINGS = Quirk(
    "tied-embeddings",
    "lm_head shares the input embedding table when config.tie_word_embeddings is true. Policy (ONNX): "
    "fp32/fp16 files store the table once (the lm_head MatMul reads it through a Transpose); 4-bit "
    "variants give the lm_head its own copy and quantize it (the largest matrix of a small model, read "
    "at every decode step) while the embedding Gather stays float, so the tie is broken on purpose and "
    "the dequantized-weights reference unties them the same way.",
)
GQA = Quirk(
    "grouped-query-attention",
    "num_key_value_heads < num_attention_heads: the KV cache has num_key_value_heads heads, and the "
    "cache tensors' head count and head_dim are fixed numbers in the graph (transformers.js sizes the "
    "empty cache from them).",
)
def top_level_rope(config: dict[str, Any]) -> list[str]:
    """rope_parameters' theta (and scaling, for scaled types) copied to the top level, where readers
    built for transformers 4 look (quirk rope-parameters)."""
    notes = []
    params = config.get("rope_parameters")
    theta = rope_theta_of(config)
    if theta is not None and config.get("rope_theta") is None:
        config["rope_theta"] = theta
        notes.append(f"rope_theta={theta} was only in rope_parameters (transformers 5): written at the top level too")
    if isinstance(params, dict) and params.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
        config["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
        notes.append("rope_scaling written at the top level from rope_parameters")
    return notes


ROPE_PARAMETERS = Quirk(
    "rope-parameters",
    "transformers 5 writes rope_theta/rope scaling inside `rope_parameters`; readers built for "
    "transformers 4 (optimum-onnx, older transformers, mlx-lm versions) look for a top-level `rope_theta` "
    "and silently fall back to a default (SmolLM3: 2e6 read as 1e4, logits off by 3.7). The artifact's "
    "config.json gets a top-level rope_theta copy; the lint names checkpoints that lack it.",
    top_level_rope,
)
QK_NORM = Quirk(
    "qk-norm",
    "per-head RMSNorm on queries and keys before RoPE (q_norm/k_norm weights of size head_dim); "
    "head_dim is set explicitly and may differ from hidden_size / num_attention_heads.",
)
QKV_BIAS = Quirk("qkv-bias", "q_proj/k_proj/v_proj have biases (o_proj has none): quantizers must keep them.")
NOPE_LAYERS = Quirk(
    "nope-layers",
    "no rotary embedding on some layers (config.no_rope_layers[i] == 0, every 4th layer by default): "
    "exporters that apply RoPE to every layer (onnxruntime-genai's builder) fail or compute another model.",
)
FUSED_PROJECTIONS = Quirk(
    "fused-projections",
    "qkv_proj and gate_up_proj are single Linear layers (Phi-3); converters that split or match "
    "weights by the Llama names must split them along the output dimension.",
)
DECODER_TARGETS = ("onnx", "mlx", "coreml", "mlc")
# KV-cache graph inputs besides past_key_values.N.key/value (transformers.js text-generation names)
DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids")



# --- embedder quirks --------------------------------------------------------------------------------
LAST_TOKEN_LEFT_PADDING = Quirk(
    "last-token-left-padding",
    "the sentence embedding is the hidden state of the last real token (the EOS the tokenizer appends); "
    "the tokenizer pads on the left so that token is at the end of every row. The graph finds the last "
    "real position from the attention mask (either padding side), as sentence-transformers does.",
)
BIDIRECTIONAL = Quirk(
    "bidirectional-attention",
    "config.use_bidirectional_attention: a decoder trunk with no causal mask (EmbeddingGemma). A converter "
    "that reuses its causal-LM path computes another model; padding is masked on keys only.",
)
SLIDING_WINDOW = Quirk(
    "sliding-window",
    "layers of type sliding_attention see keys within a window around each query. With bidirectional "
    "attention transformers 5 stores window w as (w // 2) + 1 in the config object and writes (w - 1) * 2 "
    "back to config.json: a key is visible when |q - k| < config.sliding_window (the object's value). "
    "Validation texts longer than the window exercise it.",
)
def _one_plus_norm(name: str, values: Any) -> dict[str, Any]:
    """Gemma norm weights as an exporter folds them: the constant 1 + w."""
    return {f"{name} (stored as 1 + w)": values + 1.0} if name.endswith("norm.weight") else {}


GEMMA_NORMS = Quirk(
    "gemma-norms",
    "Gemma's RMSNorm multiplies by (1 + weight); embeddings are scaled by sqrt(hidden_size) in the weights' "
    "dtype; attention scores use query_pre_attn_scalar**-0.5, not head_dim**-0.5; q/k norms per head; "
    "four norms per layer (pre/post attention and feed-forward); GELU (tanh) gating. torch.export folds "
    "1 + weight into one constant: the weight check accepts that form of every norm weight.",
    stored_forms=_one_plus_norm,
)
def _rope_tables(model: Any, recipe: Any) -> list[str]:
    from .rope_tables import tabulate_rope

    return tabulate_rope(model, recipe.max_length)


ROPE_TABLES = Quirk(
    "rope-tables",
    "rotary cos/sin are computed in the graph from position x frequency, angles up to max_length radians; "
    "WGSL guarantees sin/cos to 2^-11 absolute only inside [-pi, pi] (undefined beyond), so WebGPU computes "
    "other tables: fp32 Qwen3-Embedding / EmbeddingGemma embeddings off by 3.3e-5 / 3.6e-5 in Chromium "
    "(SwiftShader) while position 0 matched to 1e-6. The traced graph gathers cos/sin from tables PyTorch "
    "computes at conversion for positions < max_length (the same float32 values, a Gather instead of Sin/Cos).",
    model_fix=_rope_tables,
)
EMBEDDER_TARGETS = ("onnx", "coreml", "mlx")


def _decoder(model_type: str, causal_lm_class: str, *quirks: Quirk,
             targets: tuple[str, ...] = DECODER_TARGETS, embedder: EmbedderRole | None = None) -> Architecture:
    """A decoder LLM entry. Every family here takes the KV-cache inputs (DECODER_INPUTS) and has
    grouped-query attention, (possibly) tied embeddings and transformers 5 rope_parameters; the
    arguments are what sets one family apart: its class, its own quirks, and (Phi-3) fewer targets."""
    return Architecture(model_type=model_type, family=CAUSAL_LM, inputs=DECODER_INPUTS, default_pooling="none",
                        quirks=(GQA, TIED_EMBEDDINGS, ROPE_PARAMETERS, *quirks), targets=targets,
                        causal_lm_class=causal_lm_class, embedder=embedder)


ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture(
            model_type="bert",
            family=SENTENCE_ENCODER,
            inputs=("input_ids", "attention_mask", "token_type_ids"),
            default_pooling="mean",
            quirks=(PADDING_ROWS_UNDEFINED,),
            targets=("onnx", "coreml", "mlx", "mlc"),
        ),
        Architecture(
            model_type="xlm-roberta",
            family=SENTENCE_ENCODER,
            inputs=("input_ids", "attention_mask"),
            default_pooling="cls",
            position_offset=2,
            quirks=(
                PADDING_ROWS_UNDEFINED,
                Quirk(
                    "roberta-position-offset",
                    "position ids start at pad_token_id + 1, so the usable length is "
                    "max_position_embeddings - 2 (514 -> 512); exceeding it indexes past the table.",
                ),
                Quirk(
                    "no-token-type-ids",
                    "type_vocab_size is 1 and the tokenizer emits no token_type_ids: the graph "
                    "takes only input_ids and attention_mask.",
                ),
            ),
        ),
        # --- decoder LLMs: shared conventions in _decoder, what differs named per family -------------
        _decoder("llama", "LlamaForCausalLM"),
        _decoder("qwen2", "Qwen2ForCausalLM", QKV_BIAS),
        _decoder("qwen3", "Qwen3ForCausalLM", QK_NORM,
                 embedder=EmbedderRole(EMBEDDER_TARGETS, (LAST_TOKEN_LEFT_PADDING, ROPE_TABLES, TORCH_EXPORT_ONLY))),
        # --- decoder trunks used only as embedders ------------------------------------------------------
        Architecture(
            model_type="gemma3_text",
            family=DECODER_EMBEDDER,
            inputs=EMBEDDER_INPUTS,
            default_pooling="mean",
            quirks=(BIDIRECTIONAL, SLIDING_WINDOW, GEMMA_NORMS, GQA, ROPE_PARAMETERS, ROPE_TABLES, TORCH_EXPORT_ONLY),
            targets=EMBEDDER_TARGETS,
        ),
        _decoder("smollm3", "SmolLM3ForCausalLM", NOPE_LAYERS),
        _decoder("phi3", "Phi3ForCausalLM", FUSED_PROJECTIONS, targets=("onnx",)),
    )
}

@dataclass(frozen=True)
class Recipe:
    """An embedding checkpoint (sentence encoder, decoder embedder, multi-vector encoder): an
    architecture plus the sentence-transformers contract read from the checkpoint's own files."""

    architecture: Architecture
    pooling: str
    normalize: bool
    max_length: int
    hidden_size: int
    pooling_source: str  # "sentence-transformers" or "architecture-default"
    notes: tuple[str, ...] = field(default=())
    quant_group_size: int = 64
    # the rest of the contract (Dense layers, prompts, padding side, truncation); pooling/normalize
    # above are its first two fields, kept flat because every target reads them
    contract: EmbeddingContract | None = None
    heads: MultiVectorHeads | None = None  # BGE-M3's sparse + ColBERT heads
    family: str = SENTENCE_ENCODER

    @property
    def inputs(self) -> tuple[str, ...]:
        if self.family == DECODER_EMBEDDER and self.architecture.embedder is not None:
            return self.architecture.embedder.inputs
        return self.architecture.inputs

    @property
    def targets(self) -> tuple[str, ...]:
        if self.family == DECODER_EMBEDDER and self.architecture.embedder is not None:
            return self.architecture.embedder.targets
        return self.architecture.targets

    @property
    def quirks(self) -> tuple[Quirk, ...]:
        role = self.architecture.embedder if self.family == DECODER_EMBEDDER else None
        return self.architecture.quirks + (role.quirks if role else ())

    @property
    def head(self) -> EmbeddingContract:
        """The full contract (a plain pooling + normalize one when the recipe was built by hand)."""
        return self.contract or EmbeddingContract(self.pooling, self.normalize, source=self.pooling_source)

    @property
    def embedding_dim(self) -> int:
        return self.head.output_dim(self.hidden_size)

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("last_hidden_state", "sentence_embedding") + (MULTI_VECTOR_OUTPUTS if self.heads else ())

    def to_json(self) -> dict[str, Any]:
        head = self.head
        return {
            "model_type": self.architecture.model_type,
            "family": self.family,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "hidden_size": self.hidden_size,
            "embedding_dim": self.embedding_dim,
            "pooling_source": self.pooling_source,
            "dense": [d.to_json() for d in head.dense],
            "prompts": {"query": head.query_prompt, "document": head.document_prompt, "all": dict(head.prompts),
                        "default_prompt_name": head.default_prompt_name},
            "padding_side": head.padding_side,
            "truncate_dim": head.truncate_dim,
            **({"heads": self.heads.to_json()} if self.heads else {}),
            "quant_group_size": self.quant_group_size,
            "quirks": [q.name for q in self.quirks],
            "notes": list(self.notes),
        }


# BGE-M3's extra outputs: per-token sparse weights [batch, seq] (ReLU, 0 on padding and on the
# tokenizer's special tokens) and ColBERT vectors [batch, seq - 1, dim] (tokens 1.., masked, normalized).
MULTI_VECTOR_OUTPUTS = ("sparse_weights", "colbert_vectors")


def supported_types() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def architecture_for(config: dict[str, Any]) -> Architecture:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        archs = ",".join(config.get("architectures") or []) or "?"
        raise ModelportError(
            f"unsupported architecture: model_type={model_type!r} ({archs}); "
            f"supported model types: {supported_types()}"
        )
    return ARCHITECTURES[model_type]


def read_pooling(model_dir: Path) -> tuple[str, bool] | None:
    """Pooling mode and normalization from sentence-transformers' modules.json, if present."""
    contract = read_contract(model_dir, hidden_size=_hidden_size_of(model_dir))
    return None if contract is None else (contract.pooling, contract.normalize)


def _hidden_size_of(model_dir: Path) -> int:
    cfg = model_dir / "config.json"
    return int(read_json(cfg).get("hidden_size", 0)) if cfg.is_file() else 0


def _max_length(model_dir: Path, config: dict[str, Any], arch: Architecture) -> tuple[int, list[str]]:
    """The length the model is really used at: the smallest of the declared limits."""
    notes = []
    limit = int(config.get("max_position_embeddings", 512)) - arch.position_offset
    candidates = {"positions": limit}
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file() and read_json(st_cfg).get("max_seq_length"):
        candidates["sentence-transformers max_seq_length"] = int(read_json(st_cfg)["max_seq_length"])
    tok_cfg = model_dir / "tokenizer_config.json"
    if tok_cfg.is_file():
        mml = read_json(tok_cfg).get("model_max_length")
        if isinstance(mml, (int, float)) and 0 < mml < 1_000_000:
            candidates["tokenizer model_max_length"] = int(mml)
    source, value = min(candidates.items(), key=lambda kv: kv[1])
    if len(set(candidates.values())) > 1:
        notes.append(f"max_length {value} from {source} (declared: {candidates})")
    return value, notes


def family_of(model_dir: Path, config: dict[str, Any], arch: Architecture) -> str:
    """Which family a checkpoint is: a decoder with a sentence-transformers Pooling module is an
    embedder (Qwen3-Embedding), an encoder with BGE-M3's heads a multi-vector encoder."""
    if arch.is_decoder:
        has_pooling = (model_dir / "modules.json").is_file() and read_pooling(model_dir) is not None
        return DECODER_EMBEDDER if has_pooling and arch.embedder is not None else CAUSAL_LM
    if arch.family == SENTENCE_ENCODER and read_heads(model_dir, int(config["hidden_size"])) is not None:
        return MULTI_VECTOR
    return arch.family


def recipe_for(model_dir: Path, config: dict[str, Any], truncate_dim: int | None = None) -> "Recipe | LMRecipe":
    """The recipe for a checkpoint: `Recipe` for embedders, `LMRecipe` for decoder LLMs."""
    arch = architecture_for(config)
    family = family_of(model_dir, config, arch)
    if family == CAUSAL_LM:
        if truncate_dim is not None:
            raise ModelportError("--truncate-dim applies to embedding models; this checkpoint is a text generator")
        return lm_recipe_for(model_dir, config, arch)
    hidden = int(config["hidden_size"])
    contract = read_contract(model_dir, hidden)
    notes: list[str] = []
    if contract is None:
        if family == DECODER_EMBEDDER:  # a decoder trunk has no pooling to guess (Gemma 3 1B is a text LLM)
            raise ModelportError(f"{model_dir}: no sentence-transformers Pooling module (modules.json): a "
                                 f"{arch.model_type} checkpoint is converted as an embedder only with one "
                                 f"(EmbeddingGemma ships it); {arch.model_type} text generation is not supported")
        contract = EmbeddingContract(arch.default_pooling, True, padding_side=padding_side(model_dir),
                                     source="architecture-default")
        notes.append(f"no sentence-transformers pooling config: using {arch.default_pooling} pooling + L2 normalize")
    contract = with_truncate_dim(contract, truncate_dim, hidden)
    if contract.truncate_dim:
        notes.append(f"Matryoshka truncation to {contract.truncate_dim} dims"
                     + (", re-normalized" if contract.normalize else ""))
    if contract.pooling == "last_token" and contract.padding_side != "left":
        notes.append("last-token pooling with right padding: the graph reads the last real token from the mask")
    heads = read_heads(model_dir, hidden) if family == MULTI_VECTOR else None
    max_length, more = _max_length(model_dir, config, arch)
    group, group_notes = _quant_group_size(config, arch)
    return Recipe(
        architecture=arch,
        pooling=contract.pooling,
        normalize=contract.normalize,
        max_length=max_length,
        hidden_size=hidden,
        pooling_source=contract.source,
        notes=tuple(notes + more + group_notes),
        quant_group_size=group,
        contract=contract,
        heads=heads,
        family=family,
    )


def _quant_group_size(config: dict[str, Any], arch: Architecture) -> tuple[int, list[str]]:
    """The architecture's group size, or the largest smaller power of two (>= 16) that divides
    every quantized layer's input width (hidden and intermediate sizes)."""
    widths = [int(config[k]) for k in ("hidden_size", "intermediate_size") if k in config]
    group = arch.quant_group_size
    while group >= 16:
        if all(w % group == 0 for w in widths):
            break
        group //= 2
    else:
        return 0, [f"no quantization group size divides the layer widths {widths}: group-wise quantization unavailable"]
    notes = [] if group == arch.quant_group_size else [
        f"quantization group size {group} (the default {arch.quant_group_size} does not divide {widths})"]
    return group, notes


# --- decoder LLMs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMRecipe:
    """A causal LM checkpoint: the shapes a KV-cache graph needs and what travels with it."""

    architecture: Architecture
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_length: int  # max_position_embeddings: the context the model declares
    tie_word_embeddings: bool
    eos_token_id: list[int]
    rope_theta: float | None
    chat_template: bool  # the tokenizer carries a chat template
    notes: tuple[str, ...] = field(default=())
    quant_group_size: int = 64

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.architecture.inputs

    @property
    def family(self) -> str:
        return self.architecture.family

    @property
    def targets(self) -> tuple[str, ...]:
        return self.architecture.targets

    @property
    def quirks(self) -> tuple[Quirk, ...]:
        return self.architecture.quirks

    def to_json(self) -> dict[str, Any]:
        return {
            "model_type": self.architecture.model_type,
            "family": self.architecture.family,
            "inputs": list(self.inputs),
            "outputs": ["logits"],
            "num_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
            "tie_word_embeddings": self.tie_word_embeddings,
            "eos_token_id": self.eos_token_id,
            "rope_theta": self.rope_theta,
            "chat_template": self.chat_template,
            "quant_group_size": self.quant_group_size,
            "quirks": [q.name for q in self.architecture.quirks],
            "notes": list(self.notes),
        }


def rope_theta_of(config: dict[str, Any]) -> float | None:
    """rope_theta wherever the config keeps it (top level in transformers 4, rope_parameters in 5)."""
    if config.get("rope_theta") is not None:
        return float(config["rope_theta"])
    params = config.get("rope_parameters") or {}
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    return None


def read_chat_template(model_dir: Path) -> str | None:
    """The chat template as transformers 5 (chat_template.jinja) or 4 (tokenizer_config.json) stores it."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tok_cfg = model_dir / "tokenizer_config.json"
    if tok_cfg.is_file():
        template = read_json(tok_cfg).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def eos_list(eos: Any) -> list[int]:
    """An eos_token_id field (absent, one id, or a list) as a list of ids."""
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def _eos_ids(model_dir: Path, config: dict[str, Any]) -> list[int]:
    """EOS ids: generation_config.json first (what generate() stops on), then config.json."""
    gen = model_dir / "generation_config.json"
    if gen.is_file() and read_json(gen).get("eos_token_id") is not None:
        return eos_list(read_json(gen)["eos_token_id"])
    return eos_list(config.get("eos_token_id"))


def lm_recipe_for(model_dir: Path, config: dict[str, Any], arch: Architecture) -> LMRecipe:
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    notes = []
    eos = _eos_ids(model_dir, config)
    if not eos:
        notes.append("no eos_token_id in generation_config.json or config.json: greedy checks never stop early anyway")
    template = read_chat_template(model_dir)
    if template is None:
        notes.append("no chat template: the chat prompt is validated as plain text")
    group, group_notes = _quant_group_size(config, arch)
    return LMRecipe(
        architecture=arch,
        num_layers=int(config["num_hidden_layers"]),
        num_attention_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=int(config["vocab_size"]),
        max_length=int(config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        eos_token_id=eos,
        rope_theta=rope_theta_of(config),
        chat_template=template is not None,
        notes=tuple(notes + group_notes),
        quant_group_size=group,
    )
