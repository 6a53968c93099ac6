"""`modelport bench` / benchmarks/infer.py: how fast an artifact runs, beside the peers, in one run.

Encoders (what the PyTorch -> ONNX Runtime migration guides measure):
  single   ms per call, `singles` calls of one text each ("100 embeddings in N s")
  batch    texts/s encoding `texts` mixed-length texts in batches of `batch_size`
  cos min  the lowest cosine similarity to PyTorch's vector over every text measured, beside every
           speed, so a fast but wrong variant is visible in the same row
for: PyTorch eager via sentence-transformers on the recorded source model (the peer users migrate
from); every variant of the artifact in onnxruntime CPU through `modelport.runtime`; the same
variants in transformers.js on Node (the clients harness, js/node_run.mjs, which times each call);
other artifacts of the same model given with `--also` (MLX, timed with a forward pass that recomputes
every call; MLC and the Core ML interpreter for correctness only: MLC's validator runner memoizes per
input, and the MIL interpreter's speed says nothing about Core ML);
optimum's plain `optimum-cli export onnx` and its `optimum-cli onnxruntime optimize -O2`, run in their
own venv (`--optimum-python`) by bench_peer.py with the same texts, batching and threads.

The texts are the artifact's validation texts (reference/golden.json: empty, short, non-Latin,
emoji, and one text at the recipe's max length), cycled to the count asked for. Tokenization is inside
every timed call, for every runtime, as a user pays it; `tokenize_ms` in the JSON gives its share.

Decoders: prefill tokens/s (one prompt of `prefill_tokens` tokens) and decode tokens/s (greedy,
`decode_tokens` steps with the KV cache) for PyTorch (transformers) and every variant in onnxruntime
(and MLX or MLC packages with `--also`: MLC's wasm32 library in Node; Core ML artifacts for agreement
only; an MLX artifact is also timed as users run it, mlx_lm.load, beside mlx-lm's own `convert -q` of
the same checkpoint as its peer); beside them, how many greedy tokens equal PyTorch's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import runtime
from .errors import ModelportError, ToolchainError

Progress = Callable[[str], Any]
PEER = "peer"  # rows that are peers, for the "x best peer" ratio
# Core ML runs only on macOS: here the MIL interpreter runs its artifacts, numerically right but slow by
# design, so its rows carry agreement and no speed
INTERPRETER = "coreml interpreter (milinterp)"
INTERPRETER_NOTE = "correctness only: the MIL interpreter is not Core ML's speed"


@dataclass
class Settings:
    threads: int = runtime.DEFAULT_THREADS
    singles: int = 100
    texts: int = 256
    batch_size: int = 32
    variants: list[str] | None = None  # of the main artifact; None: every variant that passed
    node: bool = True  # transformers.js in Node, when the clients are installed
    also: list[Path] = field(default_factory=list)  # MLX / MLC / Core ML artifacts of the same model
    optimum_python: str | None = None
    prefill_tokens: int = 128
    decode_tokens: int = 32
    repeat: int = 1  # timed passes per measurement; the best (fastest) is reported


@dataclass
class Row:
    runtime: str
    variant: str
    kind: str  # "modelport" or PEER
    single_ms: float | None = None
    batch_texts_per_s: float | None = None
    cos_min: float | None = None
    note: str = ""


@dataclass
class LMRow:
    runtime: str
    variant: str
    kind: str
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    same_tokens: str | None = None  # "k/n" greedy tokens equal to PyTorch's
    note: str = ""


# --- texts and timing ------------------------------------------------------------------------------


def bench_texts(root: Path, n: int) -> list[str]:
    """The artifact's validation texts (as its golden ran them), cycled to n."""
    from .fsutil import read_json
    from .reference import GOLDEN_JSON

    texts = list(read_json(root / GOLDEN_JSON)["texts"])
    return [texts[i % len(texts)] for i in range(n)]


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


Encode = Callable[[list[str], int], np.ndarray]


