"""Build machinery for the MLC / WebLLM target: TVM's web runtime, Relax builds, emscripten links.

mlc-llm is not installable from the registries, so the package WebLLM loads is built with Apache
TVM (Relax) directly. Quirks met on the way, each handled in exactly one place:

- **missing headers**: the web runtime sources shipped in the apache-tvm wheel (`tvm/web/emcc`)
  include seven headers no wheel ships; modelport writes them (`targets/mlc/js/runtime-headers/`),
  and takes `tvm/support/{io,serializer,bytes_io}.h` from the apache-tvm-tirx wheel.
- **.o, not bitcode**: TVM's LLVM (22) writes bitcode that Debian's emscripten 3.1.6 (LLVM 14)
  cannot read, so TVM objects are emitted as wasm object files. The runtime is compiled to wasm
  objects too: linking bitcode would re-run LTO code generation of the whole runtime at every link.
- **runtime built once**: the runtime objects are cached under the modelport cache, keyed by the
  content hash of every input (wheel RECORDs, our headers, emcc version, flags).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import distribution
from pathlib import Path
from typing import Any, Callable

from ...errors import ToolchainError

Step = Callable[[str], Any]

HEADERS = Path(__file__).parent / "js" / "runtime-headers"
# The three translation units of TVM's web runtime (tvm/web/emcc/*.cc).
RUNTIME_UNITS = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
RUNTIME_FLAGS = ("-O3", "-std=c++17", "-Wno-ignored-attributes", "-c")
# The link create_tvmjs_wasm (tvm.support.emcc) does, with the runtime passed explicitly.
# -O1, not create_tvmjs_wasm's -O3: every object is already LLVM -O3 code, and emcc's -O2/-O3 link
# runs binaryen's wasm-opt over the 7 MB module (measured here: -O1 1.5 s, -O2 57 s, -O3 227 s).
LINK_FLAGS = ("-O1", "-std=c++17", "--no-entry", "-s", "WASM_BIGINT=1", "-s", "ERROR_ON_UNDEFINED_SYMBOLS=0",
              "-s", "STANDALONE_WASM=1", "-s", "ALLOW_MEMORY_GROWTH=1", "-s", "TOTAL_MEMORY=160MB")
WHEELS = ("apache-tvm", "apache-tvm-ffi", "apache-tvm-tirx")


def emcc() -> str:
    path = shutil.which("emcc")
    if path is None:
        raise ToolchainError("emcc (emscripten) is not installed: run scripts/setup-mlc.sh "
                             "(apt-get install emscripten)")
    return path


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{Path(cmd[0]).name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout


def emcc_version() -> str:
    return _run([emcc(), "--version"]).splitlines()[0]


def _site(dist: str) -> Path:
    d = distribution(dist)
    return Path(str(d.locate_file("")))


def _runtime_key() -> str:
    """Content hash of everything the runtime objects are built from.

    A wheel's RECORD lists the sha256 of each of its files, so hashing the RECORDs covers the
    TVM / tvm-ffi / tirx sources without reading them.
    """
    h = hashlib.sha256()
    for dist in WHEELS:
        h.update(dist.encode() + "\n".join(_wheel_files(distribution(dist).read_text("RECORD") or "")).encode())
    for path in sorted(HEADERS.rglob("*.h")):
        h.update(str(path.relative_to(HEADERS)).encode() + path.read_bytes())
    h.update(emcc_version().encode() + " ".join(RUNTIME_FLAGS).encode())
    return h.hexdigest()[:20]


def _wheel_files(record: str) -> list[str]:
    """The RECORD lines of the wheel's own files. pip adds lines that depend on the installation, not
    on the sources (console scripts with the venv's path in their shebang, .pyc files, INSTALLER,
    REQUESTED): without them the key is the same in .venv and in the mlc image, which can then
    share one runtime build (`make mlc MLC_RUNTIME_CACHE=...`)."""
    keep = []
    for line in record.splitlines():
        path = line.split(",", 1)[0]
        if not line.strip() or path.startswith("../") or "__pycache__" in path or ".dist-info/" in path:
            continue
        keep.append(line)
    return sorted(keep)


def runtime_cache_dir() -> Path:
    """`MODELPORT_WEB_RUNTIME_CACHE` or <modelport cache>/mlc-runtime (the tests point the former
    at the persistent cache so a second test session reuses the build)."""
    from ...source import cache_root

    env = os.environ.get("MODELPORT_WEB_RUNTIME_CACHE")
    return Path(env) if env else cache_root() / "mlc-runtime"


def _source_tree(root: Path) -> Path:
    """TVM's source layout (what tvm/web/emcc/*.cc include relative to), assembled from the wheels."""
    tvm, ffi, tirx = (_site(d) for d in WHEELS)
    shutil.copytree(tvm / "tvm" / "include", root / "include")
    shutil.copytree(tvm / "tvm" / "src", root / "src")
    shutil.copytree(tvm / "tvm" / "web" / "emcc", root / "web" / "emcc")
    ffi_root = root / "3rdparty" / "tvm-ffi"
    shutil.copytree(ffi / "tvm_ffi" / "include", ffi_root / "include")
    shutil.copytree(ffi / "tvm_ffi" / "src", ffi_root / "src")
    shutil.copytree(ffi / "tvm_ffi" / "3rdparty" / "dlpack", ffi_root / "3rdparty" / "dlpack")
    shutil.copytree(tirx / "tvm_tirx" / "include" / "tvm" / "support", root / "include" / "tvm" / "support",
                    dirs_exist_ok=True)
    shutil.copytree(HEADERS, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))
    return root


