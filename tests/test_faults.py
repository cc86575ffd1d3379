"""Fault injection: ENOSPC / EIO at every write call of the writer, failing worker writes, a real
full file system (a small tmpfs, where mounting one is allowed), and SIGKILL of the parent at
several points of a run. In every case: a clean error, no temporary file left (after the next
run, for SIGKILL), no orphaned worker, the input unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import qtool.gguf_io.atomic as atomic
import qtool.runner
from qtool.api import quantize_file
from qtool.errors import OutputError

from .procs import SLOW_SCRIPT, alive, children


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def parts(d: Path) -> list[str]:
    return [n for n in os.listdir(d) if n.endswith(".part")]


class _Counting:
    """Wraps the output file object: counts write calls, fails call number `fail_at`."""

    calls = 0
    fail_at = -1
    err = errno.ENOSPC

    def __init__(self, f: object) -> None:
        self._f = f

    def write(self, b: bytes) -> int:
        n = _Counting.calls
        _Counting.calls += 1
        if n == _Counting.fail_at:
            raise OSError(_Counting.err, os.strerror(_Counting.err))
        return self._f.write(b)  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, k: str) -> object:
        return getattr(self._f, k)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[_Counting]:
    real = atomic.AtomicOutput.__init__

    def init(self: atomic.AtomicOutput, *a: object, **k: object) -> None:
        real(self, *a, **k)  # type: ignore[arg-type]
        self.f = _Counting(self.f)  # type: ignore[assignment]

    monkeypatch.setattr(atomic.AtomicOutput, "__init__", init)
    _Counting.calls, _Counting.fail_at = 0, -1
    return _Counting


def test_every_write_call_fails_once(counting: type[_Counting], tiny256: Path, tmp_path: Path) -> None:
    """Quantize tiny-256 (with a requantize of each tensor) failing write call k, for every k."""
    inp = tmp_path / "m.gguf"
    shutil.copyfile(tiny256, inp)
    before = sha(inp)
    quantize_file(inp, tmp_path / "ok.gguf", "Q4_0", nthreads=1)
    n_calls = counting.calls
    assert n_calls > 20
    (tmp_path / "ok.gguf").unlink()
    for k in range(n_calls):
        counting.calls, counting.fail_at = 0, k
        counting.err = errno.ENOSPC if k % 2 == 0 else errno.EIO
        with pytest.raises(OutputError, match=f"{tmp_path / 'o.gguf'}: cannot write the output: "):
            quantize_file(inp, tmp_path / "o.gguf", "Q4_0", nthreads=1)
        assert os.listdir(tmp_path) == ["m.gguf"], k
    assert sha(inp) == before


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_worker_pwrite_fails(err: int, tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's pwrite into the temporary file fails: an OutputError naming OUTPUT, nothing left."""
    def pwrite(fd: int, data: object, offset: int) -> int:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(qtool.runner.os, "pwrite", pwrite)  # inherited by the forked workers
    with pytest.raises(OutputError, match=f"{tmp_path / 'o.gguf'}: cannot write the output: {os.strerror(err)}"):
        quantize_file(tiny256, tmp_path / "o.gguf", "Q8_0", nthreads=2)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> object:
    d = tmp_path / "tmpfs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_real_disk_full(threads: int, small_tmpfs: Path, tiny256: Path) -> None:
    """A 1 MiB file system and a 1.3 MB output: ENOSPC for real, in the parent or a worker."""
    with pytest.raises(OutputError, match="No space left on device"):
        quantize_file(tiny256, small_tmpfs / "o.gguf", "Q8_0", nthreads=threads)
    assert os.listdir(small_tmpfs) == []


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4, 0.8, 1.5])
def test_sigkill_at_several_points(delay: float, tiny256: Path, tmp_path: Path) -> None:
    """SIGKILL to the parent `delay` s after its workers started: no worker survives it by more than
    a second, the input is unchanged, and the next run into the folder leaves no temporary file."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCRIPT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    inp = tmp_path / "m.gguf"
    shutil.copyfile(tiny256, inp)
    before = sha(inp)
    p = subprocess.Popen([sys.executable, str(script), "quantize", str(inp), str(out_dir / "o.gguf"), "Q8_0", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.monotonic()
        while len(children(p.pid)) < 2:
            assert p.poll() is None and time.monotonic() - t0 < 60
            time.sleep(0.01)
        time.sleep(delay)
        workers = children(p.pid)
        p.kill()
        p.wait(timeout=30)
        t1 = time.monotonic()
        while any(alive(w) for w in workers) and time.monotonic() - t1 < 5:
            time.sleep(0.05)
        assert not any(alive(w) for w in workers) and time.monotonic() - t1 < 2.5  # 1 s by design, slack for load
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert sha(inp) == before
    quantize_file(inp, out_dir / "next.gguf", "Q8_0", nthreads=1)  # the next run removes stale parts
    assert parts(out_dir) == [] and sorted(os.listdir(out_dir)) == ["next.gguf"]
