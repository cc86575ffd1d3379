"""ik_llama.cpp's own quantization of the mainline lattice types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS,
IQ2_S and IQ3_XXS: byte-exact ports of ik's ggml-quants.c (ik's ggml_quantize_chunk calls
quantize_iq1_s / _iq1_m / _iq2_xxs / _iq2_xs / _iq2_s / _iq3_xxs there, nothing in iqk_quantize.cpp).
IQ3_S is mainline's algorithm in ik (the one change, L's memset, is never read: a block without an
accepted candidate re-rounds every group), so mainline's kernel is registered for it. Grids,
neighbour lists (ik's serial iq2xs_init_impl / iq3xs_init_impl build the same lists as mainline's
parallel ones), the neighbour searches, the sign handling and the dequantizers are mainline's
(qtool.quants.lattice), and so is every step that is the same in both: the weights, the split and
candidate scans (parameterized: update mask, start of `best`, abort instead of scale 0), the
refinements, the super-block scales and the block packing; this module keeps what ik changed.

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

from ...errors import AbortError
from ..lattice.grids_d4 import Iq3Tables, iq3_tables
from ..lattice.grids_e8 import Iq2Tables
from ..lattice.grids_e8 import tables as e8_tables
from ..lattice.grids_iq1 import Iq1Tables
from ..lattice.grids_iq1 import tables as iq1_tables
from ..lattice.iq1 import (
    BLOCK_IQ1_M,
    BLOCK_IQ1_S,
    EPS_IQ1_M,
    X_M,
    X_P,
    XX,
    dequantize_iq1_m,
    dequantize_iq1_s,
    half_prefixes,
    iq1_m_blocks,
    iq1_s_chunk,
    level_values,
    pairs,
    prefix,
    replay_best,
    safe_blocks,
    snap_groups,
    sorted_sums,
    split_levels,
    sq_weights,
    superblock_fit_sums,
)
from ..lattice.iq2 import (
    BLOCK_IQ2_S,
    BLOCK_IQ2_XS,
    BLOCK_IQ2_XXS,
    KSIGNS_IQ2XS,
    dequantize_iq2_s,
    dequantize_iq2_xs,
    dequantize_iq2_xxs,
    finish_subblocks,
    group_codes,
    levels_for,
    make_qp_quants_t,
    pack_iq2,
    prepare_subblocks,
    refine_groups,
    scan_grid,
    sign_fix,
    snap_to_grid,
    sums_q,
    super_scales,
)
from ..lattice.iq3 import (
    BLOCK_IQ3_XXS,
    EPS_IQ3_XXS,
    dequantize_iq3_xxs,
    level_sums,
    levels_d4,
    pack_iq3_xxs,
    scan_d4,
    snap_levels,
)
from ..lattice.rows import quantize_rows
from ..numeric import QK_K, blocks_t, fp16_bits, ieee, seq_sum_t
from ..registry import register

F32 = np.float32
_CHUNK_SUBBLOCKS = 4096


_P16 = pairs(16)


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
    _, swx, sww = sorted_sums(xval, w)
    sx, sw = prefix(swx), prefix(sww)
    I1, I2 = _P16
    a, b = sx[I1], sx[I2]
    sqx = (a * F32(1) + (b - a) * F32(3)) + (sx[S] - b) * F32(5)
    a, b = sw[I1], sw[I2]
    sq2 = (a * F32(1) + (b - a) * F32(9)) + (sw[S] - b) * F32(25)
    sq2[:, ~proc] = 0
    _, scale = scan_best0(sqx, sq2, safe_blocks(wx, w, xval))
    eff = scale * F32(5)
    # the grid search (mainline's candidate loop, each kept candidate's grid indices tracked)
    scale, best, L, _, lset, index = scan_grid(t, xval, w, waux, eff, range(-7, 8), scale, proc, True)
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
    nsb, xt, w, waux, xval, signs, proc = prepare_subblocks("IQ2_XS", xr, qwt)
    nb = xt.shape[1]
    scale, L, lset = _iq2_xs_search(t, xval, w, waux, proc)
    # C's L where nothing was accepted: the last levels set before (zeros after an eps sub-block)
    defined = lset | ~proc
    L = np.where(proc[None, :], L, 0)
    if not defined.all():
        L = carry_forward(L, defined[None, :], state)
    state[:] = L[:, -1]
    gi, signs, scale = finish_subblocks(t, "IQ2_XS", L, scale, signs, proc, "ik_llama.cpp", nan_check=True)
    dbits, ls, zero = super_scales(scale, nsb, 16, None)
    # super-block refit: q = 0.125f*(2l+1)*grid[j]*sign against x, in C's order
    lf = (2 * ls.reshape(nb).astype(np.int32) + 1).astype(F32)
    q = (F32(0.125) * lf)[None, None, :] * t.deq_grid[gi].transpose(0, 2, 1)  # (2, 8, nb)
    sb = KSIGNS_IQ2XS[signs]
    neg_j = ((sb[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1).astype(bool)
    q = np.where(neg_j, -q, q).reshape(S, nb)
    r = superblock_fit_sums(w, q, xt, nsb)
    pos = r[1] > 0
    dref = fp16_bits((F32(1.05) * r[0]) / np.where(pos, r[1], F32(1)))
    dbits = np.where(pos, dref, dbits)
    out = np.zeros(nsb, BLOCK_IQ2_XS)
    pack_iq2("IQ2_XS", out, gi, signs, ls, zero)
    out["d"] = np.where(zero, np.uint16(0), dbits)
    return out


@ieee
def quantize_iq2_xs_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq2_xs: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*74)."""
    t = e8_tables("IQ2_XS")
    state = np.zeros(16, np.int32)
    return quantize_rows("IQ2_XS", rows, imatrix, 16, BLOCK_IQ2_XS, _CHUNK_SUBBLOCKS,
                         lambda xr, qwt: _iq2_xs_chunk(t, xr, qwt, state), True)


