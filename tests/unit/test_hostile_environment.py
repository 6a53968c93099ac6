"""A hostile environment gets one clear line too (issue 20): full disks, read-only and too-long paths, a
cache path that is a file, damaged artifacts, an unreachable or offline hub, a hub listing unsafe file
names, empty or impossible flags, and bracketed text the terminal markup used to swallow.

Every case asserts the exit code (2 bad input, 3 environment), exactly one `error:` line and no
traceback, nothing left at --out or beside it, and nothing outside --out modified. Disk failures are
simulated (monkeypatch) where a real one cannot be made: tests may run as root, whom chmod does not stop.
One real artifact (tiny XLM-R, onnx fp32, ~10 s) is converted per module and copied per test.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport import cli, convert, manifest, tiny
from modelport.cli import main
from modelport.fsutil import JSONFileError, read_json, write_json

ROOT = os.geteuid() == 0


# --- helpers -------------------------------------------------------------------------------------------

def tree(root: Path) -> dict[str, tuple[int, int] | str]:
    """Every path under root, files with their size and mtime: to prove nothing was created, changed or left
    (a folder's own mtime moves when a temp file comes and goes in it, so folders count by name)."""
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() and not p.is_symlink()
            else (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def one_error(err: str, *needles: str) -> str:
    """The single `error:` line of stderr (progress lines may precede it); fails on a traceback."""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def no_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals must come before the staging dir (and with it the reference run) is ever opened."""
    def staged(*a: Any, **k: Any) -> None:
        raise AssertionError("the staging dir was opened: the refusal came after the reference run started")

    monkeypatch.setattr(convert, "staging_dir", staged)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "art"
    assert main(["convert", "tiny-xlm-roberta", "-t", "onnx", "--variants", "fp32", "--out", str(out)]) == 0
    return out


@pytest.fixture()
def art(built: Path, tmp_path: Path) -> Path:
    """A private copy of the validated artifact, in its own folder (tmp_path/a/art) to watch its surroundings."""
    dst = tmp_path / "a" / "art"
    shutil.copytree(built, dst)
    return dst


def rehash(root: Path) -> None:
    """Rewrite the manifest's hashes after damaging a file: the damage then passes the sha256 check."""
    man = read_json(root / manifest.MANIFEST)
    man["files"] = manifest.file_hashes(root)
    write_json(root / manifest.MANIFEST, man)


# --- OS errors: one line naming the path, exit 3 ---------------------------------------------------------

def test_full_disk_while_recording_a_validation(art: Path, capsys, monkeypatch) -> None:
    """ENOSPC from write() carries no file name; write_json adds it, removes its temp file, the CLI says where."""
    from modelport import fsutil

    class FullDisk:
        JSONDecodeError = json.JSONDecodeError
        loads = staticmethod(json.loads)

        @staticmethod
        def dump(*a: Any, **k: Any) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = tree(art.parent)
    monkeypatch.setattr(fsutil, "json", FullDisk)
    rc, err = run(capsys, "validate", str(art))
    assert rc == 3
    one_error(err, f"disk full at {art / 'manifest.json'}", "free space")
    assert tree(art.parent) == before  # the manifest untouched, no .manifest.json.*.tmp left


def test_full_disk_inside_a_converter_names_the_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    from modelport.families.encoder import EncoderFamily

    def full(self, source, recipe, out, step, models=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "reference" / "golden.npz"))

    monkeypatch.setattr(EncoderFamily, "compute_golden", full)
    out = tmp_path / "o" / "art"
    rc, err = run(capsys, "convert", "tiny-xlm-roberta", "-t", "onnx", "--variants", "fp32", "--out", str(out))
    assert rc == 3
    line = one_error(err, "disk full at ", "golden.npz", "details: ")
    assert "the PyTorch reference" not in line  # the disk is the story, not a "converter failed"
    assert not out.exists() and (not out.parent.exists() or os.listdir(out.parent) == [])  # no staging, no lock


def test_file_name_too_long(art: Path, tmp_path: Path, capsys) -> None:
    long = tmp_path / ("x" * 300)
    before = tree(tmp_path)
    rc, err = run(capsys, "publish", str(art), "--repo", "someone/x", "--dry-run", str(long))
    assert rc == 3
    one_error(err, "file name too long: ", "xxxx", "shorter path")
    assert tree(tmp_path) == before


def test_convert_out_name_too_long(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "o" / ("x" * 300)
    rc, err = run(capsys, "convert", "tiny-xlm-roberta", "-t", "onnx", "--variants", "fp32", "--out", str(out))
    assert rc == 3
    one_error(err, "file name too long: ", "shorter path")
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_read_only_output_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    """chmod a-w on the folder (as root, which chmod does not stop: its staging dir creation refused)."""
    import tempfile

    parent = tmp_path / "ro"
    parent.mkdir()
    if ROOT:
        def denied(*a: Any, dir: Any = None, prefix: str = "", **k: Any) -> str:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(str(dir), prefix + "x"))

        monkeypatch.setattr(tempfile, "mkdtemp", denied)
    else:
        parent.chmod(0o555)
    before = tree(tmp_path)
    try:
        rc, err = run(capsys, "convert", "tiny-xlm-roberta", "-t", "onnx", "--variants", "fp32",
                      "--out", str(parent / "art"))
    finally:
        parent.chmod(0o755)
    assert rc == 3
    one_error(err, f"permission denied: {parent}/", "check its permissions")
    assert tree(tmp_path) == before


def test_unreadable_file_in_an_artifact(art: Path, capsys, monkeypatch) -> None:
    from modelport import manifest as manifest_mod

    victim = art / "onnx" / "model.onnx"
    if ROOT:
        real = manifest_mod.sha256_file

        def unreadable(path: Path) -> str:
            if Path(path) == victim:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path)

        monkeypatch.setattr(manifest_mod, "sha256_file", unreadable)
    else:
        victim.chmod(0)
    before = tree(art.parent)
    try:
        rc, err = run(capsys, "validate", str(art))
    finally:
        victim.chmod(0o644)
    assert rc == 3
    one_error(err, f"permission denied: {victim}")
    assert tree(art.parent) == before


