"""File-system helpers: atomic artifact directories and hashing.

An artifact directory is either complete or absent. Work happens in a hidden sibling temp dir
(same file system, so the final `rename` is atomic) and is moved into place only at the end; an
exception anywhere removes the temp dir. An existing artifact is replaced only with `force`, and
never anything else (see "output directories" below).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no output locks
    fcntl = None  # type: ignore[assignment]

from .errors import ModelportError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) with stable formatting.

    An OS error names `path` (a full disk fails in write() or close(), whose error carries no file
    name), so the CLI's one line can say where; the temp file never stays behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


class JSONFileError(ModelportError):
    """A file that should hold JSON but cannot be parsed: one line naming the file (exit 2).

    `path` and `why` stay separate so a caller can say more (`validate`: "artifact damaged: ...")."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path} is not valid JSON: {why}")
        self.path = Path(path)
        self.why = why


def read_json(path: Path) -> Any:
    """Parse a UTF-8 JSON file; bad UTF-8, bad JSON or absurd nesting is a JSONFileError naming the file."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise JSONFileError(path, f"not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start})") \
            from None
    except json.JSONDecodeError as e:
        raise JSONFileError(path, f"{e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise JSONFileError(path, "nested too deeply") from None


# --- output directories: checks, a per-output lock, staging, the final rename ------------------------
#
# Nothing lost: `force` replaces only a modelport artifact, never the current directory, the input
# model or a parent of either, never a folder of other files. Nothing doubled: a lock file beside the
# output (`.<name>.lock`, flock) is held from the checks to the final rename, so a second run into the
# same --out stops at once. Nothing leaked: each staging dir records its run (PID_FILE, pid and host,
# locked while the run lives); the next run into the same parent removes those of dead runs.

PID_FILE = ".modelport-pid"  # in every staging dir while it is written; never part of an artifact
LOCK_RETRY_S = 0.3  # a probe (check_output_dir) holds the lock for microseconds: retry that long


def _abs(path: Path) -> Path:
    """Absolute, with '..' folded, symlinks not followed: the path the user named."""
    return Path(os.path.abspath(path))


def lock_path(out: Path) -> Path:
    out = _abs(out)
    return out.parent / f".{out.name}.lock"


def is_artifact(path: Path) -> bool:
    """A directory modelport wrote: an artifact (manifest.json with manifest_version and target.name)
    or a quantize-search folder (search.json with its target and candidates). --force replaces only these."""
    try:
        search = read_json(path / "search.json")
        if isinstance(search, dict) and "candidates" in search and "target" in search:
            return True
    except (OSError, ValueError, ModelportError):
        pass
    try:
        data = read_json(path / "manifest.json")
    except (OSError, ValueError, ModelportError):  # (read_json: JSONFileError for bad JSON)
        return False
    if not isinstance(data, dict) or "manifest_version" not in data:
        return False
    target = data.get("target")
    return isinstance(target, dict) and bool(target.get("name"))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _is_empty(path: Path) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


def check_output_dir(out: Path, force: bool, source: Path | None = None) -> None:
    """Refuse early (before any expensive work) to write where it could clobber something.

    Refused: the current directory or a parent of it; the input model's directory (`source`) or a
    parent of it; an output another modelport run is writing; a symlink or a file; a folder that is
    not a modelport artifact (even with `force`); an existing artifact or empty folder without `force`.
    """
    _check(out, force, source)
    holder = _lock_holder(out)
    if holder is not None:
        raise ModelportError(_busy(out, holder))


def _check(out: Path, force: bool, source: Path | None) -> None:
    real = out.resolve()  # symlinks followed: what would really be replaced
    cwd = Path.cwd().resolve()
    if _within(cwd, real):
        which = "the current directory" if real == cwd else f"a parent of the current directory ({cwd})"
        raise ModelportError(f"--out {out} is {which}; write the artifact to a new folder "
                             "(e.g. --out artifacts/NAME)")
    if source is not None:
        src = source.resolve()
        if _within(src, real):
            which = "the input model's directory" if real == src else f"a parent of the input model ({src})"
            raise ModelportError(f"--out {out} is {which}; write the artifact to another folder")
    named = _abs(out)
    if not os.path.lexists(named):
        return
    if named.is_symlink():
        raise ModelportError(f"output path {out} is a symbolic link; give a new folder or the artifact's real path")
    if not named.is_dir():
        raise ModelportError(f"output path {out} exists and is not a directory")
    if not _is_empty(named) and not is_artifact(named):
        raise ModelportError(f"output directory {out} already exists and is not a modelport artifact (no manifest.json "
                             "of ours); --force replaces only an artifact: choose another --out")
    if not force:
        raise ModelportError(f"output directory {out} already exists; pass --force to replace it")


def _busy(out: Path, pid: int) -> str:
    who = f"pid {pid}" if pid else "pid unknown"
    return f"another modelport run is writing {out} ({who}); wait for it or choose another --out"


def _read_pid(fd: int) -> int:
    os.lseek(fd, 0, os.SEEK_SET)
    words = os.read(fd, 256).decode("ascii", "replace").split()
    return int(words[0]) if words and words[0].isdigit() else 0


def _try_lock(fd: int, shared: bool = False) -> bool:
    """True when locked (or when the file system has no locks: then there is nothing to wait for)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK / EOPNOTSUPP (some network file systems): go on unlocked
        return True
    return True


