"""Pass/fail thresholds per precision, shared by every target (ONNX, Core ML, MLX, MLC).

This is the one table; docs/validation.md reproduces it. fp32 must reproduce PyTorch to 1e-5 max abs on
every non-padding token and on the pooled embedding (exporters measure ~3e-6 here; PyTorch itself
moves 2.5e-6 between attention kernels, so 1e-6 would be noise, 1e-5 is not). Reduced precisions
are judged the way their users judge them: cosine of the sentence embedding against fp32 PyTorch
and agreement of top-5 retrieval on the validation corpus.

How the reduced-precision numbers were set: measured on all-MiniLM-L6-v2 (docs/measurements.md has the
figures and the command), then set below the measurement with a margin that still fails a
clearly broken artifact (a dropped LayerNorm or a mis-scaled block costs far more than the margin).

`batch_invariant=False` marks formats whose result depends on the other rows of a batch
(dynamic int8 quantizes activations with one scale per tensor, so padding rows change real rows):
those are validated one input at a time, and batches are reported but not gated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    max_abs: float | None = None  # tokens (non-padding) and pooled, vs PyTorch fp32
    cos_min: float | None = None  # worst single text
    cos_mean: float | None = None
    top5_mean: float | None = None  # mean top-5 retrieval overlap over the queries
    batch_invariant: bool = True

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


THRESHOLDS: dict[str, Threshold] = {
    "fp32": Threshold(max_abs=1e-5),
    "fp16": Threshold(cos_min=0.9999, cos_mean=0.99995, top5_mean=0.95),
    "q8": Threshold(cos_min=0.97, cos_mean=0.99, top5_mean=0.85, batch_invariant=False),
    "uint8": Threshold(cos_min=0.97, cos_mean=0.99, top5_mean=0.85, batch_invariant=False),
    # Plain round-to-nearest 4-bit (block 32, symmetric) is what transformers.js users get; it is
    # measured at 0.910 min / 0.967 mean on MiniLM. Better 4-bit (GPTQ, mixed 8-bit): the searched q4mix below.
    # MLC's q4f32_1 / q4f16_1 store the same codes (targets/mlc/quantize.py) with the embedding tables
    # quantized too (mlc-llm's default): 0.906 min / 0.963 mean on MiniLM, so they share these gates
    # (mlc-llm's own 15-level codes measure 0.869 / 0.950 and would not).
    "q4": Threshold(cos_min=0.88, cos_mean=0.955, top5_mean=0.75),
    "q4f16": Threshold(cos_min=0.88, cos_mean=0.955, top5_mean=0.75),
    # Weight-only quantization (activations stay float, so batches are gated like fp32): MLX
    # group-wise affine (group 64, Linear + word embeddings), Core ML 8-bit linear. Measured on
    # MiniLM with MLX: w8 0.99955 min / 0.99985 mean / top-5 1.00; w4 0.898 / 0.963 / 0.90 (like
    # ONNX q4, so the same gate).
    "w8": Threshold(cos_min=0.999, cos_mean=0.9995, top5_mean=0.95),
    "w4": Threshold(cos_min=0.88, cos_mean=0.955, top5_mean=0.75),
    # Core ML w8 (int8, symmetric, one fp16 scale per block of 32 weights, Linear + embedding tables,
    # fp16 compute) measures 0.99956 min / 0.99985 mean / top-5 1.00 on MiniLM, so it shares the w8
    # gate; one scale per output channel (the iOS16 format) measured 0.9963 min and is not used.
    # Core ML palettization (k-means look-up table per tensor, the iOS16 format, Linear + embedding
    # tables, fp16 compute), measured on MiniLM with the fixed [1, 128] shape:
    #   pal6: 0.990 min / 0.9963 mean / top-5 0.97;  pal4: 0.895 min / 0.946 mean / top-5 0.93.
    # 4-bit palettes lose more than ONNX q4 (0.910 / 0.967): one 16-entry table per tensor cannot
    # follow per-channel ranges. Grouped tables (iOS18, 16-32 channels each) did better on three
    # sample texts (0.907-0.958 against 0.857-0.946) but took 3-5x longer to build; on MiniLM's 40 dev texts
    # (quantize-search, 2026-12-05) they barely help: mean 0.956 against 0.952 (docs/quantization.md).
    "pal6": Threshold(cos_min=0.98, cos_mean=0.993, top5_mean=0.90),
    "pal4": Threshold(cos_min=0.87, cos_mean=0.93, top5_mean=0.80),
    # Searched 4-bit variants (`modelport quantize-search`: ONNX q4mix / q4mix-wasm, MLX q4mix, Core ML
    # palmix) are gated at the goal they were searched for, not at the round-to-nearest gates above:
    # the point of the search is a 4-bit file that ranks like the original. The search ranks on the
    # dev texts (quant/texts.py); this gate is checked on the validation set, which it never saw.
    "q4mix": Threshold(cos_min=0.98, cos_mean=0.99, top5_mean=0.95),
}

# A runtime running a quantized format must match PyTorch running the same dequantized weights to
# float32 precision (the fp32 gate): what is left is kernel rounding, not quantization. Measured:
# MLX q8 6.2e-6, q4 3.3e-6 max abs on MiniLM tokens.
DEQUANT_RUNTIME_MAX_ABS = 1e-5


def check(variant_class: str, m) -> list[str]:
    """Failed conditions as readable strings; empty list means pass."""
    t = THRESHOLDS[variant_class]
    failures = []

    def worst(attr: str, reverse: bool) -> str:
        key = {"cos": lambda c: min(c.cosines), "tok": lambda c: c.tokens_max_abs, "pool": lambda c: c.pooled_max_abs}[attr]
        cases = sorted(m.cases, key=key, reverse=reverse)[:3]
        return ", ".join(f"{c.case}={key(c):.3g}" for c in cases)

    if t.max_abs is not None:
        if m.tokens_max_abs > t.max_abs:
            failures.append(f"token max abs {m.tokens_max_abs:.3g} > {t.max_abs:g} (worst: {worst('tok', True)})")
        if m.pooled_max_abs > t.max_abs:
            failures.append(f"pooled max abs {m.pooled_max_abs:.3g} > {t.max_abs:g} (worst: {worst('pool', True)})")
    if t.cos_min is not None and m.cos_min < t.cos_min:
        failures.append(f"cosine min {m.cos_min:.6f} < {t.cos_min} (worst: {worst('cos', False)})")
    if t.cos_mean is not None and m.cos_mean < t.cos_mean:
        failures.append(f"cosine mean {m.cos_mean:.6f} < {t.cos_mean}")
    if t.top5_mean is not None and m.top5_mean < t.top5_mean:
        failures.append(f"top-5 retrieval agreement {m.top5_mean:.3f} < {t.top5_mean}")
    return failures


# ---------------------------------------------------------------------------------------------
# Decoder LMs (lm.py): judged token by token on the fixed prompts (5 prompts x 16 greedy steps).


@dataclass(frozen=True)
class LMThreshold:
    """Gates for one decoder precision.

    `reference` says which golden the gated figures are measured against: "fp32" (the checkpoint's
    PyTorch golden) or "dequantized" (PyTorch running the weights the quantized file stores,
    `reference/lm_golden_<variant>`): 4-bit rounding moves logits by ~1 on tiny models and flips
    tokens whose top-2 gap is 6e-4, which says nothing about the conversion; the runtime must still
    reproduce PyTorch on the same weights. Against fp32 the quantized variants' top-1 agreement,
    KL and greedy agreement are reported, not gated.
    """

    reference: str  # "fp32" | "dequantized"
    prefill_max_abs: float  # every prompt position's logits
    step_max_abs: float  # teacher-forced cached decode, every step
    kv_vs_full_max_abs: float  # the runtime's cached decode vs its own full recompute
    # Tie-aware token gate: a teacher-forced step whose argmax differs from the golden's fails only if
    # the golden's top-1/top-2 gap there exceeds tie_margin x the step limit L. Why 2: if every logit of
    # the row is within L of the golden's, z'_top - z'_j >= (z_top - z_j) - 2L, so no token j whose gap
    # exceeds 2L can overtake the golden's argmax; a miss at a larger gap proves the row left the
    # precision's bound, a miss at a smaller one is a near-tie that the precision's own rounding may
    # decide either way. This replaced "all 80 free-running greedy tokens equal": one near-tie decided
    # the other way changes the rest of the sequence, and an honest fp16 artifact failed on it (issue 16:
    # a tiny Llama trained for fewer steps than the project's gave MLX f16 77/80 greedy tokens with every
    # logit inside the fp16 gate; Llamas trained 10 to 150 steps, seeds 1-4, gave 80/80 here, so the rule
    # is proven on constructed near-ties in tests/unit/test_kld.py and tests/test_kld_gates.py). Free-running greedy
    # agreement is still measured and reported. Within the max-abs gates this check cannot fail (that
    # is the derivation); it names the flipped tokens when they do fail, and it is the whole token gate
    # of the transformers.js clients, which return tokens only (clients/textgen.py).
    tie_margin: float = 2.0
    # KLD report gates (kld.py; vs the fp32 golden on the fixed corpus windows), None = reported only
    kld_mean_max: float | None = None
    same_top1_min: float | None = None
    # True: the three max-abs limits are fractions of the golden's largest |logit| (LMMetrics.logit_scale).
    # Float16 rounding error is proportional to magnitude (spacing 2^-10 of the value), so an absolute
    # fp16 limit measured on tiny models (|logits| <= 14) would fail real ones (|logits| ~30) for
    # the same relative error.
    relative: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def limit(self, attr: str, logit_scale: float) -> float:
        value = getattr(self, attr)
        return value * logit_scale if self.relative else value

    def tie_bound(self, logit_scale: float) -> float:
        """The golden top-1/top-2 gap above which a changed argmax is a failure (see tie_margin)."""
        return self.tie_margin * self.limit("step_max_abs", logit_scale)


# fp32: 1e-5 max abs on logits of |value| <= 14. Measured (docs/measurements.md, "Decoder LLMs"): 3.8e-6 to 8.6e-6
# over llama/qwen2/qwen3/smollm3; PyTorch's own cached decode differs from its own full recompute by
# up to 8.6e-6 on the same models, so the gate sits just above fp32 arithmetic noise. The export
# uses eager attention for this reason (torch_model.load_causal_lm, the one decoder loader).
_LM_FP32 = 1e-5
# fp16 (weights, activations in float16; fp32 logits and KV cache at the graph boundary), as a
# fraction of the golden's largest |logit|: float16 keeps 11 significant bits (unit roundoff
# 2^-11 = 4.9e-4), so its error scales with the logits. Measured on the four tiny families:
# 5.5e-4 to 1.04e-3 x max |logit| (fp16 and q4f16; 6.4e-3 to 1.39e-2 absolute at max |logit| 12-14),
# all 80/80 greedy tokens. The gate, 4e-3 x max |logit| (8 unit roundoffs), leaves room for
# deeper real models (rounding error grows with depth) while a real fault (a layer run without
# RoPE, a mis-scaled norm, a stale cache) moves logits by 0.1-1 x max |logit|.
LM_FP16_REL = 4e-3

LM_THRESHOLDS: dict[str, LMThreshold] = {
    "fp32": LMThreshold("fp32", _LM_FP32, _LM_FP32, _LM_FP32),
    "fp16": LMThreshold("fp32", LM_FP16_REL, LM_FP16_REL, LM_FP16_REL, relative=True),
    # ONNX 4-bit MatMulNBits (block 32, symmetric) vs PyTorch on the dequantized weights: fp32 compute,
    # so the fp32 gate (measured 3.8e-6 to 6.7e-6).
    "q4": LMThreshold("dequantized", _LM_FP32, _LM_FP32, _LM_FP32),
    # the same 4-bit weights with fp16 compute: the fp16 gate, against the dequantized golden
    "q4f16": LMThreshold("dequantized", LM_FP16_REL, LM_FP16_REL, LM_FP16_REL, relative=True),
    # Weight-only group-wise formats (MLX q8/q4 = precisions w8/w4) with float32 compute: the same rule as
    # q4 (the runtime must reproduce PyTorch on the weights the file stores). Measured on the tiny
    # decoders: MLX q8/q4 worst 7.6e-6 (Core ML w8/w4: docs/targets/coreml.md).
    # 8-bit variants are also gated on the KLD report against the fp32 golden (kld.py: 4 windows x 64
    # tokens of kld-v1, 256 positions): mean KLD <= 1e-3 nats, issue 16's bar. Measured on the four tiny
    # decoders (2026-12-05): MLX q8 1.85e-4 to 3.12e-4, Core ML w8 1.48e-4 to 3.01e-4 (4-bit: 0.02 to 0.09).
    # Issue 16's second bar, same top-1 >= 0.99, is reported, not gated: honest 8-bit files miss it on
    # the tiny models (MLX q8 0.9883 to 0.9961, Core ML w8 0.9844 to 0.9961), and every miss is a
    # near-tie (golden top-1/top-2 gap 0.0005 to 0.09 where the variant's own logits moved 0.05 to 0.2;
    # f16 flips some of the same positions). The tiny models are trained on one page of text and nearly
    # uniform on the unseen corpus (perplexity 250 to 510 over 512 tokens), so ~1 % of positions sit
    # within 0.03 of a tie: the failure the old 80/80 greedy gate had. A model that can show it (a real
    # LLM, peaked on ordinary English) is the place to set it.
    "w8": LMThreshold("dequantized", _LM_FP32, _LM_FP32, _LM_FP32, kld_mean_max=1e-3),
    "w4": LMThreshold("dequantized", _LM_FP32, _LM_FP32, _LM_FP32),
}


def check_lm(precision: str, m) -> list[str]:
    """Failed LM gates as readable strings (m: lm.LMMetrics); empty list means pass."""
    t = LM_THRESHOLDS[precision]
    failures = []

    def worst(attr: str) -> str:
        rows = sorted(m.prompts, key=lambda p: getattr(p, attr), reverse=True)[:3]
        return ", ".join(f"{p.name}={getattr(p, attr):.3g}" for p in rows)

    for attr, label in (("prefill_max_abs", "prefill logits max abs"),
                        ("step_max_abs", "cached-decode logits max abs"),
                        ("kv_vs_full_max_abs", "KV-cache vs full recompute max abs")):
        value, limit = getattr(m, attr), t.limit(attr, m.logit_scale)
        if value > limit:
            how = f" ({getattr(t, attr):g} x max |logit| {m.logit_scale:.3g})" if t.relative else ""
            failures.append(f"{label} {value:.3g} > {limit:.3g}{how} vs {t.reference} golden (worst: {worst(attr)})")
    bound = t.tie_bound(m.logit_scale)
    decisive = m.decisive_misses(bound)
    if decisive:
        where = "; ".join(f"{name} step {step} (gap {gap:.3g})" for name, step, gap in decisive[:5])
        failures.append(f"teacher-forced top-1 differs from the {t.reference} golden at {len(decisive)} of "
                        f"{m.top1_total} steps where the golden's top-1/top-2 gap exceeds {bound:.3g} "
                        f"({t.tie_margin:g} x the step limit): {where}")
    return failures


def check_kld(precision: str, report: dict) -> list[str]:
    """Failed KLD gates (report: kld.KLDReport.to_json()); empty when the precision has none."""
    t = LM_THRESHOLDS[precision]
    failures = []
    if t.kld_mean_max is not None and report["kld_mean"] > t.kld_mean_max:
        failures.append(f"mean KLD vs the fp32 golden {report['kld_mean']:.3g} > {t.kld_mean_max:g} "
                        f"({report['positions']} corpus positions; p99 {report['kld_p99']:.3g}, "
                        f"max {report['kld_max']:.3g})")
    if t.same_top1_min is not None and report["same_top1"] < t.same_top1_min:
        failures.append(f"same top-1 as the fp32 golden at {report['same_top1']:.4f} of {report['positions']} "
                        f"corpus positions < {t.same_top1_min}")
    return failures