def build_runtime(step: Step | None = None) -> Path:
    """TVM's web runtime as wasm objects, built once per content hash; returns their directory."""
    out = runtime_cache_dir() / _runtime_key()
    if all((out / f"{u}.o").is_file() for u in RUNTIME_UNITS):
        return out
    if step:
        step("build TVM web runtime with emscripten (once; cached by content hash)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tvm-web-") as tmp:
        root = _source_tree(Path(tmp) / "tvm")
        work = Path(tmp) / "objects"
        work.mkdir()
        includes = [f"-I{root / p}" for p in ("", "include", "3rdparty/tvm-ffi/include",
                                              "3rdparty/tvm-ffi/3rdparty/dlpack/include",
                                              "3rdparty/compiler-rt")]
        t0 = time.perf_counter()

        def compile_unit(unit: str) -> None:
            _run([emcc(), *includes, *RUNTIME_FLAGS, "-o", str(work / f"{unit}.o"),
                  str(root / "web" / "emcc" / f"{unit}.cc")], cwd=root / "web")

        with ThreadPoolExecutor(max_workers=max(1, min(len(RUNTIME_UNITS), os.cpu_count() or 1))) as pool:
            list(pool.map(compile_unit, RUNTIME_UNITS))
        (work / "build.json").write_text(
            f'{{"seconds": {time.perf_counter() - t0:.1f}, "emcc": "{emcc_version()}"}}\n')
        staged = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        staged.chmod(0o755)
        for f in work.iterdir():
            shutil.copyfile(f, staged / f.name)
        try:
            staged.rename(out)  # atomic: a concurrent build of the same key just loses the race
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    return out


def runtime_build_seconds(runtime: Path) -> float | None:
    import json

    path = runtime / "build.json"
    return json.loads(path.read_text())["seconds"] if path.is_file() else None


def link(objects: list[str], output: Path, runtime: Path) -> float:
    """emcc link of TVM's host objects with the runtime objects; returns seconds."""
    t0 = time.perf_counter()
    _run([emcc(), *LINK_FLAGS, "-o", str(output), *(str(runtime / f"{u}.o") for u in RUNTIME_UNITS), *objects])
    return time.perf_counter() - t0


# --- Relax module -----------------------------------------------------------------------------------------

