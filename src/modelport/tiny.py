"""Small random models built locally from a config with a fixed seed.

No hub is reachable here, yet each architecture in the registry needs a test model with a real
tokenizer. These builders produce Hugging Face model directories (config, safetensors,
tokenizer.json, sentence-transformers pooling config) shaped like the models users convert, and
cache them under `cache_root()/models`. Same seed and builder version -> same weights.

Decoder LLMs (tiny-llama, tiny-qwen2, tiny-qwen3, tiny-smollm3, tiny-phi3) share a byte-level BPE
tokenizer trained here and are briefly trained so their logits are peaked (single-threaded, so the
same machine rebuilds the same bytes; float training is not promised bit-identical across CPUs).
`llama-3.2-1b-shape` is an untrained model with Llama-3.2-1B's shape, for scale runs.

Embedders shaped like hub models (tiny-qwen3-embedding, tiny-embeddinggemma, tiny-bge-m3, and their
untrained full-shape siblings *-shape) are random and untrained: what they copy from Qwen3-Embedding,
EmbeddingGemma and BGE-M3 is the architecture, the config.json spelling, the tokenizer conventions and
the sentence-transformers files (see the section comment below). Their own EMB_BUILDER_VERSION.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .fsutil import write_json
from .fsutil import cache_root
from .validation_set import TEXTS

SEED = 20261122
BUILDER_VERSION = "2"
# Decoder builders have their own version: bumping it rebuilds only the decoders.
LM_BUILDER_VERSION = "3"
# The embedders shaped like hub models (issue 15) too: bumping it rebuilds only those.
EMB_BUILDER_VERSION = "2"  # 2: Qwen's pre-tokenizer in the tiny Qwen3-Embedding tokenizer.json

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

    from .packaged import minilm as packaged_minilm

    minilm, _ = packaged_minilm()
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


def _xlmr_tokenizer(model_max_length: int):
    """BGE-M3's tokenizer conventions on a tiny Unigram vocabulary: <s>/</s> around the text, pad id 1,
    <unk> 3, <mask> last, ▁ word boundaries (XLM-R's SentencePiece)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

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
    return XLMRobertaTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=model_max_length,
    )


def _xlmr_config(tok, **dims):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=dims.pop("vocab_size", None) or len(tok),
        **dims,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _build_xlm_roberta(out: Path) -> None:
    """Two-layer XLM-RoBERTa with BGE-M3's conventions: CLS pooling, <s>/</s>, pad id 1, offset positions."""
    import torch
    from transformers import XLMRobertaModel

    tok = _xlmr_tokenizer(512)
    tok.save_pretrained(out)
    cfg = _xlmr_config(tok, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                       max_position_embeddings=514)
    torch.manual_seed(SEED)
    XLMRobertaModel(cfg, add_pooling_layer=False).eval().save_pretrained(out)
    _sentence_transformers_files(out, "cls", 512, cfg.hidden_size)


# --- decoder LLMs ----------------------------------------------------------------------------------
# One byte-level BPE tokenizer (ChatML specials and chat template, like Qwen/SmolLM) trained offline
# on the text below, shared by every tiny decoder. The models are random-initialized and then
# trained for a few hundred steps on the same text: untrained logits are near-uniform, so greedy
# argmax would be decided by near-ties and token checks would measure noise rather than
# conversion errors. Training is short (13-50 s on 2 busy cores) and the result is cached.

