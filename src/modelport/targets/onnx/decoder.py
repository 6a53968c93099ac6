"""ONNX target for decoder LLMs: a KV-cache graph in transformers.js's `text-generation` layout.

    <out>/config.json  generation_config.json  tokenizer.json  tokenizer_config.json (chat_template inline)
    <out>/onnx/model.onnx        fp32
    <out>/onnx/model_fp16.onnx   fp16 weights and math; fp32 inputs, outputs and KV cache
    <out>/onnx/model_q4.onnx     4-bit MatMulNBits (block 32, symmetric) on every MatMul incl. lm_head
    <out>/onnx/model_q4f16.onnx  the same 4-bit weights with fp16 math
    <out>/reference/lm_golden.npz|json          PyTorch fp32 golden (lm.py)
    <out>/reference/lm_golden_q4.npz|json ...   PyTorch on each 4-bit file's dequantized weights

Graph (one graph does prefill and decode; the past may be empty):
    inputs   input_ids [batch_size, sequence_length] int64
             attention_mask [batch_size, total_sequence_length] int64
             position_ids [batch_size, sequence_length] int64
             past_key_values.N.key|value [batch_size, KV heads, past_sequence_length, head_dim] float32
    outputs  logits [batch_size, sequence_length, vocab] float32
             present.N.key|value [batch_size, KV heads, total_sequence_length, head_dim] float32
KV heads, head_dim and vocab are fixed numbers: transformers.js builds the empty first-step cache
from the input's shape, reading every symbolic dimension other than `batch_size` as 0.

Export: torch.onnx.export(dynamo=True) of the Hugging Face model wrapped so the cache is a flat
list of tensors. The TorchScript exporter is not used (transformers 5's masks, quirk
`torch-export-only`). Tied embeddings: see untie_lm_head and the `tied-embeddings` quirk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import ModelportError
from ...families import DECODER
from ...manifest import TargetInfo
from ..registry import ArtifactSession, ConvertContext, Variant, register
from .ort import OPSET, OnnxConverter, Q4_BLOCK, needs_external_data, quantize_q4, save_model, session_options
from .weights import matmul_nbits_matrices  # the one MatMulNBits reader (also the weight check's)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "onnx/model.onnx", "fp32", "float32 export, KV cache"),
        Variant("fp16", "onnx/model_fp16.onnx", "fp16", "float16 weights/compute, fp32 io and KV cache"),
        Variant("q4", "onnx/model_q4.onnx", "q4", f"4-bit MatMulNBits block {Q4_BLOCK} sym, fp32 compute"),
        Variant("q4f16", "onnx/model_q4f16.onnx", "q4f16", f"4-bit MatMulNBits block {Q4_BLOCK} sym, fp16 compute"),
    )
}
DEFAULT_VARIANTS = tuple(VARIANTS)
# variants whose gate is measured against PyTorch running their dequantized weights
DEQUANTIZED_GOLDEN = ("q4", "q4f16")

Step = Callable[[str], Any]


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def make_kv_wrapper(model, num_layers: int):
    """(input_ids, attention_mask, position_ids, *past) -> (logits, *present), flat tensors only.

    torch.export cannot take a transformers Cache object as an input, so the cache is rebuilt from
    the flat past tensors inside forward and flattened back on the way out.
    """
    import torch
    from transformers import DynamicCache

    config = model.config

    class KVCacheLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(num_layers)],
                                 config=config)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return KVCacheLM().eval()


def export_fp32(source, recipe, path: Path) -> dict[str, float]:
    """torch.export -> ONNX, then canonical transformers.js dimension names. Returns a sanity check:
    the exported graph vs the PyTorch wrapper on the (batch 2, 4 new tokens, 3 past) example."""
    import onnx
    import torch

    from ...torch_model import load_causal_lm_source

    # eager attention, the golden's kernel (see torch_model.load_causal_lm: SDPA's decomposition
    # rounds differently and misses the fp32 gate)
    model = load_causal_lm_source(source)
    L, kvh, hd = recipe.num_layers, recipe.num_kv_heads, recipe.head_dim
    wrapper = make_kv_wrapper(model, L)
    # batch 2, 4 new tokens after 3 cached ones: no dimension is 0 or 1, so none specializes
    batch, new, past_len = 2, 4, 3
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, recipe.vocab_size, (batch, new), generator=gen)
    mask = torch.ones(batch, past_len + new, dtype=torch.long)
    pos = torch.arange(past_len, past_len + new).unsqueeze(0).expand(batch, new).contiguous()
    past = tuple(torch.randn(batch, kvh, past_len, hd, generator=gen) for _ in range(2 * L))
    auto = torch.export.Dim.AUTO
    dynamic = {"input_ids": {0: auto, 1: auto}, "attention_mask": {0: auto, 1: auto},
               "position_ids": {0: auto, 1: auto}, "past": tuple({0: auto, 2: auto} for _ in range(2 * L))}
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = needs_external_data(n_bytes)
    with torch.no_grad():
        expected = wrapper(ids, mask, pos, past)
        program = torch.onnx.export(
            wrapper, (ids, mask, pos, past), dynamo=True, dynamic_shapes=dynamic,
            input_names=list(recipe.inputs) + past_names(L), output_names=["logits"] + present_names(L),
            opset_version=OPSET, optimize=True, external_data=external, verbose=False)
    before = set(path.parent.iterdir())
    program.save(str(path), external_data=external)
    proto = onnx.load(str(path), load_external_data=external)
    name_dims(proto, recipe)
    if external:
        # transformers.js loads <file>_data (use_external_data_format); the exporter names it otherwise
        for f in set(path.parent.iterdir()) - before - {path}:
            f.unlink()
    save_model(proto, path)
    return _sanity(path, ids, mask, pos, past, expected, L)


def name_dims(proto, recipe) -> None:
    """transformers.js's dimension names, and fixed KV heads / head_dim / vocab."""
    kvh, hd = recipe.num_kv_heads, recipe.head_dim
    dims = {"input_ids": ["batch_size", "sequence_length"], "position_ids": ["batch_size", "sequence_length"],
            "attention_mask": ["batch_size", "total_sequence_length"],
            "logits": ["batch_size", "sequence_length", recipe.vocab_size]}
    for v in list(proto.graph.input) + list(proto.graph.output):
        if v.name in dims:
            want = dims[v.name]
        elif v.name.startswith("past_key_values."):
            want = ["batch_size", kvh, "past_sequence_length", hd]
        elif v.name.startswith("present."):
            want = ["batch_size", kvh, "total_sequence_length", hd]
        else:
            raise ValueError(f"unexpected graph input/output {v.name}")
        shape = v.type.tensor_type.shape.dim
        if len(shape) != len(want):
            raise ValueError(f"{v.name}: rank {len(shape)}, expected {len(want)}")
        for d, w in zip(shape, want):
            if isinstance(w, str):
                d.ClearField("dim_value")
                d.dim_param = w
            else:
                if d.HasField("dim_value") and d.dim_value != w:
                    raise ValueError(f"{v.name}: exported dimension {d.dim_value}, the config says {w}")
                d.ClearField("dim_param")
                d.dim_value = w
    # intermediate shapes still carry the exporter's symbols (s0, s1, ...): drop them, ORT re-infers
    del proto.graph.value_info[:]


