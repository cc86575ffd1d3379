"""The 1-bit lattice types IQ1_S and IQ1_M: byte-exact ports of mainline ggml-quants.c.

C functions ported: `quantize_row_iq1_s_impl`, `quantize_row_iq1_m_impl` (and their
`quantize_iq1_*` row loops), `iq1_find_best_neighbour2`, `dequantize_row_iq1_s / _m`. Tables:
`grids_iq1.tables()` (iq2xs_init_impl(GGML_TYPE_IQ1_S): grid, map, neighbour lists). IQ1_S
needs an imatrix in ggml (ggml_quantize_requires_imatrix); IQ1_M does not.

Per super-block of 256: sigma2 = 2*(sequential sum of x^2)/256; weights w = qw*sqrtf(sigma2 + x^2)
(IQ1_M without an imatrix: x^2). Per sub-block (32 values for IQ1_S, 16 for IQ1_M) with
max|x| >= eps: the values are sorted ascending (glibc's qsort is a stable merge sort here), the
prefix sums of w*x and w in sorted order taken (IQ1_M: one pair per half-block), and every split
(i1 <= i2) of the sorted values into levels 0 / 1 / 2 with the shifted values x_p = (-1, 0, 1) +
0.125 or x_m = (-1, 0, 1) - 0.125 (IQ1_M: a shift per half, 4 combinations) is scored; the first
candidate reaching the best sumqx^2/sumq2 by C's sequential rule (`sumqx*sumqx > best*sumq2`,
best = (sumqx/sumq2)*sumqx) wins. The scan is exact but pruned: only candidates whose score is
within 1e-5 (relative) of the block's maximum can be the final winner, so only those are replayed
in order (all valid candidates for blocks whose numbers fall outside a safe float32 range).
Then groups of 8 off the grid take the neighbour of least sum (w*diff)*diff (first on ties),
the scale is refitted when a group moved, and the super-block scale is set (IQ1_S: d = max/15
stored as d*1.125; IQ1_M: refitted over the super-block with the 3-bit scales, stored *1.1125).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...errors import AbortError
from ..numeric import QK_K, blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int, seq_sum_t
from ..registry import register
from .grids_iq1 import Iq1Tables, tables
from .neighbours import best_neighbours
from .rows import quantize_rows

F32 = np.float32
EPS_IQ1_S = F32(1e-12)
EPS_IQ1_M = F32(1e-7)
DELTA = F32(0.125)
X_P = np.array([F32(-1) + DELTA, DELTA, F32(1) + DELTA], F32)
X_M = np.array([F32(-1) - DELTA, -DELTA, F32(1) - DELTA], F32)
XX = np.stack([X_P, X_M])  # row 0: x_p, row 1: x_m
_PRUNE = 1e-5
_CHUNK_BLOCKS = 1024

BLOCK_IQ1_S = np.dtype([("d", "<u2"), ("qs", "u1", (32,)), ("qh", "<u2", (8,))])
BLOCK_IQ1_M = np.dtype([("qs", "u1", (32,)), ("qh", "u1", (16,)), ("sc", "<u2", (4,))])
assert BLOCK_IQ1_S.itemsize == 50 and BLOCK_IQ1_M.itemsize == 56
_POW4 = (4 ** np.arange(8)).astype(np.int32)


def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(i1, i2) for i1 in 0..n, i2 in i1..n, in C's loop order."""
    i1, i2 = np.triu_indices(n + 1)
    return i1.astype(np.intp), i2.astype(np.intp)


# --- shared pieces --------------------------------------------------------------------------------

