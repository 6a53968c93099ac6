"""ONNX target for decoder LLMs: a KV-cache graph in transformers.js's `text-generation` layout.

    <out>/config.json  generation_config.json  tokenizer.json  tokenizer_config.json (chat_template inline)
    <out>/onnx/model.onnx        fp32
    <out>/onnx/model_fp16.onnx   fp16 weights and math; fp32 inputs, outputs and KV cache
    <out>/onnx/model_q4.onnx     4-bit MatMulNBits (block 32, symmetric) on every MatMul incl. lm_head, and the
                                 embedding table in the same 4-bit blocks (standard operators unpack the rows)
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
`torch-export-only`). The graph is exported once from a model without storage and each variant's
weights are streamed from the checkpoint into it (stream.py): peak memory is one PyTorch model (the
export check and the goldens need one), not the 3-4 copies of the old export -> fp16 -> untie -> quantize
chain on whole ModelProtos (16-17 GB per billion parameters). Tied embeddings: see _tied_policy and the
`tied-embeddings` quirk. The embedding table is 4-bit in the 4-bit variants so a 3B q4f16 file fits a
browser tab's 2 GB (float16, SmolLM3-3B's table alone is 525 MB).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import ModelportError
from ...families import DECODER
from ...manifest import TargetInfo
from ..registry import ArtifactSession, ConvertContext, Variant, register
from . import stream
from .ort import OPSET, OnnxConverter, Q4_BLOCK, session_options
from .stream import Checkpoint, DequantizedWeights, Skeleton, write_streamed

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "onnx/model.onnx", "fp32", "float32 export, KV cache"),
        Variant("fp16", "onnx/model_fp16.onnx", "fp16", "float16 weights/compute, fp32 io and KV cache"),
        Variant("q4", "onnx/model_q4.onnx", "q4",
                f"4-bit MatMulNBits block {Q4_BLOCK} sym + 4-bit embedding, fp32 compute"),
        Variant("q4f16", "onnx/model_q4f16.onnx", "q4f16",
                f"4-bit MatMulNBits block {Q4_BLOCK} sym + 4-bit embedding, fp16 compute"),
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


def export_example(recipe) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The traced example and its dynamic shapes: batch 2, 4 new tokens after 3 cached ones, so no
    dimension is 0 or 1 and none specializes."""
    import torch

    L, kvh, hd = recipe.num_layers, recipe.num_kv_heads, recipe.head_dim
    batch, new, past_len = 2, 4, 3
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, recipe.vocab_size, (batch, new), generator=gen)
    mask = torch.ones(batch, past_len + new, dtype=torch.long)
    pos = torch.arange(past_len, past_len + new).unsqueeze(0).expand(batch, new).contiguous()
    past = tuple(torch.randn(batch, kvh, past_len, hd, generator=gen) for _ in range(2 * L))
    auto = torch.export.Dim.AUTO
    dynamic = {"input_ids": {0: auto, 1: auto}, "attention_mask": {0: auto, 1: auto},
               "position_ids": {0: auto, 1: auto}, "past": tuple({0: auto, 2: auto} for _ in range(2 * L))}
    return (ids, mask, pos, past), dynamic


def export_skeleton(source, recipe) -> Skeleton:
    """torch.export -> ONNX of a storage-less model (stream.py), with transformers.js's dimension names."""
    example, dynamic = export_example(recipe)
    L = recipe.num_layers
    skel = stream.export_skeleton(source, lambda model: make_kv_wrapper(model, L), example, dynamic,
                                  list(recipe.inputs) + past_names(L), ["logits"] + present_names(L))
    name_dims(skel.proto, recipe)
    return skel


