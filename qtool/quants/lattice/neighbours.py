"""The neighbour search of mainline ggml's 2-bit-coded lattice types (IQ2_XXS / IQ2_XS / IQ2_S,
IQ1_S / IQ1_M): `iq2_find_best_neighbour` and `iq1_find_best_neighbour2` for many groups at once.

C, per off-grid group of 8 (code u, neighbour list kneighbors_q2xs[-kmap[u]-1], scale s, values
xval, weights w, level values xg: IQ2 (1, 3, 5), IQ1 (-1, 0, 1) +/- 0.125):
    d2 = 0; for i in 0..7: diff = s*xg[l_i] - xval[i]; d2 += (w[i]*diff)*diff;
    if (d2 < best) { best = d2; index = candidate }      (best starts at FLT_MAX)
so the first candidate in list order with the least d2 wins.

Two exact forms, same result (tested against each other on many random groups):
- best_neighbours_flat: one flat candidate array over the ragged lists, the 24 terms
  (w*diff)*diff of each group (8 elements x 3 levels) gathered per candidate and added in C's
  order, a segmented min (np.fmin.reduceat: NaN never wins, as with C's `<`), the first index
  reaching it. Cheapest for short lists.
- the bucketed form (as iq3.best_neighbour), used for the groups whose list is longer than
  _FLAT_MAX_WIDTH when there are at least _MIN_BUCKETED of them (IQ2_XXS / IQ2_XS mostly): groups
  sorted into buckets by (list-length bucket, level-value set), each searched on transposed
  (width, m) arrays gathered from per-bucket cached tables (a list shorter than the width
  repeats its first entry, which cannot change the first least d2). The partial sum over
  elements 0..4 is one gather from a per-group table of all 3^5 level combinations (built with
  the same float32 additions in the same order, 0 + t0 = t0 exactly), elements 5..7 are added
  in order, the winner is argmin down axis 0 (first least; a NaN d2 counts as +inf).
Measured (32 random rows of 4096, old flat-only code against this, same process, 2 shared and
noisy cores): IQ2_XS quantization 1.15-1.3x faster, IQ2_XXS ~1.05x; IQ2_S and IQ1_S / IQ1_M
have short lists or fewer than _MIN_BUCKETED long-list groups per call, stay on the flat form
(same speed). A lower bound from the 5-element partial sum prunes only ~half the candidates
(tried: slower), and wider prefix tables cost more than they save.
"""

from __future__ import annotations

import numpy as np

from ...errors import AbortError

F32 = np.float32
_FLT_MAX = np.finfo(F32).max
_KP = 5  # elements summed through the per-group prefix table (3^_KP level combinations)
_KP_MIN_WIDTH = 4  # buckets at least this wide use it
_FLAT_MAX_WIDTH = 33  # lists up to this long go through best_neighbours_flat (measured)
_MIN_BUCKETED = 3000  # fewer long-list groups in a call: all flat (per-bucket overhead; IQ1 calls have ~1900)
_WIDTHS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 22, 27, 33, 40, 50, 62, 77, 96, 120, 150, 190, 240, 300)

# id(tables) -> _Layout; the tables objects are cached per process (and kept alive here)
_LAYOUTS: dict[int, _Layout] = {}


