"""Q6_K: super-blocks of 256 = 16 sub-blocks of 16 six-bit values, int8 sub-block scales, fp16 d.

Ports of ggml-quants.c `quantize_row_q6_K_ref`, `quantize_row_q6_K_impl` (with imatrix) and
`dequantize_row_q6_K`, byte-exact:

- each sub-block: scale = make_qx_quants(16, 32, x, L, rmse_type 1, weights), weights = x*x
  without imatrix and the raw imatrix values with one (mainline's impl does not use sigma2);
- max_scale = the sub-block scale of largest |.| (first wins); |max_scale| < 1e-15 -> zero block;
- iscale = -128/max_scale, d = fp16(1/iscale), scales = MIN(127, nearest_int(iscale*scale));
- every value is re-quantized with the decoded scale fp16(d)*scale where that is non-zero:
  L = clamp(nearest_int(x/(d*sc)), -32, 31) + 32; else the search's L stays.

Layout: a chunk of super-blocks (m, 256) is transposed once to (16, 16, m) = [in-sub-block
index, sub-block, super-block], i.e. the (16, 16*m) transposed layout the search works on.
"""

from __future__ import annotations

import numpy as np

from ..rounding import fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int
from ..types import QK_K

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
CHUNK_SUPERBLOCKS = 256