def replay_best(sqx: np.ndarray, sq2: np.ndarray, safe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's scan `if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { scale = sumqx/sumq2; best =
    scale*sumqx; win = c; }` over candidates c (axis 0) of (C, nb), best starting at -FLT_MAX
    -> (win (nb,) int, -1 if none; scale (nb,)). Replays in order only the candidates whose
    sumqx^2/sumq2 is within 1e-5 of the block's maximum (C's test rounds within ~3e-7 of the
    exact comparison, so no other candidate can be the last accepted one); for the blocks not
    marked `safe` (float32 products that could overflow or underflow) every valid candidate."""
    C, nb = sqx.shape
    valid = sq2 > 0
    s = sqx * sqx
    s /= sq2
    np.copyto(s, F32(-np.inf), where=~valid)
    smax = s.max(axis=0)
    near = s >= (smax * F32(1 - _PRUNE))[None, :]
    fb = ~(safe & np.isfinite(smax))
    if fb.any():
        near[:, fb] = valid[:, fb]
    ci, bi = np.nonzero(near)  # by candidate, then block
    o = np.argsort(bi, kind="stable")
    bi, ci = bi[o], ci[o]  # by block, then candidate (C's order)
    k = np.bincount(bi, minlength=nb)
    start = np.cumsum(k) - k
    rank = np.arange(bi.size) - start[bi]
    order = np.argsort(rank, kind="stable")
    bi, ci = bi[order], ci[order]
    counts = np.bincount(rank)
    win = np.full(nb, -1, np.int64)
    scale = np.zeros(nb, F32)
    best = np.full(nb, -np.finfo(F32).max, F32)
    a = 0
    for cnt in counts:
        b = bi[a:a + cnt]
        c = ci[a:a + cnt]
        a += cnt
        q = sqx[c, b]
        q2 = sq2[c, b]
        acc = (q * q) > (best[b] * q2)
        if not acc.all():
            b, c, q, q2 = b[acc], c[acc], q[acc], q2[acc]
        sc = q / q2
        scale[b] = sc
        best[b] = sc * q
        win[b] = c
    return win, scale


def safe_blocks(wx: np.ndarray, w: np.ndarray, xt: np.ndarray) -> np.ndarray:
    """Blocks (S, nb) whose candidate sums stay in float32's comfortable range: with T1 = sum|w*x|,
    T2 = sum w, every sumq2 >= T2/64, the best score >= 0.6*T1^2/T2 (the split at the signs), so a
    near-best candidate has sumqx^2 >= T1^2/107; all sums are <= 1.27*max(T1, T2)."""
    t1 = np.abs(wx).astype(np.float64).sum(axis=0)
    t2 = w.astype(np.float64).sum(axis=0)
    mx = np.abs(xt).max(axis=0)
    return (t1 > 1e-12) & (t1 < 1e14) & (t2 < 1e14) & (mx < 1e14)


def _codes(L: np.ndarray) -> np.ndarray:
    """Levels (S, nb) -> codes (S/8, nb): level i of a group at bits 2i."""
    S, nb = L.shape
    L3 = L.reshape(S // 8, 8, nb)
    u = L3[:, 0, :].astype(np.int32)
    for i in range(1, 8):
        u += L3[:, i, :].astype(np.int32) * _POW4[i]
    return u


def snap_groups(t: Iq1Tables, L: np.ndarray, xt: np.ndarray, w: np.ndarray, scale: np.ndarray,
                sel: np.ndarray, gshift: np.ndarray, set_levels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices (G, nb) of the groups of levels L (S, nb) (sub-blocks `sel`), off-grid groups
    replaced by their best neighbour (iq1_find_best_neighbour2); gshift (G, nb): 0 = x_p, 1 = x_m;
    set_levels: also write the neighbours' levels into L (ik's IQ1_M rescoring reads them).
    Returns (index, moved (nb,))."""
    S, nb = L.shape
    u = _codes(L)
    gi = t.kmap[u].astype(np.int64)
    off = (gi < 0) & sel[None, :]
    kk, bb = np.nonzero(off)
    if kk.size:
        x3 = xt.reshape(S // 8, 8, nb)
        w3 = w.reshape(S // 8, 8, nb)
        gi[kk, bb] = best_neighbours(t, u[kk, bb], x3[kk, :, bb], w3[kk, :, bb], scale[bb], XX,
                                     gshift[kk, bb], strict=True)
        if set_levels:
            L.reshape(S // 8, 8, nb)[kk, :, bb] = t.levels[gi[kk, bb]]
    gi = np.where(sel[None, :], gi, 0)
    return gi, off.any(axis=0)


def level_values(t: Iq1Tables, gi: np.ndarray, gshift: np.ndarray) -> np.ndarray:
    """xx[level] of every element (S, nb) for grid indices gi (G, nb) and shifts (G, nb)."""
    G, nb = gi.shape
    lv = t.levels[gi]  # (G, nb, 8)
    q = XX[gshift[:, :, None], lv]  # (G, nb, 8)
    return np.ascontiguousarray(q.transpose(0, 2, 1)).reshape(G * 8, nb)


def sorted_sums(xt: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable ascending order of each column (S, nb) and w*x, w in that order."""
    order = np.argsort(xt, axis=0, kind="stable")
    wx = np.take_along_axis(w * xt, order, axis=0)
    ws = np.take_along_axis(w, order, axis=0)
    return order, wx, ws


def prefix(a: np.ndarray) -> np.ndarray:
    """(S, nb) -> (S+1, nb): 0, a0, a0+a1, ... in order."""
    out = np.zeros((a.shape[0] + 1, a.shape[1]), F32)
    np.cumsum(a, axis=0, out=out[1:])
    return out


def half_prefixes(order: np.ndarray, wx: np.ndarray, ws: np.ndarray
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """IQ1_M's per-half prefix sums in sorted order: ([px0, px1], [pw0, pw1]) of w*x and w, half 0
    = the values of the first 8 positions (quantize_row_iq1_m_impl / iq1m_process_1block)."""
    first = order < 8
    px = [prefix(np.where(first, wx, F32(0))), prefix(np.where(first, F32(0), wx))]
    pw = [prefix(np.where(first, ws, F32(0))), prefix(np.where(first, F32(0), ws))]
    return px, pw


def levels_from_split(order: np.ndarray, i1: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """L (S, nb): the values at sorted positions < i1 get 0, < i2 get 1, the rest 2."""
    S, nb = order.shape
    j = np.arange(S)[:, None]
    ls = (j >= i1[None, :]).astype(np.int32) + (j >= i2[None, :])
    L = np.empty_like(ls)
    np.put_along_axis(L, order, ls, axis=0)
    return L


def split_levels(order: np.ndarray, win: np.ndarray, scale: np.ndarray, proc: np.ndarray, nk: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The winner win = pair*nk + k of the split scan (pairs(S) order, nk shift combinations) ->
    (L (S, nb), scale, k), a negative scale flipped (L -> 2-L, scale -> -scale, k -> nk-1-k);
    k = 0 outside `proc`."""
    I1, I2 = pairs(order.shape[0])
    w0 = np.where(proc, win, 0)
    p = w0 // nk
    k = (w0 % nk).astype(np.int64)
    L = levels_from_split(order, I1[p], I2[p])
    neg = proc & (scale < 0)
    L = np.where(neg[None, :], 2 - L, L)
    scale = np.where(neg, -scale, scale)
    k = np.where(neg, nk - 1 - k, k)
    return L, scale, np.where(proc, k, 0)


def refit(q: np.ndarray, w: np.ndarray, xt: np.ndarray, moved: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """scale = sumqx/sumq2 (sums of (w*q)*x and (w*q)*q in order) where moved and both > 0 (the
    sums run on the moved columns only: each column's sum is independent of the others)."""
    m = np.flatnonzero(moved)
    if m.size == 0:
        return scale
    qm = q[:, m]
    wq = w[:, m] * qm
    s = np.empty((2,) + qm.shape, F32)
    np.multiply(wq, xt[:, m], out=s[0])
    np.multiply(wq, qm, out=s[1])
    r = seq_sum_t(s, axis=1)
    upd = (r[0] > 0) & (r[1] > 0)
    scale = scale.copy()
    scale[m] = np.where(upd, r[0] / np.where(upd, r[1], F32(1)), scale[m])
    return scale


def superblock_fit_sums(w: np.ndarray, q: np.ndarray, xt: np.ndarray, nsb: int) -> np.ndarray:
    """The super-block scale refit's sums over 256 values in C's order: (sumqx, sumq2) (2, nsb) of
    (w*q)*x and (w*q)*q for sub-block arrays (S, nb), nb = nsb*256/S (IQ1_M; ik's IQ2_XS)."""
    S, nb = q.shape
    wq = w * q
    s = np.empty((2, S, nb), F32)
    np.multiply(wq, xt, out=s[0])
    np.multiply(wq, q, out=s[1])
    s = s.transpose(0, 2, 1).reshape(2, nsb, QK_K).transpose(0, 2, 1)  # (2, 256, nsb), C's order
    return seq_sum_t(np.ascontiguousarray(s), axis=1)


def prepare_iq1(xr: np.ndarray, qwt: np.ndarray | None, S: int, eps: np.float32
                ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows xr (r, n) -> (nsb, xt (S, nb), w, proc (max|x| >= eps), sorted order, sorted w*x, sorted
    w) of quantize_row_iq1_s_impl / _m_impl (sigma2 = 2*sum(x^2)/256 per super-block)."""
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    xs = blocks_t(xr.reshape(nsb, QK_K))
    sigma2 = (F32(2) * seq_sum_t(xs * xs, axis=0)) / F32(QK_K)
    xt = blocks_t(xr.reshape(-1, S))
    w = sq_weights(xt, qwt, np.repeat(sigma2, QK_K // S))
    proc = np.max(np.abs(xt), axis=0) >= eps
    order, wx, ws = sorted_sums(xt, w)
    return nsb, xt, w, proc, order, wx, ws


def sq_weights(xt: np.ndarray, qwt: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
    """w (S, nb) = qw*sqrtf(sigma2 + x*x), or x*x without an imatrix (IQ1_S / IQ1_M / IQ3_XXS)."""
    xx = xt * xt
    if qwt is None:
        return xx
    xx += sigma2
    np.sqrt(xx, out=xx)
    return qwt * xx


# --- IQ1_S ------------------------------------------------------------------------------------------

_P32 = pairs(32)


def iq1_s_scores(sx: np.ndarray, sw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_iq1_s_impl's sumqx, sumq2 of every split (i1, i2) (pairs(32) order) and shift
    (x_p, x_m) from the sorted prefix sums sx, sw (33, nb) -> (npair, 2, nb) each. The terms that
    depend on i1 alone or i2 alone are computed per index and gathered (same products)."""
    S = sx.shape[0] - 1
    I1, I2 = _P32
    B = sx[I2] - sx[I1]
    Bw = sw[I2] - sw[I1]
    cx, cw = sx[S] - sx, sw[S] - sw  # (S+1, nb): sumx[S] - sumx[i2]
    npair, nb = I1.size, sx.shape[1]
    sqx = np.empty((npair, 2, nb), F32)
    sq2 = np.empty((npair, 2, nb), F32)
    tmp = np.empty((npair, nb), F32)
    for s, xv in enumerate((X_P, X_M)):
        o = sqx[:, s]
        np.multiply(B, xv[1], out=tmp)
        np.add((sx * xv[0])[I1], tmp, out=o)
        o += (cx * xv[2])[I2]
        o = sq2[:, s]
        np.multiply(Bw, xv[1], out=tmp)
        tmp *= xv[1]
        np.add(((sw * xv[0]) * xv[0])[I1], tmp, out=o)
        o += ((cw * xv[2]) * xv[2])[I2]
    return sqx, sq2


def pack_iq1_s(gi: np.ndarray, scale: np.ndarray, shift: np.ndarray, nsb: int) -> np.ndarray:
    """The super-blocks of IQ1_S (both flavours): sub-block scales (nb,) (0 outside the processed
    sub-blocks), shifts (nb,) (1 = x_m) and grid indices (4, nb) -> BLOCK_IQ1_S (nsb,); d =
    max_scale/15 stored as d*1.125, 3-bit scales clamp(nearest_int(0.5f*(scale/d - 1)), 0, 7)."""
    sc = scale.reshape(nsb, 8)
    max_scale = sc.max(axis=1)
    nz = max_scale != 0
    d = np.where(nz, max_scale, F32(1)) / F32(15)
    dbits = np.where(nz, fp16_bits(d * F32(1.125)), np.uint16(0))
    idv = F32(1) / d
    a = idv[:, None] * sc
    a -= F32(1)
    a *= F32(0.5)
    lsc = np.clip(nearest_int(a), 0, 7).astype(np.uint16)
    lsc |= (shift.reshape(nsb, 8) == 1).astype(np.uint16) << np.uint16(3)
    lsc = np.where(nz[:, None], lsc, np.uint16(0))
    gib = gi.T.reshape(nsb, 8, 4)
    h = np.zeros((nsb, 8), np.uint16)
    for k in range(4):
        h |= ((gib[:, :, k] >> 8).astype(np.uint16) << np.uint16(3 * k))
    out = np.zeros(nsb, BLOCK_IQ1_S)
    out["d"] = dbits
    out["qs"] = (gib & 255).astype(np.uint8).reshape(nsb, 32)
    out["qh"] = h | (lsc << np.uint16(12))
    return out


ScanFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def iq1_s_chunk(t: Iq1Tables, xr: np.ndarray, qwt: np.ndarray | None, scan: ScanFn = replay_best,
                strict: bool = False) -> np.ndarray:
    """quantize_row_iq1_s_impl on rows xr (r, n) -> BLOCK_IQ1_S (r*n/256,). scan(sqx, sq2, safe)
    -> (winner, scale) is the split scan (mainline: replay_best, from best = -FLT_MAX; ik: from
    -FLT_MIN); strict (ik's iq1s_process_1block): a processed block without an accepted split
    raises (GGML_ASSERT there) instead of getting scale 0."""
    S = 32
    nsb, xt, w, proc, order, wx, ws = prepare_iq1(xr, qwt, S, EPS_IQ1_S)
    nb = xt.shape[1]
    sqx, sq2 = iq1_s_scores(prefix(wx), prefix(ws))
    sq2[:, :, ~proc] = 0
    win, scale = scan(sqx.reshape(-1, nb), sq2.reshape(-1, nb), safe_blocks(wx, ws, xt))
    if strict and (proc & (win < 0)).any():
        raise AbortError("IQ1_S: no split accepted (ik_llama.cpp aborts here: GGML_ASSERT(besti1 >= 0 ...))")
    proc &= win >= 0
    L, scale, shift = split_levels(order, win, scale, proc, 2)  # shift 0: x_p, 1: x_m
    gshift = np.broadcast_to(shift, (S // 8, nb))
    gi, moved = snap_groups(t, L, xt, w, scale, proc, gshift)
    q = level_values(t, gi, gshift)
    scale = refit(q, w, xt, moved & proc, scale)
    scale = np.where(proc, scale, F32(0))
    return pack_iq1_s(gi, scale, shift, nsb)


@ieee
def quantize_iq1_s(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq1_s: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*50)."""
    t = tables()
    return quantize_rows("IQ1_S", rows, imatrix, 32, BLOCK_IQ1_S, _CHUNK_BLOCKS,
                         lambda xr, qwt: iq1_s_chunk(t, xr, qwt), True)


# --- IQ1_M ------------------------------------------------------------------------------------------

_P16 = pairs(16)
_MASKS = np.array([0x00, 0x80, 0x08, 0x88], np.uint8)


def iq1_m_blocks(gi: np.ndarray, q: np.ndarray, shifts: np.ndarray, scale: np.ndarray,
                 w: np.ndarray, xt: np.ndarray, nsb: int, factor: float) -> np.ndarray:
    """The super-blocks of IQ1_M (both flavours): sub-block scales (nb,) (0 outside the processed
    sub-blocks), shift combinations (nb,), grid indices (2, nb) and their level values q (S, nb)
    -> BLOCK_IQ1_M (nsb,). 3-bit scales from d = max_scale/15, then d refitted over the
    super-block (sum (w*q')*x / sum (w*q')*q', q' = q*(2l+1), in C's order) and stored as
    fp16(d*factor) (mainline 1.1125f, ik 1.085f)."""
    nb = xt.shape[1]
    sc = scale.reshape(nsb, 16)
    max_scale = sc.max(axis=1)
    nz = max_scale != 0
    d = np.where(nz, max_scale, F32(1)) / F32(15)
    idv = F32(1) / d
    a = idv[:, None] * sc
    a -= F32(1)
    a *= F32(0.5)
    lsc = np.clip(nearest_int(a), 0, 7)  # (nsb, 16)
    mult = (2 * lsc + 1).astype(F32).reshape(nb)
    r = superblock_fit_sums(w, q * mult[None, :], xt, nsb)
    dd = np.where(r[1] > 0, r[0] / np.where(r[1] > 0, r[1], F32(1)), d)
    sbits = fp16_bits(dd * F32(factor))
    gib = gi.T.reshape(nsb, 16, 2)
    qh = ((gib[:, :, 0] >> 8) | ((gib[:, :, 1] >> 8) << 4)).astype(np.uint8)
    qh = np.where(nz[:, None], qh | _MASKS[shifts.reshape(nsb, 16)], qh)
    l4 = lsc.astype(np.uint16).reshape(nsb, 4, 4)
    scw = l4[:, :, 0] | (l4[:, :, 1] << np.uint16(3)) | (l4[:, :, 2] << np.uint16(6)) | (l4[:, :, 3] << np.uint16(9))
    scw |= ((sbits[:, None] >> (np.uint16(4) * np.arange(4, dtype=np.uint16))) & np.uint16(15)) << np.uint16(12)
    scw = np.where(nz[:, None], scw, np.uint16(0))
    out = np.zeros(nsb, BLOCK_IQ1_M)
    out["qs"] = (gib & 255).astype(np.uint8).reshape(nsb, 32)
    out["qh"] = qh
    out["sc"] = scw
    return out


def _iq1_m_chunk(t: Iq1Tables, xr: np.ndarray, qwt: np.ndarray | None) -> np.ndarray:
    S = 16
    nsb, xt, w, proc, order, wx, ws = prepare_iq1(xr, qwt, S, EPS_IQ1_M)
    nb = xt.shape[1]
    px, pw = half_prefixes(order, wx, ws)
    I1, I2 = _P16
    p2, m2 = X_P[2], X_M[2]
    cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1]
    cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2]
    cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1]
    cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2]
    qx = {}
    q2 = {}
    for h in range(2):
        txs, tws = px[h][S], pw[h][S]
        sxh = px[h][I1] + px[h][I2]
        qx[h, 0] = (txs * p2) - sxh
        qx[h, 1] = (txs * m2) - sxh
        a1, a2 = pw[h][I1], pw[h][I2]
        q2[h, 0] = (((tws * p2) * p2) + (a1 * cp1)) + (a2 * cp2)
        q2[h, 1] = (((tws * m2) * m2) + (a1 * cm1)) + (a2 * cm2)
    npair = I1.size
    sqx = np.empty((npair, 4, nb), F32)
    sq2 = np.empty((npair, 4, nb), F32)
    for k, (s0, s1) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        sqx[:, k] = qx[0, s0] + qx[1, s1]
        sq2[:, k] = q2[0, s0] + q2[1, s1]
    sq2[:, :, ~proc] = 0
    win, scale = replay_best(sqx.reshape(4 * npair, nb), sq2.reshape(4 * npair, nb), safe_blocks(wx, ws, xt))
    proc &= win >= 0
    L, scale, bk = split_levels(order, win, scale, proc, 4)
    gshift = np.stack([bk >> 1, bk & 1])  # group 0: x_m if best_k >= 2; group 1: x_m if best_k odd
    gi, moved = snap_groups(t, L, xt, w, scale, proc, gshift)
    q = level_values(t, gi, gshift)
    scale = refit(q, w, xt, moved & proc, scale)
    scale = np.where(proc, scale, F32(0))
    return iq1_m_blocks(gi, q, bk, scale, w, xt, nsb, 1.1125)


@ieee
def quantize_iq1_m(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq1_m: rows float32 (nrows, n), imatrix (n,) or None -> uint8 (nrows, n/256*56)."""
    t = tables()
    return quantize_rows("IQ1_M", rows, imatrix, 16, BLOCK_IQ1_M, 2 * _CHUNK_BLOCKS,
                         lambda xr, qwt: _iq1_m_chunk(t, xr, qwt), False)


# --- dequantization ------------------------------------------------------------------------------

@ieee
def dequantize_iq1_s(data: np.ndarray, n: int) -> np.ndarray:
    b = np.ascontiguousarray(data).view(BLOCK_IQ1_S).reshape(-1)
    t = tables()
    d = fp16_bits_to_fp32(b["d"])
    qh = b["qh"].astype(np.int32)  # (nblk, 8)
    dl = d[:, None] * (2 * ((qh >> 12) & 7) + 1).astype(F32)
    delta = np.where(qh & 0x8000, -DELTA, DELTA).astype(F32)
    qs = b["qs"].reshape(-1, 8, 4).astype(np.int32)
    gidx = qs | (((qh[:, :, None] >> (3 * np.arange(4))) & 7) << 8)
    y = dl[:, :, None, None] * (t.deq_grid[gidx] + delta[:, :, None, None])
    return y.reshape(data.shape[0], n)


@ieee
def dequantize_iq1_m(data: np.ndarray, n: int) -> np.ndarray:
    b = np.ascontiguousarray(data).view(BLOCK_IQ1_M).reshape(-1)
    t = tables()
    sc = b["sc"].astype(np.int32)  # (nblk, 4)
    u = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0xF0) | ((sc[:, 2] >> 4) & 0xF00) | (sc[:, 3] & 0xF000)
    d = fp16_bits_to_fp32(u.astype(np.uint16))
    ib = np.arange(8)
    s = sc[:, ib // 2]  # (nblk, 8)
    sh = (6 * (ib % 2))[None, :]
    dl1 = d[:, None] * (2 * ((s >> sh) & 7) + 1).astype(F32)
    dl2 = d[:, None] * (2 * ((s >> (sh + 3)) & 7) + 1).astype(F32)
    dl = np.stack([dl1, dl2], axis=2)  # (nblk, 8, 2): halves of 16
    qs = b["qs"].reshape(-1, 8, 2, 2).astype(np.int32)  # (blk, ib, half, group)
    qh = b["qh"].reshape(-1, 8, 2).astype(np.int32)  # (blk, ib, half): groups at bits 0-3 / 4-7
    hi = np.stack([qh & 0xF, qh >> 4], axis=3)  # (blk, ib, half, group)
    gidx = qs | ((hi & 7) << 8)
    delta = np.where(hi & 8, -DELTA, DELTA).astype(F32)
    y = dl[:, :, :, None, None] * (t.deq_grid[gidx] + delta[..., None])
    return y.reshape(data.shape[0], n)


register("IQ1_S", quantize_iq1_s, dequantize_iq1_s, mainline=(True,), ik=())
register("IQ1_M", quantize_iq1_m, dequantize_iq1_m, ik=())
