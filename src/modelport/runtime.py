"""Run an artifact: the `embedding_utils.py` users otherwise hand-write ("ONNX if present, else PyTorch").

    from modelport import runtime
    enc = runtime.load("artifacts/all-minilm-l6-v2/onnx")      # checks the manifest, picks a variant
    vectors = enc.encode(["a sentence", "another one"])       # [n, dim] float32, input order

`load` refuses an artifact whose files no longer match manifest.json, or that was never validated,
in one line (a silently edited graph would otherwise serve wrong vectors with no sign of it). It
runs only variants whose validation verdict is "pass": the named one, else the best this machine
runs (`choose_variant`). Encoders return the graph's `sentence_embedding`, the whole recipe's head
(pooling, Dense layers, normalization, truncation), so the vectors are the ones the validator judged.

Batching by length (`Encoder.encode`): texts are tokenized once, sorted by token count, cut into
batches padded to their own longest text, and put back in input order — what sentence-transformers
does — and a batch is cut early where padding costs more than a call (`length_sorted_batches`).
Measured on MiniLM, 2 threads, 256 mixed-length validation texts: a plain loop padding each batch of
32 to its longest text ran at 0.72x PyTorch; sorting alone at ~1x; the cost-cut batches 2.0-2.7x
faster than sorting alone (docs/runtime.md).

The tokenizer is the artifact's tokenizer.json, run by the `tokenizers` library directly (no
transformers import: ~2 s and ~100 us per call saved), with the artifact's own padding setting
switched off: MiniLM's tokenizer.json pads every input to 128 tokens (lint `tokenizer-fixed-padding`),
which would cost a single short sentence 10x its work.

Fallback: an ONNX artifact on a machine without onnxruntime runs the source model recorded in the
manifest through sentence-transformers on PyTorch, with one note saying so (`Encoder.note`).
Decoder (causal-lm) artifacts give a `CausalLM` with prefill/decode (targets/onnx/decoder.OrtLMRunner).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import manifest as manifest_mod
from .errors import ModelportError, ToolchainError
from .families import DECODER
from .manifest import TargetInfo

SENTENCE_OUTPUT = "sentence_embedding"
DEFAULT_THREADS = 2  # this workbench's CPU; load(threads=...) for others
# Variant preference for CPU runtimes when none is named, best first. Measured on MiniLM, 2 threads:
# dynamic int8 (q8, uint8) is no faster than fp32 on this CPU and fp16 runs slower (ORT CPU has few
# fp16 kernels), so fp32 leads; a fused fp32 graph (onnxruntime's transformer optimizer) precedes it.
PREFERENCE = ("fp32-fused", "fp32", "q8", "uint8", "fp16-fused", "fp16", "q4-fused", "q4", "q4f16")
# What each target's runtime is called in notes and tables (the packages it needs are the converter's
# `runtime_requires`, the registry's declaration, which the validator checks too).
RUNTIME_NAMES = {"onnx": "onnxruntime", "mlx": "mlx", "coreml": "coreml", "mlc": "mlc"}
PYTORCH = "pytorch"


def available(package: str) -> bool:
    """Whether a runtime package is importable here (patched by tests to simulate a missing one)."""
    return importlib.util.find_spec(package) is not None


@dataclass(frozen=True)
class Artifact:
    """An opened, checked artifact: its manifest, target section and the variants that passed."""

    root: Path
    manifest: dict[str, Any]
    info: TargetInfo
    passed: tuple[str, ...]

    @property
    def recipe(self) -> dict[str, Any]:
        return self.manifest["recipe"]

    @property
    def is_decoder(self) -> bool:
        return self.info.family == DECODER.name


def open_artifact(root: Path | str) -> Artifact:
    """The artifact at `root` after checking it: manifest readable, every file's sha256 as recorded,
    validation run, at least one variant passed. Any failure is one ModelportError line."""
    root = Path(root)
    man = manifest_mod.load(root)  # refuses a missing manifest, an unknown version, a schema mismatch
    problems = manifest_mod.verify_files(root, man)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelportError(f"refusing to run {root}: its files do not match manifest.json ({problems[0]}{more}); "
                             "convert it again, or `modelport validate` it if the change was yours")
    info = TargetInfo.from_json(man["target"])
    validation = man.get("validation", {})
    if validation.get("status") == "not-run":
        raise ModelportError(f"refusing to run {root}: it was never validated; run `modelport validate {root}` first")
    verdicts = {k: v.get("verdict") for k, v in validation.get("variants", {}).items()}
    passed = tuple(v for v in info.variants if verdicts.get(v) == "pass")
    if not passed:
        raise ModelportError(f"refusing to run {root}: no variant passed validation "
                             f"({', '.join(f'{k}: {v}' for k, v in verdicts.items()) or 'no verdicts recorded'})")
    return Artifact(root, man, info, passed)


def choose_variant(art: Artifact, variant: str | None = None) -> str:
    """The variant to run: the named one (it must exist and have passed), else the first of PREFERENCE
    that passed, else the first passed variant in the manifest's order."""
    if variant is not None:
        if variant not in art.info.variants:
            raise ModelportError(f"variant {variant!r} is not in {art.root} ({', '.join(art.info.variants)})")
        if variant not in art.passed:
            raise ModelportError(f"variant {variant!r} of {art.root} did not pass validation; passed: "
                                 f"{', '.join(art.passed)}")
        return variant
    for name in PREFERENCE:
        if name in art.passed:
            return name
    return art.passed[0]


