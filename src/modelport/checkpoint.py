"""Model directory checks: what can be wrong with a checkpoint, found before any tensor is loaded.

`source.inspect` runs these in order, cheapest first, and each failure is one `ModelportError` line
(exit 2) naming the file and what is wrong with it:

1. Files: every file modelport (or transformers, for it) reads or copies from the model directory is a
   regular file inside that directory once symlinks are resolved. The one exception is a Hugging Face
   cache snapshot (`models--org--name/snapshots/<commit>/`), whose files are symlinks into the same
   repo's `../../blobs/`. A tokenizer linked to `~/.ssh/id_rsa` would otherwise be copied into the
   artifact, hashed into its manifest and published.
2. JSON files parse (UTF-8, size-capped) and have the shape their readers expect; config fields the
   recipes read are positive integers (not null, strings, floats or booleans).
3. Safetensors headers: the 8-byte length, a JSON object of tensors, known dtypes, and data offsets that
   cover the data exactly (what the safetensors library itself demands); a sharded checkpoint's index
   names only shards that are present, and each shard holds the tensors the index says it does.
4. Tokenizer: tokenizer.json exists and loads with the tokenizers library; its largest id (added tokens
   included) is below config.json's vocab_size, else the embedding lookup indexes past the table.
5. Size: a lower bound on the parameter count, from config arithmetic alone, must fit this machine's
   memory in fp32 (the reference runs in fp32); a config asking for 1e9 x 1e6 is refused with the
   numbers before even an empty model is built. `num_hidden_layers` may not exceed the number of tensors.
6. Inventory: the model class is built on the meta device from config.json (no memory) and its state
   dict compared with the headers, with transformers' own key renaming (base-model prefix, legacy
   names). Missing tensors (transformers would fill them with random values, and the golden would be
   computed from the same random model: garbage matches garbage), tensors of the wrong shape and
   tensors inside the model the config has no place for are refused; tied weights and the buffers
   transformers itself ignores are excepted, and so are heads outside the model (an MLM head in an
   encoder checkpoint) and the encoder pooler, which modelport never runs. The exact fp32 size from the
   meta model must fit the machine too.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import ModelportError

# JSON files modelport reads are small (the largest real tokenizer.json files are ~30 MB).
MAX_JSON_BYTES = 256 << 20
MAX_HEADER_BYTES = 100_000_000
# Share of the machine's memory the fp32 model may take: the reference and the exporters need room besides.
MEMORY_FRACTION = 0.8

# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"

# Files read or copied from a model directory, by modelport (layout, recipes, lint, mlc, model cards) or by
# transformers' tokenizer/config loading on its behalf. Weights and sentence-transformers module folders are
# added per directory.
READ_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.txt", "vocab.json", "merges.txt",
    "tokenizer.model", "sentencepiece.bpe.model", "spiece.model", "modules.json", "sentence_bert_config.json",
    "1_Pooling/config.json", "README.md", SAFE_INDEX,
)

# Config fields the recipes and converters read as sizes: positive integers when present (None: may be null).
REQUIRED_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
OPTIONAL_SIZES = {"intermediate_size": False, "max_position_embeddings": False, "type_vocab_size": False,
                  "num_key_value_heads": True, "head_dim": True}


# --- files --------------------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def hub_blobs(root: Path) -> Path | None:
    """`<cache>/models--org--name/blobs` when `root` is a hub cache snapshot of that repo, else None."""
    if root.parent.name == "snapshots" and root.parent.parent.name.count("--") >= 1:
        return root.parent.parent / "blobs"
    return None


def checked_file(model_dir: Path, name: str) -> Path | None:
    """`model_dir / name` if it exists, refusing what is not a regular file inside the model directory.

    A symlink (or a symlinked folder on the way) may point anywhere inside the model directory, or into
    the blobs folder of the hub cache repo the directory is a snapshot of; anywhere else is refused.
    """
    path = model_dir / name
    if not os.path.lexists(path):
        return None
    root = model_dir.resolve()
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):  # a dangling link or a loop
        raise ModelportError(f"{name} in {model_dir} is a broken symlink (to {os.readlink(path)})"
                             if path.is_symlink() else f"{name} in {model_dir} cannot be resolved") from None
    except OSError as e:
        raise ModelportError(f"cannot read {name} in {model_dir}: {e.strerror}") from None
    blobs = hub_blobs(root)
    if not _inside(real, root) and not (blobs is not None and _inside(real, blobs.resolve())):
        how = "a symlink to" if path.is_symlink() else "reached through a symlinked folder, at"
        raise ModelportError(f"{name} is {how} {real}, outside the model directory {model_dir}: refused (copy the "
                             "file in if you mean it)")
    if not stat.S_ISREG(real.stat().st_mode):
        raise ModelportError(f"{name} in {model_dir} is not a regular file")
    return path


def read_json_file(model_dir: Path, name: str) -> Any:
    """A JSON file of the model directory (already `checked_file`d), one line naming it when it is not JSON."""
    path = model_dir / name
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelportError(f"{name} in {model_dir} is {size / 2**20:.0f} MiB: too large for a JSON file a "
                                 f"model directory holds (limit {MAX_JSON_BYTES >> 20} MiB)")
        raw = path.read_bytes()
    except OSError as e:
        raise ModelportError(f"cannot read {name} in {model_dir}: {e.strerror}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelportError(f"{name} in {model_dir} is not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at offset "
                             f"{e.start})") from None
    except json.JSONDecodeError as e:
        raise ModelportError(f"{name} in {model_dir} is not valid JSON: {e.msg} at line {e.lineno} column "
                             f"{e.colno}") from None
    except RecursionError:
        raise ModelportError(f"{name} in {model_dir} is not valid JSON: nested too deeply") from None


def read_json_object(model_dir: Path, name: str) -> dict[str, Any]:
    data = read_json_file(model_dir, name)
    if not isinstance(data, dict):
        raise ModelportError(f"{name} in {model_dir} is not a JSON object (it holds a {_json_kind(data)})")
    return data


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null", dict: "object"}.get(type(value), type(value).__name__)


def module_files(model_dir: Path) -> list[str]:
    """The sentence-transformers module configs modules.json points at (already parsed and shape-checked)."""
    if checked_file(model_dir, "modules.json") is None:
        return []
    modules = read_json_file(model_dir, "modules.json")
    bad = ("modules.json in {d} is not a sentence-transformers module list: expected a list of objects with a "
           "string \"type\" and \"path\"")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelportError(bad.format(d=model_dir))
    files = []
    for module in modules:
        kind, rel = module.get("type", ""), module.get("path", "")
        if not isinstance(kind, str) or not isinstance(rel, str):
            raise ModelportError(bad.format(d=model_dir))
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts:
            raise ModelportError(f"modules.json in {model_dir} names the module folder {rel!r}, outside the model "
                                 "directory: refused")
        if rel and kind.endswith((".Pooling", ".Dense", ".Normalize")):
            files.append((Path(rel) / "config.json").as_posix())
    return files


def check_files(model_dir: Path, extra: Iterable[str] = ()) -> None:
    """Every file modelport reads or copies is a regular file inside the model directory (see checked_file)."""
    for name in (*READ_FILES, *extra):
        checked_file(model_dir, name)
    for name in module_files(model_dir):
        checked_file(model_dir, name)


# --- config.json ----------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ids_ok(value: Any) -> bool:
    """A token id field: null, one id, or a list of ids (old Llama configs write -1 for "none")."""
    return value is None or _is_int(value) or (isinstance(value, list) and all(_is_int(v) for v in value))


def check_config(config: dict[str, Any], name: str = "config.json") -> None:
    """The fields the recipes read, type-checked: one line naming the field, its value and what it must be."""
    def refuse(field: str, must: str) -> None:
        raise ModelportError(f"{name}: {field} is {json.dumps(config.get(field))}; it must be {must}")

    for field in REQUIRED_SIZES:
        if field not in config:
            raise ModelportError(f"{name} has no {field}: a {config.get('model_type')} config needs it")
        if not (_is_int(config[field]) and config[field] > 0):
            refuse(field, "a positive integer")
    for field, nullable in OPTIONAL_SIZES.items():
        if field in config and not (nullable and config[field] is None):
            if not (_is_int(config[field]) and config[field] > 0):
                refuse(field, "a positive integer" + (" or null" if nullable else ""))
    for field in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if field in config and not _ids_ok(config[field]):
            refuse(field, "a token id, a list of token ids, or null")
    if "tie_word_embeddings" in config and not isinstance(config["tie_word_embeddings"], bool):
        refuse("tie_word_embeddings", "true or false")
    if config.get("rope_theta") is not None and not (_is_number(config["rope_theta"]) and config["rope_theta"] > 0):
        refuse("rope_theta", "a positive number")
    params = config.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            refuse("rope_parameters", "an object")
        theta = params.get("rope_theta")
        if theta is not None and not (_is_number(theta) and theta > 0):
            raise ModelportError(f"{name}: rope_parameters.rope_theta is {json.dumps(theta)}; it must be a positive "
                                 "number")
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads")
    if kv is not None and heads % kv:
        raise ModelportError(f"{name}: num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    if config.get("head_dim") is None and config["hidden_size"] % heads:
        raise ModelportError(f"{name}: hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
                             f"{heads} (and no head_dim is given)")


def check_side_configs(model_dir: Path) -> None:
    """The other JSON files the recipes, layout and tokenizer loading read: parse them, check their shape."""
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "sentence_bert_config.json", "added_tokens.json", "chat_template.json"):
        if (model_dir / name).is_file():
            data = read_json_object(model_dir, name)
            if name == "generation_config.json" and not _ids_ok(data.get("eos_token_id")):
                raise ModelportError(f"{name} in {model_dir}: eos_token_id is {json.dumps(data['eos_token_id'])}; it "
                                     "must be a token id, a list of token ids, or null")
            if name == "sentence_bert_config.json" and data.get("max_seq_length") is not None and not (
                    _is_int(data["max_seq_length"]) and data["max_seq_length"] > 0):
                raise ModelportError(f"{name} in {model_dir}: max_seq_length is {json.dumps(data['max_seq_length'])}; "
                                     "it must be a positive integer")
    for name in module_files(model_dir):
        if (model_dir / name).is_file():
            read_json_object(model_dir, name)
    if (model_dir / "chat_template.jinja").is_file():
        try:
            (model_dir / "chat_template.jinja").read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelportError(f"chat_template.jinja in {model_dir} is not UTF-8 text (offset {e.start})") from None


# --- safetensors ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    file: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> dict[str, Tensor]:
    """Every tensor a safetensors file holds, from its header alone, after checking the header completely:
    the 8-byte length, a JSON object of {dtype, shape, data_offsets} entries with known dtypes, offsets
    whose byte counts match dtype x shape, and that together cover the data exactly (no gap, no overlap,
    nothing missing at the end, nothing after it)."""
    def bad(why: str) -> ModelportError:
        return ModelportError(f"{path} is not a safetensors file ({why})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise bad("truncated header")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES:
                raise bad(f"header length {n}")
            if 8 + n > size:
                raise bad(f"truncated: the header says {n} bytes, the file holds {size - 8} after the length")
            text = f.read(n)
    except OSError as e:
        raise ModelportError(f"cannot read {path}: {e.strerror}") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad(f"header is not JSON: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(header, dict):
        raise bad(f"the header is a {_json_kind(header)}, not an object of tensors")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("__metadata__ is not an object of strings")
    tensors: dict[str, Tensor] = {}
    spans = []
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)):
            raise bad(f"entry {name!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BITS:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has shape {shape}")
        if not (len(offsets) == 2 and all(_is_int(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has data_offsets {offsets}")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or (offsets[1] - offsets[0]) != bits // 8:
            raise bad(f"tensor {name!r}: shape {shape} of {dtype} takes {bits / 8:g} bytes, its data_offsets "
                      f"{offsets} hold {offsets[1] - offsets[0]}")
        tensors[name] = Tensor(dtype, tuple(shape), path.name)
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise bad(f"tensor {name!r} starts at byte {begin} of the data, the previous one ends at {end} "
                      f"({'overlap' if begin < end else 'gap'})")
        end = stop
    data = size - 8 - n
    if end != data:
        raise bad(f"the tensors take {end} bytes, the file holds {data} after the header"
                  + (": truncated" if end > data else ""))
    return tensors


@dataclass(frozen=True)
class Weights:
    """The safetensors checkpoint transformers loads from a directory: which files, which tensors."""

    files: tuple[str, ...]
    tensors: dict[str, Tensor]

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.numel * DTYPE_BITS[t.dtype] // 8 for t in self.tensors.values())

    @property
    def described(self) -> str:
        return self.files[0] if len(self.files) == 1 else f"the {len(self.files)} shards of {SAFE_INDEX}"


def read_weights(model_dir: Path, headers: dict[str, dict[str, Tensor]]) -> Weights:
    """What transformers loads: model.safetensors, else the shards model.safetensors.index.json names.

    `headers` holds every *.safetensors file's parsed header (file name -> tensors)."""
    if SAFE_WEIGHTS in headers:
        return Weights((SAFE_WEIGHTS,), dict(headers[SAFE_WEIGHTS]))
    if checked_file(model_dir, SAFE_INDEX) is None:
        raise ModelportError(f"{model_dir} has {', '.join(sorted(headers))} but no {SAFE_WEIGHTS} or {SAFE_INDEX}: "
                             "transformers would not find the weights (rename the file, or add the index)")
    index = read_json_object(model_dir, SAFE_INDEX)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise ModelportError(f"{SAFE_INDEX} in {model_dir} has no weight_map of tensor name -> shard file")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if shard not in headers:
            if Path(shard).is_absolute() or ".." in Path(shard).parts:
                raise ModelportError(f"{SAFE_INDEX} in {model_dir} names the shard {shard!r}, outside the model "
                                     "directory: refused")
            if checked_file(model_dir, shard) is None:
                count = sum(1 for v in weight_map.values() if v == shard)
                raise ModelportError(f"{SAFE_INDEX} in {model_dir} names the shard {shard} ({count} tensors), which is "
                                     "missing: the download is incomplete (fetch the model again)")
            headers[shard] = read_header(model_dir / shard)
    tensors: dict[str, Tensor] = {}
    for shard in shards:
        for name, tensor in headers[shard].items():
            if name in tensors:
                raise ModelportError(f"tensor {name} is in both {tensors[name].file} and {shard}: ambiguous checkpoint")
            tensors[name] = tensor
    for name, shard in weight_map.items():
        if headers[shard].get(name) is None:
            raise ModelportError(f"{SAFE_INDEX} in {model_dir} puts {name} in {shard}, whose header does not list it")
    return Weights(tuple(shards), tensors)


