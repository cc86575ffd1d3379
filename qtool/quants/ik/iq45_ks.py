"""ik_llama.cpp's IQ4_KS and IQ5_KS: blocks of 32 non-linear 4/5-bit levels, one float per row.

Ports of ggml/src/iqk/iqk_quantize.cpp, byte-exact with the -ffp-contract=off build:

- `quantize_iq4_ks` / `quantize_row_iq4_k_impl_bs128` (ntry = 7, iq4k_values) and
  `quantize_iq5_ks` / `quantize_row_iq5_ks_impl` (ntry = 5, iq5nl_values): the same two passes.
  Pass 1, per block of 32: weights x*x, or qw*sqrtf(sigma2 + x*x) with sigma2 = 2/256 * the
  sequential sum of x*x over the block's super-block of 256 and qw the imatrix after `QHelper`
  (a block whose sums of w², x², w|x| are not all above 32e-18 gets weights 1e-9); the first
  scale -max/values[0] and then, for itry = -ntry..ntry, id = (itry + values[0])/max and
  id = (itry + shifted[0])/max, each tried on +id*x and -id*x; a candidate replaces the best when
  sumq2 > 0 and sumqx² > best*sumq2 (the first one unconditionally) and sets the block's `extra`
  bit when it used the shifted table. Pass 2, per row: d = max|scale|/127, per block
  l = 2*clamp(nearest_int(0.5*(scale/d + 127)), 0, 127) - 127 (odd, stored as l + 127 | extra),
  levels best_index(values, x/(d*l)), and the stored row scale sumqx/sumq2 summed along the
  whole row in C's order (sequential over blocks, then in-block index).
- `dequantize_row_iq4_ks` / `dequantize_row_iq5_ks`: y = (d * (scale & 254) - 127) * values[q].

The level choice is ik's `best_index_iq4nl` / `best_index_iq5nl` (an index table on (int)x and,
between two levels, C's float test x - v[i] < v[i+1] - x), reproduced by `BestIndex`. The scale
search evaluates it 2*(4*ntry + 3) times per value, so it reads levels from "cell" tables instead:
one gather on floor(128*x) (and one on ceil(128*x) for -x) gives the level value directly; the
few cells whose level is not constant (a flip point off the 1/128 grid) hold NaN, which turns the
block's sums into NaN, and those blocks (about 3 in 100) are searched again with the exact tables.

Driver (`chunked_two_pass`, shared with IQ4_KSS): rows in chunks of whole rows; pass 1 (block
scales) per chunk, the undecided blocks of all chunks searched exactly at once, pass 2 per chunk.
Row layout: float d, then per super-block of 256 block_iq4_ks {scales[8], qs[128]} or
block_iq5_ks {scales[8], qs[128], qh[32]}. Work is on (32, nb) transposed chunks (C's summation
order down axis 0); candidate sums are all computed first, then C's sequential choice runs over
them (`scale_search_t`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ..numeric import F32, QK_K, absmax_t, ieee, nearest_int, recip
from ..registry import register
from .iqk_tables import IQ4K_VALUES, IQ4NL_INDEX, IQ5NL_INDEX, IQ5NL_VALUES

__all__ = [
    "BLOCK_IQ4_KS", "BLOCK_IQ5_KS", "CELL_SCALE", "DEQUANTIZE", "IQ4NL_INDEX", "IQ4_BI", "IQ4_BI_SHIFTED",
    "IQ5NL_INDEX", "IQ5_BI", "IQ5_BI_SHIFTED", "QUANTIZE", "BestIndex", "block_weights_t", "chunked_two_pass",
    "dequantize_iq4_ks", "dequantize_iq5_ks", "exact_search_t", "quantize_iq4_ks", "quantize_iq5_ks",
    "row_meta_split", "row_order", "scale_search_t", "seq_sum", "superblock_sigma2_t",
]

BLOCK = 32
BLOCK_IQ4_KS = np.dtype([("scales", "u1", (8,)), ("qs", "u1", (128,))])
BLOCK_IQ5_KS = np.dtype([("scales", "u1", (8,)), ("qs", "u1", (128,)), ("qh", "u1", (32,))])
assert BLOCK_IQ4_KS.itemsize == 136 and BLOCK_IQ5_KS.itemsize == 168


_K_CLAMP = F32(1000)  # |x| beyond every table: clamping keeps the level and the int16 cast exact
_CHUNK_BLOCKS = 2048


# --- best_index_iq4nl / best_index_iq5nl -------------------------------------------------------

def _flips(values: np.ndarray) -> np.ndarray:
    """For each pair of neighbours a = values[i], b = values[i+1]: the smallest float32 x with
    !(x - a < b - x) in float32, where C's choice moves from i to i+1 (bisection on the ordered
    bit patterns: the test holds at a, fails at b and is monotone in x)."""
    a = values[:-1].astype(F32)
    b = values[1:].astype(F32)

    def key(f: np.ndarray) -> np.ndarray:  # float32 -> int64 of the same order
        u = f.view(np.int32).astype(np.int64)
        return np.where(u >= 0, u, -(u & 0x7FFFFFFF))

    def unkey(k: np.ndarray) -> np.ndarray:
        u = np.where(k >= 0, k, (-k) | 0x80000000).astype(np.uint32)
        return u.view(F32)

    lo, hi = key(a), key(b)
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        x = unkey(mid)
        holds = (x - a) < (b - x)
        lo = np.where(holds, mid, lo)
        hi = np.where(holds, hi, mid)
    return unkey(hi)


CELL_BITS = 7
CELL_SCALE = F32(1 << CELL_BITS)
"""Cells of the fast level tables: x in [j/128, (j+1)/128), keyed by floor(128*x) as int16."""


class BestIndex:
    """ik's best_index_iq4nl / best_index_iq5nl(values, x) on float32 arrays.

    C: ix = (int)x - values[0]; ix < 0 -> 0; ix >= limit -> n-1; t = index[ix]; t < n -> t; else
    i = t - n and x - values[i] < values[i+1] - x ? i : i+1 ((int)x of NaN or |x| >= 2^31 is INT_MIN).

    Exact form (`__call__`): tables on k = (int)x (int16, read through its uint16 bits): the base
    level and the float32 x from which the level is one higher (+inf where there is no choice).

    Fast form (`cell_keys`, `q_p`/`q_m`, `i_p`/`i_m`, built on first use): the level is constant
    on the cells [j/128, (j+1)/128) (the change points, integers and flip points, are cell edges,
    checked cell by cell) except on the few cells holding a flip point off the 1/128 grid; those
    hold NaN (levels: 255) so that a caller sees them and takes the exact form. The `_m` tables
    give the level of -x from the ceil key of x (-x = T belongs above T: x = -T belongs below).
    Both keys need |x| < 256.
    """

    def __init__(self, values: np.ndarray, index: np.ndarray, limit: int) -> None:
        vals = np.asarray(values, dtype=np.int32)
        n = vals.size
        self.values = vals.astype(F32)
        self.ivalues = vals
        ks = np.arange(-32768, 32768)
        base = np.zeros(ks.size, np.uint8)
        thr = np.full(ks.size, np.inf, F32)
        ix = ks - vals[0]
        base[ix >= limit] = n - 1
        flip = _flips(vals)
        inside = (ix >= 0) & (ix < limit)
        t = index[ix[inside]].astype(np.int64)
        choice = t >= n  # "i or i + 1" entries
        base[inside] = np.where(choice, t - n, t)
        thr[np.flatnonzero(inside)[choice]] = flip[t[choice] - n]
        at = (ks & 0xFFFF).astype(np.intp)  # k's uint16 bit pattern
        self.base = np.empty(65536, np.uint8)
        self.thr = np.empty(65536, F32)
        self.base[at] = base
        self.thr[at] = thr
        self.flips = np.unique(thr[np.isfinite(thr)])

    def __call__(self, a: np.ndarray) -> np.ndarray:
        """Level index (uint8) of every element of float32 a (any value)."""
        a = np.asarray(a, F32)
        c = np.fmin(np.fmax(a, -_K_CLAMP), _K_CLAMP)  # same level as C's for |a| < 2^31
        k = c.astype(np.int16).view(np.uint16)
        i = self.base.take(k, mode="wrap")
        i += c >= self.thr.take(k, mode="wrap")
        big = ~(np.abs(a) < F32(2.0**31))  # NaN, huge: (int)x = INT_MIN -> level 0
        if big.any():
            i[big] = 0
        return i

    @functools.cached_property
    def _cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Fast tables (built on first use): the level of each cell, checked at every change point
        inside it -> (i_p, i_m, q_p, q_m), indexed by the uint16 bits of the int16 key."""
        flips = self.flips
        j = np.arange(-32768, 32768)
        lo = (j / float(CELL_SCALE)).astype(F32)  # exact
        hi = ((j + 1) / float(CELL_SCALE)).astype(F32)
        ints = np.arange(-300, 301).astype(F32)
        inf = F32(np.inf)
        pts = np.concatenate([lo, np.nextafter(lo, inf), np.nextafter(hi, -inf), ints, np.nextafter(ints, inf),
                              np.nextafter(ints, -inf), flips, np.nextafter(flips, -inf), np.nextafter(flips, inf)])
        cell = np.floor(pts * CELL_SCALE).astype(np.int64) + 32768
        keep = (cell >= 0) & (cell < 65536)
        pts, cell = pts[keep], cell[keep]
        lev = self(pts).astype(np.int16)
        lmin = np.full(65536, 99, np.int16)
        lmax = np.full(65536, -1, np.int16)
        np.minimum.at(lmin, cell, lev)
        np.maximum.at(lmax, cell, lev)
        idx = np.where(lmin == lmax, lmin, 255).astype(np.uint8)  # by j + 32768
        pos = (j & 0xFFFF).astype(np.intp)
        mpos = ((-np.clip(j, -32767, 32767)) & 0xFFFF).astype(np.intp)  # level of -x: cell of -j
        i_p = np.empty(65536, np.uint8)
        i_p[pos] = idx
        i_m = np.empty(65536, np.uint8)
        i_m[pos] = i_p[mpos]
        vals = np.append(self.values, F32(np.nan))
        return i_p, i_m, vals[np.minimum(i_p, self.values.size)], vals[np.minimum(i_m, self.values.size)]

    @property
    def i_p(self) -> np.ndarray:
        """Level of each cell (255: unresolved), by floor key."""
        return self._cells[0]

    @property
    def i_m(self) -> np.ndarray:
        """Level of -x for x in each cell, by ceil key."""
        return self._cells[1]

    @property
    def q_p(self) -> np.ndarray:
        """values[i_p] as float32 (NaN: unresolved)."""
        return self._cells[2]

    @property
    def q_m(self) -> np.ndarray:
        """values[i_m] as float32 (NaN: unresolved)."""
        return self._cells[3]

    @staticmethod
    def cell_keys(a128: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(floor, ceil) of a128 = 128*x as uint16 bits: keys of q_p/i_p and of q_m/i_m."""
        kp = np.floor(a128, out=np.empty(a128.shape, np.int16), casting="unsafe")
        km = np.ceil(a128, out=np.empty(a128.shape, np.int16), casting="unsafe")
        return kp.view(np.uint16), km.view(np.uint16)


IQ4_BI = BestIndex(IQ4K_VALUES[:16], IQ4NL_INDEX, 241)
IQ4_BI_SHIFTED = BestIndex(IQ4K_VALUES[16:], IQ4NL_INDEX, 241)
IQ5_BI = BestIndex(IQ5NL_VALUES[:32], IQ5NL_INDEX, 247)
IQ5_BI_SHIFTED = BestIndex(IQ5NL_VALUES[32:], IQ5NL_INDEX, 247)


# --- shared row pieces --------------------------------------------------------------------------

def seq_sum(a: np.ndarray) -> np.ndarray:
    """C's `s = 0; s += a[j]` down axis 0 of a C-contiguous (n, m) array -> (m,). numpy adds
    rows in order when m > 1; a single column would be summed pairwise, so it is doubled."""
    if a.shape[1] == 1:
        a = np.concatenate([a, a], axis=1)
        return seq_sum(a)[:1]
    s = np.add.reduce(a, axis=0)
    s += F32(0)
    return s


def superblock_sigma2_t(rows: np.ndarray) -> np.ndarray:
    """sigma2 of each block of 32 (nb,): 2/256 * sequential sum of x*x over its super-block."""
    xs = np.array(rows.reshape(-1, QK_K).T, order="C")  # a copy: for one super-block .T is rows itself
    xs *= xs
    s = seq_sum(xs)
    s *= F32(2) / F32(QK_K)
    return np.repeat(s, QK_K // BLOCK)


def block_weights_t(xt: np.ndarray, imatrix: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Weights (32, nb) of the blocks xt of `rows` (nrows, n): x*x without an imatrix; with one,
    QHelper::row_weights (ik's per-row guard) then qw * sqrtf(sigma2 + x*x)."""
    w = np.multiply(xt, xt)
    if imatrix is None:
        return w
    nrows, n = rows.shape
    qw = np.ascontiguousarray(np.asarray(imatrix, F32).reshape(n // BLOCK, BLOCK).T)  # (32, B)
    eps = F32(1e-9)
    thr = F32(BLOCK) * (eps * eps)
    sumw2 = seq_sum(qw * qw)  # (B,)
    qwt = np.tile(qw, (1, nrows))
    sumx2 = seq_sum(w)
    sumwx = seq_sum(qwt * np.abs(xt))
    ok = (np.tile(sumw2, nrows) > thr) & (sumx2 > thr) & (sumwx > thr)
    if not ok.all():
        qwt[:, ~ok] = eps
    w += superblock_sigma2_t(rows)
    np.sqrt(w, out=w)
    w *= qwt
    return w


def row_meta_split(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (nrows, row_bytes) -> (row float d (nrows,), block bytes (nrows, row_bytes - 4))."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    d = data[:, :4].copy().view(F32).reshape(-1)
    return d, data[:, 4:]


def row_order(t: np.ndarray, nrows: int) -> np.ndarray:
    """Per-block terms (m, nrows*B) -> (B*m, nrows): each row's terms in C's order, a row per column."""
    m, nb = t.shape
    return np.ascontiguousarray(t.reshape(m, nrows, nb // nrows).transpose(2, 0, 1)).reshape(-1, nrows)


# --- pass 1: block scales ------------------------------------------------------------------------

def _pm_sums(xt: np.ndarray, wt: np.ndarray, id_: np.ndarray, bi: BestIndex, fast: bool,
             sx: np.ndarray, s2: np.ndarray) -> None:
    """C's p and m candidates of id: (sumqx, sumq2) of the levels of +id*x and of -id*x, summed
    in order as sumqx += w*q*x, sumq2 += w*q*q, into sx, s2 (2, nb). fast: cell tables (NaN sums
    where a value fell in an unresolved cell), else the exact index tables."""
    q = np.empty((2, *xt.shape), F32)
    if fast:
        kp, km = bi.cell_keys(xt * (id_ * CELL_SCALE))  # 128*(id*x), exactly (a power of 2)
        np.take(bi.q_p, kp, out=q[0], mode="wrap")
        np.take(bi.q_m, km, out=q[1], mode="wrap")
    else:
        al = xt * id_
        np.take(bi.values, bi(al), out=q[0], mode="wrap")
        np.take(bi.values, bi(-al), out=q[1], mode="wrap")
    wq = np.multiply(wt, q)
    q *= wq
    wq *= xt
    np.add.reduce(wq, axis=1, out=sx)  # in index order down axis 1 (numpy adds whole rows)
    np.add.reduce(q, axis=1, out=s2)
    sx += F32(0)
    s2 += F32(0)


def scale_search_t(xt: np.ndarray, wt: np.ndarray, bi: BestIndex, bis: BestIndex, ntry: int, fast: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1 of quantize_row_iq4_k_impl_bs128 / quantize_row_iq5_ks_impl on (32, nb) blocks ->
    (scale float32 (nb,), shifted bool (nb,), bad bool (nb,)); blocks with max |x| < 1e-16 get
    scale 0; bad: blocks that met an unresolved cell of the fast tables (search them exactly).

    All candidates' sums first, in C's order (p, m of -max/values[0], then per itry p, m of the
    plain and of the shifted table), then C's sequential `sumqx² > best*sumq2` scan over them."""
    nb = xt.shape[1]
    if nb == 1:  # numpy sums a lone column pairwise, not in order: run two copies
        d, sh, bad = scale_search_t(np.repeat(xt, 2, axis=1), np.repeat(wt, 2, axis=1), bi, bis, ntry, fast)
        return d[:1], sh[:1], bad[:1]
    amax, mx = absmax_t(xt)
    skip = amax < F32(1e-16)
    mx = np.where(skip, F32(1), mx)
    v0, v0s = int(bi.ivalues[0]), int(bis.ivalues[0])
    ncand = 2 + 4 * (2 * ntry + 1)
    sx = np.empty((ncand, nb), F32)
    s2 = np.empty((ncand, nb), F32)
    flags = np.zeros(ncand, bool)
    _pm_sums(xt, wt, F32(1) / (-mx / F32(v0)), bi, fast, sx[0:2], s2[0:2])
    c = 2
    for itry in range(-ntry, ntry + 1):
        for b, v, flag in ((bi, v0, False), (bis, v0s, True)):
            _pm_sums(xt, wt, F32(itry + v) / mx, b, fast, sx[c:c + 2], s2[c:c + 2])
            flags[c:c + 2] = flag
            c += 2
    dn = sx / s2
    bn = dn * sx  # best after a candidate wins: d * sumqx
    ok = s2 > 0
    sx *= sx
    best = bn[0]  # the first candidate is taken as is
    win = np.zeros(nb, np.intp)
    for c in range(1, ncand):
        upd = sx[c] > best * s2[c]
        upd &= ok[c]
        best = np.where(upd, bn[c], best)
        win = np.where(upd, c, win)
    d = dn[win, np.arange(nb)]
    shifted = flags[win] & ~skip
    d = np.where(skip, F32(0), d)
    bad = np.asarray(np.isnan(sx).any(axis=0)) if fast else np.zeros(nb, bool)
    return d, shifted, bad


def exact_search_t(xt: np.ndarray, wt: np.ndarray, bi: BestIndex, bis: BestIndex, ntry: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """scale_search_t with the exact level tables (for the blocks the fast tables cannot decide)."""
    d, shifted, _ = scale_search_t(xt, wt, bi, bis, ntry, False)
    return d, shifted


def chunked_two_pass(rows: np.ndarray, imatrix: np.ndarray | None, row_bytes: int,
                     search: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                     exact: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                     finish: Callable[..., np.ndarray], chunk_blocks: int = 2048) -> np.ndarray:
    """The driver of the row-scale types: rows (nrows, n) in chunks of whole rows (about
    chunk_blocks blocks of 32). Pass 1 per chunk: search(xt, wt) -> (scale, shifted, bad) on the
    transposed blocks and their weights; the blocks the fast tables could not decide (bad) of all
    chunks are searched again at once by exact(xt, wt) (one call: its cost is mostly per call).
    Pass 2 per chunk: finish(xr, xt, wt, scale, shifted) -> the chunk's bytes (nr, row_bytes)."""
    nrows, n = rows.shape
    B = n // BLOCK
    step = max(1, chunk_blocks // B)
    scale = np.empty(nrows * B, F32)
    shifted = np.empty(nrows * B, bool)
    bad_idx, bad_x, bad_w = [], [], []

    def blocks(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xr = rows[r0:r1]
        xt = np.ascontiguousarray(xr.reshape(-1, BLOCK).T)
        return xr, xt, block_weights_t(xt, imatrix, xr)

    for r0 in range(0, nrows, step):
        r1 = min(nrows, r0 + step)
        _, xt, wt = blocks(r0, r1)
        sc, sh, bad = search(xt, wt)
        scale[r0 * B:r1 * B] = sc
        shifted[r0 * B:r1 * B] = sh
        if bad.any():
            k = np.flatnonzero(bad)
            bad_idx.append(k + r0 * B)
            bad_x.append(xt[:, k])
            bad_w.append(wt[:, k])
    if bad_idx:
        k = np.concatenate(bad_idx)
        scale[k], shifted[k] = exact(np.concatenate(bad_x, axis=1), np.concatenate(bad_w, axis=1))
    out = np.empty((nrows, row_bytes), np.uint8)
    for r0 in range(0, nrows, step):
        r1 = min(nrows, r0 + step)
        xr, xt, wt = blocks(r0, r1)
        out[r0:r1] = finish(xr, xt, wt, scale[r0 * B:r1 * B], shifted[r0 * B:r1 * B])
    return out


# --- pass 2: the row scale, block scales and levels ----------------------------------------------

def _row_pass(d_blk: np.ndarray, shifted: np.ndarray, nrows: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row d = max|scale|/127 (NaN scales skipped as std::max does) and per block: the scale byte,
    l (int32, odd) and 1/(d*l)."""
    amax_scale = np.fmax.reduce(np.abs(d_blk).reshape(nrows, -1), axis=1, initial=F32(0))
    d = (amax_scale / F32(127)).astype(F32)
    B = d_blk.size // nrows
    dr = np.repeat(d, B)
    idr = recip(dr)
    li = nearest_int(F32(0.5) * (idr * d_blk + F32(127)))
    li = np.clip(li, 0, 127) << 1
    scale_byte = (li | shifted).astype(np.uint8)
    li = li - 127
    dl = dr * li.astype(F32)
    return d, scale_byte, li, recip(dl)


def _levels(xt: np.ndarray, idl: np.ndarray, shifted: np.ndarray, bi: BestIndex, bis: BestIndex) -> np.ndarray:
    """best_index(block_values, idl*x) (32, nb) uint8, block_values by the block's extra bit."""
    a = xt * idl
    return np.where(shifted, bis(a), bi(a))


def _finish(xr: np.ndarray, xt: np.ndarray, wt: np.ndarray, scale: np.ndarray, shifted: np.ndarray,
            is5: bool) -> np.ndarray:
    """Pass 2 of the row (chunk of rows xr) -> its bytes: row scale, block scale bytes, levels."""
    nr, n = xr.shape
    nsb = n // QK_K
    bi, bis, blk = (IQ5_BI, IQ5_BI_SHIFTED, BLOCK_IQ5_KS) if is5 else (IQ4_BI, IQ4_BI_SHIFTED, BLOCK_IQ4_KS)
    d, sbyte, li, idl = _row_pass(scale, shifted, nr)
    L = _levels(xt, idl, shifted, bi, bis)
    vals = np.concatenate([bi.ivalues, bis.ivalues])
    q = (vals.take(L.astype(np.intp) + shifted * bi.ivalues.size, mode="wrap") * li).astype(F32)
    wq = wt * q
    tx = wq * xt
    wq *= q
    if is5:
        sx, s2 = seq_sum(row_order(tx, nr)), seq_sum(row_order(wq, nr))
    else:
        sx = seq_sum(row_order(tx[:16] + tx[16:], nr))
        s2 = seq_sum(row_order(wq[:16] + wq[16:], nr))
    dfin = np.where(s2 > 0, sx / s2, d).astype(F32)
    y = np.zeros(nr * nsb, blk)
    lb = L.T.reshape(nr * nsb, 8, BLOCK)
    y["scales"] = sbyte.reshape(-1, 8)
    if is5:
        lo = lb & np.uint8(15)
        y["qs"] = (lo[:, 0::2] | (lo[:, 1::2] << np.uint8(4))).reshape(-1, 128)
        hi = (lb >> np.uint8(4)) << np.arange(8, dtype=np.uint8)[None, :, None]
        y["qh"] = np.bitwise_or.reduce(hi, axis=1)
    else:
        y["qs"] = (lb[:, :, :16] | (lb[:, :, 16:] << np.uint8(4))).reshape(-1, 128)
    yb = y.view(np.uint8).reshape(nr, -1)
    zero = d == 0
    if zero.any():  # C returns after pass 1: only the extra bits are set
        yz = np.zeros(int(zero.sum()) * nsb, blk)
        yz["scales"] = shifted.reshape(nr, -1)[zero].reshape(-1, 8)
        yb[zero] = yz.view(np.uint8).reshape(-1, yb.shape[1])
        dfin = np.where(zero, d, dfin)
    out = np.empty((nr, 4 + yb.shape[1]), np.uint8)
    out[:, :4] = dfin.astype(F32).view(np.uint8).reshape(nr, 4)
    out[:, 4:] = yb
    return out


@ieee
def _quantize(rows: np.ndarray, imatrix: np.ndarray | None, kind: str) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"{kind}: row length {n} is not a multiple of {QK_K}")
    is5 = kind == "IQ5_KS"
    bi, bis, ntry, blk = (IQ5_BI, IQ5_BI_SHIFTED, 5, BLOCK_IQ5_KS) if is5 else (IQ4_BI, IQ4_BI_SHIFTED, 7, BLOCK_IQ4_KS)
    return chunked_two_pass(
        rows, imatrix, 4 + n // QK_K * blk.itemsize,
        lambda xt, wt: scale_search_t(xt, wt, bi, bis, ntry),
        lambda xt, wt: exact_search_t(xt, wt, bi, bis, ntry),
        functools.partial(_finish, is5=is5), _CHUNK_BLOCKS)


def quantize_iq4_ks(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq4_ks: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, 4 + n/256*136)."""
    return _quantize(rows, imatrix, "IQ4_KS")


def quantize_iq5_ks(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq5_ks: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, 4 + n/256*168)."""
    return _quantize(rows, imatrix, "IQ5_KS")


# --- dequantize ---------------------------------------------------------------------------------

def _block_dl(d: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """d * ((scale & 254) - 127) per block (nrows, nblocks) float32."""
    return d[:, None] * ((scales & 254).astype(np.int32) - 127).astype(F32)


@ieee
def dequantize_iq4_ks(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq4_ks: uint8 (nrows, 4 + n/256*136) -> float32 (nrows, n)."""
    d, body = row_meta_split(data)
    nrows = d.size
    y = np.ascontiguousarray(body).reshape(-1).view(BLOCK_IQ4_KS).reshape(nrows, -1)
    sc = y["scales"].reshape(nrows, -1)
    dl = _block_dl(d, sc)[:, :, None]
    qs = y["qs"].reshape(nrows, -1, 16)
    vals = IQ4K_VALUES.astype(F32)
    off = ((sc & 1).astype(np.intp) << 4)[:, :, None]
    out = np.empty((nrows, sc.shape[1], BLOCK), F32)
    out[:, :, :16] = dl * vals[off + (qs & 15)]
    out[:, :, 16:] = dl * vals[off + (qs >> 4)]
    return out.reshape(nrows, n)


@ieee
def dequantize_iq5_ks(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq5_ks: uint8 (nrows, 4 + n/256*168) -> float32 (nrows, n)."""
    d, body = row_meta_split(data)
    nrows = d.size
    y = np.ascontiguousarray(body).reshape(-1).view(BLOCK_IQ5_KS).reshape(nrows, -1)
    sc = y["scales"].reshape(nrows, -1)
    nsb = sc.shape[1] // 8
    dl = _block_dl(d, sc).reshape(nrows, nsb, 8, 1)
    qs = y["qs"].reshape(nrows, nsb, 4, 32)
    qh = y["qh"].reshape(nrows, nsb, 1, 32)
    lo = np.stack([qs & 15, qs >> 4], axis=3).reshape(nrows, nsb, 8, 32)  # block 2*i, 2*i+1
    hi = (qh >> np.arange(8, dtype=np.uint8)[None, None, :, None]) & 1
    idx = lo.astype(np.intp) | (hi.astype(np.intp) << 4)
    off = ((sc.reshape(nrows, nsb, 8, 1) & 1).astype(np.intp) << 5)
    out = dl * IQ5NL_VALUES.astype(F32)[off + idx]
    return out.reshape(nrows, n)


QUANTIZE: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]] = {
    "IQ4_KS": quantize_iq4_ks, "IQ5_KS": quantize_iq5_ks}
DEQUANTIZE: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "IQ4_KS": dequantize_iq4_ks, "IQ5_KS": dequantize_iq5_ks}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())  # ik_llama.cpp's own type
