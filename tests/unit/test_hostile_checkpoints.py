"""Hostile and damaged model directories: each refused before any tensor is loaded, in one line, exit 2.

Issue 20's model-directory classes, each built on the fly from a tiny model copied into tmp_path and
damaged: files that leak (symlinks out of the model directory), checkpoints that would be "validated"
against randomly initialized weights (a tensor or a layer missing), resources a config can exhaust
(hidden_size 65536 on unchanged weights, vocab 1e9 x 1e6 layers), and the damage that used to end in a
traceback (truncated or malformed safetensors, corrupt tokenizer / modules.json / tokenizer_config.json,
a config that is a list or holds wrong types, vocab smaller than the tokenizer's ids, a missing shard or
tokenizer.json). Every refusal comes from `source.inspect`, before the PyTorch reference run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import time
from pathlib import Path

import pytest

from modelport import checkpoint, tiny
from modelport.cli import main
from modelport.errors import ModelportError
from modelport.source import inspect

SECRET = "-----BEGIN OPENSSH PRIVATE KEY----- not a tokenizer"


def tree(root: Path) -> dict[str, tuple]:
    """Everything under root (links not followed): what a run may not change outside --out."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            link = os.readlink(p) if p.is_symlink() else None
            state[p.relative_to(root).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns, link)
    return state


def refused(capsys: pytest.CaptureFixture, model: Path, tmp_path: Path, *extra: str, seconds: float = 30) -> str:
    """Convert `model`; assert the run is refused (exit 2, one error line, no traceback, fast), leaves nothing
    at --out or beside it and changes nothing else under tmp_path. Returns the error line."""
    out = tmp_path / "out" / "a"
    before = tree(tmp_path)
    start = time.monotonic()
    rc = main(["convert", str(model), "--target", "onnx", "--variants", "fp32", "--out", str(out), *extra])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert not out.exists()
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir()] == [], "nothing may be left beside --out"
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before, "files outside --out changed"
    assert elapsed < seconds, f"refused only after {elapsed:.1f} s"
    return " ".join(err[err.index("error:"):].split())  # one logical line (the console may wrap it)


def copy_model(tmp_path: Path, name: str = "tiny-xlm-roberta") -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny.materialize(name), dst)
    return dst


def edit_config(model: Path, **changes) -> None:
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(changes)
    (model / "config.json").write_text(json.dumps(cfg))


def edit_weights(model: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    fn(tensors)
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})