def _lock_holder(out: Path) -> int | None:
    """The pid (0: unknown) of the run holding `out`'s lock, or None when it is free."""
    try:
        fd = os.open(lock_path(out), os.O_RDONLY)
    except OSError:
        return None
    try:
        return None if _try_lock(fd, shared=True) else _read_pid(fd)
    finally:
        os.close(fd)


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (outermost first)."""
    missing = []
    for p in [folder, *folder.parents]:
        if os.path.lexists(p):
            break
        missing.append(p)
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir()  # (an OSError names the folder: cli maps it to one line)
    return list(reversed(missing))


def _remove_created(created: list[Path]) -> None:
    for p in reversed(created):
        with contextlib.suppress(OSError):
            p.rmdir()  # only if still empty


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s lock file (`<parent>/.<name>.lock`, created with any missing parents; all removed
    again when `out` was not written). A second holder gets one line naming the first one's pid."""
    path = lock_path(out)
    created = _make_parents(path.parent)
    try:
        fd = _acquire(path, out)
    except BaseException:
        _remove_created(created)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        if not os.path.lexists(_abs(out)):
            _remove_created(created)


def _acquire(path: Path, out: Path) -> int:
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if _try_lock(fd):
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # (else its holder removed it between our open and flock: open the new one)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)
            continue
        pid = _read_pid(fd)
        os.close(fd)
        if time.monotonic() > deadline:
            raise ModelportError(_busy(out, pid))
        time.sleep(0.05)