# --- tokenization ----------------------------------------------------------------------------------


class ArtifactTokenizer:
    """The artifact's tokenizer.json: ids per text (special tokens added, truncated to the recipe's max
    length), and padding of a batch to its own longest row on the recipe's padding side."""

    def __init__(self, path: Path, max_length: int, padding_side: str = "right") -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        pad = self.tok.padding
        self.pad_id = int(pad["pad_id"]) if pad else self._config_pad_id(path)
        self.tok.no_padding()  # padded here, per batch (see the module docstring)
        self.tok.enable_truncation(max_length)
        self.padding_side = padding_side

    def _config_pad_id(self, path: Path) -> int:
        """tokenizer_config.json's pad_token beside tokenizer.json (0 when neither names one: the
        masked positions' ids do not reach the embedding)."""
        from .fsutil import read_json

        config = path.with_name("tokenizer_config.json")
        token = read_json(config).get("pad_token") if config.is_file() else None
        token = token.get("content") if isinstance(token, dict) else token
        found = self.tok.token_to_id(token) if isinstance(token, str) else None
        return int(found) if found is not None else 0

    def ids(self, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """(ids, type ids) per text, unpadded."""
        return [(e.ids, e.type_ids) for e in self.tok.encode_batch(list(texts))]

    def pad(self, rows: Sequence[tuple[list[int], list[int]]]) -> dict[str, np.ndarray]:
        """input_ids, attention_mask, token_type_ids [batch, longest row], int64."""
        n = max(len(r[0]) for r in rows)
        ids = np.full((len(rows), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), n), dtype=np.int64)
        types = np.zeros((len(rows), n), dtype=np.int64)
        for i, (row, tt) in enumerate(rows):
            span = slice(n - len(row), n) if self.padding_side == "left" else slice(0, len(row))
            ids[i, span], mask[i, span], types[i, span] = row, 1, tt
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def tokenizer_file(art: Artifact, variant: str | None = None) -> Path:
    """The artifact's tokenizer.json: at its root (ONNX, Core ML, MLC), else beside the variant's files
    (MLX keeps one model folder per variant)."""
    places = [art.root / "tokenizer.json"]
    if variant is not None:
        places.append((art.root / art.info.variants[variant].file).parent / "tokenizer.json")
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise ModelportError(f"{art.root} has no tokenizer.json (looked in: {', '.join(str(p) for p in places)}); "
                             "the runtime tokenizes with the artifact's own tokenizer")
    return found


