"""Never lose data (issue 9): one test (or a group) per reported item, each failing on the code
before the fix. Inputs are never written, outputs are atomic, nothing is left behind, no worker
outlives its parent, bad files and values are clean errors naming what and where.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import qtool.gguf_io.atomic as atomic
import qtool.pool
from qtool.api import quantize_file
from qtool.cli import cli
from qtool.errors import OutputError, QtoolError, WorkerError
from qtool.gguf_io import GGUFError, GGUFModel, remove_stale_parts
from qtool.imatrix import read_imatrix

from .gguf_fuzz import Field, fields
from .procs import SLOW_SCRIPT, alive, children

DATA = Path(__file__).parent / "data"
IM256 = DATA / "quantize" / "tiny-256.imatrix.gguf"
IMDAT = DATA / "quantize" / "tiny-256.imatrix.dat"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def clean_error(r: Result, pattern: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert re.search(pattern, r.output), r.output


@pytest.fixture
def model(mini_gguf: bytes, tmp_path: Path) -> Path:
    p = tmp_path / "m.gguf"
    p.write_bytes(mini_gguf)
    return p


def no_parts(d: Path) -> bool:
    return not [n for n in os.listdir(d) if n.endswith(".part")]


# --- 1. the input is never overwritten ---------------------------------------------------------

def test_1_dotdot_through_a_missing_folder_does_not_replace_the_input(model: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = sha(model)
    monkeypatch.chdir(tmp_path)
    r = run("quantize", "m.gguf", "./nosuchdir/../m.gguf", "Q8_0", "1")
    clean_error(r, r"is the input file")
    assert sha(model) == before and no_parts(tmp_path)


def test_1_symlinked_folder_then_dotdot_writes_where_the_kernel_would(model: Path, tmp_path: Path) -> None:
    """`link/../new.gguf` with link -> a/b lands in a/, as open() would put it, not beside link."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.symlink(tmp_path / "a" / "b", tmp_path / "link")
    r = run("quantize", str(model), str(tmp_path / "link" / ".." / "new.gguf"), "Q8_0", "1")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "new.gguf").exists() and not (tmp_path / "new.gguf").exists()


def test_1_hard_link_and_symlink_to_the_input_are_refused(model: Path, tmp_path: Path) -> None:
    os.link(model, tmp_path / "hard.gguf")
    os.symlink(model, tmp_path / "soft.gguf")
    before = sha(model)
    for out in ("hard.gguf", "soft.gguf"):
        clean_error(run("quantize", str(model), str(tmp_path / out), "Q8_0"), "is the input file")
    with pytest.raises(OutputError, match="is the input"):
        quantize_file(model, tmp_path / "x" / ".." / "m.gguf", "Q8_0")
    assert sha(model) == before


# --- 2. devices, FIFOs, directories are never replaced --------------------------------------------

