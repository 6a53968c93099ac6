"""The sentence-transformers contract of an embedding checkpoint, read from the model's own files.

What turns a transformer's hidden states into the vector users ship is not in config.json: it is in
sentence-transformers' module folders. An app that mean-pools `last_hidden_state` of EmbeddingGemma
and skips its two Dense layers gets vectors unrelated to the real ones (cosine near 0), and a
Qwen3-Embedding query without its instruction prompt retrieves worse, with no error either way. So
the whole contract is read here, once, and every target ships a graph that computes the final
embedding:

    prompts      config_sentence_transformers.json  {"query": "Instruct: ...\\nQuery:", ...}
    pooling      <Pooling>/config.json              cls | mean | last_token
    dense        <Dense>/config.json + weights      Linear(+bias) then identity or tanh, in order
    normalize    a Normalize module                 L2 over the last axis
    truncate_dim conversion option (Matryoshka)     first k dims, re-normalized when normalize is on
    padding side tokenizer_config.json              Qwen3-Embedding pads left (its last token is EOS)

BGE-M3's two extra heads (`MultiVectorHeads`) ship beside the weights as pickled `.pt` state
dicts; they are read with `torch.load(weights_only=True)` only (no pickled code runs) or from
safetensors when the checkpoint has them there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelportError
from .fsutil import read_json

POOLING_MODES = ("mean", "cls", "last_token")
# sentence-transformers spellings -> ours
_POOLING_NAMES = {"mean_tokens": "mean", "mean": "mean", "cls_token": "cls", "cls": "cls",
                  "lasttoken": "last_token", "last_token": "last_token"}
# Dense activations a graph can carry; sentence-transformers' default (no key) is Tanh.
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
}
DEFAULT_ACTIVATION = "tanh"
# Prompt names the validation applies: queries get "query", corpus texts "document" (the names
# Qwen3-Embedding and EmbeddingGemma use; "passage" is BGE/E5's spelling of the second).
QUERY_PROMPT_NAMES = ("query",)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "Retrieval-document")


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers Dense module: y = activation(x @ weight.T + bias)."""

    path: str  # its folder inside the model directory
    in_features: int
    out_features: int
    bias: bool
    activation: str  # "identity" | "tanh"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias, "activation": self.activation}


@dataclass(frozen=True)
class MultiVectorHeads:
    """BGE-M3's sparse (hidden -> 1) and ColBERT (hidden -> hidden) linear heads."""

    sparse_file: str
    colbert_file: str
    hidden_size: int
    colbert_dim: int
    # token ids whose sparse weight FlagEmbedding drops: the tokenizer's cls, eos, pad and unk
    unused_ids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"sparse": self.sparse_file, "colbert": self.colbert_file, "hidden_size": self.hidden_size,
                "colbert_dim": self.colbert_dim, "unused_ids": list(self.unused_ids),
                "loader": "torch.load(weights_only=True) / safetensors"}