def time_encoder(encode: Encode, single: list[str], batch: list[str], batch_size: int,
                 repeat: int = 1) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(ms per single call, batch texts/s, single vectors, batch vectors); a few warm-up calls first
    (session start-up, allocator growth) are not timed; the best of `repeat` passes is kept."""
    for t in single[:3]:
        encode([t], 1)
    encode(batch[:batch_size], batch_size)
    best_single, best_batch = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        single_out = np.concatenate([encode([t], 1) for t in single])
        best_single = min(best_single, time.perf_counter() - t0)
        t0 = time.perf_counter()
        batch_out = encode(batch, batch_size)
        best_batch = min(best_batch, time.perf_counter() - t0)
    return best_single / len(single) * 1000, len(batch) / best_batch, single_out, batch_out


# --- encoder runtimes ------------------------------------------------------------------------------


@dataclass
class Reference:
    """PyTorch's vectors for the single and batch texts: what every row's cos min is taken against."""

    single: np.ndarray
    batch: np.ndarray

    def cos_min(self, single: np.ndarray, batch: np.ndarray) -> float:
        return float(min(cos_rows(single, self.single).min(), cos_rows(batch, self.batch).min()))


def pytorch_rows(art: runtime.Artifact, s: Settings, single: list[str],
                 batch: list[str]) -> tuple[list[Row], Reference]:
    enc = runtime.pytorch_encoder(art, s.threads)
    ms, tps, v1, vb = time_encoder(lambda t, b: enc.encode(t, b), single, batch, s.batch_size, s.repeat)
    import sentence_transformers
    import torch

    versions = f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}"
    row = Row("pytorch eager (sentence-transformers)", "source", PEER, ms, tps, 1.0, versions)
    ref = Reference(v1, vb)
    # The same model fed the runtime's batches (one encode call per batch): how much of a batch speed-up
    # is the batching rather than the graph and runtime.
    batches = runtime_batches(art, batch, s.batch_size)

    def encode_runtime_batches(texts: list[str], batch_size: int) -> np.ndarray:
        if len(texts) != len(batch):
            return enc.encode(texts, batch_size)
        out = np.empty((len(texts), v1.shape[1]), dtype=np.float32)
        for idx in batches:
            out[idx] = enc.encode([texts[i] for i in idx], len(idx))
        return out

    _, tps2, _, vb2 = time_encoder(encode_runtime_batches, single[:1], batch, s.batch_size, s.repeat)
    row2 = Row("pytorch eager, the runtime's batches", "source", PEER, None, tps2, ref.cos_min(v1, vb2),
               "sentence-transformers encode() per batch modelport.runtime cuts")
    return [row, row2], ref


# What a row of another target measures, said beside its numbers.
TARGET_NOTES = {"mlc": "wasm32 CPU library in Node, one process call per batch",
                "mlx": "MLX CPU backend here (its own threads: --threads does not apply)"}
LM_TARGET_NOTES = {"mlc": "the package's wasm32 library in Node (TVM web runtime, paged KV cache), one thread",
                   "mlx": "the validator's model (group-wise sums, for accuracy); as users run it: the mlx-lm rows"}


def _max_length_note(art: runtime.Artifact, texts: list[str]) -> str:
    """Said when the artifact cuts some of the texts shorter than PyTorch does (Core ML's fixed 128)."""
    tok = runtime.artifact_tokenizer(art, art.passed[0])
    tok.tok.no_truncation()
    longest = max(len(r[0]) for r in tok.ids(texts))
    limit = int(art.recipe["max_length"])
    return f"max length {limit}: texts up to {longest} tokens are cut there" if longest > limit else ""


def artifact_rows(art: runtime.Artifact, variants: Sequence[str] | None, s: Settings, single: list[str],
                  batch: list[str], ref: Reference | None, progress: Progress) -> list[Row]:
    """Every passed (or named) variant of an artifact through modelport.runtime."""
    rows = []
    for name in variants or list(art.info.variants):
        if name not in art.passed:
            rows.append(Row(art.info.name, name, "modelport", note="not run: did not pass validation"))
            continue
        progress(f"{art.info.name} {name}")
        enc = runtime.load_encoder(art, name, None, s.threads)
        label = f"{enc.runtime} (modelport.runtime)"
        if enc.note:
            rows.append(Row(label, name, "modelport", note=enc.note))
            continue
        cut = _max_length_note(art, single + batch)
        if art.info.name == "coreml" or enc.memoized:
            # the Core ML runtime exists only on macOS: here the MIL interpreter runs it, numerically right
            # but slow by design, so its time says nothing about Core ML; a memoizing runner (MLC's) would
            # time a dictionary lookup for every repeated text
            vecs = enc.encode(single + batch, 1)
            cos = ref.cos_min(vecs[:len(single)], vecs[len(single):]) if ref else None
            why = (INTERPRETER_NOTE if art.info.name == "coreml" else
                   "correctness only: the validator's runner memoizes per input (for MLC wasm speed see "
                   "benchmarks/mlc_vs_ort_web.py)")
            label = INTERPRETER if art.info.name == "coreml" else label
            rows.append(Row(label, name, "modelport", None, None, cos, "; ".join(filter(None, [why, cut]))))
            continue
        ms, tps, v1, vb = time_encoder(lambda t, b: enc.encode(t, b), single, batch, s.batch_size, s.repeat)
        rows.append(Row(label, name, "modelport", ms, tps, ref.cos_min(v1, vb) if ref else None,
                        "; ".join(filter(None, [TARGET_NOTES.get(art.info.name, ""), cut]))))
    return rows


def runtime_batches(art: runtime.Artifact, texts: list[str], batch_size: int) -> list[np.ndarray]:
    """The batches modelport.runtime cuts `texts` into (index arrays): peers and clients run the same ones."""
    tok = runtime.artifact_tokenizer(art, art.passed[0])
    return runtime.length_sorted_batches([len(r[0]) for r in tok.ids(texts)], batch_size)


def node_rows(art: runtime.Artifact, variants: Sequence[str], s: Settings, single: list[str], batch: list[str],
              ref: Reference | None, progress: Progress) -> list[Row]:
    """transformers.js (onnxruntime-node, CPU) on the same texts: the batches are the runtime's, already
    length-sorted (so this measures the runtime, not the batching); each call is timed in JS."""
    from .clients import TRANSFORMERS_JS_FILES, TRANSFORMERS_JS_LOAD
    from .clients.harness import missing_prerequisites, needs_model, run_program
    from .reference import Golden

    missing = missing_prerequisites(["node"])
    if missing:
        return [Row("transformers.js node", "-", "modelport", note=f"not run: {'; '.join(missing)}")]
    golden = Golden.load(art.root)
    batches = runtime_batches(art, batch, s.batch_size)
    cases = ([{"name": "warm-1", "texts": single[:1]}, {"name": "warm-b", "texts": [batch[i] for i in batches[0]]}]
             + [{"name": f"s{i}", "texts": [t]} for i, t in enumerate(single)]
             + [{"name": f"b{j}", "texts": [batch[i] for i in idx]} for j, idx in enumerate(batches)])
    runs, rows = [], []
    for name in variants:
        info = art.info.variants[name]
        if name not in art.passed:
            continue
        if TRANSFORMERS_JS_FILES.get(name) != info.file and name not in TRANSFORMERS_JS_LOAD:
            rows.append(Row("transformers.js node", name, "modelport",
                            note=f"not run: transformers.js loads no dtype from {info.file}"))
            continue
        run: dict[str, Any] = {"device": "cpu", "dtype": name, "cases": [c["name"] for c in cases]}
        if name in TRANSFORMERS_JS_LOAD:
            run["load"] = TRANSFORMERS_JS_LOAD[name]
        runs.append(run)
    if not runs:
        return rows
    request: dict[str, Any] = {"model_dir": str(art.root.resolve()), "pooling": golden.meta["pooling"],
                               "normalize": bool(golden.meta["normalize"]), "cases": cases, "runs": runs}
    if needs_model(golden.meta):
        request.update(mode="model", outputs=list(golden.meta["outputs"]), probes=[], bare_queries=[])
    progress(f"transformers.js node: {', '.join(r['dtype'] for r in runs)}")
    result = run_program("node_run.mjs", request, timeout=1800, progress=None)
    from .clients.harness import decode_cases

    for run, record in zip(runs, result["runs"]):
        name = run.get("dtype") if "load" not in run else next(k for k, v in TRANSFORMERS_JS_LOAD.items()
                                                                  if v == run["load"])
        if record.get("status") != "ok":
            rows.append(Row("transformers.js node", name, "modelport",
                            note=f"failed at {record.get('stage')}: {str(record.get('reason'))[:160]}"))
            continue
        out = decode_cases(record)
        v1 = np.concatenate([out[f"s{i}"].pooled for i in range(len(single))])
        vb = np.empty((len(batch), v1.shape[1]), dtype=np.float32)
        for j, idx in enumerate(batches):
            vb[idx] = out[f"b{j}"].pooled
        ms = sum(out[f"s{i}"].seconds for i in range(len(single))) / len(single) * 1000
        tps = len(batch) / sum(out[f"b{j}"].seconds for j in range(len(batches)))
        versions = result.get("versions", {})
        rows.append(Row("transformers.js node", name, "modelport", ms, tps, ref.cos_min(v1, vb) if ref else None,
                        f"transformers.js {versions.get('transformers.js')}, onnxruntime-node "
                        f"{versions.get('onnxruntime-node')}, default threads"))
    return rows


def optimum_rows(art: runtime.Artifact, s: Settings, single: list[str], batch: list[str], ref: Reference | None,
                 progress: Progress) -> list[Row]:
    """optimum's plain export and its -O2 optimization of the source model, timed in optimum's venv."""
    py = s.optimum_python
    assert py is not None
    recipe = art.recipe
    if recipe.get("dense") or recipe.get("pooling") not in ("mean", "cls") or recipe.get("truncate_dim"):
        return [Row("optimum", "-", PEER, note="not run: the recipe's head (Dense, last-token pooling or "
                                               "truncation) is not in optimum's feature-extraction graph")]
    source = art.manifest["source"]
    model = source.get("path") if source.get("path") and Path(source["path"]).is_dir() else source.get("hub_id")
    cli = [py, "-m", "optimum.commands.optimum_cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelport-bench-optimum-") as td:
        plain, o2 = Path(td) / "plain", Path(td) / "o2"
        steps = [("plain", cli + ["export", "onnx", "--model", str(model), "--task", "feature-extraction", str(plain)]),
                 ("O2", cli + ["onnxruntime", "optimize", "--onnx_model", str(plain), "-O2", "-o", str(o2)])]
        for label, cmd in steps:
            progress(f"optimum {label}: {' '.join(cmd[1:5])} ...")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[:300]
                rows.append(Row(f"optimum {label}", "fp32", PEER, note=f"not run: {label} failed: {tail}"))
                break
            folder = plain if label == "plain" else o2
            onnx_file = next((f for f in (folder / "model.onnx", folder / "model_optimized.onnx") if f.is_file()), None)
            if onnx_file is None:
                rows.append(Row(f"optimum {label}", "fp32", PEER, note=f"not run: no ONNX file in {folder.name}"))
                break
            out = Path(td) / f"{label}.json"
            request = {"model_dir": str(plain), "onnx": str(onnx_file), "texts_single": single, "texts_batch": batch,
                       "batches": [b.tolist() for b in runtime_batches(art, batch, s.batch_size)],
                       "threads": s.threads, "max_length": int(recipe["max_length"]),
                       "pooling": recipe["pooling"], "normalize": bool(recipe.get("normalize")), "out": str(out)}
            (Path(td) / "req.json").write_text(json.dumps(request), encoding="utf-8")
            progress(f"optimum {label}: timing")
            proc = subprocess.run([py, str(Path(__file__).with_name("bench_peer.py")), str(Path(td) / "req.json")],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[:300]
                rows.append(Row(f"optimum {label}", "fp32", PEER, note=f"not run: timing failed: {tail}"))
                continue
            got = json.loads(out.read_text(encoding="utf-8"))
            with np.load(str(out) + ".npz") as z:
                cos = ref.cos_min(z["single"], z["batch"]) if ref else None
            what = "optimum-cli export onnx" if label == "plain" else "optimum-cli onnxruntime optimize -O2"
            rows.append(Row(f"optimum {label} (onnxruntime)", "fp32", PEER, got["single_ms"], got["batch_texts_per_s"],
                            cos, f"{what}; onnxruntime {got['onnxruntime']}, the runtime's batches"))
    return rows


def tokenize_ms(art: runtime.Artifact, single: list[str], batch: list[str]) -> dict[str, float]:
    """The tokenizer's share of the runtime's time: per single text, and for the whole batch set."""
    tok = runtime.artifact_tokenizer(art, art.passed[0])
    tok.ids(single[:3])
    t0 = time.perf_counter()
    for t in single:
        tok.pad(tok.ids([t]))
    per_single = (time.perf_counter() - t0) / len(single) * 1000
    t0 = time.perf_counter()
    tok.ids(batch)
    return {"per_single_call_ms": per_single, "all_batch_texts_ms": (time.perf_counter() - t0) * 1000}


def bench_encoder(art: runtime.Artifact, also: list[runtime.Artifact], s: Settings,
                  progress: Progress) -> dict[str, Any]:
    single = bench_texts(art.root, s.singles)
    batch = bench_texts(art.root, s.texts)
    progress("pytorch (sentence-transformers)")
    rows, ref = pytorch_rows(art, s, single, batch)
    if s.optimum_python:
        rows += optimum_rows(art, s, single, batch, ref, progress)
    variants = s.variants or list(art.info.variants)
    rows += artifact_rows(art, variants, s, single, batch, ref, progress)
    if s.node and art.info.name == "onnx":
        rows += node_rows(art, variants, s, single, batch, ref, progress)
    for other in also:
        rows += artifact_rows(other, None, s, single, batch, ref, progress)
    return {"family": art.info.family, "rows": [asdict(r) for r in rows],
            "tokenize": tokenize_ms(art, single, batch),
            "texts": {"single": len(single), "batch": len(batch), "batch_size": s.batch_size}}


# --- decoders --------------------------------------------------------------------------------------


def prompt_ids(lm: runtime.CausalLM, n: int) -> np.ndarray:
    """n token ids of validation text (the texts joined, repeated until long enough)."""
    from .validation_set import TEXTS

    text = " ".join(t for t in TEXTS if t)
    ids = lm.ids(text)
    while len(ids) < n:
        ids = np.concatenate([ids, ids])
    return ids[:n]


def time_lm(prefill: Callable[[], Any], decode: Callable[[Any, int], Any], first: Callable[[Any], int], steps: int,
            repeat: int) -> tuple[float, float, list[int]]:
    """(prefill s, decode s for `steps` tokens, greedy tokens), best of `repeat` (+1 warm-up)."""
    best_p = best_d = float("inf")
    tokens: list[int] = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        logits, state = prefill()
        tp = time.perf_counter() - t0
        token = first(logits)
        tokens = [token]
        t0 = time.perf_counter()
        for _ in range(steps):
            logits, state = decode(state, token)
            token = first(logits)
            tokens.append(token)
        td = time.perf_counter() - t0
        best_p, best_d = min(best_p, tp), min(best_d, td)
    return best_p, best_d, tokens


def pytorch_lm_row(art: runtime.Artifact, ids: np.ndarray, s: Settings) -> tuple[LMRow, list[int]]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(s.threads)
    model = AutoModelForCausalLM.from_pretrained(art.manifest["source"]["path"], dtype=torch.float32).eval()

    def prefill():
        with torch.no_grad():
            out = model(torch.from_numpy(ids)[None], use_cache=True)
        return out.logits[0, -1], out.past_key_values

    def decode(past, token):
        with torch.no_grad():
            out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
        return out.logits[0, -1], out.past_key_values

    tp, td, tokens = time_lm(prefill, decode, lambda lg: int(torch.argmax(lg)), s.decode_tokens, s.repeat)
    return LMRow("pytorch eager (transformers)", "source", PEER, len(ids) / tp, s.decode_tokens / td, None,
                 f"torch {torch.__version__}, transformers {transformers.__version__}"), tokens


def agreement(tokens: list[int], ref: list[int] | None) -> str | None:
    """"k/n": the first k greedy tokens equal PyTorch's n."""
    if ref is None:
        return None
    k = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), len(ref))
    return f"{k}/{len(ref)}"


