"""ik_llama.cpp's Q2_K (with and without an imatrix) and Q3_K with an imatrix, byte-exact.

ik_llama.cpp keeps mainline's block layouts and dequantizers (kquants/q2_k.py, q3_k.py) but
quantizes these variants its own way (ggml/src/ggml-quants.c of ik_llama.cpp; iqk_quantize.cpp
does not override quantize_q2_K / quantize_q3_K, it only repacks them for the _R4 types):

- Q2_K without imatrix, `quantize_row_q2_K_ref`:
  * "TriNet" detection over the WHOLE chunk that ggml_quantize_chunk receives (quantize_q2_K
    passes nrow*n_per_row values in one call): max = max|x|, l = x < -max/2 ? -1 : x < max/2 ?
    0 : 1, mse0 = sum x², mse = sum (x - max*l)² (float32, sequential); if mse < 0.1*mse0 every
    block is written as ternary (d = dmin = fp16(max), scales 0x11, L = l + 1). The bytes of a
    ternary-looking tensor therefore depend on how rows are grouped into calls, as in ik.
  * otherwise mainline's algorithm, except that ik's make_qkx2_quants treats a sub-block as
    degenerate when `max - min < 1e-10f` (mainline: `max == min`): L = 0, scale 0, the_min =
    -min. That is what turns the 1e-30 'tiny' row into other bytes.
- Q2_K with imatrix, `quantize_row_q2_K_impl`: sigma2 = 0.75*sum(x²)/256, weights
  qw*sqrt(sigma2 + x²), ik's `make_qkx3_quants` (double precision sums, 37 candidate scales
  -0.9 + 0.05*is, then a greedy one-step-at-a-time descent on L), ik's `make_qp_quants` (zero
  below 1e-16, no guard on the final division) for the 16 scales and the 16 mins, and a final
  pass with the unrounded float scales: q = nearest_int((x + m) * (d ? 1/d : 0)).
- Q3_K with imatrix, `quantize_row_q3_K_impl`: mainline's structure, ik's `make_qx_quants`
  (search_ik.make_qx_quants_ik_t) at both levels. (Q3_K without imatrix is mainline's.)

Layout as in the mainline kernels: a chunk of super-blocks transposed to [index in sub-block,
sub-block, super-block], each C reduction down axis 0 in C's order, the searches vectorized
across sub-blocks (loops only over candidate scales and descent steps). ik's make_qkx3_quants and
make_qp_quants are search_kx_ik's (shared with Q4_K/Q5_K), on chunks of Q2K_IMPL_CHUNK
super-blocks so that the float64 arrays stay in the L2 cache.

Speed (CPU time, 512 x 4096 gaussian rows, on a loaded 2-core machine, vs ik_llama.cpp's
single-thread C in the same run): Q2_K with imatrix ~3.2 M weights/s (ik 6.9: 0.46x), Q3_K with
imatrix ~6.4 (ik 12.1: 0.52x), Q2_K without ~7.0 (ik 12.3: 0.57x; the search is mainline's
search_kx). The Q2_K imatrix search is bound by 37 sequential candidate evaluations of three
float64 sums per value plus ~30 vector operations per sub-block each.
"""

from __future__ import annotations

import math

import numpy as np

from ..kquants.q2_k import dequantize_q2_k, pack_q2_k, quantize_q2_k_chunk
from ..kquants.q3_k import BLOCK_Q3_K, dequantize_q3_k, finish_q3_k
from ..kquants.q6_k import ImatrixLayout, chunk_size, to_sub_t
from ..kquants.q45_k import ImatrixCache, QkxState, superblock_chunks, superblock_sum_sq, to_subblocks_t
from ..numeric import seq_sum0
from ..registry import register
from ..rounding import fp32_to_fp16_bits, nearest_int
from ..scratch import Workspace, thread_workspace
from ..types import QK_K
from .search_ik import make_qx_quants_ik_t
from .search_kx_ik import make_qkx3_ik_t, make_qp_quants_ik_t, qkx2_ik_state_t