def _sanity(path: Path, ids, mask, pos, past, expected, num_layers: int) -> dict[str, float]:
    """The exported graph on the export example (batch 2, non-empty past) vs PyTorch: catches a
    graph that only works for the shapes validation happens to use."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    feed.update({n: t.numpy() for n, t in zip(past_names(num_layers), past)})
    got = sess.run(None, feed)
    return {"export_example_logits_max_abs": float(np.abs(got[0] - expected[0].numpy()).max()),
            "export_example_present_max_abs": max(float(np.abs(g - e.numpy()).max())
                                                  for g, e in zip(got[1:], expected[1:]))}


def to_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and math with fp32 inputs/outputs (KV cache included): what transformers.js's
    own conversion script writes for dtype 'fp16', and the cache then needs no dtype handling in
    the client. Ops onnxruntime keeps in fp32 for accuracy (its default block list) stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     op_block_list=list(DEFAULT_OP_BLOCK_LIST))
    save_model(model, dst)


def untie_lm_head(src: Path, dst: Path) -> list[str]:
    """Give a tied lm_head its own weight so the 4-bit quantizer can quantize it.

    With tied embeddings the exporter feeds the lm_head MatMul through a Transpose of the
    embedding table (one table in the file; onnxruntime folds the Transpose at load). The
    MatMulNBits quantizer only quantizes MatMuls whose weight is an initializer, so it would keep
    the lm_head, the largest matrix of a small model (Llama-3.2-1B: 128256 x 2048), in float and
    every decode step would read it at full width. Policy (quirk `tied-embeddings`): fp32/fp16 keep
    the single table; 4-bit variants store the transposed table as the lm_head's own initializer
    (then quantized) and keep the embedding Gather in float. Returns the new initializer names.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    made, dead = [], []
    for node in graph.node:
        t = producer.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if t is None or t.op_type != "Transpose" or t.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[t.input[0]])
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), None)
        if weight.ndim != 2 or perm not in (None, [1, 0]):
            continue
        name = f"{t.input[0]}.lm_head_transposed"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name=name))
        consumers[node.input[1]] -= 1
        if consumers[node.input[1]] == 0:
            dead.append(t)
        node.input[1] = name
        made.append(name)
    for t in dead:
        graph.node.remove(t)
    save_model(proto, dst)
    return made


