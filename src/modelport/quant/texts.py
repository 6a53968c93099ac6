"""The fixed, versioned text sets quantization is tuned on: never the validation set.

A quantization recipe chosen on the texts it is then judged on would be judged on its own training
data. Three disjoint sets, shipped with the package (`quant/data/*.jsonl`, one JSON string per line):

  calibration   statistics the quantizers use (GPTQ's input Hessians, importance weights):
                160 texts (standard-library docstrings, code, 20+ languages, chat-like lines)
  dev           what the search ranks candidates and per-layer sensitivity on: 80 other texts
  (validation)  `validation_set.TEXTS`: what the validator gates the chosen variant on

The files were written once and are never regenerated; a change means a new version (a new file
name), recorded in every plan that used it (`Plan.calibration`). `tests/unit/test_quant_texts.py`
checks the three sets are disjoint.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

CALIBRATION = "calibration-v1"
DEV = "dev-v1"


@lru_cache(maxsize=None)
def load(name: str) -> tuple[str, ...]:
    """The texts of one versioned set, e.g. load("calibration-v1")."""
    path = resources.files("modelport.quant") / "data" / f"{name}.jsonl"
    if not path.is_file():
        raise ValueError(f"unknown text set {name!r}; shipped: {', '.join(available())}")
    return tuple(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def available() -> list[str]:
    return sorted(p.name.removesuffix(".jsonl") for p in (resources.files("modelport.quant") / "data").iterdir()
                  if p.name.endswith(".jsonl"))


def calibration_texts(name: str = CALIBRATION) -> tuple[str, ...]:
    return load(name)


def dev_texts(name: str = DEV) -> tuple[str, ...]:
    return load(name)