def export_check(source, recipe, path: Path, weights: DequantizedWeights | None) -> dict[str, float]:
    """The written graph on the export example (batch 2, non-empty past) vs the PyTorch wrapper: catches a
    graph that only works for the shapes validation happens to use. `path` is the fp32 file, or (no fp32
    variant) a 4-bit file, then PyTorch runs its dequantized weights (`weights`) in float32."""
    import torch

    from ...lm import replace_weights
    from ...torch_model import load_causal_lm_source

    model = load_causal_lm_source(source)
    if weights is not None:
        replace_weights(model, weights, torch.float32)
    example, _ = export_example(recipe)
    with torch.no_grad():
        expected = make_kv_wrapper(model, recipe.num_layers)(*example)
    del model
    gc.collect()  # the model before the session, not both (3B: 12.3 GB + the q4f16 session)
    result = {"graph": path.name, **_sanity(path, *example, expected, recipe.num_layers)}
    gc.collect()  # the session before the golden's model
    return result


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
    """Export the graph once without weights, write each variant by streaming the checkpoint into it
    (stream.py), store each 4-bit variant's dequantized-weights golden.

    Peak memory is the largest of: one PyTorch model (the export check, the goldens), the graph, one
    tensor being converted. Measured on 2 cores shared with other sessions (load 3-7), 2026-12-05:
    - llama-3.2-1b-shape, q4, benchmarks/lm_scale.py --skip-validation: peak RSS 13.17 GB (old path 19.78),
      q4 file 939 MB (old 1826 MB: float32 embedding), 1392 s (old 413 s on a quiet CPU; the float64
      golden alone took 862 s here). That run still loaded PyTorch with from_pretrained, whose mapped
      pages doubled the weights in the RSS at each load; torch_model.load_causal_lm now reads tensors.
    - smollm3-3b-shape (3.08B, 12.3 GB fp32), q4f16, this converter alone, two runs: export 97-104 s at
      0.7 GB, write 469-676 s at 4.4 GB, export check 17.1 GB (the float32 model plus the temporaries of
      dequantizing a 1 GB table), float64 golden 17.0-17.45 GB (float32 weights, one float64 weight at a
      time; both runs stopped in its first steps: at this load it needs ~30 min); peak 17.13 GB with the
      gc.collect() calls between phases (17.45 GB without). q4f16 = 5.0 MB graph + 1894 MB weights =
      1.90 GB, under a browser's 2 GB."""
    from ...lm import compute_golden, golden_name

    (out / "onnx").mkdir(parents=True, exist_ok=True)
    path = {name: out / VARIANTS[name].path for name in VARIANTS}
    step("export the KV-cache graph without weights (torch.export -> ONNX; weights streamed per variant)")
    skel = export_skeleton(source, recipe)
    ckpt = Checkpoint(source.weight_files)
    for v in (v for v in VARIANTS if v in variants):
        step(f"write {v} ({VARIANTS[v].description}), streaming the checkpoint")
        built = stream.q4_variant(skel, ckpt, fp16=(v == "q4f16")) if v in DEQUANTIZED_GOLDEN else \
            stream.float_variant(skel, ckpt, fp16=(v == "fp16"))
        remove_onnx(path[v])
        write_streamed(built, path[v])
        del built
    del skel, ckpt
    quantized = [v for v in variants if v in DEQUANTIZED_GOLDEN]
    step("export check: the graph on the traced example vs PyTorch")
    # fp32 if written, else a 4-bit file against its own dequantized weights, else (fp16 alone) the fp16
    # file against float32 PyTorch: the figure then includes fp16 rounding (it is recorded, not gated)
    checked = "fp32" if "fp32" in variants else (quantized[0] if quantized else variants[0])
    sanity = export_check(source, recipe, path[checked], DequantizedWeights(path[checked])
                          if checked in DEQUANTIZED_GOLDEN else None)
    dequant: dict[str, Any] = {}
    for v in quantized:
        step(f"reference: PyTorch (float64) on {v}'s dequantized weights")
        weights = DequantizedWeights(path[v])  # what the written file holds, read back
        dequant[v] = {"golden": f"reference/{golden_name(v)}.npz", "weights_replaced": len(weights),
                      "embedding_quantized": any(e[1].endswith(".embedding_scales") for e in weights.entries.values())}
        compute_golden(source.path, state_dict=weights,  # consumes weights, reading each from the file
                       trust_remote_code=source.trust_remote_code).save(out, golden_name(v))
    external = _external_chunks(out, variants)
    write_lm_layout(source, recipe, out, external)
    return TargetInfo.of(
        "onnx", DECODER.name, variants, VARIANTS,
        per_variant={v: {"dequantized_reference": dequant[v]} for v in dequant},
        opset=OPSET, layout="transformers.js text-generation", export_check=sanity,
        tied_embeddings=_tied_policy(recipe), export="streamed: weightless graph, checkpoint tensors written one at a time")


def _tied_policy(recipe) -> str:
    if not recipe.tie_word_embeddings:
        return "untied in the checkpoint"
    return ("tied in the checkpoint: fp32/fp16 store one table (the lm_head reads it through a Transpose); "
            "4-bit variants quantize the table once (block 32, symmetric) and store it twice: as the lm_head's "
            "MatMulNBits weight and as the embedding's 4-bit blocks (the same codes and scales)")


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
