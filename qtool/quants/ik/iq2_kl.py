"""ik_llama.cpp's IQ2_KL: blocks of 32 values as 16 pairs from a 32-entry grid, an fp16 row scale.

Ports of ggml/src/iqk/iqk_quantize.cpp, byte-exact with the -ffp-contract=off build:

- `quantize_iq2_kl` / `quantize_row_iq2_kl_impl` (ntry = 5). The grid holds 32 of the 64 pairs
  (iq3nl_values[i1], iq3nl_values[i2]) (`k_index`); a pair (x1, x2) scaled by id goes to the grid
  point of its two nearest levels (best_index_iq3nl) or, when that pair is not on the grid, to
  the one of 8 listed neighbours with the smallest w1*diff1² + w2*diff2² (the C lambda `index`).
  Pass 1, per block of 32: weights |x|, or qw*sqrt(sigma2 + x*x) with sigma2 = 2.25/256 * the
  sequential sum of x*x over the super-block and qw the imatrix after QHelper; d = -max/values[0]
  tried on +id and -id (the first of them taken without a test), then for itry = -5..5
  id = (itry + values[0])/max on +id and -id. Pass 2, per row: d = -max_scale/32, per block
  ls = clamp(nearest_int(scale/d), -32, 31) and of ls-1, ls, ls+1 the one with the smallest
  weighted error; the row scale is fp16(1.025 * sumqx/sumq2) summed along the row in C's order.
- `dequantize_row_iq2_kl`: y = d * (ls - 32) * iq2kl_values[q] (two int8 per entry).

Speed: the neighbour search only scores the neighbours that can win (`K_PRUNED`, 2-4 of the 8:
one listed earlier that is at least as close in both coordinates over the whole cell of the
pair's levels always scores at most as much, float rounding being monotone), as C would pick.

Row layout: fp16 d, then per super-block of 256 block_iq2_kl {scales_h u16, scales_l[4],
qs[64], qh[16]}. Work is on (16, nb) arrays of pairs (x[2j], x[2j+1]) of (32, nb) blocks.
"""

from __future__ import annotations

import numpy as np

from ..numeric import F32, QK_K, absmax_t, blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int
from ..registry import register
from .iq3_ks import (
    BLOCK,
    IQ3NL_FLIPS,
    best_index_iq3nl,
    block_weights,
    chunk_rows,
    first_absmax_rows,
    row_seq_sum,
    seq_sum0,
)
from .iqk_tables import IQ2KL_VALUES, IQ3NL_VALUES

__all__ = ["BLOCK_IQ2_KL", "DEQUANTIZE", "GRID", "QUANTIZE", "dequantize_iq2_kl", "quantize_iq2_kl"]

BLOCK_IQ2_KL = np.dtype([("scales_h", "<u2"), ("scales_l", "u1", (4,)), ("qs", "u1", (64,)), ("qh", "u1", (16,))])
assert BLOCK_IQ2_KL.itemsize == 86
NTRY = 5
SIGMA_FACTOR = F32(2.25)

K_INDEX = np.array([
    -1, -2, 0, -3, -4, 1, -5, -6, 2, -7, -8, 3, -9, 4, -10, 5, -11, 6, 7, -12, 8, 9, 10, -13, 11, -14, -15, -16, 12,
    13, -17, 14, -18, -19, 15, 16, 17, 18, 19, -20, -21, 20, 21, 22, 23, 24, -22, -23, 25, -24, 26, -25, 27, -26, 28,
    29, -27, -28, 30, -29, -30, 31, -31, -32], dtype=np.int32)
K_NEIGHBOURS = np.array([
    [2, 0, 6, 11, 7, 3, 8, 15], [0, 2, 3, 6, 7, 1, 8, 4], [0, 1, 3, 4, 8, 7, 9, 6], [1, 0, 3, 4, 8, 9, 7, 10],
    [1, 4, 5, 10, 9, 3, 8, 0], [5, 1, 4, 10, 9, 14, 8, 3], [6, 2, 7, 0, 3, 11, 8, 15], [3, 7, 0, 6, 8, 4, 12, 9],
    [3, 4, 8, 9, 1, 7, 12, 10], [4, 10, 5, 9, 1, 8, 13, 14], [11, 2, 6, 7, 20, 15, 25, 21],
    [8, 7, 3, 12, 9, 16, 17, 13],
    [14, 5, 10, 19, 9, 13, 4, 18], [6, 15, 7, 11, 20, 21, 16, 2], [15, 7, 16, 6, 21, 12, 17, 22],
    [12, 16, 17, 8, 15, 7, 13, 22], [19, 10, 13, 18, 14, 9, 12, 24], [11, 20, 25, 6, 15, 2, 21, 7],
    [20, 15, 21, 6, 11, 7, 16, 26], [14, 19, 29, 10, 28, 18, 13, 24], [25, 11, 20, 21, 15, 6, 26, 30],
    [19, 24, 28, 18, 29, 23, 13, 17], [29, 19, 14, 28, 24, 18, 10, 13], [20, 26, 21, 25, 30, 15, 22, 16],
    [27, 26, 22, 23, 21, 30, 16, 24], [27, 24, 28, 31, 23, 18, 22, 17], [25, 30, 20, 26, 21, 11, 15, 22],
    [30, 26, 25, 20, 21, 27, 22, 15], [30, 27, 31, 26, 22, 23, 21, 24], [31, 27, 30, 26, 28, 23, 22, 24],
    [31, 28, 29, 27, 24, 23, 19, 18], [29, 28, 31, 24, 19, 27, 14, 18]], dtype=np.int32)


