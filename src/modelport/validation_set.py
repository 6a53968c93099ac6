"""The fixed, versioned validation set every artifact is checked on.

Why these inputs: short and empty strings catch pooling over [CLS]/[SEP] only; a long text fills
the recipe's max length exactly (the longest shape the artifact accepts); non-Latin scripts,
accents and emoji exercise the tokenizer's normalizer and byte fallback; padded batches catch mask
handling. The corpus + queries give a retrieval check (top-5 agreement), which is what users of
embedding models actually care about when a quantized variant drifts.

The golden runs `texts(tokenizer, max_length)`, not TEXTS as written: every text is kept within
what every client tokenizes alike. A text longer than the max length is cut (at a token boundary
that re-tokenizes to the same ids) to the max length minus the special tokens, so no tokenizer
truncates it: transformers.js truncates *after* adding special tokens (the ids lose their final
[SEP]) where Hugging Face tokenizers keep it. Trailing whitespace is stripped: transformers.js emits
one more token (a trailing `▁`) than Hugging Face tokenizers for Metaspace (XLM-R) tokenizers. Both
are client behaviours, not model errors (docs/validation.md, "Real clients"); the clients' checks
still recognise and report them on goldens made before this version.

TEXTS itself never changes without a reason: the tiny models' tokenizers are trained on it
(tiny.py). Change the texts or `texts()` only together with `VERSION`: golden files record the
version they were made from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VERSION = "2026.12-1"  # 2026.12-1: texts() caps over-long texts and strips trailing whitespace

_LONG = (
    "The quick brown fox jumps over the lazy dog while the committee deliberates on the quarterly "
    "budget, the weather forecast predicts heavy rain across the northern provinces, and engineers "
    "continue to debug a flaky integration test in the continuous integration pipeline. "
)

# Retrieval corpus: three sentences on each of eight topics, so each query has clear neighbours.
CORPUS: tuple[str, ...] = (
    "A man is eating a bowl of spicy noodles.",
    "The chef prepared a fresh salad with tomatoes and basil.",
    "We ordered pizza and garlic bread for dinner.",
    "The striker scored twice in the second half of the match.",
    "She trains every morning for the city marathon.",
    "The tennis final went to five sets.",
    "The new laptop has a faster processor and more memory.",
    "Our web app now runs the neural network on the GPU with WebGPU.",
    "He fixed the bug in the database migration script.",
    "Heavy rain and strong winds are expected tomorrow.",
    "It was a sunny, warm afternoon at the beach.",
    "Snow closed the mountain pass for three days.",
    "The train to Lyon leaves from platform nine.",
    "We booked a small hotel near the old harbour.",
    "Her flight was delayed because of fog at the airport.",
    "A cat is sleeping on the warm windowsill.",
    "The dog chased the ball across the park.",
    "Two horses were grazing in the green field.",
    "The central bank raised interest rates again.",
    "Stock prices fell sharply after the earnings report.",
    "He opened a savings account for his daughter.",
    "The orchestra played Beethoven's ninth symphony.",
    "She is learning to play jazz piano.",
    "The band released a new album last Friday.",
)

QUERIES: tuple[str, ...] = (
    "What did they have for dinner?",
    "Who won the football game?",
    "How do I run a model in the browser?",
    "Will it rain this weekend?",
    "When does the next train depart?",
    "My pet likes to nap in the sun.",
    "Why did the markets drop?",
    "Which concert should we go to?",
)

# Edge cases: tokenizer and length coverage.
EDGE: tuple[str, ...] = (
    "",
    "Hi",
    "This is a test.",
    "Le chat est assis sur le tapis et regarde la pluie tomber.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El aprendizaje automático está transformando la industria.",
    "机器学习正在改变世界。",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "Emoji test 🚀🔥 with numbers 12345 and symbols #$%&*!",
    "UPPER CASE and MiXeD cAsE text.",
    "naïve café résumé coöperate façade",
    _LONG * 2,
    _LONG * 12,  # longer than most max lengths: texts() cuts it to fill the max length exactly
)

TEXTS: tuple[str, ...] = CORPUS + QUERIES + EDGE
CORPUS_IDS: tuple[int, ...] = tuple(range(len(CORPUS)))
QUERY_IDS: tuple[int, ...] = tuple(range(len(CORPUS), len(CORPUS) + len(QUERIES)))


def fit(text: str, tokenizer: Any, max_length: int) -> str:
    """`text` without trailing whitespace, cut so that it tokenizes to at most `max_length` ids with the
    special tokens added, without truncation; the cut ids are a prefix of the whole text's ids.

    The cut is at the end of a token; it backs off token by token until the cut text tokenizes to
    exactly that prefix (a WordPiece cut inside a word would re-tokenize differently), so Python and
    a client that tokenizes the same string get the same ids. A tokenizer without offsets (slow
    tokenizers) leaves an over-long text as it is.
    """
    text = text.rstrip()
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    # measuring an over-long text is the point here: not transformers' "longer than the maximum" warning
    warned = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warned, dict):
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizer: no offsets
        return text
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if len(ids) <= budget:
        return text
    for n in range(budget, 0, -1):
        cut = text[: offsets[n - 1][1]].rstrip()
        if list(tokenizer(cut, add_special_tokens=False)["input_ids"]) == ids[:n]:
            return cut
    raise ValueError(f"cannot cut a validation text to {budget} tokens without changing its ids")


def texts(tokenizer: Any, max_length: int) -> tuple[str, ...]:
    """TEXTS as a model's golden runs them: each `fit` to the tokenizer and max length (see the module doc)."""
    return tuple(fit(t, tokenizer, max_length) for t in TEXTS)


@dataclass(frozen=True)
class Case:
    """One forward pass: a single text (no padding) or a padded batch of texts."""

    name: str
    text_ids: tuple[int, ...]

    @property
    def batched(self) -> bool:
        return len(self.text_ids) > 1


def _edge(i: int) -> int:
    return len(CORPUS) + len(QUERIES) + i


def cases() -> list[Case]:
    """Every text alone, then padded batches that mix very different lengths."""
    singles = [Case(f"text{i:02d}", (i,)) for i in range(len(TEXTS))]
    batches = [
        Case("batch-mixed", (0, _edge(1), _edge(13), _edge(6), 25)),
        Case("batch-with-empty-and-max", (_edge(0), _edge(14), 3, _edge(10))),
        Case("batch-queries", tuple(QUERY_IDS)),
    ]
    return singles + batches
