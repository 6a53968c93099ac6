"""The tiny embedders shaped like hub models (issue 15): they load in transformers and
sentence-transformers without complaint, carry the real models' quirks, and rebuild to the same bytes.

Each tiny build takes well under two seconds (the Qwen3 one trains the shared BPE tokenizer), so they
live in the unit tier. The full-shape siblings (`*-shape`, 0.3-0.6B parameters) are not built here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelport import tiny
from modelport.catalog import MODELS
from modelport.fsutil import sha256_file
from modelport.validation_set import TEXTS

TINY = ("tiny-qwen3-embedding", "tiny-embeddinggemma", "tiny-bge-m3")
SHAPES = ("qwen3-embedding-0.6b-shape", "embeddinggemma-300m-shape", "bge-m3-shape")


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def _files(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


def test_catalog_lists_them_without_a_hub_id() -> None:
    for name in TINY + SHAPES:
        assert name in tiny.EMB_BUILDERS and name in tiny.BUILDERS
        assert MODELS[name].hub_id is None and "shape" in MODELS[name].description


def test_cached_under_their_own_builder_version() -> None:
    path = tiny.materialize("tiny-bge-m3")
    assert path.name == f"tiny-bge-m3-v{tiny.EMB_BUILDER_VERSION}"


@pytest.mark.parametrize("name", TINY)
def test_automodel_loads_every_weight(name: str) -> None:
    from transformers import AutoModel

    _, info = AutoModel.from_pretrained(tiny.materialize(name), attn_implementation="eager",
                                        output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}


@pytest.mark.parametrize("name, modules, prompt", [
    ("tiny-qwen3-embedding", ["Transformer", "Pooling", "Normalize"], "query"),
    ("tiny-embeddinggemma", ["Transformer", "Pooling", "Dense", "Dense", "Normalize"], "query"),
    ("tiny-bge-m3", ["Transformer", "Pooling", "Normalize"], None),  # BGE-M3 has no prompts
])
def test_sentence_transformers_loads_and_encodes(name: str, modules: list[str], prompt: str | None) -> None:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    path = tiny.materialize(name)
    st = SentenceTransformer(str(path), device="cpu")
    assert [type(m).__name__ for m in st] == modules
    kwargs = {"prompt_name": prompt} if prompt else {}
    vec = st.encode(["hello world"], **kwargs)
    assert vec.shape == (1, _config(path)["hidden_size"])
    assert np.isfinite(vec).all() and abs(float((vec ** 2).sum()) - 1.0) < 1e-5


def test_qwen3_embedding_quirks() -> None:
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    path = tiny.materialize("tiny-qwen3-embedding")
    cfg = _config(path)
    # the hub's config: a causal-LM architecture name, transformers-4 rope spelling
    assert cfg["model_type"] == "qwen3" and cfg["architectures"] == ["Qwen3ForCausalLM"]
    assert cfg["rope_theta"] == 1000000 and "rope_parameters" not in cfg and cfg["tie_word_embeddings"] is True
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"]) == (128, 3, 4, 2, 32)
    assert AutoConfig.from_pretrained(path).rope_parameters["rope_theta"] == 1000000
    # ... over the trunk's weights under flat names, no lm_head
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert "embed_tokens.weight" in keys and not any(k.startswith(("model.", "lm_head")) for k in keys)

    tok = AutoTokenizer.from_pretrained(path)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.padding_side == "left" and tok.pad_token_id == eot
    batch = tok(["hello world", "The model converts each sentence into a list of numbers."], padding=True)
    short, long = batch["input_ids"]
    assert long[-1] == eot and long.count(eot) == 1  # appended once, read by last-token pooling
    assert short[-1] == eot and short[0] == eot and batch["attention_mask"][0][0] == 0  # padded on the left

    pooling = json.loads((path / "1_Pooling/config.json").read_text())
    assert [k for k, v in pooling.items() if k.startswith("pooling_mode") and v] == ["pooling_mode_lasttoken"]
    st_cfg = json.loads((path / "config_sentence_transformers.json").read_text())
    assert st_cfg["prompts"]["query"].startswith("Instruct: ") and st_cfg["prompts"]["document"] == ""


def test_embeddinggemma_is_bidirectional_with_a_short_sliding_window() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = tiny.materialize("tiny-embeddinggemma")
    cfg = _config(path)
    assert cfg["model_type"] == "gemma3_text" and cfg["use_bidirectional_attention"] is True
    assert cfg["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert (cfg["rope_theta"], cfg["rope_local_base_freq"]) == (1e6, 1e4) and "rope_parameters" not in cfg
    assert cfg["query_pre_attn_scalar"] == cfg["head_dim"] == 32
    assert cfg["sliding_window"] == 8  # on disk, as the hub spells 512

    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    assert model.config.use_bidirectional_attention is True
    assert model.config.sliding_window == 8 // 2 + 1  # transformers' in-memory exclusive bound
    assert model.config.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert model.config.rope_parameters["full_attention"]["rope_theta"] == 1e6

    tok = AutoTokenizer.from_pretrained(path)
    lengths = sorted(len(tok(t)["input_ids"]) for t in TEXTS)
    reach = 8 // 2  # a sliding layer sees 4 tokens either way
    assert lengths[len(lengths) // 2] > 2 * reach + 1  # most validation texts are longer than a window

    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    assert ids.shape[1] > reach + 2

    def first_token(changed: int) -> tuple:
        other = ids.clone()
        other[0, changed] = 7 if int(ids[0, changed]) != 7 else 8
        with torch.no_grad():
            a = model(ids, output_hidden_states=True).hidden_states
            b = model(other, output_hidden_states=True).hidden_states
        # after layer 1 (sliding) and after the last layer (full attention)
        return (a[1][0, 0] - b[1][0, 0]).abs().max().item(), (a[-1][0, 0] - b[-1][0, 0]).abs().max().item()

    near, far = first_token(2), first_token(reach + 1)
    assert near[0] > 1e-3  # a later token changes an earlier token: bidirectional
    assert far[0] == 0.0 and far[1] > 1e-3  # out of the window for layer 1, reached by the full layer


def test_embeddinggemma_dense_files_are_what_sentence_transformers_writes(tmp_path: Path) -> None:
    from safetensors import safe_open
    from sentence_transformers.sentence_transformer.modules import Dense

    path = tiny.materialize("tiny-embeddinggemma")
    assert [m["path"] for m in json.loads((path / "modules.json").read_text())] == [
        "", "1_Pooling", "2_Dense", "3_Dense", "4_Normalize"]
    for sub, shape in (("2_Dense", [384, 96]), ("3_Dense", [96, 384])):
        assert json.loads((path / sub / "config.json").read_text()) == {
            "in_features": shape[1], "out_features": shape[0], "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity"}
        with safe_open(path / sub / "model.safetensors", "pt") as f:
            assert list(f.keys()) == ["linear.weight"] and list(f.get_tensor("linear.weight").shape) == shape
        (tmp_path / sub).mkdir()
        Dense.load(str(path / sub)).save(str(tmp_path / sub))
        assert sha256_file(tmp_path / sub / "model.safetensors") == sha256_file(path / sub / "model.safetensors")
    prompts = json.loads((path / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"] == "task: search result | query: " and prompts["document"] == "title: none | text: "
    assert len(prompts) == 14


def test_bge_m3_heads_and_conventions() -> None:
    import torch
    from transformers import AutoTokenizer

    path = tiny.materialize("tiny-bge-m3")
    hidden = _config(path)["hidden_size"]
    sparse = torch.load(path / "sparse_linear.pt", weights_only=True)
    colbert = torch.load(path / "colbert_linear.pt", weights_only=True)
    assert {k: list(v.shape) for k, v in sparse.items()} == {"weight": [1, hidden], "bias": [1]}
    assert {k: list(v.shape) for k, v in colbert.items()} == {"weight": [hidden, hidden], "bias": [hidden]}
    cfg = _config(path)
    assert (cfg["max_position_embeddings"], cfg["type_vocab_size"], cfg["pad_token_id"]) == (8194, 1, 1)
    assert AutoTokenizer.from_pretrained(path).model_max_length == 8192
    pooling = json.loads((path / "1_Pooling/config.json").read_text())
    assert [k for k, v in pooling.items() if k.startswith("pooling_mode") and v] == ["pooling_mode_cls_token"]
    # its own trunk seed: not tiny-xlm-roberta's weights
    from safetensors.torch import load_file

    ours = load_file(path / "model.safetensors")["embeddings.word_embeddings.weight"]
    theirs = load_file(tiny.materialize("tiny-xlm-roberta") / "model.safetensors")["embeddings.word_embeddings.weight"]
    assert ours.shape == theirs.shape and not torch.equal(ours, theirs)


@pytest.mark.parametrize("name", TINY)
def test_same_seed_same_bytes(name: str, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        out.mkdir()
        tiny.BUILDERS[name](out)
    assert _files(first) == _files(second)
    assert _files(first) == _files(tiny.materialize(name))
