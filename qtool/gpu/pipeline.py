"""Stream tensors through CUDA devices: raw input bytes in, quantized rows out, copies overlapped.

A chunk of rows is taken as the input file stores it (F16 / BF16 / F32 bytes, half the bytes of
float32 for the usual F16/BF16 models; other types are dequantized on the CPU first), copied into
a pinned host buffer, sent to the device on its own CUDA stream, widened to float32 there,
quantized by the type's kernel and copied back into a pinned buffer, all asynchronously. While
the GPU works on one chunk, the host already copies the next one in (two slots per device), and
results are written with os.pwrite at their final offsets in the output's temporary file, so
chunks may finish in any order. With several devices, chunks go round-robin over them.

Everything here is the same for any device count; `GpuPipeline.submit` and `drain` are the
whole interface (qtool/runner.py calls them for the tensors whose type has a GPU kernel).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..quants.types import QType
from .cuda import CudaKernels, cupy_module
from .kernels import GpuKernel

CHUNK_ELEMENTS = 1 << 25
"""Values per chunk (32 Mi: 64 MiB of F16 in, 128 MiB of float32 on the device)."""
FLOAT_INPUTS = ("F32", "F16", "BF16")


@dataclass
class _Slot:
    """One chunk in flight on one device: its buffers, stream and what to do when done."""

    kernels: CudaKernels
    stream: Any
    pin_in: Any = None  # numpy view of pinned host memory
    pin_out: Any = None
    dev_in: Any = None
    dev_out: Any = None
    pending: tuple[int, int, Any, Callable[[], None] | None] | None = None  # (offset, nbytes, event, done)


def _pinned(cp: Any, nbytes: int) -> np.ndarray:
    mem = cp.cuda.alloc_pinned_memory(max(1, nbytes))
    return np.frombuffer(mem, dtype=np.uint8, count=max(1, nbytes))


class GpuPipeline:
    """Quantize chunks of rows on the GPUs and pwrite the bytes into `fd` at given offsets."""

    def __init__(self, fd: int, devices: list[int] | None = None, chunk_elements: int = CHUNK_ELEMENTS) -> None:
        cp = self.cp = cupy_module()
        if devices is None:
            devices = list(range(cp.cuda.runtime.getDeviceCount()))
        self.fd = fd
        self.chunk_elements = chunk_elements
        self.slots: list[_Slot] = []
        for d in devices:
            k = CudaKernels(d)
            with cp.cuda.Device(d):
                self.slots += [_Slot(k, cp.cuda.Stream(non_blocking=True)) for _ in range(2)]
        self._next = 0
        self._imatrix: dict[tuple[int, int, int], tuple[np.ndarray, Any]] = {}

    @property
    def devices(self) -> list[int]:
        return sorted({s.kernels.device for s in self.slots})

    def _finish(self, s: _Slot) -> None:
        assert s.pending is not None
        offset, nbytes, event, done = s.pending
        event.synchronize()
        out = memoryview(s.pin_out[:nbytes])
        written = 0
        while written < nbytes:
            written += os.pwrite(self.fd, out[written:], offset + written)
        s.pending = None
        if done is not None:
            done()

    def submit(self, raw: np.ndarray, in_type: QType, n_per_row: int, kernel: GpuKernel,
               imatrix: np.ndarray | None, offset: int, done: Callable[[], None] | None = None) -> None:
        """Quantize rows given as the input stores them (raw: uint8 [nrows, row bytes] of an
        F16 / BF16 / F32 tensor, or float32 rows) and write them at `offset`; `done` is called
        once the bytes are in the file."""
        cp = self.cp
        s = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        if s.pending is not None:
            self._finish(s)
        src = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        nrows = src.nbytes // (n_per_row * (4 if raw.dtype == np.float32 else _width(in_type)))
        name = "F32" if raw.dtype == np.float32 else in_type.name
        out_bytes = nrows * kernel.qtype.row_bytes(n_per_row)
        with cp.cuda.Device(s.kernels.device):
            if s.pin_in is None or s.pin_in.nbytes < src.nbytes:
                s.pin_in = _pinned(cp, src.nbytes)
                s.dev_in = cp.empty(src.nbytes, dtype=cp.uint8)
            if s.pin_out is None or s.pin_out.nbytes < out_bytes:
                s.pin_out = _pinned(cp, out_bytes)
                s.dev_out = cp.empty(out_bytes, dtype=cp.uint8)
            np.copyto(s.pin_in[:src.nbytes], src)  # the host's share: page cache -> pinned memory
            with s.stream:
                d_in = s.dev_in[:src.nbytes]
                d_in.set(s.pin_in[:src.nbytes], stream=s.stream)
                x = _widen(cp, d_in, name).reshape(nrows, n_per_row)
                qw = None if imatrix is None else self._device_imatrix(s.kernels.device, imatrix)
                d_out = s.dev_out[:out_bytes].reshape(nrows, -1)
                s.kernels.quantize_device(x, kernel, qw, d_out)
                d_out.reshape(-1).get(stream=s.stream, out=s.pin_out[:out_bytes])
                event = s.stream.record()
        s.pending = (offset, out_bytes, event, done)

    def _device_imatrix(self, device: int, imatrix: np.ndarray) -> Any:
        """The imatrix row on the device, uploaded once per (device, host memory): the cache keeps
        the host array alive, so its address cannot be reused by another row while cached (an
        id() of a per-slab view can be, and was: a stale row quantized the next tensor)."""
        key = (device, imatrix.__array_interface__["data"][0], imatrix.size)
        hit = self._imatrix.get(key)
        if hit is None or not np.array_equal(hit[0], imatrix):
            hit = self._imatrix[key] = (imatrix, self.cp.asarray(np.ascontiguousarray(imatrix, dtype=np.float32)))
        return hit[1]

    def drain(self) -> None:
        """Wait for every chunk and write it."""
        for s in self.slots:
            if s.pending is not None:
                self._finish(s)

    def close(self) -> None:
        self.drain()
        self._imatrix.clear()


def _width(qt: QType) -> int:
    return {"F32": 4, "F16": 2, "BF16": 2}[qt.name]


def _widen(cp: Any, raw: Any, name: str) -> Any:
    """Raw device bytes of F32 / F16 / BF16 values as float32 (exact: every F16 / BF16 value is a float32)."""
    if name == "F32":
        return raw.view(cp.float32)
    if name == "F16":
        return raw.view(cp.float16).astype(cp.float32)
    if name == "BF16":
        return (raw.view(cp.uint16).astype(cp.uint32) << 16).view(cp.float32)
    raise ValueError(f"no device conversion from {name}")
