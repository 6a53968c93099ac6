"""Run the JavaScript clients (js/*.mjs) on an artifact and decode what they return.

Python only prepares a request (texts per golden case, pooling, which (device, dtype) runs) and reads
the answer; all client work happens in transformers.js, in Node or in headless Chromium, so what is
measured is what a user of those runtimes gets. The JS side is pinned by js/package-lock.json and
installed by scripts/setup-clients.sh.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Collection
from typing import Any, Callable

import numpy as np

from .. import chromium
from .. import manifest as manifest_mod
from ..errors import ModelportError
from ..reference import Golden

JS_DIR = Path(__file__).parent / "js"
SETUP_HINT = "run scripts/setup-clients.sh"


def chromium_path() -> Path:
    """The system Chromium (Debian package); MODELPORT_CHROMIUM overrides it."""
    return chromium.path()


@dataclass(frozen=True)
class Client:
    """A transformers.js runtime: which harness program runs it, on which transformers.js device."""

    name: str
    program: str  # in js/
    device: str  # transformers.js `device`
    packages: tuple[str, ...]  # npm packages the program needs
    needs_chromium: bool


CLIENTS: dict[str, Client] = {
    c.name: c
    for c in (
        Client("node", "node_run.mjs", "cpu", ("@huggingface/transformers",), False),
        Client("chromium-webgpu", "browser_embed.mjs", "webgpu", ("@huggingface/transformers", "puppeteer-core"), True),
        Client("chromium-wasm", "browser_embed.mjs", "wasm", ("@huggingface/transformers", "puppeteer-core"), True),
    )
}


def missing_prerequisites(names: list[str]) -> list[str]:
    """What is not installed for these clients, as readable strings (empty: ready to run)."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node is not on PATH")
    for pkg in sorted({p for n in names for p in CLIENTS[n].packages}):
        if not (JS_DIR / "node_modules" / pkg / "package.json").is_file():
            missing.append(f"npm package {pkg} is not installed in {JS_DIR}")
    if any(CLIENTS[n].needs_chromium for n in names) and not os.access(chromium_path(), os.X_OK):
        missing.append(f"Chromium not found at {chromium_path()}")
    return missing


@dataclass
class CaseOutput:
    """What a client fed the model and got back for one golden case (a text or a padded batch)."""

    name: str
    input_ids: np.ndarray  # [batch, seq] int64, as the client's tokenizer produced them
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None
    hidden: np.ndarray  # [batch, seq, hidden] last_hidden_state
    pooled: np.ndarray  # [batch, hidden] the pipeline's result (pooling + normalize), or the graph's sentence_embedding
    seconds: float
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # further graph outputs (BGE-M3: sparse, ColBERT)


def _floats(packed: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed["b64"]), dtype="<f4").reshape(packed["dims"])


def decode_cases(run: dict[str, Any]) -> dict[str, CaseOutput]:
    """A run's cases as arrays, keyed by golden case name."""
    out = {}
    for c in run.get("cases", []):
        tt = c.get("token_type_ids")
        out[c["name"]] = CaseOutput(
            name=c["name"],
            input_ids=np.asarray(c["input_ids"], dtype=np.int64),
            attention_mask=np.asarray(c["attention_mask"], dtype=np.int64),
            token_type_ids=np.asarray(tt, dtype=np.int64) if tt is not None else None,
            hidden=_floats(c["hidden"]),
            pooled=_floats(c["pooled"]),
            seconds=float(c.get("seconds", 0.0)),
            extra={k: _floats(v) for k, v in (c.get("extra") or {}).items()},
        )
    return out