# WebLLM's EmbeddingPipeline (web-llm 0.2.86, src/embedding.ts) calls
#   prefill(input_ids int32[b, s], attention_mask int32[b, s], params) -> float32[b, s, h]
# and returns row 0 of each sequence. Our prefill puts the sentence embedding (the recipe's pooling
# and normalization) in row 0 and the token embeddings of positions 1.. in the other rows; `encode`
# returns (last_hidden_state, sentence_embedding, that same prefill tensor) for the validator, so one
# call checks the token embeddings, the pooling and the tensor WebLLM reads. Parameters are one tuple
# argument (mlc-llm's "packed" mode), looked up by name in tensor-cache.json through `_metadata`.
PREFILL, ENCODE, METADATA = "prefill", "encode", "_metadata"
MAX_BATCH = 32


def make_wrapper(hf_model, recipe, dtype):
    """The recipe's encoder in the form WebGPU code generation accepts.

    int32 everywhere (WGSL has no 64-bit integers and no bool buffers): the embeddings and the
    encoder are called directly with int32 position ids and a float additive mask, instead of
    transformers' mask utilities, which build int64 aranges and bool masks. No `inf` literal
    (TVM 0.27's WGSL printer writes `inff`): `clamp(min=)` lowers to clip(x, lo, +inf), so
    denominators use torch.maximum. The additive mask value is finite in float16 too. No integer
    tensor indexing (it becomes an int64 index buffer).
    """
    import torch

    from ...torch_model import ADDITIVE_MASK_VALUE

    class WebEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = hf_model

        def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor):
            b, s = inputs.shape
            pos = torch.arange(s, dtype=torch.int32).unsqueeze(0).expand(b, s)
            emb = self.m.embeddings(input_ids=inputs, position_ids=pos, token_type_ids=torch.zeros_like(inputs))
            keep = attention_mask.to(emb.dtype)
            additive = (1.0 - keep)[:, None, None, :] * ADDITIVE_MASK_VALUE
            hidden = self.m.encoder(emb, attention_mask=additive).last_hidden_state.to(torch.float32)
            keep32 = keep.to(torch.float32)
            if recipe.pooling == "cls":
                # narrow, not hidden[:, 0]: integer indexing becomes a take() with an int64 index
                # buffer, which the int32 narrowing pass refuses
                pooled = hidden.narrow(1, 0, 1).squeeze(1)
            else:
                m = keep32.unsqueeze(-1)
                pooled = (hidden * m).sum(1) / torch.maximum(m.sum(1), torch.full((), 1e-9))
            if recipe.normalize:
                norm = torch.sqrt((pooled * pooled).sum(-1, keepdim=True))
                pooled = pooled / torch.maximum(norm, torch.full((), 1e-12))
            # What WebLLM's prefill returns (it reads row 0): sentence embedding, then tokens 1..
            # (torch.where, not a [:, 1:] slice: the slice makes torch.export specialize seq_len != 2)
            first = (pos == 0).unsqueeze(-1)
            webllm = torch.where(first, pooled.unsqueeze(1), hidden)
            return hidden, pooled, webllm

    return WebEncoder().eval().to(dtype)


