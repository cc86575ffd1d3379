"""The numeric steps of llama.cpp's CPU backend that the forward pass mirrors.

- `round_for_dot(x, qtype)`: ggml_compute_forward_mul_mat converts the activations (src1) to the
  weight type's `vec_dot_type` before the dot products (ggml-cpu.c type_traits_cpu): F16 for F16
  weights, Q8_0 for Q4_0 / Q5_0 / Q8_0 / IQ4_NL / MXFP4 (and Q8_1, whose values are Q8_0's, for
  Q4_1 / Q5_1), Q8_K for the k-quants, i-quants and ternary types, BF16 for BF16, none for F32.
  The product of the rounded activations with the dequantized weights is the value the integer
  dot product computes, up to float32 summation order. The Q8 round trips here are fused
  (quantize + dequantize in one expression) and tested against the engine's kernels; Q8_0 uses
  the x86 SIMD variant (quantize_row_q8_0 in ggml-cpu/arch/x86/quants.c), which llama.cpp runs
  on the machines qtool is compared on.
- `rms_norm`: ggml_compute_forward_rms_norm_f32 (sum of squares in double, 1/sqrtf in float).
- `geglu`: ggml_vec_geglu_f32 with GGML_GELU_FP16: GELU (tanh form) looked up by the fp16 of x,
  the result an fp16 value.
- `rope_cache`: ggml rope_cache_init, theta advanced by repeated float multiplication.

Device arrays: the element-wise steps take numpy arrays or CuPy arrays (`--device cuda`) and
return arrays of the same module (`array_module`); on numpy they are the exact CPU-backend
numerics above, on CuPy the same formulas in plain CuPy calls (one kernel per operation, so no
fused multiply-add; float16 rounding by the device's own conversion, which is round to nearest
even in every range), close to the CPU's but not bit-identical (exp / log / sums in another order).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .. import malloc_tuning
from ..quants.types import QType

F32 = np.float32
_Q8_0_DOT = {"Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4", "Q4_1", "Q5_1", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8"}
_NO_ROUND = {"F32", "F64"}


def dot_type(qtype: QType) -> str:
    """The activation type llama.cpp's CPU matmul rounds to for weights of qtype."""
    n = qtype.name
    if n in _NO_ROUND:
        return "F32"
    if n in ("F16", "BF16"):
        return n
    if n in _Q8_0_DOT:
        return "Q8_0"
    return "Q8_K"


DEVICES = ("cpu", "cuda")


def device_module(device: str) -> Any:
    """The array module the forward pass runs on: numpy for "cpu", CuPy for "cuda" (the first
    visible GPU; qtool.gpu.cuda.GpuUnavailable, a user error, where CuPy or a GPU is missing)."""
    if device == "cpu":
        return np
    if device == "cuda":
        from ..gpu.cuda import cupy_module

        return cupy_module()
    raise ValueError(f"unknown device {device!r} ({', '.join(DEVICES)})")


def array_module(x: Any) -> Any:
    """numpy for host arrays, cupy for CuPy arrays (cupy.get_array_module, asked only where cupy
    was imported): the `xp` of the generic numerics."""
    if type(x) is np.ndarray:
        return np
    cp = sys.modules.get("cupy")
    return np if cp is None else cp.get_array_module(x)


def to_host(a: Any) -> np.ndarray:
    """a as a numpy array: itself when it is one, else fetched from the device (.get())."""
    if type(a) is not np.ndarray and hasattr(a, "get"):
        return a.get()  # type: ignore[no-any-return]
    return np.asarray(a)


def to_device(xp: Any, a: Any) -> Any:
    """Host array a on xp's device (itself for numpy; xp.asarray copies it over for CuPy)."""
    return a if xp is np else xp.asarray(a)


_CONSTANTS: dict[tuple[int, str], Any] = {}


def device_constant(xp: Any, name: str, host: np.ndarray) -> Any:
    """A constant table (host) on xp's device, uploaded once per module."""
    if xp is np:
        return host
    key = (id(xp), name)
    a = _CONSTANTS.get(key)
    if a is None:
        a = _CONSTANTS[key] = xp.asarray(host)
    return a


def sum_squares(x: Any, axis: int) -> Any:
    """Sum of x*x over axis -1 (any rank) or 0 (2-D) with products and sums in float64."""
    xp = array_module(x)
    if xp is np:
        return np.einsum("...i,...i->..." if axis == -1 else "ij,ij->j", x, x, dtype=np.float64)
    x64 = x.astype(xp.float64)
    return (x64 * x64).sum(axis=axis)


