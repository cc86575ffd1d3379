"""User-facing errors: every error a user can cause derives from QtoolError.

The click group prints a QtoolError as `Error: message` (exit 1) without a traceback unless
`qtool --debug` is given; anything else is a bug and keeps its traceback. Errors about one
option carry it in `option`, errors about one file in `path`, so callers need not parse text.
"""

from __future__ import annotations


class QtoolError(Exception):
    """Base of every user-facing error."""

    def __init__(self, message: str, *, option: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.path = path

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class AbortError(QtoolError, RuntimeError):
    """Rows on which ggml's / ik_llama.cpp's C quantizer aborts (GGML_ASSERT): the engine refuses
    them rather than invent bytes (the reference writes no file for them either)."""


class OutputError(QtoolError):
    """An output path that cannot or must not be written (an input, a directory, a device ...)."""


class WorkerError(QtoolError):
    """Worker processes could not be started, or one died during a run."""
