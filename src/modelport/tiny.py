"""Small random models built locally from a config with a fixed seed.

No hub is reachable here, yet each architecture in the registry needs a test model with a real
tokenizer. These builders produce Hugging Face model directories (config, safetensors,
tokenizer.json, sentence-transformers pooling config) shaped like the models users convert, and
cache them under `cache_root()/models`. Same seed and builder version -> same weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .fsutil import write_json
from .source import cache_root
from .validation_set import TEXTS

SEED = 20261122
BUILDER_VERSION = "2"

# Training text for the tiny Unigram tokenizer: the validation texts plus a little more, so the
# vocabulary covers every script the validation set uses.
_EXTRA_TEXT = (
    "The model converts sentences into vectors. Embeddings are compared with cosine similarity. "
    "Les modèles de langue apprennent des représentations. Die Sprache ist ein Werkzeug. "
    "La traducción automática mejora cada año. 自然言語処理は面白いです。我们在测试模型。 "
    "Привет мир, это тест. أهلا وسهلا بكم. 🚀🔥😀 12345 67890 #$%&*!?"
)


def _sentence_transformers_files(out: Path, pooling: str, max_seq_length: int, dim: int) -> None:
    write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    write_json(out / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})


def _build_bert_arctic(out: Path) -> None:
    """BERT with snowflake-arctic-embed-xs's shape and tokenizer (it shares MiniLM's uncased vocab)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from .source import MODELS

    minilm, _ = MODELS["all-minilm-l6-v2"].materialize()
    tok = AutoTokenizer.from_pretrained(minilm)
    tok.model_max_length = 512
    tok.save_pretrained(out)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
    )
    torch.manual_seed(SEED)
    BertModel(cfg).eval().save_pretrained(out)
    _sentence_transformers_files(out, "cls", 512, cfg.hidden_size)


def _unigram_vocab(specials: list[str]) -> list[tuple[str, float]]:
    """A Unigram vocabulary from corpus counts: whole words, then single characters.

    `tokenizers`' UnigramTrainer is not deterministic (same input, different vocab on each run),
    so the pieces and their log-probabilities are derived directly: deterministic, and still a
    real SentencePiece-style Unigram model (Viterbi segmentation, ▁ word boundaries).
    """
    import math
    import unicodedata
    from collections import Counter

    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for text in list(TEXTS) + [_EXTRA_TEXT]:
        for word in unicodedata.normalize("NFKC", text).split():
            words["▁" + word] += 1
            chars.update(word)
    total = sum(words.values()) + sum(chars.values())
    vocab = [(tok, 0.0) for tok in specials] + [("▁", math.log(len(words) / total))]
    # Characters are penalized so a whole-word piece wins over spelling it out.
    vocab += [(w, math.log(c / total)) for w, c in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))]
    vocab += [(ch, math.log(c / total) - 10.0) for ch, c in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))]
    return vocab


def _build_xlm_roberta(out: Path) -> None:
    """Two-layer XLM-RoBERTa with BGE-M3's conventions: CLS pooling, <s>/</s>, pad id 1, offset positions."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tk = Tokenizer(models.Unigram(_unigram_vocab(specials), unk_id=specials.index("<unk>"), byte_fallback=False))
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.add_special_tokens(["<mask>"])
    bos, eos = tk.token_to_id("<s>"), tk.token_to_id("</s>")
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok = XLMRobertaTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )
    tok.save_pretrained(out)
    cfg = XLMRobertaConfig(
        vocab_size=tk.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tk.token_to_id("<pad>"),
        bos_token_id=bos,
        eos_token_id=eos,
    )
    torch.manual_seed(SEED)
    XLMRobertaModel(cfg, add_pooling_layer=False).eval().save_pretrained(out)
    _sentence_transformers_files(out, "cls", 512, cfg.hidden_size)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-bert-arctic": _build_bert_arctic,
    "tiny-xlm-roberta": _build_xlm_roberta,
}


def materialize(name: str) -> Path:
    """Return the cached model directory, building it (atomically) on first use."""
    target = cache_root() / "models" / f"{name}-v{BUILDER_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        BUILDERS[name](tmp)
        os.replace(tmp, target)
    except OSError:
        # A concurrent build won the rename: use its result.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
