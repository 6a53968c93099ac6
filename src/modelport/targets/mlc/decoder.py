"""MLC / WebLLM target, decoder LLMs (MLCDecoder): WebLLM chat packages for Llama, Qwen2, Qwen3, SmolLM3.

    <out>/<v>/   mlc-chat-config.json (conversation template, generation defaults, context sizes)
                 tensor-cache.json  params_shard_*.bin   (names/shapes/dtypes from the library's _metadata)
                 tokenizer.json  tokenizer_config.json  config.json  ...   (layout.write_client_files)
                 <model>-<v>-webgpu.wasm                 the model library WebLLM runs
    <out>/libs/<model>-<v>-wasm32-cpu.wasm   the same model on wasm32 CPU kernels, + prefill_logits (validation)
    <out>/webllm-app-config.js               appConfig(base) / fromHub(repo), model_type LLM
    <out>/reference/lm_golden_q4f32_1.npz    PyTorch on q4f32_1's dequantized weights

Variants: f32 (q0f32), f16 (q0f16), q4f32_1 and q4f16_1 (MLC's 4-bit formats, quantize.py); the
float16 ones declare `required_features: ["shader-f16"]`. The model is our own Relax
module (chat_model.py). Validation drives the wasm32 CPU library in Node through TVM's web runtime
and its paged KV cache, the calls WebLLM makes (embed, begin_forward, prefill/decode, end_forward),
against the decoder golden; then WebLLM itself runs the WebGPU library in headless Chromium and its
greedy tokens are compared with PyTorch's (browser.validate_chat_in_chromium).

The float16 variants are gated in Node (wasm32: float16 storage, float32
arithmetic on its loads, see build.widen_matmul_operands) by the fp16 gates; SwiftShader has no
shader-f16, so WebLLM's refusal is recorded instead of a browser run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelportError
from ...families import DECODER
from ...fsutil import read_json, write_json
from ...layout import write_client_files
from ...manifest import TargetInfo
from ...recipes import NOPE_LAYERS, QK_NORM, QKV_BIAS, read_chat_template
from ..registry import ArtifactSession, ConvertContext, Converter, NoOptions, Variant, register
from . import browser, build, quantize
from .chat_model import DecoderShape
from .encoder import REQUIRED_FEATURES, app_config_js, runtime_versions, tvm_version, write_tensors
from .node_process import NodeProcess
from .layout import APP_CONFIG, lib_path, package_dir

LM_VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("f32", "f32/tensor-cache.json", "fp32", "float32 weights, compute and KV cache (q0f32)"),
        Variant("f16", "f16/tensor-cache.json", "fp16",
                "float16 weights, compute and KV cache, float32 logits (q0f16); WebGPU shader-f16"),
        Variant("q4f32_1", "q4f32_1/tensor-cache.json", "w4",
                "4-bit weights in groups of 32 with float32 scales, dequantized inside the kernels, float32 "
                "compute and KV cache (MLC's q4f32_1)"),
        Variant("q4f16_1", "q4f16_1/tensor-cache.json", "q4f16",
                "4-bit weights in groups of 32 with float16 scales, float16 compute and KV cache (MLC's "
                "q4f16_1); WebGPU shader-f16"),
    )
}
QUANTIZATION = {"f32": "q0f32", "f16": "q0f16", "q4f32_1": "q4f32_1", "q4f16_1": "q4f16_1"}
DTYPE = {"f32": "float32", "f16": "float16", "q4f32_1": "float32", "q4f16_1": "float16"}
GROUP_QUANTIZED = ("q4f32_1", "q4f16_1")
# The KV cache and prefill sizes written into the package (WebLLM allocates the cache up front:
# context x layers x kv heads x head_dim x 2, so a 128k-context checkpoint is capped here).
MAX_CONTEXT = 4096
MAX_PREFILL_CHUNK = 1024
# The architectures chat_model.py builds (Phi-3's fused projections are not mapped yet).
CHAT_MODEL_TYPES = ("llama", "qwen2", "qwen3", "smollm3")
# RoPE types TVM's paged KV cache computes (position_embedding.switch_rope_freq_func), with the
# transformers rope_parameters keys each one reads (the same names in both).
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
ROLE_PROBES = ("\x01SYSTEM\x01", "\x01USER\x01", "\x01ASSISTANT\x01", "\x01USER2\x01")


# --- shapes and templates ---------------------------------------------------------------------------------

def decoder_shape(source_config: dict[str, Any], recipe, rope: dict[str, Any], variant: str) -> DecoderShape:
    """The Relax model's shape from the checkpoint, its quirks and the rotary settings transformers
    computes with (`rope`: the model's resolved rope_parameters)."""
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ROPE_SCALING_KEYS:
        raise ModelportError(f"rope type {rope_type!r} is not converted to WebLLM yet (default and llama3 are): use "
                             f"-t onnx or -t mlx for this model")
    scaling = {"rope_type": rope_type, **{k: rope[k] for k in ROPE_SCALING_KEYS[rope_type]}} if ROPE_SCALING_KEYS[rope_type] \
        else {}
    context = min(recipe.max_length, MAX_CONTEXT)
    return DecoderShape(
        model_type=recipe.architecture.model_type, vocab_size=recipe.vocab_size, hidden_size=recipe.hidden_size,
        intermediate_size=int(source_config["intermediate_size"]), num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_attention_heads, num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.head_dim, rms_norm_eps=float(source_config["rms_norm_eps"]),
        rope_theta=float(rope["rope_theta"]), tie_word_embeddings=recipe.tie_word_embeddings,
        qkv_bias=QKV_BIAS in recipe.quirks, qk_norm=QK_NORM in recipe.quirks, context_window_size=context,
        prefill_chunk_size=min(context, MAX_PREFILL_CHUNK), dtype=DTYPE[variant],
        group_quantized=variant in GROUP_QUANTIZED,
        rope_layers=tuple(bool(x) for x in source_config["no_rope_layers"]) if NOPE_LAYERS in recipe.quirks else None,
        rope_scaling=scaling)


def conv_template(tokenizer, eos_ids: list[int]) -> tuple[dict[str, Any], list[str]]:
    """WebLLM's conversation template (ConvTemplateConfig) derived from the model's chat template.

    WebLLM does not run Jinja: it builds the prompt from role strings and separators
    (`system_template`, `roles`, `seps`, ...). They are read off the chat template by rendering
    conversations with marker contents, and the result is checked by rebuilding those conversations
    the way WebLLM 0.2.86 does (`webllm_prompt`): a template that does not decompose is refused
    rather than shipped with a prompt format the model was not trained on. Returns (template, notes).
    """
    sys_, user, asst, user2 = ROLE_PROBES

    def render(messages: list[tuple[str, str]], generation: bool) -> str:
        return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False,
                                             add_generation_prompt=generation)

    one = render([("user", user)], True)
    one_closed = render([("user", user)], False)
    two = render([("user", user), ("assistant", asst)], False)
    three = render([("user", user), ("assistant", asst), ("user", user2)], True)
    sep_user = one_closed[one_closed.index(user) + len(user):]
    assistant_head = one[one.index(user) + len(user) + len(sep_user):]
    sep_assistant = two[two.index(asst) + len(asst):]
    between = three[three.index(asst) + len(asst):three.index(user2)]
    if not between.startswith(sep_assistant):
        raise ModelportError("the chat template does not separate turns the way WebLLM's conversation template can "
                             "express (assistant separator mismatch): no chat package")
    user_head = between[len(sep_assistant):]
    lead = one[:one.index(user)]
    if not lead.endswith(user_head):
        raise ModelportError("the chat template's first user turn differs from later ones in a way WebLLM's "
                             "conversation template cannot express: no chat package")
    default_system = lead[:len(lead) - len(user_head)]
    try:
        with_system = render([("system", sys_), ("user", user)], True)
        system_template = with_system[:with_system.index(user_head + user)].replace(sys_, "{system_message}")
        system_ok = "{system_message}" in system_template
    except Exception:  # noqa: BLE001  (a template that rejects system messages)
        system_template, system_ok = default_system, False
    template = {
        "name": "modelport", "system_template": system_template if system_ok else default_system,
        "system_message": "", "system_prefix_token_ids": None, "add_role_after_system_message": True,
        # no system turn unless one is given (web-llm renders an empty one otherwise)
        "render_empty_system_message": False,
        "roles": {"user": user_head, "assistant": assistant_head}, "role_templates": {},
        "messages": [], "seps": [sep_user, sep_assistant], "role_content_sep": "", "role_empty_sep": "",
        "stop_str": [], "stop_token_ids": list(eos_ids),
    }
    if system_ok and default_system:  # the template adds a system turn of its own when none is given
        template["system_message"] = _between(default_system, system_template)
    notes = []
    for messages in ([("user", "Hi there")], [("user", "Hi"), ("assistant", "Hello!"), ("user", "And then?")],
                     *([[("system", "Be brief."), ("user", "Hi")]] if system_ok else [])):
        expected = render(messages, True)
        got = "".join(webllm_prompt(template, messages))
        if got != expected:
            raise ModelportError(f"WebLLM's conversation template would build {got!r} where the chat template "
                                 f"renders {expected!r}: no chat package (the model would be prompted wrongly)")
    if not system_ok:
        notes.append("the chat template takes no system message: the package's conversation template has none")
    return template, notes


