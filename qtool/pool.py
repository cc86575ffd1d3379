"""The one worker pool: forked processes that run work items for quantize and stats, results
taken back in submission order with a bounded number in flight.

What every worker does on start (`_setup`): ignore SIGINT (the parent handles Ctrl-C and cleans
up), take the default action for SIGTERM / SIGHUP / SIGQUIT, ask the kernel to kill it when the
parent dies (Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)`) and, everywhere, watch the parent's pid
once every 0.25 s from a daemon thread, so no worker outlives a killed parent by more than a
second; forget the parent's pooled scratch memory; then run the caller's initializer.

`resolve_workers` validates a worker count before anything starts; a pool that cannot start
its processes, or whose worker dies, raises WorkerError (never a hang or a traceback).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Generic, TypeVar

from .errors import WorkerError

T = TypeVar("T")
MAX_WORKERS_PER_CORE = 1
"""Workers beyond the cores only add memory (each holds a slab and its temporaries) and lose
time to switching: measured 4x slower with 64 workers on 2 cores."""
_PR_SET_PDEATHSIG = 1
WATCHDOG_INTERVAL = 0.25


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_workers(requested: int | None, n_items: int | None = None,
                    warn: Callable[[str], None] | None = None) -> int:
    """The worker count to use: None or <= 0 means all cores (as llama-quantize's nthread <= 0);
    more than MAX_WORKERS_PER_CORE x cores is capped with a warning; never more than the work
    items there are (no warning: idle workers would only cost start-up)."""
    cores = available_cores()
    n = cores if requested is None or requested <= 0 else requested
    cap = MAX_WORKERS_PER_CORE * cores
    if n > cap:
        if warn is not None:
            shown = str(requested) if requested is not None and requested < 10**12 else "that many"
            warn(f"{shown} worker processes requested, {cores} core(s) available: using {cap}")
        n = cap
    if n_items is not None:
        n = min(n, max(1, n_items))
    return max(1, n)


def _set_pdeathsig() -> None:
    """Linux: SIGKILL this process when its parent exits (no orphaned workers after a SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(WATCHDOG_INTERVAL)
        if os.getppid() != parent:
            os._exit(1)


def _setup(parent: int, init: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGHUP", "SIGQUIT"):
        # default action (die with the group), except where the run ignores the signal (`nohup`
        # ignores SIGHUP, and so does the main process: a worker dying of it would fail the run)
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    _set_pdeathsig()
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="qtool-parent-watch").start()
    from .quants import scratch

    scratch.reset()
    if init is not None:
        init(*initargs)


class WorkerPool:
    """N forked worker processes (`submit` -> Future); a context manager that always shuts down.

    The processes start in the constructor: a failure to fork (process limit, memory) stops the
    ones that did start and raises WorkerError."""

    def __init__(self, workers: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        ctx = get_context("fork") if os.name == "posix" else get_context("spawn")
        self.workers = workers
        before = {p.pid for p in multiprocessing.active_children()}
        try:
            self._ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_setup,
                                           initargs=(os.getpid(), initializer, initargs))
            self._ex.submit(int, 0).result()  # the workers start here (a fork context starts them all)
        except (OSError, BrokenProcessPool) as e:
            for p in multiprocessing.active_children():
                if p.pid not in before:
                    with contextlib.suppress(OSError):
                        p.kill()
            with contextlib.suppress(Exception):
                self._ex.shutdown(wait=False, cancel_futures=True)
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            raise WorkerError(f"cannot start {workers} worker process(es): {why}; try fewer (NTHREADS / -t)") from None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        try:
            return self._ex.submit(fn, *args)
        except BrokenProcessPool:
            raise _died() from None

    def shutdown(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


_DIED = ("a worker process died during the run (killed, out of memory, or its input file changed "
         "under it)")
DIED_GRACE = 0.25
"""Seconds a dead worker is not reported for: a signal sent to the whole process group (Ctrl-C,
`kill -HUP -PGID`, a closed terminal) kills the workers (SIG_DFL) and reaches this process too,
but a worker can die and its pool break before this process's handler has run. Sleeping lets
the handler run first (it raises out of the sleep), so such a run ends as the signal says."""


def _died() -> WorkerError:
    time.sleep(DIED_GRACE)
    return WorkerError(_DIED)


def result(f: Future[T]) -> T:
    """f.result(), with a dead worker reported as a WorkerError."""
    try:
        return f.result()
    except BrokenProcessPool:
        raise _died() from None


class InFlight(Generic[T]):
    """Work items in submission order, each a (Future or None, tag); at most `limit` pending.

    `add` returns the (tag, result) of the oldest items it had to wait for to get back under the
    limit; `drain` waits for the rest. A None future is an item done at once that still reports
    in order (a tensor copied while earlier slabs are running)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._q: deque[tuple[Future[Any] | None, T]] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def add(self, f: Future[Any] | None, tag: T) -> list[tuple[T, Any]]:
        self._q.append((f, tag))
        done = []
        while len(self._q) > self.limit:
            done.append(self._pop())
        while self._q and self._q[0][0] is None:
            done.append(self._pop())
        return done

    def _pop(self) -> tuple[T, Any]:
        f, tag = self._q.popleft()
        return tag, (None if f is None else result(f))

    def drain(self) -> Iterator[tuple[T, Any]]:
        while self._q:
            yield self._pop()
