"""ik_llama.cpp's Q4_1 / Q5_1 with an imatrix and Q4_K / Q5_K (with and without one).

Ports of ik_llama.cpp ggml-quants.c, byte-exact with its `ggml_quantize_chunk`:

- `quantize_row_q4_1_impl` / `quantize_row_q5_1_impl` (with quant_weights): as mainline's
  (sigma2 = sum(x²)/n_per_row over the row, weights qw*sqrtf(sigma2 + x²)), but with ik's
  `make_qkx3_quants` (double sums, greedy descent: search_kx_ik.py). Without an imatrix ik
  quantizes them as mainline does (legacy.py).
- `quantize_row_q4_K_impl` / `quantize_row_q5_K_impl`: mainline's structure (sigma2 =
  2*sum(x²)/256 per super-block, weights qw*sqrtf(sigma2 + x²), sub-block weight sums sw), with
  ik's make_qkx3_quants (-0.9, 0.05, 36) per sub-block and ik's make_qp_quants (all-zero below
  1e-16) on the scales and on the mins; Q5_K clamps the 6-bit scales at 63, Q4_K does not.
- `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` (no imatrix): mainline's, except that ik's
  make_qkx2_quants calls a sub-block degenerate (L = 0, scale 0, the_min = -min) when
  max - min < 1e-10f, where mainline needs max == min (rows of ~1e-30 values differ).

All then re-quantize every K value with the decoded (fp16) scales, as C does. Layout and chunking
are those of kquants/q45_k.py (whose dequantizers serve these bytes too).

Speed (one core, 512 x 4096 gaussian rows, CPU time, same run): with an imatrix ~3 M weights/s for
all four (ik_llama.cpp's C 6-7 M/s: ratio ~0.45; 37 candidate scales per block, each needing its
own sequential double sums); Q4_K / Q5_K without one 6.6-7.6 M/s (C 10.5: ~0.65).
"""

from __future__ import annotations

import numpy as np

from ..kquants.q45_k import decode_scales_k4, quantize_k45_chunk, quantize_k45_rows, superblock_sum_sq, to_subblocks_t
from ..legacy import BLOCKS
from ..numeric import fp16_bits, seq_sum0
from ..registry import register
from ..rounding import fp32_to_fp16_bits, nearest_int
from ..scratch import Workspace
from ..types import QK_K
from .search_kx_ik import make_qkx3_ik_t, make_qp_quants_ik_t, qkx2_ik_state_t

F32 = np.float32
U32 = np.uint32
QK = 32
_Q1_CHUNK_BLOCKS = 1 << 12
_K_CHUNK_SUPERBLOCKS = 512


# --- Q4_1 / Q5_1 with an imatrix ------------------------------------------------------------

def _quantize_q1(rows: np.ndarray, imatrix: np.ndarray, nmax: int) -> np.ndarray:
    """quantize_row_q{4,5}_1_impl with quant_weights, every row; chunks of whole rows."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    nbr = n // QK
    name = "Q4_1" if nmax == 15 else "Q5_1"
    out = np.empty((nrows, nbr), dtype=BLOCKS[name])
    qw = np.asarray(imatrix, dtype=F32).reshape(nbr, QK)
    ws = Workspace()
    step = max(1, _Q1_CHUNK_BLOCKS // nbr)
    for a in range(0, nrows, step):
        b = min(nrows, a + step)
        r = b - a
        xr = rows[a:b]
        sq = np.ascontiguousarray(np.square(xr).T)  # a new array: never square the caller's rows
        sigma2 = seq_sum0(sq) / F32(n)  # C: sum_x2/n_per_row, x*x summed in row order
        xt = np.ascontiguousarray(xr.reshape(r * nbr, QK).T)  # (32, blocks), block = row*nbr + ib
        wt = xt * xt
        wt += np.repeat(sigma2, nbr)
        np.sqrt(wt, out=wt)
        wt *= np.tile(qw, (r, 1)).T  # qw[j] * sqrtf(sigma2 + x*x)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            d, the_min, L = make_qkx3_ik_t(xt, wt, nmax, ws=ws)
        blk = out[a:b].reshape(-1)
        blk["d"] = fp16_bits(d)
        blk["m"] = fp16_bits(-the_min)
        Lu = L.astype(U32)
        qs = (Lu[:16] & U32(15)) | ((Lu[16:] & U32(15)) << U32(4))  # (16, nb)
        blk["qs"] = qs.T.astype(np.uint8)
        if nmax == 31:
            h = (Lu >> U32(4)) << np.arange(32, dtype=U32)[:, None]
            blk["qh"] = np.bitwise_or.reduce(h, axis=0).view(np.uint8).reshape(-1, 4)
    return out.view(np.uint8).reshape(nrows, -1)


def quantize_q4_1_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q4_1 with an imatrix: rows float32 (nrows, n), imatrix (n,) -> uint8."""
    if imatrix is None:
        raise ValueError("ik's own Q4_1 search needs an imatrix (without one ik quantizes as mainline)")
    return _quantize_q1(rows, imatrix, 15)