def plain_template(eos_ids: list[int]) -> dict[str, Any]:
    """A base model's template (no chat template): text in, text out, as mlc-llm's "LM" template."""
    return {"name": "LM", "system_template": "{system_message}", "system_message": "",
            "system_prefix_token_ids": None, "add_role_after_system_message": True,
            "render_empty_system_message": False, "roles": {"user": "", "assistant": ""}, "role_templates": {},
            "messages": [], "seps": [""], "role_content_sep": "", "role_empty_sep": "", "stop_str": [],
            "stop_token_ids": list(eos_ids)}


def _between(rendered: str, template: str) -> str:
    """The system message `template` ("...{system_message}...") rendered into `rendered`."""
    head, _, tail = template.partition("{system_message}")
    return rendered[len(head):len(rendered) - len(tail)] if tail else rendered[len(head):]


def webllm_prompt(template: dict[str, Any], messages: list[tuple[str, str]]) -> list[str]:
    """The prompt segments web-llm 0.2.86 (Conversation.getPromptArray) builds for text messages
    followed by the assistant's reply header."""
    system = [m for r, m in messages if r == "system"]
    system_message = system[0] if system else template["system_message"]
    out = []
    if system_message or template.get("render_empty_system_message", True):
        out.append(template["system_template"].replace("{system_message}", system_message))
    turns = [(r, m) for r, m in messages if r != "system"]
    for i, (role, text) in enumerate(turns):
        out.append(template["roles"][role] + template["role_content_sep"] + text
                   + template["seps"][i % len(template["seps"])])
    out.append(template["roles"]["assistant"] + template["role_empty_sep"])
    return out