def decode_probes(run: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """A model-mode run's "would have failed" probes: {probe: {case name or query text id: array}}."""
    return {probe: {k: _floats(v) for k, v in per.items()} for probe, per in (run.get("probes") or {}).items()}


# Golden outputs the feature-extraction pipeline can reproduce: it pools last_hidden_state and normalizes.
PIPELINE_OUTPUTS = ("last_hidden_state", "sentence_embedding")


def needs_model(meta: dict[str, Any]) -> bool:
    """Whether the artifact's graph finishes the embedding in a way the feature-extraction pipeline cannot
    (Dense layers, last-token pooling, truncation, extra outputs): then the client runs AutoModel and reads
    the graph's `sentence_embedding`, as that model's users do. Plain mean/CLS encoders keep the pipeline."""
    return bool(meta.get("dense") or meta.get("pooling") not in ("mean", "cls") or meta.get("truncate_dim")
                or set(meta.get("outputs", PIPELINE_OUTPUTS)) - set(PIPELINE_OUTPUTS))


def bare_queries(golden: Golden) -> list[dict[str, Any]]:
    """The query texts without their prompt (golden texts carry it), for the forgot-the-prompt probe."""
    prompt = (golden.meta.get("prompts") or {}).get("query") or ""
    if not prompt:
        return []
    texts = golden.meta["texts"]
    alone = {c["text_ids"][0]: c["name"] for c in golden.cases if not c["batched"]}
    # `case`: the query's own golden case; a run that skips it (--quick) skips the probe too
    return [{"text_id": i, "text": texts[i][len(prompt):], "case": alone.get(i)} for i in golden.meta["query_ids"]
            if texts[i].startswith(prompt)]


def build_request(root: Path, golden: Golden, case_names: list[str], runs: list[dict[str, str]]) -> dict[str, Any]:
    texts = golden.meta["texts"]
    cases = [{"name": c["name"], "texts": [texts[i] for i in c["text_ids"]]}
             for c in golden.cases if c["name"] in case_names]
    request = {"model_dir": str(Path(root).resolve()), "pooling": golden.meta["pooling"],
               "normalize": bool(golden.meta["normalize"]), "cases": cases, "runs": runs,
               "chromium": str(chromium_path()),
               "chromium_flags": list(chromium.FLAGS), "run_timeout_s": 900}
    if needs_model(golden.meta):
        # AutoModel + the graph's own outputs; probes: what the pipeline's recipes would have returned
        probes = ["mean"] + (["last_token"] if golden.meta["pooling"] == "last_token" else [])
        request.update(mode="model", outputs=list(golden.meta["outputs"]), probes=probes,
                       bare_queries=bare_queries(golden))
    return request


def run_program(program: str, request: dict[str, Any], timeout: float,
                progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run one harness program; its stderr lines are progress, its result is a JSON file."""
    node = shutil.which("node")
    if node is None:
        raise ModelportError(f"node is not on PATH; {SETUP_HINT}")
    with tempfile.TemporaryDirectory(prefix="modelport-clients-") as td:
        req_path = Path(td) / "request.json"
        out_path = Path(td) / "result.json"
        req_path.write_text(json.dumps({**request, "out": str(out_path)}), encoding="utf-8")
        proc = subprocess.Popen([node, str(JS_DIR / program), str(req_path)], cwd=JS_DIR,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        tail: list[str] = []
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                tail = (tail + [line.rstrip()])[-40:]
                if progress:
                    progress(line.rstrip())
            rc = proc.wait()
        finally:
            timer.cancel()
        if rc != 0 or not out_path.is_file():
            why = f"killed after {timeout:.0f}s" if rc == -9 else f"exit code {rc}"
            raise ModelportError(f"{program} failed ({why}): " + " | ".join(tail[-12:]))
        return json.loads(out_path.read_text(encoding="utf-8"))


def plan(root: Path, clients: dict[str, list[str] | None], available: Collection[str], files: dict[str, str],
         kind: str = "") -> tuple[dict[str, Any], dict[str, list[str]]]:
    """What a client check settles before it runs anything (embeddings and text generation alike):
    the clients are known, each one's variants ({name: variants, None = all the artifact has}) are in
    the artifact at the file transformers.js loads for that dtype (`files`), and the clients'
    prerequisites are installed. Returns (manifest, {client: variants})."""
    man = manifest_mod.load(root)
    unknown = [c for c in clients if c not in available]
    if unknown:
        raise ModelportError(f"unknown client(s) {', '.join(unknown)}{kind}; available: {', '.join(available)}")
    plans = {c: list(v or man["target"]["variants"]) for c, v in clients.items()}
    target = man["target"]
    if target["name"] != "onnx":
        raise ModelportError(f"clients run transformers.js, which loads ONNX artifacts; this artifact's target "
                             f"is {target['name']!r}")
    for name in dict.fromkeys(v for vs in plans.values() for v in vs):
        if name not in target["variants"]:
            raise ModelportError(f"variant {name!r} is not in this artifact ({', '.join(target['variants'])})")
        if files.get(name) != target["variants"][name]["file"]:
            raise ModelportError(f"variant {name!r} is at {target['variants'][name]['file']}, but transformers.js "
                                 f"loads dtype {name!r} from {files.get(name, 'no file (unknown dtype)')}")
    missing = missing_prerequisites(list(clients))
    if missing:
        raise ModelportError(f"cannot run {', '.join(clients)}: {'; '.join(missing)}; {SETUP_HINT}")
    return man, plans