def frontend_converters() -> dict[str, Callable[..., Any]]:
    """Translations of six aten ops (named as after torch.export's core decomposition) that keep a
    float16 graph float16; passed to TVM's torch frontend as its public `custom_convert_map`.

    Matmuls. TVM 0.27's torch frontend emits every matmul (`addmm`, `mm`, `bmm`, `matmul`, `linear`)
    with a hard-coded `out_dtype="float32"`: in a float16 graph the product comes out float32, and
    `addmm`'s bias add (float16 + float32) fails type inference, so a `.half()` export cannot be
    imported. Routes considered for the f16 (q0f16) variant:

    - `relax.transform.ToMixedPrecision(fp16_input_names=...)` on the float32 import: crashes in
      TVM 0.27 as soon as parameter names are given (`InternalError: no block is being built`, in
      its TypeMutator over the parameter tuple); without them the weights stay float32 in the
      package and only the matmuls run in float16, every other op in float32: not q0f16.
    - decomposing Linear before the export: `run_decompositions` turns `linear` into `addmm` and
      `bmm`, the very ops with the hard-coded dtype.
    - these converters (chosen): the product is still accumulated in float32
      (`matmul(out_dtype="float32")`, as the frontend does), then cast back to the input dtype, so
      the rest of the graph (bias add, GELU, LayerNorm, embeddings, the weights themselves) stays
      the dtype torch exported: float16 for f16.

    Softmax (`_softmax`) of a float16 input is computed in float32 and cast back. TVM's softmax
    keeps the exponentials and their sum in the input dtype; PyTorch's reference kernels accumulate
    in float32 (LayerNorm and GELU's erf already compute in float32 inside TVM's kernels). Measured
    on all-MiniLM-L6-v2 (Node, 47 texts): float16 softmax cos min 0.999993, pooled max abs 6.4e-4,
    tokens 1.5e-2; float32 softmax 0.999997, 4.6e-4, 1.1e-2.

    For float32 inputs the converters compute what the frontend's own translations compute (same
    ops and dtypes; no casts are added), so the f32 variant is unchanged (still ≤ 1e-5, measured).
    """
    from tvm import relax

    def product(importer, a, b):
        out = importer.block_builder.emit(relax.op.matmul(a, b, out_dtype="float32"))
        dtype = str(a.ty.dtype)
        return out if dtype == "float32" else importer.block_builder.emit(relax.op.astype(out, dtype))

    def scaled(importer, x, factor):
        return x if factor == 1 else importer.block_builder.emit(
            relax.op.multiply(x, relax.const(factor, str(x.ty.dtype))))

    def addmm(node, importer):
        bias, a, b = (importer.env[n] for n in node.args[:3])
        alpha, beta = node.kwargs.get("alpha", 1), node.kwargs.get("beta", 1)
        terms = ([scaled(importer, product(importer, a, b), alpha)] if alpha != 0 else []) \
            + ([scaled(importer, bias, beta)] if beta != 0 else [])
        if not terms:
            raise ToolchainError("addmm with alpha = beta = 0")
        return terms[0] if len(terms) == 1 else importer.block_builder.emit(relax.op.add(terms[1], terms[0]))

    def two(node, importer):
        a, b = importer.retrieve_args(node)[:2]
        return product(importer, a, b)

    def linear(node, importer):
        args = importer.retrieve_args(node)
        out = product(importer, args[0], importer.block_builder.emit(relax.op.permute_dims(args[1])))
        bias = args[2] if len(args) > 2 else None
        return out if bias is None else importer.block_builder.emit(relax.op.add(out, bias))

    def softmax(node, importer):
        bb = importer.block_builder
        x = importer.env[node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
        dtype = str(x.ty.dtype)
        if dtype == "float32":
            return bb.emit(relax.op.nn.softmax(x, dim))
        out = bb.emit(relax.op.nn.softmax(bb.emit(relax.op.astype(x, "float32")), dim))
        half_to_float = len(node.args) > 2 and bool(node.args[2])  # aten: return float32 as is
        return out if half_to_float else bb.emit(relax.op.astype(out, dtype))

    def right_shift(node, importer):
        # the 4-bit unpacking of q4f*_1 weights (quantize.py); TVM 0.27's frontend has no `>>`
        a, b = importer.retrieve_args(node)[:2]
        return importer.block_builder.emit(relax.op.right_shift(a, b))

    return {"addmm.default": addmm, "mm.default": two, "bmm.default": two, "matmul.default": two,
            "linear.default": linear, "_softmax.default": softmax, "__rshift__.Tensor": right_shift}


def import_relax(source, recipe, dtype_name: str, max_batch: int = MAX_BATCH,
                 transform: Callable[[Any], None] | None = None):
    """torch.export -> Relax; returns (IRModule with encode/prefill/_metadata, {param name: array}).

    `transform(hf_model)` changes the loaded model in place before the export (the 4-bit variants
    swap in their group-quantized modules: quantize.quantize_modules)."""
    import numpy as np
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from ...torch_model import load_hf_model

    dtype = {"float32": torch.float32, "float16": torch.float16}[dtype_name]
    hf_model = load_hf_model(source)
    if transform is not None:
        transform(hf_model)
    wrapper = make_wrapper(hf_model, recipe, dtype)
    example = (torch.ones(2, 16, dtype=torch.int32), torch.ones(2, 16, dtype=torch.int32))
    batch = torch.export.Dim("batch_size", min=1, max=max_batch)
    seq = torch.export.Dim("seq_len", min=2, max=recipe.max_length)
    dynamic = {"inputs": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    with torch.no_grad():
        program = torch.export.export(wrapper, example, dynamic_shapes=dynamic)
    mod = from_exported_program(program, keep_params_as_input=True, custom_convert_map=frontend_converters())
    names = [spec.target.removeprefix("m.") for spec in program.graph_signature.input_specs
             if spec.kind == torch.export.graph_signature.InputKind.PARAMETER]
    mod, detached = relax.frontend.detach_params(mod)
    arrays = [p.numpy() for p in detached["main"]]
    if len(names) != len(arrays):
        raise ToolchainError(f"torch.export named {len(names)} parameters, Relax has {len(arrays)}")
    encode = mod["main"].with_attr("global_symbol", ENCODE)
    mod = relax.transform.BundleModelParams("params")(tvm.IRModule({ENCODE: encode}))
    mod = _add_prefill(mod)
    params = {n: np.ascontiguousarray(a) for n, a in zip(names, arrays)}
    return mod, params


def _add_prefill(mod):
    """prefill(inputs, mask, params): encode's body returning its third output (WebLLM's tensor).

    A copy of encode (fresh variables) rather than a call to it: a cross-function call needs
    typed GlobalVars, and a copy lets dead-code elimination drop what prefill does not return.
    """
    from tvm import relax
    from tvm.relax.utils import copy_with_new_vars

    fn = copy_with_new_vars(mod[ENCODE])
    body = fn.body
    prefill = relax.Function(fn.params, relax.SeqExpr(body.blocks, relax.TupleGetItem(body.body, 2)),
                             body.body.ty.fields[2], fn.is_pure, fn.attrs)
    mod[PREFILL] = prefill.with_attr("global_symbol", PREFILL)
    return relax.transform.Normalize()(mod)


def add_metadata(mod, params: dict, context: int, quantization: str, max_batch: int = MAX_BATCH):
    """`_metadata`: the JSON WebLLM reads to find the parameters by name and the batch limits."""
    import json

    import tvm
    from tvm import relax

    meta = {
        "model_type": "bert",
        "quantization": quantization,
        "context_window_size": context,
        "prefill_chunk_size": context,
        "sliding_window_size": -1,
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "kv_state_kind": "none",
        "max_batch_size": max_batch,
        "params": [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype), "preprocs": [],
                    "pipeline_stages": [0]} for n, a in params.items()],
        "memory_usage": {},
    }
    bb = relax.BlockBuilder()
    with bb.function(METADATA, params=[]):
        bb.emit_func_output(tvm.ir.StringImm(json.dumps(meta)))
    fn = bb.get()[METADATA].with_attr("global_symbol", METADATA)
    mod = mod.clone() if hasattr(mod, "clone") else mod
    mod[METADATA] = fn
    return mod, meta


