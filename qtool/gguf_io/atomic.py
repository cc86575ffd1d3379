"""Safe outputs: resolve and check an output path before any work, write it under a temporary
name in the target folder, rename it when complete, and never leave the temporary file behind.

Every command that writes a file goes through `check_output` (before reading a tensor) and
`AtomicOutput` (while writing):

- `check_output(path, inputs)` resolves the path for real (symlinks followed, `..` taken after
  the folder it follows, as the kernel does) and refuses an output that is one of the inputs,
  that exists and is not a regular file (directory, device, FIFO, socket), or whose folder is
  missing or not writable.
- `AtomicOutput` writes `.<name>.qtool-<pid>-<random>.part` beside the target; any failure in
  write, flush, fsync or rename removes it; a terminating signal turned into an exception by
  `terminating_signals` does too. A run killed with SIGKILL cannot clean up: the next run
  removes `.part` files whose process is gone (`remove_stale_parts`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import stat
import sys
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from ..errors import OutputError

_PART_RE = re.compile(r"^\..+\.qtool-(?P<pid>\d+)-[0-9a-f]+\.part$")


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing [offset, offset + nbytes) of fd to disk now, without
    waiting (Linux sync_file_range(SYNC_FILE_RANGE_WRITE); a no-op elsewhere): the data is still
    fsynced at commit, but most of it is on disk by then, so the commit's fsync does not wait for
    gigabytes at the end of a run. Writers of big slabs call it after each pwrite."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                f = ctypes.CDLL(None, use_errno=True).sync_file_range
                f.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                _sync_file_range = f
            except (OSError, AttributeError):
                pass
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # errors: the fsync reports them


def _umask_mode() -> int:
    """The permissions open(..., "w") would give a new file (0666 less the umask): mkstemp makes
    0600, and a quantized model should be as readable as one llama-quantize writes."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def resolve_output(path: str | os.PathLike[str]) -> str:
    """The file a write to `path` lands on: the real path of its folder (symlinks and `..` as the
    kernel resolves them) joined with its name; a symlink as the name itself is followed too."""
    p = os.fspath(path)
    if p == "" or p.endswith(os.sep) or os.path.basename(p) in (".", ".."):
        if p and os.path.isdir(p):
            raise OutputError(f"{p}: the output exists and is a directory, not a regular file", path=p)
        raise OutputError(f"{p!r}: not a file name", path=p)
    real = os.path.realpath(p)  # follows every symlink, dangling ones included, and `..` after them
    return real


def check_output(path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = (),
                 what: str = "output") -> str:
    """Resolve an output path and check it can be written without harm; returns the real path.

    Refused (OutputError naming `path`): an output that is the same file as any input (also via
    symlinks, hard links or `..`), an existing output that is not a regular file, a missing or
    non-writable folder."""
    p = os.fspath(path)
    real = resolve_output(p)
    folder = os.path.dirname(real) or "."
    if not os.path.isdir(folder):
        raise OutputError(f"{p}: the {what}'s folder {folder} does not exist", path=p)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: the {what}'s folder {folder} is not writable", path=p)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{p}: cannot check the {what}: {e.strerror}", path=p) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        raise OutputError(f"{p}: the {what} exists and is {kind}, not a regular file; refusing to replace it",
                          path=p)
    for i in inputs:
        ip = os.fspath(i)
        same = False
        try:
            same = st is not None and os.path.samefile(real, ip)
        except OSError:
            pass
        if same or os.path.realpath(ip) == real:
            raise OutputError(f"{p}: the {what} is the input file {ip}; choose another name", path=p)
    return real


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(folder: str) -> list[str]:
    """Remove `.NAME.qtool-PID-RANDOM.part` files in folder whose process no longer runs (left by a
    run killed with SIGKILL or a power cut); returns the removed paths."""
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for n in names:
        m = _PART_RE.match(n)
        if not m or _pid_alive(int(m.group("pid"))):
            continue
        p = os.path.join(folder, n)
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(p).st_mode):
                os.unlink(p)
                removed.append(p)
    return removed


class AtomicOutput:
    """A file written under a temporary name in the target folder, renamed on commit().

    The path is checked and resolved (`check_output`) unless `checked` says the caller did it.
    Any exception in commit() removes the temporary file and is re-raised as an OutputError that
    names the output, not the hidden temporary file."""

    def __init__(self, path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = (),
                 checked: bool = False) -> None:
        self.shown = os.fspath(path)
        self.path = resolve_output(path) if checked else check_output(path, inputs)
        d = os.path.dirname(self.path) or "."
        remove_stale_parts(d)
        base = "." + os.path.basename(self.path) + f".qtool-{os.getpid()}-"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):
            tmp = os.path.join(d, base + secrets.token_hex(4) + ".part")
            try:
                fd = os.open(tmp, flags, 0o600)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise OutputError(f"{self.shown}: cannot create a file in {d}: {e.strerror}", path=self.shown) from None
        else:  # pragma: no cover - 100 random collisions
            raise OutputError(f"{self.shown}: cannot create a temporary file in {d}", path=self.shown)
        self.tmp = tmp
        self._done = False
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, _umask_mode())
            self.f: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._unlink()
            raise

    def commit(self) -> None:
        """Flush, fsync and rename onto the target; on any failure the temporary file is removed."""
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            st = _stat_or_none(self.path)  # the target may have become a directory or device meanwhile
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise OutputError(f"{self.shown}: the output is now {_kind(st.st_mode)}; not replaced",
                                  path=self.shown)
            os.replace(self.tmp, self.path)
            self._done = True
        except OutputError:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise OutputError(f"{self.shown}: cannot write the output: {e.strerror or e}", path=self.shown) from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and remove the temporary file (safe to call more than once)."""
        try:
            with contextlib.suppress(OSError):
                self.f.close()
        finally:
            self._unlink()

    def _unlink(self) -> None:
        if not self._done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            self._done = True

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _stat_or_none(p: str) -> os.stat_result | None:
    try:
        return os.stat(p)
    except OSError:
        return None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, inputs: Sequence[str] = ()) -> None:
    """Write a whole small file (a recipe, a CSV, a plot) through AtomicOutput."""
    with AtomicOutput(path, inputs) as out:
        try:
            out.f.write(data)
        except OSError as e:
            raise OutputError(f"{os.fspath(path)}: cannot write the output: {e.strerror or e}",
                              path=os.fspath(path)) from None


class Terminated(KeyboardInterrupt):
    """A terminating signal (SIGTERM, SIGHUP, SIGQUIT) raised as an exception so that `finally`
    blocks and AtomicOutput clean up; `signum` gives the exit status 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


TERMINATING_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n))


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminating_signals() -> Iterator[None]:
    """While inside: SIGTERM, SIGHUP and SIGQUIT raise `Terminated` in the main thread (SIGINT
    already raises KeyboardInterrupt), so a killed run removes its temporary file."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in TERMINATING_SIGNALS}
    for s in TERMINATING_SIGNALS:
        if old[s] is not signal.SIG_IGN:  # `nohup` asked for SIGHUP to be ignored: keep that
            signal.signal(s, _raise_terminated)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
