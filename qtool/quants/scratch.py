"""Scratch memory of the engine: per-thread pooled buffers (`Workspace`, `thread_workspace`).

Kernels take their big per-chunk temporaries from a Workspace so that fresh multi-megabyte
arrays do not page-fault on every chunk; the memory goes back to a per-thread pool for the next
Workspace. `reset()` empties the calling thread's pool: a forked worker calls it so that it does
not keep its parent's pooled pages alive (they are private mappings, so writes never mix).
"""

from __future__ import annotations

import mmap
import sys
import threading

import numpy as np

F32 = np.float32

_TLS = threading.local()
_POOL_BYTES = 128 << 20  # free scratch memory a thread keeps for the next Workspace


def _take_raw(nbytes: int) -> np.ndarray:
    """A uint8 buffer of at least nbytes: a free one from this thread's pool, or a new one.

    A pooled buffer is free when nothing but the pool refers to it: every array a Workspace
    hands out is a view whose base is the buffer, so a live Workspace, or any view of its memory
    still held by a caller, keeps the reference count up and the memory out of reuse. The count
    of a free buffer is read off a sentinel that only the pool holds, in the same expression, so
    it does not depend on how the interpreter counts loop variables and arguments. Recycled
    memory is already mapped: no page faults, no zeroing by the kernel. Buffers of 64 KiB and
    more are anonymous mmaps outside malloc's heap, so holding them does not move where the heap
    can shrink (which decides how often everyone else's temporaries fault their pages in).
    """
    pool: list[np.ndarray] | None = getattr(_TLS, "pool", None)
    if pool is None:
        pool = _TLS.pool = [np.empty(0, dtype=np.uint8)]  # pool[0]: the sentinel, never handed out
    refs = [sys.getrefcount(r) for r in pool]  # one expression: the same count for every entry
    free = [c == refs[0] for c in refs]
    best = -1
    for i in range(1, len(pool)):
        if free[i] and pool[i].nbytes >= nbytes and (best < 0 or pool[i].nbytes < pool[best].nbytes):
            best = i
    if best >= 0:
        return pool[best]
    total = nbytes + sum(r.nbytes for r in pool)
    for i in range(len(pool) - 1, 0, -1):  # over budget: forget free buffers, newest first
        if total <= _POOL_BYTES:
            break
        if free[i]:
            total -= pool[i].nbytes
            del pool[i]
    # pages of their own (anonymous mmap), not malloc's heap: memory kept here must not change
    # where the heap can shrink, which decides the page faults of every other temporary. Private,
    # not Python's default MAP_SHARED: a forked child must get copy-on-write pages, not the same memory
    new = _anon_pages(nbytes) if nbytes >= 1 << 16 else np.empty(nbytes, np.uint8)
    if total <= _POOL_BYTES:
        pool.append(new)
    return new


def _anon_pages(nbytes: int) -> np.ndarray:
    """nbytes of private anonymous memory as a uint8 array (MAP_PRIVATE where the OS has it)."""
    if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS"):
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        m = mmap.mmap(-1, nbytes)
    return np.frombuffer(m, dtype=np.uint8)


class Workspace:
    """Scratch arrays reused from chunk to chunk within one call.

    A fresh multi-megabyte temporary costs page faults about as expensive as the arithmetic done
    on it (the allocator hands freed memory back to the system), so the big per-chunk buffers are
    kept here and sliced to each chunk's size, and their memory goes back to a per-thread pool
    when the Workspace is gone, for the next one (see _take_raw). Results never depend on the
    workspace.

    Each buffer starts 64-byte aligned at its own offset within a 4 KiB page (5 cache lines
    apart per name). Without that, two operands of one ufunc that sit a few bytes apart modulo
    4096 (malloc puts every large array at page + 16) make the CPU's loads wait on unrelated
    stores ("4K aliasing"): a broadcast multiply ran 5x slower that way.
    """

    _STAGGER = 320  # bytes between the page offsets of successive names

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        self._slot: dict[str, int] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = F32) -> np.ndarray:
        """An uninitialized C-contiguous array of this shape, the same memory on every call."""
        size = 1
        for d in shape:
            size *= d
        dt = np.dtype(dtype)
        a = self._bufs.get(name)
        if a is None or a.dtype != dt or a.size < size:
            slot = self._slot.setdefault(name, len(self._slot))
            off = (slot * self._STAGGER) % 4096
            nbytes = max(size, 1) * dt.itemsize
            self._bufs.pop(name, None)  # its memory may serve the new size
            raw = _take_raw(nbytes + 4096 + off)
            start = (-raw.ctypes.data) % 4096 + off
            a = raw[start:start + nbytes].view(dt)
            self._bufs[name] = a
        return a[:size].reshape(shape)


def thread_workspace() -> Workspace:
    """This thread's Workspace, kept from call to call.

    Kernels that run on many tensors one after another take their scratch buffers from here, so
    only the first call pays the page faults of fresh memory (a few MB, bounded by the chunk
    sizes). One per thread: a Workspace must not be shared by concurrent calls.
    """
    ws = getattr(_TLS, "ws", None)
    if ws is None:
        ws = _TLS.ws = Workspace()
    return ws


def reset() -> None:
    """Forget every pooled buffer and workspace of the calling thread (a new, empty pool)."""
    global _TLS
    _TLS = threading.local()


def pooled_buffers() -> int:
    """How many buffers the calling thread's pool holds (the sentinel included); for tests."""
    return len(getattr(_TLS, "pool", ()))