def test_cache_path_that_is_a_file(tmp_path: Path, capsys, monkeypatch) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MODELPORT_CACHE", str(blocker))
    out = tmp_path / "o" / "art"
    before = tree(tmp_path)
    rc, err = run(capsys, "convert", "tiny-bert-arctic", "-t", "onnx", "--variants", "fp32", "--out", str(out))
    assert rc == 3
    one_error(err, "not a directory: ", str(blocker), "MODELPORT_CACHE")
    assert tree(tmp_path) == before


def test_read_only_artifact_is_refused_before_validating(art: Path, capsys, monkeypatch) -> None:
    """`validate` records into manifest.json: a read-only artifact is refused up front (root: simulated)."""
    from modelport import validate as validate_mod

    def never(*a: Any, **k: Any) -> None:
        raise AssertionError("validation ran on an artifact it cannot record into")

    monkeypatch.setattr(validate_mod, "validate", never)
    if ROOT:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p).is_relative_to(art) and
                            mode == os.W_OK else real(p, mode, *a, **k))
    else:
        for p in [art, *art.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    before = tree(art.parent)
    try:
        rc, err = run(capsys, "validate", str(art))
    finally:
        for p in [art, *art.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert rc == 3
    one_error(err, f"cannot write to {art}", "--variants")
    assert tree(art.parent) == before


def test_report_html_that_cannot_be_written_is_a_note(art: Path, monkeypatch) -> None:
    """report.html is an extra: a read-only folder there is one yellow line, never a failed command."""
    from rich.console import Console

    from modelport import report

    def denied(path: Path) -> Path:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path / "report.html"))

    monkeypatch.setattr(report, "write_report", denied)
    buf = io.StringIO()
    cli._write_report(Console(file=buf, width=300), art)
    assert buf.getvalue().strip() == (f"report.html not written: permission denied: {art / 'report.html'}: check its "
                                      "permissions (ls -ld), or use another path")


# --- damaged files: one line naming the file, exit 2 -------------------------------------------------------