def chat_config(c: DecoderShape, variant: str, template: dict[str, Any], generation: dict[str, Any],
                tokenizer_files: list[str], eos_ids: list[int], pad_id: int | None) -> dict[str, Any]:
    """mlc-chat-config.json (WebLLM's ChatConfig): generation defaults from generation_config.json
    (greedy models get temperature 0 there; WebLLM's own default is 1.0)."""
    sampling = bool(generation.get("do_sample"))
    return {
        "version": "0.1.0", "model_type": c.model_type, "quantization": QUANTIZATION[variant],
        "model_config": {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                         "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
                         "num_attention_heads": c.num_attention_heads,
                         "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                         "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
                         "tie_word_embeddings": c.tie_word_embeddings, "context_window_size": c.context_window_size,
                         "prefill_chunk_size": c.prefill_chunk_size, "max_batch_size": 1},
        "vocab_size": c.vocab_size, "context_window_size": c.context_window_size, "sliding_window_size": -1,
        "prefill_chunk_size": c.prefill_chunk_size, "attention_sink_size": -1, "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "temperature": float(generation.get("temperature", 1.0)) if sampling else 0.0,
        "top_p": float(generation.get("top_p", 1.0)) if sampling else 1.0,
        "repetition_penalty": float(generation.get("repetition_penalty", 1.0)),
        "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "tokenizer_files": tokenizer_files,
        "tokenizer_info": {"token_postproc_method": "byte_level", "prepend_space_in_encode": False,
                           "strip_space_in_decode": False},
        "conv_template": template,
        "pad_token_id": pad_id if pad_id is not None else 0,
        "bos_token_id": -1, "eos_token_id": eos_ids[0] if eos_ids else -1,
    }