class _Layout:
    """Bucketing of one type's neighbour lists: bucket id and in-bucket column of every off-grid
    code, and lazily per bucket the padded candidate indices / levels and coordinate tables."""

    def __init__(self, t) -> None:
        self.t = t
        kmap = np.asarray(t.kmap)
        nbr = np.asarray(t.neighbours)
        pts = np.flatnonzero(kmap < 0)
        off = (-kmap[pts].astype(np.int64)) - 1
        cnt = nbr[off].astype(np.int64)
        maxn = int(cnt.max())
        widths = [w for w in _WIDTHS if w < maxn] + [maxn]
        self.widths = tuple(widths)
        bid = np.searchsorted(np.array(widths), cnt, side="left")
        self.bucket = np.zeros(kmap.size, np.uint8)  # on-grid codes: unused
        self.bucket[pts] = bid
        self.col = np.zeros(kmap.size, np.intp)
        self.members: list[tuple[np.ndarray, np.ndarray]] = []
        for k in range(len(widths)):
            sel = np.flatnonzero(bid == k)
            self.col[pts[sel]] = np.arange(sel.size)
            self.members.append((off[sel], cnt[sel]))
        self.cand: dict[int, np.ndarray] = {}
        self.coords: dict[tuple[int, bytes], tuple[np.ndarray, ...]] = {}
        self.codes: dict[int, np.ndarray] = {}

    def candidates(self, k: int) -> np.ndarray:
        """Grid indices intp (width, P_k) of bucket k's lists, padded with their first entry."""
        c = self.cand.get(k)
        if c is None:
            width = self.widths[k]
            off, cnt = self.members[k]
            j = np.arange(width)[:, None]
            pos = off[None, :] + 1 + np.where(j < cnt[None, :], j, 0)
            c = np.asarray(self.t.neighbours)[pos].astype(np.intp)
            self.cand[k] = c
        return c

    def prefix_codes(self, k: int) -> np.ndarray:
        """intp (width, P_k): sum_{i<_KP} level_i * 3^i of every candidate (its prefix code)."""
        c = self.codes.get(k)
        if c is None:
            lv = np.asarray(self.t.levels).astype(np.intp)
            code = lv[:, 0].copy()
            for i in range(1, _KP):
                code += lv[:, i] * 3 ** i
            c = np.ascontiguousarray(code[self.candidates(k)])
            self.codes[k] = c
        return c

    def coord_tables(self, k: int, qv: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per coordinate i, float32 (width, P_k): qv[level_i] of every candidate."""
        key = (k, qv.tobytes())
        ct = self.coords.get(key)
        if ct is None:
            c = self.candidates(k)
            lv = np.asarray(self.t.levels)
            ct = tuple(np.ascontiguousarray(qv[lv[:, i]][c]) for i in range(8))
            self.coords[key] = ct
        return ct


def _layout(t) -> _Layout:
    lay = _LAYOUTS.get(id(t))
    if lay is None or lay.t is not t:
        lay = _Layout(t)
        _LAYOUTS[id(t)] = lay
    return lay


def best_neighbours(t, u: np.ndarray, x: np.ndarray, w: np.ndarray, sc: np.ndarray,
                    qsets: np.ndarray, qsel: np.ndarray | None = None,
                    strict: bool = False) -> np.ndarray:
    """Best grid neighbour of m off-grid groups: tables t (kmap, neighbours, levels (N, 8)), codes
    u (m,), xval / weights x, w float32 (m, 8), scale sc (m,), level-value sets qsets float32
    (K, 3) and each group's set qsel (m,) (None: set 0) -> grid index int64 (m,). strict: raise
    when a group has no candidate with d2 < FLT_MAX (where ggml aborts); otherwise such a group
    takes its first least d2."""
    m = u.size
    if m == 0:
        return np.empty(0, np.int64)
    lay = _layout(t)
    nlong = np.searchsorted(np.array(lay.widths), _FLAT_MAX_WIDTH, side="right")
    long_ = lay.bucket[u] >= nlong
    nl = int(np.count_nonzero(long_))
    if nl < _MIN_BUCKETED:
        return best_neighbours_flat(t, u, x, w, sc, qsets, qsel, strict)
    if nl == m:
        return best_neighbours_bucketed(t, u, x, w, sc, qsets, qsel, strict)
    out = np.empty(m, np.int64)
    for sel, fn in ((~long_, best_neighbours_flat), (long_, best_neighbours_bucketed)):
        ix = np.flatnonzero(sel)
        out[ix] = fn(t, u[ix], x[ix], w[ix], sc[ix], qsets, None if qsel is None else qsel[ix], strict)
    return out


def best_neighbours_bucketed(t, u: np.ndarray, x: np.ndarray, w: np.ndarray, sc: np.ndarray,
                             qsets: np.ndarray, qsel: np.ndarray | None = None,
                             strict: bool = False) -> np.ndarray:
    """best_neighbours through the bucketed form for every group (any list length)."""
    m = u.size
    out = np.empty(m, np.int64)
    if m == 0:
        return out
    lay = _layout(t)
    nsets = qsets.shape[0]
    key = lay.bucket[u].astype(np.intp)
    if nsets > 1 and qsel is not None:
        key *= nsets
        key += qsel
    order = np.argsort(key, kind="stable")
    sizes = np.bincount(key, minlength=len(lay.widths) * nsets)
    us = lay.col[u[order]]
    so = np.asarray(sc, F32)[order]
    xo = [np.ascontiguousarray(x[order, i], F32) for i in range(8)]
    wo = [np.ascontiguousarray(w[order, i], F32) for i in range(8)]
    res = np.empty(m, np.int64)
    bad = False
    a = 0
    for kk in np.flatnonzero(sizes):
        b = a + int(sizes[kk])
        k, qs = divmod(int(kk), nsets)
        width = lay.widths[k]
        cq = lay.coord_tables(k, np.ascontiguousarray(qsets[qs], F32))
        uu = us[a:b]
        s = so[a:b]
        mb = b - a
        tmp = np.empty((width, mb), F32)
        i0 = 0
        if width >= _KP_MIN_WIDTH:
            # d2 after elements 0.._KP-1 for every level combination (3^_KP, per group), summed in
            # C's order (0 + t0 = t0 exactly): pre[g, code] with code = sum l_i 3^i
            qv = np.asarray(qsets[qs], F32)
            pre = None
            for i in range(_KP):
                diff = s[:, None] * qv[None, :]
                diff -= xo[i][a:b, None]
                t = wo[i][a:b, None] * diff
                t *= diff  # (mb, 3)
                pre = t if pre is None else (pre[:, None, :] + t[:, :, None]).reshape(mb, -1)
            assert pre is not None
            ix = lay.prefix_codes(k).take(uu, axis=1)
            ix += np.arange(0, mb * 3 ** _KP, 3 ** _KP)
            d2 = pre.reshape(-1).take(ix)
            i0 = _KP
        else:
            d2 = np.empty((width, mb), F32)
        for i in range(i0, 8):
            diff = cq[i].take(uu, axis=1)
            diff *= s
            diff -= xo[i][a:b]
            np.multiply(wo[i][a:b], diff, out=tmp)
            tmp *= diff
            if i == 0:
                d2, tmp = tmp, d2
            else:
                d2 += tmp
        jj = np.argmin(d2, axis=0)
        cols = np.arange(b - a)
        best = d2[jj, cols]
        nan = np.isnan(best)
        if nan.any():  # C's `<` never takes a NaN: search those groups with NaN as +inf
            fix = np.flatnonzero(nan)
            sub = d2[:, fix]
            sub[np.isnan(sub)] = np.inf
            jj[fix] = np.argmin(sub, axis=0)
            best[fix] = sub[jj[fix], np.arange(fix.size)]
        if strict and not (best < _FLT_MAX).all():
            bad = True
        res[a:b] = lay.candidates(k)[jj, uu]
        a = b
    if bad:
        raise AbortError("no grid neighbour with a finite distance (ggml aborts here)")
    out[order] = res
    return out


def best_neighbours_flat(t, u: np.ndarray, x: np.ndarray, w: np.ndarray, sc: np.ndarray,
                         qsets: np.ndarray, qsel: np.ndarray | None = None, strict: bool = False) -> np.ndarray:
    """The flat form of best_neighbours (same arguments): one flat candidate array over the
    ragged lists, a segmented min, the first index reaching it."""
    m = u.size
    off = -t.kmap[u].astype(np.int64) - 1
    n = t.neighbours[off].astype(np.int64)
    total = int(n.sum())
    ends = np.cumsum(n)
    begins = ends - n
    pos = np.arange(total, dtype=np.int64)
    pos += np.repeat(off + 1 - begins, n)
    cand = t.neighbours[pos].astype(np.intp)
    xx = qsets[qsel][:, None, :] if (qsel is not None and qsets.shape[0] > 1) else qsets[:1]
    diff = (sc[:, None, None] * xx) - x[:, :, None]  # (m, 8, 3)
    terms = w[:, :, None] * diff
    terms *= diff
    flat = terms.reshape(-1)
    base = np.repeat(np.arange(0, 24 * m, 24, dtype=np.intp), n)
    term_off = t.term_off  # (8, N): 3*i + level of element i, built with the tables
    d2 = np.zeros(total, F32)
    for i in range(8):
        d2 += flat[base + term_off[i][cand]]
    mn = np.fmin.reduceat(d2, begins)
    if strict and not (mn < _FLT_MAX).all():
        raise AbortError("no grid neighbour with a finite distance (ggml aborts here)")
    hit = np.flatnonzero(d2 == np.repeat(mn, n))
    hseg = np.searchsorted(ends, hit, side="right")
    first = np.ones(hit.size, bool)
    first[1:] = hseg[1:] != hseg[:-1]
    out = np.full(m, -1, np.int64)
    out[hseg[first]] = cand[hit[first]]
    return out
