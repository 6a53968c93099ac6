"""README.md model cards for published artifacts, generated from manifest.json alone.

A card states what the hub needs to index the model (YAML front matter: base_model, library_name,
tags, pipeline_tag, license), how to call it from the target's client, what the validation
measured per variant, what each file weighs, and how to rebuild it. Everything comes from the
manifest, so a card can never claim more than the artifact's own record: a new target only needs a
row in TARGET_CARDS (its hub library name and a usage snippet); the tables are target-agnostic.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HUB_URL = "https://huggingface.co"
PIPELINE_TAGS = {"sentence-encoder": "feature-extraction"}


@dataclass(frozen=True)
class TargetCard:
    """What differs per target: the hub's library id, the client the snippet is for, and the snippet.

    `snippet` is a str.format template; the fields are those of `snippet_fields`.
    """

    library_name: str | None
    client: str
    language: str
    snippet: str


TARGET_CARDS: dict[str, TargetCard] = {
    "onnx": TargetCard(
        "transformers.js", "transformers.js (browser: WebGPU or wasm; Node)", "js",
        """\
import {{ pipeline }} from "@huggingface/transformers";

// dtype picks the file: {dtypes}
const extractor = await pipeline("feature-extraction", "{repo}", {{ dtype: "{variant}", device: "webgpu" }});
const output = await extractor(["A sentence to embed."], {{ pooling: "{pooling}", normalize: {normalize_js} }});
console.log(output.dims); // [1, {hidden}]""",
    ),
    "coreml": TargetCard(
        "coreml", "Core ML (Swift, iOS / macOS)", "swift",
        """\
import CoreML

// {variant_file} from this repo; Core ML compiles a package once, then loads the compiled model.
let compiled = try await MLModel.compileModel(at: packageURL)
let model = try MLModel(contentsOf: compiled)
// Token ids from tokenizer.json (truncate at {max_length}), shape [1, sequence length].
{swift_inputs}
let features = try MLDictionaryFeatureProvider(dictionary: [{swift_feeds}])
let out = try await model.prediction(from: features)
let embedding = out.featureValue(for: "{pooled_output}")!.multiArrayValue!  // {hidden} floats""",
    ),
    "mlx": TargetCard(
        "mlx", "MLX (Python, Apple silicon)", "python",
        """\
from pathlib import Path

import mlx.core as mx
from huggingface_hub import snapshot_download
from tokenizers import Tokenizer

from modelport.targets.mlx import load_model  # the forward pass the validation ran

# One folder per variant: {variant_dirs}
folder = Path(snapshot_download("{repo}", allow_patterns=["{variant_dir}/*"])) / "{variant_dir}"
model = load_model(folder)
enc = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("A sentence to embed.")
ids, mask = mx.array([enc.ids]), mx.array([enc.attention_mask])
hidden = model(ids, mask, {mlx_token_types})
{mlx_pool}""",
    ),
    "mlc": TargetCard(
        "mlc-llm", "WebLLM (browser, WebGPU)", "js",
        """\
import {{ CreateMLCEngine }} from "@mlc-ai/web-llm";

const appConfig = {{
  model_list: [{{
    model: "{hub_url}/{repo}",
    model_id: "{model_id}",
    model_lib: "{model_lib}",
    model_type: 1, // ModelType.embedding
  }}],
}};
const engine = await CreateMLCEngine("{model_id}", {{ appConfig }});
const result = await engine.embeddings.create({{ input: ["A sentence to embed."] }});""",
    ),
}


def source_hub_id(man: dict[str, Any]) -> str | None:
    """The hub model the weights came from: the recorded hub_id, else an `hf:` origin, else a known model's.

    The fallbacks cover manifests written before modelport recorded hub_id. A tiny random model has
    no hub id: it is shaped like a hub model but is not derived from its weights.
    """
    from .source import MODELS

    source = man.get("source", {})
    if source.get("hub_id"):
        return source["hub_id"]
    origin = source.get("origin") or ""
    if origin.startswith("hf:"):
        return origin[3:].split("@")[0]
    known = MODELS.get(source.get("name", ""))
    return known.hub_id if known and "hub_id" not in source else None


