"""Q6_0 (ik_llama.cpp type 133): blocks of 32 six-bit values and one fp16 scale, 26 bytes.

Ports of ik_llama.cpp ggml-quants.c, byte-exact:

- `quantize_q6_0` (what llama-quantize calls, with or without imatrix): per block,
  d = make_qx_quants(32, 32, x, L, 1, w) with ik's search (search_ik), w = x*x without an
  imatrix, qw*sqrtf(sigma2 + x*x) with one (sigma2 = sequential sum of x*x over the row / n);
  d is stored as fp16 and the search's L (level + 32, 0..63) is packed as is.
- `quantize_row_q6_0_ref` (the row quantizer quantize-stats measures): d0 = max/-32,
  L = MIN(63, (int8_t)(x/d0... + 32.5)), stored d = fp16(sumqx/sumq2) with weights (x*id)²
  (fp16(d0) when sumq2 = 0).
- `dequantize_row_q6_0`: y = (L - 32) * fp16(d).

Layout of a block: d (fp16), qh[8], qs[16]; qs[j] = L[j] & 15 | (L[j+16] & 15) << 4;
h_j = L[j] >> 4 | (L[j+16] >> 4) << 2 and qh[j % 8] |= h_j << 4*(j / 8), j = 0..15.
Work is on (32, nb) transposed chunks (C's summation order down axis 0).
"""

from __future__ import annotations

import numpy as np

from ..numeric import fp16_bits, ieee, seq_sum0
from ..registry import register
from ..rounding import fp16_bits_to_fp32
from ..search import first_absmax_t
from .search_ik import make_qx_quants_ik_t

F32 = np.float32
QK6_0 = 32
BLOCK_Q6_0 = np.dtype([("d", "<u2"), ("qh", "u1", (8,)), ("qs", "u1", (16,))])
assert BLOCK_Q6_0.itemsize == 26
_CHUNK_BLOCKS = 4096


def _pack(L: np.ndarray, d16: np.ndarray) -> np.ndarray:
    """Levels uint8 (nb, 32) in 0..63 and fp16 bits (nb,) -> BLOCK_Q6_0 (nb,)."""
    out = np.empty(L.shape[0], BLOCK_Q6_0)
    out["d"] = d16
    lo = L & np.uint8(15)
    out["qs"] = lo[:, :16] | (lo[:, 16:] << np.uint8(4))
    hi = L >> np.uint8(4)
    h = hi[:, :16] | (hi[:, 16:] << np.uint8(2))
    out["qh"] = h[:, :8] | (h[:, 8:] << np.uint8(4))
    return out


@ieee
def quantize_q6_0(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_q6_0: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, n/32*26)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    nbr = n // QK6_0
    xb = rows.reshape(-1, QK6_0)
    qw = None
    if imatrix is not None:
        x2 = np.ascontiguousarray(rows.T * rows.T)  # a copy: rows.T of one row is rows itself, never square in place
        sigma2 = seq_sum0(x2) / F32(n)  # per row
        qw = np.asarray(imatrix, dtype=F32).reshape(nbr, QK6_0)
    out = np.empty(xb.shape[0], BLOCK_Q6_0)
    for a in range(0, xb.shape[0], _CHUNK_BLOCKS):
        b = min(xb.shape[0], a + _CHUNK_BLOCKS)
        xt = np.ascontiguousarray(xb[a:b].T)
        if qw is None:
            wt = xt * xt
        else:
            k = np.arange(a, b)
            wt = np.ascontiguousarray(qw[k % nbr].T) * np.sqrt(sigma2[k // nbr][None, :] + xt * xt)
        d, lt = make_qx_quants_ik_t(xt, wt, 32, 1)
        out[a:b] = _pack(np.ascontiguousarray(lt.T), fp16_bits(d))
    return out.view(np.uint8).reshape(nrows, -1)


@ieee
def quantize_row_q6_0_ref(rows: np.ndarray) -> np.ndarray:
    """quantize_row_q6_0_ref: rows float32 (nrows, n) -> uint8 (nrows, n/32*26)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, _ = rows.shape
    xt = np.ascontiguousarray(rows.reshape(-1, QK6_0).T)  # (32, nb)
    _, mx = first_absmax_t(xt)  # C: `if (amax < fabsf(v))`, the first of largest |x|
    d = mx / F32(-32)
    idd = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    xs = xt * idd
    L = np.minimum(np.trunc(xs + F32(32.5)), F32(63))  # (int8_t)(x0 + 32.5f): in 0..64 here
    q = L - F32(32)
    w = xs * xs
    t = (w * xt) * q  # per half: w0*x[j]*q0, then + w1*x[j+16]*q1, then += into the sum
    u = (w * q) * q
    sumqx = np.zeros(xt.shape[1], F32)
    sumq2 = np.zeros(xt.shape[1], F32)
    for j in range(16):
        sumqx += t[j] + t[j + 16]
        sumq2 += u[j] + u[j + 16]
    dd = np.where(sumq2 > 0, sumqx / sumq2, d)
    return _pack(np.ascontiguousarray(L.T).astype(np.uint8), fp16_bits(dd)).view(np.uint8).reshape(nrows, -1)


def dequantize_q6_0(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_q6_0: uint8 (nrows, n/32*26) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_Q6_0)
    d = fp16_bits_to_fp32(blk["d"])[:, None]
    qs, qh = blk["qs"], blk["qh"]
    h = np.concatenate([qh & np.uint8(15), qh >> np.uint8(4)], axis=1)  # (nb, 16): h_j
    x0 = ((qs & np.uint8(15)) | ((h << np.uint8(4)) & np.uint8(0x30))).astype(np.int32) - 32
    x1 = ((qs >> np.uint8(4)) | ((h << np.uint8(2)) & np.uint8(0x30))).astype(np.int32) - 32
    y = np.empty((blk.shape[0], QK6_0), F32)
    y[:, :16] = x0.astype(F32) * d
    y[:, 16:] = x1.astype(F32) * d
    return y.reshape(nrows, n)


QUANTIZE: dict = {"Q6_0": quantize_q6_0}
DEQUANTIZE: dict = {"Q6_0": dequantize_q6_0}
register("Q6_0", quantize_q6_0, dequantize_q6_0, mainline=())