# --- builds -------------------------------------------------------------------------------------------------

WASM32 = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}
LIB_KINDS = ("webgpu", "wasm32-cpu")


def _webgpu_pipeline(target):
    """gpu_generic's default Relax pipeline plus ForceNarrowIndexToInt32 (what mlc-llm does for
    non-CUDA GPUs): WGSL has no 64-bit integers, so every index expression must be int32."""
    import tvm
    from tvm.relax.backend import gpu_generic as g

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                g.library_dispatch_passes(target) + g.legalize_passes(target)
                + [tvm.tirx.transform.ForceNarrowIndexToInt32()]
                + g.dataflow_lower_passes(target) + g.finalize_passes(target))(mod)

    return pipeline


def widen_matmul_operands(mod):
    """For the wasm32 CPU library only: float16 matmul operands are cast to float32 once, before
    the matmul, instead of inside its inner loop.

    WebAssembly has no float16 arithmetic (Node 20's V8 implements no wasm fp16 proposal), so
    LLVM stores float16 as i16 and converts every load with a compiler-rt call (`__extendhfsf2`,
    linked into the library from emscripten's compiler-rt; stores use `__truncsfhf2`). TVM's matmul
    kernel with `out_dtype="float32"` computes `sum(float32(a[i, k]) * float32(b[k, j]))`, so it
    pays two calls per multiply-add: measured 56 s for one 128-token text with tiny-bert-arctic.
    Casting the operands first computes the same products and sums in the same order (float16 to
    float32 is exact), with one call per element: the numbers are bit for bit those of the fused
    kernel (checked in tests/test_mlc.py). The WebGPU library keeps the float16 matmul: WGSL has
    native `f16` loads (`enable f16;`).
    """
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Widen(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul"
                    and str(call.attrs.out_dtype) == "float32"
                    and any(str(a.ty.dtype) == "float16" for a in call.args)):
                args = [self.builder_.emit(relax.op.astype(a, "float32")) if str(a.ty.dtype) == "float16" else a
                        for a in call.args]
                return relax.op.matmul(*args, out_dtype="float32")
            return call

    @tvm.transform.module_pass(opt_level=0, name="WidenMatmulOperands")
    def widen(mod, _ctx):
        mutator = Widen(mod)
        for gv, fn in mod.functions_items():
            if isinstance(fn, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(fn))
        return mutator.builder_.get()

    return widen(mod)