def _mark(folder: Path) -> int:
    """Record this run (pid, host) in `folder`'s PID_FILE and hold a lock on it while the run lives."""
    fd = os.open(folder / PID_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(folder: Path) -> tuple[int, str] | None:
    """(pid, host) of the dead-looking run that wrote `folder`, or None when it may be alive or unknown."""
    try:
        fd = os.open(folder / PID_FILE, os.O_RDONLY)
    except OSError:
        return None  # not ours, or its run is between mkdtemp and writing the record
    try:
        if not _try_lock(fd, shared=True):
            return None  # its run holds the lock: alive
        words = os.read(fd, 512).decode("utf-8", "replace").split()
    finally:
        os.close(fd)
    if len(words) < 2 or not words[0].isdigit():
        return None
    return int(words[0]), words[1]


def clean_stale(parent: Path) -> list[str]:
    """Remove what dead runs (SIGKILL, power loss) left in `parent`; one line for each.

    `.NAME.tmp-*` staging dirs go. `.NAME.old-*` holds an artifact a --force run had moved aside
    when it died: put back if NAME is missing, else removed. A run on another host is only reported;
    on this host a live pid that is not ours (maybe reused) leaves its dir alone. The dead run's lock
    file goes with its dir.
    """
    lines: list[str] = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return lines
    host = socket.gethostname()
    for d in entries:
        name = d.name
        kind = max((k for k in (".tmp-", ".old-") if k in name), key=name.rindex, default=None)  # the last one
        if not name.startswith(".") or kind is None or d.is_symlink() or not d.is_dir():
            continue
        owner = _owner(d)
        if owner is None:
            continue
        pid, where = owner
        if where != host:
            lines.append(f"{d} was left by modelport pid {pid} on host {where}; remove it if no run is active there")
            continue
        if pid != os.getpid() and _pid_alive(pid):
            continue
        target = parent / name[1:name.rindex(kind)]
        old = d / "old"
        if kind == ".old-" and old.is_dir() and not os.path.lexists(target):
            try:
                _rename_noreplace(old, target)
            except OSError:
                pass
            else:
                lines.append(f"restored {target}, which modelport pid {pid} had moved aside to replace it when it died")
                shutil.rmtree(d, ignore_errors=True)
                _remove_free_lock(lock_path(target))
                continue
        shutil.rmtree(d, ignore_errors=True)
        if not os.path.lexists(d):
            lines.append(f"removed {d}, left by modelport pid {pid}, which is no longer running")
            _remove_free_lock(lock_path(target))
    return lines


def _remove_free_lock(path: Path) -> None:
    """A dead run's lock file (free, holding just a pid line); a waiting run re-opens (see `_acquire`)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return
    try:
        if fcntl is not None and _try_lock(fd) and _read_pid(fd) and os.fstat(fd).st_size < 32:
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    os.unlink(path)
    finally:
        os.close(fd)


_NOREPLACE: list[Any] = []


def _noreplace_call() -> Any:
    """A rename that never replaces: renameat2(RENAME_NOREPLACE) on Linux, renamex_np(RENAME_EXCL) on
    macOS; None where neither exists."""
    if not _NOREPLACE:
        import ctypes
        import sys

        fn = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
                f = libc.renamex_np
                fn = lambda a, b: f(a, b, ctypes.c_uint(0x4))  # noqa: E731
            elif hasattr(libc, "renameat2"):
                f = libc.renameat2
                fn = lambda a, b: f(-100, a, -100, b, ctypes.c_uint(1))  # noqa: E731  (AT_FDCWD)
        except OSError:
            fn = None
        _NOREPLACE.append((fn, ctypes.get_errno))
    return _NOREPLACE[0]


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that raises FileExistsError instead of replacing `dst` (plain rename replaces an empty
    directory, and only a check before it can see anything else)."""
    fn, get_errno = _noreplace_call()
    if fn is not None:
        if fn(os.fsencode(src), os.fsencode(dst)) == 0:
            return
        err = get_errno()
        if err in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(e.errno, e.strerror, str(dst)) from e
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _stderr_note(line: str) -> None:
    import sys

    print(f"! {line}", file=sys.stderr)


@contextlib.contextmanager
def staging_dir(out: Path, force: bool, *, source: Path | None = None,
                note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield a temp dir that becomes `out` when the block finishes without an exception.

    Under `out`'s lock: the checks of `check_output_dir` (with the input model's path when given),
    stale staging dirs of dead runs removed (`note` gets a line for each), then the block; at the
    end `out` is replaced only if it is still what was checked: absent, or the artifact (or empty
    folder) `force` named. An exception anywhere removes the temp dir.
    """
    named = _abs(out)
    with output_lock(named):
        _check(out, force, source)
        for line in clean_stale(named.parent):
            (note or _stderr_note)(line)
        checked = _identity(named)
        tmp = Path(tempfile.mkdtemp(dir=named.parent, prefix=f".{named.name}.tmp-"))
        try:
            mark = _mark(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            yield tmp
            os.unlink(tmp / PID_FILE)
            os.chmod(tmp, 0o755)
            _put_in_place(tmp, named, out, checked)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(mark)


def _put_in_place(tmp: Path, named: Path, out: Path, checked: tuple[int, int] | None) -> None:
    appeared = (f"{out} appeared while this run was writing it; it was left as it is and the new artifact "
                "was discarded: move it away and run again")
    if checked is None:
        try:
            _rename_noreplace(tmp, named)
        except FileExistsError:
            raise ModelportError(appeared) from None
        return
    trash = Path(tempfile.mkdtemp(dir=named.parent, prefix=f".{named.name}.old-"))
    try:
        mark = _mark(trash)
    except BaseException:
        shutil.rmtree(trash, ignore_errors=True)
        raise
    old = trash / "old"
    done = False
    try:
        try:
            os.rename(named, old)
        except FileNotFoundError:
            pass  # removed meanwhile: nothing left to replace
        else:
            if _identity(old) != checked or not (is_artifact(old) or _is_empty(old)):
                try:
                    _rename_noreplace(old, named)  # not what was checked: put it back untouched
                except OSError:
                    raise ModelportError(f"{out} was replaced while this run was writing it, and could not be put "
                                         f"back: it is in {old}") from None
                raise ModelportError(f"{out} was replaced while this run was writing it; it was left as it is and "
                                     "the new artifact was discarded: check it and run again")
        try:
            _rename_noreplace(tmp, named)
        except FileExistsError:
            if os.path.lexists(old):
                raise ModelportError(f"{appeared}; the artifact it replaced is in {old}") from None
            raise ModelportError(appeared) from None
        done = True
    finally:
        os.close(mark)
        if done or not os.path.lexists(old):
            shutil.rmtree(trash, ignore_errors=True)
        else:  # an artifact that could not be put back: the user's now (clean_stale skips a dir with no record)
            with contextlib.suppress(OSError):
                os.unlink(trash / PID_FILE)


def list_files(root: Path, exclude: frozenset[str] = frozenset()) -> list[Path]:
    """All regular files under root, sorted, as paths relative to root (posix order is stable)."""
    files = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    skip = exclude | {PID_FILE}  # a staging dir's run record (see staging_dir) is never part of an artifact
    return sorted((p for p in files if p.as_posix() not in skip), key=lambda p: p.as_posix())


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
