"""IQ3_XXS and IQ3_S of mainline ggml, byte-exact ports of ggml-quants.c.

C functions ported: `quantize_row_iq3_xxs_impl(256, ...)` / `quantize_iq3_xxs`,
`quantize_row_iq3_s_impl(32, ...)` / `quantize_iq3_s`, `iq3_find_best_neighbour`,
`dequantize_row_iq3_xxs`, `dequantize_row_iq3_s`; tables from `iq3xs_init_impl` (grids_d4.py).

Per super-block of 256 (sigma2 = (2 * sequential sum of x^2) / 256) and per block of 32:
- weights w = qw*sqrtf(sigma2 + x^2) (imatrix) or x^2; waux = sqrtf(w).
- xval = |x| with sign bits per group of 8. IQ3_XXS stores 7 bits per group: when a group has
  an odd number of negatives, the element with the smallest (w*x)*x (first one) keeps the flipped
  sign: xval[imin] = -xval[imin], bit imin toggled.
- max = max(xval); IQ3_XXS skips blocks with max < 1e-8, IQ3_S blocks with max == 0 (scale 0,
  nothing written for the block: in IQ3_S the qs / signs pointers do not advance either, so the
  next blocks' grid bytes and signs move down a slot — reproduced).
- candidates id = (15 + is*0.2f)/max, is = -15..15 (XXS) / -9..9 (S): l = clamp(nearest_int(
  0.5f*(id*xval - 1)), 0, 7) per value; a group of 4 off the grid takes the neighbour that
  minimises sum_i (waux*(s*q - x))*(s*q - x) with s = 1/id (first strict minimum); sums
  sumqx = sum (w*xval)*q, sumq2 = sum (w*q)*q with q = 2l + 1, sequential; first candidate with
  sumq2 > 0 and sumqx^2 > best*sumq2 wins (scale = sumqx/sumq2, best = scale*sumqx).
- if a chosen group is off the grid and scale > 0: re-round with id = 1/scale (XXS: the off-grid
  groups only; S: all groups), neighbours searched with `scale`, then scale = sumqx/sumq2 again.
- a negative scale flips (scale and all sign bits).
- super-block: d = max_scale/31, stored as fp16(d*1.0125f) (XXS) / fp16(d*1.033f) (S); block
  scale l = clamp(nearest_int(0.5f*((1/d)*scale - 1)), 0, 15). XXS zeroes the whole
  block when max_scale == 0; S leaves its bytes and writes d = 0, scales 0.

Vectorization: chunks of 256 super-blocks laid out (32, n_blocks) (in-block index down axis 0),
the candidate loop vectorized over blocks; off-grid groups gathered by flat index (one coordinate
column each), sorted into buckets by neighbour-list length, and each bucket searched on
transposed (width, m) arrays from precomputed per-width candidate tables (candidate j of every
group one contiguous row). Column subsets are gathered with np.take(axis=1), which keeps them
C-contiguous: seq_sum_t sums a non-contiguous (32, m) gather pairwise, not in C's order.
"""

from __future__ import annotations

import functools

import numpy as np

from ..numeric import QK_K, blocks_t, fp16_bits, ieee, seq_sum_t
from ..registry import register
from ..rounding import fp16_bits_to_fp32, nearest_int
from .grids_d4 import Iq3Tables, dequant_grid, iq3_tables

F32 = np.float32
EPS_IQ3_XXS = F32(1e-8)
_CHUNK_SB = 512  # super-blocks per chunk
_SHIFT4 = np.array([0, 3, 6, 9], dtype=np.int32)[None, :, None]

BLOCK_IQ3_XXS = np.dtype([("d", "<u2"), ("qs", "u1", (64,)), ("sas", "<u4", (8,))])
BLOCK_IQ3_S = np.dtype([("d", "<u2"), ("qs", "u1", (64,)), ("qh", "u1", (8,)), ("signs", "u1", (32,)),
                        ("scales", "u1", (4,))])
assert BLOCK_IQ3_XXS.itemsize == 98 and BLOCK_IQ3_S.itemsize == 110


