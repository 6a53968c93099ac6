"""publish: upload a validated artifact, with a generated model card, to a Hugging Face hub repo.

Only an artifact that proved itself is published: its validation must have run and passed for
every variant it ships, and every file must still match the sha256 recorded in manifest.json (a
file changed after validation is not the file that was validated). What goes up is exactly the
files the manifest hashes, manifest.json itself (the provenance record), and README.md (the card,
from modelcard.py). `--dry-run DIR` writes that same folder and uploads nothing; the real upload
stages the same folder (hard links, no copies) and hands it to `HfApi.upload_folder`, so what a
dry run shows is what is sent (the dry run copies the files, so editing them cannot touch the artifact).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import manifest as manifest_mod
from . import modelcard
from .errors import ModelportError
from .fsutil import staging_dir

CARD = "README.md"


@dataclass(frozen=True)
class Published:
    repo: str
    files: tuple[str, ...]
    url: str | None = None  # the commit, when uploaded
    dry_run: Path | None = None


def publishable_manifest(root: Path) -> dict[str, Any]:
    """The manifest of an artifact fit to publish, or a ModelportError saying why it is not."""
    if not (root / manifest_mod.MANIFEST).is_file():
        raise ModelportError(f"{root} is not a modelport artifact (no {manifest_mod.MANIFEST})")
    man = manifest_mod.load(root)
    val = man.get("validation") or {}
    status = val.get("status", "not-run")
    if status == "not-run":
        raise ModelportError(f"refusing to publish {root}: its validation was not run; run "
                             f"`modelport validate {root}` first")
    if status != "pass":
        failed = [n for n, v in val.get("variants", {}).items() if v.get("verdict") != "pass"]
        raise ModelportError(f"refusing to publish {root}: validation failed for {', '.join(failed) or status}")
    unvalidated = [n for n in man["target"]["variants"] if val.get("variants", {}).get(n, {}).get("verdict") != "pass"]
    if unvalidated:
        raise ModelportError(f"refusing to publish {root}: variant(s) {', '.join(unvalidated)} have no passing "
                             f"validation; run `modelport validate {root}`")
    # A known, explained client difference (tokenizer status "known-difference") leaves the status "pass".
    failed_clients = [c for c, e in val.get("clients", {}).items() if e.get("status") == "fail"]
    if failed_clients:
        raise ModelportError(f"refusing to publish {root}: real client check failed for {', '.join(failed_clients)}")
    problems = manifest_mod.verify_files(root, man)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelportError(f"refusing to publish {root}: files do not match manifest.json ({shown}); "
                             "re-convert, or re-validate if the change is intended")
    return man


def upload_list(man: dict[str, Any]) -> list[str]:
    """Repo paths of the upload: the hashed files, the manifest and the card (which replaces any README)."""
    return sorted({*man["files"], manifest_mod.MANIFEST, CARD})


def stage(root: Path, man: dict[str, Any], dest: Path, repo: str, *, link: bool) -> list[str]:
    """Write the upload folder into `dest` (an empty directory): the artifact files plus README.md.

    link=True hard-links instead of copying (the transient upload folder: no copy of multi-GB weights).
    """
    names = upload_list(man)
    for name in names:
        if name == CARD:
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(root / name, target)
                continue
            except OSError:  # another file system, or links not allowed: copy
                pass
        shutil.copy2(root / name, target)
    (dest / CARD).write_text(modelcard.render(man, repo), encoding="utf-8")
    return names


def check_dry_run_dir(root: Path, dry_run: Path) -> None:
    """--dry-run DIR must be a new folder outside the artifact (inside it, it would change what it copies)."""
    if dry_run.exists():
        raise ModelportError(f"--dry-run directory {dry_run} already exists; give a new path")
    art, dest = root.resolve(), dry_run.resolve()
    if dest == art or art in dest.parents:
        raise ModelportError(f"--dry-run directory {dry_run} is inside the artifact {root}: give a path outside it "
                             "(the dry run writes a copy of the artifact plus README.md)")


def check_repo_id(repo: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo.count("/") != 1:
        raise ModelportError(f"bad --repo {repo!r}: expected <user or org>/<name>")
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ModelportError(f"bad --repo {repo!r}: {e}") from e
    return repo


def hub_token() -> str:
    """HF_TOKEN, else the token saved by `hf auth login` (huggingface_hub's own lookup)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ModelportError("no Hugging Face token: set HF_TOKEN to a token with write access, or run "
                             "`hf auth login` (publish --dry-run DIR needs none)")
    return token


def publish(root: Path, repo: str, *, private: bool = False, dry_run: Path | None = None) -> Published:
    """Check the artifact, then write the upload folder (dry run) or create the repo and upload it."""
    check_repo_id(repo)
    if dry_run is not None:
        check_dry_run_dir(root, dry_run)
    man = publishable_manifest(root)
    if dry_run is not None:
        with staging_dir(dry_run, force=False) as work:
            names = stage(root, man, work, repo, link=False)
        return Published(repo=repo, files=tuple(names), dry_run=dry_run)
    from . import hub

    if hub.offline():  # the same code as `fetch` offline with nothing cached: a setting to change, not a retry
        raise ModelportError(f"publishing to {repo} needs the hub, but HF_HUB_OFFLINE=1: unset HF_HUB_OFFLINE, or "
                             "write the upload folder with --dry-run DIR")
    token = hub_token()
    # Next to the artifact, so hard links work (same file system).
    with tempfile.TemporaryDirectory(dir=root.resolve().parent, prefix=f".{root.name}.publish-") as tmp:
        folder = Path(tmp) / "upload"
        folder.mkdir()
        names = stage(root, man, folder, repo, link=True)
        url = _upload(folder, repo, man, token=token, private=private)
    return Published(repo=repo, files=tuple(names), url=url)


def _upload(folder: Path, repo: str, man: dict[str, Any], *, token: str, private: bool) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .errors import ToolchainError
    from .hub import network_error, unreachable

    target = man["target"]
    message = (f"modelport: {man.get('source', {}).get('name', '?')} -> {target['name']} "
               f"({', '.join(target['variants'])}), validated")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=message)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        first = str(e).strip().splitlines()[0]
        if status is not None and (status >= 500 or status == 429):
            raise ToolchainError(f"publishing to {repo} failed on the hub's side (HTTP {status}): {first}; "
                                 "retry later") from e
        why = {401: "the token was rejected", 403: f"the token may not write to {repo}"}.get(status, "hub error")
        raise ModelportError(f"publishing to {repo} failed: {why} ({first})") from e
    except Exception as e:
        if unreachable(e):
            raise network_error(f"publish {repo}", e) from e
        raise
    return info.commit_url
