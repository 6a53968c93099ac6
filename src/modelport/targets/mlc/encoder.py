"""MLC / WebLLM target: an embedding package WebLLM (@mlc-ai/web-llm 0.2.86) loads in the browser.

    <out>/<v>/   mlc-chat-config.json  tensor-cache.json  params_shard_*.bin
                 tokenizer.json (no fixed padding, truncation at the real max length)
                 tokenizer_config.json  vocab.txt  special_tokens_map.json
                 <model>-<v>-webgpu.wasm              the model library WebLLM runs (prefill + _metadata)
    <out>/libs/<model>-<v>-wasm32-cpu.wasm   the same Relax module with wasm32 CPU kernels
    <out>/webllm-app-config.js               appConfig(base) / fromHub(repo) -> WebLLM appConfig
    <out>/README.md                          how to load it, and the special-token rule

Each variant folder is a package WebLLM loads from a hub repo: published as <user>/<name>, its
model URL is .../<user>/<name>/resolve/main/<v>/ (why: layout.py). Variants (<v>):
f32 (q0f32) and f16 (q0f16: float16 weights and compute; its app-config entry declares
`required_features: ["shader-f16"]`, which WebLLM checks before loading).

mlc-llm is not installable here; the package is built with Apache TVM (Relax) directly
(`targets/mlc/build.py`). Validation runs the wasm32 CPU library in Node through TVM's web runtime
(MLCSession.runner; every golden case, ≤ 1e-5 for f32, the fp16 gate for f16) and, when Chromium is
available, WebLLM itself in headless Chromium with SwiftShader WebGPU (MLCSession.extra_metrics;
`targets/mlc/browser.py`); SwiftShader has no shader-f16, so f16 is reported "not run" there.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...dequantized import runtime_check, write_reference
from ...errors import ModelportError
from ...families import ENCODER
from ...families.encoder import EncoderRunner
from ...fsutil import read_json, write_json
from ...manifest import TargetInfo
from ...reference import Golden
from ..registry import ArtifactSession, ConvertContext, Converter, NoOptions, register
from . import browser, build, quantize
from .node_process import NodeProcess, node  # noqa: F401  (node: the runtime check the converters share)
from .layout import APP_CONFIG, JS, VARIANTS, lib_path, model_name, package_dir

# f16 is built from a float16 torch.export (see build.frontend_converters for why it imports).
# Its inputs stay int32 (ids, mask) and the tensor WebLLM reads stays float32: the graph casts the
# last hidden state to float32 before pooling. It must: web-llm 0.2.86's EmbeddingPipeline copies
# prefill's output to the CPU and calls `toArray()`, which in @mlc-ai/web-runtime 0.27.0-dev0 knows
# float32/float64/int32/int8/uint8 and throws "Unsupported data type float16". (Pooling and
# normalization also stay out of float16 that way.)
DEFAULT_VARIANTS = tuple(VARIANTS)
QUANTIZATION = {"f32": "q0f32", "f16": "q0f16", "q4f32_1": "q4f32_1", "q4f16_1": "q4f16_1"}
DTYPE = {"f32": "float32", "f16": "float16", "q4f32_1": "float32", "q4f16_1": "float16"}
# MLC's 4-bit formats (quantize.py): weights stored 4-bit, dequantized inside the kernels
GROUP_QUANTIZED = ("q4f32_1", "q4f16_1")
# WebGPU features a variant's kernels need: WebLLM's ModelRecord.required_features (0.2.86), which
# it checks against the device before loading (ShaderF16SupportError otherwise); its device request
# enables shader-f16 whenever the adapter has it.
REQUIRED_FEATURES: dict[str, list[str]] = {"f32": [], "f16": ["shader-f16"], "q4f32_1": [],
                                            "q4f16_1": ["shader-f16"]}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

Step = Callable[[str], Any]


# --- package files ----------------------------------------------------------------------------------------

def fix_tokenizer_json(path: Path, max_length: int) -> None:
    """WebLLM feeds every id tokenizer.encode() returns with mask 1: a fixed padding baked into
    tokenizer.json (all-MiniLM-L6-v2 ships Fixed 128) would be pooled as real tokens. No padding;
    truncation at the length the reference was computed at."""
    tj = read_json(path)
    tj["padding"] = None
    tj["truncation"] = {"direction": "Right", "max_length": max_length, "strategy": "LongestFirst", "stride": 0}
    path.write_text(json.dumps(tj, ensure_ascii=False))


def special_tokens(source) -> dict[str, Any]:
    """The tokens the reference tokenizer adds around a text ([CLS] ... [SEP] for BERT)."""
    from ...torch_model import load_tokenizer

    tok = load_tokenizer(source)
    ids = tok("a")["input_ids"]
    bare = tok("a", add_special_tokens=False)["input_ids"]
    n = len(ids) - len(bare)
    head = ids[: ids.index(bare[0])] if bare and bare[0] in ids else ids[:n]
    tail = ids[len(head) + len(bare):]
    return {"prefix_ids": head, "suffix_ids": tail, "prefix": tok.convert_ids_to_tokens(head),
            "suffix": tok.convert_ids_to_tokens(tail), "pad_token_id": tok.pad_token_id or 0}


def chat_config(config: dict[str, Any], recipe, variant: str, specials: dict[str, Any],
                tokenizer_files: list[str]) -> dict[str, Any]:
    """mlc-chat-config.json as WebLLM 0.2.86 reads it (ChatConfig): the generation fields are
    required by its parser even for an embedding model."""
    ctx = recipe.max_length
    return {
        "version": "0.1.0",
        "model_type": config["model_type"],
        "quantization": QUANTIZATION[variant],
        "model_config": {k: config[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                 "num_attention_heads", "intermediate_size", "hidden_act",
                                                 "layer_norm_eps") if k in config}
        | {"context_window_size": ctx, "prefill_chunk_size": ctx, "max_batch_size": build.MAX_BATCH},
        "vocab_size": config["vocab_size"],
        "context_window_size": ctx,
        "sliding_window_size": -1,
        "prefill_chunk_size": ctx,
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "temperature": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
        "top_p": 1.0,
        "tokenizer_files": tokenizer_files,
        "tokenizer_info": {"token_postproc_method": "byte_fallback", "prepend_space_in_encode": False,
                           "strip_space_in_decode": False},
        "conv_template": {"name": "LM", "system_template": "{system_message}", "system_message": "",
                          "roles": {"user": "", "assistant": ""}, "role_templates": {}, "messages": [],
                          "seps": [""], "role_content_sep": "", "role_empty_sep": "", "stop_str": [],
                          "system_prefix_token_ids": specials["prefix_ids"],
                          "stop_token_ids": specials["suffix_ids"], "add_role_after_system_message": True},
        "pad_token_id": specials["pad_token_id"],
        "bos_token_id": (specials["prefix_ids"] or [0])[0],
        "eos_token_id": (specials["suffix_ids"] or [0])[0],
        "modelport": {"pooling": recipe.pooling, "normalize": recipe.normalize,
                      "prefill_row0": "sentence embedding (pooling + normalization already applied)",
                      "special_tokens": specials},
    }


def model_parameters(params: dict[str, np.ndarray]) -> int:
    """How many model weights the stored tensors hold: a 4-bit `q_weight` word holds eight, a
    `q_scale` none of its own (so BitsPerParam reads ~4.5 for q4f16_1 and 32 for q0f32, as in
    mlc-llm's packages)."""
    return int(sum(a.size * quantize.PER_WORD if n.endswith(".q_weight") else 0 if n.endswith(".q_scale") else a.size
                   for n, a in params.items()))


def write_tensors(params: dict[str, np.ndarray], pkg: Path) -> None:
    """tensor-cache.json + params_shard_*.bin in `pkg`, raw (no bf16 re-encoding), with mlc-llm's
    metadata (BitsPerParam counted per model weight: model_parameters). Embedding and chat packages."""
    from tvm.contrib import tvmjs

    n_bytes = int(sum(a.nbytes for a in params.values()))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress even with show_progress=False
        tvmjs.dump_tensor_cache(params, str(pkg), encode_format="raw", show_progress=False,
                                meta_data={"ParamSize": len(params), "ParamBytes": n_bytes,
                                           "BitsPerParam": 8.0 * n_bytes / max(1, model_parameters(params))})


def write_package(source, recipe, variant: str, params: dict[str, np.ndarray], pkg: Path,
                  specials: dict[str, Any]) -> None:
    """tensor-cache.json + params_shard_*.bin (raw: no bf16 re-encoding), tokenizer, chat config."""
    pkg.mkdir(parents=True, exist_ok=True)
    write_tensors(params, pkg)
    copied = []
    for name in TOKENIZER_FILES:
        if (source.path / name).is_file():
            shutil.copyfile(source.path / name, pkg / name)
            copied.append(name)
    if "tokenizer.json" not in copied:
        raise ModelportError(f"no tokenizer.json in {source.path}: WebLLM needs the fast tokenizer file")
    fix_tokenizer_json(pkg / "tokenizer.json", recipe.max_length)
    tok_cfg = read_json(pkg / "tokenizer_config.json") if "tokenizer_config.json" in copied else {}
    tok_cfg["model_max_length"] = recipe.max_length
    write_json(pkg / "tokenizer_config.json", tok_cfg)
    files = [f for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json") if (pkg / f).is_file()]
    write_json(pkg / "mlc-chat-config.json", chat_config(source.config, recipe, variant, specials, files))


def app_config_js(model: str, variants: list[str], model_type: str = "1 /* ModelType.embedding */") -> str:
    """webllm-app-config.js: appConfig(base) for the package served at `base`, fromHub(repo) for it
    published as a hub repo. WebLLM 0.2.86 appends `resolve/main/` to a model URL without
    `/resolve/<rev>/` (cleanModelUrl) and fetches model_lib as given, so both URLs are built here
    from one `.../resolve/<rev>/` base, and a base of another shape is refused with the reason
    instead of WebLLM fetching a wrong URL."""
    here = Path(".")

    def features(v: str) -> str:
        return f", required_features: {json.dumps(REQUIRED_FEATURES[v])}" if REQUIRED_FEATURES[v] else ""

    entries = ",\n".join(
        f'    {{ model: url("{package_dir(here, v).as_posix()}/"), model_id: "{model}-{v}", '
        f'model_lib: url("{lib_path(here, model, v, "webgpu").as_posix()}"){features(v)}, '
        f'model_type: {model_type} }}'
        for v in variants)
    return f"""\
// WebLLM appConfig for this package (generated by modelport). Usage:
//   import {{ fromHub }} from "./{APP_CONFIG}";   // a copy of this file in your app
//   const engine = await CreateMLCEngine("{model}-{variants[0]}", {{ appConfig: fromHub("<user>/<repo>") }});
// appConfig(base): the package served at `base`, a URL ending in /resolve/<revision>/ (the hub's
// shape: WebLLM appends resolve/main/ to a model URL without it). Default: where this file is.
// WebLLM adds no special tokens: embed token ids, or wrap each text yourself (see README.md).
const WEBLLM_RESOLVED_URL = /.+\\/resolve\\/.+\\//;  // web-llm 0.2.86 cleanModelUrl keeps such a URL as is

export function appConfig(base = new URL(".", import.meta.url).href) {{
  const url = (path) => new URL(path, base).href;
  if (!WEBLLM_RESOLVED_URL.test(url("{package_dir(here, variants[0]).as_posix()}/"))) {{
    throw new Error(`appConfig: ${{base}} does not end in /resolve/<revision>/: WebLLM would append resolve/main/ to it`);
  }}
  return {{ model_list: [
{entries}
  ] }};
}}

export function fromHub(repo, {{ hub = "https://huggingface.co", revision = "main" }} = {{}}) {{
  return appConfig(`${{hub}}/${{repo}}/resolve/${{revision}}/`);
}}
"""


F16_README = (" f16 stores float16 weights and runs float16 WebGPU kernels: it needs a GPU and browser "
              "with the WebGPU `shader-f16` feature (its appConfig entry declares it; WebLLM throws "
              "ShaderF16SupportError otherwise), so offer f32 as the fallback.")


def readme(model: str, variants: list[str], specials: dict[str, Any], max_length: int) -> str:
    """The artifact's README (`modelport publish` replaces it with the model card, which says the same)."""
    pre, suf = " ".join(specials["prefix"]), " ".join(specials["suffix"])
    return f"""# {model}: MLC / WebLLM embedding package (modelport)

Each variant folder ({", ".join(f"`{package_dir(Path('.'), v).as_posix()}/`" for v in variants)}) is one WebLLM package: chat config,
tensor cache, tokenizer and its WebGPU model library. Published with `modelport publish`, load it
by hub id with @mlc-ai/web-llm 0.2.86:

```js
import {{ CreateMLCEngine }} from "@mlc-ai/web-llm";
import {{ fromHub }} from "./{APP_CONFIG}";  // copied from this folder
const engine = await CreateMLCEngine("{model}-{variants[0]}", {{ appConfig: fromHub("<user>/<repo>") }});
const r = await engine.embeddings.create({{ input: ["{f"{pre} A sentence to embed. {suf}".strip()}"] }});
```

Served from your own server instead: WebLLM appends `resolve/main/` to a model URL without
`/resolve/<revision>/`, so serve this folder under such a path and pass it to `appConfig`:
`mkdir -p www/m/resolve && ln -s "$PWD" www/m/resolve/main && python3 -m http.server -d www 8000`,
then `appConfig("http://127.0.0.1:8000/m/resolve/main/")`.

Variants: {", ".join(variants)}.{F16_README if "f16" in variants else ""} Each embedding is the model's own sentence embedding (pooling and
normalization applied inside the library); WebLLM returns row 0 of `prefill`'s output.

**Special tokens.** WebLLM's tokenizer adds none. Either embed token ids from a tokenizer that adds
them, or wrap every text as `{pre} <text> {suf}` before `embeddings.create`. tokenizer.json truncates
at {max_length} tokens (the length validated); a wrapped text longer than that loses its final
`{suf}`, so truncate long texts to {max_length - len(specials["prefix_ids"]) - len(specials["suffix_ids"])} tokens before wrapping.
"""


# --- convert ----------------------------------------------------------------------------------------------

def convert(source, recipe, variants: list[str], out: Path, step: Step) -> TargetInfo:
    runtime = build.build_runtime(step)
    specials = special_tokens(source)
    (out / "libs").mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    for name in variants:
        dequantized: dict[str, np.ndarray] = {}

        def group_quantize(model: Any, name: str = name) -> None:
            dequantized.update(quantize.quantize_modules(model, DTYPE[name]))

        step(f"{name}: torch.export -> Relax (prefill, encode, _metadata)")
        mod, params = build.import_relax(source, recipe, DTYPE[name],
                                         transform=group_quantize if name in GROUP_QUANTIZED else None)
        mod, _ = build.add_metadata(mod, params, recipe.max_length, QUANTIZATION[name])
        write_package(source, recipe, name, params, package_dir(out, name), specials)
        timings: dict[str, Any] = {}
        for kind in ("wasm32-cpu", "webgpu"):
            step(f"{name}: build {kind} library (Relax -> wasm objects -> emcc link)")
            timings[kind] = build.build_library(mod, kind, lib_path(out, source.name, name, kind), runtime)
        info[name] = {"quantization": QUANTIZATION[name],
                      "package": f"{package_dir(out, name).relative_to(out)}/",  # what the variant weighs
                      "model_lib": str(lib_path(out, source.name, name, "webgpu").relative_to(out)),
                      "validation_lib": str(lib_path(out, source.name, name, "wasm32-cpu").relative_to(out)),
                      "required_features": REQUIRED_FEATURES[name],
                      "seconds": timings}
        if dequantized:
            step(f"{name}: reference: PyTorch with {name}'s dequantized weights")
            info[name]["dequantized_reference"] = write_reference(out, name, source, recipe, Golden.load(out),
                                                                  dequantized)
            info[name]["group_quantization"] = {"group_size": quantize.GROUP, "bits": quantize.BITS,
                                                "storage": "uint32", "scale_dtype": DTYPE[name],
                                                "tensors": len(dequantized)}
    (out / APP_CONFIG).write_text(app_config_js(source.name, variants))
    (out / "README.md").write_text(readme(source.name, variants, specials, recipe.max_length))
    return TargetInfo.of(
        "mlc", ENCODER.name, variants, VARIANTS, per_variant=info,
        layout="WebLLM (per variant folder: mlc-chat-config.json, tensor-cache.json, params_shard_*.bin, "
               "tokenizer and its WebGPU model library; wasm32 CPU libraries for the Node check in libs/)",
        max_batch_size=build.MAX_BATCH,
        special_tokens=specials,
        apache_tvm=tvm_version(),
        web_runtime={"dir": runtime.name, "build_s": build.runtime_build_seconds(runtime),
                     "emcc": build.emcc_version()},
    )


def tvm_version() -> str:
    from importlib.metadata import version

    return version("apache-tvm")


# --- validation: the wasm32 CPU library in Node -----------------------------------------------------------

class NodeRunner(NodeProcess):
    """One Node process serving every request for one library (module and weights load once)."""

    def __init__(self, wasm: Path, pkg: Path) -> None:
        super().__init__("node_runner.mjs", wasm, pkg, "runner")

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        _, outs = self.request({"shape": list(ids.shape), "input_ids": ids.astype(np.int32).ravel().tolist(),
                                "attention_mask": mask.astype(np.int32).ravel().tolist()})
        return outs


def _key(feeds: dict[str, np.ndarray]) -> bytes:
    return feeds["input_ids"].astype(np.int64).tobytes() + str(feeds["input_ids"].shape).encode()


def prefill_check(golden, outputs: dict[bytes, list[np.ndarray]]) -> dict[str, Any]:
    """prefill's tensor from the Node run (what WebLLM reads): row 0 must be the sentence
    embedding, rows 1.. the token embeddings, bit for bit."""
    result: dict[str, Any] = {"failures": []}
    worst = 0.0
    for case in golden.cases:
        feeds = golden.inputs(case["name"])
        if _key(feeds) not in outputs:
            continue
        hidden, pooled, webllm = outputs[_key(feeds)]
        real = feeds["attention_mask"].astype(bool)
        real[:, 0] = False
        worst = max(worst, float(np.abs(webllm[:, 0] - pooled).max()),
                    float(np.abs(webllm - hidden)[real].max()) if real.any() else 0.0)
    result["prefill_vs_encode_max_abs"] = worst
    if not outputs:
        result["failures"].append("no Node run to check prefill against")
    elif worst != 0.0:
        result["failures"].append(f"prefill (what WebLLM reads) differs from encode by {worst:.3g}")
    return result


class MLCSession(ArtifactSession):
    """One MLC artifact under validation.

    Per variant: the Node process running its wasm32 CPU library, and that run's outputs memoized
    per input, so extra_metrics checks prefill's tensor (what WebLLM reads) from the same run.
    Per artifact: the variants whose WebLLM Chromium check did not run and why (f16 without
    shader-f16, MODELPORT_MLC_BROWSER=off, ...): the family's per-variant notes come only from the
    numeric evaluation, so extra_metrics records them here and notes() puts them in the report,
    where a check that did not run is said, not silently absent.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.node_runners: dict[str, NodeRunner] = {}
        self.outputs: dict[str, dict[bytes, list[np.ndarray]]] = {}
        self.browser_notes: list[str] = []

    def runner(self, variant: str) -> EncoderRunner:
        """Golden cases fed by token ids to encode()."""
        model = model_name(self.root)
        node_runner = NodeRunner(lib_path(self.root, model, variant, "wasm32-cpu"), package_dir(self.root, variant))
        outputs: dict[bytes, list[np.ndarray]] = {}
        self.node_runners[variant], self.outputs[variant] = node_runner, outputs

        def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            if "token_type_ids" in feeds and np.any(feeds["token_type_ids"]):
                raise ModelportError("the MLC library takes no token_type_ids (WebLLM passes none): they must be 0")
            key = _key(feeds)
            if key not in outputs:
                outputs[key] = node_runner(feeds["input_ids"], feeds["attention_mask"])
            hidden, pooled, _ = outputs[key]
            return hidden, pooled

        return run

    def extra_metrics(self, variant: str, runner: Any, golden: Any) -> dict[str, Any]:
        """What WebLLM reads, two ways: prefill's tensor from the Node run (prefill_check), then
        WebLLM itself in Chromium (browser.validate_in_chromium)."""
        result = prefill_check(golden, self.outputs.get(variant, {}))
        if variant in GROUP_QUANTIZED:  # the memoized Node run against PyTorch on the same 4-bit weights
            dequant = runtime_check(self.root, variant, runner, golden, "the wasm32 CPU library in Node",
                                    DTYPE[variant])
            result["dequantized_reference"] = dequant["dequantized_reference"]
            result["failures"] += dequant["failures"]
        node_runner = self.node_runners.pop(variant, None)
        if node_runner is not None:
            node_runner.finish(result)
        return browser.merge(result, browser.validate_in_chromium(self.root, variant, golden), variant,
                             self.browser_notes)

    def notes(self) -> list[str]:
        return ["numerics gated on the wasm32 CPU library in Node (TVM web runtime, WebLLM's calling convention); "
                "the WebGPU library is run by WebLLM in headless Chromium (SwiftShader) where available",
                *self.browser_notes]


def runtime_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    try:  # the validator needs no TVM: it runs the built libraries in Node and Chromium
        versions["apache-tvm"] = version("apache-tvm")
    except PackageNotFoundError:
        pass
    for pkg in ("@mlc-ai/web-runtime", "@mlc-ai/web-llm"):
        path = JS / "node_modules" / pkg / "package.json"
        if path.is_file():
            versions[pkg] = read_json(path)["version"]
    if shutil.which("node"):
        versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return versions


@register
class MLCEncoder(Converter):
    """Sentence encoders -> a WebLLM embedding package (f32 = q0f32, f16 = q0f16)."""

    target = "mlc"
    family = ENCODER.name
    variants = VARIANTS
    defaults = DEFAULT_VARIANTS
    Options = NoOptions
    requires = ("torch", "transformers", "tvm")
    runtime_requires = ()  # Node and Chromium run the libraries: the validator needs no TVM

    def adapt_recipe(self, recipe: Any, options: Any) -> Any:
        """WebLLM's embedding pipeline pools and normalizes in its own code (CLS or mean, L2): a
        contract beyond that (Dense layers, last-token pooling, a truncation) would be dropped."""
        head = recipe.head
        beyond = [what for what, on in (("Dense layers", bool(head.dense)), ("last-token pooling",
                  head.pooling == "last_token"), (f"--truncate-dim {head.truncate_dim}", bool(head.truncate_dim)))
                  if on]
        if beyond:
            raise ModelportError(f"the mlc target cannot carry this model's {' and '.join(beyond)}: WebLLM's embedding "
                                 f"pipeline applies only CLS or mean pooling and L2 normalization (use -t onnx for "
                                 f"the browser)")
        return recipe

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step)

    def open(self, artifact: Path) -> MLCSession:
        return MLCSession(artifact)

    def runtime_versions(self) -> dict[str, str]:
        return runtime_versions()