# --- IQ1_S ------------------------------------------------------------------------------------------

_FLT_MIN = float(np.finfo(F32).tiny)


def _scan_flt_min(sqx: np.ndarray, sq2: np.ndarray, safe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """iq1s_process_1block's split scan: from best = -FLT_MIN (mainline: -FLT_MAX)."""
    return scan_best0(sqx, sq2, safe, -_FLT_MIN)


@ieee
def quantize_iq1_s_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq1_s: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*50)."""
    t = iq1_tables()
    return quantize_rows("IQ1_S", rows, imatrix, 32, BLOCK_IQ1_S, 1024,
                         lambda xr, qwt: iq1_s_chunk(t, xr, qwt, _scan_flt_min, strict=True), True)


# --- IQ1_M ------------------------------------------------------------------------------------------

def iq1_m_scores(sx: tuple[np.ndarray, np.ndarray], sw: tuple[np.ndarray, np.ndarray]
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


def iq1_m_process(t: Iq1Tables, xt: np.ndarray, w: np.ndarray, proc: np.ndarray, what: str = "IQ1_M"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """iq1m_process_1block on the sub-blocks `proc` of (16, nb) -> (scale (0 where not proc),
    best_k, grid index (2, nb)); shared by IQ1_M and IQ1_M_R4 (`what` names the type in errors)."""
    order, wv, ws = sorted_sums(xt, w)
    sx, sw = half_prefixes(order, wv, ws)
    sqx, sq2 = iq1_m_scores((sx[0], sx[1]), (sw[0], sw[1]))
    sq2[:, ~proc] = 0
    win, scale = scan_best0(sqx, sq2, safe_blocks(wv, ws, xt))
    if (proc & (win < 0)).any():
        raise AbortError(f"{what}: no split accepted (ik_llama.cpp aborts here: GGML_ASSERT(besti1 >= 0 ...))")
    L, scale, bk = split_levels(order, win, scale, proc, 4)
    gshift = np.stack([bk >> 1, bk & 1])
    # groups off the grid take their best neighbour (iq1_find_best_neighbour2, w = weight); their
    # levels are written into L for the rescoring of the four shift combinations where one moved
    gi, moved_b = snap_groups(t, L, xt, w, scale, proc, gshift, set_levels=True)
    moved = np.flatnonzero(moved_b & proc)
    if moved.size:
        S = 16
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
    return np.where(proc, scale, F32(0)), bk, gi


def _iq1_m_chunk(t: Iq1Tables, xr: np.ndarray, qwt: np.ndarray | None, state: np.ndarray) -> np.ndarray:
    """Rows xr (r, n) -> blocks of BLOCK_IQ1_M; state (16,) int64: C's shifts[] carried in."""
    S = 16
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    x32 = blocks_t(xr.reshape(-1, 32))
    sigma2 = (F32(1.5) * seq_sum_t(x32 * x32, axis=0)) / F32(32)
    xt = blocks_t(xr.reshape(-1, S))
    nb = xt.shape[1]
    w = sq_weights(xt, qwt, np.repeat(sigma2, 2))
    ax = np.abs(xt)
    proc = np.max(ax, axis=0) >= EPS_IQ1_M
    sumwx = seq_sum_t(w[1:] * ax[1:], axis=0)
    ws = np.where((sumwx == 0)[None, :], xt * xt, w)
    scale, bk, gi = iq1_m_process(t, xt, ws, proc)
    # C's shifts[ib] of eps sub-blocks: the last value set at that position (per super-block slot)
    shifts = bk.reshape(nsb, 16).T  # (16, nsb)
    pr = proc.reshape(nsb, 16).T
    if not pr.all():
        shifts = carry_forward(shifts, pr, state)
    state[:] = shifts[:, -1]
    shifts = np.ascontiguousarray(shifts.T).reshape(nb)
    gshift = np.stack([shifts >> 1, shifts & 1])  # (2, nb)
    return iq1_m_blocks(gi, level_values(t, gi, gshift), shifts, scale, w, xt, nsb, 1.085)


