"""Q2_K: super-blocks of 256 = 16 sub-blocks of 16, 2-bit values, 4-bit sub-block scale and min.

Ports of ggml-quants.c `quantize_row_q2_K_ref`, `quantize_row_q2_K_impl` (with imatrix) and
`dequantize_row_q2_K`, byte-exact.

- Without imatrix: weights |x|, make_qkx2_quants(16, 3, ..., -0.5, 0.1, 15, use_mad=true);
  scales and mins quantized by nearest_int(15/max * v) into the low / high nibble (C's uint8_t
  wrap kept), d = max_scale/15, dmin = max_min/15.
- With imatrix: sigma2 = sum(x^2)/256 over the super-block, weights qw*sqrt(sigma2 + x^2),
  make_qkx3_quants(16, 3, ..., -0.9, 0.05, 36, false), then make_qp_quants(16, 15, ...) on the
  scales and on the mins, weighted by the sub-block weight sums.
- Both re-quantize with the decoded (fp16) scales.

Block bytes: scales[16], qs[64], d (fp16), dmin (fp16) = 84.
Layout as in q45_k: chunks of super-blocks transposed to (16, 16, nb).
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from ..rounding import fp32_to_fp16_bits, nearest_int
from ..scratch import Workspace
from ..search_kx import make_qp_quants_t, qkx_search_state_t
from ..types import QK_K
from .q45_k import (
    ImatrixCache,
    QkxStateSearch,
    requantize_t,
    running_max,
    superblock_chunks,
    superblock_sum_sq,
    to_subblocks_t,
)

F32 = np.float32
TYPE_SIZE = 84


def pack_q2_k(o: np.ndarray, sc: np.ndarray, L: np.ndarray, d_bits: np.ndarray, dmin_bits: np.ndarray) -> None:
    """Write blocks o uint8 (nb, 84) from scales uint8 (16, nb), L uint8 (16 i, 16 j, nb), d, dmin bits."""
    o[:, 0:16] = sc.T
    # byte 32*h + 16*jj + i holds, at bits 2s, value 128*h + 32*s + 16*jj + i, i.e. sub-block
    # j = 8*h + 2*s + jj, in-block index i: from L (16 i, 16 j, nb) viewed as (i, h, s, jj, nb)
    V = L.reshape(16, 2, 4, 2, -1)
    q = V[:, :, 0] | (V[:, :, 1] << 2) | (V[:, :, 2] << 4) | (V[:, :, 3] << 6)  # (i, h, jj, nb)
    o[:, 16:80] = q.transpose(3, 1, 2, 0).reshape(-1, 64)
    o[:, 80:82] = d_bits.view(np.uint8).reshape(-1, 2)
    o[:, 82:84] = dmin_bits.view(np.uint8).reshape(-1, 2)


def quantize_q2_k_chunk(xs: np.ndarray, qw3: np.ndarray | None, ws: Workspace, qkx2: QkxStateSearch | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q2_K of super-blocks xs float32 (nb, 256); qw3 the imatrix as (16, 16, nb) or None.

    qkx2: the _ref path's make_qkx2_quants(use_mad true) (default mainline's; ik_llama.cpp's
    quantize_row_q2_K_ref differs only there: its degenerate test, search_kx_ik.qkx2_ik_state_t).
    Returns (d fp16 bits (nb,), dmin fp16 bits (nb,), scales uint8 (16, nb), L uint8 (16, 16, nb)).
    """
    nb = xs.shape[0]
    xt3 = to_subblocks_t(xs, 16, ws.get("k_x", (16, 16, nb)))
    xt = xt3.reshape(16, 16 * nb)
    wt = ws.get("k_w", (16, 16 * nb))
    if qw3 is None:
        np.abs(xt, out=wt)
        if qkx2 is None:
            scales, mins, *search = qkx_search_state_t(xt, wt, 3, -0.5, 0.1, 15, True, True, ws)
        else:
            scales, mins, *search = qkx2(xt, wt, 3, -0.5, 0.1, 15, ws)
        scales = scales.reshape(16, nb)
        mins = mins.reshape(16, nb)
        max_scale = running_max(scales)
        max_min = running_max(mins)
        q4scale = F32(15.0)
        with np.errstate(divide="ignore"):
            isc = np.where(max_scale > 0, q4scale / max_scale, F32(0.0))
            imn = np.where(max_min > 0, q4scale / max_min, F32(0.0))
        sc = np.where(max_scale > 0, nearest_int(isc * scales) & 0xFF, 0)
        sc = np.where(max_min > 0, sc | ((nearest_int(imn * mins) << 4) & 0xFF), sc).astype(np.uint8)
        d_bits = fp32_to_fp16_bits(np.where(max_scale > 0, max_scale / q4scale, F32(0.0)))
        dmin_bits = fp32_to_fp16_bits(np.where(max_min > 0, max_min / q4scale, F32(0.0)))
    else:
        sum_x2 = superblock_sum_sq(xt3, ws)
        sigma2 = sum_x2 / F32(QK_K)
        wt3 = np.multiply(xt3, xt3, out=wt.reshape(16, 16, nb))
        wt3 += sigma2
        np.sqrt(wt3, out=wt3)
        np.multiply(qw3, wt3, out=wt3)  # C: qw[l] * sqrtf(sigma2 + x*x)
        sw = np.add.reduce(wt, axis=0).reshape(16, nb)
        scales, mins, *search = qkx_search_state_t(xt, wt, 3, -0.9, 0.05, 36, False, False, ws)
        # scales and mins in one make_qp_quants call (blocks are independent)
        dmm, lsm = make_qp_quants_t(np.concatenate([scales.reshape(16, nb), mins.reshape(16, nb)], axis=1),
                                    np.concatenate([sw, sw], axis=1), 15, ws)
        dm, mm = dmm[:nb], dmm[nb:]
        ls, lm = lsm[:, :nb], lsm[:, nb:]
        d_bits = fp32_to_fp16_bits(dm)
        dmin_bits = fp32_to_fp16_bits(mm)
        sc = (ls | (lm << 4)).astype(np.uint8)
    d = d_bits.view(np.float16).astype(F32) * (sc & 0xF).astype(F32)
    dm = dmin_bits.view(np.float16).astype(F32) * (sc >> 4).astype(F32)
    L = requantize_t(xt3, d, dm, 3, tuple(search), ws)
    return d_bits, dmin_bits, sc, L