BLOCK_Q6_K = np.dtype([("ql", "u1", (QK_K // 2,)), ("qh", "u1", (QK_K // 4,)), ("scales", "i1", (QK_K // 16,)),
                       ("d", "<u2")])
assert BLOCK_Q6_K.itemsize == 210


def to_t3(xs: np.ndarray) -> np.ndarray:
    """(m, 256) super-blocks -> contiguous (16, 16, m) = [index in sub-block, sub-block, super-block]."""
    m = xs.shape[0]
    return np.ascontiguousarray(xs.reshape(m, 16, 16).transpose(2, 1, 0))


def from_t3(t3: np.ndarray) -> np.ndarray:
    """Inverse of to_t3: (16, 16, m) -> (m, 256) in C's in-block order."""
    return np.ascontiguousarray(t3.transpose(2, 1, 0)).reshape(t3.shape[2], QK_K)


def imatrix_t3(imatrix: np.ndarray, a: int, b: int, n_per_row: int) -> np.ndarray:
    """The imatrix values under super-blocks a..b-1 (row-major over all rows), as (16, 16, b-a)."""
    nbr = n_per_row // QK_K
    return to_t3(imatrix.reshape(nbr, QK_K)[np.arange(a, b) % nbr])


def first_absmax(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (fabsf(v[j]) > amax) { amax = fabsf(v[j]); vmax = v[j]; }` with amax = vmax = 0 at start,
    down axis 0 of (J, m) -> (amax, vmax) float32 (m,). np.argmax returns the first maximum."""
    av = np.abs(v)
    idx = np.argmax(av, axis=0)
    r = np.arange(v.shape[1])
    amax = av[idx, r]
    vmax = v[idx, r]
    none = ~(amax > 0)  # all zero (or NaN): C never updates
    if none.any():
        amax = np.where(none, F32(0), amax)
        vmax = np.where(none, F32(0), vmax)
    return amax, vmax


def requantize_t3(xt3: np.ndarray, d: np.ndarray, lt3: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """C's final pass: where d != 0, L = clamp(nearest_int(x/d), lo, hi) - lo; else keep L.

    xt3 float32 (16, 16, m); d float32 (16, m) per sub-block; lt3 (16, 16, m) from the search
    (already offset by -lo). Returns uint8 (16, 16, m).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        li = nearest_int(xt3 / d)
    np.clip(li, lo, hi, out=li)
    li -= lo
    return np.where(d != 0, li, lt3).astype(np.uint8)


def pack_q6_k(lb: np.ndarray, blk: np.ndarray) -> None:
    """Write ql / qh of blocks blk from L uint8 (m, 256) (values 0..63), as quantize_row_q6_K_ref."""
    m = lb.shape[0]
    lh = lb.reshape(m, 2, 4, 32)  # [half of 128, quarter k, l]
    lo = lh & 0xF
    ql = np.empty((m, 2, 2, 32), dtype=np.uint8)
    ql[:, :, 0] = lo[:, :, 0] | (lo[:, :, 2] << 4)
    ql[:, :, 1] = lo[:, :, 1] | (lo[:, :, 3] << 4)
    hi = lh >> 4
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    blk["ql"] = ql.reshape(m, 128)
    blk["qh"] = qh.reshape(m, 64)


def quantize_q6_k_chunk(xs: np.ndarray, qw3: np.ndarray | None, blk: np.ndarray) -> None:
    """Quantize super-blocks xs float32 (m, 256) into blk (m,) BLOCK_Q6_K; qw3 = imatrix (16, 16, m) or None."""
    from ..search import make_qx_quants_t  # TEMP until search.py lands

    m = xs.shape[0]
    xt3 = to_t3(xs)
    wt = None if qw3 is None else qw3.reshape(16, 16 * m)
    scale, lt = make_qx_quants_t(xt3.reshape(16, 16 * m), wt, 32, 1)
    scales = scale.reshape(16, m)
    amax, max_scale = first_absmax(scales)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = (F32(-128.0) / np.where(zero, F32(1), max_scale)).astype(F32)
        d16 = fp32_to_fp16_bits(F32(1.0) / iscale)
        sc = np.minimum(nearest_int(iscale * scales), 127)
    d = fp16_bits_to_fp32(d16) * sc.astype(F32)  # (16, m) float * int8
    lt3 = requantize_t3(xt3, d, lt.reshape(16, 16, m), -32, 31)
    lb = from_t3(lt3)
    pack_q6_k(lb, blk)
    blk["scales"] = sc.T.astype(np.int8)
    blk["d"] = d16
    if zero.any():
        blk[zero] = np.zeros(1, dtype=BLOCK_Q6_K)


def quantize_q6_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_q6_K: rows float32 (nrows, n) [, imatrix float32 (n,)] -> uint8 (nrows, n/256*210)."""
    nrows, n = rows.shape
    xs_all = rows.reshape(-1, QK_K)
    nb = xs_all.shape[0]
    out = np.empty(nb, dtype=BLOCK_Q6_K)
    for a in range(0, nb, CHUNK_SUPERBLOCKS):
        b = min(nb, a + CHUNK_SUPERBLOCKS)
        qw3 = None if imatrix is None else imatrix_t3(imatrix, a, b, n)
        quantize_q6_k_chunk(xs_all[a:b], qw3, out[a:b])
    return out.view(np.uint8).reshape(nrows, -1)


def dequantize_q6_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q6_K: y = (fp16(d) * scale) * (q - 32), float32 -> (nrows, n_per_row)."""
    blk = data.reshape(-1).view(BLOCK_Q6_K)
    nb = blk.shape[0]
    ql = blk["ql"].reshape(nb, 2, 2, 32)
    qh = blk["qh"].reshape(nb, 2, 1, 32)
    q = np.empty((nb, 2, 4, 32), dtype=np.int8)
    q[:, :, 0:2] = ql & 0xF
    q[:, :, 2:4] = ql >> 4
    q |= ((qh >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3).astype(np.int8) << 4
    q -= 32
    dl = fp16_bits_to_fp32(blk["d"])[:, None] * blk["scales"].astype(F32)  # (nb, 16)
    y = dl.reshape(nb, 16, 1) * q.reshape(nb, 16, 16).astype(F32)
    return y.reshape(data.shape[0], n_per_row)


# TEMP: registered once qtool/quants/search.py (make_qx_quants / make_q3_quants) exists
_HAVE_SEARCH = __import__("importlib.util").util.find_spec("qtool.quants.search") is not None
QUANTIZE: dict = {"Q6_K": quantize_q6_k} if _HAVE_SEARCH else {}
DEQUANTIZE: dict = {"Q6_K": dequantize_q6_k}
