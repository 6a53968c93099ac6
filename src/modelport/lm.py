"""Decoder-LM validation spine: fixed prompts, the PyTorch golden, and the metrics every target shares.

A decoder is judged token by token, the way it is used: a prefill over the prompt, then one cached
step per generated token. The golden (computed once with PyTorch fp32 and stored inside the
artifact, like the encoders' golden) holds, per prompt, the exact token ids, the full prefill
logits, 16 greedy tokens and the cached-decode logits at every step. A target only provides an
`LMRunner` (prefill + one cached decode step); `evaluate_lm` drives it and measures:

  prefill_max_abs     runner prefill logits vs golden, every prompt position
  step_max_abs        teacher-forced cached decode (fed the golden greedy tokens) vs golden steps
  greedy              the runner's own greedy tokens vs golden (EOS masked, so always STEPS tokens):
                      reported, not gated (after one tie decided the other way the rest of the
                      sequence is a different text; see top1 below for the gated form)
  kv_vs_full_max_abs  the runner's cached decode vs its own prefill over the whole sequence: a
                      broken cache (wrong positions, a dropped layer's KV) shows here even when
                      the golden comparison is loose (fp16, 4-bit)
  top1 / KL           agreement of the argmax and mean KL(golden || runner) over the step rows
  top1 misses         teacher-forced steps whose argmax differs from the golden's, each with the
                      golden's top-1/top-2 gap there: the gated token check is tie-aware
                      (thresholds.check_lm counts a miss only where that gap exceeds 2 x the
                      precision's step limit, the smallest gap a within-limit error cannot swap)

Greedy decoding masks EOS so every prompt yields exactly STEPS tokens (= transformers'
`min_new_tokens`): a variant that would stop early is still compared on the full length.

This module imports numpy only; torch and transformers are imported inside `compute_golden`, so
validators without torch (the validator image, MLX, Core ML) can load goldens and evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .fsutil import read_json, write_json
from .recipes import eos_list  # noqa: F401  (re-exported: lm.eos_list is part of the decoder spine)

GOLDEN_VERSION = "1"
STEPS = 16
REFERENCE_DIR = "reference"


@dataclass(frozen=True)
class Prompt:
    """One validation prompt. `messages` set -> rendered with the model's chat template
    (add_generation_prompt=True) and tokenized without adding special tokens again."""

    name: str
    text: str = ""
    messages: tuple[tuple[str, str], ...] = ()

    @property
    def chat(self) -> bool:
        return bool(self.messages)


# Short, ordinary English: covered by any BPE vocabulary (the tiny models' tokenizer is trained on
# modelport's own corpus, which these sentences are drawn from), several lengths, punctuation and
# digits, plus one chat turn so the chat template travels and is exercised.
PROMPTS: tuple[Prompt, ...] = (
    Prompt("plain", text="The model converts each sentence into a list of numbers"),
    Prompt("question", text="Why does the small device run the model so slowly?"),
    Prompt("digits", text="In 2024, the 3 runtimes agreed on 128 of the 130 tokens, and"),
    Prompt("short", text="Once upon a time"),
    Prompt("chat", messages=(("user", "What does the converter check before it writes a file?"),)),
)


def golden_name(variant: str | None = None) -> str:
    """`lm_golden` for the fp32 golden; `lm_golden_<variant>` for a quantized variant's
    dequantized-weights golden."""
    return "lm_golden" if not variant else f"lm_golden_{variant}"


@dataclass
class LMGolden:
    """Prompts, token ids and PyTorch logits; stored as reference/<name>.npz + reference/<name>.json."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def prompts(self) -> list[dict[str, Any]]:
        return self.meta["prompts"]

    @property
    def prompt_names(self) -> list[str]:
        return [p["name"] for p in self.meta["prompts"]]

    @property
    def steps(self) -> int:
        return int(self.meta["steps"])

    @property
    def eos_ids(self) -> list[int]:
        return eos_list(self.meta.get("eos_token_id"))

    def input_ids(self, prompt: str) -> np.ndarray:
        return self.arrays[f"{prompt}/input_ids"]

    def prefill_logits(self, prompt: str) -> np.ndarray:
        return self.arrays[f"{prompt}/prefill_logits"]

    def greedy_tokens(self, prompt: str) -> np.ndarray:
        return self.arrays[f"{prompt}/greedy_tokens"]

    def step_logits(self, prompt: str) -> np.ndarray:
        return self.arrays[f"{prompt}/step_logits"]

    def save(self, root: Path, name: str = "lm_golden") -> None:
        d = Path(root) / REFERENCE_DIR
        d.mkdir(parents=True, exist_ok=True)
        # np.savez writes zip entries with a fixed timestamp: byte-stable for the manifest hashes.
        with open(d / f"{name}.npz", "wb") as f:
            np.savez_compressed(f, **self.arrays)
        write_json(d / f"{name}.json", self.meta)

    @classmethod
    def load(cls, root: Path, name: str = "lm_golden") -> "LMGolden":
        d = Path(root) / REFERENCE_DIR
        with np.load(d / f"{name}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        return cls(meta=read_json(d / f"{name}.json"), arrays=arrays)

    @classmethod
    def exists(cls, root: Path, name: str = "lm_golden") -> bool:
        return (Path(root) / REFERENCE_DIR / f"{name}.npz").is_file()


def greedy_pick(logits: np.ndarray, eos_ids: list[int]) -> int:
    """argmax with EOS masked (the first index on ties, like torch.argmax and JS argmax)."""
    row = np.array(logits, dtype=np.float32, copy=True)
    if eos_ids:
        row[eos_ids] = -np.inf
    return int(np.argmax(row))


def top2_gap(logits: np.ndarray, eos_ids: list[int]) -> float:
    """Largest minus second-largest logit of a row, EOS masked (as greedy_pick sees the row)."""
    row = np.array(logits, dtype=np.float64, copy=True)
    if eos_ids:
        row[eos_ids] = -np.inf
    top = np.partition(row, -2)[-2:]
    return float(top[1] - top[0])


def golden_logit_scale(golden: "LMGolden") -> float:
    """max |logit| over the golden's prefill and step rows (relative gates scale with it)."""
    return max(max(float(np.abs(golden.prefill_logits(n)).max()), float(np.abs(golden.step_logits(n)).max()))
               for n in golden.prompt_names)


class LMRunner(Protocol):
    """What a target provides to run one decoder variant.

    `prefill` starts a fresh sequence (it must not reuse state from an earlier call: evaluate_lm
    runs several passes per prompt); `decode` feeds one token after the tokens already in `state`
    and returns the logits at that position plus the new state.
    """

    # the longest sequence the runner accepts (a stateful Core ML package's KV length); None: unbounded
    context: int | None

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        """[1, T] int64 -> (logits [T, V] float32, state)."""
        ...

    def decode(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        """One cached step -> (logits [V] float32, new state)."""
        ...


# ---------------------------------------------------------------------------------------------
# The golden (PyTorch fp32)


def render_prompt(tokenizer, prompt: Prompt) -> tuple[str, bool, bool]:
    """(text, chat, add_special_tokens) as a client reproduces it.

    A chat prompt is rendered with the tokenizer's chat template; the template writes its own
    special tokens, so it is tokenized with add_special_tokens=False (transformers.js does the
    same for chat input). A model without a chat template gets the user content as plain text,
    recorded as chat=False.
    """
    if not prompt.chat:
        return prompt.text, False, True
    messages = [{"role": r, "content": c} for r, c in prompt.messages]
    if not getattr(tokenizer, "chat_template", None):
        return "\n".join(c for _, c in prompt.messages), False, True
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, True, False


def _load_causal_lm(model_dir: Path, state_dict: dict[str, np.ndarray] | None, dtype=None,
                    trust_remote_code: bool = False):
    import torch

    from .torch_model import load_causal_lm

    model = load_causal_lm(model_dir, trust_remote_code=trust_remote_code)
    if state_dict:
        replace_weights(model, state_dict, torch.float32)
    if dtype == torch.float64:
        float64_compute(model)
        return model
    return model.to(dtype) if dtype is not None else model


def float64_compute(model) -> None:
    """Compute in float64 while storing float32: every parameter is read as float64 when used (one
    layer's copy at a time), floating buffers (rotary frequencies) become float64.

    Same values as model.to(torch.float64) (the float32 weights widen exactly, every op then runs in
    float64: the goldens are bitwise equal, checked on tiny-smollm3 q4), at half the memory: a 3B
    model's float64 copy (24.6 GB) does not fit this 24 GB machine, its float32 weights (12.3 GB) do.
    """
    import torch
    from torch.nn.utils import parametrize

    class Float64(torch.nn.Module):
        def forward(self, x):
            return x.double()

    widen = Float64()
    for module in list(model.modules()):
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_floating_point():
                parametrize.register_parametrization(module, name, widen, unsafe=True)
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_floating_point():
                module._buffers[name] = buf.double()


def replace_weights(model, state_dict: dict[str, np.ndarray], dtype=None) -> None:
    """Move `state_dict`'s arrays into the model (as `dtype`), one parameter at a time.

    The dict is consumed: each array is dropped once its parameter is replaced, so at no point do
    the checkpoint's weights, the replacement arrays and the new (float64: twice the size) weights
    all exist at once. At 1.2B parameters that is the difference between ~16 GB and > 24 GB (the
    MLX q4 golden of the 1B scale model was OOM-killed before).
    Each replaced parameter gets its own new tensor: with tied embeddings, replacing
    `lm_head.weight` by its dequantized 4-bit value must not also change the (unquantized)
    embedding table it was tied to, because the quantized artifact keeps the two apart.
    The value goes through float32 first (what the artifact stores), then to `dtype`.
    """
    import torch

    dtype = dtype or torch.float32
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = sorted(set(state_dict) - set(params))
    if unknown:
        raise KeyError(f"replacement weights not in the PyTorch model: {unknown[:5]}")
    for name in list(state_dict):
        value = state_dict.pop(name)
        old = params.pop(name)
        if tuple(old.shape) != tuple(value.shape):
            raise ValueError(f"{name}: replacement shape {tuple(value.shape)} != model {tuple(old.shape)}")
        del old
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        tensor = tensor.clone() if dtype == torch.float32 else tensor.to(dtype)
        del value
        setattr(owner, attr, torch.nn.Parameter(tensor, requires_grad=False))


def compute_golden(model_dir: Path, state_dict: dict[str, np.ndarray] | None = None,
                   progress: Callable[[], Any] | None = None, prompts: tuple[Prompt, ...] = PROMPTS,
                   trust_remote_code: bool = False,
                   steps: int = STEPS) -> LMGolden:
    """Run the PyTorch causal LM (eager attention) on the fixed prompts.

    The main golden runs in float32: it is what users compare against (fp32 PyTorch).
    With `state_dict` (names as in the PyTorch model, e.g. the dequantized weights of a 4-bit
    variant; the dict is consumed to bound peak memory), those weights replace the checkpoint's: the result is what the artifact's weights
    compute, so the runtime's own error is separated from the quantization error. That golden runs
    in float64: its gate (1e-5) measures a float32 runtime's rounding, and a float32 reference adds
    its own, in either direction (measured: Core ML's interpreter on SmolLM3 w4 was 5.1e-6 from the
    float64 result and PyTorch fp32 6.1e-6 the other way, 1.05e-5 apart). The prompts and token ids
    are the same as the main golden's.
    """
    import torch
    import transformers
    from transformers import AutoTokenizer, DynamicCache

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.float64 if state_dict else torch.float32
    weights_replaced = bool(state_dict)
    model = _load_causal_lm(model_dir, state_dict, dtype, trust_remote_code)  # consumes state_dict (peak memory)
    cfg = model.config
    eos = eos_list(model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None
                   else cfg.eos_token_id)
    arrays: dict[str, np.ndarray] = {}
    metas = []
    for prompt in prompts:
        text, chat, add_special = render_prompt(tokenizer, prompt)
        ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        x = torch.tensor([ids], dtype=torch.long)
        with torch.no_grad():
            cache = DynamicCache(config=cfg)
            out = model(input_ids=x, past_key_values=cache, use_cache=True)
            prefill = out.logits[0].to(dtype).numpy()
            rows = [prefill[-1]]
            tokens: list[int] = []
            for i in range(steps):
                tokens.append(greedy_pick(rows[-1], eos))
                if i == steps - 1:
                    break
                out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values,
                            use_cache=True, position_ids=torch.tensor([[len(ids) + i]]))
                rows.append(out.logits[0, -1].to(dtype).numpy())
        arrays[f"{prompt.name}/input_ids"] = np.asarray([ids], dtype=np.int64)
        arrays[f"{prompt.name}/prefill_logits"] = prefill.astype(np.float32)
        arrays[f"{prompt.name}/greedy_tokens"] = np.asarray(tokens, dtype=np.int64)
        arrays[f"{prompt.name}/step_logits"] = np.stack(rows).astype(np.float32)
        srt = np.sort(np.stack(rows), axis=-1)
        metas.append({"name": prompt.name, "text": text, "chat": chat, "add_special_tokens": add_special,
                      "messages": [{"role": r, "content": c} for r, c in prompt.messages] if chat else None,
                      "length": len(ids), "completion": tokenizer.decode(tokens),
                      # top1 - top2 logit gap per step: tiny gaps are where 4-bit flips a token
                      "min_top2_gap": float((srt[:, -1] - srt[:, -2]).min())})
        if progress:
            progress()
    meta = {
        "golden_version": GOLDEN_VERSION,
        "model_type": cfg.model_type,
        "vocab_size": int(prefill.shape[-1]),
        "eos_token_id": eos,
        "steps": steps,
        "prompts": metas,
        "weights": "replaced (dequantized)" if weights_replaced else "checkpoint",
        "runtime": {"torch": torch.__version__, "transformers": transformers.__version__,
                    "attn_implementation": "eager", "dtype": str(dtype).removeprefix("torch.")},
        # no run time here: the golden is part of the artifact, which must rebuild byte for byte
    }
    return LMGolden(meta=meta, arrays=arrays)


# ---------------------------------------------------------------------------------------------
# Metrics


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl_rows(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(got)) per row, in nats."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


@dataclass
class PromptLM:
    """One prompt's figures."""

    name: str
    length: int
    prefill_max_abs: float
    step_max_abs: float
    kv_vs_full_max_abs: float
    greedy_equal: int  # positions where the runner's greedy token equals the golden's
    greedy_prefix: int  # length of the common prefix
    top1_equal: int  # teacher-forced steps whose argmax equals the golden argmax
    kl_mean: float
    tokens: list[int]
    # teacher-forced steps whose argmax differs from the golden's: [step, golden top-1/top-2 gap there]
    top1_misses: list[list[float]] = field(default_factory=list)
    min_top2_gap: float = float("inf")  # the golden's smallest top-1/top-2 gap over the steps (EOS masked)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LMMetrics:
    """Aggregate over the prompts (max of max-abs figures, sums of token counts)."""

    prefill_max_abs: float
    step_max_abs: float
    kv_vs_full_max_abs: float
    greedy_equal: int
    greedy_prefix_total: int
    greedy_total: int
    greedy_exact_prompts: int
    top1_equal: int
    top1_total: int
    kl_mean: float
    prompts: list[PromptLM] = field(default_factory=list)
    # max |logit| of the golden (prefill and step rows): float16 spacing grows with it, so reduced
    # precision gates are stated relative to it (thresholds.LMThreshold.relative)
    logit_scale: float = 0.0

    @property
    def greedy_agreement(self) -> float:
        return self.greedy_equal / max(self.greedy_total, 1)

    @property
    def top1_agreement(self) -> float:
        return self.top1_equal / max(self.top1_total, 1)

    def decisive_misses(self, bound: float) -> list[tuple[str, int, float]]:
        """(prompt, step, gap) of the teacher-forced top-1 misses where the golden's top-1/top-2 gap
        exceeds `bound`: misses no logit error within bound / 2 can cause."""
        return [(p.name, int(step), float(gap)) for p in self.prompts for step, gap in p.top1_misses if gap > bound]

    def to_json(self) -> dict[str, Any]:
        return {
            "prefill_max_abs": self.prefill_max_abs,
            "step_max_abs": self.step_max_abs,
            "kv_vs_full_max_abs": self.kv_vs_full_max_abs,
            "greedy_agreement": self.greedy_agreement,
            "greedy_equal": self.greedy_equal,
            "greedy_total": self.greedy_total,
            "greedy_exact_prompts": self.greedy_exact_prompts,
            "greedy_prefix_total": self.greedy_prefix_total,
            "top1_agreement": self.top1_agreement,
            "top1_misses": sum(len(p.top1_misses) for p in self.prompts),
            "min_top2_gap": min((p.min_top2_gap for p in self.prompts), default=None),
            "kl_mean": self.kl_mean,
            "logit_scale": self.logit_scale,
            "prompts": [p.to_json() for p in self.prompts],
        }


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _logits_2d(logits: np.ndarray) -> np.ndarray:
    a = np.asarray(logits, dtype=np.float32)
    return a.reshape(-1, a.shape[-1])


def runner_greedy(runner: LMRunner, input_ids: np.ndarray, steps: int, eos_ids: list[int],
                  forced: np.ndarray | None = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Prefill + cached decode. Returns (tokens, step rows [steps, V], prefill logits [T, V]).

    Row i of the step rows is the logits after the prompt + tokens[:i] (row 0 = last prefill row).
    With `forced`, the fed tokens are `forced` (teacher forcing) and `tokens` is still the runner's
    own argmax at each row.
    """
    prefill, state = runner.prefill(np.asarray(input_ids, dtype=np.int64).reshape(1, -1))
    prefill = _logits_2d(prefill)
    rows = [prefill[-1]]
    tokens: list[int] = []
    for i in range(steps):
        tokens.append(greedy_pick(rows[-1], eos_ids))
        if i == steps - 1:
            break
        feed = int(forced[i]) if forced is not None else tokens[-1]
        logits, state = runner.decode(state, feed)
        rows.append(_logits_2d(logits)[-1])
    return tokens, np.stack(rows), prefill


def evaluate_lm(golden: LMGolden, runner: LMRunner) -> LMMetrics:
    """Drive `runner` over every golden prompt and compare with the golden (see module docstring)."""
    eos = golden.eos_ids
    steps = golden.steps
    per: list[PromptLM] = []
    for name in golden.prompt_names:
        ids = golden.input_ids(name)
        ref_tokens = golden.greedy_tokens(name)
        ref_rows = golden.step_logits(name)
        # 1. teacher-forced: prefill + cached steps fed the golden tokens
        tf_tokens, tf_rows, prefill = runner_greedy(runner, ids, steps, eos, forced=ref_tokens)
        # 2. the runner's own greedy decode
        own, own_rows, _ = runner_greedy(runner, ids, steps, eos)
        # 3. its cached decode against its own prefill over prompt + own tokens (no cache)
        seq = np.concatenate([ids[0], np.asarray(own[:-1], dtype=np.int64)])[None]
        full, _ = runner.prefill(seq)
        full = _logits_2d(full)[ids.shape[1] - 1:]
        ref_top1 = np.array([greedy_pick(r, eos) for r in ref_rows])
        gaps = [top2_gap(r, eos) for r in ref_rows]
        equal = [int(a == b) for a, b in zip(own, ref_tokens.tolist())]
        prefix = next((i for i, e in enumerate(equal) if not e), len(equal))
        per.append(PromptLM(
            name=name,
            length=int(ids.shape[1]),
            prefill_max_abs=_max_abs(prefill, golden.prefill_logits(name)),
            step_max_abs=_max_abs(tf_rows, ref_rows),
            kv_vs_full_max_abs=_max_abs(own_rows, full),
            greedy_equal=int(sum(equal)),
            greedy_prefix=int(prefix),
            top1_equal=int((np.asarray(tf_tokens) == ref_top1).sum()),
            kl_mean=float(kl_rows(ref_rows, tf_rows).mean()),
            tokens=[int(t) for t in own],
            top1_misses=[[i, gaps[i]] for i, (a, b) in enumerate(zip(tf_tokens, ref_top1.tolist())) if a != b],
            min_top2_gap=min(gaps),
        ))
    return LMMetrics(
        prefill_max_abs=max(p.prefill_max_abs for p in per),
        step_max_abs=max(p.step_max_abs for p in per),
        kv_vs_full_max_abs=max(p.kv_vs_full_max_abs for p in per),
        greedy_equal=sum(p.greedy_equal for p in per),
        greedy_prefix_total=sum(p.greedy_prefix for p in per),
        greedy_total=steps * len(per),
        greedy_exact_prompts=sum(p.greedy_equal == steps for p in per),
        top1_equal=sum(p.top1_equal for p in per),
        top1_total=steps * len(per),
        kl_mean=float(np.mean([p.kl_mean for p in per])),
        prompts=per,
        logit_scale=golden_logit_scale(golden),
    )