@dataclass(frozen=True)
class EmbeddingContract:
    """Everything between the transformer's hidden states and the shipped sentence embedding."""

    pooling: str
    normalize: bool
    dense: tuple[DenseLayer, ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    padding_side: str = "right"
    truncate_dim: int | None = None
    source: str = "sentence-transformers"  # or "architecture-default"

    @property
    def query_prompt(self) -> str:
        return next((self.prompts[n] for n in QUERY_PROMPT_NAMES if n in self.prompts), "")

    @property
    def document_prompt(self) -> str:
        return next((self.prompts[n] for n in DOCUMENT_PROMPT_NAMES if n in self.prompts), "")

    def output_dim(self, hidden_size: int) -> int:
        dim = self.dense[-1].out_features if self.dense else hidden_size
        return self.truncate_dim or dim

    def to_json(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "normalize": self.normalize,
                "dense": [d.to_json() for d in self.dense], "prompts": dict(self.prompts),
                "default_prompt_name": self.default_prompt_name, "query_prompt": self.query_prompt,
                "document_prompt": self.document_prompt, "padding_side": self.padding_side,
                "truncate_dim": self.truncate_dim, "source": self.source}


def _pooling_mode(cfg_path: Path) -> str:
    cfg = read_json(cfg_path)
    if "pooling_mode" in cfg:  # newer sentence-transformers spell it as one string
        modes = [cfg["pooling_mode"]] if isinstance(cfg["pooling_mode"], str) else list(cfg["pooling_mode"])
    else:
        modes = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    names = [_POOLING_NAMES.get(m, m) for m in modes]
    if len(names) != 1 or names[0] not in POOLING_MODES:
        raise ModelportError(f"unsupported pooling in {cfg_path}: {modes or 'none'}; "
                             f"supported: {', '.join(POOLING_MODES)}")
    if cfg.get("include_prompt") is False:
        raise ModelportError(f"{cfg_path}: include_prompt=false (prompt tokens left out of the pooling) is not "
                             f"supported: every client would have to know the prompt's token length")
    return names[0]


def _dense_layer(model_dir: Path, rel: str) -> DenseLayer:
    cfg_path = model_dir / rel / "config.json"
    if not cfg_path.is_file():
        raise ModelportError(f"modules.json names a Dense module but {cfg_path} is missing")
    cfg = read_json(cfg_path)
    act_name = cfg.get("activation_function")
    if act_name is None:
        activation = DEFAULT_ACTIVATION
    elif act_name in ACTIVATIONS:
        activation = ACTIVATIONS[act_name]
    else:
        raise ModelportError(f"{cfg_path}: Dense activation {act_name!r} is not supported "
                             f"(supported: {', '.join(ACTIVATIONS)})")
    if cfg.get("use_residual"):
        raise ModelportError(f"{cfg_path}: residual Dense modules are not supported")
    try:
        return DenseLayer(rel, int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg.get("bias", True)),
                          activation)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelportError(f"{cfg_path}: Dense config lacks in_features/out_features ({e})") from None


def _prompts(model_dir: Path) -> tuple[dict[str, str], str | None]:
    path = model_dir / "config_sentence_transformers.json"
    if not path.is_file():
        return {}, None
    cfg = read_json(path)
    prompts = cfg.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ModelportError(f"{path}: `prompts` must map names to strings")
    default = cfg.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelportError(f"{path}: default_prompt_name {default!r} is not one of its prompts")
    return dict(prompts), default


def padding_side(model_dir: Path) -> str:
    path = model_dir / "tokenizer_config.json"
    side = read_json(path).get("padding_side", "right") if path.is_file() else "right"
    if side not in ("left", "right"):
        raise ModelportError(f"{path}: padding_side {side!r} (expected left or right)")
    return side


