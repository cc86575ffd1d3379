"""Stream tensors through CUDA devices: raw input bytes in, quantized rows out, copies overlapped.

A chunk of rows is taken as the input file stores it (F16 / BF16 / F32 bytes, or the blocks of a
quantized type with a dequantize kernel (qtool.gpu.dequant): half the bytes of float32 for the
usual F16/BF16 models, an eighth to a half for quantized ones), read with pread straight from the
file into a pinned host buffer (one copy out of the page cache, as `cat` does; no page faults of
a memory map), sent to the device on the slot's own CUDA stream, dequantized to float32 there
(exact: the CPU engine's float32 bits), quantized by the type's kernel and copied back into a
pinned buffer, all asynchronously. Other input types (no dequantize kernel) are dequantized on
the CPU and sent as float32. A writer thread waits for each chunk's event and
writes its bytes with os.pwrite at their final offset in the output's temporary file, while
the calling thread already reads the next chunks into the other slots (several per device), so
reading, GPU work and writing overlap. With several devices, chunks go round-robin over them.

`GpuPipeline.submit` and `drain` are the whole interface (qtool/runner.py calls them for the
tensors whose type has a GPU kernel); the bytes are the numpy engine's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..gguf_io import GGUFError
from ..gguf_io.atomic import start_writeback
from ..quants.types import QType, get_type
from .cuda import CudaKernels, cupy_module
from .dequant import DequantKernel, dequant_kernel
from .kernels import GpuKernel

CHUNK_ELEMENTS = 1 << 25
"""Values per chunk (32 Mi: 64 MiB of F16 in, 128 MiB of float32 on the device)."""
SLOTS_PER_DEVICE = 3


def raw_input(qtype: QType) -> bool:
    """Whether rows stored as this type go to the device as stored (F32, or a type with a dequantize
    kernel: F16, BF16 and the quantized types); the others are dequantized on the CPU and sent as
    float32."""
    return qtype.name == "F32" or dequant_kernel(qtype) is not None


@dataclass(frozen=True)
class FileSpan:
    """Bytes [offset, offset + nbytes) of a file: rows as the input stores them."""

    path: str
    offset: int
    nbytes: int


@dataclass
class _Slot:
    """Buffers and stream of one chunk in flight on one device."""

    kernels: CudaKernels
    stream: Any
    pin_in: Any = None  # numpy views of pinned host memory
    pin_out: Any = None
    dev_in: Any = None
    dev_out: Any = None
    dev_x: Any = None  # float32 rows dequantized on the device (inputs with a dequantize kernel)
    busy: Future[None] | None = None  # the writer's job for the chunk in this slot


def _pinned(cp: Any, nbytes: int) -> np.ndarray:
    mem = cp.cuda.alloc_pinned_memory(max(1, nbytes))
    return np.frombuffer(mem, dtype=np.uint8, count=max(1, nbytes))


class GpuPipeline:
    """Quantize chunks of rows on the GPUs and pwrite the bytes into `fd` at given offsets."""

    def __init__(self, fd: int, devices: list[int] | None = None, chunk_elements: int | None = None) -> None:
        cp = self.cp = cupy_module()
        if devices is None:
            devices = list(range(cp.cuda.runtime.getDeviceCount()))
        self.fd = fd
        self.chunk_elements = chunk_elements or CHUNK_ELEMENTS
        self.slots: list[_Slot] = []
        for d in devices:
            k = CudaKernels(d)
            with cp.cuda.Device(d):
                self.slots += [_Slot(k, cp.cuda.Stream(non_blocking=True)) for _ in range(SLOTS_PER_DEVICE)]
        self._next = 0
        self._imatrix: dict[int, tuple[tuple[int, int], np.ndarray, Any]] = {}  # id(slot) -> its last row
        self._fds: dict[str, int] = {}
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="qtool-gpu-writer")

    @property
    def devices(self) -> list[int]:
        return sorted({s.kernels.device for s in self.slots})

    def _read(self, src: FileSpan | np.ndarray, dst: np.ndarray) -> None:
        """Fill dst with the chunk's bytes (pread from the file, or a copy of rows in memory)."""
        if isinstance(src, np.ndarray):
            np.copyto(dst, src.reshape(-1).view(np.uint8))
            return
        fd = self._fds.get(src.path)
        if fd is None:
            fd = self._fds[src.path] = os.open(src.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        view = dst.data
        done = 0
        while done < src.nbytes:
            n = os.preadv(fd, [view[done:]], src.offset + done)
            if n <= 0:  # an input error, not the output's (run_jobs reports OSError as a write error)
                raise GGUFError(f"{src.path}: the file ends at byte {src.offset + done}, inside a tensor "
                                "(it changed during the run?)")
            done += n

    def _write(self, s: _Slot, event: Any, kernel: GpuKernel, dq: DequantKernel | None, offset: int, nbytes: int,
               done: Callable[[], None] | None) -> None:
        """Writer thread: wait for the chunk's GPU work, write its bytes at offset (unless the kernel
        met rows on which the C aborts: KernelAbort, as the engine raises)."""
        event.synchronize()
        if dq is not None:
            s.kernels.check_abort(dq)
        s.kernels.check_abort(kernel)
        out = memoryview(s.pin_out[:nbytes])
        written = 0
        while written < nbytes:
            written += os.pwrite(self.fd, out[written:], offset + written)
        start_writeback(self.fd, offset, nbytes)
        if done is not None:
            done()

    def submit(self, src: FileSpan | np.ndarray, in_type: QType, n_per_row: int, kernel: GpuKernel,
               imatrix: np.ndarray | None, offset: int, done: Callable[[], None] | None = None) -> None:
        """Quantize rows given as the input stores them (a FileSpan of the rows of a tensor whose type
        `raw_input` accepts, or float32 rows in memory) and write them at `offset`; `done` is called
        (from the writer thread) once the bytes are in the file."""
        cp = self.cp
        s = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        if s.busy is not None:
            s.busy.result()  # the slot's previous chunk is written (its errors surface here)
            s.busy = None
        dq: DequantKernel | None = None
        if isinstance(src, np.ndarray):
            stored, nbytes = get_type("F32"), src.nbytes
            if src.dtype != np.float32:
                raise TypeError("rows in memory must be float32")
        else:
            stored, nbytes = in_type, src.nbytes
            if not raw_input(stored):
                raise ValueError(f"{stored.name} rows have no dequantize kernel: send them as float32 rows")
            dq = None if stored.name == "F32" else dequant_kernel(stored)
        nrows = nbytes // stored.row_bytes(n_per_row)
        out_bytes = nrows * kernel.qtype.row_bytes(n_per_row)
        x_bytes = nrows * n_per_row * 4
        with cp.cuda.Device(s.kernels.device):
            if s.pin_in is None or s.pin_in.nbytes < nbytes:
                s.pin_in = _pinned(cp, nbytes)
                s.dev_in = cp.empty(nbytes, dtype=cp.uint8)
            if s.pin_out is None or s.pin_out.nbytes < out_bytes:
                s.pin_out = _pinned(cp, out_bytes)
                s.dev_out = cp.empty(out_bytes, dtype=cp.uint8)
            if dq is not None and (s.dev_x is None or s.dev_x.nbytes < x_bytes):
                s.dev_x = cp.empty(x_bytes, dtype=cp.uint8)
            self._read(src, s.pin_in[:nbytes])  # the host's share: page cache -> pinned memory
            with s.stream:
                d_in = s.dev_in[:nbytes]
                d_in.set(s.pin_in[:nbytes], stream=s.stream)
                if dq is None:  # float32 rows
                    x = d_in.view(cp.float32).reshape(nrows, n_per_row)
                else:  # the stored blocks (or F16 / BF16 values) dequantized on the device
                    x = s.dev_x[:x_bytes].view(cp.float32).reshape(nrows, n_per_row)
                    s.kernels.dequantize_device(d_in, dq, nrows, n_per_row, x)
                qw = None if imatrix is None else self._device_imatrix(s, imatrix)
                d_out = s.dev_out[:out_bytes].reshape(nrows, -1)
                s.kernels.quantize_device(x, kernel, qw, d_out)
                d_out.reshape(-1).get(stream=s.stream, out=s.pin_out[:out_bytes])
                event = s.stream.record()
        s.busy = self._writer.submit(self._write, s, event, kernel, dq, offset, out_bytes, done)

    def _device_imatrix(self, s: _Slot, imatrix: np.ndarray) -> Any:
        """The imatrix row on the device, uploaded on the slot's own stream when it differs from the
        slot's previous chunk's: a copy uploaded on another slot's stream would not be ordered before
        this slot's kernel (two CUDA streams run in no given order; tensors that share an imatrix
        row share its host array), and one row per slot bounds the device memory (a cache of every
        row grew with the model: experts x tensors). The entry keeps the host array alive, so its
        address cannot be reused by another row while cached (an id() of a per-slab view can be,
        and was: a stale row quantized the next tensor)."""
        key = (imatrix.__array_interface__["data"][0], imatrix.size)
        hit = self._imatrix.get(id(s))
        if hit is None or hit[0] != key or not np.array_equal(hit[1], imatrix):
            row = self.cp.asarray(np.ascontiguousarray(imatrix, dtype=np.float32))  # on the slot's stream
            hit = self._imatrix[id(s)] = (key, imatrix, row)
        return hit[2]

    def drain(self) -> None:
        """Wait until every submitted chunk is written (re-raising a write error)."""
        for s in self.slots:
            if s.busy is not None:
                f, s.busy = s.busy, None
                f.result()

    def close(self) -> None:
        """Drain, stop the writer thread, close the input files."""
        try:
            self.drain()
        finally:
            self._writer.shutdown(wait=True, cancel_futures=True)
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._imatrix.clear()

