"""Shared pieces of grid recovery: rounding as the input was stored, exact block verification with
the engine's own dequantizer, and fp16 neighbours of a scale."""

from __future__ import annotations

import numpy as np

from ..engine import dequantize
from ..numeric import F32
from ..rounding import bf16_bits_to_fp32, fp32_to_bf16_bits
from ..types import QType

STORED = ("F16", "BF16", "F32")
"""How the float values were stored (the rounding applied after dequantization)."""


def round_stored(y: np.ndarray, stored: str) -> np.ndarray:
    """float32 values rounded as a F16 / BF16 / F32 tensor stores them (round to nearest even)."""
    if stored == "F16":
        return y.astype(np.float16).astype(F32)
    if stored == "BF16":
        return bf16_bits_to_fp32(fp32_to_bf16_bits(y)).reshape(y.shape)
    if stored == "F32":
        return y.astype(F32, copy=False)
    raise ValueError(f"stored must be one of {STORED}, got {stored!r}")


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise bit equality of float32 arrays (-0.0 differs from 0.0, as the stored bytes do)."""
    return np.ascontiguousarray(a, dtype=F32).view(np.uint32) == np.ascontiguousarray(b, dtype=F32).view(np.uint32)


def blocks_ok(data: np.ndarray, x: np.ndarray, qt: QType, stored: str) -> np.ndarray:
    """bool (nb,): block i of `data` (uint8 (nb, type_size)) dequantizes, rounded as stored, to the
    values x[i] (float32 (nb, block_size)) bit for bit. Uses the engine's dequantizer, so a block
    accepted here is one the reference's dequantize_row_* turns back into exactly these values."""
    if data.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    y = dequantize(np.ascontiguousarray(data).reshape(data.shape[0], qt.type_size), qt, qt.block_size)
    return np.asarray(same_bits(round_stored(y, stored), x).all(axis=1))


def fp16_near(v: np.ndarray, offset: int) -> np.ndarray:
    """float32 of the fp16 value `offset` steps (in bit order of the magnitude) from fp16(v); inf and
    NaN come back as NaN (never a valid scale)."""
    h = np.asarray(v, dtype=F32).astype(np.float16)
    bits = h.view(np.uint16).astype(np.int32)
    sign = bits & 0x8000
    mag = (bits & 0x7FFF) + offset
    bad = (mag < 0) | (mag >= 0x7C00)
    out = (sign | np.clip(mag, 0, 0x7BFF)).astype(np.uint16).view(np.float16).astype(F32)
    out[bad] = np.nan
    return out


def fp16_bits_of(v: np.ndarray) -> np.ndarray:
    """uint16 fp16 bits of float32 values that are exactly fp16 (scales built by fp16_near)."""
    return np.asarray(v, dtype=F32).astype(np.float16).view(np.uint16)


OFFSETS = (0, -1, 1, -2, 2, -3, 3)
"""fp16 steps tried around an estimated scale, nearest first."""
