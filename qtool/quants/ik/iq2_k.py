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

The search, vectorized exactly: every candidate's (sumqx, sumq2) is computed with C's operations
(the 8 products (sumx[j]-sumx[i])*v per split pair are tables shared by the candidates), all 3264
of a block at once ((3264, nb) arrays in C's candidate order). C's sequential scan with strict >
is then replayed only on the candidates that can win: let s = sumqx^2/sumq2 (float32) and M its
block max; the candidates from the top down to the first gap of relative size > 2e-6 between
consecutive s values (the "in" set, most often the single winner or an exact tie). C's comparison
sumqx^2 > best*sumq2 carries at most a few ulps (~4e-7) of rounding relative to the exact order of
s, so every candidate below the gap loses against any in-set candidate accepted before it and
cannot displace one accepted after, while the first in-set candidate in C's order is always
accepted: the replay on the in set in C's order gives C's (d, best, shifted). Blocks where that
argument needs care (no gap within 1e-4 of M; sums near float under/overflow; M == 0) replay all
candidates in C's order instead.

best_index_iq2nl equals "number of thresholds t_a <= x" (t_a: the first float32 for which
x - v[a] < v[a+1] - x is false, found by bisection; the shifted -1 midpoint rounds to -1.0000002);
NaN gives 2 as in C.
"""

from __future__ import annotations

import numpy as np

from ..numeric import F32, QK_K, absmax_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int
from .iq3_k import guarded_imatrix_t, superblock_sigma2, thresholds, weights_t
from .iqk_tables import IQ2NL_VALUES

__all__ = ["BLOCK_IQ2_K", "DEQUANTIZE", "QUANTIZE", "best_index_iq2nl_t", "dequantize_iq2_k",
           "make_qx_quants_iqk_t", "quantize_iq2_k", "scale_search_iq2_k_t"]

BLOCK = 16
BLOCK_IQ2_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales", "u1", (8,)), ("qs", "u1", (64,))])
assert BLOCK_IQ2_K.itemsize == 76
_CHUNK_SB = 64  # super-blocks per chunk: 1024 blocks, candidate arrays (3264, 1024) of 13 MiB

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


def _candidate_sums(xs: np.ndarray, ws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sumqx, sumq2) (NCAND, nb) of every candidate in C's order, for sorted xs, ws (16, nb)."""
    nb = xs.shape[1]
    sx = np.empty((BLOCK + 1, nb), F32)
    sw = np.empty((BLOCK + 1, nb), F32)
    sx[0] = 0
    sw[0] = 0
    np.cumsum(ws * xs, axis=0, out=sx[1:])
    np.cumsum(ws, axis=0, out=sw[1:])
    sx += F32(0)  # C's prefix sums start from +0: never -0
    sw += F32(0)
    # differences sum[j] - sum[i]: middle pairs (i, j < 16), first group (0, i1), last (i3, 16)
    dmx = sx[None, :BLOCK] - sx[:BLOCK, None]  # [i, j] = sx[j] - sx[i]
    dmw = sw[None, :BLOCK] - sw[:BLOCK, None]
    d0x, d0w = sx[:BLOCK] - sx[0], sw[:BLOCK] - sw[0]
    d3x, d3w = sx[BLOCK] - sx[:BLOCK], sw[BLOCK] - sw[:BLOCK]
    px, pw = {}, {}

    def prod(dx: np.ndarray, dw: np.ndarray, v: int, key: tuple[str, int]) -> None:
        if key not in px:
            px[key] = dx * _VALS[v]
            pw[key] = (dw * _VALS[v]) * _VALS[v]

    for vs in _SETS:
        prod(d0x, d0w, vs[0], ("0", vs[0]))
        prod(dmx, dmw, vs[1], ("m", vs[1]))
        prod(dmx, dmw, vs[2], ("m", vs[2]))
        prod(d3x, d3w, vs[3], ("3", vs[3]))
    SX = np.empty((NCAND, nb), F32)
    S2 = np.empty((NCAND, nb), F32)
    tabs = [(px[("0", v0)], px[("m", v1)], px[("m", v2)], px[("3", v3)],
             pw[("0", v0)], pw[("m", v1)], pw[("m", v2)], pw[("3", v3)]) for v0, v1, v2, v3 in _SETS]
    ax = np.empty(nb, F32)
    for i1, i2 in _PAIRS:
        base = _BASE[(i1, i2)]
        n3 = BLOCK - i2
        bx = SX[base: base + 4 * n3].reshape(n3, 4, nb)
        b2 = S2[base: base + 4 * n3].reshape(n3, 4, nb)
        for k, (x0, x1, x2, x3, w0, w1, w2, w3) in enumerate(tabs):
            np.add(x0[i1], x1[i1, i2], out=ax)
            o = bx[:, k]
            np.add(ax, x2[i2, i2:], out=o)
            o += x3[i2:]
            np.add(w0[i1], w1[i1, i2], out=ax)
            o = b2[:, k]
            np.add(ax, w2[i2, i2:], out=o)
            o += w3[i2:]
    return SX, S2


def _replay(SX: np.ndarray, S2: np.ndarray, cols: np.ndarray, cands: np.ndarray,
            d: np.ndarray, best: np.ndarray, cbest: np.ndarray) -> None:
    """C's scan `if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {d = sumqx/sumq2; best = d*sumqx;}` over
    the candidates cands (in C order) of blocks cols, in place on d, best, cbest (winning index)."""
    sx = SX[cands, cols]
    s2 = S2[cands, cols]
    take = (s2 > 0) & (sx * sx > best[cols] * s2)
    if take.any():
        c = cols[take]
        dn = sx[take] / s2[take]
        d[c] = dn
        best[c] = dn * sx[take]
        cbest[c] = cands[take]


def scale_search_iq2_k_t(xt: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-block part of quantize_row_iq2_k_impl on xt, wt (16, nb) -> (scale float32 (nb,),
    shifted bool (nb,), sw float32 (nb,)); blocks with max|x| < 1e-16 get scale 0."""
    nb = xt.shape[1]
    sw = np.add.reduce(wt, axis=0) + F32(0)
    amax, _ = absmax_t(xt)
    ok = amax >= F32(1e-16)
    d = np.zeros(nb, F32)
    cbest = np.full(nb, -1, np.int64)
    cols = np.flatnonzero(ok)
    if cols.size == 0:
        return d, np.zeros(nb, np.bool_), sw
    xo = xt[:, cols]
    wo = wt[:, cols]
    order = np.argsort(np.ascontiguousarray(xo.T) + F32(0), axis=1, kind="stable").T  # (x, index) order
    xs = np.take_along_axis(xo, order, axis=0)
    ws = np.take_along_axis(wo, order, axis=0)
    if cols.size == 1:  # keep >= 2 columns: numpy reduces a lone column pairwise
        xs, ws = np.repeat(xs, 2, axis=1), np.repeat(ws, 2, axis=1)
    SX, S2 = _candidate_sums(xs, ws)
    n = cols.size
    SX, S2 = SX[:, :n], S2[:, :n]
    do = np.zeros(n, F32)
    bo = np.zeros(n, F32)
    co = np.full(n, -1, np.int64)

    # score s = sumqx^2/sumq2, block max M, and the blocks the gap argument covers
    with np.errstate(all="ignore"):
        SC = SX * SX
        SC /= S2
    M = SC.max(axis=0)
    swo = sw[cols]
    sabs = np.add.reduce(wo * np.abs(xo), axis=0) * F32(31)  # bounds |sumqx|
    safe = (M >= F32(1e-30)) & (M <= F32(1e35)) & (swo >= F32(1e-30)) & (swo * M >= F32(1e-30))
    safe &= (swo * M <= F32(1e33)) & (sabs <= F32(1e18)) & (M >= sabs * F32(1e-30))
    thr = M * (F32(1) - _NEAR)
    near = SC >= thr[None, :]
    near[:, ~safe] = False
    ci, bi = np.nonzero(near)
    s = SC[ci, bi]
    o = np.lexsort((-s, bi))  # by block, score descending
    ci, bi, s = ci[o], bi[o], s[o]
    first = np.ones(bi.size, np.bool_)
    first[1:] = bi[1:] != bi[:-1]
    gap = np.zeros(bi.size, np.bool_)  # a gap right after this entry
    gap[:-1] = (~first[1:]) & (s[1:] < s[:-1] * (F32(1) - _GAP))
    # entries before the first gap of their block form the in set
    g = np.cumsum(gap) - gap
    start = np.flatnonzero(first)
    g -= np.repeat(g[start], np.diff(np.append(start, bi.size)))
    inset = g == 0
    # a block whose near list has no gap needs its last entry well above the near threshold
    last = np.append(start[1:] - 1, bi.size - 1)
    nogap = np.add.reduceat(gap, start) == 0 if start.size else np.zeros(0, np.bool_)
    weak = nogap & (s[last] < thr[bi[last]] * (F32(1) + F32(2) * _GAP))
    safe[bi[start[weak]]] = False
    keep = inset & safe[bi]
    ci, bi = ci[keep], bi[keep]
    o = np.lexsort((ci, bi))  # C's order within each block
    ci, bi = ci[o], bi[o]
    if bi.size:
        first = np.ones(bi.size, np.bool_)
        first[1:] = bi[1:] != bi[:-1]
        start = np.flatnonzero(first)
        rank = np.arange(bi.size) - np.repeat(start, np.diff(np.append(start, bi.size)))
        for r in range(int(rank.max()) + 1):
            m = rank == r
            _replay(SX, S2, bi[m], ci[m], do, bo, co)
    fb = np.flatnonzero(~safe)
    if fb.size:  # the full scan in C's order
        for c in range(NCAND):
            _replay(SX, S2, fb, np.full(fb.size, c), do, bo, co)
    d[cols] = do
    cbest[cols] = co
    shifted = (cbest >= 0) & ((cbest & 1) == 1)
    return d, shifted, sw


def make_qx_quants_iqk_t(xt: np.ndarray, qwt: np.ndarray, nmax: int) -> np.ndarray:
    """ik's iqk_quantize.cpp make_qx_quants(n, nmax, x, L, qw) on columns xt, qwt (n, nb) -> scale (nb,):
    iscale -nmax/max, then -(nmax + 0.1f*is)/max for is = -9..9 (is != 0); l = clamp(nearest_int(
    iscale*x), -nmax, nmax-1); sumlx = sum (qw*x)*l, suml2 = sum (qw*l)*l; first scale = sumlx/suml2
    (0 if suml2 == 0), later ones when suml2 > 0 and sumlx^2 > best*suml2."""
    amax, mx = absmax_t(xt)
    live = amax != 0
    mx = np.where(live, mx, F32(1))
    qx = qwt * xt

    def sums(isc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lv = np.clip(nearest_int(isc * xt), -nmax, nmax - 1).astype(F32)
        return np.add.reduce(qx * lv, axis=0) + F32(0), np.add.reduce((qwt * lv) * lv, axis=0) + F32(0)

    slx, sl2 = sums(F32(-nmax) / mx)
    scale = np.where(sl2 != 0, slx / np.where(sl2 != 0, sl2, F32(1)), F32(0))
    best = scale * slx
    for i in range(-9, 10):
        if i == 0:
            continue
        slx, sl2 = sums(-(F32(nmax) + F32(0.1) * F32(i)) / mx)
        take = (sl2 > 0) & (slx * slx > best * sl2)
        if take.any():
            sc = slx / np.where(take, sl2, F32(1))
            scale = np.where(take, sc, scale)
            best = np.where(take, sc * slx, best)
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
    wq = wt * q
    tx = wq * xt
    t2 = wq * q
    mask = ~use.reshape(nb)
    tx[:, mask] = 0
    t2[:, mask] = 0
    tx = np.ascontiguousarray(tx.reshape(16, nsb, 16).transpose(2, 0, 1).reshape(256, nsb))
    t2 = np.ascontiguousarray(t2.reshape(16, nsb, 16).transpose(2, 0, 1).reshape(256, nsb))
    sumqx = np.cumsum(tx, axis=0)[-1] + F32(0)
    sumq2 = np.cumsum(t2, axis=0)[-1] + F32(0)
    dfin = F32(1.030) * np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), d)

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
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"IQ2_K needs rows of a multiple of {QK_K} values, got {n}")
    nsb_row = n // QK_K
    xs = rows.reshape(-1, QK_K)
    total = xs.shape[0]
    out = np.empty(total, BLOCK_IQ2_K)
    imt = None
    if imatrix is not None:
        imt = np.ascontiguousarray(np.asarray(imatrix, F32).reshape(n // BLOCK, BLOCK).T)
    step = max(1, _CHUNK_SB // nsb_row) * nsb_row if nsb_row <= _CHUNK_SB else nsb_row
    for s0 in range(0, total, step):
        s1 = min(total, s0 + step)
        qwt = None if imt is None else np.tile(imt, (1, (s1 - s0) // nsb_row))
        out[s0:s1] = _quantize_chunk(xs[s0:s1], qwt)
    return out.view(np.uint8).reshape(nrows, -1)


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
