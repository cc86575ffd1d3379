"""Q3_K: super-blocks of 256 = 16 sub-blocks of 16 three-bit values, 6-bit sub-block scales, fp16 d.

Ports of ggml-quants.c `quantize_row_q3_K_ref`, `quantize_row_q3_K_impl` (with imatrix) and
`dequantize_row_q3_K`, byte-exact:

- without imatrix: each sub-block's scale = make_q3_quants(16, 4, x, L, do_rmse=true); the scales
  are quantized with iscale = -32/max_scale (max_scale = the one of largest |.|, first wins) to
  nearest_int clamped to [-32, 31], + 32; d = fp16(1/iscale) (0 and zero scale bytes if max_scale
  is 0);
- with imatrix: sigma2 = 2*sum(x^2)/256 over the super-block, weights = qw*sqrt(sigma2 + x^2),
  scale = make_qx_quants(16, 4, x, L, 1, weights); then d = make_qx_quants(16, 32, scales, Ls,
  1, sw) quantizes the 16 scales, weighted by each sub-block's weight sum sw;
- both re-quantize every value with the decoded scale fp16(d)*(Ls - 32) where that is non-zero:
  L = clamp(nearest_int(x/d), -4, 3) + 4; else the search's L stays.

Packing: the high bit of value j goes to bit j/32 of hmask[j%32]; the low two bits of values
128h + 32k + l go to bits 2k of qs[32h + l]; scale j's low nibble to scales[j%8] (high nibble
for j >= 8) and its top two bits to bits 2*(j/4) of scales[8 + j%4].

Layout: as Q6_K, a chunk of super-blocks (m, 256) is transposed to (16, 16, m).
"""

from __future__ import annotations

import numpy as np

from ..rounding import fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int
from ..types import QK_K
from .q6_k import CHUNK_SUPERBLOCKS, first_absmax, from_t3, imatrix_t3, requantize_t3, to_t3

F32 = np.float32