def source_license(man: dict[str, Any]) -> str | None:
    """The source's license as recorded at conversion, else read from the source dir if it is still there."""
    source = man.get("source", {})
    if source.get("license"):
        return source["license"]
    path = Path(source.get("path") or "")
    if source.get("path") and (path / "config.json").is_file():
        from .fsutil import read_json
        from .source import read_license

        return read_license(path, read_json(path / "config.json"))
    return None


def front_matter(man: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata, in the hub's vocabulary (keys omitted when unknown)."""
    target = man["target"]
    card = TARGET_CARDS.get(target["name"])
    meta: dict[str, Any] = {}
    if lic := source_license(man):
        meta["license"] = lic
    if base := source_hub_id(man):
        meta["base_model"] = base
    if card and card.library_name:
        meta["library_name"] = card.library_name
    if tag := PIPELINE_TAGS.get(man.get("recipe", {}).get("family", "")):
        meta["pipeline_tag"] = tag
    meta["tags"] = ["modelport", target["name"], *target["variants"]]
    return meta


def snippet_fields(man: dict[str, Any], repo: str) -> dict[str, str]:
    """Values the snippet templates use, all derived from the manifest."""
    target, recipe = man["target"], man.get("recipe", {})
    variants = list(target["variants"])
    variant = variants[0]
    variant_file = target["variants"][variant]["file"]
    inputs = recipe.get("inputs", ["input_ids", "attention_mask"])
    outputs = target.get("outputs") or recipe.get("outputs") or ["last_hidden_state", "sentence_embedding"]
    pooling, normalize = recipe.get("pooling", "mean"), bool(recipe.get("normalize", False))
    pool = ("emb = hidden[:, 0]" if pooling == "cls" else
            "emb = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)")
    norm = "\nemb = emb / mx.linalg.norm(emb, axis=-1, keepdims=True)" if normalize else ""
    return {
        "repo": repo,
        "hub_url": HUB_URL,
        "variant": variant,
        "dtypes": ", ".join(variants),
        "variant_file": variant_file,
        "variant_dir": variant_file.split("/")[0],
        "variant_dirs": ", ".join(target["variants"][v]["file"].split("/")[0] for v in variants),
        "pooling": pooling,
        "normalize_js": "true" if normalize else "false",
        "hidden": str(recipe.get("hidden_size", "?")),
        "max_length": str(recipe.get("max_length", "?")),
        "swift_inputs": "\n".join(f"let {_camel(n)} = try MLMultiArray(shape: [1, length], dataType: .int32)"
                                  for n in inputs),
        "swift_feeds": ", ".join(f'"{n}": {_camel(n)}' for n in inputs),
        "pooled_output": outputs[-1],
        "mlx_token_types": "mx.zeros_like(ids)" if "token_type_ids" in inputs else "None",
        "mlx_pool": f"{pool}  # {pooling} pooling{', L2-normalized' if normalize else ''}{norm}",
        "model_id": f"{repo.split('/')[-1]}-{variant}",
        "model_lib": target.get("model_lib", "<model library .wasm from this repo>"),
    }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


def _num(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def validation_section(man: dict[str, Any]) -> str:
    """One row per variant from manifest["validation"], with the gate each one had to meet."""
    from .report import variant_bytes

    val = man.get("validation", {})
    variants = man["target"]["variants"]
    lines = [
        "## Validation",
        "",
        f"Status: **{val.get('status', 'not-run')}** (runtime: {val.get('runtime', '–')}). Each variant ran "
        "modelport's fixed validation set (single texts in several scripts and lengths, plus padded batches) "
        "and was compared with PyTorch fp32 running the original checkpoint. Max abs is over non-padding "
        "token embeddings and the pooled embedding; cosine is of the pooled embedding per text; top-5 is "
        "retrieval agreement with the reference.",
        "",
        "| variant | precision | verdict | size | tok max abs | pooled max abs | cos min | cos mean | top-5 | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in val.get("variants", {}).items():
        m = r.get("metrics") or {}
        gate = ", ".join(f"{k} {v}" for k, v in (r.get("thresholds") or {}).items() if k != "batch_invariant")
        lines.append(
            f"| {name} | {r.get('precision', '?')} | {r.get('verdict', '?')} | "
            f"{_mb(variant_bytes(man, variants.get(name, {}).get('file', '')))} | "
            f"{_num(m.get('tokens_max_abs'), '.1e')} | {_num(m.get('pooled_max_abs'), '.1e')} | "
            f"{_num(m.get('cos_min'), '.6f')} | {_num(m.get('cos_mean'), '.6f')} | "
            f"{_num(m.get('top5_mean'), '.2f')} | {gate or '–'} |"
        )
    notes = list(val.get("notes", []))
    for name, r in val.get("variants", {}).items():
        notes += [f"{name}: {f}" for f in r.get("failures", [])]
    for client, entry in val.get("clients", {}).items():
        notes.append(f"real client {client} ({entry.get('device', '?')}): {entry.get('status', '?')}")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def files_section(man: dict[str, Any]) -> str:
    """Every file the manifest hashes, with its size: what a client downloads."""
    files = man.get("files", {})
    total = sum(f["bytes"] for f in files.values())
    lines = ["## Files", "", f"{len(files)} files, {_mb(total)} in all (sha256 of each in `manifest.json`).", "",
             "| file | size | sha256 |", "|---|---|---|"]
    lines += [f"| `{name}` | {_mb(f['bytes'])} | `{f['sha256'][:16]}…` |" for name, f in sorted(files.items())]
    return "\n".join(lines)


def reproduce_section(man: dict[str, Any], repo_name: str) -> str:
    """How the artifact was made and how to check or rebuild it."""
    source = man.get("source", {})
    hub_id = source_hub_id(man)
    command = man.get("command") or []
    lines = ["## Reproduce", "",
             f"Source: `{source.get('origin', '?')}`"
             + (f", commit `{source['revision']}`" if source.get("revision") else "")
             + "".join(f"; `{k}` sha256 `{v}`" for k, v in sorted(source.get("weights", {}).items())), "",
             "```sh"]
    if hub_id and source.get("revision"):
        lines.append(f"modelport fetch {hub_id}@{source['revision']}")
    if command:
        lines.append(shlex.join(command))
    lines += ["", "# check a downloaded copy: every file's sha256, then every variant re-run on the golden",
              "# inputs and outputs that ship in reference/ (needs only the target's runtime, not torch)",
              f"modelport validate ./{repo_name}", "```", ""]
    images = man.get("images") or {}
    if images:
        lines += ["| step | image (content-derived ID) |", "|---|---|"]
        lines += [f"| {step} | `{ref}` |" for step, ref in images.items()]
    else:
        plat = man.get("platform", {})
        lines.append(f"Converted natively (no container image) on {plat.get('system', '?')} "
                     f"{plat.get('machine', '?')}, Python {plat.get('python', '?')}.")
    tools = man.get("tools", {})
    if tools:
        lines += ["", "Tools: " + ", ".join(f"{k} {v}" for k, v in tools.items()) + "."]
    return "\n".join(lines)


def render(man: dict[str, Any], repo: str | None = None) -> str:
    """The whole README.md for an artifact; `repo` is the hub repo it is published as (for snippets)."""
    import yaml

    target = man["target"]
    repo = repo or f"<user>/{man.get('source', {}).get('name', 'model')}-{target['name']}"
    card = TARGET_CARDS.get(target["name"])
    hub_id = source_hub_id(man)
    what = f"[{hub_id}]({HUB_URL}/{hub_id})" if hub_id else f"`{man.get('source', {}).get('name', '?')}`"
    parts = [
        "---\n" + yaml.safe_dump(front_matter(man), sort_keys=False, allow_unicode=True) + "---",
        f"# {repo.split('/')[-1]}",
        f"{what} converted to **{target['name']}** ({target.get('layout', target['name'])}) by "
        f"modelport: variants {', '.join(target['variants'])}. Every variant was validated "
        "against the PyTorch original; the figures below are copied from `manifest.json`, which also records "
        "the tool versions, the exact command and the sha256 of every file.",
    ]
    if card:
        parts += [f"## Usage: {card.client}",
                  f"```{card.language}\n{card.snippet.format(**snippet_fields(man, repo))}\n```"]
    parts += [validation_section(man), files_section(man), reproduce_section(man, repo.split("/")[-1])]
    return "\n\n".join(parts) + "\n"
