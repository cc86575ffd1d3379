"""ik_llama.cpp's IQ2_KS: blocks of 32 non-linear 2-bit levels, an fp16 scale per row.

Ports of ggml/src/iqk/iqk_quantize.cpp, byte-exact with the -ffp-contract=off build.
`quantize_iq2_ks` calls `quantize_row_iq2_ks_impl` unless the build has AVX2 and the caller's
user_data has slow_iq2_ks unset: then `quantize_row_iq2_ks_fast_impl`, another algorithm (27+27
trial scales, explicit FMA intrinsics), runs. ggml_quantize_chunk with user_data NULL (the golden
vectors), non-AVX2 builds and `llama-quantize --slow-iq2ks` run `_impl`, which this ports; ik's
llama-quantize on x86 by default passes {false, false} and so writes `_fast_impl`'s bytes.

- Pass 1, per block of 32: weights 0.25*sigma2 + x*x, or qw*sqrtf(sigma2 + x*x) with
  sigma2 = 1.5*sumx2/256 over the super-block and qw the imatrix after QHelper; the values
  sorted (std::sort of (x, j) pairs) with prefix sums sumx (of w*x) and sumw; then every split
  i1 < 24, i1 <= i2 <= i3, 8 <= i3 < 32 of the sorted values into four runs, each run given a
  level, for the levels iq2nl_values ascending, shifted ascending, plain descending, shifted
  descending: sumqx = sum run*level, sumq2 = sum runw*level*level in C's order; a candidate
  replaces the best when sumq2 > 0 and sumqx² > best*sumq2 (d = sumqx/sumq2, best = d*sumqx),
  the block's shift bit follows the winner. `search` reproduces that winner, see below.
- Per row: make_qx_quants(nblocks*8, 16, scales, L, sw) (iqk_quantize.cpp's, weights sw = the
  block sums of weights); d = 0 ends the row there (fp16 0, shift bits only). Pass 2: per block
  ls = L - 16, levels best_index_iq2nl(values, x/(d*ls)); the row scale is
  fp16(1.030 * sumqx/sumq2) summed along the row in C's order (d when sumq2 = 0).
- `dequantize_row_iq2_ks`: y = d * (ls - 16) * values[shift + q].

The search. C keeps the running best over 22976 candidates per block (5744 splits x 4 level
orders) with float tests that are not a total order, so the order of the candidates matters
near ties. `exact_select` reproduces that scan from a subset: a candidate c is accepted at state
b iff b < theta_c (theta_c the least float with fl(theta*sumq2) >= fl(sumqx²), found exactly) and
then sets the state to k_c = fl(fl(sumqx/sumq2)*sumqx). With a cut kappa such that every
candidate has both theta and k above kappa ("strong") or both at most kappa, the scan over the
strong candidates alone, in order, ends in the same state as the full scan (before the first
strong candidate the state is <= kappa < its theta; after it, > kappa >= any weak theta). So
only the candidates near the top have to be known exactly; the rest need a bound.

`brute_search` evaluates all candidates (exact, vectorized over blocks; the reference path).
`search` (the fast path) finds the candidates near the top without enumerating them all:
see `_fast_blocks`. Blocks it cannot certify go to `brute_search`.

Row layout: fp16 d, then per super-block of 256 block_iq2_ks {extra u16, scales[4], qs[64]}.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..numeric import F32, QK_K, blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int
from ..registry import register
from .iq3_ks import BLOCK, best_index_iq2nl, chunk_rows, qhelper_weights_t, row_seq_sum, seq_sum0, superblock_sumx2
from .iqk_tables import IQ2NL_VALUES

__all__ = [
    "BLOCK_IQ2_KS", "DEQUANTIZE", "LEVELS", "QUANTIZE", "SHIFTED", "TRIPLES", "brute_search", "dequantize_iq2_ks",
    "exact_select", "make_qx_quants_rows", "quantize_iq2_ks", "search", "sorted_sums",
]

BLOCK_IQ2_KS = np.dtype([("extra", "<u2"), ("scales", "u1", (4,)), ("qs", "u1", (64,))])
assert BLOCK_IQ2_KS.itemsize == 70
K_MAX_I1 = 3 * BLOCK // 4
K_MIN_I3 = BLOCK // 4

_VAL = [int(v) for v in IQ2NL_VALUES[:4]]
_SVAL = [int(v) for v in IQ2NL_VALUES[4:]]
LEVELS = np.array([_VAL, _SVAL, _VAL[::-1], _SVAL[::-1]], dtype=np.int32)
"""The four level orders of the search, in C's order of trial within one split (levels of runs 0..3)."""
SHIFTED = np.array([False, True, False, True])


def _triples() -> np.ndarray:
    t = [(i1, i2, i3) for i1 in range(K_MAX_I1) for i2 in range(i1, BLOCK) for i3 in range(max(i2, K_MIN_I3), BLOCK)]
    return np.array(t, dtype=np.intp)


TRIPLES = _triples()
"""(5744, 3) splits (i1, i2, i3) in C's loop order."""
assert TRIPLES.shape == (5744, 3)


# --- pass 1 -------------------------------------------------------------------------------------

