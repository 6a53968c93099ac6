"""User-facing errors.

Every failure caused by the user's input (a missing directory, pickle weights, an unknown
architecture, an existing artifact) raises `ModelportError`. The CLI prints its message on one
line and exits with `exit_code`; it never shows a traceback for these, because the message is
the whole story. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ModelportError(Exception):
    """An error the user can fix; `str(err)` is a complete one-line explanation."""

    exit_code = 2


class ValidationFailed(ModelportError):
    """The artifact was produced but does not compute what the PyTorch reference computes."""

    exit_code = 1
