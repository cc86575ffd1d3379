"""Shared numeric helpers of the engine: C's float32 semantics on numpy arrays.

Every kernel module takes these from here (one definition each): sequential sums in C's order,
fp16 conversion as GGML_FP32_TO_FP16, C's `amax` scan, IEEE error state, block transposes.
The rounding and fp16/bf16 conversions of `rounding` are re-exported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from .rounding import bf16_bits_to_fp32, fp16_bits_to_fp32, fp32_to_bf16_bits, nearest_int

__all__ = [
    "F32", "GROUP_MAX_EPS", "QK_K", "absmax_t", "bf16_bits_to_fp32", "blocks_t", "c_einsum", "first_zero_signbit",
    "fp16_bits", "fp16_bits_to_fp32", "fp32_to_bf16_bits", "ieee", "nearest_int", "recip", "seq_sum0", "seq_sum_t",
]

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
"""ggml's threshold below which a block's max counts as zero (quants.c, iqk_quantize.cpp)."""
QK_K = 256
"""Values per k-quant super-block."""


def seq_sum_t(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """C's `s = 0; s += a[j]` down `axis`: np.add.reduce adds slices in order when the axes after
    `axis` hold more than one element; when they do not (one column: a single block), it would sum
    the contiguous run pairwise, so that case is accumulated.
    + 0 turns -0 into C's +0."""
    if not a.flags.c_contiguous:  # a strided view (columns picked with a[:, cols]) may be summed pairwise
        a = np.ascontiguousarray(a)
    if a.ndim > 1 and all(k == 1 for k in a.shape[axis % a.ndim + 1:]):  # the summed axis is innermost
        s = np.add.accumulate(a, axis=axis).take(-1, axis=axis)
    else:
        s = np.add.reduce(a, axis=axis)
    s = s + F32(0)
    return s


def seq_sum0(a: np.ndarray) -> np.ndarray:
    """seq_sum_t down axis 0 of a 2-D float32 array (n, r) -> (r,)."""
    return seq_sum_t(a, 0)


def first_zero_signbit(xt: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sign bit of the first zero (in index order) in each selected column of xt (n, m) -> bool."""
    sub = xt[:, cols]
    first = np.argmax(sub == 0, axis=0)
    return np.signbit(sub[first, np.arange(sub.shape[1])])


_c_einsum: Any
try:  # np.einsum(optimize=False) hands its arguments to this; calling it directly saves ~1.5 us a call
    from numpy._core.multiarray import c_einsum as _c_einsum  # the one use of numpy's private API
except ImportError:  # pragma: no cover - other numpy layouts: the public function, same results
    _c_einsum = np.einsum


def c_einsum(*args: object, **kwargs: object) -> np.ndarray:
    """numpy's einsum kernel without the Python dispatch (np.einsum when the private name moves).
    Callers must check `einsum_is_sequential` before relying on its summation order."""
    out: np.ndarray = _c_einsum(*args, **kwargs)
    return out


def absmax_t(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (fabsf(x) > amax) { amax = fabsf(x); max = x; }` from 0 down axis 0 of xt (n, nb)
    -> (amax, max) (nb,). From the column max and min; argmax only where +amax and -amax both occur."""
    hi = np.max(xt, axis=0)
    lo = np.min(xt, axis=0)
    nlo = np.negative(lo)
    amax = np.maximum(hi, nlo)
    mx = np.where(hi == amax, hi, lo)
    both = (hi == amax) & (nlo == amax) & (amax > 0)
    if both.any():
        cols = np.nonzero(both)[0]
        sub = xt[:, cols]
        mx[cols] = sub[np.argmax(np.abs(sub), axis=0), np.arange(cols.size)]
    return amax, mx


def recip(d: np.ndarray) -> np.ndarray:
    """C's `d ? 1/d : 0` in float32."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / d, F32(0)).astype(F32)


def fp16_bits(d: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 bits (round to nearest even; overflow to inf as in C)."""
    with np.errstate(over="ignore"):
        return np.asarray(d, dtype=F32).astype(np.float16).view(np.uint16)


def ieee(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Run fn with numpy's float warnings off: overflow / inf / NaN follow IEEE, as in C."""
    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> np.ndarray:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapper


def blocks_t(xb: np.ndarray) -> np.ndarray:
    """(nb, n) -> (n, nb) C-contiguous: one block per column, C's in-block index down axis 0."""
    return np.ascontiguousarray(xb.T)