# --- dequantized weights: what PyTorch must compute to reproduce a 4-bit file ------------------------


def linear_weight_names(fp32_path: Path, source) -> dict[str, str]:
    """fp32 graph MatMul weight initializer -> PyTorch Linear weight name.

    torch.onnx stores each Linear weight as a constant-folded transpose with a generated name
    (`val_88`), so the match is by value: the initializer equals exactly (bitwise) the transpose
    of one Linear's weight. Only Linear weights are candidates, so a tied lm_head maps to
    `lm_head.weight`, not to the embedding table it equals.
    """
    import hashlib

    import onnx
    import torch
    from onnx import numpy_helper

    from ...torch_model import load_causal_lm_source

    model = load_causal_lm_source(source)
    by_hash: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight.detach().numpy().astype(np.float32).T
            key = hashlib.sha256(np.ascontiguousarray(w).tobytes() + str(w.shape).encode()).hexdigest()
            by_hash.setdefault(key, []).append(f"{name}.weight")
    proto = onnx.load(str(fp32_path))
    inits = {i.name: i for i in proto.graph.initializer}
    mapping: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.dtype != np.float32 or w.ndim != 2:
            continue
        key = hashlib.sha256(np.ascontiguousarray(w).tobytes() + str(w.shape).encode()).hexdigest()
        names = by_hash.get(key, [])
        if len(names) != 1:
            raise ValueError(f"MatMul {node.name}: weight {node.input[1]} matches {len(names)} Linear layers "
                             f"({names[:3]}); cannot build the dequantized reference")
        mapping[node.input[1]] = names[0]
    return mapping


def dequantized_weights(q_path: Path, weight_names: dict[str, str]) -> dict[str, np.ndarray]:
    """PyTorch state-dict entries for every MatMulNBits of `q_path`.

    The quantizer names each 4-bit weight `<fp32 initializer>_Q4` (and converts fp16 in place),
    so `weight_names` from the fp32 graph identifies the Linear exactly.
    """
    out: dict[str, np.ndarray] = {}
    for name, matrix in matmul_nbits_matrices(q_path):
        base = name.removesuffix("_Q4")
        if base not in weight_names:
            raise ValueError(f"{q_path.name}: 4-bit weight {name} has no fp32 counterpart")
        out[weight_names[base]] = matrix
    if not out:
        raise ValueError(f"{q_path.name} has no MatMulNBits node")
    return out