F32 = np.float32
F64 = np.float64
Q2K_SIZE = 84
Q2K_IMPL_CHUNK = 1024  # super-blocks per chunk with an imatrix: the double sums want L2-sized arrays
Q3K_CHUNK = 512
_TRINET_CHUNK = 1 << 20  # values per step of the sequential TriNet sums


# ----------------------------------------------------------------------------------------- Q2_K

def _seq_sum(v: np.ndarray, acc: np.float32) -> np.float32:
    """acc + v[0] + v[1] + ... in float32, strictly in order (np.add.accumulate is sequential)."""
    t = np.empty(v.size + 1, dtype=F32)
    t[0] = acc
    t[1:] = v.reshape(-1)
    return F32(np.add.accumulate(t)[-1])


def trinet_exact(flat: np.ndarray, mx: np.float32) -> bool:
    """C's sums, float32 and strictly sequential: mse < 0.1f*mse0."""
    h = F32(0.5) * mx
    mse0 = F32(0)
    mse = F32(0)
    for a in range(0, flat.size, _TRINET_CHUNK):
        x = flat[a:a + _TRINET_CHUNK]
        lv = np.where(x < -h, F32(-1), np.where(x < h, F32(0), F32(1)))
        mse0 = _seq_sum(x * x, mse0)
        diff = x - mx * lv
        mse = _seq_sum(diff * diff, mse)
    return bool(mse < F32(0.1) * mse0)


def trinet_max(rows: np.ndarray) -> np.float32 | None:
    """quantize_row_q2_K_ref's TriNet test over all values of rows: max|x| if mse < 0.1*mse0, else None.

    C sums x² and (x - max*l)² in float32, one value after another. Those sums are first estimated
    in double (l != 0 only where |x| >= max/2, usually a few values); a float32 sequential sum of
    n non-negative terms is within a factor (1 + 2^-24)^n of the exact one, so unless the ratio
    falls inside that band around 0.1 (or the sums are near float32's range ends) the estimate
    decides, and otherwise C's sums are reproduced exactly.
    """
    flat = rows.reshape(-1)
    if flat.size == 0:
        return None
    mx = F32(max(F32(0), F32(flat.max()), -F32(flat.min())))
    if not np.isfinite(mx):
        return None
    h = F32(0.5) * mx
    s0 = 0.0
    s_in = 0.0
    d_in = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for a in range(0, flat.size, _TRINET_CHUNK):
            x = flat[a:a + _TRINET_CHUNK]
            x64 = x.astype(F64)
            s0 += float(x64 @ x64)
            xs = x[(x < -h) | (x >= h)]
            if xs.size:
                d = (xs - mx * np.where(xs < -h, F32(-1), F32(1))).astype(F64)
                xs64 = xs.astype(F64)
                s_in += float(xs64 @ xs64)
                d_in += float(d @ d)
        mse = (s0 - s_in) + d_in
        band = math.exp((flat.size + 8) * 2.0 ** -24 * 1.01) + 1e-6
        if 1e-30 < s0 < 1e36 and math.isfinite(mse):
            lim = float(F32(0.1)) * s0
            if mse * band * band < lim:
                return mx
            if mse > lim * band * band:
                return None
        return mx if trinet_exact(flat, mx) else None


def _trinet_blocks(rows: np.ndarray, mx: np.float32) -> np.ndarray:
    """Every block as ternary: d = dmin = fp16(max), scales 1 | 1 << 4, L = 0/1/2 (x < -max/2, < max/2)."""
    xs = rows.reshape(-1, QK_K)
    nb = xs.shape[0]
    h = F32(0.5) * mx
    lv = np.where(xs < -h, 0, np.where(xs < h, 1, 2)).astype(np.uint8)  # (nb, 256)
    out = np.empty((nb, Q2K_SIZE), dtype=np.uint8)
    bits = np.full(nb, fp32_to_fp16_bits(np.array([mx], dtype=F32))[0], dtype=np.uint16)
    L = np.ascontiguousarray(lv.reshape(nb, 16, 16).transpose(2, 1, 0))
    pack_q2_k(out, np.full((16, nb), 0x11, dtype=np.uint8), L, bits, bits)
    return out


