"""Run the kernels on a CUDA GPU through CuPy (`pip install qtool[cuda]`).

`CudaKernels(device)` compiles the kernel source per module, at first use, with NVRTC
(`--fmad=false --ftz=false`, IEEE division and square root: qtool.gpu.nvrtc, cached on disk)
and quantizes or dequantizes rows that are already on the device (CuPy arrays) or on the host (numpy arrays,
copied over and back).
Every launch is one thread per block (or per row, for kernels that carry state along a row).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import QtoolError
from ..quants.engine import check_rows
from ..quants.types import MAINLINE, QType, get_type
from .dequant import DequantKernel, dequant_call
from .kernels import GpuKernel, KernelAbort, kernel_for
from .nvrtc import NVRTC_OPTIONS, compile_module, direct_compile_available
from .source import kernel_modules, module_source
from .tables import table

THREADS_PER_BLOCK = 128
_NULL = np.uint64(0)


class GpuUnavailable(QtoolError):
    """No usable CUDA device: CuPy missing, no GPU, or the driver refused."""


def cupy_module() -> Any:
    """The cupy module, or GpuUnavailable saying how to get it (checked once per process)."""
    global _CUPY
    if _CUPY is None:
        _CUPY = _load_cupy()
    return _CUPY


_CUPY: Any = None


def _load_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise GpuUnavailable(f"--device cuda needs CuPy (pip install 'qtool[cuda]'): {e}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001  (CuPy raises its own runtime errors)
        raise GpuUnavailable(f"--device cuda: no CUDA device usable ({e})") from None
    if n < 1:
        raise GpuUnavailable("--device cuda: no CUDA device found")
    return cupy


def device_count() -> int:
    """CUDA devices visible (0 where CuPy or a GPU is missing)."""
    try:
        return int(cupy_module().cuda.runtime.getDeviceCount())
    except GpuUnavailable:
        return 0


class CudaKernels:
    """The kernels on one device, compiled per source module (qtool.gpu.source.MODULES) when a
    kernel of it is first launched."""

    def __init__(self, device: int = 0) -> None:
        self.cp = cupy_module()
        self.device = device
        self._modules: dict[str, Any] = {}
        self._fns: dict[str, Any] = {}
        self._tables: dict[str, Any] = {}  # table name -> its copy on this device
        self._bound: set[tuple[str, str]] = set()  # (module, table) whose QTABLE pointer is set
        self._abort: dict[str, Any] = {}  # module -> the int its qtool_abort points at (prelude.cuh)
        self.keeps_subnormals: bool | None = None  # the probe's answer, once a module is built

    def module(self, name: str) -> Any:
        """The compiled module: NVRTC without flush-to-zero (qtool.gpu.nvrtc, cached on disk); where
        this CuPy lacks the calls that needs, CuPy's RawModule (which flushes subnormals: a warning
        says so, once, after the probe). The first module built on the device runs the probe."""
        m = self._modules.get(name)
        if m is None:
            cp = self.cp
            code = module_source(name)
            if direct_compile_available(cp):
                m = compile_module(cp, code, self.device)
            else:
                with cp.cuda.Device(self.device):
                    m = cp.RawModule(code=code, options=NVRTC_OPTIONS)
                    m.compile()
            self._modules[name] = m
            if self.keeps_subnormals is None:
                self.keeps_subnormals = self._probe_subnormals(m)
        return m

    def _probe_subnormals(self, m: Any) -> bool:
        """Run prelude.cuh's qtool_probe_subnormal: True where the build keeps subnormal floats (as
        ggml's C on x86), else warn that bytes may differ from the CPU's on such values."""
        cp = self.cp
        with cp.cuda.Device(self.device):
            y = cp.asarray(np.array([2.0**-126, 2.0**-127], dtype=np.float32))
            m.get_function("qtool_probe_subnormal")((1,), (1,), (y,))
            cp.cuda.runtime.deviceSynchronize()  # the launch may sit on a caller's stream
            got = cp.asnumpy(y)
        ok = bool(got[0] == np.float32(2.0**-127) and got[1] == np.float32(2.0**-125))
        if not ok:
            warnings.warn("--device cuda: this CuPy's kernel build flushes subnormal floats to zero; the "
                          "GPU's bytes may differ from the CPU's where values or scales are subnormal",
                          RuntimeWarning, stacklevel=3)
        return ok

    def _fn(self, name: str, module: str) -> Any:
        key = f"{module}:{name}"
        f = self._fns.get(key)
        if f is None:
            f = self._fns[key] = self.module(module).get_function(name)
        return f

    def _bind_tables(self, module: str, names: tuple[str, ...]) -> None:
        """Upload the tables once per device and point the module's QTABLE variables at them; then
        wait for the device, so kernels on any stream see both (the uploads ran on the current
        stream, the pointer copies on the default one)."""
        cp = self.cp
        bound = False
        for name in names:
            if (module, name) in self._bound:
                continue
            arr = self._tables.get(name)
            if arr is None:
                arr = self._tables[name] = cp.asarray(table(name))
            ptr = self.module(module).get_global(name)  # the QTABLE pointer variable (8 bytes)
            ptr.copy_from_host(np.array([arr.data.ptr], dtype=np.uint64).ctypes.data, 8)
            self._bound.add((module, name))
            bound = True
        if bound:
            with cp.cuda.Device(self.device):
                cp.cuda.runtime.deviceSynchronize()

    def _abort_flag(self, module: str) -> Any:
        """The module's abort flag on this device (zeroed, bound at the module's first launch)."""
        f = self._abort.get(module)
        if f is None:
            cp = self.cp
            with cp.cuda.Device(self.device):
                f = cp.zeros(1, dtype=cp.int32)
                ptr = self.module(module).get_global("qtool_abort")
                ptr.copy_from_host(np.array([f.data.ptr], dtype=np.uint64).ctypes.data, 8)
                cp.cuda.runtime.deviceSynchronize()
            self._abort[module] = f
        return f

    def check_abort(self, k: GpuKernel | DequantKernel) -> None:
        """Raise KernelAbort if a launch of k's module met rows on which the C aborts; call it once
        the launch has finished (the flag is sticky: any launch of the module since the last check)."""
        f = self._abort.get(kernel_modules()[k.kernel])
        if f is None:
            return
        with self.cp.cuda.Device(self.device):
            if int(f.get()[0]):
                f.fill(0)
                raise KernelAbort(k)

    def _launch(self, name: str, module: str, n_threads: int, args: tuple[Any, ...]) -> None:
        if n_threads <= 0:
            return
        grid = (n_threads + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        self._fn(name, module)((grid,), (THREADS_PER_BLOCK,), args)

    def quantize_device(self, x: Any, k: GpuKernel, qw: Any | None, out: Any | None = None) -> Any:
        """Quantize float32 rows on the device (x: CuPy [nrows, n_per_row], C-contiguous) into
        out (CuPy uint8 [nrows, row_bytes], allocated if None); qw: CuPy float32 [n_per_row].
        Runs on the current CuPy stream; check_abort(k) once it has finished."""
        cp = self.cp
        nrows, n = (int(s) for s in x.shape)
        qt = k.qtype
        if out is None:
            out = cp.empty((nrows, qt.row_bytes(n)), dtype=cp.uint8)
        module = kernel_modules()[k.kernel]
        self._abort_flag(module)
        self._bind_tables(module, k.tables)
        aux = None
        if (qw is not None) in k.row_prepass:
            aux = cp.empty(nrows, dtype=cp.float32)
            self._launch("row_mean_square", module, nrows, (x, aux, np.int64(nrows), np.int64(n)))
        self._launch(k.kernel, module, k.threads(nrows, n),
                     (x, _NULL if qw is None else qw, out, _NULL if aux is None else aux,
                      np.int64(nrows), np.int64(n)))
        return out

    def quantize(self, rows: np.ndarray, qtype: str | QType, imatrix: np.ndarray | None = None,
                 flavour: str = MAINLINE) -> np.ndarray:
        """The engine contract on the GPU: numpy rows in, numpy bytes out."""
        cp = self.cp
        qt = get_type(qtype)
        k = kernel_for(qt, imatrix is not None, flavour)
        x, qw = check_rows(rows, qt, imatrix)
        with cp.cuda.Device(self.device):
            out = cp.asnumpy(self.quantize_device(cp.asarray(x), k, None if qw is None else cp.asarray(qw)))
        self.check_abort(k)
        return out

    def dequantize_device(self, q: Any, k: DequantKernel, nrows: int, n_per_row: int, out: Any | None = None) -> Any:
        """Dequantize rows of blocks on the device (q: CuPy uint8, the rows' bytes, C-contiguous)
        into out (CuPy float32 [nrows, n_per_row], allocated if None); on the current CuPy stream."""
        cp = self.cp
        if out is None:
            out = cp.empty((nrows, n_per_row), dtype=cp.float32)
        self._abort_flag(k.module)
        self._bind_tables(k.module, k.tables)
        self._launch(k.kernel, k.module, k.threads(nrows, n_per_row), (q, out, np.int64(nrows), np.int64(n_per_row)))
        return out

    def dequantize(self, data: np.ndarray, qtype: str | QType, n_per_row: int) -> np.ndarray:
        """engine.dequantize on the GPU: rows' bytes (numpy) in, float32 [nrows, n_per_row] (numpy) out."""
        cp = self.cp
        k, q, nrows = dequant_call(data, qtype, n_per_row)
        with cp.cuda.Device(self.device):
            out = cp.asnumpy(self.dequantize_device(cp.asarray(q), k, nrows, n_per_row))
        self.check_abort(k)
        return out