# --- convert ----------------------------------------------------------------------------------------------

def convert(ctx: ConvertContext) -> TargetInfo:
    import tvm

    from ... import lm
    from ...torch_model import load_causal_lm_source, load_tokenizer
    from . import chat_model

    source, recipe, out, step = ctx.source, ctx.recipe, ctx.out, ctx.step
    if recipe.architecture.model_type not in CHAT_MODEL_TYPES:
        raise ModelportError(f"the mlc target builds WebLLM chat packages for {', '.join(CHAT_MODEL_TYPES)} models, "
                             f"not {recipe.architecture.model_type}")
    runtime = build.build_runtime(step)
    step("load checkpoint weights (causal LM)")
    torch_model = load_causal_lm_source(source)
    rope = dict(torch_model.config.rope_parameters)
    state = {k: v.detach().float().numpy() for k, v in torch_model.state_dict().items()}
    del torch_model
    tokenizer = load_tokenizer(source)
    if read_chat_template(source.path) is None:
        template = plain_template(recipe.eos_token_id)
        notes = ["no chat template in the checkpoint: the package's conversation template passes text through "
                 "unchanged (use WebLLM's completions API; chat messages are concatenated without roles)"]
    else:
        template, notes = conv_template(tokenizer, recipe.eos_token_id)
    generation = read_json(source.path / "generation_config.json") if (source.path / "generation_config.json").is_file() else {}
    (out / "libs").mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    for name in ctx.variants:
        c = decoder_shape(source.config, recipe, rope, name)
        pkg = package_dir(out, name)
        files = write_client_files(source, recipe, pkg, max_length=c.context_window_size)
        timings: dict[str, Any] = {}
        values: dict[str, np.ndarray] = {}
        dequantized: dict[str, np.ndarray] = {}
        for kind in ("wasm32-cpu", "webgpu"):
            step(f"{name}: Relax chat model -> {kind} library (TIR paged KV cache, WebLLM function set)")
            mod, names, _ = chat_model.export(c, kind, QUANTIZATION[name])
            if not values:
                values, dequantized = chat_model.parameters(c, names, state)
                write_tensors(values, pkg)
            # TIR common-subexpression elimination breaks the Let-bound frequencies of llama3 RoPE
            # ("variable cse_v23 has been used before definition", apache-tvm 0.27): off for chat builds
            with tvm.transform.PassContext(config={"tirx.disable_cse_tir": True}):
                timings[kind] = build.build_library(mod, kind, lib_path(out, source.name, name, kind), runtime)
        tok_files = [f for f in ("tokenizer.json", "tokenizer_config.json") if (pkg / f).is_file()]
        write_json(pkg / "mlc-chat-config.json",
                   chat_config(c, name, template, generation, tok_files, recipe.eos_token_id, tokenizer.pad_token_id))
        info[name] = {"quantization": QUANTIZATION[name], "package": f"{name}/",
                      "model_lib": str(lib_path(out, source.name, name, "webgpu").relative_to(out)),
                      "validation_lib": str(lib_path(out, source.name, name, "wasm32-cpu").relative_to(out)),
                      "required_features": REQUIRED_FEATURES[name], "client_files": files, "seconds": timings,
                      "context_window_size": c.context_window_size, "prefill_chunk_size": c.prefill_chunk_size}
        if dequantized:
            step(f"{name}: reference: PyTorch with {name}'s dequantized weights")
            golden = lm.compute_golden(source.path, state_dict=dequantized, trust_remote_code=source.trust_remote_code)
            golden.save(out, lm.golden_name(name))
            info[name]["dequantized_reference"] = f"{lm.REFERENCE_DIR}/{lm.golden_name(name)}.npz"
            info[name]["group_quantization"] = {"group_size": quantize.GROUP, "bits": quantize.BITS,
                                                "storage": "uint32", "scale_dtype": c.dtype,
                                                "tensors": len(dequantized)}
    (out / APP_CONFIG).write_text(app_config_js(source.name, list(ctx.variants), "0 /* ModelType.LLM */"))
    return TargetInfo.of("mlc", DECODER.name, list(ctx.variants), LM_VARIANTS, per_variant=info,
                         layout="WebLLM chat packages (per variant folder: mlc-chat-config.json, tensor-cache.json, "
                                "params_shard_*.bin, tokenizer and its WebGPU model library; wasm32 CPU libraries "
                                "for the Node check in libs/)",
                         notes=notes, conv_template=template, apache_tvm=tvm_version(),
                         web_runtime={"dir": runtime.name, "build_s": build.runtime_build_seconds(runtime),
                                      "emcc": build.emcc_version()})


