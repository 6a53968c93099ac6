"""User-facing errors, one class per exit code.

The CLI prints one line for each of these and exits with `exit_code`; it never shows a
traceback for an error the user (or their environment) can fix, because the message is the whole
story. Anything else is a bug: the CLI still prints one line, writes the traceback to a log file
and exits 4.

    0 ok · 1 ValidationFailed · 2 InputError · 3 ToolchainError · 4 internal error (a bug)

Why a separate code for toolchains: CI scripts treat exit 2 as "your input is wrong, don't retry";
a Node process that failed to start or a converter that crashed inside coremltools is not that.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VALIDATION = 1
EXIT_INPUT = 2
EXIT_TOOLCHAIN = 3
EXIT_INTERNAL = 4


class ModelportError(Exception):
    """An error the user can fix by changing the input; `str(err)` is a complete one-line explanation."""

    exit_code = EXIT_INPUT


# The name the exit-code table uses; `ModelportError` stays the base every user-facing error derives from.
InputError = ModelportError


class ValidationFailed(ModelportError):
    """The artifact was produced but does not compute what the PyTorch reference computes."""

    exit_code = EXIT_VALIDATION


class ToolchainError(ModelportError):
    """A toolchain or the environment failed: a missing package, a converter crash, a runtime that would
    not start. `log` is the file holding the traceback or the tool's output, when there is one."""

    exit_code = EXIT_TOOLCHAIN

    def __init__(self, message: str, log: str | None = None) -> None:
        super().__init__(message)
        self.log = log

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (details: {self.log})" if self.log else base