LM_CORPUS = (
    "The model converts each sentence into a list of numbers. The converter reads the model, runs the "
    "reference, and writes a file for every device. Before it writes a file, the converter checks the "
    "config, the tokenizer and the weights. Why does the small device run the model so slowly? Because "
    "the small device has little memory, and every layer must be read again for every token. "
    "Once upon a time there was a little robot who wanted to read every book in the library. "
    "Near the river lived a small fox, and every morning the fox ran to the water. "
    "The robot read the first book, then the second book, and then it asked the librarian for more. "
    "In 2024, the 3 runtimes agreed on 128 of the 130 tokens, and the last 2 tokens differed by a "
    "rounding error. In 2025, 4 devices ran 16 steps each, and all 64 tokens matched. "
    "What does the converter check before it writes a file? It checks that the output of the device "
    "matches the output of the reference, token by token, and it records the result in the manifest. "
    "A token is a piece of text. The tokenizer splits the text into tokens, and the model predicts the "
    "next token from the tokens before it. The cache keeps the keys and values of earlier tokens, so "
    "each new token costs one step, not a whole pass over the text. "
    "The weather was cold and the road was long, but the travellers kept walking until they reached "
    "the old harbour, where a small boat was waiting for them. "
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 16 32 64 128 256 512 1024 2048. "
    "Questions and answers: Where is the file? The file is in the folder. What is the answer? The "
    "answer is in the manifest. How many tokens? Sixteen tokens for every prompt. "
)
LM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LM_VOCAB = 512
LM_TRAIN_STEPS = 300
LM_LR = 3e-3
# shared shape: hidden 128, 4 heads / 2 KV heads (grouped-query attention), head_dim 32
LM_COMMON = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, max_position_embeddings=2048, rms_norm_eps=1e-6, initializer_range=0.02)


def _chat_corpus() -> list[str]:
    """The corpus as training samples, plus ChatML turns so the chat special tokens are trained too."""
    import re

    sentences = [s for s in re.split(r"(?<=[.?!]) ", LM_CORPUS) if s.strip()]
    turns = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a.strip()}<|im_end|>\n"
             for q, a in zip(sentences, sentences[1:]) if q.endswith("?")]
    return [LM_CORPUS] * 4 + turns * 4 + list(TEXTS)


def _lm_tokenizer():
    """Byte-level BPE (GPT-2/Qwen style pre-tokenizer), vocabulary LM_VOCAB, trained on LM_CORPUS.

    BpeTrainer is deterministic for a fixed input (unlike the Unigram trainer), so the same
    tokenizer.json comes out of every build.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=LM_VOCAB, special_tokens=list(LM_SPECIALS), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_chat_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None, model_max_length=2048)
    tok.chat_template = LM_CHAT_TEMPLATE
    return tok


def _train_lm(model, tok, steps: int, seed: int = SEED) -> None:
    """AdamW on random windows of the corpus (fixed generator): 20 warm-up steps, cosine decay,
    gradient clipping. Measured: without the schedule, 300 steps leave the loss at ~2 and top-2
    logit gaps of 1e-5 on the validation prompts (near-ties make greedy checks flaky); with it the
    loss reaches ~1 and the smallest gap is ~0.05."""
    import math

    import torch

    ids = [i for text in _chat_corpus() for i in tok(text)["input_ids"]]
    data = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LM_LR, weight_decay=0.0)
    model.train()
    seq, batch = 64, 8
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = LM_LR * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[int(s):int(s) + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def _lm_builder(config_class: str, train_steps: int = LM_TRAIN_STEPS, seed: int = SEED,
                **arch) -> Callable[[Path], None]:
    """A builder for a tiny decoder of `config_class` (a transformers config class name); `train_steps` and
    `seed` other than the defaults give models of other peakedness (tests/test_kld_gates.py)."""

    def build(out: Path) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        tok = _lm_tokenizer()
        cfg = getattr(transformers, config_class)(
            vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            **{**LM_COMMON, **arch})
        torch.manual_seed(seed)
        # one thread: the fastest on a busy 2-core machine (measured 0.08 s/step vs 0.5 s with 2), and
        # a fixed split of the float reductions, hence the same trained weights on every build
        with _torch_threads(1):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            if train_steps:
                _train_lm(model, tok, train_steps, seed)
        model.generation_config.do_sample = False
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return build


class _torch_threads:
    """Pin torch's thread count while training: float reductions, hence the trained weights, can
    depend on how the work is split."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self.old)


