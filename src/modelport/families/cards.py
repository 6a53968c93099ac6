"""What a family puts in a model card: the pieces `modelcard.render` asks every family for.

A family owns its card sections (families/base.py: `card_usage`, `card_fields`,
`card_validation_intro`, `card_validation_table`); this module holds what they share: the
`TargetCard` a usage section is made of and the Markdown table helpers. modelcard.py itself knows no
family and no metric name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TargetCard:
    """One usage section: the client it is for, the code fence language, the snippet.

    `snippet` is a str.format template; its fields are modelcard's target-level ones (repo, hub_url,
    variant, dtypes, variant_file, variant_dir, variant_dirs, model_id, model_lib) plus the family's
    own `card_fields(man, repo)`.
    """

    client: str
    language: str
    snippet: str


def num(x: Any, spec: str) -> str:
    """A figure, or an en dash when the manifest has none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def variant_size(man: dict[str, Any], variant: str) -> str:
    """What a variant's file (or folder) weighs, from the manifest's file list."""
    from ..report import sized_path, variant_bytes

    return mb(variant_bytes(man, sized_path(man["target"]["variants"].get(variant, {}))))


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the header line, the rule, one line per row."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def leading_cells(man: dict[str, Any], name: str, result: dict[str, Any]) -> list[str]:
    """The columns every family's table starts with: variant, precision, verdict, size."""
    return [name, result.get("precision", "?"), result.get("verdict", "?"), variant_size(man, name)]


LEADING_HEAD = ["variant", "precision", "verdict", "size"]


def webllm_engine(model_type: str) -> str:
    """The start of every WebLLM card snippet (a str.format template like the rest): the appConfig
    record of the variant's package folder and model library in this hub repo, and the engine.
    `model_type`: WebLLM's ModelType value and comment."""
    return ('''import {{ CreateMLCEngine }} from "@mlc-ai/web-llm";

// This repo's files; WebLLM appends resolve/main/ only to a model URL without /resolve/<revision>/.
const files = "{hub_url}/{repo}/resolve/main/";
const appConfig = {{
  model_list: [{{
    model: files + "{package_dir}/",  // the {variant} package: chat config, tensor cache, tokenizer
    model_id: "{model_id}",
    model_lib: files + "{model_lib}",  // its WebGPU model library{required_features}
    model_type: ''' + model_type + '''
  }}],
}};
const engine = await CreateMLCEngine("{model_id}", {{ appConfig }});
''')