def lm_rows(art: runtime.Artifact, variants: Sequence[str] | None, ids: np.ndarray, s: Settings,
            ref: list[int] | None, progress: Progress) -> list[LMRow]:
    rows = []
    for name in variants or list(art.info.variants):
        if name not in art.passed:
            rows.append(LMRow(art.info.name, name, "modelport", note="not run: did not pass validation"))
            continue
        progress(f"{art.info.name} {name}")
        lm = runtime.load_causal_lm(art, name, s.threads)
        interpreter = art.info.name == "coreml"  # the MIL interpreter: Core ML itself runs only on macOS
        tp, td, tokens = time_lm(lambda: _last(lm.runner.prefill(ids)), lm.runner.decode,
                                 lambda lg: int(np.argmax(lg)), s.decode_tokens, 0 if interpreter else s.repeat)
        if interpreter:
            rows.append(LMRow(INTERPRETER, name, "modelport", None, None, agreement(tokens, ref), INTERPRETER_NOTE))
            continue
        rows.append(LMRow(f"{lm.runtime} (modelport.runtime)", name, "modelport", len(ids) / tp,
                          s.decode_tokens / td, agreement(tokens, ref), LM_TARGET_NOTES.get(art.info.name, "")))
    return rows


def mlx_lm_rows(mlx_arts: list[runtime.Artifact], source: Path, ids: np.ndarray, s: Settings,
                ref: list[int] | None, progress: Progress) -> list[LMRow]:
    """MLX decoder folders as their users run them, and their peer.

    Users load an MLX variant folder with `mlx_lm.load` (mlx-lm's model classes and kernels), not with
    the validator's model (targets/mlx/models/llama.py sums group-wise for accuracy on MLX's CPU
    backend, which costs speed): each passed variant is timed that way. The peer is mlx-lm's own
    `mlx_lm.convert -q` (4-bit, group 64: what its users run) of the same checkpoint, timed the same way.
    mlx-lm comes with the `mlx` extra: same environment, in this process.
    """
    try:
        import mlx.core as mx
        from mlx_lm import __version__ as version
        from mlx_lm import convert, load
        from mlx_lm.models.cache import make_prompt_cache
    except ImportError:
        return [LMRow("mlx-lm", "-", PEER, note="not run: mlx-lm is not installed (pip install mlx-lm)")]

    def timed(model: Any, label: str, variant: str, kind: str, note: str) -> LMRow:
        def step(tokens: list[list[int]], cache: Any) -> tuple[np.ndarray, Any]:
            logits = model(mx.array(tokens), cache=cache)[0, -1].astype(mx.float32)
            mx.eval(logits, [c.state for c in cache])  # as mlx-lm's generate_step: no graph grows across steps
            return np.array(logits), cache

        tp, td, tokens = time_lm(lambda: step([ids.tolist()], make_prompt_cache(model)),
                                 lambda cache, token: step([[token]], cache),
                                 lambda lg: int(np.argmax(lg)), s.decode_tokens, s.repeat)
        return LMRow(label, variant, kind, len(ids) / tp, s.decode_tokens / td, agreement(tokens, ref), note)

    rows = []
    for art in mlx_arts:
        for name in art.passed:
            progress(f"mlx-lm on {art.info.name} {name}")
            rows.append(timed(load(str(art.root / name))[0], f"mlx-lm {version} (this artifact's folder)", name,
                              "modelport", "mlx_lm.load, as users run it"))
    progress("mlx-lm convert -q (peer)")
    with tempfile.TemporaryDirectory(prefix="mp-mlx-lm-") as tmp:
        t0 = time.perf_counter()
        convert(str(source), mlx_path=str(Path(tmp) / "q4"), quantize=True, q_bits=4, q_group_size=64)
        seconds = time.perf_counter() - t0
        model = load(str(Path(tmp) / "q4"))[0]
    rows.append(timed(model, f"mlx-lm {version} (its own convert -q)", "q4 (group 64)", PEER,
                      f"mlx_lm.convert took {seconds:.2f} s; MLX CPU backend here"))
    return rows


