"""Exit codes: 0 ok, 1 validation failed, 2 bad input, 3 toolchain/environment, 4 internal error."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport import cli, convert
from modelport.errors import ModelportError, ToolchainError
from modelport.targets import registry


def test_missing_toolchain_package_is_exit_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def missing(packages, target, extra, image, what):
        raise ToolchainError(f"{what} for target {target!r} needs the Python package 'coremltools', which is not "
                             f"installed in this environment (use the {image} image)")

    monkeypatch.setattr(convert, "require_packages", missing)
    rc = cli.main(["convert", "all-minilm-l6-v2", "--target", "coreml", "--skip-validation", "--out", "/tmp/x-no"])
    err = capsys.readouterr().err
    assert rc == 3 and "coremltools" in err and "Traceback" not in err


def test_require_packages_names_the_image() -> None:
    with pytest.raises(ToolchainError, match="needs the Python package 'no_such_pkg_xyz'.*coreml image"):
        registry.require_packages(("no_such_pkg_xyz",), "coreml", "coreml", "coreml", "converting")


def test_converter_crash_is_exit_3_with_a_log(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError) as info:
        with convert.toolchain_step("the onnx converter"):
            raise RuntimeError("exporter exploded\nsecond line")
    err = info.value
    assert err.exit_code == 3
    assert "the onnx converter failed: RuntimeError: exporter exploded" in str(err)
    assert "second line" not in str(err) and Path(err.log).is_file()
    assert "exporter exploded" in Path(err.log).read_text()
    with pytest.raises(ModelportError, match="bad input") as kept:  # our own errors pass through unchanged
        with convert.toolchain_step("x"):
            raise ModelportError("bad input")
    assert kept.value.exit_code == 2


def test_a_bug_is_exit_4_one_line_and_a_log(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def bug(out):
        raise KeyError("oops")

    monkeypatch.setattr(cli, "_recipes", bug)
    rc = cli.main(["recipes"])
    err = capsys.readouterr().err
    assert rc == 4 and "internal error: KeyError" in err and "Traceback" not in err
    log = err.split("traceback in ")[1].split(")")[0].strip()
    assert "KeyError" in Path(log).read_text()
