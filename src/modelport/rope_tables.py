"""Rotary embeddings as tables (quirk rope-tables, recipes.py): why and how in `tabulate_rope`.

Its own module, imported by recipes.py's quirk code, so that recipes and torch_model do not import
each other.
"""

from __future__ import annotations

from typing import Any


def tabulate_rope(hf_model: Any, max_positions: int) -> list[str]:
    """Replace the model's rotary embedding (transformers 5: `rotary_emb` on the base model, forward(x,
    position_ids[, layer_type]) -> (cos, sin)) with tables it computed itself for positions
    0..max_positions-1 (quirk rope-tables). cos/sin of a position do not depend on the others (an outer
    product, then elementwise cos/sin), so the gathered values are the ones the module computes."""
    import torch

    import inspect

    original = hf_model.get_submodule("rotary_emb")
    # one table pair per layer type where the module takes one (Gemma 3: local and global theta)
    per_type = "layer_type" in inspect.signature(original.forward).parameters
    layer_types = sorted(set(hf_model.config.layer_types)) if per_type else [None]
    positions = torch.arange(max_positions)[None, :]
    probe = torch.zeros(1, dtype=torch.float32)
    tables = {}
    with torch.no_grad():
        for layer_type in layer_types:
            args = (probe, positions) if layer_type is None else (probe, positions, layer_type)
            cos, sin = original(*args)
            tables[layer_type] = (cos[0].contiguous(), sin[0].contiguous())

    class RopeTables(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for i, layer_type in enumerate(layer_types):
                self.register_buffer(f"cos_{i}", tables[layer_type][0], persistent=False)
                self.register_buffer(f"sin_{i}", tables[layer_type][1], persistent=False)
            self.index = {t: i for i, t in enumerate(layer_types)}

        def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None):
            i = self.index[layer_type]
            cos, sin = getattr(self, f"cos_{i}"), getattr(self, f"sin_{i}")
            return cos[position_ids].to(x.dtype), sin[position_ids].to(x.dtype)

    hf_model.rotary_emb = RopeTables()
    return [f"rotary cos/sin tabulated for {max_positions} positions ({len(layer_types)} table pair(s))"]