def raw_safetensors(path: Path, header: object, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.fixture()
def xlmr(tmp_path: Path) -> Path:
    return copy_model(tmp_path)


@pytest.fixture()
def llama(tmp_path: Path) -> Path:
    return copy_model(tmp_path, "tiny-llama")


# --- leaks: files outside the model directory ------------------------------------------------------------


@pytest.mark.parametrize("name", ["tokenizer.json", "special_tokens_map.json", "1_Pooling/config.json",
                                  "model.safetensors"])
def test_symlink_out_of_the_model_directory_is_refused(capsys, xlmr: Path, tmp_path: Path, name: str) -> None:
    secret = tmp_path / "secret" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    (xlmr / name).unlink(missing_ok=True)
    (xlmr / name).symlink_to(secret)
    line = refused(capsys, xlmr, tmp_path)
    assert line.startswith(f"error: {name} is a symlink to {secret}, outside the model directory") and \
        "copy the file in if you mean it" in line, line
    assert SECRET not in line


def test_symlinked_module_folder_out_of_the_model_directory_is_refused(capsys, xlmr: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.move(xlmr / "1_Pooling", elsewhere)
    (xlmr / "1_Pooling").symlink_to(elsewhere, target_is_directory=True)
    line = refused(capsys, xlmr, tmp_path)
    assert "1_Pooling/config.json is reached through a symlinked folder" in line, line


def test_hub_cache_snapshot_links_into_its_own_blobs_only(tmp_path: Path) -> None:
    """A hub snapshot's files are symlinks into ../../blobs of the same repo: accepted; a link into another
    repo's blobs is refused like any other link out of the model directory."""
    src = tiny.materialize("tiny-xlm-roberta")
    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        blob = repo / "blobs" / rel.as_posix().replace("/", "_")
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    source = inspect(snap, name="tiny", origin="test")
    assert source.revision == "a" * 40
    other = tmp_path / "hub" / "models--org--other" / "blobs" / "x"
    other.parent.mkdir(parents=True)
    shutil.copyfile(src / "tokenizer.json", other)
    (snap / "tokenizer.json").unlink()
    (snap / "tokenizer.json").symlink_to(os.path.relpath(other, snap))
    with pytest.raises(ModelportError, match="tokenizer.json is a symlink to .*models--org--other.*outside"):
        inspect(snap, name="tiny", origin="test")


# --- wrong artifacts certified: the tensor inventory -------------------------------------------------------


def test_missing_layernorm_weights_are_refused(capsys, xlmr: Path, tmp_path: Path) -> None:
    edit_weights(xlmr, lambda t: t.pop("encoder.layer.1.output.LayerNorm.weight"))
    line = refused(capsys, xlmr, tmp_path)
    assert "model.safetensors lacks 1 tensor(s)" in line and "encoder.layer.1.output.LayerNorm.weight" in line \
        and "random values" in line, line


def test_missing_decoder_layer_and_untied_lm_head_are_refused(capsys, llama: Path, tmp_path: Path) -> None:
    edit_weights(llama, lambda t: [t.pop(k) for k in list(t) if k.startswith("model.layers.1.")])
    line = refused(capsys, llama, tmp_path)
    assert "lacks 9 tensor(s)" in line and "model.layers.1.input_layernorm.weight" in line, line
    shutil.rmtree(llama)
    shutil.copytree(tiny.materialize("tiny-llama"), llama)
    edit_weights(llama, lambda t: t.pop("lm_head.weight"))  # tie_word_embeddings is false: a random lm_head
    assert "lm_head.weight" in refused(capsys, llama, tmp_path)


def test_tensor_of_the_wrong_shape_is_refused(capsys, xlmr: Path, tmp_path: Path) -> None:
    key = "encoder.layer.0.intermediate.dense.weight"
    edit_weights(xlmr, lambda t: t.update({key: t[key].T.contiguous()}))
    line = refused(capsys, xlmr, tmp_path)
    assert f"{key} is [64, 256] in the weights, [256, 64] from config.json" in line, line


def test_weights_for_more_layers_than_the_config_are_refused(capsys, xlmr: Path, tmp_path: Path) -> None:
    edit_config(xlmr, num_hidden_layers=1)
    line = refused(capsys, xlmr, tmp_path)
    assert "has no place for" in line and "encoder.layer.1." in line, line


def test_what_transformers_renames_or_ignores_is_accepted(xlmr: Path) -> None:
    """Keys saved from a task model (base-model prefix `roberta.`), legacy LayerNorm.gamma/beta names, an
    MLM head outside the model and a persistent position_ids buffer load fine in transformers: accepted."""
    import torch

    def damage(t: dict) -> None:
        renamed = {"roberta." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                                         "LayerNorm.beta"): v
                   for k, v in t.items()}
        t.clear()
        t.update(renamed, **{"lm_head.bias": torch.zeros(453), "roberta.embeddings.position_ids": torch.arange(514)})

    edit_weights(xlmr, damage)
    source = inspect(xlmr, name="x", origin="test")
    assert any("1 tensor(s) of a head outside the model ignored" in n and "lm_head.bias" in n
               for n in source.notes), source.notes


@pytest.mark.parametrize("damage", ["none", "drop-layernorm", "drop-layer", "renamed"])
def test_inventory_agrees_with_the_transformers_load_report(xlmr: Path, damage: str) -> None:
    """The meta-model inventory refuses exactly when transformers' own load report has a missing (or
    misshapen) weight modelport would run: the two can never drift apart silently."""
    from transformers import AutoModel

    if damage == "drop-layernorm":
        edit_weights(xlmr, lambda t: t.pop("embeddings.LayerNorm.bias"))
    elif damage == "drop-layer":
        edit_weights(xlmr, lambda t: [t.pop(k) for k in list(t) if k.startswith("encoder.layer.1.")])
    elif damage == "renamed":
        edit_weights(xlmr, lambda t: t.update({"roberta." + k: t.pop(k) for k in list(t)}))
    _, info = AutoModel.from_pretrained(xlmr, output_loading_info=True)
    used_missing = {k for k in info["missing_keys"] if not k.startswith("pooler.")}
    try:
        inspect(xlmr, name="x", origin="test")
        refused_here = False
    except ModelportError as e:
        refused_here = True
        assert all(k in str(e) for k in sorted(used_missing)[:3]), (e, used_missing)
    assert refused_here == bool(used_missing or info["mismatched_keys"]), info


# --- resource exhaustion: size checks before anything is allocated -----------------------------------------


def test_hidden_size_65536_on_unchanged_weights_is_refused_without_allocating(capsys, xlmr: Path, tmp_path: Path,
                                                                               monkeypatch) -> None:
    edit_config(xlmr, hidden_size=65536)
    monkeypatch.setattr(checkpoint, "machine_memory", lambda: 1 << 50)  # a machine big enough: the shapes decide
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = refused(capsys, xlmr, tmp_path)
    assert "do not have the shapes config.json implies" in line, line
    assert "embeddings.position_embeddings.weight is [514, 64] in the weights, [514, 65536] from config.json" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 1 << 20  # KiB: under 1 GiB more at peak
    monkeypatch.undo()  # this machine: refused either way (by the estimate where memory is smaller than 68 GiB)
    refused(capsys, xlmr, tmp_path)


def test_astronomical_config_is_refused_by_the_estimate(capsys, xlmr: Path, tmp_path: Path, monkeypatch) -> None:
    edit_config(xlmr, vocab_size=10**9, num_hidden_layers=10**6)
    monkeypatch.setattr(checkpoint, "machine_memory", lambda: 64 << 30)
    line = refused(capsys, xlmr, tmp_path, seconds=10)
    assert "config.json describes a model of at least" in line and "80% of this machine's 64.0 GiB of memory" in line \
        and "config.json does not describe these weights" in line, line


def test_more_layers_than_tensors_is_refused_before_building_the_model(capsys, xlmr: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    edit_config(xlmr, num_hidden_layers=10**6, hidden_size=4, num_attention_heads=1, intermediate_size=1)
    monkeypatch.setattr(checkpoint, "machine_memory", lambda: 1 << 50)
    line = refused(capsys, xlmr, tmp_path, seconds=10)
    assert "num_hidden_layers=1000000" in line and "holds only 37 tensors" in line, line


# --- tracebacks that became one line: safetensors ------------------------------------------------------------


def test_truncated_safetensors(capsys, xlmr: Path, tmp_path: Path) -> None:
    data = (xlmr / "model.safetensors").read_bytes()
    (xlmr / "model.safetensors").write_bytes(data[: len(data) * 2 // 3])
    line = refused(capsys, xlmr, tmp_path)
    assert "is not a safetensors file" in line and "truncated" in line, line


@pytest.mark.parametrize("header, data, why", [
    ([1, 2], b"", "the header is a list"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, "takes 16 bytes"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "the file holds 12"),
    ({"w": {"dtype": "Q3", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype 'Q3'"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8, "is not {dtype, shape"),
])
def test_malformed_safetensors_header(capsys, xlmr: Path, tmp_path: Path, header, data, why) -> None:
    raw_safetensors(xlmr / "model.safetensors", header, data)
    line = refused(capsys, xlmr, tmp_path)
    assert "is not a safetensors file" in line and why in line, line


def test_missing_shard_is_refused_before_the_reference(capsys, xlmr: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(xlmr / "model.safetensors")
    (xlmr / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:20], "model-00002-of-00002.safetensors": names[20:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, xlmr / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (xlmr / "model.safetensors.index.json").write_text(json.dumps(index))
    assert inspect(xlmr, name="x", origin="test").weight_files[0].name == "model-00001-of-00002.safetensors"
    (xlmr / "model-00002-of-00002.safetensors").unlink()
    line = refused(capsys, xlmr, tmp_path)
    assert "names the shard model-00002-of-00002.safetensors (17 tensors), which is missing" in line, line


# --- config.json ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, why", [
    (b"[1, 2, 3]", "config.json in {d} is not a JSON object (it holds a list)"),
    (b'{"model_type": "xlm-roberta", "name": "\xff\xfe"}', "config.json in {d} is not UTF-8 text"),
    (b'{"model_type": "xlm-roberta",', "config.json in {d} is not valid JSON"),
])
def test_config_that_is_not_a_json_object(capsys, xlmr: Path, tmp_path: Path, content: bytes, why: str) -> None:
    (xlmr / "config.json").write_bytes(content)
    assert why.format(d=xlmr) in refused(capsys, xlmr, tmp_path)


@pytest.mark.parametrize("field, value, why", [
    ("hidden_size", None, "hidden_size is null; it must be a positive integer"),
    ("vocab_size", "453", 'vocab_size is "453"; it must be a positive integer'),
    ("num_attention_heads", 4.0, "num_attention_heads is 4.0; it must be a positive integer"),
    ("max_position_embeddings", None, "max_position_embeddings is null"),
    ("tie_word_embeddings", "false", 'tie_word_embeddings is "false"; it must be true or false'),
    ("eos_token_id", "two", "eos_token_id is \"two\""),
    ("num_attention_heads", 3, "hidden_size 64 is not a multiple of num_attention_heads 3"),
])
def test_config_field_of_the_wrong_type(capsys, xlmr: Path, tmp_path: Path, field: str, value, why: str) -> None:
    edit_config(xlmr, **{field: value})
    line = refused(capsys, xlmr, tmp_path)
    assert f"error: config.json: {why}" in line, line


# --- tokenizer and sentence-transformers files ----------------------------------------------------------------


@pytest.mark.parametrize("name, content, why", [
    ("tokenizer.json", b'{"model": {"type": "Unigram"', "tokenizer.json in {d} is not valid JSON"),
    ("tokenizer.json", b'{"version": "1.0", "model": {"type": "Nope"}}', "cannot be loaded by the tokenizers library"),
    ("tokenizer_config.json", b"\x00garbage", "tokenizer_config.json in {d} is not valid JSON"),
    ("tokenizer_config.json", b"[]", "tokenizer_config.json in {d} is not a JSON object"),
    ("special_tokens_map.json", b"{,}", "special_tokens_map.json in {d} is not valid JSON"),
    ("modules.json", b"{{{", "modules.json in {d} is not valid JSON"),
    ("modules.json", b'["0_Transformer", "1_Pooling"]', "modules.json in {d} is not a sentence-transformers module"),
    ("modules.json", b'[{"type": "sentence_transformers.models.Pooling", "path": "../../etc"}]',
     "names the module folder '../../etc', outside the model directory"),
    ("1_Pooling/config.json", b'"cls"', "1_Pooling/config.json in {d} is not a JSON object"),
    ("sentence_bert_config.json", b'{"max_seq_length": "512"}', 'max_seq_length is "512"'),
])
def test_corrupt_tokenizer_and_module_files(capsys, xlmr: Path, tmp_path: Path, name: str, content: bytes,
                                            why: str) -> None:
    (xlmr / name).write_bytes(content)
    line = refused(capsys, xlmr, tmp_path, seconds=10)
    assert why.format(d=xlmr) in line, line


def test_vocab_smaller_than_the_tokenizer_ids(capsys, xlmr: Path, tmp_path: Path) -> None:
    edit_config(xlmr, vocab_size=100)
    line = refused(capsys, xlmr, tmp_path, seconds=10)
    assert "tokenizer.json produces ids up to 452, but config.json's vocab_size is 100" in line, line


def test_missing_tokenizer_json_is_refused_before_the_reference(capsys, llama: Path, tmp_path: Path) -> None:
    (llama / "tokenizer.json").unlink()
    line = refused(capsys, llama, tmp_path, seconds=10)
    assert line.startswith(f"error: no tokenizer.json in {llama}"), line


# --- auto_map on an architecture transformers implements --------------------------------------------------------


@pytest.mark.parametrize("flag", [False, True])
def test_auto_map_on_a_native_architecture_loads_natively(llama: Path, flag: bool) -> None:
    """The real Phi-3-mini config carries an auto_map pointing at repo code; transformers implements the
    model_type itself: no --trust-remote-code needed, no repo code run, and the manifest's source notes
    say so. (tiny-llama stands in for Phi-3: the unit tier already builds it.)"""
    edit_config(llama, auto_map={"AutoConfig": "configuration_llama.LlamaConfig",
                                 "AutoModelForCausalLM": "modeling_llama.LlamaForCausalLM"})
    source = inspect(llama, name="llama", origin="test", trust_remote_code=flag)
    assert source.trust_remote_code is False
    notes = source.to_json()["notes"]  # what manifest.build records as the source
    assert any("modeling_llama.LlamaForCausalLM" in n and "loaded natively" in n for n in notes), notes
    assert any("--trust-remote-code was not needed" in n for n in notes) == flag
