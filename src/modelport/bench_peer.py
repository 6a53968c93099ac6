"""Time a peer's ONNX export of an encoder (optimum-cli), run by the peer's own Python (`bench.py`).

    <peer python> bench_peer.py REQUEST.json

Standalone on purpose: it runs in the optimum venv (transformers < 4.58), where modelport is not
installed, and imports only numpy, onnxruntime and tokenizers. It measures exactly what bench.py
measures for modelport's runtime: the same texts, tokenized by the model folder's tokenizer.json
(padding per batch, truncation to the recipe's max length), cut into the batches modelport.runtime
makes for them (given as index lists, so both run the same shapes), the same number of threads; the
pooling (mean or CLS over last_hidden_state, then L2 normalization if
the recipe normalizes) is the sentence-transformers head the optimum graph leaves out.

REQUEST: {model_dir, onnx, texts_single, texts_batch, batches, threads, max_length, pooling,
normalize, out}; writes {single_ms, batch_texts_per_s} and <out>.npz (single, batch embeddings).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    req = json.loads(open(sys.argv[1], encoding="utf-8").read())
    tok = Tokenizer.from_file(req["model_dir"] + "/tokenizer.json")
    pad_id = int(tok.padding["pad_id"]) if tok.padding else 0
    tok.no_padding()
    tok.enable_truncation(int(req["max_length"]))
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(req["threads"])
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(req["onnx"], so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(rows: list) -> np.ndarray:
        n = max(len(r.ids) for r in rows)
        feeds = {k: np.zeros((len(rows), n), dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        feeds["input_ids"][:] = pad_id
        for i, r in enumerate(rows):
            feeds["input_ids"][i, :len(r.ids)] = r.ids
            feeds["attention_mask"][i, :len(r.ids)] = 1
            feeds["token_type_ids"][i, :len(r.ids)] = r.type_ids
        hidden = session.run(["last_hidden_state"], {k: feeds[k] for k in names})[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        if req["pooling"] == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        if req["normalize"]:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def encode(texts: list[str], batches: list[list[int]]) -> np.ndarray:
        rows = tok.encode_batch(texts)
        out = None
        for idx in batches:
            vec = run([rows[j] for j in idx])
            if out is None:
                out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
            out[idx] = vec
        return out

    single, batch, batches = req["texts_single"], req["texts_batch"], req["batches"]
    for t in single[:3]:
        encode([t], [[0]])
    t0 = time.perf_counter()
    single_out = np.concatenate([encode([t], [[0]]) for t in single])
    single_ms = (time.perf_counter() - t0) / len(single) * 1000
    first = batches[0]
    encode([batch[i] for i in first], [list(range(len(first)))])
    t0 = time.perf_counter()
    batch_out = encode(batch, batches)
    tps = len(batch) / (time.perf_counter() - t0)
    np.savez(req["out"] + ".npz", single=single_out, batch=batch_out)
    with open(req["out"], "w", encoding="utf-8") as f:
        json.dump({"single_ms": single_ms, "batch_texts_per_s": tps, "onnxruntime": ort.__version__}, f)


if __name__ == "__main__":
    main()
