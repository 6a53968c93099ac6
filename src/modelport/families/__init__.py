"""Model families, registered once: name -> Family (see base.py for what a family owns).

Adding a family: a module here with a `Family` subclass, one line in `_FAMILIES`, converters
registered for it in the targets that support it, and architectures in `recipes.py` naming it.
"""

from __future__ import annotations

from ..errors import ModelportError
from .base import Family, Judgement
from .decoder import DECODER
from .encoder import DECODER_EMBEDDER_FAMILY, ENCODER
from .multivector import MULTI_VECTOR_FAMILY

__all__ = ["DECODER", "DECODER_EMBEDDER_FAMILY", "ENCODER", "FAMILIES", "Family", "Judgement",
           "MULTI_VECTOR_FAMILY", "get"]


def _index(*families: Family) -> dict[str, Family]:
    table: dict[str, Family] = {}
    for f in families:
        if f.name in table:
            raise ValueError(f"family {f.name!r} is registered twice; one Family object per family")
        table[f.name] = f
    return table


FAMILIES: dict[str, Family] = _index(ENCODER, DECODER_EMBEDDER_FAMILY, MULTI_VECTOR_FAMILY, DECODER)


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ModelportError(f"unknown model family {name!r}; this modelport knows: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def of_manifest(man: dict) -> Family:
    """The family of an artifact: its manifest's target.family (recipe.family in hand-made or older manifests)."""
    return get(man.get("target", {}).get("family") or man.get("recipe", {}).get("family", ""))