_BLOCK = 1 << 15  # elements per step of the blocked element-wise loops (L2-resident scratch)
_F16_MIN_NORMAL = F32(2.0 ** -14)
_F16_OVERFLOW = F32(65520.0)  # rounds to 65536 and beyond: inf as float16


def _f16_split(x: np.ndarray, c: np.ndarray, out: np.ndarray) -> None:
    """out = x rounded to float16's 11 significant bits, to nearest even (Veltkamp's split
    c = x * (2^13 + 1), x_hi = c - (c - x)); right for |x| in float16's normal range only. c:
    scratch of x's size."""
    np.multiply(x, F32(8193.0), out=c)
    np.subtract(c, x, out=out)
    np.subtract(c, out, out=out)


def round_f16(x: np.ndarray) -> np.ndarray:
    """x rounded to float16 and back (GGML_FP32_TO_FP16, round to nearest even), in float32:
    numpy's float16 casts are several times slower. Normal range: Veltkamp's split
    c = x * (2^13 + 1), x_hi = c - (c - x), which rounds the 24-bit significand to 11 bits to
    nearest even (checked exhaustively over a binade in the tests); below 2^-14 (float16
    subnormals, steps of 2^-24), from 65520 (inf) and for inf / NaN the exact bit path
    `_round_f16_bits` fixes the few elements. Runs in L2-sized blocks (memory-bound passes).
    On a device: its float16 conversion (round to nearest even, every range)."""
    xp = array_module(x)
    if xp is not np:
        return x.astype(xp.float16).astype(xp.float32)
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    n = xf.size
    c = np.empty(min(_BLOCK, n), F32)
    a_ = np.empty(min(_BLOCK, n), F32)
    with np.errstate(over="ignore", invalid="ignore"):
        for lo in range(0, n, _BLOCK):
            xb = xf[lo:lo + _BLOCK]
            k = xb.size
            cb, ab, ob = c[:k], a_[:k], of[lo:lo + k]
            _f16_split(xb, cb, ob)
            np.abs(xb, out=ab)
            if not ab.min() >= _F16_MIN_NORMAL:  # float16 subnormals: multiples of 2^-24
                i = np.flatnonzero(ab < _F16_MIN_NORMAL)
                ob[i] = np.rint(xb[i] * F32(16777216.0)) * F32(5.9604644775390625e-08)
            if not ab.max() < _F16_OVERFLOW:  # inf, NaN (True on NaN)
                i = np.flatnonzero(~(ab < _F16_OVERFLOW))
                ob[i] = _round_f16_bits(xb[i])
    return out


def _round_f16_bits(x: np.ndarray) -> np.ndarray:
    """round_f16 on float32 bits, every range (the reference path, and the fix-up of round_f16)."""
    x = np.ascontiguousarray(x, dtype=F32)
    u = x.view(np.uint32)
    t = u >> np.uint32(13)
    t &= np.uint32(1)
    t += np.uint32(0x0FFF)
    t += u
    t &= np.uint32(0xFFFFE000)
    r = t.view(F32)
    e = t & np.uint32(0x7F800000)
    big = e >= np.uint32(0x47800000)  # rounded to 65536 or more, inf or NaN
    if big.any():
        i = np.flatnonzero(big.reshape(-1) & ~np.isnan(x.reshape(-1)))
        r.reshape(-1)[i] = np.copysign(F32(np.inf), x.reshape(-1)[i])
    np.bitwise_and(u, np.uint32(0x7F800000), out=e)
    small = e < np.uint32(0x38800000)  # |x| < 2^-14: float16 subnormals, steps of 2^-24
    if small.any():
        i = np.flatnonzero(small.reshape(-1))
        r.reshape(-1)[i] = np.rint(x.reshape(-1)[i] * F32(16777216.0)) * F32(5.9604644775390625e-08)
    nan = np.isnan(x)
    if nan.any():  # NaN stays NaN (a payload in the low bits alone would round to inf or 0)
        r[nan] = x[nan]
    return r