def _llama_shape_builder(**dims: int) -> Callable[[Path], None]:
    """A random, untrained Llama of a given shape (tied embeddings, llama3 rope scaling, head_dim 64),
    with the tiny BPE tokenizer (its ids are a subset of any vocabulary here): for timing and memory
    in the scale benchmark, not accuracy."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        tok = _lm_tokenizer()
        cfg = LlamaConfig(
            **dims, head_dim=64, max_position_embeddings=131072,
            rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        )
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.generation_config.do_sample = False
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return build


# Llama-3.2-1B's shape (1.24B parameters, 5 GB fp32).
_build_llama_1b_shape = _llama_shape_builder(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                             num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
# ~100M parameters: the middle point of the scale benchmark.
_build_llama_100m_shape = _llama_shape_builder(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                                               num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4)


SHARD_BYTES = 2_000_000_000


def _build_smollm3_3b_shape(out: Path) -> None:
    """An untrained model with SmolLM3-3B's shape and config (3.08B parameters, 12.3 GB fp32; tied
    embeddings; NoPE on every 4th layer, `no_rope_layers` as in the real config; rope_theta 5e6), with the
    tiny BPE tokenizer: the issue's 3B conversion target. Written tensor by tensor into 2 GB safetensors
    shards (+ index): neither a 12 GB model in memory nor save_pretrained's serialized copy of it, so it
    builds on the machine it is measured on. Values: normal(0, 0.02) per tensor (the config's
    initializer_range, a per-tensor seed), RMSNorm weights 1."""
    import json
    import math

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig, SmolLM3Config

    tok = _lm_tokenizer()
    layers = 36
    cfg = SmolLM3Config(
        vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=65536, rms_norm_eps=1e-6,
        no_rope_layers=[int((i + 1) % 4 != 0) for i in range(layers)], no_rope_layer_interval=4,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0}, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in AutoModelForCausalLM.from_config(cfg).named_parameters()}
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    files: list[str] = []
    weight_map: dict[str, str] = {}

    def flush() -> None:
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shards[0], str(out / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shards[0]})
        shards[0] = {}

    for i, (name, shape) in enumerate(shapes.items()):
        if name.endswith("norm.weight"):
            t = torch.ones(shape)
        else:
            t = torch.empty(shape).normal_(0.0, cfg.initializer_range, generator=torch.Generator().manual_seed(SEED + i))
        if size and size + t.numel() * 4 > SHARD_BYTES:
            flush()
            size = 0
        shards[0][name] = t
        size += t.numel() * 4
    flush()
    total = len(files)
    for k, name in enumerate(files):  # the hub's "-of-N" names, known once all are written
        final = name.replace(".safetensors", f"-of-{total:05d}.safetensors")
        (out / name).rename(out / final)
        weight_map.update({t: final for t, f in weight_map.items() if f == name})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(math.prod(s) * 4 for s in shapes.values())}, "weight_map": weight_map}, indent=1))
    cfg.architectures = ["SmolLM3ForCausalLM"]
    cfg.save_pretrained(out)
    GenerationConfig(do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(out)
    tok.save_pretrained(out)


LM_BUILDERS: dict[str, Callable[[Path], None]] = {
    # untied embeddings, no biases
    "tiny-llama": _lm_builder("LlamaConfig", num_hidden_layers=2, tie_word_embeddings=False),
    # q/k/v biases, tied embeddings
    "tiny-qwen2": _lm_builder("Qwen2Config", num_hidden_layers=2, tie_word_embeddings=True),
    # per-head RMSNorm on q and k, tied embeddings
    "tiny-qwen3": _lm_builder("Qwen3Config", num_hidden_layers=3, tie_word_embeddings=True),
    # no rotary embedding on every 4th layer (layer 3 of 4 is NoPE), tied embeddings
    "tiny-smollm3": _lm_builder("SmolLM3Config", num_hidden_layers=4, tie_word_embeddings=True,
                                no_rope_layer_interval=4),
    # fused qkv_proj / gate_up_proj, untied
    "tiny-phi3": _lm_builder("Phi3Config", num_hidden_layers=2, tie_word_embeddings=False),
    "llama-100m-shape": _build_llama_100m_shape,
    "llama-3.2-1b-shape": _build_llama_1b_shape,
    "smollm3-3b-shape": _build_smollm3_3b_shape,
}

# --- embedding models shaped like the real ones (issue 15) ----------------------------------------------
# Random, untrained models with the architecture, config spelling, tokenizer conventions and
# sentence-transformers files of three hub embedders, so converters meet the real quirks offline:
#   Qwen/Qwen3-Embedding-0.6B   decoder trunk, last-token pooling, left padding, <|endoftext|> appended,
#                               flat weight names (no "model." prefix) under architectures=Qwen3ForCausalLM
#   google/embeddinggemma-300m  bidirectional Gemma 3 (5 sliding : 1 full), mean pooling, two Dense layers
#   BAAI/bge-m3                 XLM-R large, CLS pooling, 8192 tokens, sparse_linear.pt / colbert_linear.pt
# config.json is written in the hub's spelling (transformers 4: top-level rope_theta, rope_scaling: null;
# no transformers-5 rope_parameters), which transformers 5 reads back to the same rope_parameters.
# Each tiny build has a full-shape sibling (`*-shape`, untrained, tiny tokenizer, for scale runs).

QWEN3_EMBEDDING_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}
EMBEDDINGGEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}
# sentence-transformers module type names, as the hub repos spell them in modules.json
_ST = "sentence_transformers.models."
# EmbeddingGemma's Dense layers: no bias, no activation (sentence-transformers writes the class path)
_IDENTITY = "torch.nn.modules.linear.Identity"


def _st_embedder_files(out: Path, *, pooling: str, dim: int, max_seq_length: int, prompts: dict[str, str],
                       dense: tuple[tuple[int, int], ...] = (), dense_seed: int = 0) -> None:
    """sentence-transformers files as the hub embedders ship them: Transformer, Pooling, Dense..., Normalize.

    A Dense layer is `<i>_Dense/config.json` (the hub's four keys) plus `<i>_Dense/model.safetensors`
    holding one tensor, "linear.weight" [out, in], no metadata: byte for byte what sentence-transformers
    6.2's Dense.save writes (safetensors.torch.save_model of the module; bias=False leaves `linear.weight`
    its only parameter). Its config.json would add module_input_name/module_output_name, which the hub
    files (older sentence-transformers) lack and 6.2 defaults. Weights are N(0, 1/in) from a generator
    seeded with `dense_seed`, so each layer keeps the per-element scale of its input (O(1)).
    """
    import torch
    from safetensors.torch import save_file

    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST + "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST + "Pooling"}]
    write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling == "lasttoken",
        "include_prompt": True,
    })
    gen = torch.Generator().manual_seed(dense_seed)
    for in_f, out_f in dense:
        idx = len(modules)
        path = f"{idx}_Dense"
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": _ST + "Dense"})
        write_json(out / path / "config.json",
                   {"in_features": in_f, "out_features": out_f, "bias": False, "activation_function": _IDENTITY})
        weight = torch.randn(out_f, in_f, generator=gen, dtype=torch.float32) / in_f ** 0.5
        save_file({"linear.weight": weight.contiguous()}, str(out / path / "model.safetensors"))
    idx = len(modules)
    modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": _ST + "Normalize"})
    (out / f"{idx}_Normalize").mkdir(exist_ok=True)
    write_json(out / "modules.json", modules)
    write_json(out / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    write_json(out / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer",
        "prompts": prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


def _hub_config_spelling(out: Path, **top_level) -> None:
    """Rewrite config.json as the hub checkpoints spell it (transformers 4): `rope_parameters` (a
    transformers-5 key) replaced by the given top-level keys; the rest as transformers 5 wrote it."""
    import json

    path = out / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("rope_parameters", None)
    cfg.update(top_level)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


QWEN_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _qwen3_embedding_tokenizer(model_max_length: int):
    """The tiny byte-level BPE as Qwen3-Embedding configures its tokenizer: pad <|endoftext|> on the
    left, and a post-processor that appends <|endoftext|> to every sequence (last-token pooling reads
    the hidden state of that appended token)."""
    from tokenizers import Regex, pre_tokenizers, processors
    from transformers import Qwen2Tokenizer

    tk = _lm_tokenizer().backend_tokenizer
    # Qwen's own pre-tokenizer (digits one by one), written into tokenizer.json: transformers'
    # Qwen2Tokenizer installs it when it loads, whatever the file says, while transformers.js runs the
    # file as written; with GPT-2's regex left in the file, " 12345" tokenized differently in the two
    # (found by the client check: token ids of text 42). Real Qwen3-Embedding files carry this one.
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    eot = tk.token_to_id("<|endoftext|>")
    tk.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0", pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eot)])
    return Qwen2Tokenizer(tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          unk_token=None, model_max_length=model_max_length, padding_side="left")


def _qwen3_embedding_builder(max_seq_length: int, **dims) -> Callable[[Path], None]:
    """Qwen3-Embedding: the Qwen3 trunk (Qwen3Model, no lm_head) saved under flat names, config.json
    saying architectures=["Qwen3ForCausalLM"] as the hub's does (AutoModel picks Qwen3Model from
    model_type and reads the flat names as they are)."""

    def build(out: Path) -> None:
        import torch
        from transformers import Qwen3Config, Qwen3Model

        tok = _qwen3_embedding_tokenizer(max_seq_length)
        cfg = Qwen3Config(
            **{"vocab_size": len(tok), **dims}, rms_norm_eps=1e-6, tie_word_embeddings=True,
            bos_token_id=tok.pad_token_id, eos_token_id=tok.pad_token_id,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
        torch.manual_seed(SEED)
        Qwen3Model(cfg).eval().save_pretrained(out)
        tok.save_pretrained(out)
        _hub_config_spelling(out, architectures=["Qwen3ForCausalLM"], rope_theta=1000000, rope_scaling=None)
        _st_embedder_files(out, pooling="lasttoken", dim=cfg.hidden_size, max_seq_length=max_seq_length,
                           prompts=QWEN3_EMBEDDING_PROMPTS)

    return build


def _gemma_embedding_tokenizer(model_max_length: int):
    """A SentencePiece-style Unigram with Gemma's specials (<pad> 0, <eos> 1, <bos> 2, <unk> 3), no
    dummy prefix (Gemma's add_dummy_prefix=false: the first word has no ▁), and EmbeddingGemma's
    post-processor: <bos> text <eos>. Padding right.

    Saved through the generic tokenizers class: transformers' GemmaTokenizer rebuilds the pipeline
    (BPE-style byte pieces, left padding, an extra <mask>) when constructed, so it cannot carry this one."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tk = Tokenizer(models.Unigram(_unigram_vocab(specials), unk_id=specials.index("<unk>"), byte_fallback=False))
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", specials.index("<bos>")), ("<eos>", specials.index("<eos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=model_max_length, padding_side="right")