@pytest.mark.parametrize("cmd", ["quantize", "imatrix"])
def test_2_fifo_and_device_outputs_are_refused(cmd: str, model: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets = [(str(fifo), "a FIFO"), ("/dev/null", "a character device"), (str(tmp_path), "a directory")]
    for out, kind in targets:
        if cmd == "quantize":
            r = run("quantize", str(model), out, "Q8_0", "1")
        else:
            r = run("imatrix", "convert", str(IM256), out, "--to", "dat")
        clean_error(r, f"is {kind}, not a regular file")
    assert fifo.is_fifo() and Path("/dev/null").is_char_device()
    assert no_parts(tmp_path)


# --- 3. no .part left behind ----------------------------------------------------------------------

def test_3_existing_directory_fails_before_any_work(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    import qtool.runner

    called = []
    monkeypatch.setattr(qtool.runner, "run_jobs", lambda *a, **k: called.append(1))
    (tmp_path / "out.gguf").mkdir()
    clean_error(run("quantize", str(model), str(tmp_path / "out.gguf"), "Q8_0"), "is a directory")
    assert not called and no_parts(tmp_path)


@pytest.mark.parametrize("where", ["write", "flush", "fsync", "replace"])
def test_3_disk_full_anywhere_leaves_nothing_and_names_the_output(where: str, model: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous")

    def enospc(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "write":
        real_write = atomic.AtomicOutput.__init__

        def init(self: atomic.AtomicOutput, *a: object, **k: object) -> None:
            real_write(self, *a, **k)  # type: ignore[arg-type]
            self.f = _Failing(self.f)  # type: ignore[assignment]

        monkeypatch.setattr(atomic.AtomicOutput, "__init__", init)
    elif where == "flush":
        monkeypatch.setattr(atomic.AtomicOutput, "__init__", _wrap_flush(atomic.AtomicOutput.__init__))
    else:
        monkeypatch.setattr(atomic.os, where, enospc)
    r = run("quantize", str(model), str(out), "Q8_0", "1")
    clean_error(r, re.escape(str(out)) + r": cannot write the output: No space left on device")
    assert ".part" not in r.output
    assert out.read_bytes() == b"previous" and no_parts(tmp_path)


class _Failing:
    """A file object whose write fails with ENOSPC after 4 KiB."""

    def __init__(self, f: object) -> None:
        self._f = f
        self._n = 0

    def write(self, b: bytes) -> int:
        self._n += len(b)
        if self._n > 4096:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(b)  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, k: str) -> object:
        return getattr(self._f, k)


def _wrap_flush(real: object) -> object:
    def init(self: atomic.AtomicOutput, *a: object, **k: object) -> None:
        real(self, *a, **k)  # type: ignore[operator]
        f = self.f

        class F:
            def __getattr__(self, k: str) -> object:
                if k == "flush":
                    def fail() -> None:
                        raise OSError(errno.ENOSPC, "No space left on device")
                    return fail
                return getattr(f, k)
        self.f = F()  # type: ignore[assignment]
    return init


# --- 4. no orphaned workers, stale .part cleaned ---------------------------------------------------

@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP, signal.SIGQUIT])
def test_4_killed_parent_leaves_no_worker_and_the_next_run_cleans_up(sig: int, tiny256: Path, tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCRIPT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.Popen([sys.executable, str(script), "quantize", str(tiny256), str(out_dir / "o.gguf"), "Q8_0", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        t0 = time.monotonic()
        while len(children(p.pid)) < 2 or no_parts(out_dir):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() - t0 < 60
            time.sleep(0.02)
        workers = children(p.pid)
        p.send_signal(sig)  # the parent only, as `kill` does: the workers must notice by themselves
        p.wait(timeout=30)
        t1 = time.monotonic()
        while any(alive(w) for w in workers) and time.monotonic() - t1 < 5:
            time.sleep(0.05)
        assert not any(alive(w) for w in workers), "workers outlived their parent"
        assert time.monotonic() - t1 < 2.5  # 1 s by design (watchdog 0.25 s); slack for a loaded machine
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if sig == signal.SIGKILL:  # no chance to clean up: the next run does
        assert not no_parts(out_dir)
        assert remove_stale_parts(str(out_dir))
    assert no_parts(out_dir) and not (out_dir / "o.gguf").exists()


def test_4_stale_parts_of_live_processes_are_kept(tmp_path: Path) -> None:
    live = tmp_path / f".x.gguf.qtool-{os.getpid()}-abcd.part"
    dead = tmp_path / ".x.gguf.qtool-999999999-abcd.part"
    other = tmp_path / ".x.gguf.other.part"
    for f in (live, dead, other):
        f.write_bytes(b"x")
    assert remove_stale_parts(str(tmp_path)) == [str(dead)]
    assert live.exists() and other.exists()


# --- 5. NTHREADS ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", ["10000", "99999999999999999999999", "64"])
def test_5_huge_worker_counts_are_capped_with_a_warning(n: str, model: Path, tmp_path: Path) -> None:
    r = run("quantize", str(model), str(tmp_path / "o.gguf"), "Q8_0", n)
    assert r.exit_code == 0, r.output
    assert "core(s) available: using" in r.output
    assert (tmp_path / "o.gguf").exists()


def test_5_worker_count_rules() -> None:
    cores = qtool.pool.available_cores()
    assert qtool.pool.resolve_workers(None) == cores and qtool.pool.resolve_workers(-3) == cores
    assert qtool.pool.resolve_workers(10**30) == cores
    assert qtool.pool.resolve_workers(cores, n_items=1) == 1


def test_5_fork_failure_is_a_clean_error_not_a_hang(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    import multiprocessing.popen_fork as pf

    def no_fork(self: object, process_obj: object) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(qtool.pool, "available_cores", lambda: 4)
    monkeypatch.setattr(pf.Popen, "_launch", no_fork)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="cannot start 4 worker process"):
        quantize_file(model, tmp_path / "o.gguf", "Q8_0", nthreads=4)
    assert time.monotonic() - t0 < 30 and no_parts(tmp_path) and not (tmp_path / "o.gguf").exists()


# --- 6. the reader validates the header -------------------------------------------------------------

def _field(buf: bytes, kind: str, what: str) -> Field:
    return next(f for f in fields(buf) if f.kind == kind and f.what == what)


def _patch(buf: bytes, f: Field, value: int) -> bytes:
    fmt = {4: "<I", 8: "<Q"}[f.size]
    return buf[:f.offset] + struct.pack(fmt, value % (1 << (8 * f.size))) + buf[f.offset + f.size:]


@pytest.mark.parametrize("what,value,message", [
    ("blk.0.attn_q.weight ne1", 2**64 - 1, "negative dimension"),
    ("blk.0.attn_q.weight ne1", 2**63, "negative dimension"),
    ("blk.0.attn_q.weight ne1", 2**62, "overflows int64"),
    ("blk.0.attn_q.weight ne0", 0, "zero dimension"),
    ("blk.0.attn_q.weight ne1", 0, "zero dimension"),
])
def test_6_dimensions(what: str, value: int, message: str, mini_gguf: bytes, tmp_path: Path) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(_patch(mini_gguf, _field(mini_gguf, "dim", what), value))
    with pytest.raises(GGUFError, match=message + r".*|.*blk\.0\.attn_q\.weight.*offset \d+"):
        GGUFModel(p)
    with pytest.raises(GGUFError, match=r"blk\.0\.attn_q\.weight' at offset \d+"):
        GGUFModel(p)
    clean_error(run("quantize", str(p), str(tmp_path / "o.gguf"), "Q8_0"), message)
    clean_error(run("stats", str(p), "-t", "q8_0"), message)


def test_6_duplicate_name_non_utf8_name_offsets_and_count(mini_gguf: bytes, tmp_path: Path) -> None:
    fs = fields(mini_gguf)
    names = [f for f in fs if f.kind == "str" and f.what.startswith("tensor #")]
    a, b = next((a, b) for a, b in zip(names, names[1:], strict=False) if a.size == b.size)
    cases = {
        "duplicate tensor name": mini_gguf[:b.offset] + mini_gguf[a.offset:a.offset + a.size]
        + mini_gguf[b.offset + b.size:],
        "not valid UTF-8": mini_gguf[:a.offset] + b"\xff" + mini_gguf[a.offset + 1:],
    }
    offs = [f for f in fs if f.kind == "toffset"]
    v = struct.unpack_from("<Q", mini_gguf, offs[3].offset)[0]
    cases["has data offset .*expected"] = _patch(mini_gguf, offs[3], v + 1)  # misaligned
    cases["has data offset .*expected "] = _patch(mini_gguf, offs[3], v - 32)  # overlapping
    cases["header does not describe the whole file|padding.*not zero"] = _patch(
        mini_gguf, fs[0], struct.unpack_from("<Q", mini_gguf, 8)[0] - 1)  # tensor count one short
    for msg, data in cases.items():
        p = tmp_path / "bad.gguf"
        p.write_bytes(data)
        with pytest.raises(GGUFError, match=msg):
            GGUFModel(p)


# --- 7. --override-kv: see test_quantize_cli.py::test_override_kv_* --------------------------------

def test_7_override_kv_is_checked_before_any_work(model: Path, tmp_path: Path) -> None:
    for kv, msg in (("llama.block_count=str:thirty", "as uint32"), ("general.alignment=int:7", "power of two"),
                    ("x=int:99999999999999999999999", "out of range"), ("=int:1", "empty key")):
        clean_error(run("quantize", "--override-kv", kv, str(model), str(tmp_path / "o.gguf"), "Q8_0"), msg)
    assert no_parts(tmp_path) and not (tmp_path / "o.gguf").exists()


# --- 8. stats --plot target checked first -------------------------------------------------------------

@pytest.mark.parametrize("target,msg", [("missing/dir/p.png", "does not exist"), (".", "is a directory"),
                                        ("m.gguf", "is the input")])
def test_8_plot_target_is_checked_before_the_work(target: str, msg: str, model: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import qtool.commands.stats_cmd as sc

    monkeypatch.setattr(sc, "run_stats", lambda *a, **k: pytest.fail("stats ran before the plot path was checked"))
    monkeypatch.chdir(tmp_path)
    clean_error(run("stats", str(model), "-t", "q8_0", "--plot", target), msg)


# --- 9. input truncated during the run ----------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_9_input_truncated_during_the_run(threads: int, tiny256: Path, tmp_path: Path) -> None:
    inp = tmp_path / "m.gguf"
    shutil.copyfile(tiny256, inp)
    size = inp.stat().st_size

    def shrink(plan: object, warnings: object) -> None:
        with open(inp, "r+b") as f:
            f.truncate(size // 2)

    with pytest.raises(QtoolError, match="the file changed during the run"):
        quantize_file(inp, tmp_path / "o.gguf", "Q8_0", nthreads=threads, on_plan=shrink)
    assert no_parts(tmp_path) and not (tmp_path / "o.gguf").exists()


# --- 10. imatrix values ---------------------------------------------------------------------------------

def test_10_negative_and_non_finite_imatrix_sums_are_refused(model: Path, tmp_path: Path) -> None:
    from qtool.imatrix import write_gguf

    d = read_imatrix(IM256)
    name = sorted(d.entries)[0]
    for bad, msg in ((-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf")):
        d.entries[name].sums[0, 3] = bad
        p = tmp_path / "bad.imatrix.gguf"
        write_gguf(d, p)
        where = f"{re.escape(name)}.*(column 3 is {msg}|value {msg} at offset \\d+ \\(element 3\\))"
        with pytest.raises(QtoolError, match=where):
            read_imatrix(p)
        clean_error(run("quantize", "--imatrix", str(p), str(model), str(tmp_path / "o.gguf"), "Q4_K_M"), where)
        clean_error(run("imatrix", "show", str(p)), where)
        clean_error(run("stats", str(model), "-t", "q4_k", "--imatrix", str(p)), where)


# --- 11. messages -------------------------------------------------------------------------------------

def test_11_a_cut_file_says_truncated(mini_gguf: bytes, tmp_path: Path) -> None:
    for n in (30, 100, 1000, len(mini_gguf) - 100):
        p = tmp_path / "cut.gguf"
        p.write_bytes(mini_gguf[:n])
        with pytest.raises(GGUFError, match="truncated"):
            GGUFModel(p)


def test_11_write_errors_name_the_output_not_the_temporary_file(model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(*a: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", eio)
    r = run("quantize", str(model), str(tmp_path / "o.gguf"), "Q8_0", "1")
    clean_error(r, re.escape(str(tmp_path / "o.gguf")) + ": cannot write the output: Input/output error")
    assert ".part" not in r.output and no_parts(tmp_path)


def test_terminated_exit_codes() -> None:
    assert np.uint8(128 + signal.SIGTERM) == 143


def test_start_writeback_leaves_the_data_and_works_on_linux(tmp_path: Path) -> None:
    """start_writeback (sync_file_range on Linux, called after each big pwrite so that the commit's
    fsync has little left) never changes the bytes, and takes a bad descriptor without raising
    (the commit's fsync reports write errors)."""
    import sys

    from qtool.gguf_io import atomic

    p = tmp_path / "f.bin"
    data = bytes(range(256)) * 4096
    fd = os.open(p, os.O_WRONLY | os.O_CREAT)
    try:
        os.pwrite(fd, data, 0)
        atomic.start_writeback(fd, 0, len(data))
    finally:
        os.close(fd)
    assert p.read_bytes() == data
    atomic.start_writeback(fd, 0, 1)  # closed: EBADF, ignored
    if sys.platform.startswith("linux"):
        assert atomic._sync_file_range


def test_5_a_signal_that_also_killed_the_workers_wins_over_their_death() -> None:
    """A group-wide signal kills the workers (SIG_DFL) and reaches the main process too; when the
    broken pool is seen first, the dead worker is reported only after a grace period in which
    the main process's handler runs, so the run ends as the signal says (exit 128 + signum), not
    as "a worker died"."""
    import threading
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    f: Future[int] = Future()
    f.set_exception(BrokenProcessPool("gone"))
    threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGHUP)).start()
    with pytest.raises(atomic.Terminated) as e, atomic.terminating_signals():
        qtool.pool.result(f)
    assert e.value.signum == signal.SIGHUP
    with pytest.raises(WorkerError, match="worker process died"):  # no signal: the death is reported
        qtool.pool.result(f)
