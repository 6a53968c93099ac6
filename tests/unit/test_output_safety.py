"""Nothing lost, nothing doubled, nothing leaked (issue 20): the output lock, what --force may
replace, the final rename, SIGTERM/SIGHUP, and staging dirs left by dead runs.

Every CLI test asserts the exit code, exactly one `error:` line and no traceback, nothing left at
--out or beside it, and nothing outside --out modified. Refusals come before the reference run, so
all but the subprocess tests take well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelport import fsutil, tiny
from modelport.cli import main
from modelport.errors import ModelportError

OURS = {"manifest_version": 2, "target": {"name": "onnx"}}  # what makes a folder a modelport artifact


def convert(capsys: pytest.CaptureFixture, model: str, out: Path | str, *extra: str) -> tuple[int, str]:
    rc = main(["convert", model, "--target", "onnx", "--variants", "fp32", "--out", str(out), *extra])
    return rc, capsys.readouterr().err


def one_error(err: str) -> str:
    """The single `error:` line (other lines are progress); no traceback anywhere."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content hash (folders as 'dir'), to prove nothing changed."""
    state = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        state[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def leftovers(out: Path) -> list[str]:
    """Staging (.NAME.tmp-*), trash (.NAME.old-*) and lock (.NAME.lock) entries beside `out`."""
    if not out.parent.exists():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def make_artifact(path: Path, *files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(OURS))
    for name in files:
        (path / name).write_text(name)
    return path


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    """A writable copy of the tiny XLM-R model."""
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(tiny.materialize("tiny-xlm-roberta"), dst)
    return dst


# --- what --force may replace ----------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_out_dot_refused(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = convert(capsys, "tiny-xlm-roberta", ".", *(["--force"] if force else []))
    assert rc == 2
    assert one_error(err).startswith("error: --out . is the current directory")
    assert snapshot(tmp_path) == before


def test_force_on_parent_of_cwd_refused(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    art = make_artifact(tmp_path / "art", "keep.txt")  # an artifact, even: it holds the cwd
    (art / "sub").mkdir()
    monkeypatch.chdir(art / "sub")
    before = snapshot(tmp_path)
    rc, err = convert(capsys, "tiny-xlm-roberta", art, "--force")
    assert rc == 2 and "is a parent of the current directory" in one_error(err)
    assert snapshot(tmp_path) == before


def test_force_on_folder_of_other_files_refused(capsys, tmp_path: Path) -> None:
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    before = snapshot(tmp_path)
    rc, err = convert(capsys, "tiny-xlm-roberta", out, "--force")
    assert rc == 2
    line = one_error(err)
    assert "is not a modelport artifact" in line and "--force replaces only an artifact" in line
    assert snapshot(tmp_path) == before and leftovers(out) == []


def test_force_on_input_model_dir_refused(capsys, model: Path, tmp_path: Path) -> None:
    """Even a model folder that carries a manifest of ours (an MLX artifact is a model folder) is
    never replaced by its own conversion."""
    (model / "manifest.json").write_text(json.dumps(OURS))
    before = snapshot(tmp_path)
    rc, err = convert(capsys, str(model), model, "--force")
    assert rc == 2 and "is the input model's directory" in one_error(err)
    assert snapshot(tmp_path) == before and leftovers(model) == []


def test_force_on_parent_of_input_model_refused(capsys, model: Path, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "art")
    model.rename(art / "model")
    before = snapshot(tmp_path)
    rc, err = convert(capsys, str(art / "model"), art, "--force")
    assert rc == 2 and "is a parent of the input model" in one_error(err)
    assert snapshot(tmp_path) == before and leftovers(art) == []


def test_force_refusals_come_before_the_reference_run(capsys, model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.families import ENCODER

    def golden(*a, **k):
        raise AssertionError("the reference ran before the output check")

    monkeypatch.setattr(ENCODER, "compute_golden", golden)
    (model / "manifest.json").write_text(json.dumps(OURS))
    rc, err = convert(capsys, str(model), model, "--force")
    assert rc == 2 and "input model" in one_error(err)


def test_force_replaces_an_artifact_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    out = make_artifact(tmp_path / "out" / "a", "stale.txt")
    with fsutil.staging_dir(out, force=True) as work:
        assert (work / fsutil.PID_FILE).is_file()
        assert fsutil.list_files(work) == []  # the run record is never hashed into a manifest
        (work / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]  # and never lands in the artifact
    assert leftovers(out) == []


# --- concurrent runs and the final rename ----------------------------------------------------------------


def test_second_run_refused_while_output_is_locked(capsys, tmp_path: Path) -> None:
    out = make_artifact(tmp_path / "out" / "a", "weights.bin")
    before = snapshot(tmp_path)
    with fsutil.output_lock(out):
        rc, err = convert(capsys, "tiny-xlm-roberta", out, "--force")
        assert rc == 2
        assert one_error(err) == (f"error: another modelport run is writing {out} (pid {os.getpid()}); "
                                  "wait for it or choose another --out")
    assert snapshot(tmp_path) == before and leftovers(out) == []


def test_folder_that_appeared_during_the_run_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out" / "a"
    for content in ("a file", None):  # a folder with files; an empty folder (plain rename replaces it)
        with pytest.raises(ModelportError, match="appeared while this run was writing it"):
            with fsutil.staging_dir(out, force=False) as work:
                (work / "model.onnx").write_text("new")
                out.mkdir()
                if content:
                    (out / "theirs.txt").write_text(content)
        assert (out / "theirs.txt").exists() == bool(content) and not (out / "model.onnx").exists()
        assert leftovers(out) == []
        for p in out.iterdir():
            p.unlink()
        out.rmdir()


def test_artifact_swapped_during_a_forced_run_is_not_replaced(tmp_path: Path) -> None:
    out = make_artifact(tmp_path / "out" / "a", "old.txt")
    with pytest.raises(ModelportError, match="was replaced while this run was writing it"):
        with fsutil.staging_dir(out, force=True) as work:
            (work / "model.onnx").write_text("new")
            out.rename(tmp_path / "moved")
            make_artifact(out, "someone-elses.txt")  # an artifact, but not the one that was checked
    assert (out / "someone-elses.txt").is_file() and not (out / "model.onnx").exists()
    assert leftovers(out) == []


def test_rename_never_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both the system call (renameat2 / renamex_np) and the portable fallback refuse an empty folder."""
    for fallback in (False, True):
        if fallback:
            monkeypatch.setattr(fsutil, "_NOREPLACE", [(None, lambda: 0)])
        (tmp_path / "src").mkdir()
        (tmp_path / "dst").mkdir()
        with pytest.raises(FileExistsError):
            fsutil._rename_noreplace(tmp_path / "src", tmp_path / "dst")
        fsutil._rename_noreplace(tmp_path / "src", tmp_path / "new")
        (tmp_path / "new").rmdir()
        (tmp_path / "dst").rmdir()


# --- runs in a subprocess: a real concurrent run, signals -------------------------------------------------


def _hangup_default() -> None:
    """In the child: SIGHUP back to its default. A suite started under `nohup` passes SIGHUP ignored to
    every child, and modelport rightly leaves an ignored signal ignored; the child here must get it."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start(tmp_path: Path, out: Path) -> subprocess.Popen:
    tiny.materialize("tiny-xlm-roberta")  # built once here, not raced by the child
    return subprocess.Popen(
        [sys.executable, "-m", "modelport", "convert", "tiny-xlm-roberta", "--target", "onnx", "--variants", "fp32",
         "--out", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_hangup_default)


def wait_for_staging(proc: subprocess.Popen, out: Path, timeout: float = 60) -> Path:
    """The child's staging dir, once its run record is written (the child is then inside the work)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before staging (rc {proc.returncode}): {proc.stderr.read()}")
        for d in out.parent.glob(f".{out.name}.tmp-*"):
            record = d / fsutil.PID_FILE
            if record.is_file() and record.read_text().strip():
                return d
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no staging dir appeared")


def test_two_runs_into_one_out(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out" / "a"
    first = start(tmp_path, out)
    try:
        wait_for_staging(first, out)
        rc, err = convert(capsys, "tiny-xlm-roberta", out)
        assert rc == 2
        assert one_error(err) == (f"error: another modelport run is writing {out} (pid {first.pid}); "
                                  "wait for it or choose another --out")
    finally:
        try:
            _, first_err = first.communicate(timeout=120)
        finally:
            first.kill()
    assert first.returncode == 0, first_err
    from modelport import manifest

    assert manifest.verify_files(out, manifest.load(out)) == []  # the first run's artifact, whole
    assert not (out / fsutil.PID_FILE).exists()
    assert leftovers(out) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_mid_run_removes_staging(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    out = tmp_path / "out" / "a"
    (tmp_path / "notes.txt").write_text("mine")
    proc = start(tmp_path, out)
    try:
        wait_for_staging(proc, out)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert one_error(err) == f"error: interrupted by {sig.name}; no partial output was kept"
    assert not out.exists() and leftovers(out) == []
    assert (tmp_path / "notes.txt").read_text() == "mine"


SWALLOWING_RUN = """
import sys, time
from modelport.families import ENCODER
from modelport.cli import main

def golden(*a, **k):
    try:
        time.sleep(60)
    except BaseException:
        pass  # a library that swallows the interrupt (or C code that clears it)
    time.sleep(60)

ENCODER.compute_golden = golden
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_swallowed_by_a_library_is_delivered_again(tmp_path: Path) -> None:
    out = tmp_path / "out" / "a"
    tiny.materialize("tiny-xlm-roberta")
    proc = subprocess.Popen([sys.executable, "-c", SWALLOWING_RUN, "convert", "tiny-xlm-roberta", "--target", "onnx",
                             "--variants", "fp32", "--out", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_staging(proc, out)
        time.sleep(0.2)  # inside the first sleep
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert time.monotonic() - started < 10  # the re-delivery, not the end of the work
    assert one_error(err) == "error: interrupted by SIGTERM; no partial output was kept"
    assert not out.exists() and leftovers(out) == []


def test_stale_staging_of_a_killed_run_is_removed_by_the_next(capsys, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out" / "a"
    proc = start(tmp_path, out)
    stale = wait_for_staging(proc, out)
    proc.kill()  # SIGKILL: no handler runs, the staging dir stays
    proc.communicate(timeout=60)
    assert stale.is_dir()
    # a live run's staging dir in the same parent (another output) is left alone
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = out.parent / ".b.tmp-live"
    live.mkdir()
    (live / fsutil.PID_FILE).write_text(f"{sleeper.pid} {socket.gethostname()}\n")
    try:
        from modelport.families import ENCODER

        def stop(*a, **k):  # the cleanup happens before the reference run: stop there, cheaply
            raise ModelportError("stopped after staging")

        monkeypatch.setattr(ENCODER, "compute_golden", stop)
        rc, err = convert(capsys, "tiny-xlm-roberta", out)
        assert rc == 2 and one_error(err) == "error: stopped after staging"
        assert not stale.exists() and live.is_dir()
        flat = " ".join(err.split())  # (the note may wrap on a narrow terminal)
        assert f"removed {stale}, left by modelport pid {proc.pid}, which is no longer running" in flat
        assert not out.exists() and leftovers(out) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_record_of_a_dead_pid_and_its_interrupted_replacement(tmp_path: Path) -> None:
    """What clean_stale does with a dead run's dirs: staging removed; an artifact a --force run had
    moved aside (and not yet replaced) put back; a run of another host only reported."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    parent = tmp_path / "out"
    for name, who in ((".a.tmp-x1", host), (".b.old-x2", host), (".c.tmp-x3", "elsewhere")):
        (parent / name).mkdir(parents=True)
        (parent / name / fsutil.PID_FILE).write_text(f"{dead.pid} {who}\n")
    make_artifact(parent / ".b.old-x2" / "old", "weights.bin")
    (parent / ".a.lock").write_text(f"{dead.pid}\n")
    lines = fsutil.clean_stale(parent)
    assert sorted(p.name for p in parent.iterdir()) == [".c.tmp-x3", "b"]
    assert (parent / "b" / "weights.bin").is_file()
    assert len(lines) == 3 and "on host elsewhere" in lines[2]


def test_clean_stale_touches_only_modelport_dirs(tmp_path: Path) -> None:
    """Hidden folders and lock-like files of other programs are never removed, whatever their names."""
    parent = tmp_path / "project"
    for name in (".cache.tmp-1", ".build.old-2"):
        (parent / name).mkdir(parents=True)
        (parent / name / "data").write_text("theirs")
    (parent / ".package.lock").write_text("12345\n")
    before = snapshot(tmp_path)
    assert fsutil.clean_stale(parent) == []
    assert snapshot(tmp_path) == before
