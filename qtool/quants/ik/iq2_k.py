"""IQ2_K (ik_llama.cpp type 137): byte-exact port of ik_llama.cpp's quantizer and dequantizer.

C functions ported (ggml/src/iqk/iqk_quantize.cpp): `quantize_iq2_k` (QHelper's per-row imatrix
guard), `quantize_row_iq2_k_impl`, `best_index_iq2nl`, ik's `make_qx_quants(n, nmax, x, L, qw)`,
`dequantize_row_iq2_k`; block `block_iq2_k` (ggml-common.h): d (fp16), extra (u16), scales[8],
qs[64] = 76 bytes per 256 values, no row meta.

quantize_row_iq2_k_impl, per super-block of 256 values in blocks of 16:
- weights as IQ3_K: qw*sqrtf(sigma2 + x*x) or 0.25f*sigma2 + x*x, sigma2 = 1.5f*sum(x*x)/256;
  sw = sequential sum of the block's weights.
- per block (scale 0 when max |x| < 1e-16): the values sorted by (x, index) (std::sort of pairs),
  prefix sums sumw, sumx (of w*x) in that order; then an exhaustive search over the split points
  i1 <= i2 <= i3 of the sorted values into four groups, each split tried with four level sets
  (iq2nl values ascending, shifted ascending, values descending, shifted descending):
  sumqx = ((sumx[i1]-sumx[0])*v0 + (sumx[i2]-sumx[i1])*v1) + ..., sumq2 likewise with
  ((sumw[.]-sumw[.])*v)*v; a candidate replaces (d, best, shifted) when sumq2 > 0 and
  sumqx*sumqx > best*sumq2 (d = sumqx/sumq2, best = d*sumqx), in the order i1, i2, i3, set.
- super-block: d = make_qx_quants(16, 8, scales, Ls, sw) (ik's version), ls = clamp(nearest_int(
  scale/d), -8, 7), levels best_index_iq2nl((1/(d*ls))*x); fp16 d = 1.030f*sumqx/sumq2.

The search reproduces C's (d, shifted) exactly without C's 3264 evaluations per block:
- C's scan `if (sumq2 > 0 && sumqx*sumqx > best*sumq2)` errs by a few ulps (~4e-7) against the
  exact order of the scores s = sumqx^2/sumq2, so only the candidates from the top score down to
  the first relative gap > 2e-6 (the "in" set: most often the winner alone, or an exact tie) can
  decide it; replaying C's scan on the in set in C's order gives C's result, provided every other
  candidate is known to score below the gap (_inset_replay).
- _search_pruned lists a superset of the candidates near the top without evaluating the rest
  (see "pruned search" below): a sweep over the scale d bounds every candidate's score, and boxes
  of split points around the best assignments hold all candidates within ~2e-4 of the top
  (1.2 per block on gaussian data); their float32 sums are computed with C's operations.
- _search_direct, for the few blocks the argument does not cover (sums near float32 under- or
  overflow, weights lost in rounding, large boxes, no gap), computes all 3264 candidates' sums with
  C's operations, lists those within 1e-4 of the top, and falls back to C's full scan in C's order
  where even that leaves no gap.

best_index_iq2nl equals "number of thresholds t_a <= x" (t_a: the first float32 for which
x - v[a] < v[a+1] - x is false, found by bisection; the shifted -1 midpoint rounds to -1.0000002);
NaN gives 2 as in C.
"""

from __future__ import annotations

import numpy as np

from ..numeric import F32, absmax_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int
from ..registry import register
from .iq3_k import (
    guarded_imatrix_t,
    quantize_superblocks,
    superblock_refit,
    superblock_sigma2,
    thresholds,
    weights_t,
)
from .iqk_tables import IQ2NL_VALUES

__all__ = ["BLOCK_IQ2_K", "DEQUANTIZE", "QUANTIZE", "best_index_iq2nl_t", "dequantize_iq2_k",
           "make_qx_quants_iqk_t", "quantize_iq2_k", "scale_search_iq2_k_t"]

BLOCK = 16
BLOCK_IQ2_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales", "u1", (8,)), ("qs", "u1", (64,))])
assert BLOCK_IQ2_K.itemsize == 76
_CHUNK_SB = 64  # super-blocks per chunk: 1024 blocks of 16

_VALS = IQ2NL_VALUES.astype(F32)
_THR = (thresholds(IQ2NL_VALUES[:4]), thresholds(IQ2NL_VALUES[4:]))

# the four level sets of the search, as indices into _VALS, and the C order of the candidates
_SETS = ((0, 1, 2, 3), (4, 5, 6, 7), (3, 2, 1, 0), (7, 6, 5, 4))
_PAIRS = [(i1, i2) for i1 in range(BLOCK) for i2 in range(i1, BLOCK)]
_BASE = {}
_n = 0
for _p in _PAIRS:
    _BASE[_p] = _n
    _n += 4 * (BLOCK - _p[1])
NCAND = _n  # 3264
_GAP = F32(2e-6)  # relative gap that C's rounding cannot bridge (its comparisons err by ~4e-7)
_NEAR = F32(1e-4)  # candidates considered for the in set: s >= M*(1 - 1e-4)


def best_index_iq2nl_t(a: np.ndarray, shifted: np.ndarray) -> np.ndarray:
    """best_index_iq2nl(values or shifted values per column, a) for float32 a (16, nb) -> uint8 0..3."""
    thr = np.where(np.asarray(shifted)[None, :], _THR[1][:, None], _THR[0][:, None])  # (3, nb)
    lv = (a >= thr[0]).view(np.uint8)
    lv += (a >= thr[1]).view(np.uint8)
    lv += (a >= thr[2]).view(np.uint8)
    nan = np.isnan(a)
    if nan.any():
        lv[nan] = 2
    return lv