@ieee
def quantize_iq1_m_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq1_m: rows float32 (nrows, n), imatrix (n,) or None -> uint8 (nrows, n/256*56)."""
    t = iq1_tables()
    state = np.zeros(16, np.int64)
    return quantize_rows("IQ1_M", rows, imatrix, 16, BLOCK_IQ1_M, _CHUNK_SUBBLOCKS // 2,
                         lambda xr, qwt: _iq1_m_chunk(t, xr, qwt, state), False)


# --- IQ2_XXS and IQ2_S -------------------------------------------------------------------------------

def _e8_search(t: Iq2Tables, kind: str, xval: np.ndarray, w: np.ndarray, waux: np.ndarray,
               proc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ik's sub-block search of IQ2_XXS (S=32) / IQ2_S (S=16) on (S, nb) -> (scale, L, accepted).
    Mainline's search (qtool.quants.lattice.iq2.subblock_search) but: IQ2_XXS keeps searching when
    make_qp_quants gives eff_max <= 0, and ik's make_qp_quants returns sumlx/suml2 unguarded (NaN
    where mainline's guard returns 0: id = NaN, every level 0); `accepted` marks the sub-blocks
    where C's L was set (a candidate taken; IQ2_XXS: or the refinement ran)."""
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
    scale, _, L, on_grid, acc, _ = scan_grid(t, xval, w, waux, den, rng, scale, proc)
    scale, L, redo = refine_groups(t, xval, w, waux, scale, L, on_grid, proc, kind == "IQ2_XXS")
    if kind == "IQ2_XXS":
        acc |= redo  # the refinement sets all four groups' levels
    return scale, L, acc


