"""torch module -> ONNX graph for the embedding families: the fast exporter where it is safe, checked.

Two exporters, one contract (dynamic batch and sequence axes, the recipe's input and output names):

- **trace** (torch.onnx's TorchScript exporter): records the ops one forward pass runs. 1.4 s for
  all-minilm-l6-v2 against 6.7 s for torch.export (measured here, 2 cores; the export was 27 % of a
  whole six-variant conversion). It cannot see data-dependent Python: a branch taken on the example
  is baked in. For BERT-style encoders the only such code in transformers 5 is the mask builder's
  padding check, which is the same for every input shape.
- **dynamo** (torch.export): traces shapes symbolically. Architectures whose masks depend on the
  length (causal and sliding-window masks of decoder trunks: a window only starts to matter past its
  length, so no short probe could catch a baked one) carry the `torch-export-only` quirk, whose
  behaviour is here: they are always exported this way.

A traced graph is only kept after it reproduces the PyTorch module, real tokens within the fp32 gate,
on probe batches of other shapes than the example (one row, several rows with different padding, a
long row); otherwise the dynamo export replaces it and the manifest says why.
The validator then judges whichever graph was kept, as always.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...thresholds import THRESHOLDS
from .ort import OPSET, needs_external_data, session_options

TRACE, DYNAMO = "trace", "dynamo"
Note = Callable[[str], Any]


@dataclass(frozen=True)
class Exported:
    """Which exporter wrote the graph, and why (recorded in the manifest's target section)."""

    exporter: str
    why: str
    probe_max_abs: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"exporter": self.exporter, "why": self.why}
        if self.probe_max_abs is not None:
            out["probe_max_abs"] = float(self.probe_max_abs)
        return out


def example_inputs(recipe) -> dict[str, Any]:
    """Batch 2, length 8, one padded row (on the tokenizer's padding side): no dimension is 1 (dynamo
    would specialize it) and the mask path is the general one (the trace records what the example runs)."""
    import torch

    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    if recipe.head.padding_side == "left":
        mask[1, :3] = 0
    else:
        mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


# The longest probe: long enough that a length taken from the example (8) shows, short enough to cost
# little (BGE-M3 allows 8192 tokens: a probe that long took 25 s of a tiny model's export).
LONG_PROBE = 160


def probe_inputs(recipe, vocab_size: int) -> list[dict[str, np.ndarray]]:
    """Shapes unlike the example: 1 x 3 unpadded, 3 x 19 with three padding amounts, 1 x 160 (or the
    recipe's maximum length if shorter)."""
    rng = np.random.default_rng(0)
    low = min(100, vocab_size - 1)
    probes = []
    for batch, length, pads in ((1, 3, (0,)), (3, 19, (0, 7, 16)), (1, min(recipe.max_length, LONG_PROBE), (0,))):
        ids = rng.integers(low, vocab_size, (batch, length), dtype=np.int64)
        mask = np.ones((batch, length), dtype=np.int64)
        for row, pad in enumerate(pads):
            if pad:
                if recipe.head.padding_side == "left":
                    mask[row, :pad] = 0
                else:
                    mask[row, length - pad:] = 0
        probes.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return probes


def _probe_error(module, path: Path, recipe, vocab_size: int) -> float:
    """Largest difference between the graph and the module over the probes: real tokens of
    last_hidden_state (padding rows are undefined, quirk padding-rows-undefined) and every other output."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for feeds in probe_inputs(recipe, vocab_size):
        with torch.no_grad():
            expected = [t.numpy() for t in module(*(torch.from_numpy(feeds[n]) for n in recipe.inputs))]
        got = session.run(list(recipe.outputs), {n: feeds[n] for n in recipe.inputs})
        real = feeds["attention_mask"].astype(bool)
        for name, e, g in zip(recipe.outputs, expected, got):
            if e.shape != g.shape:
                return float("inf")
            if name == "last_hidden_state":
                e, g = e[real], g[real]
            worst = max(worst, float(np.abs(e.astype(np.float64) - g).max()) if e.size else 0.0)
    return worst


def export_embedder(module, recipe, path: Path, vocab_size: int, note: Note | None = None) -> Exported:
    """Write `module` (torch_model.make_encoder's) to `path`; trace where allowed and verified."""
    needs_dynamo = [q.name for q in recipe.quirks if q.needs_torch_export]
    if needs_dynamo:
        _dynamo(module, recipe, path)
        return Exported(DYNAMO, f"quirk {needs_dynamo[0]}: masks depend on the length")
    try:
        _trace(module, recipe, path)
        error = _probe_error(module, path, recipe, vocab_size)
    except Exception as e:  # the tracer refusing a model is a reason to use the other exporter, not to fail
        error, failure = float("inf"), f"the trace failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    else:
        failure = f"the trace differs from PyTorch by {error:.2e} on probe shapes"
    gate = THRESHOLDS["fp32"].max_abs
    if error <= gate:
        return Exported(TRACE, f"traced; probe shapes reproduce PyTorch to {error:.1e} (fp32 gate {gate:g})", error)
    if note:
        note(f"{failure}: exporting with torch.export instead")
    _remove(path)
    _dynamo(module, recipe, path)
    return Exported(DYNAMO, failure)


def _n_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _trace(module, recipe, path: Path) -> None:
    import warnings

    import torch

    example = example_inputs(recipe)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in recipe.inputs}
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings (Python ints taken from shapes) and the exporter's deprecation notice: the
        # probes decide whether the graph is right, not the warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(example[n] for n in recipe.inputs), str(path), dynamo=False,
                          input_names=list(recipe.inputs), output_names=list(recipe.outputs),
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True,
                          external_data=needs_external_data(_n_bytes(module)))


def _dynamo(module, recipe, path: Path) -> None:
    import torch

    example = example_inputs(recipe)
    batch = torch.export.Dim("batch", max=4096)
    seq = torch.export.Dim("sequence", max=recipe.max_length)
    torch.onnx.export(module, tuple(example[n] for n in recipe.inputs), str(path), dynamo=True,
                      input_names=list(recipe.inputs), output_names=list(recipe.outputs),
                      dynamic_shapes=tuple({0: batch, 1: seq} for _ in recipe.inputs), opset_version=OPSET,
                      external_data=needs_external_data(_n_bytes(module)),  # protobuf's 2 GB limit
                      verbose=False)


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data"), path.with_name(path.name + "_data")):
        p.unlink(missing_ok=True)