def _last(result: tuple[np.ndarray, Any]) -> tuple[np.ndarray, Any]:
    logits, state = result
    return logits[-1], state


def bench_decoder(art: runtime.Artifact, also: list[runtime.Artifact], s: Settings,
                  progress: Progress) -> dict[str, Any]:
    lm = runtime.load_causal_lm(art, None, s.threads)
    ids = prompt_ids(lm, s.prefill_tokens)
    progress("pytorch (transformers)")
    pt, ref = pytorch_lm_row(art, ids, s)
    pt.same_tokens = f"{len(ref)}/{len(ref)}"
    rows = [pt] + lm_rows(art, s.variants, ids, s, ref, progress)
    for other in also:
        rows += lm_rows(other, None, ids, s, ref, progress)
    mlx_arts = [a for a in [art, *also] if a.info.name == "mlx"]
    if mlx_arts:
        rows += mlx_lm_rows(mlx_arts, Path(art.manifest["source"]["path"]), ids, s, ref, progress)
    return {"family": art.info.family, "rows": [asdict(r) for r in rows],
            "prompt_tokens": len(ids), "decode_tokens": s.decode_tokens}


# --- the whole run ---------------------------------------------------------------------------------


def run(artifact: Path, s: Settings, progress: Progress = lambda _: None) -> dict[str, Any]:
    """Benchmark an artifact (and the peers); the result is what --json writes and `table` prints."""
    if s.threads < 1 or s.singles < 1 or s.texts < 1 or s.batch_size < 1:
        raise ModelportError("--threads, --singles, --texts and --batch-size must be at least 1")
    if s.optimum_python and not Path(s.optimum_python).is_file():
        raise ModelportError(f"--optimum-python {s.optimum_python} does not exist")
    art = runtime.open_artifact(artifact)
    for name in s.variants or []:
        if name not in art.info.variants:
            raise ModelportError(f"variant {name!r} is not in {artifact} ({', '.join(art.info.variants)})")
    # opened (every file's sha256 checked) once, here: a bad one is refused before any timing
    also = [runtime.open_artifact(other) for other in s.also]
    if not runtime.available("torch"):
        raise ToolchainError("`modelport bench` measures against PyTorch: install torch and sentence-transformers")
    body = bench_decoder(art, also, s, progress) if art.is_decoder else bench_encoder(art, also, s, progress)
    return {"artifact": str(artifact), "model": art.manifest["source"].get("name"), "target": art.info.name,
            "threads": s.threads, "machine": {"system": platform.system(), "machine": platform.machine(),
                                              "cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "settings": {k: (v if not isinstance(v, list) else [str(x) for x in v]) for k, v in asdict(s).items()
                         if k != "optimum_python"} | {"optimum": bool(s.optimum_python)},
            "created": int(time.time()), **body}


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict[str, Any]):
    """A rich Table of the result: speeds, ratios to PyTorch and to the best peer, agreement."""
    from rich.table import Table

    rows = result["rows"]
    title = (f"{result['model']} ({result['target']}, {result['family']}), {result['threads']} threads, "
             f"{result['machine']['cpus']} CPUs")
    t = Table(title=title)
    if result["family"] == "causal-lm":
        cols = ("runtime", "variant", "prefill tok/s", "x PyTorch", "decode tok/s", "x PyTorch", "x best peer",
                "greedy = PyTorch", "note")
        for c in cols:
            t.add_column(c)
        pt = rows[0]
        peers = [r for r in rows if r["kind"] == PEER and r["decode_tokens_per_s"]]
        best = max((r["decode_tokens_per_s"] for r in peers), default=None)
        for r in rows:
            p, d = r["prefill_tokens_per_s"], r["decode_tokens_per_s"]
            t.add_row(r["runtime"], r["variant"], _fmt(p, ".0f"), _ratio(p, pt["prefill_tokens_per_s"]),
                      _fmt(d, ".1f"), _ratio(d, pt["decode_tokens_per_s"]), _ratio(d, best),
                      r["same_tokens"] or "-", r["note"])
        return t
    cols = ("runtime", "variant", "ms / 1 text", "x PyTorch", f"texts/s (batch {result['texts']['batch_size']})",
            "x PyTorch", "x best peer (1 / batch)", "cos min vs PyTorch", "note")
    for c in cols:
        t.add_column(c)
    pt = rows[0]
    peers = [r for r in rows if r["kind"] == PEER]
    best_ms = min((r["single_ms"] for r in peers if r["single_ms"]), default=None)
    best_tps = max((r["batch_texts_per_s"] for r in peers if r["batch_texts_per_s"]), default=None)
    for r in rows:
        ms, tps = r["single_ms"], r["batch_texts_per_s"]
        t.add_row(r["runtime"], r["variant"], _fmt(ms, ".2f"), _ratio(pt["single_ms"], ms), _fmt(tps, ".1f"),
                  _ratio(tps, pt["batch_texts_per_s"]), f"{_ratio(best_ms, ms)} / {_ratio(tps, best_tps)}",
                  _fmt(r["cos_min"], ".6f"), r["note"])
    return t