def quantize_q2_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_q2_K: rows float32 (nrows, n_per_row), imatrix float32 (n_per_row,) or None."""
    nrows, n_per_row = rows.shape
    out = np.empty((nrows * (n_per_row // QK_K), TYPE_SIZE), dtype=np.uint8)
    qwc = None if imatrix is None else ImatrixCache(imatrix, n_per_row, 16)
    ws = Workspace()
    for a, b, xs in superblock_chunks(rows):
        qw3 = None if qwc is None else qwc.get(a, b)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # IEEE results, as in C
            d_bits, dmin_bits, sc, L = quantize_q2_k_chunk(xs, qw3, ws)
        pack_q2_k(out[a:b], sc, L, d_bits, dmin_bits)
    return out.reshape(nrows, (n_per_row // QK_K) * out.shape[1])


def dequantize_q2_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q2_K: y = d*(sc & 0xF)*q - dmin*(sc >> 4), per sub-block of 16."""
    nrows = data.shape[0]
    blk = data.reshape(-1, TYPE_SIZE)
    sc = blk[:, 0:16]
    d = blk[:, 80:82].copy().view(np.float16).astype(F32)  # (nb, 1)
    dmin = blk[:, 82:84].copy().view(np.float16).astype(F32)
    dl = d * (sc & 0xF).astype(F32)  # (nb, 16)
    ml = dmin * (sc >> 4).astype(F32)
    qs = blk[:, 16:80].reshape(-1, 2, 1, 32)
    q = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3  # (nb, h, s, l)
    y = dl.reshape(-1, 16, 1) * q.reshape(-1, 16, 16).astype(F32) - ml.reshape(-1, 16, 1)
    return y.reshape(nrows, n_per_row)


QUANTIZE: dict = {"Q2_K": quantize_q2_k}
DEQUANTIZE: dict = {"Q2_K": dequantize_q2_k}
register("Q2_K", QUANTIZE["Q2_K"], DEQUANTIZE["Q2_K"], ik=())  # ik: its own algorithms (ik/kquants_q23_ik.py)
