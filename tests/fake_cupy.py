"""A fake `cupy` for CI machines without a GPU: numpy arrays as device memory, the GPU kernels'
source compiled for the CPU (qtool.gpu.host) as the NVRTC modules.

Only the subset that qtool/gpu/cuda.py and qtool/gpu/pipeline.py use is here: cuda.runtime.getDeviceCount,
cuda.Device, cuda.Stream (context manager, record() -> event.synchronize()),
cuda.alloc_pinned_memory, empty, asarray, asnumpy, the dtype names, ndarray.set / .get / .view /
.astype / .reshape / slicing / << / .data.ptr, RawModule(code=, options=).compile() /
.get_function(name)(grid, block, args) / .get_global(name).copy_from_host(ptr, nbytes).

Work on a non-default stream (copies, widening, kernel launches) is queued and runs only when an
event recorded after it is synchronized, on the thread that waits, as a GPU runs it later than
the host asks: host code that reads device results or refills a pinned buffer too early sees
stale bytes. Device memory written on one stream and used on another before the using thread
synchronized that write raises StreamRace (CUDA orders two streams only through events or
synchronization; STRICT_TABLES extends the check to the QTABLE tables a kernel reads).
`empty` fills new memory with a poison byte (device memory is not zeroed), so a kernel that
leaves bytes of its output unwritten is caught. Each RawModule keeps its own QTABLE pointers
(one module per device, as on GPUs) and sets them into the one host library around its launches.
cuda.runtime.deviceSynchronize is there for a fix of qtool/gpu/cuda.py's table binding.
`install(monkeypatch, devices=N)` puts the module in place of cupy for one test.

The array API of the forward pass (qtool.eval with --device cuda): `ARRAY_API`, the cupy
functions it calls, each numpy's on the arrays' memory with results as device arrays (0-d arrays
for whole reductions, as CuPy), get_array_module, ndarray operators and methods. With
`install(..., strict=True)` (STRICT) a host numpy array where CuPy wants a device array (an
operand, an index, a value set into device memory) or a numpy function called on a device array
raises TypeError, as CuPy refuses implicit transfers; off, device arrays behave as numpy's.
"""

from __future__ import annotations

import ctypes
import re
import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from qtool.gpu.source import _KERNEL_DEF

float16, float32, float64, int32, int64, uint8, uint16, uint32 = (np.float16, np.float32, np.float64, np.int32,
                                                                   np.int64, np.uint8, np.uint16, np.uint32)
POISON = 0xA5
DEVICES = 1
"""Device count reported by cuda.runtime.getDeviceCount (install() sets it)."""
STRICT = False
"""Refuse host arrays mixed with device arrays, as CuPy does (install(strict=True) sets it)."""
CALLS: dict[str, int] = {}
"""Launches per kernel name (for tests that check what ran on the 'GPU')."""
_LOCK = threading.Lock()
_LOCAL = threading.local()


def _current_stream() -> Stream | None:
    stack = getattr(_LOCAL, "streams", None)
    return stack[-1] if stack else None


class StreamRace(AssertionError):
    """Device memory used on one stream while the work that fills it, queued on another stream,
    is not known to be done (nothing orders two CUDA streams but an event or a synchronize)."""


_WRITES: dict[tuple[int, int], tuple[Stream, int, weakref.ref[np.ndarray]]] = {}
"""(start, end) address -> the last write queued there: (stream, its op number, the memory's owner)."""
STRICT_TABLES = False
"""Check the QTABLE tables a kernel reads too (their upload must be ordered before the launch)."""
_TABLES: dict[str, int] = {}  # QTABLE name -> the device address it was set to


def _span(a: np.ndarray) -> tuple[int, int]:
    return a.ctypes.data, a.ctypes.data + max(1, a.nbytes)


