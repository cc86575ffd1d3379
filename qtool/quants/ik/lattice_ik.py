"""ik_llama.cpp's own quantization of the mainline lattice types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS,
IQ2_S and IQ3_XXS: byte-exact ports of ik's ggml-quants.c (ik's ggml_quantize_chunk calls
quantize_iq1_s / _iq1_m / _iq2_xxs / _iq2_xs / _iq2_s / _iq3_xxs there, nothing in iqk_quantize.cpp).
IQ3_S is mainline's algorithm in ik (the one change, L's memset, is never read: a block without an
accepted candidate re-rounds every group), so mainline's kernel is registered for it. Grids,
neighbour lists (ik's serial iq2xs_init_impl / iq3xs_init_impl build the same lists as mainline's
parallel ones), the neighbour searches, the sign handling and the dequantizers are mainline's
(qtool.quants.lattice).

What differs from mainline, by type (C's stack arrays persist over the sub-blocks and rows of one
ggml_quantize_chunk call; here over the rows of one call; where C reads uninitialised memory at
the start of a call, the port starts from zeros):
- IQ1_S: iq1s_process_1block starts its split scan from best = -FLT_MIN (mainline -FLT_MAX) and
  aborts (GGML_ASSERT) where no split is accepted (mainline: scale 0): raised here.
- IQ2_XXS: no eff_max <= 0 skip; make_qp_quants returns sumlx/suml2 unguarded (0/0 = NaN: every
  level 0, the search goes on); a block with no accepted candidate and no refinement, or a NaN
  scale, aborts in C: raised here.
- IQ2_S: L is not cleared per sub-block, so a sub-block where no candidate is accepted (all
  weights zero, or sums that underflow) encodes the last accepted sub-block's levels.
- IQ3_XXS: neither L nor is_on_grid is reset per sub-block: such a sub-block keeps both and
  re-rounds the groups the stale flags mark off the grid.
- IQ2_XS and IQ1_M: new algorithms, below.

IQ2_XS (ik), per sub-block of 16 past the eps test, after mainline's weights and sign fix:
- the scale comes from an exhaustive scan first: xval sorted ascending (glibc's stable qsort),
  prefix sums of w*xval and w, every split (i1 <= i2) into levels 1 / 3 / 5 scored with C's
  `sumq2 > 0 && sumqx*sumqx > best*sumq2` from best = 0; eff_max = 5*scale;
- then mainline's grid search over id = (5 + is*0.1f)/eff_max, is = -7..7 (keeping each group's
  grid index), then up to 3 refinements at id = 1/scale that stop when no group's grid index
  changes or the new levels do not beat `best`;
- a sub-block where nothing was accepted keeps C's previous `L` (a stack array of the row
  function: the previous sub-block's levels, zeros after an eps sub-block; the previous row's
  last levels at a row start; zeros at the start of a call, where C reads uninitialised memory);
- the super-block scale is refitted: d = 1.05f*sumqx/sumq2 over the 256 dequantized values
  (0.125f*(2l+1)*grid*sign against x) when sumq2 > 0.

IQ1_M (ik): sigma2 = 1.5f*sum(x^2)/32 per 32 values; a sub-block of 16 whose weights times |x|
(i = 1..15) sum to 0 is searched with w = x^2; iq1m_process_1block scores every split and shift
combination with its own (uncollapsed) sums from best = 0 and aborts when none is accepted; when
a group moved to a neighbour, the four shift combinations are rescored on the new levels (best
from 0, `sumqx > 0` required) and may change the scale and the shift; eps sub-blocks keep C's
`shifts[ib]` of the last super-block that set it (0 at the start of a call, uninitialised in C);
the super-block refit uses the original weights and stores d*1.085f.
"""

from __future__ import annotations

import numpy as np

from ..lattice.grids_d4 import Iq3Tables, iq3_tables
from ..lattice.grids_e8 import Iq2Tables
from ..lattice.grids_e8 import tables as e8_tables
from ..lattice.grids_iq1 import Iq1Tables
from ..lattice.grids_iq1 import tables as iq1_tables
from ..lattice.iq1 import (
    BLOCK_IQ1_M,
    BLOCK_IQ1_S,
    EPS_IQ1_M,
    EPS_IQ1_S,
    X_M,
    X_P,
    XX,
    dequantize_iq1_m,
    dequantize_iq1_s,
    replay_best,
    safe_blocks,
)
from ..lattice.iq2 import (
    BLOCK_IQ2_S,
    BLOCK_IQ2_XS,
    BLOCK_IQ2_XXS,
    GROUP_MAX_EPS_IQ2_S,
    KSIGNS_IQ2XS,
    dequantize_iq2_s,
    dequantize_iq2_xs,
    dequantize_iq2_xxs,
    group_codes,
    levels_for,
    make_qp_quants_t,
    sign_fix,
    snap_to_grid,
    sums_q,
    super_scales,
    weights,
)
from ..lattice.iq3 import BLOCK_IQ3_XXS, EPS_IQ3_XXS, best_neighbour, dequantize_iq3_xxs
from ..lattice.neighbours import best_neighbours
from ..numeric import GROUP_MAX_EPS, QK_K, blocks_t, fp16_bits, ieee, nearest_int, seq_sum_t
from ..registry import register

F32 = np.float32
_CHUNK_SUBBLOCKS = 4096


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(i1, i2) for i1 in 0..n, i2 in i1..n, in C's loop order."""
    i1, i2 = np.triu_indices(n + 1)
    return i1.astype(np.intp), i2.astype(np.intp)


_P16 = _pairs(16)


