"""modelport.runtime on a hand-built artifact (no conversion): manifest checks, variant choice,
length-sorted batching, the PyTorch fallback and `modelport bench`'s refusals.

The artifact is a real ONNX graph and a real tokenizer.json, small enough to build in milliseconds:
an embedding table (Gather) and the masked mean over the sequence as `sentence_embedding`, so the
expected vector of every text is computable with numpy, and any padding or ordering mistake in the
runtime changes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelport import manifest, runtime
from modelport.cli import main
from modelport.errors import ModelportError, ToolchainError
from modelport.manifest import TargetInfo
from modelport.targets import Variant

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
DIM = 8
VARIANTS = {"fp32": Variant("fp32", "onnx/model.onnx", "fp32", "float32"),
            "q8": Variant("q8", "onnx/model_quantized.onnx", "q8", "int8"),
            "fp32-fused": Variant("fp32-fused", "onnx/model_fused.onnx", "fp32", "fused")}
TEXTS = ["the cat sat on a mat", "dog", "", "the dog ran far away and then slept on the mat",
         "a cat", "then the cat slept", "far away", "the mat"]


def _table() -> np.ndarray:
    return np.random.RandomState(0).standard_normal((len(SPECIALS) + len(WORDS), DIM)).astype(np.float32)


def _graph(path: Path) -> None:
    """input_ids/attention_mask/token_type_ids -> last_hidden_state (Gather), sentence_embedding (masked mean)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in ("input_ids", "attention_mask", "token_type_ids")]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "minus1"], ["mask3"]),
        helper.make_node("Mul", ["last_hidden_state", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "one"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "one"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["sentence_embedding"]),
    ]
    inits = [numpy_helper.from_array(_table(), "table"), numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", DIM]),
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", DIM])]
    graph = helper.make_graph(nodes, "mean", ints, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def _tokenizer(path: Path) -> None:
    """WordLevel with [CLS] ... [SEP], and a fixed padding to 16 that the runtime must switch off."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=16)
    tok.save(str(path))


def _expected(texts: list[str]) -> np.ndarray:
    """The mean of each text's embedding rows, [CLS] and [SEP] included: what the graph must give."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    table = _table()
    return np.stack([table[[2] + [vocab[w] for w in t.split()] + [3]].mean(0) for t in texts])


def make_artifact(root: Path, verdicts: dict[str, str], status: str = "pass", source: dict | None = None) -> Path:
    (root / "onnx").mkdir(parents=True)
    for name in verdicts:
        _graph(root / VARIANTS[name].path)
    _tokenizer(root / "tokenizer.json")
    info = TargetInfo.of("onnx", "sentence-encoder", list(verdicts), VARIANTS)
    man = manifest.build(root, command=["test"], source=source or {"name": "tiny-words"},
                         recipe={"model_type": "bert", "family": "sentence-encoder",
                                 "inputs": ["input_ids", "attention_mask", "token_type_ids"],
                                 "outputs": ["last_hidden_state", "sentence_embedding"], "max_length": 32,
                                 "pooling": "mean", "normalize": False, "padding_side": "right"}, target=info)
    man["validation"] = {"status": status, "variants": {k: {"verdict": v} for k, v in verdicts.items()}}
    manifest.save(root, man)
    return root


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "art", {"fp32": "pass", "q8": "fail"})


def test_encode_gives_the_graphs_sentence_embedding_in_input_order(artifact: Path) -> None:
    enc = runtime.load(artifact)
    assert isinstance(enc, runtime.Encoder) and (enc.runtime, enc.variant, enc.note) == ("onnxruntime", "fp32", None)
    np.testing.assert_allclose(enc.encode(TEXTS, batch_size=3), _expected(TEXTS), rtol=0, atol=1e-6)
    assert enc.encode("the cat").shape == (1, DIM)


def test_length_sorting_restores_order_and_equals_one_text_at_a_time(artifact: Path) -> None:
    enc = runtime.load(artifact)
    one_by_one = np.concatenate([enc.encode([t]) for t in TEXTS])
    for batch_size in (1, 2, 3, 32):
        np.testing.assert_allclose(enc.encode(TEXTS, batch_size=batch_size), one_by_one, rtol=0, atol=1e-6)


def test_padding_is_per_batch_not_the_tokenizer_files_fixed_length(artifact: Path) -> None:
    enc = runtime.load(artifact)
    assert enc.tokenizer is not None
    feeds = enc.tokenizer.pad(enc.tokenizer.ids(["the cat", "dog"]))
    assert feeds["input_ids"].shape == (2, 4)  # [CLS] the cat [SEP]; the file says pad to 16
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_batches_are_a_permutation_longest_first_and_cut_where_padding_costs_more() -> None:
    lengths = [3, 250, 12, 250, 5, 11, 40] * 9
    batches = runtime.length_sorted_batches(lengths, batch_size=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert max(len(b) for b in batches) <= 8
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    # the 18 texts of 250 tokens never share a batch with the short ones
    assert all(len({lengths[i] == 250 for i in b}) == 1 for b in batches)
    assert [len(b) for b in runtime.length_sorted_batches([7] * 70, 32)] == [32, 32, 6]
    with pytest.raises(ModelportError, match="batch_size must be at least 1"):
        runtime.length_sorted_batches([1], 0)


def test_variant_choice_prefers_fused_fp32_and_refuses_a_failed_one(tmp_path: Path) -> None:
    art = runtime.open_artifact(make_artifact(tmp_path / "a", {"fp32": "pass", "q8": "pass", "fp32-fused": "pass"}))
    assert runtime.choose_variant(art) == "fp32-fused"
    assert runtime.choose_variant(art, "q8") == "q8"
    art = runtime.open_artifact(make_artifact(tmp_path / "b", {"fp32": "fail", "q8": "pass"}))
    assert runtime.choose_variant(art) == "q8"
    with pytest.raises(ModelportError, match="'fp32' .* did not pass validation; passed: q8"):
        runtime.choose_variant(art, "fp32")
    with pytest.raises(ModelportError, match="'q4' is not in"):
        runtime.choose_variant(art, "q4")


def test_a_tampered_artifact_is_refused_in_one_line(artifact: Path, capsys) -> None:
    graph = artifact / "onnx/model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ModelportError, match=r"files do not match manifest.json \(modified: onnx/model.onnx"):
        runtime.load(artifact)
    assert main(["bench", str(artifact)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: refusing to run") and "\n" not in err


def test_an_unvalidated_or_all_failed_artifact_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelportError, match="never validated; run `modelport validate"):
        runtime.load(make_artifact(tmp_path / "a", {"fp32": "pass"}, status="not-run"))
    with pytest.raises(ModelportError, match="no variant passed validation"):
        runtime.load(make_artifact(tmp_path / "b", {"fp32": "fail"}, status="fail"))
    with pytest.raises(ModelportError, match="threads must be at least 1"):
        runtime.load(tmp_path / "a", threads=0)


def test_without_onnxruntime_it_falls_back_to_pytorch_with_a_note(tmp_path: Path, monkeypatch) -> None:
    from modelport import tiny

    source = tiny.materialize("tiny-bert-arctic")
    art = make_artifact(tmp_path / "a", {"fp32": "pass"}, source={"name": "tiny-bert-arctic", "path": str(source)})
    real = runtime.available
    monkeypatch.setattr(runtime, "available", lambda package: package != "onnxruntime" and real(package))
    enc = runtime.load(art)
    assert enc.runtime == "pytorch" and enc.variant == "source"
    assert enc.note is not None and enc.note.startswith("note: onnxruntime is not installed") and "\n" not in enc.note
    from sentence_transformers import SentenceTransformer

    direct = SentenceTransformer(str(source), device="cpu").encode(TEXTS[:3])
    np.testing.assert_allclose(enc.encode(TEXTS[:3]), direct, rtol=0, atol=1e-6)
    monkeypatch.setattr(runtime, "available", lambda package: False)
    with pytest.raises(ToolchainError, match="onnxruntime is not installed, and the PyTorch fallback needs torch"):
        runtime.load(art)


def test_bench_refuses_bad_options_before_timing(artifact: Path, capsys) -> None:
    assert main(["bench", str(artifact), "--threads", "0"]) == 2
    assert main(["bench", str(artifact), "--variants", "q4"]) == 2
    assert main(["bench", str(artifact), "--optimum-python", "/nonexistent/python"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("error:") for line in lines)
    assert json.loads((artifact / "manifest.json").read_text())["validation"]["status"] == "pass"