# --- validation: the wasm32 CPU library in Node, through the paged KV cache --------------------------------

class NodeLMRunner(NodeProcess):
    """lm.LMRunner over js/lm_runner.mjs: one Node process, one sequence in its KV cache at a time.

    `prefill` clears the cache and starts sequence 0 (prefill_logits: every position's logits, in
    chunks of the package's prefill_chunk_size); `decode` appends one token. The state is a counter:
    a decode on anything but the latest state is refused (the cache has moved on)."""

    def __init__(self, wasm: Path, pkg: Path) -> None:
        super().__init__("lm_runner.mjs", wasm, pkg, "LM runner")
        self.context = self.ready["context_window_size"]
        self.sequence = 0

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, int]:
        _, (logits,) = self.request({"op": "prefill", "ids": np.asarray(input_ids).reshape(-1).astype(int).tolist()})
        self.sequence += 1
        return logits, self.sequence

    def decode(self, state: int, token: int) -> tuple[np.ndarray, int]:
        if state != self.sequence:
            raise ModelportError("NodeLMRunner.decode: the KV cache holds a later sequence than this state")
        _, (logits,) = self.request({"op": "decode", "token": int(token)})
        return logits, self.sequence


class MLCDecoderSession(ArtifactSession):
    """Numerics on the wasm32 CPU library in Node; WebLLM's own greedy generation in Chromium."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.runners: dict[str, NodeLMRunner] = {}
        self.browser_notes: list[str] = []

    def runner(self, variant: str) -> NodeLMRunner:
        from .layout import model_name

        model = model_name(self.root)
        self.runners[variant] = NodeLMRunner(lib_path(self.root, model, variant, "wasm32-cpu"),
                                             package_dir(self.root, variant))
        return self.runners[variant]

    def extra_metrics(self, variant: str, runner: Any, golden: Any) -> dict[str, Any]:
        result: dict[str, Any] = {"failures": []}
        node_runner = self.runners.pop(variant, None)
        if node_runner is not None:
            node_runner.finish(result)
        return browser.merge(result, browser.validate_chat_in_chromium(self.root, variant, golden), variant,
                             self.browser_notes)

    def notes(self) -> list[str]:
        return ["numerics gated on the wasm32 CPU library in Node (TVM web runtime, paged KV cache, WebLLM's call "
                "order); WebLLM's own greedy generation with the WebGPU library in headless Chromium (SwiftShader) "
                "where available", *self.browser_notes]


@register
class MLCDecoder(Converter):
    """Decoder LLMs (Llama, Qwen2, Qwen3, SmolLM3) -> WebLLM chat packages (q0f32, q0f16, q4f32_1, q4f16_1)."""

    target = "mlc"
    family = DECODER.name
    variants = LM_VARIANTS
    defaults = tuple(LM_VARIANTS)
    Options = NoOptions
    requires = ("torch", "transformers", "tvm")
    runtime_requires = ()

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert(ctx)

    def open(self, artifact: Path) -> MLCDecoderSession:
        return MLCDecoderSession(artifact)

    def runtime_versions(self) -> dict[str, str]:
        return runtime_versions()
