"""Hugging Face hub models: fetch once into the standard cache, then convert from the cache.

A hub model is named `org/name[@revision]`. Everything goes through huggingface_hub's own cache
(`HF_HOME`/`HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`), so a model fetched by
modelport is also what transformers and sentence-transformers see, and a cache copied to an
air-gapped machine works there. huggingface_hub reads those variables when it is imported; this
module reads its settings from `huggingface_hub.constants`, the same place the library does, so
the two can never disagree.

Only what a conversion reads is downloaded: safetensors weights, JSON configs, tokenizer files,
sentence-transformers module folders and the model card. Pickle weights (`*.bin`, `*.pt`) can run
code when loaded and are never fetched; neither are other frameworks' weights or ONNX exports.
Downloads resume (huggingface_hub retries a broken transfer from the bytes it already has) and the
resolved commit sha is the snapshot's directory name, which the manifest records as the revision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelportError, ToolchainError

ALLOW_PATTERNS = (
    "*.safetensors",
    "*.json",  # config, tokenizer, sentence-transformers configs, *.safetensors.index.json
    "tokenizer.model", "*.spm", "sentencepiece.bpe.model", "spiece.model", "vocab.txt", "vocab.json",
    "merges.txt", "added_tokens.json",
    "*_Pooling/*", "*_Normalize/*", "*_Dense/*",  # sentence-transformers module folders
    "README.md",  # the model card: license, base model
)
# Applied after ALLOW_PATTERNS: a module folder or a subfolder may hold other formats' weights.
IGNORE_PATTERNS = (
    "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data",
    "onnx/*", "openvino/*", "*.gguf", "*.tflite",
)
REVISION_RE = re.compile(r"^[\w.\-/]+$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubRef:
    """A hub model id and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    @property
    def rev(self) -> str:
        return self.revision or "main"


@dataclass(frozen=True)
class Snapshot:
    """A complete cached snapshot: `path` is `<cache>/models--org--name/snapshots/<commit>`."""

    ref: HubRef
    commit: str
    path: Path
    downloaded: bool  # False when the complete snapshot was already in the cache


def parse(spec: str) -> HubRef:
    """`org/name[@revision]` -> HubRef, or a ModelportError saying what is wrong with it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, sep, revision = spec.partition("@")
    if repo_id.count("/") != 1:
        raise ModelportError(f"bad hub id {spec!r}: expected org/name[@revision], e.g. "
                             "Snowflake/snowflake-arctic-embed-xs@main")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ModelportError(f"bad hub id {spec!r}: {e}") from e
    if sep and (not revision or not REVISION_RE.match(revision) or ".." in revision):
        raise ModelportError(f"bad revision in {spec!r}: expected a branch, tag or commit sha after '@'")
    return HubRef(repo_id, revision or None)


def cache_dir() -> Path:
    """The hub cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _download(ref: HubRef, local_only: bool) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(
        ref.repo_id, revision=ref.revision, cache_dir=cache_dir(), local_files_only=local_only,
        allow_patterns=list(ALLOW_PATTERNS), ignore_patterns=list(IGNORE_PATTERNS),
    )


def cached(ref: HubRef) -> Path | None:
    """The complete cached snapshot for `ref`, without any network call, or None.

    A branch or tag resolves through the cache's `refs/` (the commit it pointed to at the last
    fetch); a snapshot that a broken download left incomplete counts as not cached.
    """
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(_download(ref, local_only=True))
    except LocalEntryNotFoundError:  # includes IncompleteSnapshotError
        return None


def fetch(ref: HubRef, *, refresh: bool = True) -> Snapshot:
    """Make `ref` available in the cache and return its snapshot.

    refresh=True (`modelport fetch`): ask the hub which commit the revision names now and download
    what is missing. refresh=False (conversions): use the cache when it has the revision and only
    go to the hub when it does not. A commit sha never changes, so it is never re-checked. Offline
    (HF_HUB_OFFLINE=1) only the cache is used.
    """
    hit = cached(ref)
    if hit is not None and (offline() or not refresh or COMMIT_RE.match(ref.rev)):
        return _snapshot(ref, hit, downloaded=False)
    if offline():
        raise ModelportError(
            f"{ref} is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE=1: run "
            f"`modelport fetch {ref}` on a machine with hub access (then copy its HF_HOME here), "
            "or unset HF_HUB_OFFLINE"
        )
    try:
        path = Path(_download(ref, local_only=False))
    except Exception as e:
        mapped = _hub_error(ref, e)
        if mapped is None:
            raise
        raise mapped from e
    # The hub may name the same commit (nothing downloaded: every file is already cached) or a newer one.
    return _snapshot(ref, path, downloaded=path != hit)


