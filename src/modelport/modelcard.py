"""README.md model cards for published artifacts, generated from manifest.json alone.

A card states what the hub needs to index the model (YAML front matter: base_model, library_name,
tags, pipeline_tag, license), how to call it from the target's client, what the validation
measured per variant, what each file weighs, and how to rebuild it. Everything comes from the
manifest, so a card can never claim more than the artifact's own record.

This module knows no family: the artifact's family (`families.of_manifest`) gives the pipeline tag,
the usage snippet for the target (`card_usage` + `card_fields`) and the validation text and table
(`card_validation_intro`, `card_validation_table`). What is the target's alone (its hub library id)
is in LIBRARY_NAMES; the files and reproduce sections are target- and family-agnostic.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from . import families
from .families.cards import mb
from .recipes import CAUSAL_LM

HUB_URL = "https://huggingface.co"
# The hub's library id of each target's artifacts (front matter `library_name`).
LIBRARY_NAMES: dict[str, str] = {"onnx": "transformers.js", "coreml": "coreml", "mlx": "mlx", "mlc": "mlc-llm"}


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
    meta: dict[str, Any] = {}
    if lic := source_license(man):
        meta["license"] = lic
    if base := source_hub_id(man):
        meta["base_model"] = base
    if library := LIBRARY_NAMES.get(target["name"]):
        meta["library_name"] = library
    meta["pipeline_tag"] = families.of_manifest(man).pipeline_tag
    meta["tags"] = ["modelport", target["name"], *target["variants"]]
    return meta


def snippet_fields(man: dict[str, Any], repo: str) -> dict[str, str]:
    """Values the snippet templates use, all derived from the manifest: the target-level ones here,
    the family's own (pooling, prompts, ...) from `Family.card_fields`."""
    target = man["target"]
    variants = list(target["variants"])
    variant = variants[0]
    variant_file = target["variants"][variant]["file"]
    return {
        "repo": repo,
        "hub_url": HUB_URL,
        "variant": variant,
        "dtypes": ", ".join(variants),
        "variant_file": variant_file,
        "variant_dir": variant_file.split("/")[0],
        "variant_dirs": ", ".join(target["variants"][v]["file"].split("/")[0] for v in variants),
        "model_id": f"{repo.split('/')[-1]}-{variant}",
        **TARGET_FIELDS.get(target["name"], no_fields)(target, variant),
        **families.of_manifest(man).card_fields(man, repo),
    }


def no_fields(target: dict[str, Any], variant: str) -> dict[str, str]:
    """A target whose snippet needs only the common fields."""
    return {}


class SnippetUnavailable(Exception):
    """The manifest lacks a value the target's snippet needs: the card says so instead of guessing."""


def webllm_fields(target: dict[str, Any], variant: str) -> dict[str, str]:
    """What WebLLM's ModelRecord needs, as the mlc converter recorded it: the variant's package
    folder (ModelRecord.model) and its WebGPU library (model_lib), both repo paths, and the special
    tokens to wrap texts in (WebLLM's tokenizer adds none: raw texts would embed without them; a chat
    package needs none: its conversation template writes them)."""
    entry = target["variants"][variant]
    embedding = target.get("family") != CAUSAL_LM  # chat packages: WebLLM's conversation template adds them
    missing = [name for name, recorded in (("target.special_tokens", "special_tokens" in target or not embedding),
                                           (f"the model_lib of variant {variant}", "model_lib" in entry))
               if not recorded]
    if missing:
        raise SnippetUnavailable(f"manifest.json does not record {' or '.join(missing)}")
    fields = {
        "package_dir": entry["file"].rsplit("/", 1)[0],
        "model_lib": entry["model_lib"],
        # WebLLM checks these against the device before loading (f16, q4f16_1: shader-f16)
        "required_features": (f"\n    required_features: {json.dumps(entry['required_features'])},"
                              if entry.get("required_features") else ""),
    }
    if embedding:
        specials = target["special_tokens"]
        fields["special_prefix"] = json.dumps("".join(f"{t} " for t in specials["prefix"]))
        fields["special_suffix"] = json.dumps("".join(f" {t}" for t in specials["suffix"]))
    return fields


# Snippet fields only one target's cards use, from what its converter records in the manifest.
TARGET_FIELDS = {"mlc": webllm_fields}


def usage_section(man: dict[str, Any], repo: str) -> str | None:
    """How to call the artifact from its target's client: the family's snippet for the target, if any."""
    card = families.of_manifest(man).card_usage(man["target"]["name"])
    if card is None:
        return None
    try:
        fields = snippet_fields(man, repo)
    except SnippetUnavailable as e:
        return f"## Usage: {card.client}\n\nNo snippet: {e}."
    return f"## Usage: {card.client}\n\n```{card.language}\n{card.snippet.format(**fields)}\n```"


def validation_section(man: dict[str, Any]) -> str:
    """One row per variant from manifest["validation"], in the family's columns, with the gate each met."""
    family = families.of_manifest(man)
    val = man.get("validation", {})
    lines = [
        "## Validation",
        "",
        f"Status: **{val.get('status', 'not-run')}** (runtime: {val.get('runtime', '–')}). "
        + family.card_validation_intro(man),
        "",
        *family.card_validation_table(man),
    ]
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
    lines = ["## Files", "", f"{len(files)} files, {mb(total)} in all (sha256 of each in `manifest.json`).", "",
             "| file | size | sha256 |", "|---|---|---|"]
    lines += [f"| `{name}` | {mb(f['bytes'])} | `{f['sha256'][:16]}…` |" for name, f in sorted(files.items())]
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
    if usage := usage_section(man, repo):
        parts.append(usage)
    parts += [validation_section(man), files_section(man), reproduce_section(man, repo.split("/")[-1])]
    return "\n\n".join(parts) + "\n"