# --- the artifact --------------------------------------------------------------------------------


def write_lm_layout(source, recipe, out: Path, external: dict[str, int]) -> list[str]:
    """config / generation config / tokenizer files as transformers.js text-generation reads them.

    layout.write_client_files writes them the way every decoder target does (the chat template
    inline in tokenizer_config.json, a tokenizer class older readers know, every quirk's config fix:
    rope-parameters' top-level `rope_theta` / `rope_scaling`); this target adds to config.json
    `use_cache: true` and `transformers.js_config.use_external_data_format` for files whose weights
    are stored next to them (> 2 GB).
    """
    from ...fsutil import read_json
    from ...layout import write_client_files

    updates: dict[str, Any] = {"use_cache": True}
    if external:
        js_config = dict(read_json(source.path / "config.json").get("transformers.js_config") or {})
        js_config["use_external_data_format"] = dict(sorted(external.items()))
        updates["transformers.js_config"] = js_config
    return write_client_files(source, recipe, out, config_updates=updates)


def remove_onnx(path: Path) -> None:
    """Remove an ONNX file and its external weights (<file>_data), if any.

    Above 2 GB the weights live beside the graph: removing only the graph left 11 GB of stale
    weights (the fp32 export and the untied copy) in the 1B scale model's q4-only artifact."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + "_data").unlink(missing_ok=True)


def _external_chunks(out: Path, variants: list[str]) -> dict[str, int]:
    """{file name: 1} for each variant whose weights live in <file>_data (transformers.js config)."""
    return {Path(VARIANTS[v].path).name: 1 for v in variants
            if (out / (VARIANTS[v].path + "_data")).is_file()}


def convert(source, recipe, variants: list[str], out: Path, step: Step) -> TargetInfo:
    """Export fp32, derive the variants, store each 4-bit variant's dequantized-weights golden."""
    from ...lm import compute_golden, golden_name

    (out / "onnx").mkdir(parents=True, exist_ok=True)
    path = {name: out / VARIANTS[name].path for name in VARIANTS}
    step("export fp32 with KV cache (torch.export -> ONNX)")
    sanity = export_fp32(source, recipe, path["fp32"])
    need_fp16 = "fp16" in variants or "q4f16" in variants
    if need_fp16:
        step(f"write fp16 ({VARIANTS['fp16'].description})")
        to_fp16(path["fp32"], path["fp16"])
    quantized = [v for v in variants if v in DEQUANTIZED_GOLDEN]
    # 4-bit variants are quantized from an untied copy (see untie_lm_head), removed afterwards
    untied = {"q4": out / "onnx/.untied_fp32.onnx", "q4f16": out / "onnx/.untied_fp16.onnx"}
    for v in quantized:
        step(f"write {v} ({VARIANTS[v].description})")
        untie_lm_head(path["fp32" if v == "q4" else "fp16"], untied[v])
        quantize_q4(untied[v], path[v], quiet=True)
    dequant: dict[str, Any] = {}
    if quantized:
        if not untied["q4"].exists():
            untie_lm_head(path["fp32"], untied["q4"])
        names = linear_weight_names(untied["q4"], source)
        for v in quantized:
            step(f"reference: PyTorch (float64) on {v}'s dequantized weights")
            weights = dequantized_weights(path[v], names)
            dequant[v] = {"golden": f"reference/{golden_name(v)}.npz", "weights_replaced": len(weights),
                          "linear_layers": len(names)}
            compute_golden(source.path, state_dict=weights,  # consumes weights
                           trust_remote_code=source.trust_remote_code).save(out, golden_name(v))
    for tmp in untied.values():
        remove_onnx(tmp)
    if "fp16" not in variants and need_fp16:
        remove_onnx(path["fp16"])
    if "fp32" not in variants:
        remove_onnx(path["fp32"])
    external = _external_chunks(out, variants)
    write_lm_layout(source, recipe, out, external)
    return TargetInfo.of(
        "onnx", DECODER.name, variants, VARIANTS,
        per_variant={v: {"dequantized_reference": dequant[v]} for v in dequant},
        opset=OPSET, layout="transformers.js text-generation", export_check=sanity,
        tied_embeddings=_tied_policy(recipe))