def _grid() -> np.ndarray:
    """grid[i] = (values[j/8], values[j%8]) for k_index[j] = i >= 0 -> int8 (32, 2)."""
    g = np.zeros((32, 2), np.int8)
    for j in range(64):
        if K_INDEX[j] >= 0:
            g[K_INDEX[j]] = (IQ3NL_VALUES[j // 8], IQ3NL_VALUES[j % 8])
    return g


GRID = _grid()
assert np.array_equal(GRID.reshape(-1).view("<u2"), IQ2KL_VALUES)  # the dequantizer's table
_G1 = GRID[:, 0].astype(F32)
_G2 = GRID[:, 1].astype(F32)


def _pruned_neighbours() -> np.ndarray:
    """For each off-grid code (l1, l2), the neighbours that can win: a pair scaled into that code
    has s1, s2 in the cells of levels l1, l2 (between flip points), and a neighbour m listed before
    n with |g_m - s| <= |g_n - s| in both coordinates over the whole cell gives a float score
    <= n's for any weights >= 0 (every float step is monotone in |g - s|), so n never replaces it.
    Padded to 4 with the first neighbour (an equal score never replaces)."""
    lo = np.concatenate([[-np.inf], IQ3NL_FLIPS.astype(np.float64)])
    hi = np.concatenate([IQ3NL_FLIPS.astype(np.float64), [np.inf]])
    g = GRID.astype(np.float64)

    def dominates(gm: float, gn: float, a: float, b: float) -> bool:
        if gm == gn:
            return True
        mid = (gm + gn) / 2
        return b <= mid if gm < gn else a >= mid

    out = np.zeros((32, 4), np.int32)
    for j in range(64):
        i = int(K_INDEX[j])
        if i >= 0:
            continue
        l1, l2 = j // 8, j % 8
        nb = [int(n) for n in K_NEIGHBOURS[-i - 1]]
        keep = [n for p, n in enumerate(nb) if not any(
            dominates(g[m, 0], g[n, 0], lo[l1], hi[l1]) and dominates(g[m, 1], g[n, 1], lo[l2], hi[l2])
            for m in nb[:p])]
        assert 1 <= len(keep) <= 4
        out[-i - 1] = keep + [keep[0]] * (4 - len(keep))
    return out


K_PRUNED = _pruned_neighbours()
_NG1 = _G1[K_NEIGHBOURS.T]  # (8, 32): slot s of off-grid code i -> grid value
_NG2 = _G2[K_NEIGHBOURS.T]
_PG1 = _G1[K_PRUNED.T]  # (4, 32)
_PG2 = _G2[K_PRUNED.T]
_FLT_MAX = F32(np.finfo(F32).max)
_TWO31 = F32(2.0**31)


def _search_neighbours(k: np.ndarray, a1: np.ndarray, a2: np.ndarray, v1: np.ndarray, v2: np.ndarray,
                       nbr: np.ndarray, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """C's loop over the neighbours (table nbr (32, n), values g1, g2 (n, 32)) of off-grid codes k:
    a score replaces the best when strictly smaller, from FLT_MAX (NaN never does)."""
    best = np.full(k.size, _FLT_MAX)
    slot = np.zeros(k.size, np.intp)
    for j in range(nbr.shape[1]):
        d1 = g1[j].take(k)
        d1 -= a1
        d2 = g2[j].take(k)
        d2 -= a2
        sc = v1 * d1
        sc *= d1
        d2 *= v2 * d2
        sc += d2
        upd = sc < best
        np.copyto(best, sc, where=upd)
        np.copyto(slot, j, where=upd)
    return nbr[k, slot]


def _index(s1: np.ndarray, s2: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """The C lambda `index` on pairs already scaled (s = id*x), C-contiguous arrays of one shape
    -> int32 grid index. Off the grid, the neighbours that can win (K_PRUNED) are scored; pairs
    outside the premises of that pruning (|s| >= 2^31 or non-finite values) get all 8."""
    code = best_index_iq3nl(s1)
    code <<= 3
    code += best_index_iq3nl(s2)
    c = K_INDEX.take(code)
    neg = np.flatnonzero(c < 0)
    if neg.size:
        cf = c.reshape(-1)
        k = -cf[neg] - 1
        a1 = s1.reshape(-1)[neg]
        a2 = s2.reshape(-1)[neg]
        v1 = w1.reshape(-1)[neg]
        v2 = w2.reshape(-1)[neg]
        r = _search_neighbours(k, a1, a2, v1, v2, K_PRUNED, _PG1, _PG2)
        odd = ~((np.abs(a1) < _TWO31) & (np.abs(a2) < _TWO31) & np.isfinite(v1) & np.isfinite(v2))
        if odd.any():
            o = np.flatnonzero(odd)
            r[o] = _search_neighbours(k[o], a1[o], a2[o], v1[o], v2[o], K_NEIGHBOURS, _NG1, _NG2)
        cf[neg] = r
    return c


def _pair_sums(x1: np.ndarray, x2: np.ndarray, w1: np.ndarray, w2: np.ndarray,
               idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of (w1*q1)*x1 + (w2*q2)*x2, sum of (w1*q1)*q1 + (w2*q2)*q2) over the 16 pairs in order."""
    q1 = _G1.take(idx)
    q2 = _G2.take(idx)
    a1 = w1 * q1
    a2 = w2 * q2
    sx = seq_sum0(a1 * x1 + a2 * x2)
    s2 = seq_sum0(a1 * q1 + a2 * q2)
    return sx, s2


def _search(xt: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """Pass 1 of quantize_row_iq2_kl_impl on (32, nb) -> the block scales (nb,) (0 for blocks below 1e-16)."""
    amax, mx = absmax_t(xt)
    ok = amax >= F32(1e-16)
    mx = np.where(ok, mx, F32(1))
    x1, x2 = np.ascontiguousarray(xt[0::2]), np.ascontiguousarray(xt[1::2])
    w1, w2 = np.ascontiguousarray(wt[0::2]), np.ascontiguousarray(wt[1::2])
    d = -mx / F32(IQ3NL_VALUES[0])
    idv = F32(1) / d

    def both(iv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s1 = x1 * iv
        s2 = x2 * iv
        sxp, sqp = _pair_sums(x1, x2, w1, w2, _index(s1, s2, w1, w2))
        np.negative(s1, out=s1)
        np.negative(s2, out=s2)
        sxm, sqm = _pair_sums(x1, x2, w1, w2, _index(s1, s2, w1, w2))
        return sxp, sqp, sxm, sqm

    sxp, sqp, sxm, sqm = both(idv)
    d = sxp / sqp
    best = d * sxp
    upd = (sqm > 0) & (sxm * sxm > best * sqm)
    d = np.where(upd, sxm / sqm, d)
    best = np.where(upd, d * sxm, best)
    for itry in range(-NTRY, NTRY + 1):
        sxp, sqp, sxm, sqm = both(F32(itry + int(IQ3NL_VALUES[0])) / mx)
        for sx, s2 in ((sxp, sqp), (sxm, sqm)):
            upd = (s2 > 0) & (sx * sx > best * s2)
            if upd.any():
                dn = sx / s2
                d = np.where(upd, dn, d)
                best = np.where(upd, dn * sx, best)
    return np.where(ok, d, F32(0))


def _quantize_chunk(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    nr, n = rows.shape
    nbr = n // BLOCK
    nsb = n // QK_K
    xt = blocks_t(rows.reshape(-1, BLOCK))
    wt = block_weights(xt, rows, imatrix, SIGMA_FACTOR / F32(QK_K), noim="abs")
    scale = _search(xt, wt)
    # pass 2
    mxs = first_absmax_rows(scale.reshape(nr, nbr))
    live_r = mxs != 0
    d = -mxs / F32(32)
    idr = F32(1) / np.where(live_r, d, F32(1))
    ls = np.clip(nearest_int(np.repeat(idr, nbr) * scale), -32, 31)
    db = np.repeat(d, nbr)
    x1, x2 = np.ascontiguousarray(xt[0::2]), np.ascontiguousarray(xt[1::2])
    w1, w2 = np.ascontiguousarray(wt[0::2]), np.ascontiguousarray(wt[1::2])
    best_score = np.full(ls.shape, np.finfo(F32).max, F32)
    best_ls = ls.copy()
    best_idx = np.zeros(x1.shape, np.intp)
    for o in (-1, 0, 1):
        ils = ls + o
        valid = (ils >= -32) & (ils <= 31)
        dl = db * ils.astype(F32)
        idl = np.where(dl != 0, F32(1) / np.where(dl != 0, dl, F32(1)), F32(0)).astype(F32)
        idx = _index(x1 * idl, x2 * idl, w1, w2)
        e1 = dl * _G1.take(idx) - x1
        e2 = dl * _G2.take(idx) - x2
        t = (w1 * e1) * e1
        e2 *= w2 * e2
        t += e2
        score = seq_sum0(t)
        upd = valid & (score < best_score)
        best_score = np.where(upd, score, best_score)
        best_ls = np.where(upd, ils, best_ls)
        best_idx = np.where(upd[None, :], idx, best_idx)
    ls = best_ls
    on = (ls != 0) & np.repeat(live_r, nbr)
    q1 = _G1.take(best_idx) * ls.astype(F32)  # ls*grid: small ints, exact
    q2 = _G2.take(best_idx) * ls.astype(F32)
    a1 = w1 * q1
    a2 = w2 * q2
    tx = a1 * x1 + a2 * x2
    tq = a1 * q1 + a2 * q2
    tx[:, ~on] = 0
    tq[:, ~on] = 0
    sumqx = row_seq_sum(tx, nr)
    sumq2 = row_seq_sum(tq, nr)
    dfin = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), d).astype(F32)
    dfin = np.where(live_r, F32(1.025) * dfin, F32(0))
    # packing
    uls = np.where(np.repeat(live_r, nbr), ls + 32, 0).astype(np.uint16).reshape(-1, 8)  # (nsb_total, 8)
    idx = np.where(on[None, :], best_idx, 0).astype(np.uint8).T.reshape(-1, 8, 16)  # (nsb_total, ib, j)
    ib = np.arange(8)
    out = np.zeros(nr * nsb, BLOCK_IQ2_KL)
    out["scales_h"] = ((uls >> 4) << (2 * ib)).sum(axis=1, dtype=np.uint16)
    sl = (uls & 0xF).astype(np.uint8)
    out["scales_l"] = sl[:, :4] | (sl[:, 4:] << 4)
    lo = idx & 0xF
    out["qs"] = (lo[:, 0::2] | (lo[:, 1::2] << 4)).reshape(-1, 64)
    out["qh"] = ((idx >> 4) << ib[None, :, None].astype(np.uint8)).sum(axis=1, dtype=np.uint8)
    res = np.empty((nr, 2 + nsb * BLOCK_IQ2_KL.itemsize), np.uint8)
    res[:, :2] = fp16_bits(dfin).view(np.uint8).reshape(nr, 2)
    res[:, 2:] = out.view(np.uint8).reshape(nr, -1)
    return res


@ieee
def quantize_iq2_kl(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq2_kl: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, 2 + n/256*86)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    assert n % QK_K == 0
    out = np.empty((nrows, 2 + n // QK_K * BLOCK_IQ2_KL.itemsize), np.uint8)
    for r0, r1 in chunk_rows(nrows, n):
        out[r0:r1] = _quantize_chunk(rows[r0:r1], imatrix)
    return out


@ieee
def dequantize_iq2_kl(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq2_kl: uint8 (nrows, 2 + n/256*86) -> float32 (nrows, n)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    nrows = data.shape[0]
    d = fp16_bits_to_fp32(data[:, :2].copy().view(np.uint16).reshape(-1))
    b = data[:, 2:].copy().view(BLOCK_IQ2_KL).reshape(-1)
    ib = np.arange(8)
    sh = b["scales_h"].astype(np.int32)[:, None]
    sl = b["scales_l"].astype(np.int32)
    ls = np.concatenate([sl & 0xF, sl >> 4], axis=1) | (((sh >> (2 * ib)) & 3) << 4)  # (nsb, 8)
    dl = np.repeat(d, n_per_row // QK_K)[:, None] * (ls - 32).astype(F32)
    qs = b["qs"].reshape(-1, 4, 16).astype(np.int32)  # (nsb, ib/2, j)
    lo = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 16)
    hi = (b["qh"].astype(np.int32)[:, None, :] >> ib[None, :, None]) & 1
    g = GRID.astype(F32)[lo | (hi << 4)]  # (nsb, 8, 16, 2)
    y = dl[:, :, None, None] * g
    return y.reshape(nrows, n_per_row)


QUANTIZE: dict = {"IQ2_KL": quantize_iq2_kl}
DEQUANTIZE: dict = {"IQ2_KL": dequantize_iq2_kl}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())  # ik_llama.cpp's own type