@pytest.mark.parametrize("damage, name, why", [
    ("truncate", "manifest.json", "(line "),
    ("utf8", "manifest.json", "not UTF-8 text"),
    ("truncate", "reference/golden.json", "(line "),
    ("utf8", "reference/golden.json", "not UTF-8 text"),
    ("truncate", "reference/golden.npz", "not a readable .npz"),
    ("truncate", "tokenizer_config.json", "(line "),
])
def test_damaged_artifact_is_one_line(art: Path, capsys, damage: str, name: str, why: str) -> None:
    path = art / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff\xfe" + data)
    if name != "manifest.json":
        rehash(art)  # a damaged file whose hash was rewritten too: only reading it can tell
    before = tree(art.parent)
    for command in ("validate", "clients"):
        rc, err = run(capsys, command, str(art))
        assert rc == 2
        one_error(err, f"artifact damaged: {path}: ", why)
    assert tree(art.parent) == before


@pytest.mark.parametrize("raw, why", [
    (b'{"a": ', "Expecting value (line 1, column 7)"),
    (b'{"a": "\xe9t\xe9"}', "not UTF-8 text (byte b'\\xe9' at offset 7)"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_read_json_names_the_file(tmp_path: Path, raw: bytes, why: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(raw)
    with pytest.raises(JSONFileError) as info:
        read_json(path)
    assert str(info.value) == f"{path} is not valid JSON: {why}" and info.value.exit_code == 2


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_malformed_model_json_is_one_line(tmp_path: Path, capsys, monkeypatch, name: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny.materialize("tiny-xlm-roberta"), model)
    (model / name).write_bytes(b"\xff" + (model / name).read_bytes())
    no_guard(monkeypatch)
    out = tmp_path / "o" / "art"
    before = tree(tmp_path)
    rc, err = run(capsys, "convert", str(model), "-t", "onnx", "--variants", "fp32", "--out", str(out))
    assert rc == 2
    one_error(err, name, str(model), "UTF-8")
    assert tree(tmp_path) == before


# --- flags refused before any work, exit 2 ------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["convert", "tiny-xlm-roberta", "-t", "onnx", "--variants", ""], "--variants is empty; omit it for the defaults"),
    (["convert", "tiny-xlm-roberta", "-t", "onnx", "--variants", " , "], "--variants is empty"),
    (["convert", "tiny-llama", "-t", "coreml", "--context", "-1"], "--context -1 is too small"),
    (["convert", "tiny-llama", "-t", "coreml", "--context", "0"], "--context 0 is too small"),
    (["convert", "tiny-xlm-roberta", "-t", "coreml", "--context", "64"],
     "--context does not apply to the coreml target for sentence-encoder models"),
])
def test_impossible_flags_are_refused_before_the_reference_run(tmp_path: Path, capsys, monkeypatch, argv,
                                                               message) -> None:
    no_guard(monkeypatch)
    monkeypatch.setattr(convert, "require_packages", lambda *a, **k: None)  # coremltools or not, same answer
    out = tmp_path / "o" / "art"
    rc, err = run(capsys, *argv, "--out", str(out))
    assert rc == 2
    one_error(err, message)
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_context_beyond_the_model_is_refused_when_the_recipe_is_adapted() -> None:
    """The model's own limit needs its config: checked in adapt_recipe, which convert.run calls before the
    staging dir (and the reference run) (the tiny Llama declares 2048 positions)."""
    from types import SimpleNamespace

    from modelport.errors import ModelportError
    from modelport.targets.coreml.decoder import CoreMLDecoder

    recipe = SimpleNamespace(max_length=2048)
    with pytest.raises(ModelportError, match="--context 100000 must be between 8 and the model's 2048 positions"):
        CoreMLDecoder().adapt_recipe(recipe, CoreMLDecoder.Options(context=100000))
    assert CoreMLDecoder().adapt_recipe(recipe, CoreMLDecoder.Options(context=64)) is recipe
    with pytest.raises(ModelportError, match="bad --context 'x': expected a number of tokens"):
        CoreMLDecoder.Options(context="x")


@pytest.mark.parametrize("command", ["validate", "clients"])
def test_empty_variants_never_means_all(art: Path, capsys, command: str) -> None:
    before = tree(art.parent)
    rc, err = run(capsys, command, str(art), "--variants", "")
    assert rc == 2
    one_error(err, "--variants is empty; omit it for all of the artifact's variants")
    assert tree(art.parent) == before


@pytest.mark.parametrize("where", [".", "sub", "sub/deeper"])
def test_publish_dry_run_inside_the_artifact_is_refused(art: Path, capsys, where: str) -> None:
    before = tree(art.parent)
    rc, err = run(capsys, "publish", str(art), "--repo", "someone/x", "--dry-run", str(art / where))
    assert rc == 2
    one_error(err, "--dry-run directory")
    assert tree(art.parent) == before


# --- the hub: exit 3 when unreachable, 2 for what the user must change --------------------------------------

def dead_endpoint() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_publish_to_an_unreachable_hub(art: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from ..fakehub import point_huggingface_hub_at

    dead = dead_endpoint()
    point_huggingface_hub_at(monkeypatch, endpoint=dead, hf_home=tmp_path / "hf", offline=False, token="hf_x")
    before = tree(art.parent)
    rc, err = run(capsys, "publish", str(art), "--repo", "someone/x")
    assert rc == 3
    one_error(err, f"cannot reach the Hugging Face hub at {dead} to publish someone/x", "retry")
    assert tree(art.parent) == before  # the hard-linked upload folder beside the artifact is gone


def test_publish_offline(art: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from ..fakehub import point_huggingface_hub_at

    point_huggingface_hub_at(monkeypatch, endpoint=dead_endpoint(), hf_home=tmp_path / "hf", offline=True,
                             token="hf_x")
    before = tree(art.parent)
    rc, err = run(capsys, "publish", str(art), "--repo", "someone/x")
    assert rc == 2
    one_error(err, "HF_HUB_OFFLINE=1", "--dry-run DIR")
    assert tree(art.parent) == before


def test_fetch_from_an_unreachable_hub(tmp_path: Path, capsys, monkeypatch) -> None:
    from ..fakehub import point_huggingface_hub_at

    dead = dead_endpoint()
    point_huggingface_hub_at(monkeypatch, endpoint=dead, hf_home=tmp_path / "hf", offline=False)
    rc, err = run(capsys, "fetch", "someone/model")
    assert rc == 3
    one_error(err, f"cannot reach the Hugging Face hub at {dead}", "retry")


@pytest.mark.parametrize("bad", ["../escape.json", "/tmp/modelport-escape.json", "sub/../../escape.json"])
def test_fetch_refuses_unsafe_file_names(tmp_path: Path, capsys, monkeypatch, bad: str) -> None:
    from ..fakehub import FakeHub, point_huggingface_hub_at

    model = tiny.materialize("tiny-xlm-roberta")
    files = {p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    with FakeHub() as fake:
        fake.add_repo("evil/model", {**files, bad: b"{}"})
        point_huggingface_hub_at(monkeypatch, endpoint=fake.url, hf_home=tmp_path / "hf", offline=False)
        rc, err = run(capsys, "fetch", "evil/model")
    assert rc == 2
    one_error(err, "refusing evil/model: the hub lists the file name", repr(bad), "outside the model's folder")
    assert {p.name for p in tmp_path.iterdir()} <= {"hf"}  # nothing beside the cache
    assert not any("escape" in p.name for p in tmp_path.rglob("*")) and not Path(bad).exists()


# --- what a new user sees -------------------------------------------------------------------------------------

def test_readme_setup_installs_the_report_extra() -> None:
    """The README's first command runs scripts/setup-native.sh: it must install matplotlib (the report extra:
    quantize-search's pareto.png)."""
    script = (Path(__file__).parents[2] / "scripts" / "setup-native.sh").read_text()
    install = next(line for line in script.splitlines() if "pip install" in line and "-e " in line)
    extras = install.split('".[', 1)[1].split("]", 1)[0].split(",")
    assert "report" in extras, install


def test_errors_never_lose_bracketed_text(capsys, monkeypatch) -> None:
    """Every error line is escaped: a path or message with [brackets] is printed as written."""
    from modelport.errors import ModelportError

    def refuse(out):
        raise ModelportError("see 'modelport[report]' and [bold]x[/bold]")

    monkeypatch.setattr(cli, "_recipes", refuse)
    rc, err = run(capsys, "recipes")
    assert rc == 2 and one_error(err) == "error: see 'modelport[report]' and [bold]x[/bold]"