def _check(spans: list[tuple[int, int]], stream: Stream | None, what: str) -> None:
    """Raise StreamRace where memory is used on `stream` before its pending write on another."""
    with _LOCK:
        for lo, hi in spans:
            for (wlo, whi), (ws, seq, alive) in _WRITES.items():
                if wlo < hi and lo < whi and ws is not stream and alive() is not None and _seen(ws) < seq:
                    raise StreamRace(f"{what}: uses device memory written on another stream, not synchronized "
                                     f"({_name(lo)})")


def _name(addr: int) -> str:
    return next((f"table {n}" for n, p in _TABLES.items() if p == addr), "an array")


def _seen(stream: Stream) -> int:
    """Ops of the stream this thread knows are done (it synchronized an event or the stream):
    whether the other thread happened to run them already does not order anything."""
    seen = _LOCAL.__dict__.get("seen")
    return int(seen.get(stream, 0)) if seen is not None else 0


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _on(stream: Stream | None, op: Callable[[], None], reads: tuple[np.ndarray, ...] = (),
        writes: tuple[np.ndarray, ...] = (), what: str = "copy", extra: list[tuple[int, int]] | None = None) -> None:
    """Run op now (default stream) or queue it on the stream; track which memory it reads and writes."""
    _check([_span(a) for a in reads + writes] + (extra or []), stream, what)
    if stream is None:
        op()
        return
    with stream.lock:
        stream.pending.append(op)
        seq = stream.done + len(stream.pending)
    with _LOCK:
        for k in [k for k, (_, _, alive) in _WRITES.items() if alive() is None]:
            del _WRITES[k]  # freed memory
        for a in writes:
            _WRITES[_span(a)] = (stream, seq, weakref.ref(_owner(a)))


class _Ptr:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


class ndarray(np.ndarray):
    """Device memory: a numpy array whose .data.ptr is the host address of its first byte."""

    @property
    def data(self) -> _Ptr:  # type: ignore[override]
        return _Ptr(self.ctypes.data)

    def set(self, arr: np.ndarray, stream: Stream | None = None) -> None:
        src = np.asarray(arr)
        if src.shape != self.shape or src.dtype != self.dtype:
            raise ValueError(f"set: {src.shape} {src.dtype} into {self.shape} {self.dtype}")
        dst = self.view(np.ndarray)
        _on(stream if stream is not None else _current_stream(), lambda: np.copyto(dst, src), writes=(dst,))

    def get(self, stream: Stream | None = None, out: np.ndarray | None = None) -> np.ndarray:
        src = self.view(np.ndarray)
        if out is None:
            out = np.empty(self.shape, self.dtype)
        if out.shape != self.shape or out.dtype != self.dtype:
            raise ValueError(f"get: {self.shape} {self.dtype} into {out.shape} {out.dtype}")
        dst = out
        _on(stream if stream is not None else _current_stream(), lambda: np.copyto(dst, src), reads=(src,))
        return out

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> ndarray:  # type: ignore[override]
        out = empty(self.shape, dtype)
        src, dst = self.view(np.ndarray), out.view(np.ndarray)
        _on(_current_stream(), lambda: np.copyto(dst, src.astype(dtype)), (src,), (dst,), "astype")
        return out

    def __lshift__(self, k: Any) -> ndarray:  # type: ignore[override]
        out = empty(self.shape, self.dtype)
        src, dst = self.view(np.ndarray), out.view(np.ndarray)
        _on(_current_stream(), lambda: np.left_shift(src, k, out=dst), (src,), (dst,), "<<")
        return out

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if not STRICT:
            return super().__array_ufunc__(ufunc, method, *inputs, **kwargs)  # type: ignore[arg-type]
        _no_host((*inputs, *kwargs.get("out", ())), ufunc.__name__)
        if "out" in kwargs:
            kwargs["out"] = _plain(kwargs["out"])
        return _wrap(getattr(ufunc, method)(*_plain(inputs), **kwargs))

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if STRICT:
            raise TypeError(f"numpy.{func.__name__} called on a device array (call cupy's, or fetch it with .get())")
        return super().__array_function__(func, types, args, kwargs)

    def __getitem__(self, index: Any) -> Any:
        if STRICT:
            _no_host(index, "indexing")
        return super().__getitem__(index)

    def __setitem__(self, index: Any, value: Any) -> None:
        if STRICT:
            _no_host((index, value), "setitem")
        super().__setitem__(index, value)


