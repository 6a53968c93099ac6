"""The files every artifact carries next to its weights: config, tokenizer, pooling config.

On-device clients read these, not the manifest: transformers.js and MLX loaders take the
tokenizer and the sentence-transformers pooling config from the artifact folder. Upstream
converters often drop the pooling config (a client then guesses the pooling); here it is always
written, and when the checkpoint had none, it is written from the recipe so the guess the
conversion used is the one the client reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .errors import ModelportError
from .fsutil import read_json, write_json
from .recipes import Recipe

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
POOLING_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
# the prompts (config_sentence_transformers.json) and every module folder modules.json names (Pooling,
# Dense with its weights, Normalize): small files, and with them sentence-transformers' ONNX backend
# loads the artifact folder as the checkpoint was loaded
ST_FILES = ("config_sentence_transformers.json",)
MODULE_FILES = ("config.json", "model.safetensors")


def write_pooling_config(out: Path, pooling: str, normalize: bool, max_seq_length: int, dim: int) -> None:
    """sentence-transformers' modules.json + Pooling (+ Normalize) config for a pooling mode."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(parents=True, exist_ok=True)
    write_json(out / "modules.json", modules)
    write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    write_json(out / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})


def copy_model_files(source, recipe: Recipe, out: Path) -> list[str]:
    """config + tokenizer + pooling config into `out`; returns the relative paths written.

    tokenizer_config.json's `model_max_length` becomes the length the reference was computed at,
    since clients truncate there.
    """
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source.path / "config.json", out / "config.json")
    written = ["config.json"]
    for name in TOKENIZER_FILES + POOLING_FILES + ST_FILES + module_files(source.path):
        src = source.path / name
        if src.is_file() and name not in written:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out / name)
            written.append(name)
    if "tokenizer.json" not in written:
        raise ModelportError(f"no tokenizer.json in {source.path}: on-device clients need the fast tokenizer file")
    tok_cfg = read_json(out / "tokenizer_config.json") if (out / "tokenizer_config.json").is_file() else {}
    tok_cfg["model_max_length"] = recipe.max_length
    write_json(out / "tokenizer_config.json", tok_cfg)
    if "tokenizer_config.json" not in written:
        written.append("tokenizer_config.json")
    if recipe.pooling_source != "sentence-transformers":
        write_pooling_config(out, recipe.pooling, recipe.normalize, recipe.max_length, recipe.hidden_size)
        written += [p for p in POOLING_FILES if p not in written]
    check_pooling_carried(out, recipe)
    return written


def module_files(model_dir: Path) -> tuple[str, ...]:
    """The files of every sentence-transformers module folder modules.json names (a Dense layer's
    config and safetensors weights; a pickled pytorch_model.bin is not carried: it is converted by
    whoever needs it, never shipped)."""
    path = model_dir / "modules.json"
    if not path.is_file():
        return ()
    folders = [str(m.get("path", "")) for m in read_json(path) if m.get("path")]
    return tuple(f"{folder}/{name}" for folder in folders for name in MODULE_FILES
                 if (model_dir / folder / name).is_file())


def check_pooling_carried(out: Path, recipe: Recipe) -> None:
    """The contract a client will read from `out` is the one the reference used (pooling, normalize,
    Dense layers, prompts)."""
    from .embedding import read_contract

    shipped = read_contract(out, recipe.hidden_size)
    used = recipe.head
    if shipped is None or (shipped.pooling, shipped.normalize, shipped.dense, shipped.prompts) != \
            (used.pooling, used.normalize, used.dense, used.prompts):
        raise ModelportError(f"the sentence-transformers files in {out} do not say what the reference used "
                             f"(shipped: {shipped and shipped.to_json()}; used: {used.to_json()})")


# Files a decoder artifact carries beside its weights (whichever the checkpoint has).
LM_CLIENT_FILES = ("generation_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")


def write_client_files(source, recipe, out: Path, *, max_length: int | None = None,
                       config_updates: dict[str, Any] | None = None,
                       tokenizer_updates: dict[str, Any] | None = None,
                       files: tuple[str, ...] = LM_CLIENT_FILES) -> list[str]:
    """config.json, tokenizer and chat template into `out`, the same way for every decoder target.

    - config.json: every quirk of the architecture applies its config rewrite (`Quirk.apply_config`,
      e.g. rope-parameters writes a top-level rope_theta), then the target's `config_updates`.
    - tokenizer_config.json: the chat template inline (transformers 5 keeps it in chat_template.jinja,
      which transformers.js and older readers do not read; the .jinja file is copied too), a tokenizer
      class older readers know (transformers 5 writes the generic `TokenizersBackend`),
      `model_max_length` when given (clients truncate there), then `tokenizer_updates`.
    Returns the relative paths written.
    """
    from .recipes import read_chat_template

    out.mkdir(parents=True, exist_ok=True)
    if not (source.path / "tokenizer.json").is_file():
        raise ModelportError(f"no tokenizer.json in {source.path}: on-device clients need the fast tokenizer file")
    config = read_json(source.path / "config.json")
    for quirk in recipe.architecture.quirks:
        quirk.apply_config(config)
    config.update(config_updates or {})
    write_json(out / "config.json", config)
    written = ["config.json"]
    for name in files:
        if (source.path / name).is_file():
            shutil.copyfile(source.path / name, out / name)
            written.append(name)
    tok_path = source.path / "tokenizer_config.json"
    tok_cfg = read_json(tok_path) if tok_path.is_file() else {}
    template = read_chat_template(source.path)
    if template is not None:
        tok_cfg["chat_template"] = template
    if tok_cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if max_length is not None:
        tok_cfg["model_max_length"] = max_length
    tok_cfg.update(tokenizer_updates or {})
    write_json(out / "tokenizer_config.json", tok_cfg)
    written.append("tokenizer_config.json")
    return written
