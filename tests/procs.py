"""Process helpers for the signal and fault tests: a slowed-down `qtool` entry point and /proc
readers for a process's children and whether a pid still runs."""

from __future__ import annotations

import os
from pathlib import Path

SLOW_SCRIPT = """
import sys, time
import qtool.runner as r
real = r.convert_rows
def convert_rows(*a, **k):
    time.sleep(0.3)
    return real(*a, **k)
r.convert_rows = convert_rows
r.SLAB_ELEMENTS = 1 << 14
from qtool.cli import main
sys.argv[0] = "qtool"
main()
"""

"""A `qtool` entry point whose every work item takes 0.3 s more, with small slabs (many items)."""


def children(pid: int) -> list[int]:
    """Pids whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def alive(pid: int) -> bool:
    """pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