def _prefix(xs: np.ndarray, ws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's sumx, sumw (17, n) float32 of sorted xs, ws (16, n): sumx[j+1] = sumx[j] + w*x from +0."""
    n = xs.shape[1]
    sx = np.empty((BLOCK + 1, n), F32)
    sw = np.empty((BLOCK + 1, n), F32)
    sx[0] = 0
    sw[0] = 0
    np.cumsum(ws * xs, axis=0, out=sx[1:])  # accumulate: strictly in index order
    np.cumsum(ws, axis=0, out=sw[1:])
    sx += F32(0)  # C's sums start from +0, so they are never -0
    sw += F32(0)
    return sx, sw


def _candidate_sums(sx: np.ndarray, sw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sumqx, sumq2) (NCAND, n) float32 of every candidate in C's order from the prefix sums."""
    n = sx.shape[1]
    dmx = sx[None, :BLOCK] - sx[:BLOCK, None]  # [i, j] = sumx[j] - sumx[i]
    dmw = sw[None, :BLOCK] - sw[:BLOCK, None]
    d0x, d0w = sx[:BLOCK] - sx[0], sw[:BLOCK] - sw[0]  # first group (0, i1)
    d3x, d3w = sx[BLOCK] - sx[:BLOCK], sw[BLOCK] - sw[:BLOCK]  # last group (i3, 16)
    px: dict[tuple[str, int], np.ndarray] = {}
    pw: dict[tuple[str, int], np.ndarray] = {}

    def prod(dx: np.ndarray, dw: np.ndarray, v: int, key: tuple[str, int]) -> None:
        if key not in px:
            px[key] = dx * _VALS[v]
            pw[key] = (dw * _VALS[v]) * _VALS[v]

    for vs in _SETS:
        prod(d0x, d0w, vs[0], ("0", vs[0]))
        prod(dmx, dmw, vs[1], ("m", vs[1]))
        prod(dmx, dmw, vs[2], ("m", vs[2]))
        prod(d3x, d3w, vs[3], ("3", vs[3]))
    SX = np.empty((NCAND, n), F32)
    S2 = np.empty((NCAND, n), F32)
    tabs = [(px[("0", v0)], px[("m", v1)], px[("m", v2)], px[("3", v3)],
             pw[("0", v0)], pw[("m", v1)], pw[("m", v2)], pw[("3", v3)]) for v0, v1, v2, v3 in _SETS]
    ax = np.empty(n, F32)
    for i1, i2 in _PAIRS:
        base = _BASE[i1, i2]
        n3 = BLOCK - i2
        bx = SX[base: base + 4 * n3].reshape(n3, 4, n)
        b2 = S2[base: base + 4 * n3].reshape(n3, 4, n)
        for k, (x0, x1, x2, x3, w0, w1, w2, w3) in enumerate(tabs):
            np.add(x0[i1], x1[i1, i2], out=ax)  # C: ((a + b) + c) + e
            o = bx[:, k]
            np.add(ax, x2[i2, i2:], out=o)
            o += x3[i2:]
            np.add(w0[i1], w1[i1, i2], out=ax)
            o = b2[:, k]
            np.add(ax, w2[i2, i2:], out=o)
            o += w3[i2:]
    return SX, S2


def _float_safe(M: np.ndarray, swt: np.ndarray, sabs: np.ndarray) -> np.ndarray:
    """Blocks whose candidate sums stay far from float32 under/overflow (M: max score, swt: sum of
    weights, sabs: 31*sum |w*x| >= |sumqx|), so that C's comparisons err by a few ulps only."""
    with np.errstate(all="ignore"):
        ok = (M >= 1e-30) & (M <= 1e35) & (swt >= 1e-30) & (swt * M >= 1e-30) & (swt * M <= 1e33)
        ok &= (sabs <= 1e18) & (M >= sabs * 1e-30)
    return ok


def _inset_replay(bi: np.ndarray, ci: np.ndarray, sxv: np.ndarray, s2v: np.ndarray, scv: np.ndarray,
                  floor: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C's scan for n blocks from a list of their candidates (block bi, C index ci, float32 sumqx,
    sumq2, score), every unlisted candidate of block b scoring below floor[b].

    The in set of a block is its listed candidates from the top score down to the first relative gap
    > _GAP; it is replayed in C's order. Returns (d, winning C index or -1, ok): ok is False where
    the argument does not hold (no gap above the floor, or no candidates)."""
    d = np.zeros(n, F32)
    cb = np.full(n, -1, np.int64)
    ok = np.zeros(n, np.bool_)
    if bi.size == 0:
        return d, cb, ok
    o = np.lexsort((-scv, bi))  # by block, score descending
    bi, ci, sxv, s2v, scv = bi[o], ci[o], sxv[o], s2v[o], scv[o]
    first = np.ones(bi.size, np.bool_)
    first[1:] = bi[1:] != bi[:-1]
    gap = np.zeros(bi.size, np.bool_)  # a gap right below this entry
    gap[:-1] = (~first[1:]) & (scv[1:] < scv[:-1] * (F32(1) - _GAP))
    start = np.flatnonzero(first)
    counts = np.diff(np.append(start, bi.size))
    g: np.ndarray = np.cumsum(gap, dtype=np.int64) - gap  # gaps above each entry
    g -= np.repeat(g[start], counts)
    inset: np.ndarray = g == 0
    # lowest in-set score per block, must clear the unlisted candidates by the gap
    low = np.minimum.reduceat(np.where(inset, scv, np.inf), start)
    blk = bi[start]
    good = low.astype(np.float64) * (1 - float(_GAP)) >= floor[blk]
    ok[blk] = good
    keep = inset & ok[bi]
    bi, ci, sxv, s2v = bi[keep], ci[keep], sxv[keep], s2v[keep]
    o = np.lexsort((ci, bi))  # C's order within each block
    bi, ci, sxv, s2v = bi[o], ci[o], sxv[o], s2v[o]
    if bi.size == 0:
        return d, cb, ok
    first = np.ones(bi.size, np.bool_)
    first[1:] = bi[1:] != bi[:-1]
    start = np.flatnonzero(first)
    rank = np.arange(bi.size) - np.repeat(start, np.diff(np.append(start, bi.size)))
    best = np.zeros(n, F32)
    for r in range(int(rank.max()) + 1):
        m = rank == r
        _replay(bi[m], ci[m], sxv[m], s2v[m], d, best, cb)
    return d, cb, ok


def _replay(cols: np.ndarray, cands: np.ndarray, sx: np.ndarray, s2: np.ndarray,
            d: np.ndarray, best: np.ndarray, cbest: np.ndarray) -> None:
    """One step of C's scan for blocks cols (distinct): candidate cands with sums sx, s2;
    `if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {d = sumqx/sumq2; best = d*sumqx;}`, in place."""
    take = (s2 > 0) & (sx * sx > best[cols] * s2)
    if take.any():
        c = cols[take]
        dn = sx[take] / s2[take]
        d[c] = dn
        best[c] = dn * sx[take]
        cbest[c] = cands[take]


def _search_direct(sx: np.ndarray, sw: np.ndarray, sabs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The search on prefix sums sx, sw (17, n) from all candidates' sums -> (d (n,), C index of the
    winner or -1). Blocks outside the gap argument get C's full scan in C's order."""
    n = sx.shape[1]
    if n == 1:  # numpy reduces a lone column pairwise: work on two copies
        d, cb = _search_direct(np.repeat(sx, 2, axis=1), np.repeat(sw, 2, axis=1), np.repeat(sabs, 2))
        return d[:1], cb[:1]
    SX, S2 = _candidate_sums(sx, sw)
    with np.errstate(all="ignore"):
        SC = SX * SX
        SC /= S2
    M = SC.max(axis=0)
    safe = _float_safe(M, sw[BLOCK], sabs)
    thr = M * (F32(1) - _NEAR)
    near = SC >= thr[None, :]
    near[:, ~safe] = False
    ci, bi = np.divmod(np.flatnonzero(near), near.shape[1])
    floor = np.where(safe, thr.astype(np.float64), np.inf)
    d, cb, ok = _inset_replay(bi, ci, SX[ci, bi], S2[ci, bi], SC[ci, bi], floor, n)
    fb = np.flatnonzero(~ok)
    if fb.size:  # C's full scan, in C's order
        df = np.zeros(fb.size, F32)
        bf = np.zeros(fb.size, F32)
        cf = np.full(fb.size, -1, np.int64)
        loc = np.arange(fb.size)
        for c in range(NCAND):
            _replay(loc, np.full(fb.size, c), SX[c, fb], S2[c, fb], df, bf, cf)
        d[fb] = df
        cb[fb] = cf
    return d, cb


# --- pruned search -----------------------------------------------------------------------------
# Real arithmetic on the float32 prefix sums: with e_j = sumx[j+1] - sumx[j] and o_j = sumw[j+1] -
# sumw[j] (exact in float64), a candidate's sums are, up to C's last 7 roundings, V = sum_g v_g *
# (sumx[b_g] - sumx[a_g]) = sum_j v(j)*e_j and V2 = sum_j v(j)^2*o_j, and its score
# V^2/V2 = max_d phi(d), phi(d) = sum_j psi_j(d, v(j)), psi_j(d, q) = 2*d*e_j*q - d^2*o_j*q^2.
# C's group 3 is never empty, so element 15 (the largest x) always sits at the set's group-3 level:
# per table (values or shifted values) and level of element 15 (the top or the bottom level, i.e.
# the ascending or the descending set), F(d) = sum_{j<15} max_q psi_j(d, q) + psi_15(d, fixed)
# bounds phi(d) of every candidate of that set. A sweep over the breakpoints d = x_j/m_a (x_j =
# e_j/o_j, m_a the level midpoints), where one element moves to the next level, visits the nearest
# assignments on each side of d = 0; their scores are all <= max F and the best is max F, so M,
# the best over tables, sides and element-15 levels, bounds every candidate. A candidate scoring
# >= theta = M*(1 - eps) has its d where F(d) >= theta (within the pieces of the states scoring
# >= theta), and each element at a level whose loss psi_j(d, nearest) - psi_j(d, level) is
# <= M - theta there: per table, side and set, a box of split points holds every such candidate.
# The listed candidates' float32 sums are C's exactly; _inset_replay decides with floor =
# theta*(1 + eta), eta bounding C's 7 roundings for an unlisted candidate. Blocks where anything is
# out of the ordinary (or a box is large) go to _search_direct.

_U4 = (_VALS[:4].astype(np.float64), _VALS[4:].astype(np.float64))  # ascending levels, both tables
_EPS_E = 2e-4
_BOX_CAP = 256
_U = 2.0 ** -24
# sweep events per element j and midpoint a: the move when |d| falls below |x_j/m_a|
# (a = 0: level 1 -> 0, a = 1: 2 -> 1, a = 2: 2 -> 3; the same on both sides of d = 0)
_MOVES = ((1, 0), (2, 1), (2, 3))
_NFREE = BLOCK - 1  # element 15 is C's group 3 (i3 <= 15): held apart from the sweep
_NEV = 3 * _NFREE
_IDX_BITS = np.int64(63)
_POS = np.arange(_NEV + 1)


def _sweep(e: np.ndarray, ome: np.ndarray, xv: np.ndarray, u: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breakpoint sweep of elements 0..14 for levels u on both sides of d = 0; e, ome (o where
    x != 0, else 0), xv (n, 15) float64. Returns (ks, F, F2): ks (n, 45) the sorted signed
    breakpoints, F, F2 (46, n) the sums of the moves 0..p-1 in that order. With c, c2 the sums at
    level 2 (the state at |d| = inf) and T = F[45], the states on d's side are
    d < 0: Vx = c + F[p] for p = 0..#negative keys, |d| in [-ks[p] (or 0), -ks[p-1] (or inf)];
    d > 0: Vx = c + T - F[p] for p = #non-positive keys..45, d in [ks[p-1] (or 0), ks[p] (or inf)]."""
    n = e.shape[0]
    m = (u[:-1] + u[1:]) / 2
    keys = np.empty((n, _NEV))
    dx = np.empty(n * _NEV)
    d2 = np.empty(n * _NEV)
    dxv = dx.reshape(n, _NEV)
    d2v = d2.reshape(n, _NEV)
    for a, (fr, to) in enumerate(_MOVES):
        sl = slice(_NFREE * a, _NFREE * a + _NFREE)
        np.divide(xv, m[a], out=keys[:, sl])  # 0 for elements without moves (x = 0 or o = 0)
        np.multiply(e, u[to] - u[fr], out=dxv[:, sl])
        np.multiply(ome, u[to] ** 2 - u[fr] ** 2, out=d2v[:, sl])
    kb = keys.view(np.int64)  # the event index in the low mantissa bits (2^-46 relative)
    kb &= ~_IDX_BITS
    kb |= np.arange(_NEV, dtype=np.int64)
    ks = np.sort(keys, axis=1)
    idx = ks.view(np.int64) & _IDX_BITS
    idx += (np.arange(n, dtype=np.int64) * _NEV)[:, None]
    idt = idx.T  # (45, n): the moves in sweep order, a row per step
    F = np.empty((_NEV + 1, n))
    F2 = np.empty((_NEV + 1, n))
    F[0] = 0
    F2[0] = 0
    mx = np.take(dx, idt)
    m2 = np.take(d2, idt)
    for p in range(_NEV):
        np.add(F[p], mx[p], out=F[p + 1])
        np.add(F2[p], m2[p], out=F2[p + 1])
    return ks, F, F2


def _side_states(ks: np.ndarray, F: np.ndarray, F2: np.ndarray, c: np.ndarray, c2: np.ndarray,
                 side: int) -> tuple[np.ndarray, np.ndarray]:
    """(side*Vx, V2) (46, n) of the states on d's side (see _sweep); V2 = inf for the positions
    that are no state of that side (their scores come out 0)."""
    if side < 0:
        vp = F + c
        np.negative(vp, out=vp)
        v2 = F2 + c2
        bad = _POS[:, None] > (ks < 0).sum(axis=1)
    else:
        vp = (c + F[-1]) - F
        v2 = (c2 + F2[-1]) - F2
        bad = _POS[:, None] < (ks <= 0).sum(axis=1)
    np.copyto(v2, np.inf, where=bad)
    return vp, v2


def _piece(ks: np.ndarray, b: np.ndarray, p: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """|d| range [tlo, thi] of states p of blocks b on d's side."""
    n1 = _NEV
    prv = ks[b, np.maximum(p - 1, 0)]
    nxt = ks[b, np.minimum(p, n1 - 1)]
    if side < 0:
        thi = np.where(p > 0, -prv, np.inf)
        tlo = np.where((p < n1) & (nxt < 0), -nxt, 0.0)
    else:
        thi = np.where(p < n1, nxt, np.inf)
        tlo = np.where((p > 0) & (prv > 0), prv, 0.0)
    return tlo, thi


def _allowed_levels(e: np.ndarray, om: np.ndarray, xv: np.ndarray, u: np.ndarray, side: np.ndarray,
                    t1: np.ndarray, t2: np.ndarray, budget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The levels (lowest, highest) (m, 15) that element j (of rows e, om, xv (m, 15), levels u
    (m, 4), d's side (m,)) may take in an assignment scoring >= theta with d = side*t, t in [t1, t2]
    (m,). The loss psi(d, nearest) - psi(d, l) is unimodal in l (psi is concave in the level
    value), so from the nearest level at one t of the range the allowed levels grow outwards while
    the step's own loss lower bound, min over t of psi(d, l) - psi(d, l'), stays <= budget (l' the
    level one step back)."""
    sd = side.astype(np.float64)[:, None]
    dm = (sd * (0.5 * (t1 + t2))[:, None])  # one d of the range
    t1 = t1[:, None]
    t2 = t2[:, None]
    bud = budget[:, None]
    lvl = np.zeros(e.shape, np.int64)
    for a in range(3):  # nearest level at dm: x/dm >= midpoint
        mid = dm * (0.5 * (u[:, a] + u[:, a + 1]))[:, None]
        lvl += np.where(sd > 0, mid <= xv, xv <= mid)
    up = []  # level a+1 reachable from a
    dn = []  # level a reachable from a+1
    for a in range(3):
        ua, ub = u[:, a, None], u[:, a + 1, None]
        al = (2.0 * sd * (ub - ua)) * e  # g(t) = psi(d, u[a+1]) - psi(d, u[a]) = al*t - ga*t^2
        ga = (ub * ub - ua * ua) * om  # <= 0 for a = 0, 1 and >= 0 for a = 2 (both tables)
        g1 = al * t1 - ga * (t1 * t1)
        g2 = al * t2 - ga * (t2 * t2)
        with np.errstate(all="ignore"):
            tv = np.clip(al / (2.0 * ga), t1, t2)  # the vertex: a minimum of g if ga < 0, else a maximum
        gv = al * tv - ga * (tv * tv)
        gv[~np.isfinite(gv)] = np.inf if a < 2 else -np.inf  # ga == 0: g is linear, the ends decide
        lo_g, hi_g = np.minimum(g1, g2), np.maximum(g1, g2)
        if a < 2:
            np.minimum(lo_g, gv, out=lo_g)
        else:
            np.maximum(hi_g, gv, out=hi_g)
        up.append(-hi_g <= bud)  # min over t of psi(a) - psi(a+1)
        dn.append(lo_g <= bud)
    lo = lvl.copy()
    hi = lvl
    for a in (2, 1, 0):  # downwards: a allowed if a+1 is and the step a+1 -> a is
        lo -= (lo == a + 1) & dn[a]
    for a in range(3):
        hi += (hi == a) & up[a]
    return lo, hi


def _box(glo: np.ndarray, ghi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split points lo, hi (3, m) of the candidates putting each element j < 15 in a group of
    [glo, ghi] (m, 15) and element 15 in group 3: split t comes after every element that must be in
    a group <= t and at or before every element that must be in a group > t."""
    j = np.arange(15)
    lo = np.empty((3, glo.shape[0]), np.int64)
    hi = np.empty((3, glo.shape[0]), np.int64)
    for t in range(3):
        lo[t] = np.where(ghi <= t, j + 1, 0).max(axis=1)
        hi[t] = np.where(glo >= t + 1, j, 15).min(axis=1)  # element 15 is in group 3
    return lo, hi


def _enumerate(lo: np.ndarray, hi: np.ndarray, blocks: np.ndarray, k: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidates (block, set, i1, i2, i3), i1 <= i2 <= i3 <= 15, of the boxes lo..hi (3, m) of
    blocks (m,) and sets k (m,)."""
    r = np.maximum(hi - lo + 1, 0)
    size = r[0] * r[1] * r[2]
    ent = np.repeat(np.arange(size.size), size)
    loc = np.arange(ent.size) - np.repeat(np.cumsum(size) - size, size)
    r12 = (r[1] * r[2])[ent]
    i1 = lo[0][ent] + loc // r12
    rem = loc % r12
    i2 = lo[1][ent] + rem // r[2][ent]
    i3 = lo[2][ent] + rem % r[2][ent]
    keep = (i1 <= i2) & (i2 <= i3) & (i3 <= 15)
    ent = ent[keep]
    return blocks[ent], k[ent], i1[keep], i2[keep], i3[keep]


_BASE_T = np.zeros((16, 16), np.int64)
for (_a, _b), _v in _BASE.items():
    _BASE_T[_a, _b] = _v
_SETV = np.array([[_VALS[i] for i in s] for s in _SETS], dtype=F32)  # C's group values per set


def _exact_sums(sx: np.ndarray, sw: np.ndarray, b: np.ndarray, k: np.ndarray, i1: np.ndarray,
                i2: np.ndarray, i3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's float32 sumqx, sumq2 of the listed candidates (sx, sw (17, n) prefix sums)."""
    v = _SETV[k]  # (m, 4)
    s0, s1, s2, s3, s16 = sx[0, b], sx[i1, b], sx[i2, b], sx[i3, b], sx[BLOCK, b]
    w0, w1, w2, w3, w16 = sw[0, b], sw[i1, b], sw[i2, b], sw[i3, b], sw[BLOCK, b]
    sqx = (((s1 - s0) * v[:, 0] + (s2 - s1) * v[:, 1]) + (s3 - s2) * v[:, 2]) + (s16 - s3) * v[:, 3]
    sq2 = ((((w1 - w0) * v[:, 0]) * v[:, 0] + ((w2 - w1) * v[:, 1]) * v[:, 1])
           + ((w3 - w2) * v[:, 2]) * v[:, 2]) + ((w16 - w3) * v[:, 3]) * v[:, 3]
    return sqx, sq2


def _terms(sx: np.ndarray, sw: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per element (n, 16) float64: e = sumx[j+1] - sumx[j], o = sumw[j+1] - sumw[j] (exact), the
    breakpoint position x = e/o (+-1e300 where o == 0 < |e|: a weight lost in sumw's rounding, whose
    psi = 2*d*e*q takes an end level on each side of d = 0; 0 where e == 0), and o where x != 0."""
    s64 = sx.T.astype(np.float64)
    w64 = sw.T.astype(np.float64)
    e = s64[:, 1:] - s64[:, :-1]
    om = w64[:, 1:] - w64[:, :-1]
    pos = om > 0
    xv = np.divide(e, om, out=np.zeros_like(e), where=pos)
    lin = ~pos & (e != 0)
    if lin.any():
        xv[lin] = np.copysign(1e300, e[lin])
    ome = np.where(xv != 0, om, 0.0)  # elements at x = 0 never move
    return e, om, xv, ome


def _top_states(e: np.ndarray, om: np.ndarray, xv: np.ndarray, ome: np.ndarray
                ) -> tuple[np.ndarray, dict, dict]:
    """The sweeps of both tables and sides -> (M (n,), sweeps[table, side] = (ks, vp, v2) of the free
    elements, scores[table, side, own] (46, n) float32 with element 15 at the group-3 level of the
    set whose natural side this is (own) or of the other set), and M their maximum. The scores are
    float32 from the float64 sums (see _search_pruned for their error bound)."""
    n = e.shape[0]
    ef, of = e[:, :15], om[:, :15]
    e15, o15 = e[:, 15].astype(F32), om[:, 15].astype(F32)
    esum, osum = ef.sum(axis=1), of.sum(axis=1)
    M = np.zeros(n, F32)
    sweeps = {}
    scores = {}
    vq = np.empty((_NEV + 1, n), F32)
    wq = np.empty((_NEV + 1, n), F32)
    for si in (0, 1):
        u = _U4[si]
        ks, F, F2 = _sweep(ef, ome[:, :15], xv[:, :15], u)
        for side in (1, -1):
            vp, v2 = _side_states(ks, F, F2, esum * u[2], osum * (u[2] * u[2]), side)
            sweeps[si, side] = (ks, vp, v2)
            vp32 = vp.astype(F32)
            v232 = v2.astype(F32)
            for own in (True, False):
                l15 = u[3] if (side > 0) == own else u[0]
                with np.errstate(all="ignore"):
                    np.add(vp32, F32(side * l15) * e15, out=vq)
                    np.add(v232, F32(l15 * l15) * o15, out=wq)
                    sc = np.multiply(vq, vq)
                    sc /= wq
                np.maximum(M, sc.max(axis=0), out=M)
                scores[si, side, own] = sc
    return M.astype(np.float64), sweeps, scores


def _hull(ks: np.ndarray, vp: np.ndarray, v2: np.ndarray, a15: np.ndarray, b15: np.ndarray,
          sc: np.ndarray, theta: np.ndarray, floor32: np.ndarray, side: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The states (sums vp + a15, v2 + b15, all (46, n); float32 scores sc, >= floor32 (n,) where the
    exact score is >= theta) with 2*|d|*vp - d^2*v2 >= theta for some |d| in their piece ->
    (block, lowest, highest such |d|)."""
    p, b = np.divmod(np.flatnonzero(sc >= floor32), sc.shape[1])  # (2-D np.nonzero is slow)
    tlo, thi = _piece(ks, b, p, side)
    vpb, v2b, th = vp[p, b] + a15[b], v2[p, b] + b15[b], theta[b]
    with np.errstate(all="ignore"):
        disc = vpb * vpb - th * v2b
        rt = np.sqrt(np.maximum(disc, 0.0))
        a1 = np.maximum((vpb - rt) / v2b, tlo)
        a2 = np.minimum((vpb + rt) / v2b, thi)
    rel = (vpb > 0) & (disc >= 0) & (a1 <= a2)
    return b[rel], a1[rel], a2[rel]


def _search_pruned(sx: np.ndarray, sw: np.ndarray, sabs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The search from the candidates of the boxes -> (d, C index of the winner or -1, ok (n,))."""
    n = sx.shape[1]
    e, om, xv, ome = _terms(sx, sw)
    M32, sweeps, scores = _top_states(e, om, xv, ome)
    ok = np.isfinite(M32) & (M32 > 0)
    Ms = np.where(ok, M32, 1.0)
    # rel = E/sqrt(M*W) (E = sum |e_j|, W = sum o_j) scales every rounding error below: a state or
    # candidate scoring >= M/2 has |Vx| >= sqrt(M/2*V2) >= sqrt(M/2*W) (|levels| >= 1), while its
    # terms add up to <= 31*E in magnitude.
    with np.errstate(all="ignore"):
        rel = np.abs(e).sum(axis=1) / np.sqrt(0.5 * Ms * om.sum(axis=1))
    # float32 state scores: |Vx32 - Vx| <= u*(|vp| + 2*|a*e15| + |Vx|) <= u*(62*E + |Vx|), V2 within
    # 3u, 2 more roundings: the score is within kappa of the exact one, M*(1 + kappa) bounds them all
    kappa = 2 * _U * (62 * rel + 1) + 6 * _U
    Ms = Ms * (1 + kappa)
    # C's float32 sums of an unlisted candidate: |sumqx - V| <= 6u*31*E, sumq2 within 6u of V2
    r = (6 * _U * 31) * rel
    eta = 2 * r + r * r + 10 * _U
    eps = np.maximum(_EPS_E, 4 * eta + 4 * kappa + 4 * float(_GAP))
    ok &= np.isfinite(eps) & (eps <= 1e-2)
    theta = Ms * (1 - eps)
    floor32 = (theta * (1 - 2 * kappa) * (1 - 1e-7)).astype(F32)
    budget = (Ms - theta) * (1 + 1e-6) + 1e-12 * Ms
    # d ranges per (block, table, side): key = 4*block + 2*table + (side < 0)
    t1 = np.full(4 * n, np.inf)
    t2 = np.full(4 * n, -np.inf)
    fam = np.zeros((2, 4 * n), np.bool_)  # which C sets (groups ascending / descending in level) to list
    for (si, side), (ks, vp0, v20) in sweeps.items():
        u = _U4[si]
        for own in (True, False):  # element 15 at the group-3 level of the set with groups = levels
            l15 = u[3] if (side > 0) == own else u[0]  # (d > 0, own) or (d < 0, not own), or reversed
            b, a1, a2 = _hull(ks, vp0, v20, (side * l15) * e[:, 15], (l15 * l15) * om[:, 15],
                              scores[si, side, own], theta, floor32, side)
            key = 4 * b + 2 * si + (side < 0)
            np.minimum.at(t1, key, a1)
            np.maximum.at(t2, key, a2)
            fam[0 if (side > 0) == own else 1, key] = True
    key = np.flatnonzero(t1 <= t2)
    key = key[ok[key // 4]]
    b, si, neg = key // 4, (key // 2) % 2, key % 2 == 1
    side = np.where(neg, -1, 1)
    u = np.stack(_U4)[si]
    llo, lhi = _allowed_levels(e[b, :15], om[b, :15], xv[b, :15], u, side, t1[key] * (1 - 1e-9),
                               t2[key] * (1 + 1e-9), budget[b])
    rows = []
    for asc in (True, False):
        sel = np.flatnonzero(fam[0 if asc else 1, key])
        lo, hi = _box(llo[sel], lhi[sel]) if asc else _box(3 - lhi[sel], 3 - llo[sel])  # descending: 3 - level
        size = np.prod(np.maximum(hi - lo + 1, 0), axis=0)
        big = size > _BOX_CAP
        ok[b[sel[big]]] = False
        rows.append((lo[:, ~big], hi[:, ~big], b[sel[~big]], si[sel[~big]] + (0 if asc else 2)))
    b, k, i1, i2, i3 = _enumerate(*(np.concatenate(c, axis=-1) for c in zip(*rows, strict=True)))
    keep = ok[b]
    b, k, i1, i2, i3 = b[keep], k[keep], i1[keep], i2[keep], i3[keep]
    sqx, sq2 = _exact_sums(sx, sw, b, k, i1, i2, i3)
    with np.errstate(all="ignore"):
        scf = (sqx * sqx) / sq2
    ci = _BASE_T[i1, i2] + 4 * (i3 - i2) + k
    Mf = np.zeros(n, F32)
    np.maximum.at(Mf, b, np.where(np.isfinite(scf), scf, F32(0)))
    ok &= _float_safe(Mf, sw[BLOCK], sabs)
    floor = np.where(ok, theta * (1 + eta), np.inf)
    d, cb, good = _inset_replay(b, ci, sqx, sq2, scf, floor, n)
    return d, cb, good & ok


def scale_search_iq2_k_t(xt: np.ndarray, wt: np.ndarray, pruned: bool = True
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-block part of quantize_row_iq2_k_impl on xt, wt (16, nb) -> (scale float32 (nb,),
    shifted bool (nb,), sw float32 (nb,)); blocks with max|x| < 1e-16 get scale 0. pruned=False
    evaluates every candidate (the reference path, also the fallback of the pruned search)."""
    nb = xt.shape[1]
    sw = np.add.reduce(wt, axis=0) + F32(0)
    amax, _ = absmax_t(xt)
    cols = np.flatnonzero(amax >= F32(1e-16))
    d = np.zeros(nb, F32)
    cbest = np.full(nb, -1, np.int64)
    if cols.size:
        xo = xt[:, cols]
        wo = wt[:, cols]
        order = np.argsort(np.ascontiguousarray(xo.T) + F32(0), axis=1, kind="stable").T  # (x, index)
        xs = np.take_along_axis(xo, order, axis=0)
        ws = np.take_along_axis(wo, order, axis=0)
        sx, swp = _prefix(xs, ws)
        sabs = np.add.reduce(ws * np.abs(xs), axis=0) * F32(31)  # bounds |sumqx|
        if pruned:
            do, co, ok = _search_pruned(sx, swp, sabs)
        else:
            do, co, ok = np.zeros(cols.size, F32), np.full(cols.size, -1, np.int64), np.zeros(cols.size, np.bool_)
        fb = np.flatnonzero(~ok)
        if fb.size:
            do[fb], co[fb] = _search_direct(sx[:, fb], swp[:, fb], sabs[fb])
        d[cols] = do
        cbest[cols] = co
    shifted = (cbest >= 0) & ((cbest & 1) == 1)
    return d, shifted, sw


_QX_TRIES = np.array([0.0] + [i for i in range(-9, 10) if i], dtype=F32)  # 0: the first candidate


def make_qx_quants_iqk_t(xt: np.ndarray, qwt: np.ndarray, nmax: int) -> np.ndarray:
    """ik's iqk_quantize.cpp make_qx_quants(n, nmax, x, L, qw) on columns xt, qwt (n, nb), nb >= 2
    -> scale (nb,): iscale -nmax/max, then -(nmax + 0.1f*is)/max for is = -9..9 (is != 0);
    l = clamp(nearest_int(iscale*x), -nmax, nmax-1); sumlx = sum (qw*x)*l, suml2 = sum (qw*l)*l;
    first scale = sumlx/suml2 (0 if suml2 == 0), later ones when suml2 > 0 and
    sumlx^2 > best*suml2. All 19 candidates' sums at once: (19, n, nb), reduced in index order."""
    amax, mx = absmax_t(xt)
    live = amax != 0
    mx = np.where(live, mx, F32(1))
    num = np.concatenate([[F32(-nmax)], -(F32(nmax) + F32(0.1) * _QX_TRIES[1:])]).astype(F32)
    isc = num[:, None] / mx[None, :]  # (19, nb)
    lv = nearest_int(isc[:, None, :] * xt[None])
    np.clip(lv, -nmax, nmax - 1, out=lv)
    lf = lv.astype(F32)
    slx = np.add.reduce((qwt * xt)[None] * lf, axis=1) + F32(0)
    sl2 = np.add.reduce((qwt[None] * lf) * lf, axis=1) + F32(0)
    scale = np.where(sl2[0] != 0, slx[0] / np.where(sl2[0] != 0, sl2[0], F32(1)), F32(0))
    best = scale * slx[0]
    for i in range(1, num.size):
        take = (sl2[i] > 0) & (slx[i] * slx[i] > best * sl2[i])
        if take.any():
            sc = slx[i] / np.where(take, sl2[i], F32(1))
            scale = np.where(take, sc, scale)
            best = np.where(take, sc * slx[i], best)
    return np.where(live, scale, F32(0))


def _quantize_chunk(xs: np.ndarray, qwt_row: np.ndarray | None) -> np.ndarray:
    """quantize_row_iq2_k_impl on super-blocks xs (nsb, 256) -> BLOCK_IQ2_K (nsb,); qwt_row: the
    imatrix as (16, nsb*16) columns of these blocks (before QHelper's guard), or None."""
    nsb = xs.shape[0]
    nb = nsb * 16
    xt = np.ascontiguousarray(xs.reshape(nb, BLOCK).T)
    sigma2 = np.repeat(superblock_sigma2(xs), 16)
    qwt = None if qwt_row is None else guarded_imatrix_t(xt, qwt_row)
    wt = weights_t(xt, qwt, sigma2)
    scales, shifted, sw = scale_search_iq2_k_t(xt, wt)

    sc = scales.reshape(nsb, 16)
    sh = shifted.reshape(nsb, 16)
    max_abs = np.max(np.abs(sc), axis=1)
    sct = np.ascontiguousarray(sc.T)
    swt = np.ascontiguousarray(sw.reshape(nsb, 16).T)
    if nsb == 1:  # keep >= 2 columns for in-order reductions
        d = make_qx_quants_iqk_t(np.repeat(sct, 2, axis=1), np.repeat(swt, 2, axis=1), 8)[:1]
    else:
        d = make_qx_quants_iqk_t(sct, swt, 8)
    live = (max_abs != 0) & (d != 0)
    idd = F32(1) / np.where(live, d, F32(1))
    ls = np.clip(nearest_int(idd[:, None] * sc), -8, 7)
    dl = d[:, None] * ls.astype(F32)
    use = (dl != 0) & live[:, None]
    idl = F32(1) / np.where(use, dl, F32(1))
    al = xt * idl.reshape(nb)
    shb = sh.reshape(nb)
    lv = best_index_iq2nl_t(al, shb)
    q = _VALS[lv + np.where(shb, np.uint8(4), np.uint8(0))[None, :]] * ls.reshape(nb).astype(F32)
    dfin = superblock_refit(xt, wt, q, use, d, F32(1.030))

    out = np.zeros(nsb, BLOCK_IQ2_K)
    lvb = np.ascontiguousarray(lv.T).reshape(nsb, 256)
    lvb[~use.repeat(16, axis=1)] = 0
    lo = lvb.reshape(nsb, 2, 4, 32)
    qs = lo[:, :, 0] | (lo[:, :, 1] << np.uint8(2)) | (lo[:, :, 2] << np.uint8(4)) | (lo[:, :, 3] << np.uint8(6))
    scl = (ls + 8).astype(np.uint8)
    extra = (sh.astype(np.uint16) << np.arange(16, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)
    out["d"] = np.where(live, fp16_bits(dfin), 0)
    out["extra"] = np.where(live, extra, 0)
    out["scales"] = np.where(live[:, None], scl[:, 0::2] | (scl[:, 1::2] << np.uint8(4)), 0)
    out["qs"] = np.where(live[:, None], qs.reshape(nsb, 64), 0)
    return out


@ieee
def quantize_iq2_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq2_k: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, n/256*76)."""
    return quantize_superblocks(rows, imatrix, "IQ2_K", BLOCK_IQ2_K, _quantize_chunk, _CHUNK_SB)


def dequantize_iq2_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq2_k: uint8 (nrows, n/256*76) -> float32 (nrows, n)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    nrows = data.shape[0]
    b = data.reshape(-1).view(BLOCK_IQ2_K)
    nsb = b.shape[0]
    d = fp16_bits_to_fp32(b["d"])
    ex = ((b["extra"][:, None] >> np.arange(16, dtype=np.uint16)) & 1).astype(np.uint8)
    ls = np.empty((nsb, 16), np.int32)
    ls[:, 0::2] = b["scales"] & 15
    ls[:, 1::2] = b["scales"] >> 4
    dl = d[:, None] * (ls - 8).astype(F32)
    i = np.arange(256)
    lv = (b["qs"][:, 32 * (i // 128) + i % 32] >> (2 * ((i % 128) // 32)).astype(np.uint8)) & 3
    y = dl[:, :, None] * _VALS[lv.reshape(nsb, 16, 16) + (4 * ex)[:, :, None]]
    return y.reshape(nrows, n_per_row)


QUANTIZE = {"IQ2_K": quantize_iq2_k}
DEQUANTIZE = {"IQ2_K": dequantize_iq2_k}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())  # ik_llama.cpp's own type
