"""File-system helpers: atomic artifact directories and hashing.

An artifact directory is either complete or absent. Work happens in a hidden sibling temp dir
(same file system, so the final `rename` is atomic) and is moved into place only at the end; an
exception anywhere removes the temp dir. An existing artifact is replaced only with `force`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelportError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) with stable formatting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse early (before any expensive work) to clobber an existing artifact."""
    if out.exists() and not force:
        raise ModelportError(f"output directory {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ModelportError(f"output path {out} exists and is not a directory")


@contextlib.contextmanager
def staging_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temp dir that becomes `out` when the block finishes without an exception."""
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)
    if out.exists():
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / "old")
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def list_files(root: Path, exclude: frozenset[str] = frozenset()) -> list[Path]:
    """All regular files under root, sorted, as paths relative to root (posix order is stable)."""
    files = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    return sorted((p for p in files if p.as_posix() not in exclude), key=lambda p: p.as_posix())


def cache_root() -> Path:
    """Where modelport keeps what it builds (tiny models). `MODELPORT_CACHE` overrides."""
    env = os.environ.get("MODELPORT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modelport"


def write_error_log(what: str, exc: BaseException) -> Path:
    """Write `exc`'s traceback to a log file under the modelport cache; return its path.

    A toolchain crash or a bug gets one line on the terminal plus this file, never a wall of
    traceback: the line says what failed, the file is what to attach to a bug report.
    """
    import time
    import traceback

    logs = cache_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{what}.log"
    path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), encoding="utf-8")
    return path
