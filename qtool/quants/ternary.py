"""Ternary types TQ1_0 and TQ2_0 (BitNet b1.58 / TriLM), byte-exact ports of mainline ggml-quants.c.

C functions ported: `quantize_row_tq1_0_ref`, `quantize_row_tq2_0_ref` (what `quantize_tq1_0` /
`quantize_tq2_0` run; the imatrix is ignored, so both variants give the same bytes),
`dequantize_row_tq1_0`, `dequantize_row_tq2_0`.

Per super-block of 256: d = max |x| (fp16), id = 1/d (0 if d == 0), trit xi = lroundf(x*id) + 1
in {0, 1, 2} (lroundf rounds half away from zero; an out-of-range or NaN product, e.g. x*inf
when d is a denormal whose reciprocal overflows, makes glibc's lroundf return LONG_MIN, whose
int conversion + 1 is 1, so that trit is 1).
- TQ2_0 (qs[64], d): byte 32*c + m holds trit of x[128c + m + 32n] at bits 2n, n = 0..3.
- TQ1_0 (qs[48], qh[4], d): qs[m] (m < 32) packs x[m + 32n], n = 0..4 as the base-3 number
  t0 t1 t2 t3 t4 (t0 most significant), qs[32 + m] (m < 16) packs x[160 + m + 16n], qh[j] packs
  x[240 + j + 4n], n = 0..3, times 3; each byte is then ceil(q*256/243) (uint16 arithmetic).
  Dequantizing trit n of byte b: q = (uint8)(b*3^n), t = (q*3) >> 8.
NaN inputs follow C too: MAX(amax, NaN) makes amax NaN until the next value (`_c_max_nan`).
"""

from __future__ import annotations

import numpy as np

from .numeric import F32, QK_K, fp16_bits, fp16_bits_to_fp32, ieee
from .registry import register

BLOCK_TQ1_0 = np.dtype([("qs", "u1", (48,)), ("qh", "u1", (4,)), ("d", "<u2")])
BLOCK_TQ2_0 = np.dtype([("qs", "u1", (64,)), ("d", "<u2")])
assert BLOCK_TQ1_0.itemsize == 54 and BLOCK_TQ2_0.itemsize == 66



def _trits(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(fp16 d bits (nb,), trits uint8 (nb, 256)) of the super-blocks of rows."""
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = x.shape
    if n % QK_K:
        raise ValueError(f"row length {n} is not a multiple of {QK_K}")
    xb = x.reshape(-1, QK_K)
    d = np.max(np.abs(xb), axis=1)
    odd = ~np.isfinite(d)  # inf or NaN in the block
    nan = np.isnan(d)
    if nan.any():
        d[nan] = _c_max_nan(xb[nan])
    idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)
    t = xb * idv[:, None]
    # |t| <= 1 (+ an ulp) here, so lroundf(t) + 1 is (t > -0.5) + (t >= 0.5)
    xi = np.greater(t, F32(-0.5)).view(np.uint8) + np.greater_equal(t, F32(0.5)).view(np.uint8)
    odd |= ~np.isfinite(idv)
    if odd.any():  # inf / NaN products: lroundf gives LONG_MIN, and LONG_MIN + 1 as int is 1
        xi[odd] = np.where(np.isfinite(t[odd]), xi[odd], np.uint8(1))
    return fp16_bits(d), xi, nrows, n


def _c_max_nan(xb: np.ndarray) -> np.ndarray:
    """C's `amax = MAX(amax, fabsf(v))` over blocks holding a NaN: MAX(a, NaN) is NaN and
    MAX(NaN, b) is b, so amax is the max of |x| after the last NaN (NaN if the block ends with it)."""
    isn = np.isnan(xb)
    last = xb.shape[1] - 1 - np.argmax(isn[:, ::-1], axis=1)
    after = np.arange(xb.shape[1]) > last[:, None]
    amax = np.max(np.where(after, np.abs(xb), F32(0)), axis=1)
    return np.where(last == xb.shape[1] - 1, F32(np.nan), amax)


def _base3(t: np.ndarray) -> np.ndarray:
    """Horner over axis 1 of trits (nb, k, m) in uint8: q = q*3 + t[n]."""
    q = np.zeros((t.shape[0], t.shape[2]), np.uint8)
    for i in range(t.shape[1]):
        q *= np.uint8(3)
        q += t[:, i]
    return q


def _ceil243(q: np.ndarray) -> np.ndarray:
    return ((q.astype(np.uint16) * 256 + 242) // 243).astype(np.uint8)


@ieee
def quantize_tq1_0(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_tq1_0: float32 (nrows, n) -> uint8 (nrows, n/256*54); the imatrix is ignored."""
    d, xi, nrows, n = _trits(rows)
    nb = xi.shape[0]
    out = np.empty(nb, BLOCK_TQ1_0)
    out["d"] = d
    qs = np.empty((nb, 48), np.uint8)
    qs[:, :32] = _ceil243(_base3(xi[:, :160].reshape(nb, 5, 32)))
    qs[:, 32:] = _ceil243(_base3(xi[:, 160:240].reshape(nb, 5, 16)))
    out["qs"] = qs
    out["qh"] = _ceil243(_base3(xi[:, 240:].reshape(nb, 4, 4)) * np.uint8(3))
    return out.view(np.uint8).reshape(nrows, n // QK_K * BLOCK_TQ1_0.itemsize)


_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)


def _untrit(b: np.ndarray, k: int) -> np.ndarray:
    """Trits 0..k-1 of bytes b (nb, m) -> (nb, k, m) as float32 xi - 1."""
    q = (b[:, None, :] * _POW3[:k, None]).astype(np.uint8)  # uint8 wrap, as C's uint8_t q
    return (((q.astype(np.uint16) * 3) >> 8).astype(np.int16) - 1).astype(F32)


@ieee
def dequantize_tq1_0(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_tq1_0: uint8 (nrows, n/256*54) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_TQ1_0)
    nb = blk.shape[0]
    d = fp16_bits_to_fp32(blk["d"])[:, None]
    qs = blk["qs"]
    lv = np.concatenate([_untrit(qs[:, :32], 5).reshape(nb, 160), _untrit(qs[:, 32:], 5).reshape(nb, 80),
                         _untrit(blk["qh"], 4).reshape(nb, 16)], axis=1)
    return (lv * d).reshape(nrows, n)


@ieee
def quantize_tq2_0(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_tq2_0: float32 (nrows, n) -> uint8 (nrows, n/256*66); the imatrix is ignored."""
    d, xi, nrows, n = _trits(rows)
    nb = xi.shape[0]
    out = np.empty(nb, BLOCK_TQ2_0)
    out["d"] = d
    t = (xi & np.uint8(3)).reshape(nb, 2, 4, 32)
    out["qs"] = (t[:, :, 0] | (t[:, :, 1] << 2) | (t[:, :, 2] << 4) | (t[:, :, 3] << 6)).reshape(nb, 64)
    return out.view(np.uint8).reshape(nrows, n // QK_K * BLOCK_TQ2_0.itemsize)


@ieee
def dequantize_tq2_0(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_tq2_0: uint8 (nrows, n/256*66) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_TQ2_0)
    d = fp16_bits_to_fp32(blk["d"])[:, None, None, None]
    qs = blk["qs"].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]
    lv = ((qs & 3).astype(np.int8) - 1).astype(F32)  # (nb, 2, 4, 32)
    return (lv * d).reshape(nrows, n)


register("TQ1_0", quantize_tq1_0, dequantize_tq1_0, ik=())
register("TQ2_0", quantize_tq2_0, dequantize_tq2_0, ik=())
