"""Compile the kernel source for a CUDA device with NVRTC, without flushing subnormals, cached on disk.

CuPy's own compile path (`RawModule(code=...)`, `compile_with_cache`) appends `-ftz=true` to every
option list: subnormal float operands and results become zero. ggml's C (x86) keeps them, so a
kernel built that way gives other bytes wherever a value or an intermediate is subnormal (a
subnormal scale times an integer, tiny rows, BF16 inputs). Seen on an H200: Q8_K / MXFP4 /
IQ4_KSS dequantized blocks with subnormal scales came out 0. Here the source goes to CuPy's
lower-level `compile_using_nvrtc` (which adds no such option) with `--ftz=false` stated, the
binary is cached under ~/.cache/qtool/cuda keyed by source, options, NVRTC version and device,
and loaded with `cupy.cuda.function.Module`. `CudaKernels` checks the result with a probe kernel
(prelude.cuh's `qtool_probe_subnormal`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .source import cache_dir

NVRTC_OPTIONS = ("--fmad=false", "--ftz=false", "--prec-div=true", "--prec-sqrt=true", "-std=c++17")


class LoadedModule:
    """A compiled module: get_function / get_global, as CuPy's RawModule offers them."""

    def __init__(self, module: Any) -> None:
        self._m = module

    def get_function(self, name: str) -> Any:
        return self._m.get_function(name)

    def get_global(self, name: str) -> Any:
        """The global variable's device memory: an object with copy_from_host(host_ptr, nbytes)
        (CuPy's get_global_var gives the device address as an int)."""
        g = self._m.get_global_var(name)
        return g if hasattr(g, "copy_from_host") else _DeviceGlobal(int(g))


class _DeviceGlobal:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def copy_from_host(self, src: int, nbytes: int) -> None:
        from cupy.cuda import runtime

        runtime.memcpy(self.ptr, int(src), nbytes, runtime.memcpyHostToDevice)


def _nvrtc_version() -> str:
    try:
        from cupy_backends.cuda.libs import nvrtc

        return ".".join(str(v) for v in nvrtc.getVersion())
    except Exception:  # noqa: BLE001  (only a cache key)
        return "?"


def direct_compile_available(cp: Any) -> bool:
    """Whether this CuPy exposes the lower-level compile and load calls used here."""
    cuda = cp.cuda
    return hasattr(getattr(cuda, "compiler", None), "compile_using_nvrtc") and hasattr(
        getattr(cuda, "function", None), "Module")


def compile_module(cp: Any, code: str, device: int, options: tuple[str, ...] = NVRTC_OPTIONS) -> LoadedModule:
    """The module for `code` on `device`: from the disk cache, else compiled with NVRTC (no -ftz)."""
    compiler, function = cp.cuda.compiler, cp.cuda.function
    with cp.cuda.Device(device):
        cc = cp.cuda.Device(device).compute_capability
        key = hashlib.sha256("\0".join((code, *options, _nvrtc_version(), str(cc),
                                        getattr(cp, "__version__", "?"))).encode()).hexdigest()[:32]
        path = cache_dir("cuda") / f"{key}.bin"
        obj = _read(path)
        if obj is None:
            res = compiler.compile_using_nvrtc(code, tuple(options))
            obj = res[0] if isinstance(res, tuple) else res  # CuPy >= 9: (cubin or ptx, name mapping)
            if isinstance(obj, str):
                obj = obj.encode()
            _write(path, obj)
        mod = function.Module()
        mod.load(obj if not obj.lstrip().startswith(b"//") else obj + b"\0")  # PTX text: NUL-terminated
        return LoadedModule(mod)


def _read(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest, obj = data[:32], data[32:]
    return obj if obj and hashlib.sha256(obj).hexdigest()[:32].encode() == digest else None


def _write(path: Path, obj: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(hashlib.sha256(obj).hexdigest()[:32].encode() + obj)
        os.replace(tmp, path)
    except OSError:  # a cache only
        tmp.unlink(missing_ok=True)