def _tied_policy(recipe) -> str:
    if not recipe.tie_word_embeddings:
        return "untied in the checkpoint"
    return ("tied in the checkpoint: fp32/fp16 store one table (the lm_head reads it through a Transpose); "
            "4-bit variants give the lm_head its own transposed copy, quantized, and keep the embedding Gather "
            "in float")


# --- the runner ------------------------------------------------------------------------------------


class OrtLMRunner:
    """lm.LMRunner over one ONNX KV-cache decoder file: the cache travels as numpy arrays between calls.

    It feeds only the inputs the graph takes, so it also runs graphs other exporters wrote (`modelport
    audit`): position_ids and optimum's use_cache_branch are optional. Our graphs fix the KV-head and
    head_dim numbers (name_dims); where a graph leaves them symbolic, `config` (config.json) gives them.
    """

    context: int | None = None  # dynamic sequence axis: no limit but the model's own

    def __init__(self, path: Path, threads: int = 2, config: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.inputs = set(inputs)
        self.past = [n for n in inputs if n.startswith("past_key_values.")]
        if not self.past:
            raise ModelportError(f"{path.name} takes no past_key_values: not a KV-cache decoder graph")
        self.outputs = [o.name for o in self.session.get_outputs()]
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}

        def dim(value: Any, key: str) -> int:
            if isinstance(value, int):
                return value
            if config is None:
                raise ModelportError(f"{path.name}: the cache's {key} is symbolic and no config.json was given")
            heads = int(config["num_attention_heads"])
            return int(config.get("num_key_value_heads") or heads) if key == "heads" else \
                int(config.get("head_dim") or config["hidden_size"] // heads)

        # batch 1, no past tokens
        self.empty = {n: np.zeros((1, dim(inputs[n].shape[1], "heads"), 0, dim(inputs[n].shape[3], "head_dim")),
                                  dtype=dtypes[inputs[n].type]) for n in self.past}

    def _run(self, ids: np.ndarray, past: dict[str, np.ndarray], past_len: int) -> tuple[np.ndarray, tuple]:
        n = ids.shape[1]
        feed = {"input_ids": ids.astype(np.int64),
                "attention_mask": np.ones((1, past_len + n), dtype=np.int64)}
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
        if "use_cache_branch" in self.inputs:
            feed["use_cache_branch"] = np.array([past_len > 0])
        feed.update(past)
        outs = dict(zip(self.outputs, self.session.run(None, feed)))
        present = {k.replace("present.", "past_key_values."): v for k, v in outs.items() if k.startswith("present.")}
        return np.asarray(outs["logits"][0], dtype=np.float32), (present, past_len + n)

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        return self._run(np.asarray(input_ids).reshape(1, -1), self.empty, 0)

    def decode(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        past, past_len = state
        logits, new_state = self._run(np.array([[token]], dtype=np.int64), past, past_len)
        return logits[-1], new_state


def load_lm_runner(artifact: Path, variant: str, threads: int = 2) -> OrtLMRunner:
    return OrtLMRunner(artifact / VARIANTS[variant].path, threads)


class OnnxDecoderSession(ArtifactSession):
    def runner(self, variant: str) -> OrtLMRunner:
        return load_lm_runner(self.root, variant)


@register
class OnnxDecoder(OnnxConverter):
    """Decoder LLMs -> transformers.js `text-generation` layout, one KV-cache graph (see the module docstring)."""

    family = DECODER.name
    variants = VARIANTS
    defaults = DEFAULT_VARIANTS

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step)

    def open(self, artifact: Path) -> OnnxDecoderSession:
        return OnnxDecoderSession(artifact)