def artifact_tokenizer(art: Artifact, variant: str | None = None) -> ArtifactTokenizer:
    """The tokenizer the runtime feeds the variant with: the recipe's max length and padding side."""
    return ArtifactTokenizer(tokenizer_file(art, variant), int(art.recipe["max_length"]),
                             art.recipe.get("padding_side") or "right")


# --- encoders --------------------------------------------------------------------------------------

# feeds -> [batch, dim] sentence embeddings
BatchRunner = Callable[[dict[str, np.ndarray]], np.ndarray]


# A call's fixed cost in padded-token units, for cutting batches (length_sorted_batches). Measured on
# MiniLM fp32, 2 threads: one 12-token text 2.5 ms, 32 of them 48 ms: 0.12 ms per token, ~1 ms (8 tokens)
# per call beyond that; 16 leaves a margin for smaller models, where the per-call share is larger.
CALL_COST_TOKENS = 16


def length_sorted_batches(lengths: Sequence[int], batch_size: int,
                          call_cost: int = CALL_COST_TOKENS) -> list[np.ndarray]:
    """Indices of the texts in batches of at most `batch_size`, longest first, so each batch pads to
    nearly its own length; concatenated, the batches are a permutation of range(n).

    Sorting alone (sentence-transformers) still pads a batch holding a few long texts and many short
    ones to the long length: 256 validation texts, 6 of them 256 tokens, the rest ~12: the first batch
    of 32 costs 8192 padded tokens for ~1900 real ones and took 3/4 of the run. So the cuts are the ones
    that minimize padded tokens plus `call_cost` per call (dynamic programming over the sorted order,
    O(n * batch_size)): a batch ends early where padding the next texts costs more than another call.
    """
    if batch_size < 1:
        raise ModelportError(f"batch_size must be at least 1 (got {batch_size})")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    longest = [int(lengths[i]) for i in order]
    n = len(order)
    best = [0] + [0] * n  # best[i]: cost of the first i sorted texts
    cut = [0] * (n + 1)  # cut[i]: where the last batch of the first i texts starts
    for i in range(1, n + 1):
        best[i] = -1
        for j in range(max(0, i - batch_size), i):
            cost = best[j] + (i - j) * longest[j] + call_cost
            if best[i] < 0 or cost <= best[i]:  # ties: full batches first, the remainder last
                best[i], cut[i] = cost, j
    bounds, i = [], n
    while i > 0:
        bounds.append((cut[i], i))
        i = cut[i]
    return [order[a:b] for a, b in reversed(bounds)]


