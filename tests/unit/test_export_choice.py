"""targets/onnx/export.py keeps a traced graph only when probe shapes reproduce PyTorch; a trace that
bakes the example's length in falls back to torch.export; the torch-export-only quirk never traces."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from modelport.recipes import PADDING_ROWS_UNDEFINED, TORCH_EXPORT_ONLY  # noqa: E402
from modelport.targets.onnx.export import DYNAMO, TRACE, export_embedder, probe_inputs  # noqa: E402

VOCAB = 64


def _recipe(quirks=(PADDING_ROWS_UNDEFINED,)):
    return SimpleNamespace(inputs=("input_ids", "attention_mask"), outputs=("last_hidden_state", "sentence_embedding"),
                           quirks=quirks, max_length=40, head=SimpleNamespace(padding_side="right"))


class Encoder(torch.nn.Module):
    """Embedding + position embedding + masked mean: what an encoder's export must keep dynamic."""

    def __init__(self, bake_length: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, 8)
        self.pos = torch.nn.Embedding(40, 8)
        self.bake = bake_length

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        hidden = self.emb(input_ids) + self.pos(positions)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.bake:
            # a branch on the length: the tracer records the branch the example (length 8) takes,
            # torch.export keeps both (an ONNX If), as it does for transformers' length-dependent masks
            pooled = torch.cond(input_ids.shape[1] > 8, lambda p: p * 2.0, lambda p: p.clone(), (pooled,))
        return hidden, pooled


def _check_graph(path: Path, module, recipe) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for feeds in probe_inputs(recipe, VOCAB):
        got = session.run(None, {n: feeds[n] for n in recipe.inputs})
        with torch.no_grad():
            want = module(*(torch.from_numpy(feeds[n]) for n in recipe.inputs))
        worst = max(worst, max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)))
    return worst


def test_a_faithful_trace_is_kept(tmp_path: Path) -> None:
    module, recipe = Encoder(bake_length=False).eval(), _recipe()
    exported = export_embedder(module, recipe, tmp_path / "m.onnx", VOCAB)
    assert exported.exporter == TRACE and exported.probe_max_abs is not None and exported.probe_max_abs < 1e-6
    assert _check_graph(tmp_path / "m.onnx", module, recipe) < 1e-6


def test_a_trace_that_bakes_the_length_falls_back_to_torch_export(tmp_path: Path) -> None:
    module, recipe = Encoder(bake_length=True).eval(), _recipe()
    notes: list[str] = []
    exported = export_embedder(module, recipe, tmp_path / "m.onnx", VOCAB, notes.append)
    assert exported.exporter == DYNAMO
    assert "trace" in exported.why and notes and "torch.export instead" in notes[0]
    assert _check_graph(tmp_path / "m.onnx", module, recipe) < 1e-6


def test_the_torch_export_only_quirk_never_traces(tmp_path: Path) -> None:
    module, recipe = Encoder(bake_length=False).eval(), _recipe((TORCH_EXPORT_ONLY,))
    exported = export_embedder(module, recipe, tmp_path / "m.onnx", VOCAB)
    assert exported.exporter == DYNAMO and TORCH_EXPORT_ONLY.name in exported.why
    assert _check_graph(tmp_path / "m.onnx", module, recipe) < 1e-6