# --- tokenizer ----------------------------------------------------------------------------------------------


def tokenizer_max_id(model_dir: Path) -> int | None:
    """The largest id tokenizer.json (and tokenizer_config.json's added tokens) can produce; the file must
    parse as JSON and load with the tokenizers library (what AutoTokenizer uses)."""
    data = read_json_object(model_dir, "tokenizer.json")
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(data.get("added_tokens", []), list):
        raise ModelportError(f"tokenizer.json in {model_dir} is not a tokenizers file (no \"model\" object)")
    ids: list[int] = []
    try:
        from tokenizers import Tokenizer
    except ImportError:
        Tokenizer = None  # noqa: N806  (the conversion itself will say the package is missing)
    if Tokenizer is not None:
        try:
            tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as e:  # the Rust parser's message is one useful line
            raise ModelportError(f"tokenizer.json in {model_dir} cannot be loaded by the tokenizers library: "
                                 f"{str(e).splitlines()[0][:200]}") from None
        ids.extend(tok.get_vocab(with_added_tokens=True).values())
    else:
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            ids.extend(v for v in vocab.values() if _is_int(v))
        elif isinstance(vocab, list):
            ids.append(len(vocab) - 1)
        ids.extend(t["id"] for t in data.get("added_tokens", []) if isinstance(t, dict) and _is_int(t.get("id")))
    if (model_dir / "tokenizer_config.json").is_file():
        added = read_json_object(model_dir, "tokenizer_config.json").get("added_tokens_decoder") or {}
        if not isinstance(added, dict):
            raise ModelportError(f"tokenizer_config.json in {model_dir}: added_tokens_decoder is not an object")
        for key in added:
            if not key.isdigit():
                raise ModelportError(f"tokenizer_config.json in {model_dir}: added_tokens_decoder has the id {key!r}")
            ids.append(int(key))
    return max(ids) if ids else None


