"""Mainline's 1- and 2-bit round-to-nearest types Q1_0 and Q2_0, byte-exact ports of ggml-quants.c.

C functions ported: `quantize_row_q1_0_ref`, `quantize_row_q2_0_ref` (what `quantize_q1_0` /
`quantize_q2_0` run with and without an imatrix: the weights are ignored), `dequantize_row_q1_0`,
`dequantize_row_q2_0`. Both imatrix variants give the same bytes.

- Q1_0 (128 values, fp16 d + 16 bytes): d = (sequential float sum of |x|) / 128; bit j is set
  when x[j] >= 0 (-0 included); dequantized as +-d.
- Q2_0 (64 values, fp16 d + 16 bytes): d = max |x| (NaN skipped as C's `a > amax`), id = 1/d
  (0 if d == 0); q = clamp((int)roundf(x*id) + 1, 0, 3), 2 bits per value, value j at bits
  2*(j%4) of byte j/4; dequantized as (q - 1)*d. (int) of an out-of-range or NaN float is
  x86's INT_MIN, so those values get q = 0 as in the reference.
"""

from __future__ import annotations

import numpy as np

from .numeric import F32, blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, seq_sum0
from .registry import register

QK1_0 = 128
QK2_0 = 64
BLOCK_Q1_0 = np.dtype([("d", "<u2"), ("qs", "u1", (QK1_0 // 8,))])
BLOCK_Q2_0 = np.dtype([("d", "<u2"), ("qs", "u1", (QK2_0 // 4,))])
assert BLOCK_Q1_0.itemsize == 18 and BLOCK_Q2_0.itemsize == 18

def _blocks(rows: np.ndarray, qk: int) -> tuple[np.ndarray, int, int]:
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = x.shape
    if n % qk:
        raise ValueError(f"row length {n} is not a multiple of {qk}")
    return x.reshape(-1, qk), nrows, n


@ieee
def quantize_q1_0(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_q1_0: float32 (nrows, n) -> uint8 (nrows, n/128*18); the imatrix is ignored."""
    xb, nrows, n = _blocks(rows, QK1_0)
    nb = xb.shape[0]
    out = np.empty(nb, BLOCK_Q1_0)
    sum_abs = seq_sum0(np.abs(blocks_t(xb)))  # C's sequential float sum over the block
    out["d"] = fp16_bits(sum_abs / F32(QK1_0))
    out["qs"] = np.packbits(xb >= F32(0), axis=1, bitorder="little")
    return out.view(np.uint8).reshape(nrows, n // QK1_0 * BLOCK_Q1_0.itemsize)


@ieee
def dequantize_q1_0(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_q1_0: uint8 (nrows, n/128*18) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_Q1_0)
    d = fp16_bits_to_fp32(blk["d"])[:, None]
    bits = np.unpackbits(blk["qs"], axis=1, bitorder="little").astype(bool)
    return np.where(bits, d, -d).astype(F32).reshape(nrows, n)


@ieee
def quantize_q2_0(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_q2_0: float32 (nrows, n) -> uint8 (nrows, n/64*18); the imatrix is ignored."""
    xb, nrows, n = _blocks(rows, QK2_0)
    nb = xb.shape[0]
    out = np.empty(nb, BLOCK_Q2_0)
    d = np.max(np.abs(xb), axis=1)
    nan = np.isnan(d)
    if nan.any():  # `if (a > amax) amax = a` from 0 skips NaN
        d[nan] = np.fmax(np.fmax.reduce(np.abs(xb[nan]), axis=1), F32(0))
    idv = np.where(d > 0, F32(1) / np.where(d > 0, d, F32(1)), F32(0)).astype(F32)
    out["d"] = fp16_bits(d)
    t = xb * idv[:, None]
    # |t| <= 1 (+ an ulp) or NaN here: clamp(roundf(t) + 1, 0, 3) is (t > -0.5) + (t >= 0.5)
    q = np.greater(t, F32(-0.5)).view(np.uint8) + np.greater_equal(t, F32(0.5)).view(np.uint8)
    q[np.isinf(idv)] = 0  # 1/d overflowed: every product is +-inf or NaN, (int) gives INT_MIN -> 0
    q = q.reshape(nb, QK2_0 // 4, 4)
    out["qs"] = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.view(np.uint8).reshape(nrows, n // QK2_0 * BLOCK_Q2_0.itemsize)


@ieee
def dequantize_q2_0(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_q2_0: uint8 (nrows, n/64*18) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_Q2_0)
    d = fp16_bits_to_fp32(blk["d"])[:, None, None]
    qs = blk["qs"][:, :, None] >> np.array([0, 2, 4, 6], np.uint8)
    lv = ((qs & 3).astype(np.int8) - 1).astype(F32)
    return (lv * d).reshape(nrows, n)


register("Q1_0", quantize_q1_0, dequantize_q1_0, ik=())
register("Q2_0", quantize_q2_0, dequantize_q2_0, ik=())