def _no_host(a: Any, what: str) -> None:
    """TypeError where a (or a member of a tuple / list) is a host numpy array (not a scalar)."""
    if isinstance(a, (tuple, list)):
        for v in a:
            _no_host(v, what)
    elif type(a) is np.ndarray:
        raise TypeError(f"{what}: a host numpy array where cupy needs a device array (cupy.asarray it)")


def _plain(a: Any) -> Any:
    """Device arrays (also in tuples / lists) as the plain numpy arrays of their memory."""
    if isinstance(a, ndarray):
        return a.view(np.ndarray)
    if isinstance(a, (tuple, list)):
        return type(a)(_plain(v) for v in a)
    return a


def _wrap(r: Any) -> Any:
    """numpy results as device arrays (numpy scalars as 0-d arrays, as CuPy returns them)."""
    if isinstance(r, np.ndarray):
        return r.view(ndarray)
    if isinstance(r, np.generic):
        return np.asarray(r).view(ndarray)
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    return r


ARRAY_API = ("abs", "arange", "argmax", "ascontiguousarray", "clip", "copyto", "divide", "empty_like", "exp",
             "full", "isfinite", "log", "matmul", "maximum", "minimum", "negative", "rint", "sqrt", "stack",
             "subtract", "where")
"""The cupy functions qtool.eval's generic numerics call on device arrays (besides asarray, asnumpy,
empty, zeros and get_array_module)."""