BLOCK_Q3_K = np.dtype([("hmask", "u1", (QK_K // 8,)), ("qs", "u1", (QK_K // 4,)), ("scales", "u1", (12,)),
                       ("d", "<u2")])
assert BLOCK_Q3_K.itemsize == 110


def pack_scales_q3(ls: np.ndarray) -> np.ndarray:
    """16 six-bit scales uint8 (m, 16) -> the 12 scale bytes (m, 12) of block_q3_K."""
    m = ls.shape[0]
    out = np.empty((m, 12), dtype=np.uint8)
    out[:, :8] = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    hi = (ls >> 4).reshape(m, 4, 4)  # [j/4, j%4]
    out[:, 8:] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return out


def unpack_scales_q3(sb: np.ndarray) -> np.ndarray:
    """The 12 scale bytes (m, 12) -> 16 six-bit scales uint8 (m, 16) (0..63, i.e. scale + 32)."""
    m = sb.shape[0]
    lo = np.concatenate([sb[:, :8] & 0xF, sb[:, :8] >> 4], axis=1)
    hi = (sb[:, None, 8:] >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, :, None]) & 3  # (m, j/4, j%4)
    return lo | (hi.reshape(m, 16) << 4)


def pack_q3_k(lb: np.ndarray, blk: np.ndarray) -> None:
    """Write hmask / qs of blocks blk from L uint8 (m, 256) (values 0..7), as quantize_row_q3_K_ref."""
    m = lb.shape[0]
    hb = (lb >> 2).reshape(m, 8, 32)  # high bit of value 32k + i -> bit k of hmask[i]
    hm = hb[:, 0].copy()
    for k in range(1, 8):
        hm |= hb[:, k] << k
    lo = (lb & 3).reshape(m, 2, 4, 32)
    qs = lo[:, :, 0] | (lo[:, :, 1] << 2) | (lo[:, :, 2] << 4) | (lo[:, :, 3] << 6)
    blk["hmask"] = hm
    blk["qs"] = qs.reshape(m, 64)


def _finish(xt3: np.ndarray, lt3: np.ndarray, ls: np.ndarray, d16: np.ndarray, blk: np.ndarray) -> None:
    """Shared tail of ref and impl: re-quantize with the decoded scales and pack.

    xt3 float32 (16, 16, m); lt3 uint8 (16, 16, m) search levels (0..7); ls uint8 (16, m) quantized
    scales + 32; d16 uint16 (m,) fp16 bits of d.
    """
    d = fp16_bits_to_fp32(d16) * (ls.astype(F32) - F32(32))  # (16, m): float * int8
    lt3 = requantize_t3(xt3, d, lt3, -4, 3)
    pack_q3_k(from_t3(lt3), blk)
    blk["scales"] = pack_scales_q3(np.ascontiguousarray(ls.T))
    blk["d"] = d16


def quantize_q3_k_ref_chunk(xs: np.ndarray, blk: np.ndarray) -> None:
    """quantize_row_q3_K_ref on super-blocks xs float32 (m, 256) into blk (m,) BLOCK_Q3_K."""
    from ..search import make_q3_quants_t  # TEMP until search.py lands

    m = xs.shape[0]
    xt3 = to_t3(xs)
    scale, lt = make_q3_quants_t(xt3.reshape(16, 16 * m), 4)
    scales = scale.reshape(16, m)
    _, max_scale = first_absmax(scales)
    nz = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = (F32(-32.0) / np.where(nz, max_scale, F32(1))).astype(F32)
        li = nearest_int(iscale * scales)
        d16 = np.where(nz, fp32_to_fp16_bits(F32(1.0) / iscale), np.uint16(0)).astype(np.uint16)
    ls = np.where(nz, np.clip(li, -32, 31) + 32, 0).astype(np.uint8)
    _finish(xt3, lt.reshape(16, 16, m), ls, d16, blk)


def quantize_q3_k_impl_chunk(xs: np.ndarray, qw3: np.ndarray, blk: np.ndarray) -> None:
    """quantize_row_q3_K_impl on super-blocks xs float32 (m, 256), imatrix qw3 (16, 16, m), into blk."""
    from ..search import make_qx_quants_t  # TEMP until search.py lands

    m = xs.shape[0]
    xt3 = to_t3(xs)
    x2 = xt3 * xt3
    # sumx2 in C's order (index 16*j + i): (i, j, m) -> (j, i, m), sequential down axis 0
    seq = np.ascontiguousarray(x2.transpose(1, 0, 2)).reshape(QK_K, m)
    sumx2 = np.add.reduce(seq, axis=0, initial=F32(0))
    sigma2 = (F32(2) * sumx2) / F32(QK_K)
    x2 += sigma2
    np.sqrt(x2, out=x2)
    weight = qw3 * x2  # (16, 16, m)
    sw = np.add.reduce(weight, axis=0, initial=F32(0))  # (16, m)
    scale, lt = make_qx_quants_t(xt3.reshape(16, 16 * m), weight.reshape(16, 16 * m), 4, 1)
    d_block, ls = make_qx_quants_t(scale.reshape(16, m), sw, 32, 1)
    d16 = fp32_to_fp16_bits(d_block)
    _finish(xt3, lt.reshape(16, 16, m), ls.astype(np.uint8), d16, blk)


def quantize_q3_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_q3_K: rows float32 (nrows, n) [, imatrix float32 (n,)] -> uint8 (nrows, n/256*110)."""
    nrows, n = rows.shape
    xs_all = rows.reshape(-1, QK_K)
    nb = xs_all.shape[0]
    out = np.empty(nb, dtype=BLOCK_Q3_K)
    for a in range(0, nb, CHUNK_SUPERBLOCKS):
        b = min(nb, a + CHUNK_SUPERBLOCKS)
        if imatrix is None:
            quantize_q3_k_ref_chunk(xs_all[a:b], out[a:b])
        else:
            quantize_q3_k_impl_chunk(xs_all[a:b], imatrix_t3(imatrix, a, b, n), out[a:b])
    return out.view(np.uint8).reshape(nrows, -1)


def dequantize_q3_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q3_K: y = (fp16(d) * (scale - 32)) * (q - (high bit ? 0 : 4)) -> float32."""
    blk = data.reshape(-1).view(BLOCK_Q3_K)
    nb = blk.shape[0]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]
    lo = (blk["qs"].reshape(nb, 2, 1, 32) >> shifts) & 3  # (nb, half, k, l): value 128h + 32k + l
    bits = np.arange(8, dtype=np.uint8)[None, :, None]
    hi = (blk["hmask"].reshape(nb, 1, 32) >> bits) & 1  # (nb, 8, 32): value 32k + l
    q = lo.reshape(nb, 8, 32).astype(np.int8) - np.where(hi != 0, 0, 4).astype(np.int8)
    dl = fp16_bits_to_fp32(blk["d"])[:, None] * (unpack_scales_q3(blk["scales"]).astype(F32) - F32(32))
    y = dl.reshape(nb, 16, 1) * q.reshape(nb, 16, 16).astype(F32)
    return y.reshape(data.shape[0], n_per_row)


# TEMP: registered once qtool/quants/search.py (make_qx_quants / make_q3_quants) exists
_HAVE_SEARCH = __import__("importlib.util").util.find_spec("qtool.quants.search") is not None
QUANTIZE: dict = {"Q3_K": quantize_q3_k} if _HAVE_SEARCH else {}
DEQUANTIZE: dict = {"Q3_K": dequantize_q3_k}