def _embeddinggemma_builder(*, sliding_window: int, dense_dim: int, **dims) -> Callable[[Path], None]:
    """EmbeddingGemma: Gemma3TextModel with use_bidirectional_attention, layers in the 5 sliding : 1 full
    pattern, mean pooling, Dense hidden -> dense_dim -> hidden, Normalize.

    `sliding_window` is the value config.json holds (the hub's 512). With use_bidirectional_attention,
    Gemma3TextConfig turns it into sliding_window // 2 + 1 in memory (transformers 5.23 writes the
    original back on save, so it round-trips), and a sliding layer lets a token see the tokens less than
    that far away on either side: |i - j| <= sliding_window // 2, i.e. 256 each way for 512, 4 for 8.
    """

    def build(out: Path) -> None:
        import torch
        from transformers import Gemma3TextConfig, Gemma3TextModel

        tok = _gemma_embedding_tokenizer(dims["max_position_embeddings"])
        n = dims["num_hidden_layers"]
        cfg = Gemma3TextConfig(
            **{"vocab_size": len(tok), **dims}, sliding_window=sliding_window, use_bidirectional_attention=True,
            layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)],
            query_pre_attn_scalar=dims["head_dim"], hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
            attn_logit_softcapping=None, final_logit_softcapping=None,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
        torch.manual_seed(SEED)
        Gemma3TextModel(cfg).eval().save_pretrained(out)
        tok.save_pretrained(out)
        _hub_config_spelling(out, rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling=None)
        h = cfg.hidden_size
        _st_embedder_files(out, pooling="mean", dim=h, max_seq_length=dims["max_position_embeddings"],
                           prompts=EMBEDDINGGEMMA_PROMPTS, dense=((h, dense_dim), (dense_dim, h)),
                           dense_seed=SEED + 2)

    return build