def _array_fn(name: str) -> Callable[..., Any]:
    f = getattr(np, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        if STRICT:
            _no_host((*args, *kwargs.values()), f"cupy.{name}")
        return _wrap(f(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))

    call.__name__ = name
    return call


for _fn_name in ARRAY_API:
    globals()[_fn_name] = _array_fn(_fn_name)


def get_array_module(*args: Any) -> types.ModuleType:
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def _dev(a: np.ndarray) -> ndarray:
    return a.view(ndarray)


def empty(shape: Any, dtype: Any = np.float32) -> ndarray:
    a = np.empty(shape, dtype=dtype)
    if a.size:
        a.view(np.uint8).fill(POISON)
    return _dev(a)


def asarray(a: Any, dtype: Any = None) -> ndarray:
    """A host array copied to the device on the current stream (as CuPy: through a pinned staging
    buffer, so the host array may change at once; the device copy is ordered on that stream only).
    A device array is returned as it is (or converted, given another dtype), as CuPy does."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    src = np.array(np.asarray(a, dtype=dtype), copy=True, order="C")
    out = empty(src.shape, src.dtype)
    dst = out.view(np.ndarray)
    _on(_current_stream(), lambda: np.copyto(dst, src), writes=(dst,))
    return out


def zeros(shape: Any, dtype: Any = np.float32) -> ndarray:
    return asarray(np.zeros(shape, dtype=dtype))


def asnumpy(a: Any) -> np.ndarray:
    return np.array(np.asarray(a).view(np.ndarray), copy=True)


# --- cupy.cuda ---------------------------------------------------------------------------------
class _Event:
    def __init__(self, stream: Stream, upto: int) -> None:
        self.stream, self.upto = stream, upto

    def synchronize(self) -> None:
        self.stream.run_until(self.upto)


_STREAMS: weakref.WeakSet[Stream] = weakref.WeakSet()


class Stream:
    def __init__(self, non_blocking: bool = False) -> None:
        _STREAMS.add(self)
        self.lock = threading.RLock()
        self.pending: list[Callable[[], None]] = []
        self.done = 0  # ops run so far (pending holds the ones after)

    def __enter__(self) -> Stream:
        stack = _LOCAL.__dict__.setdefault("streams", [])
        stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _LOCAL.streams.pop()

    def record(self) -> _Event:
        with self.lock:
            return _Event(self, self.done + len(self.pending))

    def run_until(self, upto: int) -> None:
        with self.lock:
            while self.done < upto:
                op = self.pending.pop(0)
                self.done += 1
                op()
        seen = _LOCAL.__dict__.setdefault("seen", weakref.WeakKeyDictionary())
        seen[self] = max(seen.get(self, 0), upto)

    def synchronize(self) -> None:
        with self.lock:
            self.run_until(self.done + len(self.pending))


class Device:
    def __init__(self, device: int = 0) -> None:
        if not 0 <= device < DEVICES:
            raise RuntimeError(f"cudaErrorInvalidDevice: device {device} of {DEVICES}")
        self.id = device
        self.compute_capability = "90"

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def alloc_pinned_memory(nbytes: int) -> bytearray:
    return bytearray(nbytes)


def _device_count() -> int:
    return DEVICES


def _device_synchronize() -> None:
    """cudaDeviceSynchronize (all devices here): every queued op runs, and this thread knows it."""
    for st in list(_STREAMS):
        st.synchronize()


cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=_device_count,
                                                           deviceSynchronize=_device_synchronize), Device=Device,
                             Stream=Stream, alloc_pinned_memory=alloc_pinned_memory)


# --- RawModule: the host build of the kernel source ----------------------------------------------
_HOST: Any = None


def _host_lib() -> Any:
    global _HOST
    with _LOCK:
        if _HOST is None:
            from qtool.gpu.host import HostKernels

            _HOST = HostKernels()
        return _HOST.lib


def _c_arg(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        if not a.flags.c_contiguous:
            raise ValueError("kernel argument is not C-contiguous")
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, np.uint64):  # a null pointer (cuda.py's _NULL)
        return ctypes.c_void_p(int(a) or None)
    if isinstance(a, np.int64):
        return ctypes.c_int64(int(a))
    raise TypeError(f"unexpected kernel argument {type(a).__name__}")


class _Function:
    def __init__(self, module: RawModule, name: str) -> None:
        self.module, self.fn, self.name = module, getattr(module.lib, name), name

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]) -> None:
        n_args = 1 if self.name == "qtool_probe_subnormal" else (4, 6)
        if len(args) not in (n_args if isinstance(n_args, tuple) else (n_args,)) or not grid[0] > 0 or not block[0] > 0:
            raise ValueError(f"{self.name}: bad launch {grid} {block} ({len(args)} arguments)")
        keep = tuple(args)  # the arrays stay alive until the queued launch has run
        m = self.module

        def op() -> None:
            CALLS[self.name] = CALLS.get(self.name, 0) + 1
            with _CALL_LOCK:  # the host library has one copy of each QTABLE pointer: set this module's
                for name in m.table_names:
                    ctypes.c_void_p.in_dll(m.lib, name).value = m.globals.get(name) or None
                self.fn(*(_c_arg(a) for a in keep))

        arrays = tuple(a for a in keep if isinstance(a, np.ndarray))
        # row_mean_square(x, out, ...) and dequantize_*(q, y, nrows, n): the second; quantize_*: the third
        out = (keep[0] if self.name == "qtool_probe_subnormal" else keep[1]
               if self.name == "row_mean_square" or self.name.startswith("dequantize_") else keep[2])
        tables = [(p, p + 1) for p in m.globals.values()] if STRICT_TABLES else []
        _on(_current_stream(), op, arrays, (out,), self.name, tables)


class _Global:
    def __init__(self, module: RawModule, name: str) -> None:
        self.module, self.name = module, name

    def copy_from_host(self, ptr: int, nbytes: int) -> None:
        if nbytes != 8:
            raise ValueError("a QTABLE pointer is 8 bytes")
        self.module.globals[self.name] = _TABLES[self.name] = ctypes.c_uint64.from_address(int(ptr)).value


_QTABLE_DEF = re.compile(r"^\s*QTABLE\(\s*\w+\s*,\s*(\w+)\s*\)", re.M)
_CALL_LOCK = threading.Lock()


class RawModule:
    """One module per device (as NVRTC's): its own QTABLE pointers, set into the shared host
    library around each of its launches."""

    def __init__(self, code: str, options: tuple[str, ...] = ()) -> None:
        self.code, self.options = code, options
        self.lib: Any = None
        self.table_names = set(_QTABLE_DEF.findall(code))
        self.globals: dict[str, int] = {}

    def compile(self) -> None:
        self.lib = _host_lib()

    def get_function(self, name: str) -> _Function:
        own = {m["fn"] or (f"dequantize_{m['dq']}" if m["dq"] else f"quantize_{m['q']}")
               for m in _KERNEL_DEF.finditer(self.code)}  # named as qtool.gpu.source.kernel_modules does
        if name not in own and not (name in ("row_mean_square", "qtool_probe_subnormal") and name in self.code):
            raise KeyError(f"{name} is not a kernel of this module")  # as cuModuleGetFunction fails
        if self.lib is None:
            self.compile()
        return _Function(self, name)

    def get_global(self, name: str) -> _Global:
        if name not in self.table_names:
            raise KeyError(f"{name} is not a global of this module")
        if self.lib is None:
            self.compile()
        return _Global(self, name)


# --- the direct NVRTC path (qtool.gpu.nvrtc): cupy.cuda.compiler / cupy.cuda.function -------------
COMPILED: list[tuple[str, ...]] = []
"""The option tuples compile_using_nvrtc was called with (one entry per compile)."""
_PTX_HEAD = b"// fake PTX\n"


def _compile_using_nvrtc(source: str, options: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
    COMPILED.append(tuple(options))
    return _PTX_HEAD + source.encode(), {}


class _Module:
    """cupy.cuda.function.Module: load() takes the compiled object (here the source behind a PTX-like
    head, NUL-terminated as the driver needs PTX text)."""

    def __init__(self) -> None:
        self.raw: RawModule | None = None

    def load(self, obj: bytes) -> None:
        if not obj.startswith(_PTX_HEAD) or not obj.endswith(b"\0"):
            raise ValueError("not a NUL-terminated PTX text")
        self.raw = RawModule(obj[len(_PTX_HEAD):-1].decode())

    def get_function(self, name: str) -> _Function:
        assert self.raw is not None
        return self.raw.get_function(name)

    def get_global_var(self, name: str) -> _Global:
        assert self.raw is not None
        return self.raw.get_global(name)


def install(monkeypatch: Any, devices: int = 1, strict: bool = False, direct: bool = False) -> types.ModuleType:
    """Make `import cupy` give this module (devices fake GPUs) for one test; qtool's cached cupy is
    reset. strict: host arrays mixed with device arrays raise (STRICT). direct: offer
    cupy.cuda.compiler / cupy.cuda.function, so CudaKernels compiles through qtool.gpu.nvrtc."""
    import qtool.gpu.cuda as qcuda

    mod = sys.modules[__name__]
    monkeypatch.setattr(mod, "DEVICES", devices)
    monkeypatch.setattr(mod, "STRICT", strict)
    monkeypatch.setitem(sys.modules, "cupy", mod)
    monkeypatch.setattr(qcuda, "_CUPY", None)
    if direct:
        monkeypatch.setattr(cuda, "compiler", types.SimpleNamespace(compile_using_nvrtc=_compile_using_nvrtc),
                            raising=False)
        monkeypatch.setattr(cuda, "function", types.SimpleNamespace(Module=_Module), raising=False)
    COMPILED.clear()
    CALLS.clear()
    _TABLES.clear()
    _WRITES.clear()
    return mod
