"""The dequantized-weights reference of a quantized encoder variant, and the runtime check against it.

A 4-bit variant differs from PyTorch fp32 for two reasons: the 4-bit weights (the format's error,
judged by the cosine / top-5 gates of thresholds.py) and the runtime computing them (the
conversion's error). To tell them apart the converter runs PyTorch on the variant's own dequantized
weights (`reference.outputs_with_weights`) and stores the outputs in the artifact; the validator
then requires the runtime to reproduce those outputs within the gate of its compute precision:
float32 compute to DEQUANT_RUNTIME_MAX_ABS (kernel rounding only), float16 compute to the fp16
cosine gate. A wrong unpacking or scale passes no such gate, however good the cosine vs fp32 looks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .metrics import case_diff
from .thresholds import DEQUANT_RUNTIME_MAX_ABS, THRESHOLDS


def reference_path(variant: str) -> str:
    """Where a quantized variant's dequantized-weights golden lives in the artifact."""
    return f"reference/dequant_{variant}.npz"


def write_reference(out: Path, variant: str, source: Any, recipe: Any, golden: Any,
                    weights: dict[str, np.ndarray]) -> str:
    """PyTorch fp32 with `weights` replaced, on every golden input -> <out>/reference_path(variant)."""
    from .reference import outputs_with_weights

    arrays = outputs_with_weights(source, recipe, golden, weights)
    path = out / reference_path(variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return reference_path(variant)


def runtime_check(artifact: Path, variant: str, run: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]],
                  golden: Any, runtime: str, compute: str) -> dict[str, Any]:
    """{"dequantized_reference": figures, "failures": [...]} for one quantized variant.

    `compute` is "float32" (gated at DEQUANT_RUNTIME_MAX_ABS on tokens and pooled) or "float16"
    (gated at the fp16 cosine floor: float16 rounding is relative, a max-abs figure is reported)."""
    with np.load(artifact / reference_path(variant)) as z:
        deq = {k: z[k] for k in z.files}
    runtime_d, format_d = [], []
    for case in golden.cases:
        name = case["name"]
        feeds = golden.inputs(name)
        hidden, pooled = run(feeds)
        ref_h, ref_p = deq[f"{name}/last_hidden_state"], deq[f"{name}/sentence_embedding"]
        runtime_d.append(case_diff(name, feeds["attention_mask"], ref_h, hidden, ref_p, pooled))
        format_d.append(case_diff(name, feeds["attention_mask"], golden.output(name, "last_hidden_state"), ref_h,
                                  golden.output(name, "sentence_embedding"), ref_p))
    tokens = max(d.tokens_max_abs for d in runtime_d)
    pooled_abs = max(d.pooled_max_abs for d in runtime_d)
    runtime_cos = min(c for d in runtime_d for c in d.cosines)
    format_cos = [c for d in format_d for c in d.cosines]
    figures: dict[str, Any] = {"tokens_max_abs": tokens, "pooled_max_abs": pooled_abs, "cos_min": runtime_cos,
                               "compute": compute}
    failures = []
    if compute == "float32":
        figures["gate_max_abs"] = DEQUANT_RUNTIME_MAX_ABS
        if max(tokens, pooled_abs) > DEQUANT_RUNTIME_MAX_ABS:
            failures.append(f"{runtime} differs from PyTorch running the same dequantized weights by "
                            f"{max(tokens, pooled_abs):.3g} > {DEQUANT_RUNTIME_MAX_ABS:g}: a runtime error, "
                            f"not quantization error")
    else:
        gate = THRESHOLDS["fp16"].cos_min
        figures["gate_cos_min"] = gate
        if runtime_cos < gate:
            failures.append(f"{runtime} vs PyTorch running the same dequantized weights: cosine min "
                            f"{runtime_cos:.6f} < {gate} (the fp16 gate): a runtime error, not quantization error")
    return {
        "dequantized_reference": {
            "runtime_vs_dequantized_pytorch": figures,
            "format_vs_fp32_pytorch": {"cos_min": float(np.min(format_cos)), "cos_mean": float(np.mean(format_cos)),
                                       "tokens_max_abs": max(d.tokens_max_abs for d in format_d)},
        },
        "failures": failures,
    }