# The wasm32 CPU library's kernels. TVM's CPU pipeline (cpu_generic) has no schedule for matmul, so
# its loops run as legalized: `for i, j, k: C[i, j] += A[i, k] * B[k, j]`, a scalar dot product that
# walks B with a stride of one row per step, a serial float sum LLVM does not vectorize (it would
# have to reassociate it), so `+simd128` alone changes nothing (measured: 0.98x). V8's profile of
# all-MiniLM-L6-v2 in Node (48 encode calls, the 24 corpus texts twice): the dense matmuls 7.9 s
# of 9.7 s busy, the weight transposes 0.8 s. With the schedules below: 0.9 s for all matmuls,
# no transposes left; the 24 texts 4.31 s -> 0.49 s end to end (round robin in one run;
# onnxruntime-web, 1 thread: 0.64 s).
# simd128 only: TVM emits llvm.fmuladd, which stays a multiply then an add on it (relaxed-simd
# would fuse them and change the results). Node 16.4+ runs wasm SIMD without flags.
WASM32_CPU = {**WASM32, "mattr": ["+simd128"]}
MATMUL_LANES = 16  # output columns per tile: four v128 registers of float32
TRANSPOSE_TILE = 8


def wasm32_cpu_pipeline(target):
    """TVM's CPU pipeline (`cpu_generic`) with `FuseTransposeMatmul` before legalization and three
    dlight schedule rules after it, applied as mlc-llm applies its dlight rules (TVM's own
    `dlight.cpu` rules match GEMV and softmax-like reductions only, not these matmuls).

    The rules only reorder, tile and vectorize loops: every output element still sums its products
    in the same order (k = 0, 1, ...) with the same float32 operations, and wasm SIMD has no fused
    multiply-add, so the results are bit for bit those of the unscheduled build (MiniLM, 24 corpus
    texts: max |diff| 0 on all three outputs; tests/test_mlc.py checks it).
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    rules = [dl.ScheduleRule.from_callable(name)(_or_unscheduled(schedule)) for name, schedule in (
        ("PackedNTMatmul", _schedule_nt_matmul), ("ColumnTiledMatmul", _schedule_matmul),
        ("TiledTranspose", _schedule_transpose))]

    @tvm.transform.module_pass(opt_level=0, name="Wasm32CpuPipeline")
    def pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                cpu.library_dispatch_passes(target) + [relax.transform.FuseTransposeMatmul()]
                + cpu.legalize_passes(target) + [dl.ApplyDefaultSchedule(*rules)]
                + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)

    return pipeline


def _or_unscheduled(schedule):
    """`schedule`, returning None (the kernel stays as legalized: correct, slower) where TVM refuses
    one of its primitives on a kernel shape the checks let through, instead of failing the build:
    other variants (the 4-bit ones) bring kernels these rules were not measured on."""
    from tvm.s_tir import ScheduleError

    def apply(func, target, tunable):
        try:
            return schedule(func, target, tunable)
        except ScheduleError:
            return None

    return apply


def _static_multiple(extent, factor: int) -> bool:
    from tvm import tirx

    return isinstance(extent, (int, tirx.IntImm)) and int(extent) % factor == 0


def _matmul_block(func):
    """(schedule, the matmul block's info, its epilogue blocks) for a PrimFunc that is one
    `C[..., i, j] = sum_k X * Y` reduction (j static, a multiple of MATMUL_LANES, the last index of
    C) followed only by injective blocks (the bias add FuseOps put there); else None."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)
    if not blocks or blocks[0].is_injective() or not all(b.is_injective() for b in blocks[1:]):
        return None
    matmul = blocks[0]
    kinds, stmt = matmul.dom_kind(), sch.get(matmul.block_rv)
    if len(kinds) < 3 or kinds != "S" * (len(kinds) - 1) + "R" \
            or not _static_multiple(matmul.iters[-2].dom, MATMUL_LANES) \
            or len(stmt.reads) != 2 or len(stmt.writes) != 1 \
            or not stmt.writes[0].region[-1].min.same_as(matmul.iters[-2].var):
        return None
    if len(blocks) == 1:  # no epilogue: accumulate in a copy, written back per tile
        sch.cache_write(matmul.block_rv, 0, "global")
        return sch, matmul, list(sch.get_consumers(matmul.block_rv))
    return sch, matmul, [b.block_rv for b in blocks[1:]]


def _finish_tile(sch, matmul_rv, epilogues, at, k, lane) -> None:
    """Epilogues computed per tile under loop `at`, their columns and the matmul's `lane` loop
    vectorized, the reduction's zero-init split off above `k`."""
    for block in epilogues:  # in order: each one's producer is under `at` already
        sch.reverse_compute_at(block, at, preserve_unit_loops=True)
    for block in epilogues:
        sch.vectorize(sch.get_loops(block)[-1])
    sch.vectorize(lane)  # before decompose_reduction: TVM refuses to vectorize an init-less update
    sch.decompose_reduction(matmul_rv, k)


def _schedule_matmul(func, _target, _tunable):
    """`C[..., i, j] = sum_k A[..., i, k] * B[..., k, j]`: loops `..., j/16, k, j%16`, the 16 columns
    vectorized. B is read along its rows (contiguous) and each A[i, k] is broadcast once per 16
    products. Matches attention's probabilities x values (j = head size) and, in the f16 library,
    the dense layers (their widened operands hide the transpose from FuseTransposeMatmul); not
    the attention scores (j = sequence length, dynamic). MiniLM, Node, 48 calls, with transposed
    weights as in the unscheduled graph: the dense matmuls 7.9 s -> 0.7 s."""
    found = _matmul_block(func)
    if found is None:
        return None
    sch, matmul, epilogues = found
    *_, j, k = sch.get_loops(matmul.block_rv)
    tile, lane = sch.split(j, [None, MATMUL_LANES])
    sch.reorder(tile, k, lane)
    _finish_tile(sch, matmul.block_rv, epilogues, tile, k, lane)
    return sch


def _schedule_nt_matmul(func, _target, _tunable):
    """`C[i, j] = sum_k A[i, k] * W[j, k]`, the dense layers after FuseTransposeMatmul (W in torch's
    [out, in] layout, a parameter): loops `j/16, i, k, j%16`, and per 16 columns W's 16 rows are
    packed into a [k, 16] buffer once, so every row i reads them contiguously. Without it, the
    unfused graph transposes every weight at every call (MiniLM, Node, 48 calls: 0.5 s of
    transposes after tiling; packed: 1.13x faster end to end than tiled matmul + tiled transpose)."""
    found = _matmul_block(func)
    if found is None:
        return None
    sch, matmul, epilogues = found
    if len(matmul.iters) != 3:
        return None
    j_var, k_var = matmul.iters[1].var, matmul.iters[2].var
    weight = [n for n, r in enumerate(sch.get(matmul.block_rv).reads) if len(r.region) == 2
              and r.region[0].min.same_as(j_var) and r.region[1].min.same_as(k_var)]
    if len(weight) != 1:
        return None
    i, j, k = sch.get_loops(matmul.block_rv)
    tile, lane = sch.split(j, [None, MATMUL_LANES])
    sch.reorder(tile, i, k, lane)
    packed = sch.cache_read(matmul.block_rv, weight[0], "global")
    sch.transform_layout(matmul.block_rv, ("read", weight[0]), lambda row, col: (col, row))
    sch.compute_at(packed, tile, preserve_unit_loops=True)
    _finish_tile(sch, matmul.block_rv, epilogues, i, k, lane)
    return sch


def _schedule_transpose(func, _target, _tunable):
    """`out[a, b] = w[b, a]` with static extents: 8x8 tiles, so the strided reads of w stay within
    eight cache lines. What is left of the weight transposes in the f16 library (its operand
    widening sits between transpose and matmul). MiniLM f32 before FuseTransposeMatmul, Node,
    48 calls: w[384, 1536] 0.51 s -> 0.15 s, w[1536, 384] 0.25 s -> 0.17 s."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)
    if not blocks or len(blocks) != 1 or blocks[0].dom_kind() != "SS" \
            or not all(_static_multiple(i.dom, TRANSPOSE_TILE) for i in blocks[0].iters):
        return None
    reads = sch.get(blocks[0].block_rv).reads
    a, b = (i.var for i in blocks[0].iters)
    if len(reads) != 1 or len(reads[0].region) != 2 \
            or not (reads[0].region[0].min.same_as(b) and reads[0].region[1].min.same_as(a)):
        return None
    rows, cols = sch.get_loops(blocks[0].block_rv)
    row_tile, row = sch.split(rows, [None, TRANSPOSE_TILE])
    col_tile, col = sch.split(cols, [None, TRANSPOSE_TILE])
    sch.reorder(row_tile, col_tile, row, col)
    return sch


def build_library(mod, kind: str, output: Path, runtime: Path) -> dict[str, float]:
    """Relax build for `kind` (webgpu kernels + wasm32 host, or wasm32 CPU kernels), system-lib,
    then emcc link into `output`; returns {"build_s", "link_s"}."""
    import tvm
    from tvm import relax

    t0 = time.perf_counter()
    if kind == "webgpu":
        target = tvm.target.Target({"kind": "webgpu", "host": WASM32})
        exe = relax.build(mod, target=target, system_lib=True, relax_pipeline=_webgpu_pipeline(target))
    elif kind == "wasm32-cpu":
        target = tvm.target.Target(WASM32_CPU)
        exe = relax.build(widen_matmul_operands(mod), target=target, system_lib=True,
                          relax_pipeline=wasm32_cpu_pipeline(target))
    else:
        raise ValueError(kind)
    build_s = time.perf_counter() - t0
    timing: dict[str, float] = {"build_s": round(build_s, 1)}

    def fcompile(out: str, objects: list[str], options: Any = None, **_: Any) -> None:
        timing["link_s"] = round(link(list(objects), Path(out), runtime), 1)

    fcompile.object_format = "o"  # type: ignore[attr-defined]  # .o, not bitcode (see module docstring)
    exe.export_library(str(output), fcompile=fcompile)
    return timing


def wgsl_source(exe_mod) -> str:
    """All WGSL kernels of a webgpu build (for inspection and the no-`inff` check)."""
    return "".join(m.inspect_source() for m in exe_mod.imports[0].imports if m.kind == "webgpu")