def _snapshot(ref: HubRef, path: Path, *, downloaded: bool) -> Snapshot:
    """Check that the snapshot can be converted: the allow-list skips pickle weights, say so."""
    if not (path / "config.json").is_file():
        raise ModelportError(f"{ref} has no config.json: not a Hugging Face transformers model")
    if not any(path.glob("*.safetensors")):
        raise ModelportError(
            f"{ref} has no *.safetensors weights: modelport never downloads pickle weights (*.bin, *.pt: they "
            "can run code when loaded); pick a revision with safetensors, or convert the weights locally and "
            "pass the directory"
        )
    return Snapshot(ref=ref, commit=path.name, path=path, downloaded=downloaded)


def unreachable(e: BaseException) -> bool:
    """A connection that failed (refused, DNS, timeout, TLS, proxy): the network, not the input.

    huggingface_hub lets its HTTP client's transport errors through (httpx, or its fork httpx2 in
    huggingface_hub 2.x; requests in 0.x); they are matched by class name so no HTTP client is imported.
    """
    for cls in type(e).__mro__:
        package = cls.__module__.split(".")[0]
        if package in ("httpx", "httpx2") and cls.__name__ == "TransportError":
            return True
        if package in ("requests", "urllib3") and cls.__name__ in ("ConnectionError", "Timeout", "ProtocolError"):
            return True
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(e, (ConnectionError, TimeoutError)) and not isinstance(e, OfflineModeIsEnabled)


def network_error(action: str, e: BaseException) -> ToolchainError:
    """Exit 3 (the environment, worth a retry), naming the hub's address: the line for `unreachable(e)`."""
    from huggingface_hub import constants

    first = (str(e).strip().splitlines() or [""])[0][:200]
    return ToolchainError(f"cannot reach the Hugging Face hub at {constants.ENDPOINT} to {action} "
                          f"({type(e).__name__}: {first}); check the network, a proxy or HF_ENDPOINT, then retry")


UNSAFE_NAME_RE = re.compile(r"^Invalid filename '(?P<name>.*)': (?P<why>.*?)\.(?: Please|$)", re.S)


def _hub_error(ref: HubRef, e: Exception) -> ModelportError | None:
    """One actionable line per hub failure the user can fix; None (keep the traceback) for anything else.

    Exit 2 for what the user named (a missing repo or revision, a gated repo, a repo whose file list
    names a file outside the repo); exit 3 (ToolchainError) when the hub cannot be reached or fails
    on its side (5xx), where a retry may work.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, RevisionNotFoundError):
        return ModelportError(f"revision {ref.rev!r} not found in {ref.repo_id} (a branch, tag or commit sha)")
    if isinstance(e, GatedRepoError):
        return ModelportError(f"{ref.repo_id} is gated: accept its terms on the hub, then set HF_TOKEN "
                              "(or `hf auth login`)")
    if isinstance(e, RepositoryNotFoundError):
        return ModelportError(f"hub model {ref.repo_id} not found at {constants.ENDPOINT} (or it is private: set "
                              "HF_TOKEN to a token that can read it)")
    if isinstance(e, LocalEntryNotFoundError):
        return ToolchainError(f"cannot reach the Hugging Face hub at {constants.ENDPOINT} and {ref} is not in the "
                              f"cache ({cache_dir()}): {str(e).splitlines()[0]}; check the network, a proxy or "
                              "HF_ENDPOINT, then retry")
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        first = str(e).strip().splitlines()[0]
        if status is not None and (status >= 500 or status == 429):
            return ToolchainError(f"the hub at {constants.ENDPOINT} failed to serve {ref} (HTTP {status}): {first}; "
                                  "retry later")
        return ModelportError(f"the hub refused to serve {ref}: {first}")
    unsafe = UNSAFE_NAME_RE.match(str(e)) if isinstance(e, ValueError) else None
    if unsafe:
        # huggingface_hub refuses a listed name that would land outside the snapshot ('../x', '/etc/x')
        # before writing it; files fetched before it stay in the cache as an incomplete snapshot.
        return ModelportError(f"refusing {ref}: the hub lists the file name {unsafe['name']!r}, which would be "
                              f"written outside the model's folder (a file name {unsafe['why']}); nothing was "
                              "written outside the Hugging Face cache: ask the repo owner to rename the file")
    if unreachable(e):
        return network_error(f"download {ref}", e)
    return None


def resolve(spec: str) -> Snapshot:
    """What conversions call for a hub id: cache first, download only when allowed and needed."""
    return fetch(parse(spec), refresh=False)


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    revisions: tuple[tuple[str, tuple[str, ...]], ...]  # (commit, refs pointing at it)
    size_on_disk: int
    last_modified: float


def cached_models() -> list[CachedModel]:
    """Model repos in the hub cache (huggingface_hub.scan_cache_dir), newest first; [] if there is no cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir())
    except CacheNotFound:
        return []
    models = [
        CachedModel(
            repo_id=repo.repo_id,
            revisions=tuple(sorted((rev.commit_hash, tuple(sorted(rev.refs))) for rev in repo.revisions)),
            size_on_disk=repo.size_on_disk,
            last_modified=repo.last_modified,
        )
        for repo in info.repos
        if repo.repo_type == "model"
    ]
    return sorted(models, key=lambda m: (-m.last_modified, m.repo_id))