def read_contract(model_dir: Path, hidden_size: int) -> EmbeddingContract | None:
    """The contract from sentence-transformers' files, or None when the checkpoint has no Pooling module."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return None
    modules = read_json(modules_path)
    pooling: str | None = None
    normalize = False
    last_normalize = 0  # how many Dense layers came before the Normalize module
    dense: list[DenseLayer] = []
    for module in modules:
        kind = str(module.get("type", ""))
        rel = str(module.get("path", ""))
        if kind.endswith(".Pooling"):
            cfg_path = model_dir / rel / "config.json"
            if not cfg_path.is_file():
                raise ModelportError(f"modules.json names a Pooling module but {cfg_path} is missing")
            pooling = _pooling_mode(cfg_path)
        elif kind.endswith(".Normalize"):
            normalize = True
            last_normalize = len(dense)
        elif kind.endswith(".Dense"):
            if pooling is None:
                raise ModelportError(f"{modules_path}: a Dense module before the Pooling module (token-level "
                                     f"Dense) is not supported")
            dense.append(_dense_layer(model_dir, rel))
        elif kind.endswith(".Transformer"):
            continue
        else:
            raise ModelportError(f"{modules_path}: module {kind!r} is not supported (supported: Transformer, "
                                 f"Pooling, Dense, Normalize)")
    if pooling is None:
        return None
    if normalize and last_normalize != len(dense):  # the graph normalizes after the last Dense layer
        raise ModelportError(f"{modules_path}: a Normalize module before a Dense module is not supported "
                             f"(the exported head normalizes last)")
    width = hidden_size
    for layer in dense:
        if layer.in_features != width:
            raise ModelportError(f"{model_dir / layer.path}: Dense in_features {layer.in_features} != the "
                                 f"{width} features before it")
        width = layer.out_features
    prompts, default = _prompts(model_dir)
    return EmbeddingContract(pooling, normalize, tuple(dense), prompts, default, padding_side(model_dir))


def with_truncate_dim(contract: EmbeddingContract, dim: int | None, hidden_size: int) -> EmbeddingContract:
    """The contract with a Matryoshka truncation (first `dim` features)."""
    from dataclasses import replace

    if dim is None:
        return contract
    full = contract.dense[-1].out_features if contract.dense else hidden_size
    if not 1 <= dim <= full:
        raise ModelportError(f"--truncate-dim {dim}: must be between 1 and the embedding size {full}")
    return replace(contract, truncate_dim=dim)


# --- weights ------------------------------------------------------------------------------------------


def load_state(path: Path) -> dict[str, np.ndarray]:
    """A small state dict (Dense layer, BGE-M3 head) as float32 arrays: safetensors, or a pickle read
    with torch.load(weights_only=True), which refuses anything but tensors and plain containers."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError names the refused global
        raise ModelportError(f"{path}: not a plain tensor state dict (torch.load weights_only refused it: "
                             f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelportError(f"{path}: expected a state dict of tensors")
    return {k: v.detach().float().numpy() for k, v in state.items()}


def _weight_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ModelportError(f"{folder}: no model.safetensors or pytorch_model.bin for the Dense layer")


def dense_weights(model_dir: Path, layer: DenseLayer) -> tuple[np.ndarray, np.ndarray | None]:
    """(weight [out, in], bias [out] or None) of a Dense layer, checked against its config."""
    state = load_state(_weight_file(model_dir / layer.path))
    weight, bias = state.get("linear.weight"), state.get("linear.bias")
    if weight is None or weight.shape != (layer.out_features, layer.in_features):
        raise ModelportError(f"{model_dir / layer.path}: linear.weight {None if weight is None else weight.shape} "
                             f"!= ({layer.out_features}, {layer.in_features})")
    if layer.bias and (bias is None or bias.shape != (layer.out_features,)):
        raise ModelportError(f"{model_dir / layer.path}: bias=true but linear.bias is missing or misshapen")
    return weight, (bias if layer.bias else None)


def head_tensors(model_dir: Path, contract: EmbeddingContract,
                 heads: "MultiVectorHeads | None") -> dict[str, tuple[str, np.ndarray]]:
    """The embedding head's weights outside the checkpoint's weight files, named as torch_model's
    EmbeddingHead names them (head.dense.<i>.weight, head.sparse.bias, ...): name -> (file, array).
    Recorded with the source's tensor statistics, so validation checks them like every other weight."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    for i, layer in enumerate(contract.dense):
        weight, bias = dense_weights(model_dir, layer)
        file = _weight_file(model_dir / layer.path).relative_to(model_dir).as_posix()
        out[f"head.dense.{i}.weight"] = (file, weight)
        if bias is not None:
            out[f"head.dense.{i}.bias"] = (file, bias)
    if heads is not None:
        for name, value in head_weights(model_dir, heads).items():
            file = heads.sparse_file if name.startswith("sparse") else heads.colbert_file
            out[f"head.{name}"] = (file, value)
    return out


# Where BGE-M3 keeps its heads: pickled state dicts beside the weights (or safetensors, when converted).
SPARSE_FILES = ("sparse_linear.safetensors", "sparse_linear.pt")
COLBERT_FILES = ("colbert_linear.safetensors", "colbert_linear.pt")


def read_heads(model_dir: Path, hidden_size: int) -> MultiVectorHeads | None:
    """BGE-M3's heads when the checkpoint ships both; one without the other is refused."""
    sparse = next((n for n in SPARSE_FILES if (model_dir / n).is_file()), None)
    colbert = next((n for n in COLBERT_FILES if (model_dir / n).is_file()), None)
    if sparse is None and colbert is None:
        return None
    if sparse is None or colbert is None:
        have, lack = (sparse, "colbert_linear") if colbert is None else (colbert, "sparse_linear")
        raise ModelportError(f"{model_dir}: {have} without {lack}.pt: BGE-M3-style checkpoints ship both heads")
    heads = MultiVectorHeads(sparse, colbert, hidden_size, 0)
    weights = head_weights(model_dir, heads)
    return MultiVectorHeads(sparse, colbert, hidden_size, int(weights["colbert.weight"].shape[0]),
                            special_ids(model_dir, ("cls_token", "eos_token", "pad_token", "unk_token")))


def special_ids(model_dir: Path, roles: tuple[str, ...]) -> tuple[int, ...]:
    """The ids of the tokenizer's named special tokens (tokenizer_config.json or special_tokens_map.json
    give the strings, tokenizer.json the ids), sorted, without duplicates."""
    from tokenizers import Tokenizer

    names: dict[str, Any] = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        if (model_dir / file).is_file():
            names.update({k: v for k, v in read_json(model_dir / file).items() if k in roles and v})
    try:
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception as e:  # missing or unreadable: one line, as every other checkpoint file
        raise ModelportError(f"{model_dir}: BGE-M3-style heads need tokenizer.json to know the special tokens "
                             f"whose sparse weight is dropped ({str(e).splitlines()[0][:120]})") from None
    ids = set()
    for role, value in names.items():
        text = value.get("content") if isinstance(value, dict) else value
        tid = tok.token_to_id(str(text))
        if tid is None:
            raise ModelportError(f"{model_dir}: special token {role}={text!r} is not in tokenizer.json")
        ids.add(int(tid))
    return tuple(sorted(ids))


# --- what clients do with the multi-vector outputs ------------------------------------------------------


def real_tokens(output: str, attention_mask: np.ndarray) -> np.ndarray | None:
    """Which entries of a graph output belong to real tokens, as a boolean index over its token axis
    (the mask's shape, [seq] or [batch, seq]): token-level outputs by the mask, ColBERT vectors from
    token 1 (BGE-M3 drops CLS); None for a sentence-level output. Every comparison of these outputs
    (validator, MLX runtime check, real clients) selects them here."""
    keep = attention_mask.astype(bool)
    return {"last_hidden_state": keep, "sparse_weights": keep, "colbert_vectors": keep[..., 1:]}.get(output)



def lexical_weights(input_ids: np.ndarray, weights: np.ndarray) -> dict[int, float]:
    """BGE-M3's sparse embedding of one text: the max weight per token id, ids with weight 0 dropped."""
    out: dict[int, float] = {}
    for tid, w in zip(input_ids.tolist(), weights.tolist()):
        if w > 0 and w > out.get(tid, 0.0):
            out[tid] = float(w)
    return out


def lexical_score(a: dict[int, float], b: dict[int, float]) -> float:
    """FlagEmbedding's lexical matching score: sum over shared ids of the product of weights."""
    return float(sum(w * b[t] for t, w in a.items() if t in b))


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    """ColBERT late interaction: mean over query vectors of the best dot product with a document vector
    (FlagEmbedding's colbert_score divides by the query's token count)."""
    return float((query @ doc.T).max(axis=1).sum() / max(len(query), 1))


def head_weights(model_dir: Path, heads: MultiVectorHeads) -> dict[str, np.ndarray]:
    """{"sparse.weight" [1, H], "sparse.bias" [1], "colbert.weight" [D, H], "colbert.bias" [D]}, checked."""
    out: dict[str, np.ndarray] = {}
    for prefix, name, rows in (("sparse", heads.sparse_file, 1), ("colbert", heads.colbert_file, None)):
        state = load_state(model_dir / name)
        weight, bias = state.get("weight"), state.get("bias")
        if weight is None or weight.ndim != 2 or weight.shape[1] != heads.hidden_size or \
                (rows is not None and weight.shape[0] != rows):
            raise ModelportError(f"{model_dir / name}: weight {None if weight is None else weight.shape} does not fit "
                                 f"a Linear({heads.hidden_size}, {rows or 'D'})")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ModelportError(f"{model_dir / name}: bias {bias.shape} does not fit weight {weight.shape}")
        out[f"{prefix}.weight"] = weight
        out[f"{prefix}.bias"] = bias if bias is not None else np.zeros(weight.shape[0], np.float32)
    return out