def scan_exact(sqx: np.ndarray, sq2: np.ndarray, best0: float) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { scale = sumqx/sumq2; best = scale*sumqx; }`
    over all candidates (axis 0 of (C, m)) in order from best = best0 -> (win (m,), -1 if none;
    scale (m,), 0 if none)."""
    C, m = sqx.shape
    best = np.full(m, best0, F32)
    scale = np.zeros(m, F32)
    win = np.full(m, -1, np.int64)
    for c in range(C):
        q, q2 = sqx[c], sq2[c]
        acc = (q2 > 0) & (q * q > best * q2)
        if acc.any():
            sc = q / np.where(acc, q2, F32(1))
            scale = np.where(acc, sc, scale)
            best = np.where(acc, sc * q, best)
            win = np.where(acc, c, win)
    return win, scale


def scan_best0(sqx: np.ndarray, sq2: np.ndarray, safe: np.ndarray, best0: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """The scan of scan_exact from best = best0 <= 0 (ik: 0 or -FLT_MIN), pruned: mainline's
    replay_best (from -FLT_MAX) gives the same winner wherever the winner's score is positive (then
    every near-best candidate it replays has sumqx^2 > 0 >= best0*sumq2, so the start does not
    matter); the other blocks and the unsafe ones are scanned in full."""
    win, scale = replay_best(sqx, sq2, safe)
    nb = sqx.shape[1]
    wq = sqx[np.maximum(win, 0), np.arange(nb)]
    redo = (win >= 0) & (~safe | ~(wq * wq > 0))  # win < 0: no valid candidate, none in C either
    if redo.any():
        ix = np.flatnonzero(redo)
        w2, s2 = scan_exact(np.ascontiguousarray(sqx[:, ix]), np.ascontiguousarray(sq2[:, ix]), best0)
        win[ix] = w2
        scale[ix] = s2
    return win, scale


def sorted_prefix(v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable ascending order of each column of v (S, nb) (glibc's merge sort in qsort) and the
    prefix sums (S+1, nb) of w*v and w in that order (sumx[j+1] = sumx[j] + w[i]*v[i])."""
    order = np.argsort(v, axis=0, kind="stable")
    wv = np.take_along_axis(w * v, order, axis=0)
    ws = np.take_along_axis(w, order, axis=0)
    sx = np.zeros((v.shape[0] + 1, v.shape[1]), F32)
    sw = np.zeros_like(sx)
    np.cumsum(wv, axis=0, out=sx[1:])
    np.cumsum(ws, axis=0, out=sw[1:])
    return order, sx, sw


def carry_forward(values: np.ndarray, defined: np.ndarray, init: np.ndarray) -> np.ndarray:
    """values (..., n) along the last axis: where not `defined`, the last defined value before it
    (init (...,) if none) -> C's stale array contents."""
    n = values.shape[-1]
    idx = np.where(defined, np.arange(n), -1)
    np.maximum.accumulate(idx, axis=-1, out=idx)
    got = np.take_along_axis(values, np.maximum(idx, 0), axis=-1)
    return np.where(idx >= 0, got, init[..., None])


# --- IQ2_XS -----------------------------------------------------------------------------------------

def _grid_index(t: Iq2Tables, L: np.ndarray) -> np.ndarray:
    """Grid index (G, nb) of the groups of levels L (S, nb) (negative where off the grid)."""
    S, nb = L.shape
    return t.kmap[group_codes(L.reshape(S // 8, 8, nb))]


def _iq2_xs_search(t: Iq2Tables, xval: np.ndarray, w: np.ndarray, waux: np.ndarray,
                   proc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ik's sub-block search (S=16, nb) -> (scale (nb,), L (S, nb), L set (nb,))."""
    S, nb = xval.shape
    wx = w * xval
    # the exhaustive split scan (levels 1 / 3 / 5 at the sorted positions)
    _, sx, sw = sorted_prefix(xval, w)
    I1, I2 = _P16
    a, b = sx[I1], sx[I2]
    sqx = (a * F32(1) + (b - a) * F32(3)) + (sx[S] - b) * F32(5)
    a, b = sw[I1], sw[I2]
    sq2 = (a * F32(1) + (b - a) * F32(9)) + (sw[S] - b) * F32(25)
    sq2[:, ~proc] = 0
    _, scale = scan_best0(sqx, sq2, safe_blocks(wx, w, xval))
    eff = scale * F32(5)
    # the grid search
    best = np.zeros(nb, F32)
    L = np.zeros((S, nb), np.int32)
    lset = np.zeros(nb, bool)
    index = np.zeros((S // 8, nb), np.int32)
    for is_ in range(-7, 8):
        idv = (F32(5) + F32(is_) * F32(0.1)) / eff
        La = levels_for(xval, idv)
        snap_to_grid(t, La, xval, waux, F32(1) / idv)
        sumqx, sumq2 = sums_q(wx, w, La)
        upd = proc & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if upd.any():
            sc = sumqx / np.where(upd, sumq2, F32(1))
            scale = np.where(upd, sc, scale)
            best = np.where(upd, sc * sumqx, best)
            L = np.where(upd, La, L)
            index = np.where(upd, _grid_index(t, La), index)
            lset |= upd
    # up to 3 refinements at the current scale, on the blocks still improving
    act = np.flatnonzero(proc & (scale != 0))
    for _ in range(3):
        if act.size == 0:
            break
        sc = scale[act]
        xa, wa, ua = xval[:, act], w[:, act], waux[:, act]
        La = levels_for(xa, F32(1) / sc)
        snap_to_grid(t, La, xa, ua, sc)
        gi = _grid_index(t, La)
        changed = (gi != index[:, act]).any(axis=0)
        sumqx, sumq2 = sums_q(wx[:, act], wa, La)
        acc = changed & (sumq2 > 0) & (sumqx * sumqx > best[act] * sumq2)
        ix = act[acc]
        if ix.size:
            s_new = sumqx[acc] / sumq2[acc]
            scale[ix] = s_new
            best[ix] = s_new * sumqx[acc]
            L[:, ix] = La[:, acc]
            index[:, ix] = gi[:, acc]
            lset[ix] = True
        act = ix
    return scale, L, lset


def _iq2_xs_chunk(t: Iq2Tables, xr: np.ndarray, qwt: np.ndarray | None,
                  state: np.ndarray) -> np.ndarray:
    """Rows xr (r, n) -> blocks (r*n/256,) of BLOCK_IQ2_XS; state (16,) int32: C's L carried in."""
    S = 16
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    xs = blocks_t(xr.reshape(nsb, QK_K))
    sigma2 = seq_sum_t(xs * xs, axis=0) / F32(QK_K)
    xt = blocks_t(xr.reshape(-1, S))
    nb = xt.shape[1]
    w = weights(xt, qwt, np.repeat(sigma2, 16))
    waux = np.sqrt(w)
    xval, signs = sign_fix(xt, w, True)
    proc = np.max(xval, axis=0) >= GROUP_MAX_EPS
    scale, L, lset = _iq2_xs_search(t, xval, w, waux, proc)
    # C's L where nothing was accepted: the last levels set before (zeros after an eps sub-block)
    defined = lset | ~proc
    L = np.where(proc[None, :], L, 0)
    if not defined.all():
        L = carry_forward(L, defined[None, :], state)
    state[:] = L[:, -1]
    neg = proc & (scale < 0)
    scale = np.where(neg, -scale, scale)
    if neg.any():
        signs[:, neg] = ~signs[:, neg] & np.uint8(127)
    if (np.isnan(scale) & proc).any():
        raise RuntimeError("IQ2_XS: a NaN sub-block scale (ik_llama.cpp aborts here: GGML_ASSERT(scale >= 0))")
    gi = _grid_index(t, L)
    if (gi[:, proc] < 0).any():
        raise RuntimeError("IQ2_XS: a point off the grid after the search (ik_llama.cpp aborts here)")
    gi = np.where(proc, gi, 0).astype(np.uint32)
    signs = np.where(proc, signs, np.uint8(0))
    scale = np.where(proc, scale, F32(0))
    dbits, ls, zero = super_scales(scale, nsb, 16, None)
    q2 = (gi | (signs.astype(np.uint32) << np.uint32(9)))  # (2, nb)
    # super-block refit: q = 0.125f*(2l+1)*grid[j]*sign against x, in C's order
    lf = (2 * ls.reshape(nb).astype(np.int32) + 1).astype(F32)
    q = (F32(0.125) * lf)[None, None, :] * t.deq_grid[gi].transpose(0, 2, 1)  # (2, 8, nb)
    sb = KSIGNS_IQ2XS[signs]
    neg_j = ((sb[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1).astype(bool)
    q = np.where(neg_j, -q, q).reshape(S, nb)
    wq = w * q
    s = np.empty((2, S, nb), F32)
    np.multiply(wq, xt, out=s[0])
    np.multiply(wq, q, out=s[1])
    s = np.ascontiguousarray(s.transpose(0, 2, 1).reshape(2, nsb, QK_K).transpose(0, 2, 1))
    r = seq_sum_t(s, axis=1)
    pos = r[1] > 0
    dref = fp16_bits((F32(1.05) * r[0]) / np.where(pos, r[1], F32(1)))
    dbits = np.where(pos, dref, dbits)
    out = np.zeros(nsb, BLOCK_IQ2_XS)
    qs = q2.T.reshape(nsb, 32).astype(np.uint16)
    qs[zero] = 0
    out["qs"] = qs
    out["d"] = np.where(zero, np.uint16(0), dbits)
    out["scales"] = ls[:, 0::2] | (ls[:, 1::2] << np.uint8(4))
    return out


@ieee
def quantize_iq2_xs_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq2_xs: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*74)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"IQ2_XS: row length {n} is not a multiple of {QK_K}")
    if imatrix is None:
        raise ValueError("IQ2_XS requires an importance matrix")
    t = e8_tables("IQ2_XS")
    nbr = n // 16
    qw_row = blocks_t(np.asarray(imatrix, F32).reshape(nbr, 16))
    rpc = max(1, _CHUNK_SUBBLOCKS // nbr)
    out = np.empty((nrows, (n // QK_K) * BLOCK_IQ2_XS.itemsize), np.uint8)
    state = np.zeros(16, np.int32)
    for r0 in range(0, nrows, rpc):
        r1 = min(nrows, r0 + rpc)
        o = _iq2_xs_chunk(t, rows[r0:r1], np.tile(qw_row, (1, r1 - r0)), state)
        out[r0:r1] = o.view(np.uint8).reshape(r1 - r0, -1)
    return out


# --- IQ1_S ------------------------------------------------------------------------------------------

_P32 = _pairs(32)
_FLT_MIN = float(np.finfo(F32).tiny)


def _iq1_s_chunk(t: Iq1Tables, xr: np.ndarray, qwt: np.ndarray) -> np.ndarray:
    """ik's quantize_row_iq1_s_impl with iq1s_process_1block on rows xr (r, n): mainline's
    algorithm except that the split scan starts from best = -FLT_MIN (not -FLT_MAX) and a block
    where no split is accepted aborts (GGML_ASSERT) instead of getting scale 0."""
    S = 32
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    xs = blocks_t(xr.reshape(nsb, QK_K))
    sigma2 = (F32(2) * seq_sum_t(xs * xs, axis=0)) / F32(QK_K)
    xt = blocks_t(xr.reshape(-1, S))
    nb = xt.shape[1]
    w = xt * xt
    w += np.repeat(sigma2, 8)[None, :]
    np.sqrt(w, out=w)
    w = qwt * w
    proc = np.max(np.abs(xt), axis=0) >= EPS_IQ1_S
    order, sx, sw = sorted_prefix(xt, w)
    I1, I2 = _P32
    B = sx[I2] - sx[I1]
    Bw = sw[I2] - sw[I1]
    cx, cw = sx[S] - sx, sw[S] - sw
    npair = I1.size
    sqx = np.empty((npair, 2, nb), F32)
    sq2 = np.empty((npair, 2, nb), F32)
    for sh, xv in enumerate((X_P, X_M)):
        np.add((sx * xv[0])[I1], B * xv[1], out=sqx[:, sh])
        sqx[:, sh] += (cx * xv[2])[I2]
        np.add(((sw * xv[0]) * xv[0])[I1], (Bw * xv[1]) * xv[1], out=sq2[:, sh])
        sq2[:, sh] += ((cw * xv[2]) * xv[2])[I2]
    sq2[:, :, ~proc] = 0
    wv = np.take_along_axis(w * xt, order, axis=0)
    win, scale = scan_best0(sqx.reshape(2 * npair, nb), sq2.reshape(2 * npair, nb),
                            safe_blocks(wv, np.take_along_axis(w, order, axis=0), xt), -_FLT_MIN)
    if (proc & (win < 0)).any():
        raise RuntimeError("IQ1_S: no split accepted (ik_llama.cpp aborts here: GGML_ASSERT(besti1 >= 0 ...))")
    win = np.where(proc, win, 0)
    p = win // 2
    shift = (win % 2).astype(np.int64)  # 0: x_p, 1: x_m
    j = np.arange(S)[:, None]
    lsort = (j >= I1[p][None, :]).astype(np.int32) + (j >= I2[p][None, :])
    L = np.empty_like(lsort)
    np.put_along_axis(L, order, lsort, axis=0)
    neg = proc & (scale < 0)
    L = np.where(neg[None, :], 2 - L, L)
    scale = np.where(neg, -scale, scale)
    shift = np.where(neg, 1 - shift, shift)
    shift = np.where(proc, shift, 0)
    gshift = np.broadcast_to(shift, (S // 8, nb))
    L3 = L.reshape(S // 8, 8, nb)
    u = group_codes(L3)
    gi = t.kmap[u].astype(np.int64)
    off = (gi < 0) & proc[None, :]
    kk, bb = np.nonzero(off)
    if kk.size:
        x3 = xt.reshape(S // 8, 8, nb)
        w3 = w.reshape(S // 8, 8, nb)
        gi[kk, bb] = best_neighbours(t, u[kk, bb], x3[kk, :, bb], w3[kk, :, bb], scale[bb], XX,
                                     gshift[kk, bb], strict=True)
    gi = np.where(proc[None, :], gi, 0)
    moved = np.flatnonzero(off.any(axis=0))
    if moved.size:  # scale refit on the grid points: sumqx += (w*q)*x, sumq2 += (w*q)*q
        gm = gi[:, moved]
        q = XX[shift[moved][None, :, None], t.levels[gm]].transpose(0, 2, 1).reshape(S, moved.size)
        wq = w[:, moved] * q
        r = seq_sum_t(np.stack([wq * xt[:, moved], wq * q]), axis=1)
        upd = (r[0] > 0) & (r[1] > 0)
        scale[moved] = np.where(upd, r[0] / np.where(upd, r[1], F32(1)), scale[moved])
    scale = np.where(proc, scale, F32(0))
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
        h |= (gib[:, :, k] >> 8).astype(np.uint16) << np.uint16(3 * k)
    out = np.zeros(nsb, BLOCK_IQ1_S)
    out["d"] = dbits
    out["qs"] = (gib & 255).astype(np.uint8).reshape(nsb, 32)
    out["qh"] = h | (lsc << np.uint16(12))
    return out


@ieee
def quantize_iq1_s_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq1_s: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*50)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"IQ1_S: row length {n} is not a multiple of {QK_K}")
    if imatrix is None:
        raise ValueError("IQ1_S requires an importance matrix")
    t = iq1_tables()
    nbr = n // 32
    qw_row = blocks_t(np.asarray(imatrix, F32).reshape(nbr, 32))
    rpc = max(1, 1024 // nbr)
    out = np.empty((nrows, (n // QK_K) * BLOCK_IQ1_S.itemsize), np.uint8)
    for r0 in range(0, nrows, rpc):
        r1 = min(nrows, r0 + rpc)
        o = _iq1_s_chunk(t, rows[r0:r1], np.tile(qw_row, (1, r1 - r0)))
        out[r0:r1] = o.view(np.uint8).reshape(r1 - r0, -1)
    return out


# --- IQ1_M ------------------------------------------------------------------------------------------

_MASKS = np.array([0x00, 0x80, 0x08, 0x88], np.uint8)


def _iq1_m_scores(sx: tuple[np.ndarray, np.ndarray], sw: tuple[np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """iq1m_process_1block's sumqx[k], sumq2[k] of every split (i1, i2), k inner -> (153*4, nb)
    each, with C's left-to-right sums of the six terms. The first and third terms of a half depend
    on i1 or i2 alone: multiplied on the (17, nb) prefix arrays, then gathered (same products)."""
    S = 16
    I1, I2 = _P16
    npair = I1.size
    nb = sx[0].shape[1]
    terms: list[list[tuple[np.ndarray, ...]]] = []  # [half][shift] -> (x1, x2, x3, w1, w2, w3)
    for h in range(2):
        Sx, Sw = sx[h], sw[h]
        dx = Sx[I2] - Sx[I1]
        dw = Sw[I2] - Sw[I1]
        rx, rw = Sx[S] - Sx, Sw[S] - Sw
        per: list[tuple[np.ndarray, ...]] = []
        for s in range(2):
            v = XX[s]
            per.append(((Sx * v[0])[I1], dx * v[1], (rx * v[2])[I2],
                        ((Sw * v[0]) * v[0])[I1], (dw * v[1]) * v[1], ((rw * v[2]) * v[2])[I2]))
        terms.append(per)
    sqx = np.empty((npair, 4, nb), F32)
    sq2 = np.empty((npair, 4, nb), F32)
    for s0 in range(2):
        t0 = terms[0][s0]
        ax = t0[0] + t0[1]
        ax += t0[2]
        aw = t0[3] + t0[4]
        aw += t0[5]
        for s1 in range(2):
            k = 2 * s0 + s1
            t1 = terms[1][s1]
            o = sqx[:, k]
            np.add(ax, t1[0], out=o)
            o += t1[1]
            o += t1[2]
            o = sq2[:, k]
            np.add(aw, t1[3], out=o)
            o += t1[4]
            o += t1[5]
    return sqx.reshape(4 * npair, nb), sq2.reshape(4 * npair, nb)


def _iq1_m_process(t: Iq1Tables, xt: np.ndarray, w: np.ndarray, proc: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """iq1m_process_1block on the sub-blocks `proc` of (16, nb) -> (scale, best_k, grid index (2, nb))."""
    S = 16
    nb = xt.shape[1]
    order = np.argsort(xt, axis=0, kind="stable")
    first = order < 8
    wv = np.take_along_axis(w * xt, order, axis=0)
    ws = np.take_along_axis(w, order, axis=0)
    sx: list[np.ndarray] = []
    sw: list[np.ndarray] = []
    for h in range(2):
        m = first if h == 0 else ~first
        for src, dst in ((wv, sx), (ws, sw)):
            p = np.zeros((S + 1, nb), F32)
            np.cumsum(np.where(m, src, F32(0)), axis=0, out=p[1:])
            dst.append(p)
    sqx, sq2 = _iq1_m_scores((sx[0], sx[1]), (sw[0], sw[1]))
    sq2[:, ~proc] = 0
    win, scale = scan_best0(sqx, sq2, safe_blocks(wv, ws, xt))
    if (proc & (win < 0)).any():
        raise RuntimeError("IQ1_M: no split accepted (ik_llama.cpp aborts here: GGML_ASSERT(besti1 >= 0 ...))")
    win = np.where(proc, win, 0)
    p = win // 4
    bk = (win % 4).astype(np.int64)
    I1, I2 = _P16
    j = np.arange(S)[:, None]
    lsort = (j >= I1[p][None, :]).astype(np.int32) + (j >= I2[p][None, :])
    L = np.empty_like(lsort)
    np.put_along_axis(L, order, lsort, axis=0)
    neg = proc & (scale < 0)
    L = np.where(neg[None, :], 2 - L, L)
    scale = np.where(neg, -scale, scale)
    bk = np.where(neg, 3 - bk, bk)
    bk = np.where(proc, bk, 0)
    gshift = np.stack([bk >> 1, bk & 1])
    # groups off the grid take their best neighbour (iq1_find_best_neighbour2, w = weight)
    L3 = L.reshape(2, 8, nb)
    u = group_codes(L3)
    gi = t.kmap[u].astype(np.int64)
    off = (gi < 0) & proc[None, :]
    kk, bb = np.nonzero(off)
    if kk.size:
        x3 = xt.reshape(2, 8, nb)
        w3 = w.reshape(2, 8, nb)
        gi[kk, bb] = best_neighbours(t, u[kk, bb], x3[kk, :, bb], w3[kk, :, bb], scale[bb], XX,
                                     gshift[kk, bb], strict=True)
        L3[kk, :, bb] = t.levels[gi[kk, bb]]
    gi = np.where(proc[None, :], gi, 0)
    # rescoring of the four shift combinations where a group moved
    moved = np.flatnonzero(off.any(axis=0))
    if moved.size:
        Lm = L[:, moved]
        xm, wm = xt[:, moved], w[:, moved]
        qp, qm = X_P[Lm], X_M[Lm]
        wx = wm * xm
        tp = np.empty((4, S, moved.size), F32)
        np.multiply(wx, qp, out=tp[0])
        np.multiply(wm * qp, qp, out=tp[1])
        np.multiply(wx, qm, out=tp[2])
        np.multiply(wm * qm, qm, out=tp[3])
        halves = np.arange(S)[None, :, None] < 8
        ax = [tp[0], np.where(halves[0], tp[0], tp[2]), np.where(halves[0], tp[2], tp[0]), tp[2]]
        a2 = [tp[1], np.where(halves[0], tp[1], tp[3]), np.where(halves[0], tp[3], tp[1]), tp[3]]
        sums = seq_sum_t(np.stack(ax + a2), axis=1)  # (8, m): sumqx[0..3], sumq2[0..3]
        best = np.zeros(moved.size, F32)
        sc = scale[moved]
        k_ = bk[moved]
        for k in range(4):
            q, q2 = sums[k], sums[4 + k]
            acc = (q > 0) & (q2 > 0) & (q * q > best * q2)
            s_new = q / np.where(acc, q2, F32(1))
            sc = np.where(acc, s_new, sc)
            best = np.where(acc, s_new * q, best)
            k_ = np.where(acc, k, k_)
        scale[moved] = sc
        bk[moved] = k_
    return scale, bk, gi


def _iq1_m_chunk(t: Iq1Tables, xr: np.ndarray, qwt: np.ndarray | None, state: np.ndarray) -> np.ndarray:
    """Rows xr (r, n) -> blocks of BLOCK_IQ1_M; state (16,) int64: C's shifts[] carried in."""
    S = 16
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    x32 = blocks_t(xr.reshape(-1, 32))
    sigma2 = (F32(1.5) * seq_sum_t(x32 * x32, axis=0)) / F32(32)
    xt = blocks_t(xr.reshape(-1, S))
    nb = xt.shape[1]
    xx = xt * xt
    if qwt is None:
        w = xx
    else:
        w = xx + np.repeat(sigma2, 2)[None, :]
        np.sqrt(w, out=w)
        w = qwt * w
    ax = np.abs(xt)
    proc = np.max(ax, axis=0) >= EPS_IQ1_M
    sumwx = seq_sum_t(w[1:] * ax[1:], axis=0)
    ws = np.where((sumwx == 0)[None, :], xx, w)
    scale, bk, gi = _iq1_m_process(t, xt, ws, proc)
    scale = np.where(proc, scale, F32(0))
    # C's shifts[ib] of eps sub-blocks: the last value set at that position (per super-block slot)
    shifts = bk.reshape(nsb, 16).T  # (16, nsb)
    pr = proc.reshape(nsb, 16).T
    if not pr.all():
        shifts = carry_forward(shifts, pr, state)
    state[:] = shifts[:, -1]
    shifts = np.ascontiguousarray(shifts.T).reshape(nb)
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
    gshift = np.stack([shifts >> 1, shifts & 1])  # (2, nb)
    lv = t.levels[gi]  # (2, nb, 8)
    qv = XX[gshift[:, :, None], lv].transpose(0, 2, 1).reshape(S, nb)
    qf = qv * (2 * lsc + 1).astype(F32).reshape(nb)[None, :]
    wq = w * qf
    s = np.empty((2, S, nb), F32)
    np.multiply(wq, xt, out=s[0])
    np.multiply(wq, qf, out=s[1])
    s = np.ascontiguousarray(s.transpose(0, 2, 1).reshape(2, nsb, QK_K).transpose(0, 2, 1))
    r = seq_sum_t(s, axis=1)
    dd = np.where(r[1] > 0, r[0] / np.where(r[1] > 0, r[1], F32(1)), d)
    sbits = fp16_bits(dd * F32(1.085))
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


@ieee
def quantize_iq1_m_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq1_m: rows float32 (nrows, n), imatrix (n,) or None -> uint8 (nrows, n/256*56)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"IQ1_M: row length {n} is not a multiple of {QK_K}")
    t = iq1_tables()
    nbr = n // 16
    qw_row = None if imatrix is None else blocks_t(np.asarray(imatrix, F32).reshape(nbr, 16))
    rpc = max(1, _CHUNK_SUBBLOCKS // 2 // nbr)
    out = np.empty((nrows, (n // QK_K) * BLOCK_IQ1_M.itemsize), np.uint8)
    state = np.zeros(16, np.int64)
    for r0 in range(0, nrows, rpc):
        r1 = min(nrows, r0 + rpc)
        qwt = None if qw_row is None else np.tile(qw_row, (1, r1 - r0))
        o = _iq1_m_chunk(t, rows[r0:r1], qwt, state)
        out[r0:r1] = o.view(np.uint8).reshape(r1 - r0, -1)
    return out


# --- IQ2_XXS and IQ2_S -------------------------------------------------------------------------------

def _e8_search(t: Iq2Tables, kind: str, xval: np.ndarray, w: np.ndarray, waux: np.ndarray,
               proc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ik's sub-block search of IQ2_XXS (S=32) / IQ2_S (S=16) on (S, nb) -> (scale, L, accepted).
    Mainline's search (qtool.quants.lattice.iq2.subblock_search) but: IQ2_XXS keeps searching when
    make_qp_quants gives eff_max <= 0, and ik's make_qp_quants returns sumlx/suml2 unguarded (NaN
    where mainline's guard returns 0: id = NaN, every level 0); `accepted` marks the sub-blocks
    where C's L was set (a candidate taken; IQ2_XXS: or the refinement ran)."""
    S, nb = xval.shape
    G = S // 8
    wx = w * xval
    L = np.zeros((S, nb), np.int32)
    best = np.zeros(nb, F32)
    acc = np.zeros(nb, bool)
    on_grid = np.ones((G, nb), bool)
    if kind == "IQ2_XXS":
        scale = make_qp_quants_t(xval, w, 4)
        scale = np.where(scale == 0, F32(np.nan), scale)
        den = scale * F32(3)
        rng = range(-6, 7)
    else:
        mx = np.where(proc, np.max(xval, axis=0), F32(1))
        scale = mx / F32(5)
        den = mx
        rng = range(-9, 10)
    for is_ in rng:
        idv = (F32(5) + F32(is_) * F32(0.1)) / den
        La = levels_for(xval, idv)
        off = snap_to_grid(t, La, xval, waux, F32(1) / idv)
        sumqx, sumq2 = sums_q(wx, w, La)
        upd = proc & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if upd.any():
            sc = sumqx / np.where(upd, sumq2, F32(1))
            scale = np.where(upd, sc, scale)
            best = np.where(upd, sc * sumqx, best)
            L = np.where(upd, La, L)
            on_grid = np.where(upd, ~off, on_grid)
            acc |= upd
    if kind == "IQ2_XXS":
        redo = proc & (scale > 0)
        only = np.broadcast_to(redo, (G, nb))
    else:
        redo = proc & (scale > 0) & (~on_grid).any(axis=0)
        only = ~on_grid & redo
    if redo.any():
        Ln = levels_for(xval, F32(1) / np.where(redo, scale, F32(1)))
        L = np.where(np.repeat(only, 8, axis=0), Ln, L)
        snap_to_grid(t, L, xval, waux, scale, only=only)
        sumqx, sumq2 = sums_q(wx, w, L)
        upd = redo & (sumq2 > 0)
        scale = np.where(upd, sumqx / np.where(upd, sumq2, F32(1)), scale)
    if kind == "IQ2_XXS":
        acc |= redo  # the refinement sets all four groups' levels
    return scale, L, acc


def _e8_chunk(t: Iq2Tables, kind: str, xr: np.ndarray, qwt: np.ndarray | None, state: np.ndarray) -> np.ndarray:
    """ik's quantize_row_iq2_xxs_impl / quantize_row_iq2_s_impl on rows xr (r, n); state (16,):
    IQ2_S's L carried in (C keeps it where nothing is accepted; eps sub-blocks leave it)."""
    S = 32 if kind == "IQ2_XXS" else 16
    per = QK_K // S
    G = S // 8
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    xs = blocks_t(xr.reshape(nsb, QK_K))
    sumx2 = seq_sum_t(xs * xs, axis=0)
    sigma2 = (sumx2 if kind == "IQ2_XXS" else F32(2) * sumx2) / F32(QK_K)
    xt = blocks_t(xr.reshape(-1, S))
    nb = xt.shape[1]
    w = weights(xt, qwt, np.repeat(sigma2, per))
    waux = np.sqrt(w)
    xval, signs = sign_fix(xt, w, kind == "IQ2_XXS")
    proc = np.max(xval, axis=0) >= (GROUP_MAX_EPS if kind == "IQ2_XXS" else GROUP_MAX_EPS_IQ2_S)
    scale, L, acc = _e8_search(t, kind, xval, w, waux, proc)
    if kind == "IQ2_XXS":
        if (proc & ~acc).any():
            raise RuntimeError("IQ2_XXS: no scale accepted in a sub-block and none to refine (ik_llama.cpp encodes "
                               "make_qp_quants' levels there or aborts)")
    else:
        stale = proc & ~acc
        if stale.any():
            L = carry_forward(L, acc[None, :], state)
        last = np.flatnonzero(acc)
        if last.size:
            state[:] = L[:, last[-1]]
    neg = proc & (scale < 0)
    scale = np.where(neg, -scale, scale)
    if neg.any():
        signs[:, neg] = ~signs[:, neg]
        if kind == "IQ2_XXS":
            signs[:, neg] &= np.uint8(127)
    if (np.isnan(scale) & proc).any():
        raise RuntimeError(f"{kind}: a NaN sub-block scale (ik_llama.cpp aborts here: GGML_ASSERT(scale >= 0))")
    gi = t.kmap[group_codes(L.reshape(G, 8, nb))]
    if (gi[:, proc] < 0).any():
        raise RuntimeError(f"{kind}: a point off the grid after the search (ik_llama.cpp aborts here)")
    gi = np.where(proc, gi, 0).astype(np.uint32)
    signs = np.where(proc, signs, np.uint8(0))
    scale = np.where(proc, scale, F32(0))
    dbits, ls, zero = super_scales(scale, nsb, per, None if kind == "IQ2_XXS" else 0.9875)
    gib = gi.T.reshape(nsb, per, G)
    sgb = signs.T.reshape(nsb, per, G).astype(np.uint32)
    if kind == "IQ2_XXS":
        out = np.zeros(nsb, BLOCK_IQ2_XXS)
        q = np.zeros((nsb, per, 2), np.uint32)
        for k in range(4):
            q[:, :, 0] |= gib[:, :, k] << np.uint32(8 * k)
            q[:, :, 1] |= sgb[:, :, k] << np.uint32(7 * k)
        q[:, :, 1] |= ls.astype(np.uint32) << np.uint32(28)
        q[zero] = 0
        out["d"] = dbits
        out["qs"] = q.reshape(nsb, 16)
        return out
    out = np.zeros(nsb, BLOCK_IQ2_S)
    i8 = gib.reshape(nsb, 32)
    qs = np.empty((nsb, 64), np.uint8)
    qs[:, :32] = (i8 & 255).astype(np.uint8)
    qs[:, 32:] = sgb.reshape(nsb, 32).astype(np.uint8)
    hi = (i8 >> 8).reshape(nsb, 8, 4)
    qh = np.zeros((nsb, 8), np.uint32)
    for j in range(4):
        qh |= hi[:, :, j] << np.uint32(2 * j)
    out["d"] = dbits
    out["qs"] = qs
    out["qh"] = qh.astype(np.uint8)
    out["scales"] = ls[:, 0::2] | (ls[:, 1::2] << np.uint8(4))
    return out


def _quantize_e8(kind: str, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"{kind}: row length {n} is not a multiple of {QK_K}")
    if imatrix is None and kind == "IQ2_XXS":
        raise ValueError("IQ2_XXS requires an importance matrix")
    S = 32 if kind == "IQ2_XXS" else 16
    t = e8_tables(kind)
    nbr = n // S
    qw_row = None if imatrix is None else blocks_t(np.asarray(imatrix, F32).reshape(nbr, S))
    dt = BLOCK_IQ2_XXS if kind == "IQ2_XXS" else BLOCK_IQ2_S
    rpc = max(1, _CHUNK_SUBBLOCKS // nbr)
    out = np.empty((nrows, (n // QK_K) * dt.itemsize), np.uint8)
    state = np.zeros((S, 1), np.int32)[:, 0].copy()
    for r0 in range(0, nrows, rpc):
        r1 = min(nrows, r0 + rpc)
        qwt = None if qw_row is None else np.tile(qw_row, (1, r1 - r0))
        o = _e8_chunk(t, kind, rows[r0:r1], qwt, state)
        out[r0:r1] = o.view(np.uint8).reshape(r1 - r0, -1)
    return out


@ieee
def quantize_iq2_xxs_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq2_xxs: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*66)."""
    return _quantize_e8("IQ2_XXS", rows, imatrix)


@ieee
def quantize_iq2_s_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq2_s: rows float32 (nrows, n), imatrix (n,) or None -> uint8 (nrows, n/256*82)."""
    return _quantize_e8("IQ2_S", rows, imatrix)


# --- IQ3_XXS ----------------------------------------------------------------------------------------

_SHIFT3 = (3 * np.arange(4, dtype=np.int32))[None, :, None]


def _d4_snap(tab: Iq3Tables, lv: np.ndarray, sel: np.ndarray | None, xval: np.ndarray, waux: np.ndarray,
             scale: np.ndarray) -> np.ndarray:
    """Levels lv (32, nb) in place: each group of 4 (of sel (8, nb), all when None) off the grid
    takes iq3_find_best_neighbour's point at scale (nb,). Returns the off-grid mask (8, nb)."""
    nb = lv.shape[1]
    l4 = lv.reshape(8, 4, nb)
    u = (l4 << _SHIFT3).sum(axis=1)
    off = tab.kmap[u] < 0
    if sel is not None:
        off &= sel
    kk, bb = np.nonzero(off)
    if kk.size:
        x4 = xval.reshape(8, 4, nb)
        w4 = waux.reshape(8, 4, nb)
        gi = best_neighbour(tab, u[kk, bb], x4[kk, :, bb], w4[kk, :, bb], scale[bb])
        l4[kk, :, bb] = tab.levels[gi]
    return off


def _d4_sums(w: np.ndarray, xval: np.ndarray, lv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = (2 * lv + 1).astype(F32)
    return seq_sum_t((w * xval) * q), seq_sum_t((w * q) * q)


def _d4_levels(idv: np.ndarray, xval: np.ndarray) -> np.ndarray:
    a = xval * idv
    a -= F32(1)
    a *= F32(0.5)
    return np.clip(nearest_int(a), 0, 7)


def _iq3_xxs_chunk(tab: Iq3Tables, xr: np.ndarray, qwt: np.ndarray | None,
                   state: list[np.ndarray]) -> np.ndarray:
    """ik's quantize_row_iq3_xxs_impl(256, ...) on rows xr (r, n). ik dropped mainline's
    is_on_grid reset and moved L's memset into the eps branch, so a block where no candidate is
    accepted keeps C's L (the last accepted block's final levels, zeros after an eps block) and
    is_on_grid (the last accepted candidate's), and the refinement re-rounds the groups that flag
    as off the grid. state = [L (32,), is_on_grid (8,)] carried in (zeros / all on grid at the
    start of a call, where C reads uninitialised memory)."""
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    xs = blocks_t(xr.reshape(nsb, QK_K))
    sigma2 = (F32(2) * seq_sum_t(xs * xs, axis=0)) / F32(QK_K)
    xt = blocks_t(xr.reshape(-1, 32))
    nb = xt.shape[1]
    if qwt is None:
        w = xt * xt
    else:
        w = xt * xt
        w += np.repeat(sigma2, 8)[None, :]
        np.sqrt(w, out=w)
        w = qwt * w
    waux = np.sqrt(w)
    xval, signs = sign_fix(xt, w, True)
    mx = np.max(xval, axis=0)
    proc = mx >= EPS_IQ3_XXS
    mxs = np.where(proc, mx, F32(1))
    L = np.zeros((32, nb), np.int32)
    on_grid = np.ones((8, nb), bool)
    best = np.zeros(nb, F32)
    acc = np.zeros(nb, bool)
    scale = mxs / F32(15)
    for is_ in range(-15, 16):
        idv = (F32(15) + F32(is_) * F32(0.2)) / mxs
        la = _d4_levels(idv, xval)
        off = _d4_snap(tab, la, None, xval, waux, F32(1) / idv)
        sumqx, sumq2 = _d4_sums(w, xval, la)
        upd = proc & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if upd.any():
            sn = sumqx / np.where(upd, sumq2, F32(1))
            scale = np.where(upd, sn, scale)
            best = np.where(upd, sn * sumqx, best)
            L = np.where(upd, la, L)
            on_grid = np.where(upd, ~off, on_grid)
            acc |= upd
    stale = proc & ~acc
    if stale.any():
        # C's L and is_on_grid as the previous blocks left them. Carrying L from before the
        # refinement is exact: a stale block re-rounds every group its carried is_on_grid flags,
        # and those are the only groups a refinement changed (the same holds along a run of
        # stale blocks, which keep is_on_grid)
        L = carry_forward(np.where(proc[None, :], L, 0), (acc | ~proc)[None, :], state[0])
        on_grid = carry_forward(on_grid, acc[None, :], state[1])
    need = proc & (~on_grid).any(axis=0) & (scale > 0)
    if need.any():
        cols = np.flatnonzero(need)
        sc = scale[cols]
        xv = np.ascontiguousarray(xval[:, cols])
        lsub = np.ascontiguousarray(L[:, cols])
        lnew = _d4_levels(F32(1) / sc, xv)
        sel = ~on_grid[:, cols]
        _d4_snap(tab, lnew, sel, xv, np.ascontiguousarray(waux[:, cols]), sc)
        lnew = np.where(np.repeat(sel, 4, axis=0), lnew, lsub)
        sumqx, sumq2 = _d4_sums(np.ascontiguousarray(w[:, cols]), xv, lnew)
        scale[cols] = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), sc)
        L[:, cols] = lnew
    L = np.where(proc[None, :], L, 0)
    state[0][:] = L[:, -1]
    last = np.flatnonzero(acc)
    if last.size:
        state[1][:] = on_grid[:, last[-1]]
    flip = proc & (scale < 0)
    if flip.any():
        scale = np.where(flip, -scale, scale)
        signs[:, flip] = ~signs[:, flip] & np.uint8(127)
    if (np.isnan(scale) & proc).any():
        raise RuntimeError("IQ3_XXS: a NaN sub-block scale (ik_llama.cpp aborts here: GGML_ASSERT(scale >= 0))")
    gi = tab.kmap[(L.reshape(8, 4, nb) << _SHIFT3).sum(axis=1)]
    if (gi[:, proc] < 0).any():
        raise RuntimeError("IQ3_XXS: a point off the grid after the search (ik_llama.cpp aborts here)")
    gi = np.where(proc[None, :], gi, 0)
    scale = np.where(proc, scale, F32(0))
    sas = (signs.astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))[:, None]).sum(axis=0, dtype=np.uint32)
    sas[~proc] = 0
    sc8 = scale.reshape(nsb, 8)
    max_scale = np.maximum(sc8.max(axis=1), F32(0))
    zero = max_scale == 0
    d = max_scale / F32(31)
    dh = np.where(zero, np.uint16(0), fp16_bits(d * F32(1.0125)))
    idv = F32(1) / np.where(zero, F32(1), d)
    a = idv[:, None] * sc8
    a -= F32(1)
    a *= F32(0.5)
    ls = np.clip(nearest_int(a), 0, 15)
    sas = sas.reshape(nsb, 8) | (ls.astype(np.uint32) << np.uint32(28))
    qs = np.ascontiguousarray(gi.T).astype(np.uint8).reshape(nsb, 64)
    sas[zero] = 0
    qs[zero] = 0
    out = np.zeros(nsb, BLOCK_IQ3_XXS)
    out["d"] = dh
    out["qs"] = qs
    out["sas"] = sas
    return out


@ieee
def quantize_iq3_xxs_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq3_xxs: rows float32 (nrows, n), imatrix (n,) or None -> uint8 (nrows, n/256*98)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"IQ3_XXS: row length {n} is not a multiple of {QK_K}")
    tab = iq3_tables(256)
    nbr = n // 32
    qw_row = None if imatrix is None else blocks_t(np.asarray(imatrix, F32).reshape(nbr, 32))
    rpc = max(1, _CHUNK_SUBBLOCKS // nbr)
    out = np.empty((nrows, (n // QK_K) * BLOCK_IQ3_XXS.itemsize), np.uint8)
    state = [np.zeros(32, np.int32), np.ones(8, bool)]
    for r0 in range(0, nrows, rpc):
        r1 = min(nrows, r0 + rpc)
        qwt = None if qw_row is None else np.tile(qw_row, (1, r1 - r0))
        o = _iq3_xxs_chunk(tab, rows[r0:r1], qwt, state)
        out[r0:r1] = o.view(np.uint8).reshape(r1 - r0, -1)
    return out


QUANTIZE = {"IQ2_XXS": quantize_iq2_xxs_ik, "IQ2_XS": quantize_iq2_xs_ik, "IQ2_S": quantize_iq2_s_ik,
            "IQ3_XXS": quantize_iq3_xxs_ik, "IQ1_S": quantize_iq1_s_ik, "IQ1_M": quantize_iq1_m_ik}
DEQUANTIZE = {"IQ2_XXS": dequantize_iq2_xxs, "IQ2_XS": dequantize_iq2_xs, "IQ2_S": dequantize_iq2_s,
              "IQ3_XXS": dequantize_iq3_xxs, "IQ1_S": dequantize_iq1_s, "IQ1_M": dequantize_iq1_m}

register("IQ2_XXS", quantize_iq2_xxs_ik, None, mainline=(), ik=(True,))
register("IQ2_XS", quantize_iq2_xs_ik, None, mainline=(), ik=(True,))
register("IQ2_S", quantize_iq2_s_ik, None, mainline=())
register("IQ3_XXS", quantize_iq3_xxs_ik, None, mainline=())
register("IQ1_S", quantize_iq1_s_ik, None, mainline=(), ik=(True,))
register("IQ1_M", quantize_iq1_m_ik, None, mainline=())
