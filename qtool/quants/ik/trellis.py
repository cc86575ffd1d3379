"""ik_llama.cpp's trellis types IQ1_KT, IQ2_KT, IQ3_KT, IQ4_KT: groups of 4 or 8 weights coded
by one 13..16-bit index into a pseudo-random integer table, a 4-bit scale per block of 32 and a
float32 scale per row (the row meta) in front of the super-blocks.

Ports of iqk_quantize.cpp (quantize_row_iq{1,2,3,4}_kt_impl, QuantizerIQKT, the
dequantize_row_iq*_kt), byte-exact with ik's golden vectors. The build that made them has AVX2
and FMA (-mavx2 -mfma, -ffp-contract=off), so QuantizerIQKT's AVX2 paths run: find_best_match's
lane-wise minimum over the cluster members (the scalar build has no search at all) and
find_best_scale's `_mm256_fmadd_ps` accumulation (emulated exactly: `fma32`).

find_best_match, vectorized. The C scores every member of the group's cluster in float32,
w*((q - x)*(q - x)) summed as hsum_float_8x8 / hsum_float_4x8 order, and keeps the first
minimum of each SIMD lane, then the first lane. Here a float32 matmul of the members' [q*q, q]
with [w, -2*w*x] gives every score up to a bound (16 products: |err| <= 2^-18 * sum of |terms|,
plus 2^-20 relative for the float32 rounding of C's score); only the members within that bound
of the minimum are scored exactly, in C's order, and the C's tie rule (lane, then position)
picks among equal scores. So the winner is C's, at matmul speed. The tables (values, clusters,
member lists) are built once per process and type by `trellis_tables.kt_tables`.

Per type (x the row, w QuantizerIQKT::set_weights, blocks of 32 with amax < 1e-16 skipped):
- IQ2_KT (groups of 8, 16-bit indices, 256 clusters): per block find_best_match at
  +-amax/scale_0 (scale_0 = max(90, 124*amax/amax_row)), the better find_best_scale score wins;
  19 trial row scales (itry - 127)/max_scale with best_index_iq4nl block scales, sums along the
  whole row; then per block a last find_best_match at d*iq4k_values[ls], kept only where its
  weighted mse is not worse; row scale sumqx/sumq2.
- IQ1_KT (groups of 8, 13-bit indices): IQ2_KT with a second round at scale_0 - 8 and the
  final row scale times 1.07; the 13th index bit in the scale byte.
- IQ3_KT (|x| against an abs trellis, signs in qh): 7 trial scales per block, block scales
  nearest_int in 0..15 against 19 trial row scales (itry*0.2 + 15)/max_scale.
- IQ4_KT (groups of 4, 15-bit indices, 625 clusters, two tables: offset 4096 and 4096 + 32768,
  bit 0 of the block word): 10 trials with the first table, 1 + 10 with the second; row scale
  -max_scale/64, block scales nearest_int capped at 63.

Not reproduced: an IQ4_KT block with amax >= 1e-16 whose 20 trial scores are all 0 (only by
float underflow) keeps in C the previous row's scale from the reused scales buffer; here 0.
The matmuls force OpenBLAS to one thread while a kernel runs (`blas_single_thread`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..numeric import F32, QK_K, nearest_int
from ..registry import register
from .iqk_tables import IQ4K_VALUES, IQ4NL_INDEX
from .trellis_tables import KtTables, kt_tables

__all__ = [
    "CHUNK_BLOCKS", "DEQUANTIZE", "QUANTIZE", "best_index_iq4nl", "blas_single_thread", "dequantize_iq1_kt",
    "dequantize_iq2_kt", "dequantize_iq3_kt", "dequantize_iq4_kt", "find_best_match", "find_best_scale", "fma32",
    "hsum8", "quantize_iq1_kt", "quantize_iq2_kt", "quantize_iq3_kt", "quantize_iq4_kt", "seq_rows", "set_weights",
]

BLOCK = 32
NBLOCK = QK_K // BLOCK
IQ4K = IQ4K_VALUES[:16].astype(F32)
CHUNK_BLOCKS = {"IQ1_KT": 8192, "IQ2_KT": 4096, "IQ3_KT": 4096, "IQ4_KT": 2048}
"""Blocks of 32 per chunk of rows (the trial scales multiply them: IQ4_KT's 10 at once); measured."""


# --- BLAS threads -------------------------------------------------------------------------------

@functools.cache
def _openblas() -> tuple[Any, Any] | None:
    """(get, set) of the thread count of the OpenBLAS numpy loaded, or None (other BLAS)."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln.split()[-1]})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("scipy_openblas_{}64_", "scipy_openblas_{}", "openblas_{}64_", "openblas_{}"):
            try:
                get = getattr(lib, suffix.format("get_num_threads"))
                put = getattr(lib, suffix.format("set_num_threads"))
            except AttributeError:
                continue
            get.restype = ctypes.c_int
            put.argtypes = [ctypes.c_int]
            return get, put
    return None


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run the pruning matmuls on the calling thread only: the engine has no threads inside, and
    OpenBLAS's own threads made these small products 3x slower on a busy machine."""
    ctl = _openblas()
    if ctl is None:
        yield
        return
    old = ctl[0]()
    if old == 1:
        yield
        return
    ctl[1](1)
    try:
        yield
    finally:
        ctl[1](old)


# --- float helpers ------------------------------------------------------------------------------

def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Single-rounded float32 a*b + c (_mm256_fmadd_ps). The product is exact in float64 and the
    sum s is rounded once there; rounding s to float32 is then correct unless s sits exactly on a
    float32 midpoint (or in float32's subnormal range): there the TwoSum error term says which
    way the exact value lies, and s moves one double ulp towards it (round to odd)."""
    p = a.astype(np.float64) * b
    c64 = c.astype(np.float64)
    s = p + c64
    bits = s.view(np.int64)
    risky = ((bits & 0x1FFFFFFF) == 0x10000000) | (np.abs(s) < 2.0 ** -126)
    if risky.any():
        i = np.nonzero(risky)
        pi, ci, si = p[i], c64[i], s[i]
        bb = si - pi
        e = (pi - (si - bb)) + (ci - bb)
        fix = (e != 0) & ((bits[i] & 1) == 0)
        bits[i] += np.where(fix, np.where((e > 0) == (si > 0), 1, -1), 0)
    return s.astype(F32)


def hsum8(v: np.ndarray) -> np.ndarray:
    """hsum_float_8 (and hsum_float_8x8's per-lane sum) of v (..., 8):
    ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7))."""
    return ((v[..., 0] + v[..., 4]) + (v[..., 2] + v[..., 6])) + ((v[..., 1] + v[..., 5]) + (v[..., 3] + v[..., 7]))


def best_index_iq4nl(x: np.ndarray) -> np.ndarray:
    """iqk best_index_iq4nl(iq4k_values, x): (int)x + 127 into iq4nl_index, ties by distance;
    (int)x of NaN or |x| >= 2^31 is INT_MIN on x86 (level 0)."""
    x = np.asarray(x, F32)
    ok = np.abs(x) < F32(2 ** 31)
    xi = np.where(ok, np.trunc(np.where(ok, x, 0)), -(2 ** 31)).astype(np.int64) + 127
    lo = xi < 0
    hi = xi >= 241
    ix = IQ4NL_INDEX[np.clip(xi, 0, 240)].astype(np.int64)
    two = ix >= 16
    a = np.clip(ix - 16, 0, 14)
    pick = np.where(x - IQ4K[a] < IQ4K[a + 1] - x, ix - 16, ix - 15)
    res = np.where(two, pick, ix)
    return np.where(lo, 0, np.where(hi, 15, res))


def seq_rows(a: np.ndarray) -> np.ndarray:
    """C's `s = 0; s += a[j]` along axis 1 of a (r, n) (any trailing axes) -> (r, ...)."""
    t = np.ascontiguousarray(np.moveaxis(a, 1, 0))
    if t[0].size == 1:
        return np.add.accumulate(t, axis=0)[-1] + F32(0)
    return np.add.reduce(t, axis=0) + F32(0)


# --- QuantizerIQKT ------------------------------------------------------------------------------

def set_weights(x: np.ndarray, imatrix: np.ndarray | None, sigma2_scale: float = 2.0) -> np.ndarray:
    """QuantizerIQKT::set_weights on rows x (r, n) -> weights (r, n)."""
    r, n = x.shape
    xs = x.reshape(-1, QK_K)
    sumx2 = seq_rows(xs * xs)
    zero = sumx2 < F32(1e-14) * F32(QK_K)
    sigma2 = F32(sigma2_scale) * sumx2 / F32(QK_K)
    if imatrix is None:
        w = F32(0.25) * sigma2[:, None] + xs * xs
    else:
        xb = x.reshape(-1, BLOCK)
        qw = np.broadcast_to(np.asarray(imatrix, F32).reshape(-1, BLOCK), (r, n // BLOCK, BLOCK)).reshape(-1, BLOCK)
        s2 = np.repeat(sigma2, NBLOCK)[:, None]
        wb = qw * np.sqrt(s2 + xb * xb)
        sumwx = seq_rows(wb * np.abs(xb))
        sumw2 = seq_rows(wb * wb)
        sx2 = seq_rows(xb * xb)
        bad = (sx2 < F32(1e-14)) | (sumw2 < F32(1e-14)) | (sumwx < F32(1e-14))
        wb[bad] = F32(1e-4)
        w = wb.reshape(-1, QK_K)
    w = np.where(zero[:, None], F32(1e-4), w).astype(F32)
    return w.reshape(r, n)


def find_best_match(t: KtTables, d: np.ndarray, xb: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """QuantizerIQKT::find_best_match (AVX2) for blocks xb, wb (nb, 32), scales d (nb,) -> indices
    (nb, 32/group) int32 (0 where d = 0)."""
    g = t.params.group
    nb = xb.shape[0]
    ng = BLOCK // g
    idx = np.zeros((nb, ng), np.int32)
    live = np.nonzero(d != 0)[0]
    if live.size == 0:
        return idx
    inv = F32(1) / d[live]
    xs = (inv[:, None] * xb[live]).reshape(-1, g)
    w = wb[live].reshape(-1, g)
    cl = t.cluster_of(xs)
    order = np.argsort(cl.astype(np.int16), kind="stable")  # groups by cluster (radix sort); one matmul each
    cl = cl[order]
    xs = xs[order]
    w = w[order]
    bounds = np.searchsorted(cl, np.arange(t.params.n_clusters + 1))
    rhs = np.concatenate([w, F32(-2) * w * xs], axis=1)  # (G, 2g)
    ax = np.abs(xs)
    ax += t.qmax
    mag = (w * ax * ax).sum(axis=1)  # >= the sum of |terms| of any member's score
    wx2 = (w * xs * xs).sum(axis=1)
    tol = F32(2 ** -18) * mag + F32(2 ** -19) * np.abs(wx2)
    ngr = xs.shape[0]
    best = np.empty(ngr, np.int64)
    mn = np.empty(ngr, F32)
    m2 = np.empty(ngr, F32)
    arange = np.arange(int(np.diff(bounds).max()))
    live_c = np.nonzero(bounds[1:] > bounds[:-1])[0]
    for c in live_c:  # the argmin and the runner-up of every group; one matmul per cluster
        b0, b1 = bounds[c], bounds[c + 1]
        approx = rhs[b0:b1] @ t.mat_t[:, t.start[c]:t.start[c + 1]]  # (n_g, n_c): scores less sum w*x*x
        ar = arange[:b1 - b0]
        am = approx.argmin(axis=1)
        best[b0:b1] = am
        mn[b0:b1] = approx[ar, am]
        approx[ar, am] = np.inf
        m2[b0:b1] = approx.min(axis=1)
    thr = mn + (tol + F32(2 ** -19) * np.abs(mn))
    amb = m2 <= thr  # another member as close: C's float scores decide
    best += t.start[cl]
    cand_g: list[np.ndarray] = []
    cand_p: list[np.ndarray] = []
    if amb.any():
        ga = np.nonzero(amb)[0]
        cand_g.append(ga)
        cand_p.append(best[ga])
        ca = cl[ga]
        for c in np.unique(ca):  # every member within the bound, recomputed for those groups only
            gc = ga[ca == c]
            s0 = t.start[c]
            approx = rhs[gc] @ t.mat_t[:, s0:t.start[c + 1]]
            gj, pi = np.nonzero(approx <= thr[gc, None])
            cand_g.append(gc[gj])
            cand_p.append(s0 + pi)
    if cand_g:
        cg = np.concatenate(cand_g)
        cp = np.concatenate(cand_p)
        diff = t.mvalues[cp] - xs[cg]
        v = w[cg] * (diff * diff)
        if g == 8:
            score = hsum8(v)
        else:
            score = (v[:, 0] + v[:, 2]) + (v[:, 1] + v[:, 3])
        rel = cp - t.start[cl[cg]]
        lane = t.lane_rank[rel % 8]
        srt = np.lexsort((rel, lane, score, cg))
        cg_s = cg[srt]
        first = np.ones(cg_s.size, bool)
        first[1:] = cg_s[1:] != cg_s[:-1]
        best[cg_s[first]] = cp[srt][first]
    res = np.empty(xs.shape[0], np.int32)
    res[order] = t.members[best]
    best = res
    idx[live] = best.reshape(-1, ng)
    return idx


def find_best_scale(t: KtTables, xb: np.ndarray, wb: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QuantizerIQKT::find_best_scale (AVX2 + FMA) -> (sumqx/sumq2, sumqx^2/sumq2), (0, 0) where
    sumq2 <= 0. Lane k accumulates elements k, k+8, ... with fmadd, then hsum_float_8."""
    nb = xb.shape[0]
    q = t.values[idx].reshape(nb, BLOCK // 8, 8)
    x = xb.reshape(nb, BLOCK // 8, 8)
    w = wb.reshape(nb, BLOCK // 8, 8)
    qx = np.zeros((nb, 8), F32)
    q2 = np.zeros((nb, 8), F32)
    for s in range(BLOCK // 8):
        qw = q[:, s] * w[:, s]
        qx = fma32(qw, x[:, s], qx)
        q2 = fma32(qw, q[:, s], q2)
    sumqx = hsum8(qx)
    sumq2 = hsum8(q2)
    pos = sumq2 > 0
    with np.errstate(all="ignore"):
        dd = np.where(pos, sumqx / sumq2, F32(0)).astype(F32)
        sc = np.where(pos, sumqx * sumqx / sumq2, F32(0)).astype(F32)
    return dd, sc


def _row_amax(x: np.ndarray) -> np.ndarray:
    return np.abs(x).max(axis=1)


def _first_absmax(scales: np.ndarray) -> np.ndarray:
    """C's `if (|s| > amax_scale) { amax_scale = |s|; max_scale = s; }` along axis 1 from 0."""
    a = np.abs(scales)
    j = np.argmax(a, axis=1)
    return scales[np.arange(scales.shape[0]), j]


# --- IQ1_KT, IQ2_KT -----------------------------------------------------------------------------

def _chunks(nrows: int, n: int, blocks: int) -> list[tuple[int, int]]:
    step = max(1, blocks * BLOCK // n)
    return [(a, min(nrows, a + step)) for a in range(0, nrows, step)]


def _quantize_iq12_kt_rows(x: np.ndarray, imatrix: np.ndarray | None, name: str) -> np.ndarray:
    """quantize_row_iq2_kt_impl / quantize_row_iq1_kt_impl on rows x (r, n) -> bytes."""
    t = kt_tables(name)
    iq1 = name == "IQ1_KT"
    bsize = 56 if iq1 else 68
    r, n = x.shape
    nsb = n // QK_K
    nbr = n // BLOCK
    w = set_weights(x, imatrix)
    amax_row = _row_amax(x)
    xb = x.reshape(-1, BLOCK)
    wb = w.reshape(-1, BLOCK)
    amax = np.abs(xb).max(axis=1)
    nz = amax >= F32(1e-16)
    ar = np.repeat(amax_row, nbr)
    with np.errstate(all="ignore"):
        scale0 = np.maximum(F32(90), F32(124) * amax / ar).astype(F32)
        dp0 = np.where(nz, amax / scale0, F32(0)).astype(F32)
        ds = [dp0, -dp0]
        if iq1:
            dp1 = np.where(nz, amax / (scale0 - F32(8)), F32(0)).astype(F32)
            ds += [dp1, -dp1]
    res = _match_many(t, ds, xb, wb)
    (ip, dp, sp), (im, dm, sm) = res[0], res[1]
    usep = sp > sm
    scales = np.where(usep, dp, dm)
    all_idx = np.where(usep[:, None], ip, im)
    if iq1:  # the second round, scale_0 - 8, against the first round's best score
        score = np.where(usep, sp, sm)
        (ip1, dp1, sp1), (im1, dm1, sm1) = res[2], res[3]
        upd = (sp1 > score) | (sm1 > score)
        u1 = sp1 > sm1
        scales = np.where(upd, np.where(u1, dp1, dm1), scales)
        all_idx = np.where(upd[:, None], np.where(u1[:, None], ip1, im1), all_idx)
    scales = np.where(nz, scales, F32(0)).astype(F32)
    all_idx = np.where(nz[:, None], all_idx, 0)
    scales_r = scales.reshape(r, nbr)
    max_scale = _first_absmax(scales_r)

    out = np.zeros((r, 4 + nsb * bsize), np.uint8)
    live = max_scale != 0
    # 19 trial row scales, sums along the whole row in C's order
    q = t.values[all_idx].reshape(r, n)  # trellis values of the chosen indices
    best = np.zeros(r, F32)
    d = np.where(live, max_scale / IQ4K[0], F32(0)).astype(F32)
    with np.errstate(all="ignore"):
        wx = w * x
        for itry in range(-9, 10):
            idr = (F32(itry + int(IQ4K_VALUES[0])) / max_scale).astype(F32)
            ls = best_index_iq4nl(np.repeat(idr, nbr) * scales)
            dl = np.repeat(IQ4K[ls].reshape(r, nbr), BLOCK, axis=1)
            qq = dl * q
            sumqx = seq_rows(wx * qq)
            sumq2 = seq_rows(w * qq * qq)
            upd = live & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            dn = sumqx / sumq2
            d = np.where(upd, dn, d)
            best = np.where(upd, dn * sumqx, best)
        idr = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        ls = best_index_iq4nl(np.repeat(idr, nbr) * scales).reshape(r, nsb, NBLOCK)
    ls = np.where(live[:, None, None], ls, 0)
    blk = out[:, 4:].reshape(r, nsb, bsize)
    sh = ls.astype(np.uint8)  # IQ1_KT: sh[8]; IQ2_KT: scales[4] of two nibbles
    dout = np.where(live, d, F32(0)).astype(F32)
    go = live & (d != 0)
    if go.any():
        rows = np.nonzero(go)[0]
        xg = x[rows]
        wg = w[rows]
        rg = rows.size
        lsv = IQ4K[ls[rows].reshape(rg, nbr)]  # int level as float
        dl = (np.repeat(d[rows], nbr) * lsv.reshape(-1)).astype(F32)
        xbg = xg.reshape(-1, BLOCK)
        wbg = wg.reshape(-1, BLOCK)
        bi = find_best_match(t, dl, xbg, wbg)
        prev = all_idx.reshape(r, nbr, -1)[rows].reshape(-1, 4)
        q1 = t.values[prev].reshape(-1, BLOCK)
        q2 = t.values[bi].reshape(-1, BLOCK)
        with np.errstate(all="ignore"):
            d1 = xbg - dl[:, None] * q1
            d2 = xbg - dl[:, None] * q2
            mse1 = seq_rows(wbg * d1 * d1)
            mse2 = seq_rows(wbg * d2 * d2)
        keep = mse1 < mse2
        bi = np.where(keep[:, None], prev, bi)
        qsel = t.values[bi].reshape(rg, n) * np.repeat(lsv, BLOCK, axis=1)
        with np.errstate(all="ignore"):
            sumqx = seq_rows(wg * xg * qsel)
            sumq2 = seq_rows(wg * qsel * qsel)
            dnew = np.where(sumq2 > 0, sumqx / sumq2 * (F32(1.07) if iq1 else F32(1)), d[rows]).astype(F32)
        dout[rows] = dnew
        if iq1:
            bq = bi.reshape(rg, nsb, NBLOCK, 4)
            blk[rows, :, 8:40] = (bq & 255).astype(np.uint8).reshape(rg, nsb, 32)
            nib = ((bq >> 8) & 0xF).astype(np.uint8)
            blk[rows, :, 40:56] = (nib[:, :, :4] | (nib[:, :, 4:] << 4)).reshape(rg, nsb, 16)
            top = (bq >> 12).astype(np.uint8)
            shr = sh[rows]
            for j in range(4):
                shr |= top[:, :, :, j] << (4 + j)
            sh[rows] = shr
        else:
            blk[rows, :, 4:] = np.ascontiguousarray(bi.astype("<u2").reshape(rg, nsb, 32)).view(np.uint8)
    if iq1:
        blk[:, :, :8] = sh
    else:
        blk[:, :, :4] = sh[:, :, :4] | (sh[:, :, 4:] << 4)
    out[:, :4] = dout.view(np.uint8).reshape(r, 4)
    return out


def _quantize_iq2_kt_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize_iq12_kt_rows(x, imatrix, "IQ2_KT")


def _quantize_iq1_kt_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize_iq12_kt_rows(x, imatrix, "IQ1_KT")


def quantize_iq1_kt(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk(GGML_TYPE_IQ1_KT) on rows (nrows, n_per_row)."""
    return _quantize_rows(_quantize_iq1_kt_rows, rows, imatrix, 56, CHUNK_BLOCKS["IQ1_KT"])


def dequantize_iq1_kt(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq1_kt: y = (d * iq4k_values[sh & 15]) * trellis value of the 13-bit index
    ql | qh nibble << 8 | sh bit << 12."""
    data = np.asarray(data, np.uint8)
    r = data.shape[0]
    nsb = n_per_row // QK_K
    d = data[:, :4].copy().view("<f4")[:, 0].astype(F32)
    blk = data[:, 4:].reshape(r, nsb, 56)
    sh = blk[:, :, :8].astype(np.int64)
    ql = blk[:, :, 8:40].astype(np.int64).reshape(r, nsb, 8, 4)
    qh = blk[:, :, 40:56].astype(np.int64).reshape(r, nsb, 4, 4)
    nib = np.concatenate([qh & 15, qh >> 4], axis=2)  # (r, nsb, 8 blocks, 4 groups)
    top = np.stack([(sh >> (4 + g)) & 1 for g in range(4)], axis=3)
    idx = ql | (nib << 8) | (top << 12)
    sl = d[:, None, None] * IQ4K[sh & 15]
    vals = kt_tables("IQ1_KT").values[idx.reshape(-1)].reshape(r, nsb, 8, 4, 8)
    y = sl[..., None, None] * vals
    return y.reshape(r, n_per_row).astype(F32)


def quantize_iq2_kt(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk(GGML_TYPE_IQ2_KT) on rows (nrows, n_per_row)."""
    return _quantize_rows(_quantize_iq2_kt_rows, rows, imatrix, 68, CHUNK_BLOCKS["IQ2_KT"])


def _quantize_rows(fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray], rows: np.ndarray,
                   imatrix: np.ndarray | None, bsize: int, chunk_blocks: int) -> np.ndarray:
    """fn over chunks of rows -> (nrows, 4 + n/256*bsize): float32 row scale, then the blocks."""
    rows = np.asarray(rows, F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"row length {n} is not a multiple of {QK_K}")
    out = np.empty((nrows, 4 + n // QK_K * bsize), np.uint8)
    with blas_single_thread():
        for a, b in _chunks(nrows, n, chunk_blocks):
            out[a:b] = fn(rows[a:b], imatrix)
    return out


def dequantize_iq2_kt(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq2_kt: y = (d * iq4k_values[scale]) * trellis value."""
    data = np.asarray(data, np.uint8)
    r = data.shape[0]
    nsb = n_per_row // QK_K
    d = data[:, :4].copy().view("<f4")[:, 0].astype(F32)
    blk = data[:, 4:].reshape(r, nsb, 68)
    sc = blk[:, :, :4]
    ls = np.concatenate([sc & 15, sc >> 4], axis=2)  # (r, nsb, 8)
    ql = blk[:, :, 4:].copy().view("<u2").reshape(r, nsb, 8, 4)
    t = kt_tables("IQ2_KT")
    vals = t.values[ql.reshape(-1)]
    sl = d[:, None, None] * IQ4K[ls]
    y = sl[..., None, None] * vals.reshape(r, nsb, 8, 4, 8)
    return y.reshape(r, n_per_row).astype(F32)



# --- IQ4_KT -------------------------------------------------------------------------------------

def _best_of(cands: list[tuple[np.ndarray, np.ndarray]], best: np.ndarray, scale: np.ndarray,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C's `if (score > best) { best = score; scale = d; }` over candidates (d, score) in order
    -> (best, scale, any update)."""
    upd = np.zeros(best.shape, bool)
    for dd, sc in cands:
        u = sc > best
        best = np.where(u, sc, best)
        scale = np.where(u, dd, scale)
        upd |= u
    return best, scale, upd


def _tries(amax: np.ndarray, scale0: np.ndarray, step: float, ntry: int, signs: bool) -> list[np.ndarray]:
    """The trial d of the first pass, in C's order: amax/(step*itry + scale_0) (then its negative)."""
    out = []
    for itry in range(-ntry, ntry + 1):
        d = amax / (F32(step * itry) + scale0)
        out.append(d)
        if signs:
            out.append(-d)
    return out


def _match_many(t: KtTables, ds: list[np.ndarray], xb: np.ndarray, wb: np.ndarray,
                ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """find_best_match + find_best_scale for several trial d at once -> [(idx, d, score)]."""
    k = len(ds)
    nb = xb.shape[0]
    xk = np.broadcast_to(xb, (k, *xb.shape)).reshape(-1, BLOCK)
    wk = np.broadcast_to(wb, (k, *wb.shape)).reshape(-1, BLOCK)
    idx = find_best_match(t, np.concatenate(ds).astype(F32), xk, wk)
    dd, sc = find_best_scale(t, xk, wk, idx)
    return [(idx[i * nb:(i + 1) * nb], dd[i * nb:(i + 1) * nb], sc[i * nb:(i + 1) * nb]) for i in range(k)]


def _quantize_iq4_kt_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_row_iq4_kt_impl on rows x (r, n) -> (r, 4 + n/256*128) bytes."""
    t1 = kt_tables("IQ4_KT")
    t2 = kt_tables("IQ4_KT_OFFSET")
    r, n = x.shape
    nsb = n // QK_K
    nbr = n // BLOCK
    w = set_weights(x, imatrix)
    amax_row = _row_amax(x)
    xb = x.reshape(-1, BLOCK)
    wb = w.reshape(-1, BLOCK)
    amax = np.abs(xb).max(axis=1)
    nz = (amax >= F32(1e-16)) & np.repeat(amax_row != 0, nbr)
    sel = np.nonzero(nz)[0]
    scales = np.zeros(xb.shape[0], F32)
    flag = np.zeros(xb.shape[0], bool)
    if sel.size:
        xs, ws, am = xb[sel], wb[sel], amax[sel]
        with np.errstate(all="ignore"):
            scale0 = np.maximum(F32(90), F32(124) * am / np.repeat(amax_row, nbr)[sel]).astype(F32)
            ds = _tries(am, scale0, 8.0, 2, True)
        res1 = _match_many(t1, ds, xs, ws)
        best0 = np.zeros(sel.size, F32)
        best, sc, upd = _best_of([(d, s) for _, d, s in res1], best0, np.zeros(sel.size, F32))
        # (blocks without any update keep a stale scale in C: 0 here, see the module notes)
        res2 = _match_many(t2, [sc, *ds], xs, ws)  # the best scale so far, then the same 10 trials
        _, d2, s2 = res2[0]
        u2 = s2 > best  # (best is not raised here, as in C)
        sc = np.where(u2, d2, sc)
        best, sc, upd2 = _best_of([(d, s) for _, d, s in res2[1:]], best, sc)
        scales[sel] = sc
        flag[sel] = u2 | upd2
    scales_r = scales.reshape(r, nbr)
    max_scale = _first_absmax(scales_r)
    d = np.where(amax_row != 0, -max_scale / F32(64), F32(0)).astype(F32)  # a zero row: +0
    out = np.zeros((r, 4 + nsb * 128), np.uint8)
    blk = out[:, 4:].reshape(r, nsb, 128)
    shb = np.zeros((r, nbr), np.uint32)
    shb |= flag.reshape(r, nbr)
    dout = d.copy()
    go = d != 0
    if go.any():
        rows = np.nonzero(go)[0]
        rg = rows.size
        idr = (F32(1) / d[rows]).astype(F32)
        with np.errstate(all="ignore"):
            ls = np.minimum(nearest_int(np.repeat(idr, nbr) * scales_r[rows].reshape(-1)), 63).astype(np.int64)
        dl = (np.repeat(d[rows], nbr) * ls.astype(F32)).astype(F32)
        xbg = x[rows].reshape(-1, BLOCK)
        wbg = w[rows].reshape(-1, BLOCK)
        fl = flag.reshape(r, nbr)[rows].reshape(-1)
        bi = np.zeros((rg * nbr, 8), np.int32)
        for tt, m in ((t1, ~fl), (t2, fl)):
            ii = np.nonzero(m)[0]
            if ii.size:
                bi[ii] = find_best_match(tt, dl[ii], xbg[ii], wbg[ii])
        q = np.where(fl[:, None], t2.values[bi].reshape(-1, BLOCK), t1.values[bi].reshape(-1, BLOCK))
        q = q * ls.astype(F32)[:, None]
        xg = x[rows]
        wg = w[rows]
        qr = q.reshape(rg, n)
        with np.errstate(all="ignore"):
            sumqx = seq_rows(wg * xg * qr)
            sumq2 = seq_rows(wg * qr * qr)
            dout[rows] = np.where(sumq2 > 0, sumqx / sumq2, d[rows]).astype(F32)
        sh = shb[rows]
        sh |= (((ls + 64) << 1) & 0xFF).reshape(rg, nbr).astype(np.uint32)
        hi = (bi >> 12).astype(np.uint32).reshape(rg, nbr, 8)
        for j in range(8):
            sh |= hi[:, :, j] << np.uint32(8 + 3 * j)
        shb[rows] = sh
        bq = bi.reshape(rg, nsb, 64)
        blk[rows, :, 32:96] = (bq & 255).astype(np.uint8)
        nib = ((bq >> 8) & 0xF).astype(np.uint8)
        blk[rows, :, 96:128] = nib[:, :, :32] | (nib[:, :, 32:] << 4)
    blk[:, :, :32] = np.ascontiguousarray(shb.reshape(r, nsb, 8).astype("<u4")).view(np.uint8)
    out[:, :4] = dout.astype(F32).view(np.uint8).reshape(r, 4)
    return out


def quantize_iq4_kt(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk(GGML_TYPE_IQ4_KT) on rows (nrows, n_per_row)."""
    return _quantize_rows(_quantize_iq4_kt_rows, rows, imatrix, 128, CHUNK_BLOCKS["IQ4_KT"])


def dequantize_iq4_kt(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq4_kt: y = (d * ((shb & 0xff) >> 1) - 64)) * trellis value at offset
    4096 or 4096 + 32768 (bit 0 of shb)."""
    data = np.asarray(data, np.uint8)
    r = data.shape[0]
    nsb = n_per_row // QK_K
    d = data[:, :4].copy().view("<f4")[:, 0].astype(F32)
    blk = data[:, 4:].reshape(r, nsb, 128)
    shb = blk[:, :, :32].copy().view("<u4").astype(np.int64)  # (r, nsb, 8)
    ql = blk[:, :, 32:96].astype(np.int64)
    qh = blk[:, :, 96:128].astype(np.int64)
    qhf = np.concatenate([qh & 15, qh >> 4], axis=2)  # nibble of group jj
    hi3 = np.stack([(shb >> (8 + 3 * g)) & 7 for g in range(8)], axis=3).reshape(r, nsb, 64)
    idx = ql | (qhf << 8) | (hi3 << 12)
    ls = ((shb & 0xFF) >> 1) - 64
    sl = d[:, None, None] * ls.astype(F32)
    off = np.repeat((shb & 1).astype(bool), 8, axis=2)
    v1 = kt_tables("IQ4_KT").values
    v2 = kt_tables("IQ4_KT_OFFSET").values
    vals = np.where(off[..., None], v2[idx], v1[idx])  # (r, nsb, 64, 4)
    y = sl[:, :, :, None, None] * vals.reshape(r, nsb, 8, 8, 4)
    return y.reshape(r, n_per_row).astype(F32)



# --- IQ3_KT -------------------------------------------------------------------------------------

def _quantize_iq3_kt_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_row_iq3_kt_impl on rows x (r, n) -> (r, 4 + n/256*100) bytes: trellis values of
    |x| (is_abs), the signs in qh."""
    t = kt_tables("IQ3_KT")
    r, n = x.shape
    nsb = n // QK_K
    nbr = n // BLOCK
    amax_row = _row_amax(x)
    w = set_weights(x, imatrix)
    ax = np.abs(x)
    xb = ax.reshape(-1, BLOCK)
    wb = w.reshape(-1, BLOCK)
    amax = xb.max(axis=1)
    nz = (amax >= F32(1e-16)) & np.repeat(amax_row != 0, nbr)
    sel = np.nonzero(nz)[0]
    scales = np.zeros(xb.shape[0], F32)
    qtmp = np.zeros(xb.shape, F32)  # C's stale qtmp of zero blocks only ever meets ls = 0
    if sel.size:
        xs, ws, am = xb[sel], wb[sel], amax[sel]
        with np.errstate(all="ignore"):
            scale0 = np.maximum(F32(84), F32(123) * am / np.repeat(amax_row, nbr)[sel]).astype(F32)
            ds = [am / (scale0 + F32(8.0 * itry)) for itry in range(-3, 4)]
        res = _match_many(t, ds, xs, ws)
        best = np.zeros(sel.size, F32)
        sc = np.zeros(sel.size, F32)
        bidx = np.zeros((sel.size, 4), np.int32)
        for idx, dd, s in res:
            u = s > best
            best = np.where(u, s, best)
            sc = np.where(u, dd, sc)
            bidx = np.where(u[:, None], idx, bidx)
        # (a block without a solution is a GGML_ASSERT in C)
        scales[sel] = sc
        qtmp[sel] = t.values[bidx].reshape(-1, BLOCK)
    scales_r = scales.reshape(r, nbr)
    max_scale = _first_absmax(scales_r)
    out = np.zeros((r, 4 + nsb * 100), np.uint8)
    live = amax_row != 0
    with np.errstate(all="ignore"):
        d = (max_scale / F32(15)).astype(F32)
        best = np.zeros(r, F32)
        wx = w * ax
        q0 = qtmp.reshape(r, n)
        for itry in range(-9, 10):
            idr = ((F32(itry) * F32(0.2) + F32(15)) / max_scale).astype(F32)
            ls = np.clip(nearest_int(np.repeat(idr, nbr) * scales), 0, 15).astype(F32)
            qq = np.repeat(ls.reshape(r, nbr), BLOCK, axis=1) * q0
            sumqx = seq_rows(wx * qq)
            sumq2 = seq_rows(w * qq * qq)
            upd = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            dn = sumqx / sumq2
            d = np.where(upd, dn, d)
            best = np.where(upd, dn * sumqx, best)
        idr = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        ls = np.clip(nearest_int(np.repeat(idr, nbr) * scales), 0, 15).astype(np.int64)
    lsr = ls.reshape(r, nsb, NBLOCK)
    blk = out[:, 4:].reshape(r, nsb, 100)
    blk[:, :, :4] = (lsr[:, :, :4] | (lsr[:, :, 4:] << 4)).astype(np.uint8)
    dl = (np.repeat(d, nbr) * ls.astype(F32)).astype(F32)
    bi = find_best_match(t, dl, xb, wb)
    q = t.values[bi].reshape(r, n) * np.repeat(ls.astype(F32).reshape(r, nbr), BLOCK, axis=1)
    with np.errstate(all="ignore"):
        sumqx = seq_rows(w * ax * q)
        sumq2 = seq_rows(w * q * q)
        dout = np.where(sumq2 > 0, sumqx / sumq2, d).astype(F32)
    blk[:, :, 4:68] = np.ascontiguousarray(bi.astype("<u2").reshape(r, nsb, 32)).view(np.uint8)
    neg = (x < 0).reshape(r, nsb, NBLOCK, BLOCK).astype(np.uint8)
    qh = np.zeros((r, nsb, BLOCK), np.uint8)
    for ib in range(NBLOCK):
        qh |= neg[:, :, ib, :] << ib
    blk[:, :, 68:100] = qh
    dout = np.where(live, dout, F32(0)).astype(F32)
    blk[~live] = 0
    out[:, :4] = dout.view(np.uint8).reshape(r, 4)
    return out


def quantize_iq3_kt(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk(GGML_TYPE_IQ3_KT) on rows (nrows, n_per_row)."""
    return _quantize_rows(_quantize_iq3_kt_rows, rows, imatrix, 100, CHUNK_BLOCKS["IQ3_KT"])


def dequantize_iq3_kt(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq3_kt: y = (d * scale) * |trellis value|, negated where qh has the bit."""
    data = np.asarray(data, np.uint8)
    r = data.shape[0]
    nsb = n_per_row // QK_K
    d = data[:, :4].copy().view("<f4")[:, 0].astype(F32)
    blk = data[:, 4:].reshape(r, nsb, 100)
    sc = blk[:, :, :4]
    ls = np.concatenate([sc & 15, sc >> 4], axis=2).astype(F32)
    ql = blk[:, :, 4:68].copy().view("<u2").reshape(r, nsb, 8, 4)
    vals = kt_tables("IQ3_KT").values[ql.reshape(-1)].reshape(r, nsb, 8, BLOCK)
    y = (d[:, None, None] * ls)[..., None] * vals
    qh = blk[:, :, 68:100]
    for ib in range(NBLOCK):
        m = ((qh >> ib) & 1).astype(bool)
        y[:, :, ib, :] = np.where(m, -y[:, :, ib, :], y[:, :, ib, :])
    return y.reshape(r, n_per_row).astype(F32)


QUANTIZE = {"IQ1_KT": quantize_iq1_kt, "IQ2_KT": quantize_iq2_kt, "IQ3_KT": quantize_iq3_kt, "IQ4_KT": quantize_iq4_kt}
DEQUANTIZE = {"IQ1_KT": dequantize_iq1_kt, "IQ2_KT": dequantize_iq2_kt, "IQ3_KT": dequantize_iq3_kt,
              "IQ4_KT": dequantize_iq4_kt}

for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())