@dataclass
class Encoder:
    """Sentence embeddings from an artifact (or its PyTorch fallback). `encode` is the whole API."""

    runtime: str  # onnxruntime, mlx, coreml, mlc, pytorch
    variant: str  # the artifact variant, or "source" for the PyTorch fallback
    run: BatchRunner | None
    tokenizer: ArtifactTokenizer | None
    prompts: dict[str, str] = field(default_factory=dict)
    note: str | None = None  # why this is not what was asked for (fallback), else None
    # the PyTorch fallback encodes whole lists itself (sentence-transformers sorts by length too)
    encode_texts: Callable[[list[str], int], np.ndarray] | None = None
    # the runner caches outputs per input (a validator runner, RECOMPUTING_RUNNERS): not for timing
    memoized: bool = False

    def encode(self, texts: Sequence[str] | str, batch_size: int = 32, prompt_name: str | None = None) -> np.ndarray:
        """[len(texts), dim] float32 in input order; a single string gives [1, dim]."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ModelportError(f"no prompt {prompt_name!r} in this artifact's recipe "
                                     f"({', '.join(self.prompts) or 'it has none'})")
            texts = [self.prompts[prompt_name] + t for t in texts]
        if not texts:
            raise ModelportError("encode needs at least one text")
        if self.encode_texts is not None:
            return self.encode_texts(texts, batch_size)
        assert self.run is not None and self.tokenizer is not None
        rows = self.tokenizer.ids(texts)
        out: np.ndarray | None = None
        for batch in length_sorted_batches([len(r[0]) for r in rows], batch_size):
            vectors = np.asarray(self.run(self.tokenizer.pad([rows[i] for i in batch])), dtype=np.float32)
            if out is None:
                out = np.empty((len(texts), vectors.shape[-1]), dtype=np.float32)
            out[batch] = vectors
        assert out is not None
        return out


def ort_session(path: Path, threads: int):
    """onnxruntime CPU session: the validator's options (ort.session_options: `threads` intra-op, one
    inter-op, graph optimization ORT_ENABLE_ALL, the default)."""
    import onnxruntime as ort

    from .targets.onnx.ort import session_options

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def ort_runner(path: Path, threads: int) -> BatchRunner:
    """feeds -> sentence_embedding only (the graph's other outputs are not copied out)."""
    session = ort_session(path, threads)
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if SENTENCE_OUTPUT not in outputs:
        raise ModelportError(f"{path.name} has no {SENTENCE_OUTPUT} output ({', '.join(outputs)})")

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([SENTENCE_OUTPUT], {n: feeds[n] for n in names})[0]

    return run


def _mlx_encoder_forward(root: Path, variant: str) -> Callable[[dict[str, np.ndarray]], tuple[np.ndarray, ...]]:
    from .targets.mlx.encoder import load_forward

    return load_forward(root, variant)


# (target, family) -> a runner that computes on every call. The validator's runners of MLX and MLC
# memoize outputs per input (MLX's CPU backend is ~1 GFLOP/s and the validator feeds the same inputs
# twice): right for validation, but a repeated text would then cost nothing and a timing would lie.
RECOMPUTING_RUNNERS: dict[tuple[str, str], Callable[[Path, str], Callable[[dict[str, np.ndarray]], tuple]]] = {
    ("mlx", "sentence-encoder"): _mlx_encoder_forward,
}


def target_runner(art: Artifact, variant: str) -> tuple[BatchRunner, bool]:
    """Any other target, reading sentence_embedding: a recomputing runner where one is registered, else
    the validator's runner for the variant. Returns (runner, whether it memoizes per input)."""
    from .targets import REGISTRY

    make = RECOMPUTING_RUNNERS.get((art.info.name, art.info.family))
    if make is not None:
        runner, memoized = make(art.root, variant), False
    else:
        runner, memoized = REGISTRY.converter(art.info.name, art.info.family).open(art.root).runner(variant), True
    index = list(art.recipe["outputs"]).index(SENTENCE_OUTPUT)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return runner(feeds)[index]

    return run, memoized


def pytorch_encoder(art: Artifact, threads: int, note: str | None = None, missing: str | None = None) -> Encoder:
    """The source model recorded in the manifest, through sentence-transformers on PyTorch (CPU).
    `missing`: the artifact's runtime package that is not installed (why this is a fallback)."""
    for package in ("torch", "sentence_transformers"):
        if not available(package):
            why = f"{missing} is not installed, and the PyTorch fallback" if missing else "the PyTorch runtime"
            raise ToolchainError(f"no runtime for {art.root}: {why} needs {package} "
                                 "(pip install sentence-transformers)")
    import torch
    from sentence_transformers import SentenceTransformer

    source = art.manifest["source"]
    where = source.get("path")
    model_id = where if where and Path(where).is_dir() else source.get("hub_id")
    if not model_id:
        raise ModelportError(f"the manifest of {art.root} records no source path or hub id for the PyTorch fallback")
    torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_id), device="cpu", truncate_dim=art.recipe.get("truncate_dim"))
    model.max_seq_length = int(art.recipe["max_length"])

    def encode_texts(texts: list[str], batch_size: int) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=batch_size, convert_to_numpy=True), dtype=np.float32)

    return Encoder(PYTORCH, "source", None, None, _prompts(art.recipe), note, encode_texts)


def _prompts(recipe: dict[str, Any]) -> dict[str, str]:
    prompts = recipe.get("prompts") or {}
    named = {k: v for k, v in (prompts.get("all") or {}).items() if isinstance(v, str)}
    for key in ("query", "document"):
        if prompts.get(key):
            named.setdefault(key, prompts[key])
    return named