def sorted_sums(xt: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per block (columns): x and w sorted as std::sort orders the (x, j) pairs, and C's float
    prefix sums sumx (of w*x) and sumw, (33, nb) each, from +0."""
    order = np.argsort(xt, axis=0, kind="stable")
    xs = np.take_along_axis(xt, order, axis=0)
    ws = np.take_along_axis(wt, order, axis=0)
    nb = xt.shape[1]
    s = np.zeros((BLOCK + 1, nb), F32)
    w = np.zeros((BLOCK + 1, nb), F32)
    p = ws * xs
    for j in range(BLOCK):
        np.add(s[j], p[j], out=s[j + 1])
        np.add(w[j], ws[j], out=w[j + 1])
    return xs, ws, s, w


def candidate_sums(s: np.ndarray, w: np.ndarray, tr: np.ndarray, lv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's sumqx and sumq2 (float32 (ncand, nb)) of splits tr (ncand, 3) with levels lv (ncand, 4)
    for prefix sums s, w (33, nb)."""
    i1, i2, i3 = tr[:, 0], tr[:, 1], tr[:, 2]
    s1, s2, s3, s32 = s[i1], s[i2], s[i3], s[BLOCK]
    w1, w2, w3, w32 = w[i1], w[i2], w[i3], w[BLOCK]
    q = [lv[:, k, None].astype(F32) for k in range(4)]
    a = [s1 - s[0], s2 - s1, s3 - s2, s32 - s3]
    b = [w1 - w[0], w2 - w1, w3 - w2, w32 - w3]
    sx = a[0] * q[0] + a[1] * q[1]
    sx += a[2] * q[2]
    sx += a[3] * q[3]
    sq = (b[0] * q[0]) * q[0] + (b[1] * q[1]) * q[1]
    sq += (b[2] * q[2]) * q[2]
    sq += (b[3] * q[3]) * q[3]
    return sx, sq


def _theta(x2: np.ndarray, sq: np.ndarray) -> np.ndarray:
    """Least float32 b >= 0 with fl(b*sq) >= x2 (x2, sq > 0 finite, 1-D): the largest state at
    which a candidate is still accepted is the float just below."""
    zero = F32(0)
    inf = F32(np.inf)
    b = x2 / sq
    for _ in range(3):
        ge = (b * sq) >= x2
        dn = np.nextafter(b, zero)
        b = np.where(ge & ((dn * sq) >= x2), dn, np.where(ge, b, np.nextafter(b, inf)))
    ok = ((b * sq) >= x2) & ((np.nextafter(b, zero) * sq) < x2)
    if not ok.all():  # subnormal products: bisection on the bit patterns (monotone)
        j = np.flatnonzero(~ok)
        xs, qs = x2[j], sq[j]
        lo = np.zeros(j.size, np.int64)  # fl(0*sq) = 0 < x2
        hi = np.full(j.size, 0x7F800000, np.int64)  # inf*sq = inf >= x2
        for _ in range(32):
            mid = (lo + hi) // 2
            m = (mid.astype(np.int32).view(F32) * qs) >= xs
            hi = np.where(m, mid, hi)
            lo = np.where(m, lo, mid)
        b[j] = hi.astype(np.int32).view(F32)
    return b


_TINY = F32(2.0**-120)
_HUGE = F32(2.0**124)


def exact_select(sx: np.ndarray, sq: np.ndarray, shifted: np.ndarray, kappa_min: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The end of C's running-best scan from the candidates near the top.

    sx, sq: float32 (ncand, nb), C's sums of candidates in C's order (a column per block);
    shifted: bool (ncand,) or (ncand, nb); kappa_min (nb,): a bound on theta and k of every
    candidate of the block that is not in the columns (None: all are there).
    Returns (d, shifted, ok) (nb,): ok False where the cut cannot be made (the caller scans all)."""
    nc, nb = sx.shape
    valid = sq > 0
    x2 = sx * sx
    valid &= x2 > 0
    k = np.where(valid, (sx / np.where(valid, sq, F32(1))) * sx, F32(-np.inf))
    top = np.max(k, axis=0)
    sqv = np.where(valid, sq, F32(np.inf))
    sqmax = np.max(np.where(valid, sq, F32(0)), axis=0)
    ok = np.isfinite(top) & (top > 0) & (top * np.min(sqv, axis=0) > _TINY)  # normal products near the top
    ok &= (top * sqmax < _HUGE) & (top * _HUGE > sqmax)  # and no overflow, d = sqrt(top/sq) normal
    eta = F32(2.0**-16)
    kmin = top * (F32(1) - eta) * F32(1 + 2.0**-20)  # >= theta, k of any candidate below top*(1-eta)
    if kappa_min is not None:
        kmin = np.maximum(kmin, kappa_min)
    near = valid & (k >= (top * (F32(1) - eta))[None, :])
    near[:, ~ok] = False
    ci, fi = np.nonzero(near)
    th = _theta(x2[ci, fi], sq[ci, fi])
    kk = k[ci, fi]
    lo = np.minimum(th, kk)
    hi = np.maximum(th, kk)
    kappa = np.full(nb, -np.inf, F32)
    np.maximum.at(kappa, fi, lo)
    kappa = np.nextafter(kappa, F32(-np.inf))
    for _ in range(8):
        st = (lo <= kappa[fi]) & (hi > kappa[fi])
        if not st.any():
            break
        new = np.full(nb, np.inf, F32)
        np.minimum.at(new, fi[st], lo[st])
        kappa = np.minimum(kappa, np.nextafter(new, F32(-np.inf)))
    else:
        st = (lo <= kappa[fi]) & (hi > kappa[fi])
        bad = np.zeros(nb, bool)
        bad[fi[st]] = True
        ok &= ~bad
    ok &= kappa >= kmin
    strong = lo > kappa[fi]
    ci, fi = ci[strong], fi[strong]
    o = np.lexsort((ci, fi))
    ci, fi = ci[o], fi[o]
    sh = np.broadcast_to(np.asarray(shifted).reshape(nc, -1), (nc, nb))
    d = np.zeros(nb, F32)
    dsh = np.zeros(nb, bool)
    state = np.zeros(nb, F32)
    if ci.size:
        starts = np.flatnonzero(np.r_[True, fi[1:] != fi[:-1]])
        counts = np.diff(np.r_[starts, fi.size])
        blocks = fi[starts]
        for r in range(int(counts.max())):
            m = counts > r
            c = ci[starts[m] + r]
            b = blocks[m]
            acc = x2[c, b] > state[b] * sq[c, b]
            b, c = b[acc], c[acc]
            d[b] = sx[c, b] / sq[c, b]
            state[b] = k[c, b]
            dsh[b] = sh[c, b]
    return d, dsh, ok


def full_scan(sx: np.ndarray, sq: np.ndarray, shifted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's running-best scan over every candidate (rows of sx, sq), vectorized over columns."""
    nc, nb = sx.shape
    sh = np.broadcast_to(np.asarray(shifted).reshape(nc, -1), (nc, nb))
    best = np.zeros(nb, F32)
    d = np.zeros(nb, F32)
    dsh = np.zeros(nb, bool)
    for c in range(nc):
        s2 = sq[c]
        upd = (s2 > 0) & (sx[c] * sx[c] > best * s2)
        if upd.any():
            dn = sx[c] / s2
            d = np.where(upd, dn, d)
            best = np.where(upd, dn * sx[c], best)
            dsh = np.where(upd, sh[c], dsh)
    return d, dsh


_BRUTE_BLOCKS = 48


def brute_search(s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The winner (d, shifted) (nb,) of pass 1 from every candidate, for prefix sums (33, nb)."""
    nb = s.shape[1]
    d = np.zeros(nb, F32)
    dsh = np.zeros(nb, bool)
    tr = np.repeat(TRIPLES, 4, axis=0)  # candidate c = 4*split + order
    lv = np.tile(LEVELS, (TRIPLES.shape[0], 1))
    shc = np.tile(SHIFTED, TRIPLES.shape[0])
    for b0 in range(0, nb, _BRUTE_BLOCKS):
        sl = slice(b0, min(nb, b0 + _BRUTE_BLOCKS))
        sx, sq = candidate_sums(s[:, sl], w[:, sl], tr, lv)
        dd, hh, ok = exact_select(sx, sq, shc)
        if not ok.all():
            j = np.flatnonzero(~ok)
            dd[j], hh[j] = full_scan(sx[:, j], sq[:, j], shc)
        d[sl], dsh[sl] = dd, hh
    return d, dsh


# --- the fast path -------------------------------------------------------------------------------
#
# Real model: with the sorted values x_j, weights w_j (C's float32 numbers taken as reals) and exact
# prefix sums S[i] = sum_{j<i} w_j x_j, W[i] = sum_{j<i} w_j, a split P = (i1, i2, i3) with levels
# q (one order) has sx = q3 S[32] + sum_k (q_k - q_k+1) S[i_k], sq = q3² W[32] + sum_k (q_k² - q_k+1²) W[i_k]
# and R(P) = sx²/sq = max_d phi_P(d), phi_P(d) = 2 d sx - d² sq = C(d) + sum_k G_k(i_k; d) with
# G_k(i; d) = sum_{j<i} alpha_k w_j d (x_j - d m_k), alpha_k = 2 (q_k - q_k+1), m_k = (q_k + q_k+1)/2.
# Dropping i1 <= i2 <= i3 (keeping each i_k in its range) gives Phi(d) = C(d) + sum_k max_i G_k >= phi_P.
# With d' = s d (s = -sign alpha, m' = s m) and d' > 0, G_k(.; d) rises while x_j < d' m'_k and then
# falls: its argmax is the count c_k = #{x < d' m'_k} clamped to the range, so Phi is a sequence of
# "pieces" (between the d' where a threshold passes an x_j) on which the argmax split is fixed and
# Phi = phi of that split. For d' < 0 each G_k is largest at an end of its range (8 splits).
# A split P with R(P) >= tau has, at d = sx/sq, phi_P(d) >= tau, so d lies in a piece whose parabola
# reaches tau, and the "regrets" G_k(c_k) - G_k(i_k) (sums of |terms| of the elements between)
# add up to at most R(piece) - tau: on each active piece only small windows of splits remain.
# Those are evaluated exactly in C's float order; C's values of the others stay below a bound
# kappa_1 (from the measured differences between C's float prefix sums and the exact ones), and
# exact_select makes its cut above kappa_1. Anything uncertain goes to brute_search.

_U = 2.0**-24
_BOX_LO = np.array([0, 0, K_MIN_I3])
_BOX_HI = np.array([K_MAX_I1 - 1, BLOCK - 1, BLOCK - 1])
_WINDOW_CAP = 1024
_WINDOWS_TOTAL = 1 << 18


def _variant_consts() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]]:
    """Per level order: (q f64 (4,), m' (3,), |alpha| (3,), s, lcm of |m'|)."""
    out = []
    for q in LEVELS:
        qf = q.astype(np.float64)
        m = (qf[:-1] + qf[1:]) / 2
        alpha = 2 * (qf[:-1] - qf[1:])
        s = -float(np.sign(alpha[0]))
        assert np.all(-np.sign(alpha) == s) and np.all(m == np.round(m))
        mp = s * m
        assert np.all(np.diff(mp) > 0)
        out.append((qf, mp, np.abs(alpha), s, float(np.lcm.reduce(np.abs(mp).astype(np.int64)))))
    return out


_VCONST = _variant_consts()
_TID = np.full((BLOCK, BLOCK, BLOCK), -1, np.int64)
_TID[TRIPLES[:, 0], TRIPLES[:, 1], TRIPLES[:, 2]] = np.arange(TRIPLES.shape[0])


_MOVES = np.array([[1.0 if _BOX_LO[k] <= j < _BOX_HI[k] else 0.0 for j in range(BLOCK)] for k in range(3)])
"""Event (k, j) moves the clamped split index (elements 0..22, 0..30, 8..30)."""
_SLOT64 = np.arange(2 * BLOCK, dtype=np.int64)


def _piece_tables() -> list[dict]:
    """Per level order, tables over (half, j) for elements of each sign: key factor lcm/m' (-1:
    no event, the key comes out negative), and the moves of sx, sq per unit of w*x and w."""
    out = []
    for q, mp, _, _, lcm in _VCONST:
        kn = [k for k in range(3) if mp[k] < 0]
        kp = [k for k in range(3) if mp[k] > 0]
        sig = np.where(mp > 0, 1.0, -1.0)
        cs = (q[:-1] - q[1:]) * sig
        cq = (q[:-1] ** 2 - q[1:] ** 2) * sig
        t = {n: np.zeros((2, 2, BLOCK)) for n in ("fac", "cx", "cq")}  # [sign: 0 pos, 1 neg][half][j]
        for sgn, ks in ((0, kp), (1, kn)):
            for h in range(2):
                if h < len(ks):
                    k = ks[h]
                    t["fac"][sgn, h] = lcm / mp[k]
                    t["cx"][sgn, h] = cs[k] * _MOVES[k]
                    t["cq"][sgn, h] = cq[k] * _MOVES[k]
                else:
                    t["fac"][sgn, h] = -1.0
        out.append({"fac": t["fac"][0], "dfac": t["fac"][1] - t["fac"][0], "cx": t["cx"][0],
                    "dcx": t["cx"][1] - t["cx"][0], "cq": t["cq"][0], "dcq": t["cq"][1] - t["cq"][0]})
    return out


_PT = _piece_tables()


def _pieces(x: np.ndarray, p: np.ndarray, wf: np.ndarray, S: np.ndarray, W: np.ndarray, v: int) -> dict:
    """The pieces of Phi on d' > 0 for level order v, blocks as rows: sorted event keys lcm*d'
    (nb, 64) (inf: none), parabolas sx, sq, R (nb, 65).

    An element of the sign of the two thresholds with m' of that sign has two events, the others
    one: slot j holds element j's event with the first such threshold, slot 32 + j the second.
    Piece 0 is d' -> 0+, piece e+1 follows the e-th event; its sx, sq are those of piece 0 plus
    the moves of the elements passed so far (none once a clamped index stops moving). The keys
    x*lcm/m' are exact in float64 with the low 21 bits clear: the slot goes there, so that a plain
    float sort orders them (NaN, from inf, last). Equal keys come in slot order, so a zero-length
    piece inside a tie may not be a split: R is set to 0 there (pieces of positive length are
    splits, and their parabola peaks bound Phi everywhere, Phi being continuous)."""
    q, mp = _VCONST[v][0], _VCONST[v][1]
    t = _PT[v]
    nb = x.shape[0]
    neg = x < 0
    nf = neg.astype(np.float64)[:, None, :]
    keys = x[:, None, :] * (t["fac"] + nf * t["dfac"])  # (nb, 2, 32)
    keys[~(keys > 0)] = np.inf  # x == 0, or no threshold of that sign: no event
    bits = keys.reshape(nb, 2 * BLOCK).view(np.int64)
    bits |= _SLOT64
    srt = np.sort(bits.view(np.float64), axis=1).view(np.int64)
    ks = (srt & ~np.int64(63)).view(np.float64)
    rows = np.arange(nb)
    flat = srt & 63
    flat += (2 * BLOCK) * rows[:, None]
    dsx = p[:, None, :] * (t["cx"] + nf * t["dcx"])
    dsq = wf[:, None, :] * (t["cq"] + nf * t["dcq"])
    npos = np.sum(x > 0, axis=1)
    nneg = np.sum(neg, axis=1)
    sx0 = q[3] * S[:, BLOCK]
    sq0 = q[3] ** 2 * W[:, BLOCK]
    for k in range(3):
        c0 = np.clip((BLOCK - npos) if mp[k] > 0 else nneg, _BOX_LO[k], _BOX_HI[k])
        sx0 = sx0 + (q[k] - q[k + 1]) * S[rows, c0]
        sq0 = sq0 + (q[k] ** 2 - q[k + 1] ** 2) * W[rows, c0]
    sx = np.empty((nb, 2 * BLOCK + 1))
    sq = np.empty((nb, 2 * BLOCK + 1))
    sx[:, 0] = 0
    sq[:, 0] = 0
    np.cumsum(dsx.reshape(-1).take(flat), axis=1, out=sx[:, 1:])
    np.cumsum(dsq.reshape(-1).take(flat), axis=1, out=sq[:, 1:])
    sx += sx0[:, None]
    sq += sq0[:, None]
    R = sx * sx
    R /= sq
    R[:, 1:2 * BLOCK] *= ks[:, 1:] > ks[:, :-1]
    R[:, 2 * BLOCK] *= ks[:, -1] < np.inf
    return {"ks": ks, "sx": sx, "sq": sq, "R": R, "npos": npos, "nneg": nneg}


def _irregular_parts(S: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, ...]:
    """Contiguous (nb, 24) pieces of the prefix sums that _irregular_max reads: at i1, at
    max(i1, 8), and the (nb, 1) columns at 31 and 32."""
    n1 = K_MAX_I1
    idx = np.maximum(np.arange(n1), K_MIN_I3)
    return (np.ascontiguousarray(S[:, :n1]), S[:, idx], S[:, BLOCK - 1:BLOCK].copy(), S[:, BLOCK:].copy(),
            np.ascontiguousarray(W[:, :n1]), W[:, idx], W[:, BLOCK - 1:BLOCK].copy(), W[:, BLOCK:].copy())


def _irregular_max(parts: tuple[np.ndarray, ...], v: int) -> np.ndarray:
    """Upper bound of phi of any split of level order v at d' < 0 (blocks as rows). There each
    G_k falls then rises (largest at an end of any range), so over ordered splits the best one at
    any such d is among (i1, i1, max(i1, 8)), (i1, i1, 31), (i1, 31, 31), i1 < 24: the largest max
    over d' < 0 of their parabolas (the peak when it lies there, else phi(0) = 0)."""
    q, s = _VCONST[v][0], _VCONST[v][3]
    s1, sm, s31, s32, w1, wm, w31, w32 = parts
    q2 = q ** 2
    best = np.zeros(s1.shape[0])
    for a, b, c in ((0, 2, sm), (0, 2, s31), (0, 1, s31)):
        sx = (q[a] - q[b]) * s1
        sx += (q[b] - q[3]) * c
        sx += q[3] * s32
        sq = (q2[a] - q2[b]) * w1
        sq += (q2[b] - q2[3]) * (wm if c is sm else w31)
        sq += q2[3] * w32
        r = sx * sx
        r /= sq
        r *= (sx < 0) if s > 0 else (sx > 0)
        np.maximum(best, np.max(r, axis=1), out=best)
    return best


def _flat_c_sums(s: np.ndarray, w: np.ndarray, blk: np.ndarray, i1: np.ndarray, i2: np.ndarray, i3: np.ndarray,
                 v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's float sumqx, sumq2 of single candidates (block blk, split, level order v), 1-D."""
    q = LEVELS[v].astype(F32)
    a = [s[i1, blk] - s[0, blk], s[i2, blk] - s[i1, blk], s[i3, blk] - s[i2, blk], s[BLOCK, blk] - s[i3, blk]]
    b = [w[i1, blk] - w[0, blk], w[i2, blk] - w[i1, blk], w[i3, blk] - w[i2, blk], w[BLOCK, blk] - w[i3, blk]]
    sx = a[0] * q[:, 0] + a[1] * q[:, 1]
    sx += a[2] * q[:, 2]
    sx += a[3] * q[:, 3]
    sq = (b[0] * q[:, 0]) * q[:, 0] + (b[1] * q[:, 1]) * q[:, 1]
    sq += (b[2] * q[:, 2]) * q[:, 2]
    sq += (b[3] * q[:, 3]) * q[:, 3]
    return sx, sq


def _lb(xj: np.ndarray, wj: np.ndarray, da: np.ndarray, db: np.ndarray, m: float, aalpha: float) -> np.ndarray:
    """Least |alpha| w d' |x - d' m'| over d' in [da, db] (at an end: the term is concave there or
    monotone), slightly shrunk: the regret of moving a threshold over the element."""
    ga = np.abs(xj - da * m) * da
    gb = np.abs(xj - db * m) * db
    return np.minimum(ga, gb) * wj * (aalpha * (1 - 1e-9))


def _windows(x: np.ndarray, wf: np.ndarray, pc: dict, ab: np.ndarray, ap: np.ndarray, da: np.ndarray,
             db: np.ndarray, slack: np.ndarray, v: int) -> tuple[np.ndarray, ...]:
    """Splits within the regret windows of the active pieces (block ab, piece ap) of level order v.
    Returns (block, i1, i2, i3) flat and too_many per active piece. Most windows hold only the
    piece's own split (a step either way already costs more than the slack): those are found
    from the two neighbouring elements of each index."""
    _, mp, aalpha, _, lcm = _VCONST[v]
    na = ab.size
    rows = np.arange(na)
    xa = x[ab]  # (na, 32)
    wa = wf[ab]
    klo = np.where(ap > 0, pc["ks"][ab, np.maximum(ap - 1, 0)], 0.0)
    ev = xa[:, None, :] * (lcm / mp)[None, :, None]  # event keys by threshold, where > 0
    passed = np.sum((ev > 0) & (ev <= klo[:, None, None]), axis=2)  # events already applied
    c = []
    narrow = np.ones(na, bool)
    for k in range(3):
        cnt = (BLOCK - pc["npos"][ab] + passed[:, k]) if mp[k] > 0 else (pc["nneg"][ab] - passed[:, k])
        ck = np.clip(cnt, _BOX_LO[k], _BOX_HI[k])
        c.append(ck)
        for j, can in ((ck - 1, ck > _BOX_LO[k]), (ck, ck < _BOX_HI[k])):  # the element a step passes
            j = np.clip(j, 0, BLOCK - 1)
            narrow &= ~can | (_lb(xa[rows, j], wa[rows, j], da, db, mp[k], aalpha[k]) > slack)
    too_many = np.zeros(na, bool)
    out = [(ab[narrow], c[0][narrow], c[1][narrow], c[2][narrow])]
    wide = np.flatnonzero(~narrow)
    if wide.size:
        xa, wa, da, db, slack = xa[wide], wa[wide], da[wide][:, None], db[wide][:, None], slack[wide]
        c = [ck[wide] for ck in c]
        ii = np.arange(BLOCK + 1)[None, :]
        pref, lo, hi = [], [], []
        for k in range(3):
            P = np.zeros((wide.size, BLOCK + 1))
            np.cumsum(_lb(xa, wa, da, db, mp[k], aalpha[k]), axis=1, out=P[:, 1:])
            pc_k = P[np.arange(wide.size), c[k]]
            ok = (np.abs(P - pc_k[:, None]) <= slack[:, None]) & (ii >= _BOX_LO[k]) & (ii <= _BOX_HI[k])
            pref.append(P)
            lo.append(np.argmax(ok, axis=1))
            hi.append(BLOCK + 1 - np.argmax(ok[:, ::-1], axis=1))  # one past the last
        n = [hi[k] - lo[k] for k in range(3)]
        tot = n[0] * n[1] * n[2]
        many = tot > _WINDOW_CAP
        if np.sum(tot[~many]) > _WINDOWS_TOTAL:  # bounded memory: the largest go to brute_search
            ts = np.where(many, 0, tot)
            o = np.argsort(-ts, kind="stable")  # largest first
            rest = np.cumsum(ts[o][::-1])[::-1]  # what is left from each one on
            many[o[rest > _WINDOWS_TOTAL]] = True
        too_many[wide] = many
        tot = np.where(many, 0, tot)
        a_of = np.repeat(np.arange(tot.size), tot)
        t = np.arange(a_of.size) - np.repeat(np.cumsum(tot) - tot, tot)
        n12 = (n[1] * n[2])[a_of]
        j1 = lo[0][a_of] + t // n12
        j2 = lo[1][a_of] + (t // n[2][a_of]) % n[1][a_of]
        j3 = lo[2][a_of] + t % n[2][a_of]
        reg = sum(np.abs(pref[k][a_of, jk] - pref[k][a_of, c[k][a_of]]) for k, jk in enumerate((j1, j2, j3)))
        keep = (j1 <= j2) & (j2 <= j3) & (reg <= slack[a_of])
        a_of = a_of[keep]
        out.append((ab[wide[a_of]], j1[keep], j2[keep], j3[keep]))
    return (*(np.concatenate([o[i] for o in out]) for i in range(4)), too_many)


def _fast_blocks(xs: np.ndarray, ws: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """The winner of pass 1 from the near-top candidates: (d, shifted, ok) (nb,); ok False where
    the block needs brute_search."""
    nb = xs.shape[1]
    x = xs.T.astype(np.float64)  # (nb, 32)
    wf = ws.T.astype(np.float64)
    p = wf * x
    S = np.zeros((nb, BLOCK + 1))
    W = np.zeros((nb, BLOCK + 1))
    np.cumsum(p, axis=1, out=S[:, 1:])
    np.cumsum(wf, axis=1, out=W[:, 1:])
    A = np.sum(np.abs(p), axis=1)
    W32 = W[:, BLOCK]
    eS = np.max(np.abs(s.T - S), axis=1) + 1e-14 * A
    eW = np.max(np.abs(w.T - W), axis=1) + 1e-14 * W32
    ok = W32 > 0
    Wsafe = np.where(ok, W32, 1.0)
    pcs = [_pieces(x, p, wf, S, W, v) for v in range(4)]
    rmax = np.max([np.max(pc["R"], axis=1) for pc in pcs], axis=0)
    e_sx = 2 * eS * 62 + 5.1 * _U * 31 * (A + 8 * eS)
    e_sq = 1600 * eW
    rel = 2 * e_sx / np.sqrt(np.maximum(rmax, 1e-300) * Wsafe) + e_sq / Wsafe + 20 * _U
    eps = 1e-4 + 3 * rel
    tau = rmax * (1 - eps)
    ok &= (rmax > 0) & (eps < 0.05)
    # C's float values of candidates not enumerated are bounded by relative errors: keep their
    # products normal (sq >= W32, sq <= 961*W32) and their d = sqrt(R/sq) far from subnormal
    ok &= (rmax * Wsafe > 2.0**-110) & (rmax * 961 * Wsafe < 2.0**120) & (rmax > 961 * Wsafe * 2.0**-100)
    kappa1 = (np.sqrt(tau) + e_sx / np.sqrt(Wsafe)) ** 2 / ((1 - 7 * _U) - e_sq / Wsafe) * (1 + 6 * _U) * (1 + 1e-12)
    blk: Any = []  # lists of per-variant arrays, then their concatenation
    j1: Any = []
    j2: Any = []
    j3: Any = []
    var: Any = []
    parts = _irregular_parts(S, W)
    for v in range(4):
        ok &= _irregular_max(parts, v) < tau
        pc = pcs[v]
        act = pc["R"] >= tau[:, None]
        act[~ok] = False
        ab, ap = np.nonzero(act)
        if ab.size == 0:
            continue
        ks = pc["ks"]
        klo = np.where(ap > 0, ks[ab, np.maximum(ap - 1, 0)], 0.0)
        khi = np.where(ap < 2 * BLOCK, ks[ab, np.minimum(ap, 2 * BLOCK - 1)], np.inf)
        sxp, sqp, Rp = pc["sx"][ab, ap], pc["sq"][ab, ap], pc["R"][ab, ap]
        lcm = _VCONST[v][4]
        dc = _VCONST[v][3] * sxp / sqp
        r = np.sqrt(np.maximum(Rp - tau[ab], 0) / sqp)
        da = np.maximum(dc - r, klo / lcm) * (1 - 1e-12)
        db = np.minimum(dc + r, khi / lcm) * (1 + 1e-12)
        live = (da <= db) & (db > 0) & (khi > klo)
        ab, ap, da, db = ab[live], ap[live], da[live], db[live]
        slack = (Rp[live] - tau[ab]) * (1 + 1e-9)
        b_, k1, k2, k3, many = _windows(x, wf, pc, ab, ap, da, db, slack, v)
        if many.any():
            ok[ab[many]] = False
        blk.append(b_)
        j1.append(k1)
        j2.append(k2)
        j3.append(k3)
        var.append(np.full(b_.size, v))
    d = np.zeros(nb, F32)
    sh = np.zeros(nb, bool)
    if not blk:
        return d, sh, np.zeros(nb, bool)
    blk, j1, j2, j3, var = (np.concatenate(a) for a in (blk, j1, j2, j3, var))
    good = ok[blk]
    blk, j1, j2, j3, var = blk[good], j1[good], j2[good], j3[good], var[good]
    ordk = _TID[j1, j2, j3] * 4 + var
    if not np.all(ordk >= 0):  # not expected: windows hold ordered splits in range
        ok[blk[ordk < 0]] = False
        good = ok[blk]
        blk, ordk = blk[good], ordk[good]
    key = np.unique(blk.astype(np.int64) * (4 * TRIPLES.shape[0]) + ordk)
    blk = key // (4 * TRIPLES.shape[0])
    ordk = key % (4 * TRIPLES.shape[0])
    tid, var = ordk // 4, ordk % 4
    csx, csq = _flat_c_sums(s, w, blk, TRIPLES[tid, 0], TRIPLES[tid, 1], TRIPLES[tid, 2], var)
    ub, start, cnt = np.unique(blk, return_index=True, return_counts=True)
    rank = np.arange(blk.size) - np.repeat(start, cnt)
    pos = np.zeros(nb, np.int64)
    pos[ub] = np.arange(ub.size)
    cm = int(cnt.max())
    sx2 = np.zeros((cm, ub.size), F32)
    sq2 = np.zeros((cm, ub.size), F32)
    sh2 = np.zeros((cm, ub.size), bool)
    sx2[rank, pos[blk]] = csx
    sq2[rank, pos[blk]] = csq
    sh2[rank, pos[blk]] = SHIFTED[var]
    km = kappa1[ub].astype(F32)
    km = np.where(km >= kappa1[ub], km, np.nextafter(km, F32(np.inf)))  # rounded up to float32
    dd, hh, okk = exact_select(sx2, sq2, sh2, km)
    has = np.zeros(nb, bool)
    has[ub] = okk
    d[ub], sh[ub] = dd, hh
    return d, sh, ok & has


_FAST_BLOCKS = 1024


def search(xt: np.ndarray, wt: np.ndarray, fast: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1 of quantize_row_iq2_ks_impl on (32, nb) -> (scale (nb,), shifted (nb,))."""
    amax = np.fmax.reduce(np.abs(xt), axis=0)
    act = np.flatnonzero(amax >= F32(1e-16))
    d = np.zeros(xt.shape[1], F32)
    sh = np.zeros(xt.shape[1], bool)
    if act.size:
        xs, ws, s, w = sorted_sums(xt[:, act], wt[:, act])
        if fast:
            bad = np.zeros(act.size, bool)
            for b0 in range(0, act.size, _FAST_BLOCKS):
                sl = slice(b0, b0 + _FAST_BLOCKS)
                dd, hh, ok = _fast_blocks(xs[:, sl], ws[:, sl], s[:, sl], w[:, sl])
                d[act[sl]], sh[act[sl]] = dd, hh
                bad[sl] = ~ok
        else:
            bad = np.ones(act.size, bool)
        if bad.any():
            j = np.flatnonzero(bad)
            d[act[j]], sh[act[j]] = brute_search(s[:, j], w[:, j])
    return d, sh


# --- per row ------------------------------------------------------------------------------------

def make_qx_quants_rows(x: np.ndarray, qw: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """iqk_quantize.cpp make_qx_quants(n, nmax, x, L, qw) on each column of x, qw (n, nrows)
    -> (scale (nrows,), L uint8 (n, nrows) in 0..2*nmax-1)."""
    n, nr = x.shape
    a = np.abs(x)
    a = np.where(np.isnan(a), F32(0), a)
    j = np.argmax(a, axis=0)
    r = np.arange(nr)
    amax = a[j, r]
    mx = np.where(amax > 0, x[j, r], F32(1))

    def levels(iscale: np.ndarray) -> np.ndarray:
        return np.clip(nearest_int(iscale * x), -nmax, nmax - 1)

    def sums(l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lf = l.astype(F32)
        return seq_sum0((qw * x) * lf), seq_sum0((qw * lf) * lf)

    l = levels(F32(-nmax) / mx)
    L = l + nmax
    sumlx, suml2 = sums(l)
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, F32(1)), F32(0)).astype(F32)
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        l = levels(-(F32(nmax) + F32(0.1) * F32(is_)) / mx)
        sumlx, suml2 = sums(l)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        if upd.any():
            L = np.where(upd[None, :], l + nmax, L)
            scale = np.where(upd, sumlx / np.where(upd, suml2, F32(1)), scale)
            best = np.where(upd, scale * sumlx, best)
    zero = amax == 0
    scale = np.where(zero, F32(0), scale)
    L = np.where(zero[None, :], 0, L)
    return scale.astype(F32), L.astype(np.uint8)


def _weights(xt: np.ndarray, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """C's weight[j] per block (32, nb): sigma2 = 1.5*sumx2/256 of the super-block."""
    sigma2 = np.repeat((F32(1.5) * superblock_sumx2(rows)) / F32(QK_K), QK_K // BLOCK)
    x2 = xt * xt
    if imatrix is None:
        return (F32(0.25) * sigma2) + x2
    qw = qhelper_weights_t(xt, imatrix, rows.shape[0])
    x2 += sigma2
    np.sqrt(x2, out=x2)
    x2 *= qw
    return x2


def _quantize_chunk(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    nr, n = rows.shape
    nbr = n // BLOCK
    nsb = n // QK_K
    xt = blocks_t(rows.reshape(-1, BLOCK))
    wt = _weights(xt, rows, imatrix)
    sw = seq_sum0(wt)
    scale, shifted = search(xt, wt)
    dr, L = make_qx_quants_rows(np.ascontiguousarray(scale.reshape(nr, nbr).T),
                                np.ascontiguousarray(sw.reshape(nr, nbr).T), 16)
    L = np.ascontiguousarray(L.T).reshape(-1)  # (nb,) in 0..31
    live_r = dr != 0
    live = np.repeat(live_r, nbr)
    ls = L.astype(np.int32) - 16
    dl = np.repeat(dr, nbr) * ls.astype(F32)
    on = live & (dl != 0)
    idl = F32(1) / np.where(on, dl, F32(1))
    al = xt * idl
    lev = np.where(shifted, best_index_iq2nl(al, True), best_index_iq2nl(al, False))
    vals = IQ2NL_VALUES.astype(F32)
    q = vals.take(lev + 4 * shifted) * ls.astype(F32)  # values*ls: small ints, exact
    wq = wt * q
    tx = wq * xt
    tq = wq * q
    tx[:, ~on] = 0
    tq[:, ~on] = 0
    sumqx = row_seq_sum(tx, nr)
    sumq2 = row_seq_sum(tq, nr)
    dfin = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), dr).astype(F32)
    dfin = np.where(live_r, F32(1.030) * dfin, F32(0))
    # packing
    ib = np.arange(8)
    Lb = np.where(live, L, 0).astype(np.uint16).reshape(-1, 8)
    shb = shifted.reshape(-1, 8).astype(np.uint16)
    out = np.zeros(nr * nsb, BLOCK_IQ2_KS)
    out["extra"] = ((shb << ib) | ((Lb >> 4) << (8 + ib))).sum(axis=1, dtype=np.uint16)
    sc = (Lb & 0xF).astype(np.uint8)
    out["scales"] = sc[:, 0::2] | (sc[:, 1::2] << 4)
    lv = np.where(on[None, :], lev, 0).astype(np.uint8).T.reshape(-1, 2, 4, BLOCK)  # (nsb, ib/4, ib%4, j)
    out["qs"] = (lv[:, :, 0] | (lv[:, :, 1] << 2) | (lv[:, :, 2] << 4) | (lv[:, :, 3] << 6)).reshape(-1, 64)
    res = np.empty((nr, 2 + nsb * BLOCK_IQ2_KS.itemsize), np.uint8)
    res[:, :2] = fp16_bits(dfin).view(np.uint8).reshape(nr, 2)
    res[:, 2:] = out.view(np.uint8).reshape(nr, -1)
    return res


@ieee
def quantize_iq2_ks(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq2_ks: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, 2 + n/256*70)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    assert n % QK_K == 0
    out = np.empty((nrows, 2 + n // QK_K * BLOCK_IQ2_KS.itemsize), np.uint8)
    for r0, r1 in chunk_rows(nrows, n):
        out[r0:r1] = _quantize_chunk(rows[r0:r1], imatrix)
    return out


@ieee
def dequantize_iq2_ks(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq2_ks: uint8 (nrows, 2 + n/256*70) -> float32 (nrows, n)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    nrows = data.shape[0]
    d = fp16_bits_to_fp32(data[:, :2].copy().view(np.uint16).reshape(-1))
    b = data[:, 2:].copy().view(BLOCK_IQ2_KS).reshape(-1)
    ib = np.arange(8)
    extra = b["extra"].astype(np.int32)[:, None]
    sc = b["scales"].astype(np.int32)
    ls = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(-1, 8) | (((extra >> (8 + ib)) & 1) << 4)
    dl = np.repeat(d, n_per_row // QK_K)[:, None] * (ls - 16).astype(F32)
    qs = b["qs"].reshape(-1, 2, 1, BLOCK).astype(np.int32)
    lev = ((qs >> (2 * np.arange(4))[None, None, :, None]) & 3).reshape(-1, 8, BLOCK)
    sh = ((extra >> ib) & 1)[:, :, None]
    v = IQ2NL_VALUES.astype(F32)[lev | (sh << 2)]
    y = dl[:, :, None] * v
    return y.reshape(nrows, n_per_row)


QUANTIZE: dict = {"IQ2_KS": quantize_iq2_ks}
DEQUANTIZE: dict = {"IQ2_KS": dequantize_iq2_ks}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())  # ik_llama.cpp's own type
