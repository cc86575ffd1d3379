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

import numpy as np

from ..numeric import QK_K, blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int, seq_sum_t
from ..registry import register
from .grids_iq1 import Iq1Tables, tables
from .neighbours import best_neighbours

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


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
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


def _snap(t: Iq1Tables, L: np.ndarray, xt: np.ndarray, w: np.ndarray, scale: np.ndarray,
          sel: np.ndarray, gshift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices (G, nb) of the groups of levels L (S, nb) (sub-blocks `sel`), off-grid groups
    replaced by their best neighbour; gshift (G, nb): 0 = x_p, 1 = x_m. Returns (index, moved (nb,))."""
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
    gi = np.where(sel[None, :], gi, 0)
    return gi, off.any(axis=0)


def _level_values(t: Iq1Tables, gi: np.ndarray, gshift: np.ndarray) -> np.ndarray:
    """xx[level] of every element (S, nb) for grid indices gi (G, nb) and shifts (G, nb)."""
    G, nb = gi.shape
    lv = t.levels[gi]  # (G, nb, 8)
    q = XX[gshift[:, :, None], lv]  # (G, nb, 8)
    return np.ascontiguousarray(q.transpose(0, 2, 1)).reshape(G * 8, nb)


def _sorted_sums(xt: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable ascending order of each column (S, nb) and w*x, w in that order."""
    order = np.argsort(xt, axis=0, kind="stable")
    wx = np.take_along_axis(w * xt, order, axis=0)
    ws = np.take_along_axis(w, order, axis=0)
    return order, wx, ws


def _prefix(a: np.ndarray) -> np.ndarray:
    """(S, nb) -> (S+1, nb): 0, a0, a0+a1, ... in order."""
    out = np.zeros((a.shape[0] + 1, a.shape[1]), F32)
    np.cumsum(a, axis=0, out=out[1:])
    return out


def _levels_from_split(order: np.ndarray, i1: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """L (S, nb): the values at sorted positions < i1 get 0, < i2 get 1, the rest 2."""
    S, nb = order.shape
    j = np.arange(S)[:, None]
    ls = (j >= i1[None, :]).astype(np.int32) + (j >= i2[None, :])
    L = np.empty_like(ls)
    np.put_along_axis(L, order, ls, axis=0)
    return L


def _refit(q: np.ndarray, w: np.ndarray, xt: np.ndarray, moved: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """scale = sumqx/sumq2 (sums of (w*q)*x and (w*q)*q in order) where moved and both > 0."""
    wq = w * q
    s = np.empty((2,) + q.shape, F32)
    np.multiply(wq, xt, out=s[0])
    np.multiply(wq, q, out=s[1])
    r = seq_sum_t(s, axis=1)
    upd = moved & (r[0] > 0) & (r[1] > 0)
    return np.where(upd, r[0] / np.where(upd, r[1], F32(1)), scale)


def _weights(xt: np.ndarray, qwt: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
    xx = xt * xt
    if qwt is None:
        return xx
    xx += sigma2
    np.sqrt(xx, out=xx)
    return qwt * xx


# --- IQ1_S ------------------------------------------------------------------------------------------

_P32 = _pairs(32)


def _iq1_s_chunk(t: Iq1Tables, xr: np.ndarray, qwt: np.ndarray) -> np.ndarray:
    S = 32
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    xs = blocks_t(xr.reshape(nsb, QK_K))
    sigma2 = (F32(2) * seq_sum_t(xs * xs, axis=0)) / F32(QK_K)
    xt = blocks_t(xr.reshape(-1, S))
    nb = xt.shape[1]
    w = _weights(xt, qwt, np.repeat(sigma2, 8))
    proc = np.max(np.abs(xt), axis=0) >= EPS_IQ1_S
    order, wx, ws = _sorted_sums(xt, w)
    sx, sw = _prefix(wx), _prefix(ws)
    I1, I2 = _P32
    # terms that depend on i1 alone or i2 alone are computed per index and gathered
    B = sx[I2] - sx[I1]
    Bw = sw[I2] - sw[I1]
    cx, cw = sx[S] - sx, sw[S] - sw  # (S+1, nb): sumx[S] - sumx[i2]
    npair = I1.size
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
    sq2[:, :, ~proc] = 0
    win, scale = replay_best(sqx.reshape(2 * npair, nb), sq2.reshape(2 * npair, nb), safe_blocks(wx, ws, xt))
    proc &= win >= 0
    p = np.where(proc, win // 2, 0)
    shift = (win % 2).astype(np.int64)  # 0: +1 (x_p), 1: -1 (x_m)
    L = _levels_from_split(order, I1[p], I2[p])
    neg = proc & (scale < 0)
    L = np.where(neg[None, :], 2 - L, L)
    scale = np.where(neg, -scale, scale)
    shift = np.where(neg, 1 - shift, shift)
    gshift = np.broadcast_to(shift, (S // 8, nb))
    gi, moved = _snap(t, L, xt, w, scale, proc, gshift)
    q = _level_values(t, gi, gshift)
    scale = _refit(q, w, xt, moved & proc, scale)
    scale = np.where(proc, scale, F32(0))
    shift = np.where(proc, shift, 0)
    # super-blocks
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


@ieee
def quantize_iq1_s(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq1_s: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*50)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"IQ1_S: row length {n} is not a multiple of {QK_K}")
    if imatrix is None:
        raise ValueError("IQ1_S requires an importance matrix")
    t = tables()
    nbr = n // 32
    qw_row = blocks_t(np.asarray(imatrix, F32).reshape(nbr, 32))
    rpc = max(1, _CHUNK_BLOCKS // nbr)
    out = np.empty((nrows, (n // QK_K) * BLOCK_IQ1_S.itemsize), np.uint8)
    for r0 in range(0, nrows, rpc):
        r1 = min(nrows, r0 + rpc)
        o = _iq1_s_chunk(t, rows[r0:r1], np.tile(qw_row, (1, r1 - r0)))
        out[r0:r1] = o.view(np.uint8).reshape(r1 - r0, -1)
    return out


# --- IQ1_M ------------------------------------------------------------------------------------------

_P16 = _pairs(16)
_MASKS = np.array([0x00, 0x80, 0x08, 0x88], np.uint8)


def _iq1_m_chunk(t: Iq1Tables, xr: np.ndarray, qwt: np.ndarray | None) -> np.ndarray:
    S = 16
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    xs = blocks_t(xr.reshape(nsb, QK_K))
    sigma2 = (F32(2) * seq_sum_t(xs * xs, axis=0)) / F32(QK_K)
    xt = blocks_t(xr.reshape(-1, S))
    nb = xt.shape[1]
    w = _weights(xt, qwt, np.repeat(sigma2, 16))
    proc = np.max(np.abs(xt), axis=0) >= EPS_IQ1_M
    order, wx, ws = _sorted_sums(xt, w)
    first = order < 8
    px = [_prefix(np.where(first, wx, F32(0))), _prefix(np.where(first, F32(0), wx))]
    pw = [_prefix(np.where(first, ws, F32(0))), _prefix(np.where(first, F32(0), ws))]
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
    p = np.where(proc, win // 4, 0)
    bk = (win % 4).astype(np.int64)
    L = _levels_from_split(order, I1[p], I2[p])
    neg = proc & (scale < 0)
    L = np.where(neg[None, :], 2 - L, L)
    scale = np.where(neg, -scale, scale)
    bk = np.where(neg, 3 - bk, bk)
    bk = np.where(proc, bk, 0)
    gshift = np.stack([bk >> 1, bk & 1])  # group 0: x_m if best_k >= 2; group 1: x_m if best_k odd
    gi, moved = _snap(t, L, xt, w, scale, proc, gshift)
    q = _level_values(t, gi, gshift)
    scale = _refit(q, w, xt, moved & proc, scale)
    scale = np.where(proc, scale, F32(0))
    # super-blocks
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
    qf = q * mult[None, :]
    wq = w * qf
    s = np.empty((2, S, nb), F32)
    np.multiply(wq, xt, out=s[0])
    np.multiply(wq, qf, out=s[1])
    s = s.transpose(0, 2, 1).reshape(2, nsb, QK_K).transpose(0, 2, 1)  # (2, 256, nsb), C's order
    r = seq_sum_t(np.ascontiguousarray(s), axis=1)
    dd = np.where(r[1] > 0, r[0] / np.where(r[1] > 0, r[1], F32(1)), d)
    sbits = fp16_bits(dd * F32(1.1125))
    gib = gi.T.reshape(nsb, 16, 2)
    qh = ((gib[:, :, 0] >> 8) | ((gib[:, :, 1] >> 8) << 4)).astype(np.uint8)
    qh = np.where(nz[:, None], qh | _MASKS[bk.reshape(nsb, 16)], qh)
    l4 = lsc.astype(np.uint16).reshape(nsb, 4, 4)
    scw = l4[:, :, 0] | (l4[:, :, 1] << np.uint16(3)) | (l4[:, :, 2] << np.uint16(6)) | (l4[:, :, 3] << np.uint16(9))
    scw |= ((sbits[:, None] >> (np.uint16(4) * np.arange(4, dtype=np.uint16))) & np.uint16(15)) << np.uint16(12)
    scw = np.where(nz[:, None], scw, np.uint16(0))
    out = np.zeros(nsb, BLOCK_IQ1_M)
    out["qs"] = (gib & 255).astype(np.uint8).reshape(nsb, 32)
    out["qh"] = qh
    out["sc"] = scw
    return out


@ieee
def quantize_iq1_m(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq1_m: rows float32 (nrows, n), imatrix (n,) or None -> uint8 (nrows, n/256*56)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"IQ1_M: row length {n} is not a multiple of {QK_K}")
    t = tables()
    nbr = n // 16
    qw_row = None if imatrix is None else blocks_t(np.asarray(imatrix, F32).reshape(nbr, 16))
    rpc = max(1, 2 * _CHUNK_BLOCKS // nbr)
    out = np.empty((nrows, (n // QK_K) * BLOCK_IQ1_M.itemsize), np.uint8)
    for r0 in range(0, nrows, rpc):
        r1 = min(nrows, r0 + rpc)
        qwt = None if qw_row is None else np.tile(qw_row, (1, r1 - r0))
        o = _iq1_m_chunk(t, rows[r0:r1], qwt)
        out[r0:r1] = o.view(np.uint8).reshape(r1 - r0, -1)
    return out


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
