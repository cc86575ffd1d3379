"""The GPU kernels' source compiled for the CPU with the system C++ compiler.

Each kernel's grid of threads becomes a loop over blocks; the arithmetic is the same text. It
lets the test suite check every kernel against the golden vectors and the numpy engine on
machines without a GPU, and makes a kernel bug a CPU bug one can step through. Not a fast path:
`-O2 -ffp-contract=off` (no fused multiply-add, as ggml's reference build), one thread.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from typing import Any

import numpy as np

from ..quants.engine import check_rows
from ..quants.types import MAINLINE, QType, get_type
from .dequant import DequantKernel, dequant_call
from .kernels import GpuKernel, KernelAbort, kernel_for
from .source import cache_dir, kernel_source, source_digest
from .tables import table

_F32P = ctypes.POINTER(ctypes.c_float)
_U8P = ctypes.POINTER(ctypes.c_uint8)
CXX_FLAGS = ("-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")


class HostBuildError(RuntimeError):
    """No C++ compiler, or the kernel source does not compile."""


def compiler() -> str | None:
    """The C++ compiler to use ($CXX, else c++ / g++ / clang++ on the PATH), or None."""
    cands = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for c in cands:
        path = shutil.which(c)
        if path:
            return path
    return None


class HostKernels:
    """The kernel source built as a shared library and called through ctypes."""

    def __init__(self) -> None:
        cxx = compiler()
        if cxx is None:
            raise HostBuildError("no C++ compiler found (set CXX)")
        lib = cache_dir("gpu-host") / f"qtool_kernels_{source_digest()}.so"
        if not lib.exists():
            src = lib.with_suffix(".cpp")
            src.write_text(kernel_source(), encoding="utf-8")
            tmp = lib.with_suffix(f".{os.getpid()}.tmp")
            res = subprocess.run([cxx, *CXX_FLAGS, "-o", str(tmp), str(src)], capture_output=True, text=True)
            if res.returncode != 0:
                raise HostBuildError(f"kernel source does not compile:\n{res.stderr[-4000:]}")
            os.replace(tmp, lib)
        self.lib = ctypes.CDLL(str(lib))
        self._tables: dict[str, np.ndarray] = {}
        self._abort = ctypes.c_int(0)  # prelude.cuh's qtool_abort points here during a call

    def _bind_tables(self, names: tuple[str, ...]) -> None:
        """Point the source's QTABLE pointers at the tables (kept alive by this object)."""
        for name in names:
            if name not in self._tables:
                arr = self._tables[name] = table(name)
                ctypes.c_void_p.in_dll(self.lib, name).value = arr.ctypes.data

    def _fn(self, name: str) -> Any:
        return getattr(self.lib, name)

    def _call(self, k: GpuKernel | DequantKernel, *args: Any) -> None:
        """Run k's kernel with prelude.cuh's qtool_abort pointed at this object's int; KernelAbort
        where the kernel met rows the C aborts on."""
        self._abort.value = 0
        ctypes.c_void_p.in_dll(self.lib, "qtool_abort").value = ctypes.addressof(self._abort)
        self._fn(k.kernel)(*args)
        if self._abort.value:
            raise KernelAbort(k)

    def quantize(self, rows: np.ndarray, qtype: str | QType, imatrix: np.ndarray | None = None,
                 flavour: str = MAINLINE) -> np.ndarray:
        """Quantize float32 rows as the GPU kernel does (same contract as qtool.quants.quantize)."""
        qt = get_type(qtype)
        k = kernel_for(qt, imatrix is not None, flavour)
        x, qw = check_rows(rows, qt, imatrix)
        nrows, n = x.shape
        y = np.zeros((nrows, qt.row_bytes(n)), dtype=np.uint8)
        self._bind_tables(k.tables)
        aux = None
        if (qw is not None) in k.row_prepass:
            aux = np.empty(nrows, dtype=np.float32)
            self._fn("row_mean_square")(x.ctypes.data_as(_F32P), aux.ctypes.data_as(_F32P),
                                        ctypes.c_int64(nrows), ctypes.c_int64(n))
        self._call(k, x.ctypes.data_as(_F32P), None if qw is None else qw.ctypes.data_as(_F32P),
                   y.ctypes.data_as(_U8P), None if aux is None else aux.ctypes.data_as(_F32P),
                   ctypes.c_int64(nrows), ctypes.c_int64(n))
        return y

    def dequantize(self, data: np.ndarray, qtype: str | QType, n_per_row: int) -> np.ndarray:
        """Dequantize rows of blocks as the GPU kernel does (the contract of engine.dequantize:
        bytes of whole rows in, float32 [nrows, n_per_row] out)."""
        k, q, nrows = dequant_call(data, qtype, n_per_row)
        y = np.empty((nrows, n_per_row), dtype=np.float32)
        self._bind_tables(k.tables)
        self._call(k, q.ctypes.data_as(_U8P), y.ctypes.data_as(_F32P), ctypes.c_int64(nrows),
                   ctypes.c_int64(n_per_row))
        return y
