"""The sentence-transformers contract is read from the model's own files, and refused in one line
where a graph could not carry it (embedding.py); the torch head computes what sentence-transformers
computes (pooling on either padding side, Dense, normalize, truncation; BGE-M3's heads)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from modelport.embedding import (EmbeddingContract, lexical_score, lexical_weights, maxsim, read_contract, read_heads,
                                 with_truncate_dim)
from modelport.errors import ModelportError
from modelport.fsutil import write_json

H = 8
TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}


def st_dir(tmp: Path, pooling: dict, *, dense: list[dict] = (), normalize: bool = True,
           prompts: dict | None = None, padding_side: str | None = None, extra_modules: list[dict] = ()) -> Path:
    modules = [TRANSFORMER, {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    write_json(tmp / "1_Pooling" / "config.json", {"word_embedding_dimension": H, **pooling})
    for i, cfg in enumerate(dense, start=2):
        path = f"{i}_Dense"
        modules.append({"idx": i, "name": str(i), "path": path, "type": "sentence_transformers.models.Dense"})
        write_json(tmp / path / "config.json", cfg)
    modules += list(extra_modules)
    if normalize:
        modules.append({"idx": 9, "name": "9", "path": "9_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(tmp / "modules.json", modules)
    if prompts is not None:
        write_json(tmp / "config_sentence_transformers.json", {"prompts": prompts, "default_prompt_name": None})
    if padding_side:
        write_json(tmp / "tokenizer_config.json", {"padding_side": padding_side})
    return tmp


def dense_cfg(i: int, o: int, act: str | None = "torch.nn.modules.linear.Identity") -> dict:
    cfg = {"in_features": i, "out_features": o, "bias": False}
    if act:
        cfg["activation_function"] = act
    return cfg


def test_qwen3_embedding_style_contract(tmp_path: Path) -> None:
    d = st_dir(tmp_path, {"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False},
               prompts={"query": "Instruct: find\nQuery:", "document": ""}, padding_side="left")
    c = read_contract(d, H)
    assert (c.pooling, c.normalize, c.dense, c.padding_side) == ("last_token", True, (), "left")
    assert c.query_prompt == "Instruct: find\nQuery:" and c.document_prompt == ""


def test_embeddinggemma_style_contract_reads_dense_in_order(tmp_path: Path) -> None:
    d = st_dir(tmp_path, {"pooling_mode": "mean"}, dense=[dense_cfg(H, 32), dense_cfg(32, H, act=None)],
               prompts={"query": "task: search result | query: ", "document": "title: none | text: "})
    c = read_contract(d, H)
    assert [(x.in_features, x.out_features, x.activation) for x in c.dense] == [(H, 32, "identity"), (32, H, "tanh")]
    assert c.output_dim(H) == H and c.document_prompt == "title: none | text: "


@pytest.mark.parametrize("case, message", [
    ("include_prompt", "include_prompt=false"),
    ("activation", "activation 'torch.nn.modules.activation.GELU' is not supported"),
    ("chain", "in_features 16 != the 8 features before it"),
    ("module", "module 'sentence_transformers.models.LayerNorm' is not supported"),
    ("max_pooling", "unsupported pooling"),
    ("default_prompt", "default_prompt_name 'web' is not one of its prompts"),
    ("normalize_first", "a Normalize module before a Dense module"),
])
def test_a_contract_no_graph_carries_is_refused_in_one_line(tmp_path: Path, case: str, message: str) -> None:
    pooling = {"pooling_mode_mean_tokens": True}
    kwargs: dict = {}
    if case == "include_prompt":
        pooling["include_prompt"] = False
    elif case == "activation":
        kwargs["dense"] = [dense_cfg(H, H, act="torch.nn.modules.activation.GELU")]
    elif case == "chain":
        kwargs["dense"] = [dense_cfg(16, H)]
    elif case == "module":
        kwargs["extra_modules"] = [{"idx": 5, "name": "5", "path": "5_LN", "type": "sentence_transformers.models.LayerNorm"}]
    elif case == "max_pooling":
        pooling = {"pooling_mode_max_tokens": True}
    elif case == "normalize_first":
        kwargs["normalize"] = False
        kwargs["extra_modules"] = [{"idx": 5, "name": "5", "path": "5_Normalize",
                                    "type": "sentence_transformers.models.Normalize"}]
    d = st_dir(tmp_path, pooling, **kwargs)
    if case == "normalize_first":  # Pooling, Normalize, Dense
        modules = json.loads((d / "modules.json").read_text())
        write_json(d / "2_Dense" / "config.json", dense_cfg(H, H))
        modules.append({"idx": 6, "name": "6", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        write_json(d / "modules.json", modules)
    if case == "default_prompt":
        write_json(d / "config_sentence_transformers.json", {"prompts": {"query": "q: "}, "default_prompt_name": "web"})
    with pytest.raises(ModelportError, match=message) as err:
        read_contract(d, H)
    assert "\n" not in str(err.value)


def test_truncate_dim_is_bounded_by_the_embedding_size() -> None:
    c = EmbeddingContract("last_token", True)
    assert with_truncate_dim(c, 4, H).output_dim(H) == 4
    with pytest.raises(ModelportError, match="between 1 and the embedding size 8"):
        with_truncate_dim(c, 9, H)


class Evil:
    def __reduce__(self):  # what a hostile .pt would run on a plain torch.load
        return (Path("/tmp/modelport-evil-ran").touch, ())


def test_bge_m3_heads_load_as_weights_only_and_never_run_pickled_code(tmp_path: Path) -> None:
    import torch

    torch.save({"weight": torch.zeros(1, H), "bias": torch.zeros(1)}, tmp_path / "sparse_linear.pt")
    with pytest.raises(ModelportError, match="sparse_linear.pt without colbert_linear"):
        read_heads(tmp_path, H)
    torch.save({"weight": torch.zeros(H, H), "bias": torch.zeros(H)}, tmp_path / "colbert_linear.pt")
    write_json(tmp_path / "tokenizer_config.json", {})
    _tokenizer(tmp_path)
    heads = read_heads(tmp_path, H)
    assert heads.colbert_dim == H and heads.unused_ids == (0, 1, 2, 3)
    marker = Path("/tmp/modelport-evil-ran")
    marker.unlink(missing_ok=True)
    with open(tmp_path / "colbert_linear.pt", "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    with pytest.raises(ModelportError, match="weights_only refused it") as err:
        read_heads(tmp_path, H)
    assert not marker.exists() and "\n" not in str(err.value)


def _tokenizer(d: Path) -> None:
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4}, unk_token="<unk>"))
    tok.save(str(d / "tokenizer.json"))
    write_json(d / "special_tokens_map.json", {"cls_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                                               "unk_token": {"content": "<unk>"}})


def test_lexical_weights_take_the_max_per_id_and_maxsim_averages_best_matches() -> None:
    w = lexical_weights(np.array([5, 7, 5, 9]), np.array([0.2, 0.0, 0.5, 0.1]))
    assert w == {5: 0.5, 9: pytest.approx(0.1)}
    assert lexical_score(w, {5: 2.0, 8: 1.0}) == pytest.approx(1.0)
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = np.array([[1.0, 0.0], [0.6, 0.8]])
    assert maxsim(q, d) == pytest.approx((1.0 + 0.8) / 2)


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_pooling_matches_sentence_transformers_on_either_padding_side(side: str) -> None:
    import torch
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    from modelport.recipes import ARCHITECTURES, Recipe
    from modelport.torch_model import pool

    hidden = torch.randn(3, 6, H, generator=torch.Generator().manual_seed(0))
    lengths = [6, 4, 1]
    mask = torch.zeros(3, 6, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "left":
            mask[row, 6 - n:] = 1
        else:
            mask[row, :n] = 1
    recipe = Recipe(ARCHITECTURES["qwen3"], "last_token", False, 32, H, "sentence-transformers",
                    contract=EmbeddingContract("last_token", False, padding_side=side), family="decoder-embedder")
    ours = pool(hidden, mask, recipe)
    theirs = Pooling(H, pooling_mode="lasttoken")({"token_embeddings": hidden, "attention_mask": mask})
    assert torch.equal(ours, theirs["sentence_embedding"])


def test_a_gemma3_text_checkpoint_without_pooling_is_refused_not_guessed(tmp_path: Path) -> None:
    """Gemma 3 1B (a text LLM) is gemma3_text too: without a Pooling module there is nothing to embed with."""
    from modelport.recipes import recipe_for

    config = {"model_type": "gemma3_text", "hidden_size": H, "max_position_embeddings": 64}
    write_json(tmp_path / "config.json", config)
    with pytest.raises(ModelportError, match="converted as an embedder only with one"):
        recipe_for(tmp_path, config)


@pytest.mark.parametrize("contract, refused", [
    (EmbeddingContract("last_token", True), "last-token pooling"),
    (EmbeddingContract("mean", True, truncate_dim=4), "--truncate-dim 4"),
    (EmbeddingContract("cls", True), None),
])
def test_mlc_refuses_a_head_webllm_would_drop(contract: EmbeddingContract, refused: str | None) -> None:
    from modelport.recipes import ARCHITECTURES, Recipe
    from modelport.targets import REGISTRY

    recipe = Recipe(ARCHITECTURES["bert"], contract.pooling, True, 32, H, "sentence-transformers", contract=contract)
    converter = REGISTRY.converter("mlc", "sentence-encoder")
    if refused is None:
        assert converter.adapt_recipe(recipe, None) is recipe
    else:
        with pytest.raises(ModelportError, match=f"cannot carry this model's {refused}"):
            converter.adapt_recipe(recipe, None)