def best_neighbour(tab: Iq3Tables, u: np.ndarray, xv: np.ndarray, wa: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """iq3_find_best_neighbour for M off-grid points u (M,), xv / wa float32 (M, 4), scale (M,)
    -> grid index (M,)."""
    xv = np.asarray(xv, F32)
    wa = np.asarray(wa, F32)
    return _search(tab, np.asarray(u, np.intp), [np.ascontiguousarray(xv[:, i]) for i in range(4)],
                   [np.ascontiguousarray(wa[:, i]) for i in range(4)], np.asarray(scale, F32))


def best_neighbour_exact(tab: Iq3Tables, u: np.ndarray, xv: np.ndarray, wa: np.ndarray,
                         scale: np.ndarray) -> np.ndarray:
    """The plain form of best_neighbour (one padded (M, maxn) search, no buckets): the reference
    the bucketed search is tested against."""
    nbs = tab.nb_pad[u]
    g = tab.grid.astype(F32)
    d2 = None
    for i in range(4):
        diff = scale[:, None] * g[nbs, i]
        diff -= xv[:, i:i + 1]
        t = wa[:, i:i + 1] * diff
        t *= diff
        d2 = t if d2 is None else d2 + t
    assert d2 is not None
    return nbs[np.arange(u.size), np.argmin(d2, axis=1)]


_WIDTHS = (3, 4, 5, 6, 8, 10, 12, 15, 18, 24)


@functools.cache
def _width_tables(grid_size: int, width: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Neighbour lists cut to `width` (a list's padding repeats its first entry), transposed:
    grid indices int32 (width, 4096) and the candidates' coordinates as float32, one
    (width, 4096) table per coordinate: candidate j of a bucket's points is one gathered row."""
    tab = iq3_tables(grid_size)
    nb = np.ascontiguousarray(tab.nb_pad[:, :width].T)
    g = tab.grid.astype(F32)
    cq = tuple(np.ascontiguousarray(g[:, i][nb]) for i in range(4))
    return nb, cq


@functools.cache
def _bucket_of(grid_size: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Bucket id (uint8) of every point of {0..7}^4 by list length, and the buckets' widths."""
    tab = iq3_tables(grid_size)
    widths = tuple(w for w in _WIDTHS if w < tab.nb_pad.shape[1]) + (tab.nb_pad.shape[1],)
    bid = np.searchsorted(np.array(widths), tab.nb_count, side="left").astype(np.uint8)
    return bid, widths


def _search(tab: Iq3Tables, u: np.ndarray, xs: list[np.ndarray], ws: list[np.ndarray],
            scale: np.ndarray) -> np.ndarray:
    """best_neighbour on coordinate columns: points sorted by bucket (list length); each bucket is
    searched on (width, m) arrays (candidate j of every point in one contiguous row) with C's
    d2 = sum_i (waux*diff)*diff, diff = scale*q - xval, in order; the first least d2 wins, as in
    C's strict-< scan (padding repeats the first entry)."""
    bid_tab, widths = _bucket_of(tab.grid_size)
    bid = bid_tab[u]
    order = np.argsort(bid, kind="stable")
    sizes = np.bincount(bid, minlength=len(widths))
    us = u[order]
    sc = scale[order]
    xo = [x[order] for x in xs]
    wo = [w[order] for w in ws]
    res = np.empty(u.size, np.int32)
    a = 0
    for k, width in enumerate(widths):
        m = int(sizes[k])
        if m == 0:
            continue
        b = a + m
        nbt, cq = _width_tables(tab.grid_size, width)
        uu = us[a:b]
        s = sc[a:b]
        d2 = np.empty((width, m), F32)
        t = np.empty((width, m), F32)
        for i in range(4):
            diff = cq[i].take(uu, axis=1)
            diff *= s
            diff -= xo[i][a:b]
            np.multiply(wo[i][a:b], diff, out=t)
            t *= diff
            if i == 0:
                d2, t = t, d2
            else:
                d2 += t
        jj = np.argmin(d2, axis=0)  # first least d2 (finite d2: C's strict-< scan from FLT_MAX)
        res[a:b] = nbt.reshape(-1).take(jj * 4096 + uu)
        a = b
    out = np.empty(u.size, np.int32)
    out[order] = res
    return out


@functools.cache
def _level_cols(grid_size: int) -> tuple[np.ndarray, ...]:
    lv = iq3_tables(grid_size).levels.astype(np.int32)
    return tuple(np.ascontiguousarray(lv[:, i]) for i in range(4))


def _codes(lv: np.ndarray) -> np.ndarray:
    """Levels (32, nb) -> codes u (8, nb) = sum l_i << 3i."""
    l4 = lv.reshape(8, 4, lv.shape[1])
    u = l4[:, 3] << 9
    u |= l4[:, 2] << 6
    u |= l4[:, 1] << 3
    u |= l4[:, 0]
    return u


def snap_levels(tab: Iq3Tables, lv: np.ndarray, sel: np.ndarray | None, xval: np.ndarray, waux: np.ndarray,
          scale: np.ndarray) -> np.ndarray:
    """Levels lv int32 (32, nb) C-contiguous -> grid levels in place for the groups in sel (8, nb)
    (all when None): groups off the grid take their best neighbour at `scale` (nb,). Returns the
    off-grid mask (8, nb)."""
    nb = lv.shape[1]
    u = _codes(lv)
    off = tab.kmap[u] < 0
    if sel is not None:
        off &= sel
    f = np.flatnonzero(off)
    if f.size:
        g = f // nb
        base = f + (3 * nb) * g  # flat index of element 4g (coordinate 0) of the group
        bcol = f - g * nb
        xf = xval.reshape(-1)
        wf = waux.reshape(-1)
        idx = [base + i * nb for i in range(4)]
        gi = _search(tab, u.reshape(-1).take(f), [xf.take(ix) for ix in idx], [wf.take(ix) for ix in idx],
                     scale.take(bcol))
        lf = lv.reshape(-1)
        for i, col in enumerate(_level_cols(tab.grid_size)):
            lf.put(idx[i], col.take(gi))
    return off


def level_sums(wt: np.ndarray, xval: np.ndarray, lv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sumqx, sumq2) (nb,): sequential sums of (w*xval)*q and (w*q)*q, q = 2l+1, on (32, nb)."""
    q = (2 * lv + 1).astype(F32)
    wx = wt * xval
    wx *= q
    wq = wt * q
    wq *= q
    return seq_sum_t(wx), seq_sum_t(wq)


def levels_d4(idv: np.ndarray, xval: np.ndarray) -> np.ndarray:
    """clamp(nearest_int(0.5f*(id*xval - 1)), 0, 7) on (32, nb) with id (nb,) -> int32."""
    t = xval * idv
    t -= F32(1)
    t *= F32(0.5)
    return np.clip(nearest_int(t), 0, 7)


def scan_d4(tab: Iq3Tables, wt: np.ndarray, xval: np.ndarray, waux: np.ndarray, mxs: np.ndarray, nis: int,
            on_grid0: bool, mask: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidate loop of quantize_row_iq3_*_impl on (32, nb): id = (15 + is*0.2f)/max for
    is = -nis..nis, levels rounded and snapped, the best by `sumq2 > 0 && sumqx*sumqx >
    best*sumq2` (from best = 0, scale = max/15) kept; `mask` limits the updates (ik) -> (scale,
    levels (32, nb), is_on_grid (8, nb) of the kept candidate (on_grid0 where none: C's initial
    flags), accepted (nb,))."""
    nb = wt.shape[1]
    lv = np.zeros((32, nb), np.int32)
    ongrid = np.full((8, nb), on_grid0)
    best = np.zeros(nb, F32)
    acc = np.zeros(nb, bool)
    scale = mxs / F32(15)
    for is_ in range(-nis, nis + 1):
        idv = (F32(15) + F32(is_) * F32(0.2)) / mxs
        this_scale = F32(1) / idv
        laux = levels_d4(idv, xval)
        off = snap_levels(tab, laux, None, xval, waux, this_scale)
        sumqx, sumq2 = level_sums(wt, xval, laux)
        upd = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if mask is not None:
            upd &= mask
        if upd.any():
            sn = sumqx / np.where(upd, sumq2, F32(1))
            scale = np.where(upd, sn, scale)
            best = np.where(upd, sn * sumqx, best)
            lv = np.where(upd, laux, lv)
            ongrid = np.where(upd, ~off, ongrid)
            acc |= upd
    return scale, lv, ongrid, acc


def block_search(tab: Iq3Tables, xxs: bool, wt: np.ndarray, xval: np.ndarray, skip: np.ndarray,
                 mx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale search of one block of 32 (both types) on (32, nb) arrays -> (levels int32 (32, nb),
    scale float32 (nb,), before the sign flip of a negative scale)."""
    waux = np.sqrt(wt)
    mxs = np.where(skip, F32(1), mx)
    scale, lv, ongrid, _ = scan_d4(tab, wt, xval, waux, mxs, 15 if xxs else 9, xxs)
    need = (~ongrid).any(axis=0) & (scale > 0) & ~skip
    if need.any():
        cols = np.nonzero(need)[0]
        sc = scale[cols]
        # np.take keeps the (32, m) gathers C-contiguous: seq_sum_t's in-order sums need that
        xv = np.take(xval, cols, axis=1)
        lsub = np.take(lv, cols, axis=1)
        lnew = levels_d4(F32(1) / sc, xv)
        sel = ~np.take(ongrid, cols, axis=1) if xxs else None
        snap_levels(tab, lnew, sel, xv, np.take(waux, cols, axis=1), sc)
        if xxs:
            keep = np.repeat(np.take(ongrid, cols, axis=1), 4, axis=0)
            lnew = np.where(keep, lsub, lnew)
        sumqx, sumq2 = level_sums(np.take(wt, cols, axis=1), xv, lnew)
        scale[cols] = np.where(sumq2 > 0, sumqx / sumq2, sc)
        lv[:, cols] = lnew
    lv[:, skip] = 0
    scale = np.where(skip, F32(0), scale)
    return lv, scale


def _prepare(xs: np.ndarray, qwt_row: np.ndarray | None, s0: int, nsr: int) -> tuple[np.ndarray, np.ndarray]:
    """Super-blocks xs (ns, 256) -> xt, wt float32 (32, ns*8)."""
    ns = xs.shape[0]
    xt = blocks_t(xs.reshape(ns * 8, 32))
    if qwt_row is None:
        return xt, xt * xt
    x2 = blocks_t(xs)
    sigma2 = (F32(2) * seq_sum_t(x2 * x2)) / F32(QK_K)
    sub = (np.arange(s0, s0 + ns) % nsr)[:, None] * 8 + np.arange(8)
    qwt = np.take(qwt_row, sub.reshape(-1), axis=1)
    w = xt * xt
    w += np.repeat(sigma2, 8)
    np.sqrt(w, out=w)
    w *= qwt
    return xt, w


def _grid_index(tab: Iq3Tables, lv: np.ndarray) -> np.ndarray:
    nb = lv.shape[1]
    u = (lv.reshape(8, 4, nb) << _SHIFT4).sum(axis=1)
    gi = tab.kmap[u]
    if (gi < 0).any():  # C aborts ("Oops: found point not on grid")
        raise RuntimeError("iq3: a quantized point is not on the grid")
    return gi  # (8, nb)


def super_scales_d4(scales: np.ndarray, fudge: F32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scales (ns, 8) -> (zero (ns,), d fp16 bits (ns,), l (ns, 8) in 0..15)."""
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    zero = max_scale == 0
    d = max_scale / F32(31)
    dh = np.where(zero, np.uint16(0), fp16_bits(d * fudge))
    idv = F32(1) / np.where(zero, F32(1), d)
    t = idv[:, None] * scales
    t -= F32(1)
    t *= F32(0.5)
    l = np.clip(nearest_int(t), 0, 15)
    return zero, dh, l


def pack_iq3_xxs(gi: np.ndarray, signs: np.ndarray, scale: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """The super-blocks of IQ3_XXS (both flavours): grid indices (8, nb), 7-bit sign bytes (4, nb),
    sub-block scales (nb,) (0 where skipped), skipped sub-blocks (nb,) -> BLOCK_IQ3_XXS (nb/8,);
    d = max_scale/31 stored as d*1.0125f; a super-block with max_scale == 0 is all zeros."""
    ns = scale.shape[0] // 8
    sas = (signs.astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))[:, None]).sum(axis=0, dtype=np.uint32)
    sas[skip] = 0
    zero, dh, l = super_scales_d4(scale.reshape(ns, 8), F32(1.0125))
    sas = sas.reshape(ns, 8) | (l.astype(np.uint32) << np.uint32(28))
    qs = np.ascontiguousarray(gi.T).astype(np.uint8).reshape(ns, 64)
    sas[zero] = 0
    qs[zero] = 0
    out = np.zeros(ns, BLOCK_IQ3_XXS)
    out["d"] = dh
    out["qs"] = qs
    out["sas"] = sas
    return out


def _bits8(b: np.ndarray) -> np.ndarray:
    """bool (32, nb) -> uint8 (4, nb): bit i of group k is element 8k + i."""
    nb = b.shape[1]
    return (b.reshape(4, 8, nb).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(
        axis=1, dtype=np.uint8)


def _rows_in(rows: np.ndarray, imatrix: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, int]:
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"row length {n} is not a multiple of {QK_K}")
    nsr = n // QK_K
    xs = np.ascontiguousarray(rows, dtype=F32).reshape(-1, QK_K)
    qwt_row = None if imatrix is None else blocks_t(np.asarray(imatrix, F32).reshape(nsr * 8, 32))
    return xs, qwt_row, nsr


@ieee
def quantize_iq3_xxs(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq3_xxs: float32 (nrows, n) -> uint8 (nrows, n/256*98)."""
    tab = iq3_tables(256)
    nrows = rows.shape[0]
    xs, qwt_row, nsr = _rows_in(rows, imatrix)
    total = xs.shape[0]
    out = np.zeros(total, BLOCK_IQ3_XXS)
    for s0 in range(0, total, _CHUNK_SB):
        s1 = min(total, s0 + _CHUNK_SB)
        ns = s1 - s0
        xt, wt = _prepare(xs[s0:s1], qwt_row, s0, nsr)
        neg = ~(xt >= 0)
        xval = np.where(neg, -xt, xt)
        nb = ns * 8
        # odd number of negatives in a group of 8: the least important element keeps its sign flipped
        n8 = neg.reshape(4, 8, nb)
        odd = (n8.sum(axis=1) % 2) == 1  # (4, nb)
        if odd.any():
            ax = (wt * xt) * xt
            imin = np.argmin(ax.reshape(4, 8, nb), axis=1)  # (4, nb), first minimum
            gk, bk = np.nonzero(odd)
            rows_i = 8 * gk + imin[gk, bk]
            xval[rows_i, bk] = -xval[rows_i, bk]
            n8[gk, imin[gk, bk], bk] ^= True
        signs = _bits8(neg) & np.uint8(127)  # (4, nb)
        mx = xval.max(axis=0)
        skip = mx < EPS_IQ3_XXS
        lv, scale = block_search(tab, True, wt, xval, skip, mx)
        flip = scale < 0
        if flip.any():
            scale = np.where(flip, -scale, scale)
            signs[:, flip] = ~signs[:, flip] & np.uint8(127)
        gi = _grid_index(tab, lv)  # (8, nb)
        out[s0:s1] = pack_iq3_xxs(gi, signs, scale, skip)
    return out.view(np.uint8).reshape(nrows, nsr * BLOCK_IQ3_XXS.itemsize)


@ieee
def quantize_iq3_s(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq3_s: float32 (nrows, n) -> uint8 (nrows, n/256*110)."""
    tab = iq3_tables(512)
    nrows = rows.shape[0]
    xs, qwt_row, nsr = _rows_in(rows, imatrix)
    total = xs.shape[0]
    out = np.zeros(total, BLOCK_IQ3_S)
    for s0 in range(0, total, _CHUNK_SB):
        s1 = min(total, s0 + _CHUNK_SB)
        ns = s1 - s0
        xt, wt = _prepare(xs[s0:s1], qwt_row, s0, nsr)
        neg = ~(xt >= 0)
        xval = np.where(neg, -xt, xt)
        signs = _bits8(neg)  # (4, nb)
        mx = xval.max(axis=0)
        skip = mx == 0
        lv, scale = block_search(tab, False, wt, xval, skip, mx)
        flip = scale < 0
        if flip.any():
            scale = np.where(flip, -scale, scale)
            signs[:, flip] = ~signs[:, flip]
        gi = _grid_index(tab, lv)  # (8, nb)
        hi = ((gi >> 8) << np.arange(8)[:, None]).sum(axis=0).astype(np.uint8)
        hi[skip] = 0
        zero, dh, l = super_scales_d4(scale.reshape(ns, 8), F32(1.033))
        # qs / signs slots: written blocks fill the slots in order (skipped blocks do not advance)
        live = ~skip.reshape(ns, 8)
        slot = np.cumsum(live, axis=1) - 1
        si, bi = np.nonzero(live)
        sl = slot[si, bi]
        qs = np.zeros((ns, 8, 8), np.uint8)
        qs[si, sl] = (gi.T & 255).astype(np.uint8).reshape(ns, 8, 8)[si, bi]
        sg = np.zeros((ns, 8, 4), np.uint8)
        sg[si, sl] = np.ascontiguousarray(signs.T).reshape(ns, 8, 4)[si, bi]
        sc = (l[:, 0::2] | (l[:, 1::2] << 4)).astype(np.uint8)
        sc[zero] = 0
        blk = out[s0:s1]
        blk["d"] = dh
        blk["qs"] = qs.reshape(ns, 64)
        blk["qh"] = hi.reshape(ns, 8)
        blk["signs"] = sg.reshape(ns, 32)
        blk["scales"] = sc
    return out.view(np.uint8).reshape(nrows, nsr * BLOCK_IQ3_S.itemsize)


_KSIGNS = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], dtype=np.uint8)


def _signed(db: np.ndarray, g: np.ndarray, sbits: np.ndarray) -> np.ndarray:
    """y = db*g*(bit ? -1 : 1): db (..., 1) float32, g (..., 32), sbits bool (..., 32)."""
    y = db * g
    np.negative(y, out=y, where=sbits)
    return y


@ieee
def dequantize_iq3_xxs(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq3_xxs: uint8 (nrows, n/256*98) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_IQ3_XXS)
    grid = dequant_grid(256)
    d = fp16_bits_to_fp32(blk["d"])[:, None]
    aux = blk["sas"]  # (nsb, 8)
    db = ((d * (F32(0.5) + (aux >> 28).astype(F32))) * F32(0.5))[:, :, None]
    g = grid[blk["qs"].reshape(-1, 8, 8)].reshape(-1, 8, 32)
    s7 = (aux[:, :, None] >> (7 * np.arange(4, dtype=np.uint32))) & 127  # (nsb, 8, 4)
    s8 = _KSIGNS[s7]
    sbits = ((s8[..., None] >> np.arange(8, dtype=np.uint8)) & 1).astype(bool).reshape(-1, 8, 32)
    return _signed(db, g, sbits).reshape(nrows, n)


@ieee
def dequantize_iq3_s(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq3_s: uint8 (nrows, n/256*110) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_IQ3_S)
    grid = dequant_grid(512)
    d = fp16_bits_to_fp32(blk["d"])[:, None]
    sc = blk["scales"].astype(np.int32)
    l = np.stack([sc & 15, sc >> 4], axis=2).reshape(-1, 8)
    db = (d * (1 + 2 * l).astype(F32))[:, :, None]
    hi = ((blk["qh"][:, :, None].astype(np.int32) >> np.arange(8)) & 1) << 8  # (nsb, 8, 8)
    idx = blk["qs"].reshape(-1, 8, 8).astype(np.int32) | hi
    g = grid[idx].reshape(-1, 8, 32)
    sbits = ((blk["signs"].reshape(-1, 8, 4)[..., None] >> np.arange(8, dtype=np.uint8)) & 1).astype(bool)
    return _signed(db, g, sbits.reshape(-1, 8, 32)).reshape(nrows, n)


QUANTIZE = {"IQ3_XXS": quantize_iq3_xxs, "IQ3_S": quantize_iq3_s}
DEQUANTIZE = {"IQ3_XXS": dequantize_iq3_xxs, "IQ3_S": dequantize_iq3_s}
register("IQ3_XXS", quantize_iq3_xxs, dequantize_iq3_xxs, ik=())
register("IQ3_S", quantize_iq3_s, dequantize_iq3_s, ik=(False, True))  # ik's quantize_iq3_s is this algorithm