def check_tokenizer(model_dir: Path, config: dict[str, Any]) -> None:
    """tokenizer.json present and loadable, its ids within config.json's vocab_size."""
    if checked_file(model_dir, "tokenizer.json") is None:
        raise ModelportError(f"no tokenizer.json in {model_dir}: on-device clients need the fast tokenizer file")
    top = tokenizer_max_id(model_dir)
    vocab = config.get("vocab_size")
    if top is not None and _is_int(vocab) and top >= vocab:
        raise ModelportError(f"tokenizer.json produces ids up to {top}, but config.json's vocab_size is {vocab}: ids "
                             f">= {vocab} would index past the embedding table; tokenizer and config do not match")


# --- size -----------------------------------------------------------------------------------------------------


def machine_memory() -> int | None:
    """Physical memory, or the cgroup's limit when the process runs under a smaller one (bytes)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total


def config_params_lower_bound(config: dict[str, Any]) -> int:
    """Parameters every supported architecture has at least, from config.json alone: the embedding table,
    and per layer the query and output projections and the two MLP matrices (up, down)."""
    hidden, layers, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    inter = config.get("intermediate_size") or 0
    return config["vocab_size"] * hidden + layers * (2 * hidden * heads * head_dim + 2 * hidden * inter)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _count(n: int) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:,.1f}{unit}"
    return str(n)


def check_fits(params: int, weights: Weights, *, at_least: bool) -> None:
    """`params` parameters in fp32 must fit MEMORY_FRACTION of this machine's memory."""
    memory = machine_memory()
    if memory is None or 4 * params <= MEMORY_FRACTION * memory:
        return
    what = "at least " if at_least else ""
    disk = f"the weights on disk hold {_count(weights.numel)} parameters ({_gib(weights.nbytes)})"
    if at_least and params > 2 * weights.numel:
        disk += ": config.json does not describe these weights"
    raise ModelportError(
        f"config.json describes a model of {what}{_count(params)} parameters, {what}{_gib(4 * params)} in fp32 (the "
        f"reference runs in fp32): more than {_gib(MEMORY_FRACTION * memory)}, {MEMORY_FRACTION:.0%} of this "
        f"machine's {_gib(memory)} of memory; {disk}")


