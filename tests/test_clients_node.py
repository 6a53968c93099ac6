"""Real client, Node (issue #6): every MiniLM ONNX variant through transformers.js's pipeline on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelport import manifest, validation_set
from modelport.cli import main
from modelport.clients import check, problem_lines, record, unsupported_lines
from modelport.clients.compare import FP32_VS_ORT
from modelport.targets.onnx import encoder as onnx_target
from modelport.thresholds import THRESHOLDS
from modelport.validate import record as record_validation
from modelport.validate import validate

LONG_TEXT = 46  # validation_set: _LONG * 12, cut by validation_set.fit to fill MiniLM's 256 tokens exactly


def test_every_variant_runs_and_meets_the_threshold_table(node_clients: dict) -> None:
    node = node_clients["node"]
    assert set(node["variants"]) == set(onnx_target.DEFAULT_VARIANTS)
    assert node["versions"]["transformers.js"] == "4.3.1"
    for name, v in node["variants"].items():
        assert v["verdict"] == "pass", (name, v["failures"])
        t, m = THRESHOLDS[v["precision"]], v["metrics"]
        assert v["cases"] == 50
        if t.max_abs is not None:
            assert m["tokens_max_abs"] <= t.max_abs and m["pooled_max_abs"] <= t.max_abs, name
        if t.cos_min is not None:
            assert m["cos_min"] >= t.cos_min and m["cos_mean"] >= t.cos_mean and m["top5_mean"] >= t.top5_mean, name


def test_fp32_matches_python_onnxruntime(node_clients: dict) -> None:
    ort = node_clients["node"]["variants"]["fp32"]["vs_python_ort"]
    assert ort["pooled_max_abs"] <= FP32_VS_ORT == 1e-6
    assert ort["tokens_max_abs"] <= 1e-5


def test_tokenizer_parity_on_every_input(node_clients: dict) -> None:
    """The validation texts stay within what every client tokenizes alike (validation_set.fit): the
    long text fills 256 tokens exactly without being truncated, so transformers.js keeps its [SEP]."""
    tok = node_clients["node"]["tokenizer"]
    assert tok["status"] == "pass" and tok["inputs"] == 47 and tok["identical"] == 47, tok["mismatches"]
    assert node_clients["node"]["status"] == "pass"


def test_a_known_client_difference_is_reported_not_failed(minilm_linked: Path) -> None:
    """A golden made before validation set 2026.12-1 holds the over-long text: transformers.js 4.3.1
    truncates after adding special tokens and loses [SEP] (102). That is a known, explained client
    behaviour: reported as such, the input left out of the comparison, the client not failed."""
    golden_json = minilm_linked / "reference/golden.json"
    meta = json.loads(golden_json.read_text())
    meta["texts"][LONG_TEXT] = validation_set.TEXTS[LONG_TEXT]  # its golden ids: the truncation of this text
    _replace(golden_json, json.dumps(meta).encode())
    man = manifest.load(minilm_linked)
    man["files"] = manifest.file_hashes(minilm_linked)
    manifest.save(minilm_linked, man)

    node = check(minilm_linked, {"node": ["fp32"]})["node"]
    tok = node["tokenizer"]
    assert tok["status"] == "known-difference" and tok["identical"] == 46
    (m,) = tok["mismatches"]
    assert m["text"] == LONG_TEXT and m["known"] == "truncation-after-special-tokens"
    assert m["golden_len"] == m["client_len"] == 256 and m["golden_tail"][-1] == 102 and m["client_tail"][-1] != 102
    assert set(m["cases"]) == {"text46", "batch-with-empty-and-max"}
    assert node["status"] == "pass" and node["variants"]["fp32"]["verdict"] == "pass"
    assert "text 46 left out of the comparison in text46, batch-with-empty-and-max" in " ".join(
        node["variants"]["fp32"]["notes"])
    assert problem_lines({"node": node}) == []
    (line,) = unsupported_lines({"node": node})
    assert line.startswith("node: token ids differ for text 46") and "known client difference" in line


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # the copy is hard-linked to the session artifact: never write in place
    path.write_bytes(data)


def test_client_check_has_teeth(minilm_linked: Path) -> None:
    """A 0.1 % LayerNorm change fails fp32 in the client; a tokenizer without lowercasing is caught per input."""
    model = onnx.load(str(minilm_linked / "onnx/model.onnx"))
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    init = next(i for i in model.graph.initializer if i.name == ln.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * np.float32(1.001), init.name))
    _replace(minilm_linked / "onnx/model.onnx", model.SerializeToString())
    tok = json.loads((minilm_linked / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False
    _replace(minilm_linked / "tokenizer.json", json.dumps(tok).encode())

    node = check(minilm_linked, {"node": ["fp32"]})["node"]
    fp32 = node["variants"]["fp32"]
    assert fp32["verdict"] == "fail" and any("max abs" in f for f in fp32["failures"])
    mismatched = {m["text"] for m in node["tokenizer"]["mismatches"]}
    assert {43, LONG_TEXT} <= mismatched  # 43: "UPPER CASE and MiXeD cAsE text."
    assert 32 not in mismatched  # the empty string tokenizes the same either way


def test_no_problem_lines_when_every_client_passes(node_clients: dict) -> None:
    assert problem_lines(node_clients) == []


def test_cli_records_clients_and_report(minilm_linked: Path, node_clients: dict,
                                       capsys: pytest.CaptureFixture) -> None:
    """`modelport clients --quick`: 4 cases; it passes and exits 0."""
    assert main(["clients", str(minilm_linked), "--variants", "fp32", "--quick"]) == 0
    assert f"wrote {minilm_linked / 'report.html'}" in capsys.readouterr().err
    man = manifest.load(minilm_linked)
    node = man["validation"]["clients"]["node"]
    assert node["status"] == "pass" and node["variants"]["fp32"]["verdict"] == "pass"
    assert node["variants"]["fp32"]["cases"] == 4
    assert node["variants"]["fp32"]["sha256"] == man["files"]["onnx/model.onnx"]["sha256"]
    assert "node (cpu)" in (minilm_linked / "report.html").read_text()
    # Re-validating in Python keeps the client results; a later client run merges per variant.
    record_validation(minilm_linked, validate(minilm_linked, ["fp32"]))
    assert "node" in manifest.load(minilm_linked)["validation"]["clients"]
    # Merging: a later quick run (which may not cover the input) must not clear a full run's tokenizer mismatch.
    full = json.loads(json.dumps(node_clients["node"]))
    full["tokenizer"] = {"status": "mismatch", "inputs": 47, "identical": 46, "mismatches": [
        {"text": 43, "preview": "UPPER CASE", "golden_len": 9, "client_len": 9, "golden_tail": [1], "client_tail": [2],
         "known": None, "explanation": "first difference at token 1", "cases": ["text43"]}]}
    record(minilm_linked, {"node": full})
    record(minilm_linked, {"node": node})
    merged = manifest.load(minilm_linked)["validation"]["clients"]["node"]
    assert merged["status"] == "fail" and [m["text"] for m in merged["tokenizer"]["mismatches"]] == [43]
    assert merged["variants"]["fp32"]["cases"] == 4 and set(merged["variants"]) == set(onnx_target.DEFAULT_VARIANTS)


def test_clients_refuse_a_tampered_artifact(minilm_linked: Path, capsys: pytest.CaptureFixture) -> None:
    _replace(minilm_linked / "tokenizer_config.json", b"{}")
    assert main(["clients", str(minilm_linked)]) == 1
    assert "modified: tokenizer_config.json" in capsys.readouterr().err
