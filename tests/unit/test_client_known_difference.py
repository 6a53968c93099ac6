"""Issue 20, "misleading output a new user meets": `modelport clients` on the README's own model marked
transformers.js failed because its tokenizer truncates one over-long validation text after adding special
tokens (the ids lose [SEP]), and that failure made `publish` refuse the artifact.

Now (1) the golden's texts stay within what every client tokenizes alike (validation_set.fit: no
truncation, no trailing whitespace), and (2) a known, explained client difference, as found on goldens
made before, is reported as `known-difference`: not a client failure, not a reason to refuse publishing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelport import manifest as manifest_mod
from modelport import publish, tiny, validation_set
from modelport.clients import client_status, compare, problem_lines, unsupported_lines
from modelport.clients.harness import CaseOutput
from modelport.reference import Golden


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.materialize("tiny-xlm-roberta"))


@pytest.mark.parametrize("max_length", [64, 128, 512])
def test_validation_texts_need_no_truncation(tokenizer, max_length: int) -> None:
    texts = validation_set.texts(tokenizer, max_length)
    assert len(texts) == len(validation_set.TEXTS)
    lengths = []
    for original, text in zip(validation_set.TEXTS, texts):
        assert text == text.rstrip() and original.startswith(text)
        full = tokenizer(text)["input_ids"]
        assert len(full) <= max_length  # nothing left for any tokenizer to truncate
        assert full == tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        lengths.append(len(full))
    long_len = len(tokenizer(validation_set.TEXTS[-1])["input_ids"])
    if long_len > max_length:
        assert max(lengths) == max_length  # the long text still fills the max length exactly
    assert texts[:len(validation_set.CORPUS)] == validation_set.CORPUS  # ordinary texts are untouched


def _golden(texts: list[str], ids: list[list[int]], max_length: int) -> Golden:
    arrays, cases = {}, []
    for i, row in enumerate(ids):
        name = f"text{i:02d}"
        arrays[f"{name}/input_ids"] = np.array([row], dtype=np.int64)
        arrays[f"{name}/attention_mask"] = np.ones((1, len(row)), dtype=np.int64)
        cases.append({"name": name, "text_ids": [i], "batched": False, "lengths": [len(row)]})
    meta = {"texts": texts, "max_length": max_length, "inputs": ["input_ids", "attention_mask"], "cases": cases}
    return Golden(meta=meta, arrays=arrays)


def _outputs(ids: list[list[int]]) -> dict[str, CaseOutput]:
    return {f"text{i:02d}": CaseOutput(f"text{i:02d}", np.array([row]), np.ones((1, len(row)), dtype=np.int64), None,
                                       np.zeros((1, len(row), 2)), np.zeros((1, 2)), 0.0)
            for i, row in enumerate(ids)}


def test_known_client_differences_are_reported_not_failed() -> None:
    # golden (Python): truncates before adding [SEP]; transformers.js: after (loses [SEP]), and a
    # trailing '▁' for a text that ends in a space
    texts = ["a short text", "x " * 20, "ends in a space "]
    golden_ids = [[101, 7, 8, 102], [101, *range(10, 16), 102], [0, 5, 6, 2]]
    client_ids = [[101, 7, 8, 102], [101, *range(10, 17)], [0, 5, 6, 9, 2]]
    parity = compare.tokenizer_parity(_golden(texts, golden_ids, 8), _outputs(client_ids))
    report = parity.to_json()
    assert report["status"] == "known-difference" and report["identical"] == 1
    assert [m["known"] for m in report["mismatches"]] == ["truncation-after-special-tokens",
                                                          "trailing-whitespace-token"]
    entry = {"variants": {"fp32": {"verdict": "pass", "notes": [], "failures": []}}, "tokenizer": report,
             "off_origin_requests": []}
    assert client_status(entry) == "pass"
    assert problem_lines({"node": entry}) == []
    lines = unsupported_lines({"node": entry})
    assert len(lines) == 2 and all("known client difference" in line and "not a failure" in line for line in lines)


def test_an_unexplained_difference_still_fails() -> None:
    texts = ["lower case", "x " * 20]
    golden_ids = [[101, 7, 8, 102], [101, *range(10, 16), 102]]
    client_ids = [[101, 9, 8, 102], [101, *range(10, 17)]]
    report = compare.tokenizer_parity(_golden(texts, golden_ids, 8), _outputs(client_ids)).to_json()
    assert report["status"] == "mismatch"
    entry = {"variants": {"fp32": {"verdict": "pass", "notes": [], "failures": []}}, "tokenizer": report,
             "off_origin_requests": []}
    assert client_status(entry) == "fail"
    (line,) = problem_lines({"node": entry})
    assert line.startswith("node: token ids differ for text 0")


def _validated_artifact(root: Path, clients: dict) -> Path:
    root.mkdir()
    (root / "model.bin").write_bytes(b"weights")
    from modelport.manifest import TargetInfo, VariantInfo

    target = TargetInfo("onnx", "sentence-encoder", {"fp32": VariantInfo("model.bin", "fp32", "float32")})
    man = manifest_mod.build(root, command=["modelport", "convert"], source={"name": "m"},
                             recipe={"model_type": "bert", "family": "sentence-encoder", "inputs": [], "outputs": [],
                                     "max_length": 8}, target=target)
    man["validation"] = {"status": "pass", "variants": {"fp32": {"verdict": "pass"}}, "clients": clients}
    manifest_mod.save(root, man)
    return root


def test_publish_accepts_a_known_difference_and_refuses_a_failure(tmp_path: Path) -> None:
    known = {"status": "pass", "tokenizer": {"status": "known-difference"}, "variants": {}}
    assert publish.publishable_manifest(_validated_artifact(tmp_path / "ok", {"node": known}))
    failed = {"status": "fail", "tokenizer": {"status": "mismatch"}, "variants": {}}
    with pytest.raises(Exception, match="real client check failed for node"):
        publish.publishable_manifest(_validated_artifact(tmp_path / "bad", {"node": failed}))
