"""Q8_K: the 8-bit intermediate type of k-quant dot products (256 values, float32 scale, bsums).

Port of ggml-quants.c `quantize_row_q8_K_ref` and `dequantize_row_q8_K`, byte-exact. Not written
to model files (ggml_quantize_chunk has no Q8_K case), but part of the type table.

- amax = max |x| over the block (first maximum wins, as C's strict `>` scan), max = that x;
- amax == 0: d = 0 and qs = 0 (C leaves bsums uninitialised; we write 0, what a zeroed buffer holds);
- otherwise iscale = -127/max, qs = MIN(127, nearest_int(iscale*x)), bsums = sum of each 16 qs,
  d = 1/iscale stored as float32.
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from ..rounding import nearest_int
from ..types import QK_K

F32 = np.float32

BLOCK_Q8_K = np.dtype([("d", "<f4"), ("qs", "i1", (QK_K,)), ("bsums", "<i2", (QK_K // 16,))])
assert BLOCK_Q8_K.itemsize == 292

CHUNK_BLOCKS = 2048


def signed_absmax(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }` along axis 1.

    xs float32 (nb, n) -> (amax, max) float32 (nb,). np.argmax picks the first maximum, which
    is the element C's strict comparison keeps; amax starts at 0, so an all-zero block gives 0.
    """
    ax = np.abs(xs)
    idx = np.argmax(ax, axis=1)
    r = np.arange(xs.shape[0])
    amax = ax[r, idx]
    mx = xs[r, idx]
    # a block of zeros and NaNs keeps amax = max = 0 in C (NaN > amax is false)
    bad = ~(amax > 0)
    if bad.any():
        amax = np.where(bad, F32(0), amax)
        mx = np.where(bad, F32(0), mx)
    return amax, mx


def quantize_q8_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_row_q8_K_ref over rows float32 (nrows, n) -> uint8 (nrows, n/256*292); imatrix unused."""
    nrows, n = rows.shape
    xs_all = rows.reshape(-1, QK_K)
    out = np.zeros(xs_all.shape[0], dtype=BLOCK_Q8_K)
    for a in range(0, xs_all.shape[0], CHUNK_BLOCKS):
        xs = xs_all[a:a + CHUNK_BLOCKS]
        amax, mx = signed_absmax(xs)
        nz = amax != 0
        with np.errstate(divide="ignore"):
            iscale = np.where(nz, F32(-127.0) / np.where(nz, mx, F32(1)), F32(0)).astype(F32)
        q = np.minimum(nearest_int(xs * iscale[:, None]), 127).astype(np.int8)
        q[~nz] = 0
        blk = out[a:a + xs.shape[0]]
        blk["qs"] = q
        blk["bsums"] = q.reshape(-1, QK_K // 16, 16).sum(axis=2, dtype=np.int16)
        with np.errstate(divide="ignore"):
            blk["d"] = np.where(nz, F32(1) / np.where(nz, iscale, F32(1)), F32(0))
    return out.view(np.uint8).reshape(nrows, -1)


def dequantize_q8_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q8_K: y = d * qs, float32 -> (nrows, n_per_row)."""
    blk = data.reshape(-1).view(BLOCK_Q8_K)
    y = blk["d"][:, None] * blk["qs"].astype(F32)
    return y.reshape(data.shape[0], n_per_row)


QUANTIZE: dict = {"Q8_K": quantize_q8_k}
DEQUANTIZE: dict = {"Q8_K": dequantize_q8_k}
register("Q8_K", quantize_q8_k, dequantize_q8_k, ik=())  # ik's Q8_K is another (296-byte) block