def _ratio(num: float | None, den: float | None) -> str:
    """num/den as "2.71x" (speed ratios: larger is faster); "-" when either is missing."""
    if not num or not den:
        return "-"
    return f"{num / den:.2f}x"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line each: the tokenizer's share, and how the texts were chosen."""
    if result["family"] == "causal-lm":
        return [f"prompt {result['prompt_tokens']} tokens, {result['decode_tokens']} greedy decode steps"]
    tok, texts = result["tokenize"], result["texts"]
    return [f"{texts['single']} single calls and {texts['batch']} texts in batches of {texts['batch_size']} "
            f"(the artifact's validation texts, cycled); tokenization (inside every timing): "
            f"{tok['per_single_call_ms']:.3f} ms per single call, {tok['all_batch_texts_ms']:.1f} ms for all batch "
            "texts"]


def write_json(path: Path, result: dict[str, Any]) -> None:
    from .fsutil import write_json as write

    write(path, result)


# --- command line (shared by `modelport bench` and benchmarks/infer.py) ------------------------------


def add_arguments(p) -> None:
    """The options of `modelport bench` and benchmarks/infer.py (one definition for both)."""
    p.add_argument("artifact", type=Path, help="artifact directory written by `modelport convert` (validated)")
    p.add_argument("--threads", type=int, default=runtime.DEFAULT_THREADS,
                   help=f"intra-op threads for every runtime that takes a number (default {runtime.DEFAULT_THREADS})")
    p.add_argument("--variants", help="comma-separated variants of ARTIFACT (default: every variant that passed)")
    p.add_argument("--singles", type=int, default=100, help="encoders: single-text calls timed (default 100)")
    p.add_argument("--texts", type=int, default=256, help="encoders: texts encoded in batches (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="encoders: batch size (default 32)")
    p.add_argument("--repeat", type=int, default=1, help="timed passes per measurement, fastest kept (default 1)")
    p.add_argument("--no-node", action="store_true", help="skip transformers.js in Node")
    p.add_argument("--also", type=Path, action="append", default=[], metavar="DIR",
                   help="another artifact of the same model (mlx, mlc, coreml) to run beside it; repeatable")
    p.add_argument("--optimum-python", metavar="PATH",
                   help="python of a venv with optimum-onnx + onnxruntime: adds optimum's plain export and -O2 "
                   "as peers")
    p.add_argument("--prefill-tokens", type=int, default=128, help="decoders: prompt length (default 128)")
    p.add_argument("--decode-tokens", type=int, default=32, help="decoders: greedy steps timed (default 32)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers to OUT (JSON)")


def settings_from(args) -> Settings:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    if args.variants is not None and not variants:
        raise ModelportError("--variants is empty; omit it for every variant that passed")
    return Settings(threads=args.threads, singles=args.singles, texts=args.texts, batch_size=args.batch_size,
                    variants=variants, node=not args.no_node, also=list(args.also),
                    optimum_python=args.optimum_python, prefill_tokens=args.prefill_tokens,
                    decode_tokens=args.decode_tokens, repeat=args.repeat)


def main(args, out) -> int:
    """Run, print the table (and write --json); `out` is a rich Console."""
    from rich.markup import escape

    result = run(args.artifact, settings_from(args), progress=lambda line: out.print(f"[dim]… {escape(line)}[/]"))
    from rich.console import Console

    # in logs (no terminal) rich assumes 80 columns and squeezes the columns into '…': print wider there
    (out if out.is_terminal else Console(highlight=False, width=200)).print(table(result))
    for line in summary_lines(result):
        out.print(escape(line), soft_wrap=True)
    if args.json:
        write_json(args.json, result)
        out.print(f"wrote {escape(str(args.json))}")
    return 0