def round_bf16(x: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_BF16 (round to nearest even; NaN kept quiet) and back."""
    xp = array_module(x)
    u = xp.ascontiguousarray(x, dtype=F32).view(xp.uint32)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(xp.uint32)
    r = xp.where((u & 0x7FFFFFFF) > 0x7F800000, (u >> 16) | 64, r)
    return (r.astype(xp.uint32) << np.uint32(16)).view(F32)  # uint32 whatever the scalar promotion rules


def round_q8_0(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_0_ref then dequantize_row_q8_0, fused: d = amax/127 stored as fp16,
    q = roundf(x / d) (half away from zero)."""
    b = np.ascontiguousarray(x, dtype=F32).reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    q = _roundf(b * idv)
    return (q * d.astype(np.float16).astype(F32)).reshape(x.shape)


def round_q8_0_x86(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_0 of ggml-cpu's x86 (AVX/AVX2) build then dequantize, fused: the same
    d = amax/127 (stored as fp16), but q = round-half-even(x * (127/amax)), which differs from the
    reference in the last bit of a few values."""
    xp = array_module(x)
    b = xp.ascontiguousarray(x, dtype=F32).reshape(-1, 32)
    amax = xp.abs(b).max(axis=1, keepdims=True)
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        idv = xp.where(amax != 0, F32(127) / amax, F32(0)).astype(F32)
    return (xp.rint(b * idv) * d.astype(xp.float16).astype(F32)).reshape(x.shape)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: half away from zero, exact."""
    t = np.trunc(v)
    frac = np.abs(v - t)
    return np.where(frac >= F32(0.5), t + np.sign(v), t).astype(F32)


def round_q8_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K_ref then dequantize_row_q8_K, fused: the value of largest magnitude
    (first one on ties) gives iscale = -127/max, q = min(127, nearest_int(iscale*x)), d = 1/iscale."""
    xp = array_module(x)
    b = xp.ascontiguousarray(x, dtype=F32).reshape(-1, 256)
    idx = xp.argmax(xp.abs(b), axis=1)
    mx = b[xp.arange(b.shape[0]), idx][:, None]
    zero = mx == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = xp.where(zero, F32(0), F32(-127) / xp.where(zero, F32(1), mx)).astype(F32)
        q = xp.minimum(xp.rint(iscale * b), F32(127))
        d = xp.where(zero, F32(0), F32(1) / xp.where(zero, F32(1), iscale)).astype(F32)
    return (d * q).astype(F32).reshape(x.shape)


def round_for_dot(x: np.ndarray, kind: str) -> np.ndarray:
    """x (rows, k) as the CPU backend feeds it to a dot product of vec_dot_type `kind`."""
    if kind == "F32":
        return x
    if kind == "F16":
        return round_f16(x)
    if kind == "BF16":
        return round_bf16(x)
    if kind == "Q8_0":
        return round_q8_0_x86(x)
    if kind == "Q8_K":
        return round_q8_k(x)
    raise ValueError(f"unknown dot type {kind}")


def rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """ggml rms_norm over the last axis (no weight)."""
    xp = array_module(x)
    ss = sum_squares(x, -1)
    mean = ss / x.shape[-1]
    scale = (F32(1) / xp.sqrt((mean + eps).astype(F32))).astype(F32)
    return x * scale[..., None]


def _gelu_table() -> np.ndarray:
    f = np.arange(65536, dtype=np.uint16).view(np.float16).astype(F32)
    with np.errstate(over="ignore", invalid="ignore"):
        g = F32(0.5) * f * (F32(1) + np.tanh(F32(0.79788456080286535587989211986876) * f
                                               * (F32(1) + F32(0.044715) * f * f)))
    return g.astype(F32).astype(np.float16).astype(F32)


_GELU = _gelu_table()


def _gelu_key_table() -> np.ndarray:
    """_GELU by the top 19 bits (sign, exponent, 10 mantissa bits) of a float32 that is a normal
    float16 value: 2 MiB, looked up without a float16 cast."""
    v = (np.arange(1 << 19, dtype=np.uint32) << np.uint32(13)).view(F32)
    with np.errstate(over="ignore", invalid="ignore"):
        return _GELU[v.astype(np.float16).view(np.uint16)]


_GELU_KEY = _gelu_key_table()
_GELU_LIMIT = F32(10)


def _gelu_f16_cast(x: np.ndarray) -> np.ndarray:
    """gelu_f16 through a float16 cast (every range; the fix-up of gelu_f16 on numpy, the whole
    of it on a device, where the cast is fast)."""
    xp = array_module(x)
    t = device_constant(xp, "gelu", _GELU)[xp.clip(x, F32(-10), F32(10)).astype(xp.float16).view(xp.uint16)]
    t = xp.where(x <= F32(-10), F32(0), t)
    return xp.where(x >= F32(10), x, t)  # type: ignore[no-any-return]


def gelu_f16(x: np.ndarray) -> np.ndarray:
    """ggml_vec_gelu_f32 with GGML_GELU_FP16 (0 below -10, x above 10, else the fp16 table).
    The float16 rounding is round_f16's Veltkamp split and the table is indexed by the rounded
    value's top bits (no float16 cast); elements outside [2^-14, 10) in magnitude (subnormal
    float16, the clamps, NaN) go through `_gelu_f16_cast`. L2-sized blocks. On a device: the
    cast of `_gelu_f16_cast` for all elements."""
    if array_module(x) is not np:
        return _gelu_f16_cast(x)
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    n = xf.size
    c = np.empty(min(_BLOCK, n), F32)
    r = np.empty(min(_BLOCK, n), F32)
    key = np.empty(min(_BLOCK, n), np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        for lo in range(0, n, _BLOCK):
            xb = xf[lo:lo + _BLOCK]
            k = xb.size
            cb, rb, kb, ob = c[:k], r[:k], key[:k], of[lo:lo + k]
            _f16_split(xb, cb, rb)
            np.right_shift(rb.view(np.uint32), 13, out=kb)
            np.take(_GELU_KEY, kb, out=ob)
            np.abs(xb, out=rb)
            if not (rb.min() >= _F16_MIN_NORMAL and rb.max() < _GELU_LIMIT):  # also False on NaN
                i = np.flatnonzero(~((rb >= _F16_MIN_NORMAL) & (rb < _GELU_LIMIT)))
                ob[i] = _gelu_f16_cast(xb[i])
    return out


def silu(x: np.ndarray) -> np.ndarray:
    """x / (1 + exp(-x)) in float32, in one temporary (the same operations as the plain formula)."""
    xp = array_module(x)
    x = xp.asarray(x, dtype=F32)
    t = xp.negative(x)
    with np.errstate(over="ignore"):
        xp.exp(t, out=t)
    t += F32(1)
    xp.divide(x, t, out=t)
    return t


def rope_cache(pos: np.ndarray, n_dims: int, freq_base: float,
               freq_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin float32[len(pos), n_dims/2] as ggml's rope_cache_init builds them (ext_factor 0)."""
    theta_scale = F32(np.power(F32(freq_base), F32(-2.0) / F32(n_dims), dtype=F32))
    th = pos.astype(F32)
    out = np.empty((pos.size, n_dims // 2), F32)
    for i in range(n_dims // 2):
        out[:, i] = th
        th = (th * theta_scale).astype(F32)
    theta = (F32(freq_scale) * out).astype(F32)
    return np.cos(theta).astype(F32), np.sin(theta).astype(F32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """Rotate x (..., T, head_dim) by the cache (T, n_dims/2); NORM pairs (2i, 2i+1), NEOX (i, i+n/2)."""
    n = cos.shape[-1] * 2
    y = x.copy()
    if neox:
        a, b = x[..., : n // 2], x[..., n // 2: n]
        y[..., : n // 2] = a * cos - b * sin
        y[..., n // 2: n] = a * sin + b * cos
    else:
        a, b = x[..., 0:n:2], x[..., 1:n:2]
        y[..., 0:n:2] = a * cos - b * sin
        y[..., 1:n:2] = a * sin + b * cos
    return y


_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads_",
                 "openblas_set_num_threads64_", "openblas_set_num_threads", "MKL_Set_Num_Threads")


def set_blas_threads(n: int | None) -> bool:
    """Limit the BLAS threads numpy's matmuls use (the forward pass's only parallelism) to n
    (None or <= 0: leave BLAS's default, all cores). Finds the OpenBLAS / MKL library numpy loaded;
    returns False when it cannot (then BLAS keeps its own setting)."""
    if n is None or n <= 0:
        return True
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if ("blas" in ln.lower() or "mkl" in ln.lower())
                            and ln.split()[-1].startswith("/")})
    except OSError:
        return False
    for p in paths:
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(int(n))
                return True
    return False


MMAP_THRESHOLD = malloc_tuning.MMAP_THRESHOLD  # larger arrays are mmap'ed afresh by glibc


def keep_heap() -> bool:
    """qtool.malloc_tuning.tune_malloc (the command line sets it already; a library user's forward
    pass gets it here): glibc keeps freed memory, so the per-layer temporaries (up to 32 MiB each)
    reuse pages instead of faulting fresh ones from the kernel at every allocation, which costs
    as much as the arithmetic on a VM. False where the C library is not glibc."""
    return malloc_tuning.tune_malloc()