def _bge_m3_builder(**dims) -> Callable[[Path], None]:
    """BGE-M3: XLM-RoBERTa (pooler included, as the hub checkpoint has it), CLS pooling + Normalize,
    8192 tokens, and the sparse and ColBERT heads as BAAI ships them: torch.save of nn.Linear state
    dicts, `sparse_linear.pt` (hidden -> 1) and `colbert_linear.pt` (hidden -> hidden).

    The trunk is seeded with SEED + 1, not SEED: tiny-xlm-roberta (SEED) has the same vocabulary and
    width, so with one seed their word embeddings would be the same tensor and a mix-up of the two
    models could pass a weight check. The heads come from SEED + 2."""

    def build(out: Path) -> None:
        import torch
        from transformers import XLMRobertaModel

        max_len = dims["max_position_embeddings"] - 2  # XLM-R positions start after the padding index
        tok = _xlmr_tokenizer(max_len)
        tok.save_pretrained(out)
        cfg = _xlmr_config(tok, **dims, layer_norm_eps=1e-5)
        torch.manual_seed(SEED + 1)
        XLMRobertaModel(cfg, add_pooling_layer=True).eval().save_pretrained(out)
        torch.manual_seed(SEED + 2)
        h = cfg.hidden_size
        torch.save(torch.nn.Linear(h, 1).state_dict(), out / "sparse_linear.pt")
        torch.save(torch.nn.Linear(h, h).state_dict(), out / "colbert_linear.pt")
        _st_embedder_files(out, pooling="cls", dim=h, max_seq_length=max_len, prompts={})

    return build