def missing_runtime(art: Artifact) -> str | None:
    """The first package the artifact's runtime needs that is not installed (None: it can run here)."""
    from .targets import REGISTRY

    needs = REGISTRY.converter_class(art.info.name, art.info.family).runtime_requires
    return next((p for p in needs if not available(p)), None)


def load_encoder(art: Artifact, variant: str | None, runtime: str | None, threads: int) -> Encoder:
    name = choose_variant(art, variant)
    own = RUNTIME_NAMES.get(art.info.name, art.info.name)
    if runtime == PYTORCH:
        return pytorch_encoder(art, threads)
    if runtime not in (None, own):
        raise ModelportError(f"runtime {runtime!r} does not run {art.info.name} artifacts; use {own} or {PYTORCH}")
    missing = missing_runtime(art)
    if missing is not None:
        note = (f"note: {missing} is not installed, so {art.info.name} variant {name} cannot run here: "
                f"running the source model {art.manifest['source'].get('name')} in PyTorch (sentence-transformers)")
        return pytorch_encoder(art, threads, note, missing)
    tok = artifact_tokenizer(art, name)
    memoized = False
    if art.info.name == "onnx":
        run = ort_runner(art.root / art.info.variants[name].file, threads)
    else:
        run, memoized = target_runner(art, name)
    return Encoder(own, name, run, tok, _prompts(art.recipe), memoized=memoized)


# --- decoders --------------------------------------------------------------------------------------


@dataclass
class CausalLM:
    """A decoder artifact's runner (lm.LMRunner: prefill / decode) with the artifact's tokenizer."""

    runtime: str
    variant: str
    runner: Any
    tokenizer: Any  # tokenizers.Tokenizer
    note: str | None = None

    def ids(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def greedy(self, input_ids: np.ndarray, steps: int) -> list[int]:
        """`steps` greedy tokens after `input_ids` (no stop token: for timing and comparisons)."""
        logits, state = self.runner.prefill(np.asarray(input_ids, dtype=np.int64))
        token = int(np.argmax(logits[-1]))
        out = [token]
        for _ in range(steps - 1):
            logits, state = self.runner.decode(state, token)
            token = int(np.argmax(logits))
            out.append(token)
        return out


def load_causal_lm(art: Artifact, variant: str | None, threads: int) -> CausalLM:
    from tokenizers import Tokenizer

    name = choose_variant(art, variant)
    missing = missing_runtime(art)
    if missing is not None:
        raise ToolchainError(f"{art.root} is a {art.info.name} decoder and {missing} is not installed (pip install "
                             f"{missing}); decoders have no PyTorch fallback here")
    if art.info.name == "onnx":
        from .targets.onnx.decoder import OrtLMRunner
        from .fsutil import read_json

        config = read_json(art.root / "config.json") if (art.root / "config.json").is_file() else None
        runner: Any = OrtLMRunner(art.root / art.info.variants[name].file, threads, config)
    else:
        from .targets import REGISTRY

        runner = REGISTRY.converter(art.info.name, art.info.family).open(art.root).runner(name)
    tok = Tokenizer.from_file(str(tokenizer_file(art, name)))
    tok.no_padding()
    tok.no_truncation()
    return CausalLM(RUNTIME_NAMES.get(art.info.name, art.info.name), name, runner, tok)


def load(artifact_dir: Path | str, variant: str | None = None, runtime: str | None = None,
         threads: int | None = None) -> Encoder | CausalLM:
    """Open and check an artifact, pick its variant, return an Encoder (embedders) or a CausalLM (decoders)."""
    threads = DEFAULT_THREADS if threads is None else threads
    if threads < 1:
        raise ModelportError(f"threads must be at least 1 (got {threads})")
    art = open_artifact(artifact_dir)
    if art.is_decoder:
        return load_causal_lm(art, variant, threads)
    return load_encoder(art, variant, runtime, threads)
