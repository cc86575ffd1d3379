"""ggml's rounding and half-precision helpers, reproduced bit for bit on numpy arrays.

- nearest_int: ggml's `nearest_int` adds 1.5*2^23 in float32 and reads the mantissa; for
  |x| < 2^22 that is round-half-to-even, and outside that range we reproduce the same bits.
- fp16 / bf16 conversion: GGML_FP32_TO_FP16 is round-to-nearest-even (= astype(float16));
  GGML_FP32_TO_BF16 rounds to nearest even and keeps NaN quiet.
"""

from __future__ import annotations

import numpy as np

_MAGIC = np.float32(12582912.0)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml nearest_int on float32 values -> int32 (exact bit emulation)."""
    v = (np.asarray(x, dtype=np.float32) + _MAGIC).view(np.int32)
    return (v & 0x007FFFFF) - 0x00400000


def fp32_to_fp16_bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def fp16_bits_ggml(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_fp16 of float32 values -> uint16 bits (x's shape): numpy's cast (round to
    nearest even; beyond 65504 inf, as in C), a NaN as 0x7E00 with its sign whatever its payload
    (numpy keeps payload bits). F16's quantize, and the exact path of qtool.quants.to_float."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = np.ascontiguousarray(x.astype("<f2")).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = (np.ascontiguousarray(x).view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
        h[nan] = (np.uint16(0x7E00) | sign)[nan]
    return h


def fp16_bits_to_fp32(h: np.ndarray) -> np.ndarray:
    return np.asarray(h, dtype=np.uint16).view(np.float16).astype(np.float32)


def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even; NaN -> quiet NaN with sign kept."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    r = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    q = ((u >> np.uint32(16)) | np.uint32(64)).astype(np.uint16)
    return np.where(nan, q, r)


def bf16_bits_to_fp32(h: np.ndarray) -> np.ndarray:
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