# Qwen3-Embedding-0.6B: hidden 1024, 28 layers, 16/8 heads, head_dim 128, 32768 positions
QWEN3_EMBEDDING_TINY = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=32, intermediate_size=256, max_position_embeddings=2048)
# EmbeddingGemma-300m: hidden 768 = 3 heads x head_dim 256, 1 KV head. The tiny keeps heads x head_dim = hidden
# (3 x 32 = 96; Gemma3TextConfig refuses a hidden size that is not a multiple of the head count, so not 64) and
# a window of 8 (4 tokens each way), shorter than every validation text, so the sliding layers matter.
EMBEDDINGGEMMA_TINY = dict(hidden_size=96, num_hidden_layers=6, num_attention_heads=3, num_key_value_heads=1,
                           head_dim=32, intermediate_size=128, max_position_embeddings=2048)
# BGE-M3 (XLM-RoBERTa large): hidden 1024, 24 layers, 16 heads, 8194 positions
BGE_M3_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                   max_position_embeddings=8194)

EMB_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-qwen3-embedding": _qwen3_embedding_builder(512, **QWEN3_EMBEDDING_TINY),
    "tiny-embeddinggemma": _embeddinggemma_builder(sliding_window=8, dense_dim=4 * 96, **EMBEDDINGGEMMA_TINY),
    "tiny-bge-m3": _bge_m3_builder(**BGE_M3_TINY),
    # full shapes, untrained, tiny tokenizers (their ids are a subset of every vocabulary here): scale runs
    "qwen3-embedding-0.6b-shape": _qwen3_embedding_builder(
        32768, vocab_size=151669, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=3072, max_position_embeddings=32768),
    "embeddinggemma-300m-shape": _embeddinggemma_builder(
        sliding_window=512, dense_dim=3072, vocab_size=262144, hidden_size=768, num_hidden_layers=24,
        num_attention_heads=3, num_key_value_heads=1, head_dim=256, intermediate_size=1152,
        max_position_embeddings=2048),
    "bge-m3-shape": _bge_m3_builder(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                    intermediate_size=4096, max_position_embeddings=8194),
}


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-bert-arctic": _build_bert_arctic,
    "tiny-xlm-roberta": _build_xlm_roberta,
    **LM_BUILDERS,
    **EMB_BUILDERS,
}


def materialize(name: str) -> Path:
    """Return the cached model directory, building it (atomically) on first use."""
    version = (LM_BUILDER_VERSION if name in LM_BUILDERS else EMB_BUILDER_VERSION if name in EMB_BUILDERS
               else BUILDER_VERSION)
    target = cache_root() / "models" / f"{name}-v{version}"
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