def _qkx2_mad_ik(xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                 ws: Workspace) -> QkxState:
    """ik make_qkx2_quants(use_mad true), the search of quantize_row_q2_K_ref."""
    return qkx2_ik_state_t(xt, wt, nmax, rmin, rdelta, nstep, ws, use_mad=True)


def _q2_k_impl_chunk(xs: np.ndarray, qw3: np.ndarray, ws: Workspace
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q2_K_impl (ik) on super-blocks xs (nb, 256), imatrix qw3 (16, 16, nb)."""
    nb = xs.shape[0]
    if nb == 1:  # numpy reduces a lone column pairwise, not in C's order: run two copies
        r = _q2_k_impl_chunk(np.repeat(xs, 2, axis=0), np.repeat(qw3, 2, axis=2), ws)
        return r[0][:1], r[1][:1], np.ascontiguousarray(r[2][:, :1]), np.ascontiguousarray(r[3][:, :, :1])
    xt3 = to_subblocks_t(xs, 16, ws.get("q2i_x", (16, 16, nb)))
    xt = xt3.reshape(16, 16 * nb)
    sigma2 = (F32(0.75) * superblock_sum_sq(xt3, ws)) / F32(QK_K)
    wt3 = np.multiply(xt3, xt3, out=ws.get("q2i_w", (16, 16, nb)))
    wt3 += sigma2
    np.sqrt(wt3, out=wt3)
    np.multiply(qw3, wt3, out=wt3)  # qw[l] * sqrtf(sigma2 + x*x)
    wt = wt3.reshape(16, 16 * nb)
    sw = seq_sum0(wt).reshape(16, nb)
    scales, mins, _ = make_qkx3_ik_t(xt, wt, 3, -0.9, 0.05, 36, ws)
    dm, ls = make_qp_quants_ik_t(scales.reshape(16, nb), sw, 15)
    mm, lm = make_qp_quants_ik_t(mins.reshape(16, nb), sw, 15)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d_bits = fp32_to_fp16_bits(dm)
        dmin_bits = fp32_to_fp16_bits(mm)
        d = dm * ls.astype(F32)  # (16 j, nb), unrounded float scales
        m = mm * lm.astype(F32)
        idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)
        t = np.add(xt3, m, out=ws.get("q2i_t", (16, 16, nb)))
        t *= idv
        if bool(np.isfinite(t).all()) and float(np.abs(t).max(initial=0.0)) < 4.0e6:
            np.rint(t, out=t)
            np.clip(t, F32(0), F32(3), out=t)
            L = t.astype(np.uint8)
        else:
            L = np.clip(nearest_int(t), 0, 3).astype(np.uint8)
    sc = (ls | (lm << 4)).astype(np.uint8)
    return d_bits, dmin_bits, sc, L


_UNDECIDED = object()


def quantize_q2_k_ik(rows: np.ndarray, imatrix: np.ndarray | None, trinet: object = _UNDECIDED) -> np.ndarray:
    """ik_llama.cpp quantize_q2_K: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, n/256*84).

    Without an imatrix, rows is treated as one ggml_quantize_chunk call (the TriNet test sees them
    all). A caller that quantizes one tensor in several pieces can decide the test once for the
    whole tensor (trinet = trinet_max(all rows): a float32 max or None) and pass it with each
    piece, which gives the bytes of a single call on the whole tensor (ik's single-thread
    llama-quantize).
    """
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n_per_row = rows.shape
    if imatrix is None:
        if trinet is _UNDECIDED:
            with np.errstate(over="ignore", invalid="ignore"):
                trinet = trinet_max(rows)
        if trinet is not None:
            return _trinet_blocks(rows, F32(trinet)).reshape(nrows, -1)  # type: ignore[arg-type]
    out = np.empty((nrows * (n_per_row // QK_K), Q2K_SIZE), dtype=np.uint8)
    qwc = None if imatrix is None else ImatrixCache(np.asarray(imatrix, dtype=F32), n_per_row, 16)
    ws = Workspace()
    for a, b, xs in superblock_chunks(rows, None if qwc is None else Q2K_IMPL_CHUNK):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if qwc is None:
                res = quantize_q2_k_chunk(xs, None, ws, qkx2=_qkx2_mad_ik)
            else:
                res = _q2_k_impl_chunk(xs, qwc.get(a, b), ws)
        d_bits, dmin_bits, sc, L = res
        pack_q2_k(out[a:b], sc, L, d_bits, dmin_bits)
    return out.reshape(nrows, -1)


# ----------------------------------------------------------------------------------------- Q3_K

def _q3_k_impl_chunk(xs: np.ndarray, qwt: np.ndarray, blk: np.ndarray, ws: Workspace) -> None:
    """quantize_row_q3_K_impl (ik) on super-blocks xs float32 (m, 256), imatrix qwt (16, 16*m)."""
    m = xs.shape[0]
    x2seq = ws.get("q3i_x2", (QK_K, m))
    np.copyto(x2seq, xs.T)
    x2seq *= x2seq
    sumx2 = seq_sum0(x2seq)
    sigma2 = (F32(2) * sumx2) / F32(QK_K)
    xt = to_sub_t(xs, ws.get("q3i_xt", (16, 16 * m)))  # column 16*b + j
    w = np.multiply(xt, xt, out=ws.get("q3i_w", (16, 16 * m)))
    w += np.repeat(sigma2, 16)[None, :]
    np.sqrt(w, out=w)
    w *= qwt  # weight = qw * sqrtf(sigma2 + x*x)
    sw = seq_sum0(w)
    scale, lt = make_qx_quants_ik_t(xt, w, 4, 1)
    d_block, ls_t = make_qx_quants_ik_t(np.ascontiguousarray(scale.reshape(m, 16).T),
                                        np.ascontiguousarray(sw.reshape(m, 16).T), 32, 1)
    ls = np.ascontiguousarray(ls_t.T)  # (m, 16), values 0..63
    finish_q3_k(xs, lambda: lt, ls, fp32_to_fp16_bits(d_block), blk, ws)


def quantize_q3_k_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q3_K with an imatrix: rows float32 (nrows, n), imatrix (n,) -> uint8."""
    if imatrix is None:
        raise ValueError("ik_llama.cpp quantizes Q3_K without an imatrix as mainline does (kquants.q3_k)")
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    xs_all = rows.reshape(-1, QK_K)
    nb = xs_all.shape[0]
    out = np.empty(nb, dtype=BLOCK_Q3_K)
    chunk = chunk_size(nb, n // QK_K, Q3K_CHUNK)
    ws = thread_workspace()
    iml = ImatrixLayout(np.asarray(imatrix, dtype=F32), n, chunk, ws)
    for a in range(0, nb, chunk):
        b = min(nb, a + chunk)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _q3_k_impl_chunk(xs_all[a:b], iml.get(a, b), out[a:b], ws)
    return out.view(np.uint8).reshape(nrows, -1)


QUANTIZE: dict = {"Q2_K": quantize_q2_k_ik, "Q3_K": quantize_q3_k_ik}
DEQUANTIZE: dict = {"Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k}  # mainline's (same blocks)
register("Q2_K", quantize_q2_k_ik, mainline=(), ik=(False, True))
register("Q3_K", quantize_q3_k_ik, mainline=(), ik=(True,))  # without an imatrix: mainline's kernel
