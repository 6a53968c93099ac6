"""The fixed, versioned validation set every artifact is checked on.

Why these inputs: short and empty strings catch pooling over [CLS]/[SEP] only; long texts reach
and exceed the recipe's max length (truncation must keep the final special token); non-Latin
scripts, accents and emoji exercise the tokenizer's normalizer and byte fallback; padded batches
catch mask handling. The corpus + queries give a retrieval check (top-5 agreement), which is what
users of embedding models actually care about when a quantized variant drifts.

Change the texts only together with `VERSION`: golden files record the version they were made from.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "2026.11-1"

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
    _LONG * 12,  # longer than any supported max length: exercises truncation to exactly max length
)

TEXTS: tuple[str, ...] = CORPUS + QUERIES + EDGE
CORPUS_IDS: tuple[int, ...] = tuple(range(len(CORPUS)))
QUERY_IDS: tuple[int, ...] = tuple(range(len(CORPUS), len(CORPUS) + len(QUERIES)))


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