def quantize_q5_1_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q5_1 with an imatrix: rows float32 (nrows, n), imatrix (n,) -> uint8."""
    if imatrix is None:
        raise ValueError("ik's own Q5_1 search needs an imatrix (without one ik quantizes as mainline)")
    return _quantize_q1(rows, imatrix, 31)


# --- Q4_K / Q5_K ----------------------------------------------------------------------------

def _requantize(xt3: np.ndarray, d: np.ndarray, dm: np.ndarray, nmax: int, Ls: np.ndarray) -> np.ndarray:
    """C's second pass: L = clamp(nearest_int((x + dm)/d), 0, nmax) where d != 0, the search's L
    (Ls uint8 (n, J, nb)) where d == 0 (`if (!d) continue;`)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = (xt3 + dm) / d
    li = nearest_int(t)
    np.clip(li, 0, nmax, out=li)
    L = li.astype(np.uint8)
    zero = d == 0
    if zero.any():
        L = np.where(zero[None], Ls, L)
    return L


def _k45_chunk_im(xs: np.ndarray, qw3: np.ndarray, nmax: int, ws: Workspace
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ik quantize_row_q{4,5}_K_impl on super-blocks xs float32 (nb, 256), imatrix qw3 (32, 8, nb)."""
    nb = xs.shape[0]
    xt3 = to_subblocks_t(xs, 32, ws.get("k_x", (32, 8, nb)))
    xt = xt3.reshape(32, 8 * nb)
    sigma2 = F32(2.0) * superblock_sum_sq(xt3, ws) / F32(QK_K)  # C: 2*sum_x2/QK_K
    wt3 = np.multiply(xt3, xt3, out=ws.get("k_w", (32, 8, nb)))
    wt3 += sigma2
    np.sqrt(wt3, out=wt3)
    np.multiply(qw3, wt3, out=wt3)  # C: qw * sqrtf(sigma2 + x*x)
    wt = wt3.reshape(32, 8 * nb)
    sw = seq_sum0(wt).reshape(8, nb)
    scales, mins, Ls = make_qkx3_ik_t(xt, wt, nmax, ws=ws)
    # scales and mins in one make_qp_quants call (blocks are independent)
    dm_block, lsm = make_qp_quants_ik_t(np.concatenate([scales.reshape(8, nb), mins.reshape(8, nb)], axis=1),
                                        np.concatenate([sw, sw], axis=1), 63)
    ls, lm = lsm[:, :nb], lsm[:, nb:]
    if nmax == 31:  # quantize_row_q5_K_impl clamps, quantize_row_q4_K_impl does not
        ls = np.minimum(ls, 63)
        lm = np.minimum(lm, 63)
    d_bits = fp32_to_fp16_bits(dm_block[:nb])
    dmin_bits = fp32_to_fp16_bits(dm_block[nb:])
    packed, d, dm = decode_scales_k4(d_bits, dmin_bits, ls, lm)
    L = _requantize(xt3, d, dm, nmax, Ls.reshape(32, 8, nb))
    return d_bits, dmin_bits, packed, L


def _k45_chunk(xs: np.ndarray, qw3: np.ndarray | None, nmax: int, ws: Workspace
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ik quantize_row_q{4,5}_K_ref (qw3 None: q45_k's kernel with ik's make_qkx2_quants) or _impl."""
    if qw3 is None:
        return quantize_k45_chunk(xs, None, nmax, ws, qkx2=qkx2_ik_state_t)
    return _k45_chunk_im(xs, qw3, nmax, ws)


def _quantize_k(rows: np.ndarray, imatrix: np.ndarray | None, nmax: int) -> np.ndarray:
    """q45_k's row driver and block layout with ik's kernels."""
    return quantize_k45_rows(np.ascontiguousarray(rows, dtype=F32),
                             None if imatrix is None else np.asarray(imatrix, dtype=F32), nmax, _k45_chunk,
                             _K_CHUNK_SUPERBLOCKS)


def quantize_q4_k_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q4_K: rows float32 (nrows, n_per_row), imatrix (n_per_row,) or None."""
    return _quantize_k(rows, imatrix, 15)


def quantize_q5_k_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q5_K: rows float32 (nrows, n_per_row), imatrix (n_per_row,) or None."""
    return _quantize_k(rows, imatrix, 31)


QUANTIZE: dict = {"Q4_1": quantize_q4_1_ik, "Q5_1": quantize_q5_1_ik, "Q4_K": quantize_q4_k_ik,
                  "Q5_K": quantize_q5_k_ik}
DEQUANTIZE: dict = {}  # legacy.py's and q45_k.py's dequantizers read these bytes
register("Q4_1", quantize_q4_1_ik, mainline=(), ik=(True,))  # without an imatrix: mainline's kernel
register("Q5_1", quantize_q5_1_ik, mainline=(), ik=(True,))
register("Q4_K", quantize_q4_k_ik, mainline=(), ik=(False, True))
register("Q5_K", quantize_q5_k_ik, mainline=(), ik=(False, True))
