"""glibc malloc tuning: set once by the command line, harmless elsewhere."""

from __future__ import annotations

import ctypes
import sys

import pytest

import qtool.cli
from qtool import malloc_tuning


def test_tune_malloc_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    first = malloc_tuning.tune_malloc()
    assert malloc_tuning.tune_malloc() is first
    glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert first is glibc


def test_not_linux_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc_tuning, "_done", None)
    monkeypatch.setattr(malloc_tuning.sys, "platform", "darwin")
    assert malloc_tuning.tune_malloc() is False


def test_command_line_tunes_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(malloc_tuning, "tune_malloc", lambda: calls.append("tuned") or True)
    monkeypatch.setattr(qtool.cli, "cli", lambda prog_name: calls.append(prog_name))
    qtool.cli.main()
    assert calls == ["tuned", "qtool"]