# --- the tensor inventory ---------------------------------------------------------------------------------------


def _names(keys: Iterable[str], limit: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _meta_model(model_dir: Path, config: dict[str, Any], decoder: bool) -> Any:
    """The model transformers would load, built on the meta device (shapes only, no memory)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except Exception as e:
        raise ModelportError(f"transformers cannot read config.json in {model_dir}: "
                             f"{(str(e).splitlines() or [type(e).__name__])[0][:300]}") from None
    auto = AutoModelForCausalLM if decoder else AutoModel
    try:
        with torch.device("meta"):
            return auto.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    except Exception as e:
        raise ModelportError(f"config.json in {model_dir} does not describe a buildable {config.get('model_type')} "
                             f"model: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}") from None


def _renamer(model: Any, expected: dict[str, tuple[int, ...]]):
    """checkpoint key -> (model key, converted): transformers' own renaming (base-model prefix added or
    removed, legacy names such as LayerNorm.gamma); `converted` when a WeightConverter (fusing or
    splitting tensors, so shapes differ by design) takes the key."""
    prefix = getattr(model, "base_model_prefix", "") or None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
    except Exception:  # another transformers version: the prefix rule alone
        rename_source_key = None

    def rename(key: str) -> tuple[str, bool]:
        if rename_source_key is not None:
            new, pattern = rename_source_key(key, renamings, converters, prefix, expected)
            if new not in expected and key in expected:
                new, pattern = rename_source_key(key, [], [], prefix, expected)
            return new, pattern is not None
        if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in expected:
            return key[len(prefix) + 1:], False
        if prefix and f"{prefix}.{key}" in expected:
            return f"{prefix}.{key}", False
        return key, False

    return rename


def check_inventory(model_dir: Path, config: dict[str, Any], weights: Weights, *, decoder: bool) -> list[str]:
    """The weights hold exactly the tensors the model config.json describes needs, with its shapes.

    Returns notes (tensors of heads outside the model, which transformers ignores and so does modelport)."""
    if config["num_hidden_layers"] > len(weights.tensors):
        raise ModelportError(f"config.json says num_hidden_layers={config['num_hidden_layers']}, but "
                             f"{weights.described} holds only {len(weights.tensors)} tensors: config.json does not "
                             "describe these weights")
    model = _meta_model(model_dir, config, decoder)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    modules = {name for name, _ in model.named_modules() if name}
    rename = _renamer(model, expected)
    present: set[str] = set()
    wrong: list[str] = []
    unexpected: set[str] = set()
    for key, tensor in weights.tensors.items():
        new, converted = rename(key)
        if new not in expected:
            unexpected.add(new)
            continue
        present.add(new)
        if not converted and tensor.shape != expected[new]:
            wrong.append(f"{key} is {list(tensor.shape)} in the weights, {list(expected[new])} from config.json")
    missing = set(expected) - present
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in missing and source not in missing:
            missing.discard(target)
        elif source in missing and target not in missing:
            missing.discard(source)
    buffers = [name for name, _ in model.named_buffers()]
    ignore_missing = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    ignore_unexpected = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    if any(b.endswith("rotary_emb.inv_freq") for b in buffers):
        ignore_unexpected.add(r"rotary_emb\.inv_freq")
    if any(b.endswith("position_ids") for b in buffers):
        ignore_unexpected.add(r"(^|\.)position_ids$")
    if ignore_missing:
        missing = {k for k in missing if not re.search("|".join(f"({p})" for p in ignore_missing), k)}
    if ignore_unexpected:
        unexpected = {k for k in unexpected if not re.search("|".join(f"({p})" for p in ignore_unexpected), k)}
    if not decoder:  # the encoder pooler: transformers builds it, modelport never runs it (last_hidden_state)
        missing = {k for k in missing if not k.startswith("pooler.")}
    kind = f"the {config.get('model_type')} model config.json describes ({type(model).__name__})"
    if missing:
        raise ModelportError(f"{weights.described} lacks {len(missing)} tensor(s) {kind} needs: {_names(missing)}; "
                             "transformers would fill them with random values (and the reference would be computed "
                             "from the same random model): refused")
    if wrong:
        raise ModelportError(f"{len(wrong)} tensor(s) in {weights.described} do not have the shapes config.json "
                             f"implies: {'; '.join(sorted(wrong)[:3])}{' ...' if len(wrong) > 3 else ''}: "
                             "config.json does not describe these weights")
    inside = {k for k in unexpected if any(".".join(k.split(".")[:i]) in modules for i in range(1, k.count(".") + 1))}
    if inside:
        raise ModelportError(f"{weights.described} holds {len(inside)} tensor(s) that {kind} has no place for: "
                             f"{_names(inside)}; config.json does not describe these weights (a layer count or a "
                             "size changed?)")
    notes = []
    if unexpected:
        notes.append(f"{len(unexpected)} tensor(s) of a head outside the model ignored, as transformers does: "
                     f"{_names(unexpected)}")
    check_fits(sum(p.numel() for p in model.parameters()), weights, at_least=False)
    return notes


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def native_model_types() -> set[str]:
    """model_types transformers implements itself (no repo code needed)."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:
        from .recipes import ARCHITECTURES

        return set(ARCHITECTURES)
    return set(CONFIG_MAPPING_NAMES)
