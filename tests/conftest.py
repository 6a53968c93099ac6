"""Shared fixtures: an isolated modelport cache and artifacts converted once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelport.cli import main


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built fresh into a per-session cache (also proves the builders work)."""
    cache = Path(os.environ.get("MODELPORT_TEST_CACHE") or tmp_path_factory.mktemp("modelport-cache"))
    os.environ["MODELPORT_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cache


def convert(*args: str) -> int:
    return main(["convert", *args])


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "minilm"
    assert convert("all-minilm-l6-v2", "--target", "onnx", "--out", str(out)) == 0
    return out


@pytest.fixture(scope="session")
def xlmr_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "xlmr"
    assert convert("tiny-xlm-roberta", "--target", "onnx", "--out", str(out)) == 0
    return out