def _e8_chunk(t: Iq2Tables, kind: str, xr: np.ndarray, qwt: np.ndarray | None, state: np.ndarray) -> np.ndarray:
    """ik's quantize_row_iq2_xxs_impl / quantize_row_iq2_s_impl on rows xr (r, n); state (16,):
    IQ2_S's L carried in (C keeps it where nothing is accepted; eps sub-blocks leave it)."""
    per = 8 if kind == "IQ2_XXS" else 16
    nsb, xt, w, waux, xval, signs, proc = prepare_subblocks(kind, xr, qwt)
    scale, L, acc = _e8_search(t, kind, xval, w, waux, proc)
    if kind == "IQ2_XXS":
        if (proc & ~acc).any():
            raise AbortError("IQ2_XXS: no scale accepted in a sub-block and none to refine (ik_llama.cpp encodes "
                               "make_qp_quants' levels there or aborts)")
    else:
        stale = proc & ~acc
        if stale.any():
            L = carry_forward(L, acc[None, :], state)
        last = np.flatnonzero(acc)
        if last.size:
            state[:] = L[:, last[-1]]
    gi, signs, scale = finish_subblocks(t, kind, L, scale, signs, proc, "ik_llama.cpp", nan_check=True)
    dbits, ls, zero = super_scales(scale, nsb, per, None if kind == "IQ2_XXS" else 0.9875)
    out = np.zeros(nsb, BLOCK_IQ2_XXS if kind == "IQ2_XXS" else BLOCK_IQ2_S)
    out["d"] = dbits
    pack_iq2(kind, out, gi, signs, ls, zero)
    return out


def _quantize_e8(kind: str, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    t = e8_tables(kind)
    S = 32 if kind == "IQ2_XXS" else 16
    state = np.zeros(S, np.int32)
    return quantize_rows(kind, rows, imatrix, S, BLOCK_IQ2_XXS if kind == "IQ2_XXS" else BLOCK_IQ2_S,
                         _CHUNK_SUBBLOCKS, lambda xr, qwt: _e8_chunk(t, kind, xr, qwt, state), kind == "IQ2_XXS")


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
    w = sq_weights(xt, qwt, np.repeat(sigma2, 8))
    waux = np.sqrt(w)
    xval, signs = sign_fix(xt, w, True)
    mx = np.max(xval, axis=0)
    proc = mx >= EPS_IQ3_XXS
    mxs = np.where(proc, mx, F32(1))
    scale, L, on_grid, acc = scan_d4(tab, w, xval, waux, mxs, 15, True, proc)
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
        lnew = levels_d4(F32(1) / sc, xv)
        sel = ~on_grid[:, cols]
        snap_levels(tab, lnew, sel, xv, np.ascontiguousarray(waux[:, cols]), sc)
        lnew = np.where(np.repeat(sel, 4, axis=0), lnew, lsub)
        sumqx, sumq2 = level_sums(np.ascontiguousarray(w[:, cols]), xv, lnew)
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
        raise AbortError("IQ3_XXS: a NaN sub-block scale (ik_llama.cpp aborts here: GGML_ASSERT(scale >= 0))")
    gi = tab.kmap[(L.reshape(8, 4, nb) << _SHIFT3).sum(axis=1)]
    if (gi[:, proc] < 0).any():
        raise AbortError("IQ3_XXS: a point off the grid after the search (ik_llama.cpp aborts here)")
    gi = np.where(proc[None, :], gi, 0)
    return pack_iq3_xxs(gi, signs, np.where(proc, scale, F32(0)), ~proc)


@ieee
def quantize_iq3_xxs_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik's quantize_iq3_xxs: rows float32 (nrows, n), imatrix (n,) or None -> uint8 (nrows, n/256*98)."""
    tab = iq3_tables(256)
    state = [np.zeros(32, np.int32), np.ones(8, bool)]
    return quantize_rows("IQ3_XXS", rows, imatrix, 32, BLOCK_IQ3_XXS, _CHUNK_SUBBLOCKS,
                         lambda xr, qwt: _iq3_xxs_chunk(tab, xr, qwt, state), False)


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
