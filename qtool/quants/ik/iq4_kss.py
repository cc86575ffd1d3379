"""ik_llama.cpp's IQ4_KSS: IQ4_KS's levels re-coded in 15 bits per 4 values, 4.0 bits per weight.

Ports of ggml/src/iqk/iqk_quantize.cpp (`quantize_iq4_kss` / `quantize_row_iq4_kss_impl`,
`prune_iq4ks`, `scramble_table`, `dequantize_row_iq4_kss`), byte-exact with the -ffp-contract=off
build. Per block of 32 the values are taken in groups of 4: xv = x[2k], x[2k+16], x[2k+1],
x[2k+17], k = 0..7; a group's 4 level indices v (16 bits) must have an even number of set bits so
that v fits in 15 bits; `prune_iq4ks` makes an odd group even by moving one of its 4 levels by
1 or 2 to the neighbour of other popcount parity with the least weighted error increase
w*(diff1² - diff0²) (diff0 always from the unshifted table, as in C).

- Pass 1, per block: weights as IQ4_KS (x*x, or qw*sqrtf(sigma2 + x*x) after QHelper's guard);
  best = 0, d = max/127; for itry = -7..7, id = (itry + values[0])/max, then the shifted table's,
  the levels of +id*x and -id*x, pruned with dl = 1/id, give sums in group order; a candidate
  replaces the best when sumq2 > 0 and sumqx² > best*sumq2. No first candidate.
- Pass 2, per row: d = max|scale|/127, per block l = 2*clamp(nearest_int(0.5*(scale/d + 127)),
  0, 127) - 127 (odd), dl = d*l; levels of x/dl on both tables, pruned; the table with the smaller
  weighted squared error (shifted only when strictly smaller) wins; the row scale is
  1.01 * sumqx/sumq2 summed along the row in C's order.
- Storage: per group a uint16 (scramble_table[v & 0x7fff] << 1) | bit k of (l + 127 | shifted);
  the dequantizer undoes it with a = q & 0xfffe; a ^= a >> 1.

Work is on (32, nb) transposed chunks of whole rows (IQ4_KS's driver `chunked_two_pass`), the
rows of a block permuted to group order. Pass 1 reads, per value and candidate, one record of the
cell tables (level value with its popcount parity, its up to 3 prune alternatives) and prunes all
groups at once: per value the best alternative score, per odd group the first value reaching the
group's minimum (C's scan order); blocks that met an undecided cell are searched again with the
exact tables and the gathered `prune_t`, which pass 2 uses too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ..numeric import F32, QK_K, absmax_t, c_einsum, ieee, nearest_int, recip
from ..registry import register
from .iq45_ks import (
    CELL_SCALE,
    IQ4_BI,
    IQ4_BI_SHIFTED,
    BestIndex,
    chunked_two_pass,
    row_meta_split,
    row_order,
    seq_sum,
)
from .iqk_k456 import einsum_sums_ok
from .iqk_tables import IQ4K_VALUES

__all__ = ["DEQUANTIZE", "QUANTIZE", "SCRAMBLE_TABLE", "dequantize_iq4_kss", "exact_search_t", "prune_t",
           "quantize_iq4_kss", "scale_search_t"]

BLOCK = 32
NTRY = 7
_CHUNK_BLOCKS = 2048

GROUP_ORDER = np.array([[2 * k, 2 * k + 16, 2 * k + 1, 2 * k + 17] for k in range(8)]).reshape(-1)
"""Position in the block of row r = 4k + j of the group-ordered layout (C's xv[j] of group k)."""


def _scramble_table() -> np.ndarray:
    """scramble_table(): for i < 2^15, the j < 2^15 with j ^ (j << 1) == i | parity(i) << 15,
    i.e. the prefix XOR of the bits of that 16-bit value."""
    i = np.arange(1 << 15, dtype=np.uint32)
    par = np.zeros_like(i)
    for b in range(15):
        par ^= (i >> b) & 1
    val = i | (par << 15)
    j = np.zeros_like(i)
    for s in range(16):
        j ^= val << s
    j &= 0xFFFF
    assert ((j ^ (j << 1)) & 0xFFFF == val).all() and (j < (1 << 15)).all()
    return j.astype(np.uint16)


SCRAMBLE_TABLE = _scramble_table()

_PARITY = np.array([bin(q).count("1") & 1 for q in range(16)], np.uint8)
_ALT = np.full((3, 16), 255, np.uint8)
"""prune_iq4ks's alternatives of a level q: qq in [q-2, q+2], qq != q, popcount parity of qq differs;
ascending (C's iq order), at most 3, 255 where fewer."""
for _q in range(16):
    _alts = [qq for qq in range(max(_q - 2, 0), min(_q + 2, 15) + 1) if qq != _q and _PARITY[qq] != _PARITY[_q]]
    _ALT[:len(_alts), _q] = _alts
del _q, _alts
_V4 = IQ4K_VALUES[:16].astype(F32)
assert (IQ4K_VALUES[16:].astype(np.int32) - IQ4K_VALUES[:16] == 4).all()  # _fast_side's diff0 relies on it


def _alt_values(values: np.ndarray) -> np.ndarray:
    """(3, 16) float32: values[alternative s of q] (NaN where q has no alternative s)."""
    v = np.append(np.asarray(values, F32), F32(np.nan))
    return v[np.minimum(_ALT, 16)]


_ALTV = {False: _alt_values(IQ4K_VALUES[:16]), True: _alt_values(IQ4K_VALUES[16:])}


def prune_t(q: np.ndarray, xg: np.ndarray, wg: np.ndarray, dl: np.ndarray, shifted: bool) -> None:
    """prune_iq4ks on every group, in place: q uint8 (8, 4, nb) level indices, xg, wg float32
    (8, 4, nb) the group-ordered values and weights, dl float32 (nb,) the trial scale of each
    block, shifted: which half of iq4k_values `values` is (diff0 always uses the unshifted one)."""
    par = _PARITY.take(q, mode="wrap")
    odd = par[:, 0] ^ par[:, 1] ^ par[:, 2] ^ par[:, 3]  # (8, nb)
    ks, bs = np.nonzero(odd)
    if ks.size == 0:
        return
    qo = q[ks, :, bs].T  # (4, nodd)
    xo = xg[ks, :, bs].T
    wo = wg[ks, :, bs].T
    dlo = dl[bs]
    d0 = dlo * _V4.take(qo, mode="wrap") - xo
    d0 *= d0
    altv = _ALTV[shifted]
    scores = np.empty((4, 3, ks.size), F32)
    for s in range(3):
        d1 = dlo * altv[s].take(qo, mode="wrap") - xo
        d1 *= d1
        d1 -= d0
        np.multiply(wo, d1, out=scores[:, s])
    flat = scores.reshape(12, -1)
    flat[np.isnan(flat)] = np.inf  # no alternative: never chosen (C: score < best_score)
    c = np.argmin(flat, axis=0)  # the first of the smallest: C's strict < in j, iq order
    j, s = np.divmod(c, 3)
    cols = np.arange(ks.size)
    q[ks, j, bs] = _ALT[s, qo[j, cols]]


def _levels_t(a: np.ndarray, bi: BestIndex, neg: bool = False) -> np.ndarray:
    """best_index_iq4nl(values, +-a) (same shape as a, uint8), exact."""
    return bi(-a if neg else a)


def _cand_sums(q: np.ndarray, values: np.ndarray, xp: np.ndarray, wp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sumqx += w*q*x, sumq2 += w*q*q over the group-ordered rows of (32, nb)."""
    qv = values.take(q.reshape(BLOCK, -1), mode="wrap")
    wq = np.multiply(wp, qv)
    q2 = np.multiply(wq, qv)
    wq *= xp
    return seq_sum(wq), seq_sum(q2)


def _records(bi: BestIndex, shifted: bool, side: np.ndarray) -> np.ndarray:
    """Per cell of the fast level table `side` (bi.i_p or bi.i_m) one complex128 (4 float32):
    q + 0.5*parity(q) (the level value and its popcount parity in one exact float), then the
    values of q's alternatives (`_NO_ALT` where fewer than 3). NaN on unresolved cells, so that a
    block meeting one ends with NaN sums (and is searched again exactly)."""
    ok = side != 255
    idx = side[ok].astype(np.intp)
    f = np.full((65536, 4), np.nan, F32)
    f[ok, 0] = bi.values[idx] + F32(0.5) * _PARITY[idx]
    f[ok, 1:4] = np.nan_to_num(_ALTV[shifted][:, idx].T, nan=float(_NO_ALT))
    return f.view(np.complex128).reshape(-1)


_NO_ALT = F32(1000)
"""A missing alternative in the fast records: a level so far away that its score never wins (with
w = 0 every score is 0 and the value's first alternative, always present, comes first)."""


@functools.cache
def _all_records() -> dict[tuple[bool, bool], np.ndarray]:
    """The fast records by (shifted, neg), built on first use."""
    return {(sh, neg): _records(bi, sh, bi.i_m if neg else bi.i_p)
            for sh, bi in ((False, IQ4_BI), (True, IQ4_BI_SHIFTED)) for neg in (False, True)}


def _fast_side(k: np.ndarray, rec: np.ndarray, shifted: bool, xp: np.ndarray, wp: np.ndarray,
               dl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One candidate, levels from the cell keys k (uint16 (32, nb)): prune_iq4ks on every group,
    then the sums. Per value its scores for its (up to 3) alternatives and their
    minimum; per odd group the smallest score; the first value (C's j order) reaching it moves to
    its first alternative (C's iq order) with that score: C's strict `score < best_score` scan."""
    nb = xp.shape[1]
    r = rec.take(k, mode="wrap").view(F32).reshape(BLOCK, nb, 4)
    s = r[..., 0]
    q = np.floor(s)
    # parity of the group: sum of the 4 (q + parity/2) is an integer + 1/2 for an odd group
    sg = s.reshape(8, 4, nb)
    ps = sg[:, 0] + sg[:, 1]
    ps += sg[:, 2]
    ps += sg[:, 3]
    ps -= np.floor(ps)
    ps *= F32(2)
    ps -= F32(1)
    np.sqrt(ps, out=ps)  # 0 for an odd group, NaN for an even one
    # diff0 from the unshifted value of the same index: shifted values are all 4 higher
    d0 = np.subtract(q, F32(4)) if shifted else q.copy()
    d0 *= dl
    d0 -= xp
    d0 *= d0
    scs = []
    for a in range(1, 4):
        sc = np.multiply(r[..., a], dl)
        sc -= xp
        sc *= sc
        sc -= d0
        sc *= wp
        scs.append(sc)
    bmin = np.fmin(scs[0], scs[1])
    np.fmin(bmin, scs[2], out=bmin)
    e = bmin.reshape(8, 4, nb)
    gmin = np.fmin(e[:, 0], e[:, 1])
    np.fmin(gmin, e[:, 2], out=gmin)
    np.fmin(gmin, e[:, 3], out=gmin)
    gmin += ps  # NaN for an even group: no value of it reaches its minimum
    hit = e == gmin[:, None, :]  # (8, 4, nb)
    seen = hit[:, 0].copy()
    for j in (1, 2, 3):  # keep the first j only
        h = hit[:, j]
        h &= ~seen
        seen |= h
    el = np.flatnonzero(hit)  # one value per odd group (its index in the (32, nb) layout)
    if el.size:
        rh = r.reshape(-1, 4).take(el, axis=0, mode="wrap")
        bh = bmin.reshape(-1).take(el, mode="wrap")
        nv = np.where(scs[0].reshape(-1).take(el, mode="wrap") == bh, rh[:, 1],
                      np.where(scs[1].reshape(-1).take(el, mode="wrap") == bh, rh[:, 2], rh[:, 3]))
        q.reshape(-1)[el] = nv
    if nb > 1 and einsum_sums_ok():  # one pass per sum, C's loop (see iqk_k456.einsum_sums_ok)
        return c_einsum("kjb,jb,jb->kb", q[None], wp, xp)[0], c_einsum("kjb,jb,kjb->kb", q[None], wp, q[None])[0]
    wq = np.multiply(wp, q)
    q2 = np.multiply(wq, q)
    wq *= xp
    return seq_sum(wq), seq_sum(q2)


def _scan(sx: np.ndarray, s2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """C's sequential choice over the candidates' sums (ncand, nb) in order, from best = 0 and the
    initial d: a candidate wins when sumq2 > 0 and sumqx² > best*sumq2; then d = sumqx/sumq2 and
    best = d*sumqx."""
    nb = d.size
    dn = sx / s2
    bn = dn * sx
    ok = s2 > 0
    sx = sx * sx
    best = np.zeros(nb, F32)
    win = np.full(nb, -1, np.intp)
    for c in range(sx.shape[0]):
        upd = sx[c] > best * s2[c]
        upd &= ok[c]
        best = np.where(upd, bn[c], best)
        win = np.where(upd, c, win)
    return np.where(win >= 0, dn[np.maximum(win, 0), np.arange(nb)], d)


def _start(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(skip, max, initial d = -max/values[0]) of each block: max is C's first largest |x|."""
    amax, mx = absmax_t(xt)
    skip = amax < F32(1e-16)
    mx = np.where(skip, F32(1), mx)
    return skip, mx, -mx / F32(IQ4K_VALUES[0])


NCAND = 4 * (2 * NTRY + 1)


def scale_search_t(xt: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1 of quantize_row_iq4_kss_impl on (32, nb) blocks and weights -> (scale (nb,), shifted
    (all False: pass 1 keeps no table choice), bad (nb,): blocks that met an unresolved cell of
    the fast tables, to be searched exactly). All candidates' sums (itry = -7..7: p, m of the plain
    table, p, m of the shifted one), then C's sequential choice."""
    nb = xt.shape[1]
    skip, mx, d = _start(xt)
    xp = np.ascontiguousarray(xt[GROUP_ORDER])
    wp = np.ascontiguousarray(wt[GROUP_ORDER])
    sx = np.empty((NCAND, nb), F32)
    s2 = np.empty((NCAND, nb), F32)
    recs = _all_records()
    c = 0
    for itry in range(-NTRY, NTRY + 1):
        for shifted, bi in ((False, IQ4_BI), (True, IQ4_BI_SHIFTED)):
            id_ = F32(itry + int(bi.ivalues[0])) / mx
            this_d = F32(1) / id_
            keys = bi.cell_keys(xp * (id_ * CELL_SCALE))  # 128*(id*x), exactly
            for neg in (False, True):
                sx[c], s2[c] = _fast_side(keys[neg], recs[shifted, neg], shifted, xp, wp, this_d)
                c += 1
    d = _scan(sx, s2, d)
    return np.where(skip, F32(0), d), np.zeros(nb, bool), np.asarray(np.isnan(sx).any(axis=0))


def exact_search_t(xt: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scale_search_t with the exact level tables and the gathered prune_t (for the blocks the
    fast tables cannot decide)."""
    nb = xt.shape[1]
    if nb == 1:  # numpy sums a lone column pairwise, not in order: run two copies
        d, sh = exact_search_t(np.repeat(xt, 2, axis=1), np.repeat(wt, 2, axis=1))
        return d[:1], sh[:1]
    skip, mx, d = _start(xt)
    xp = np.ascontiguousarray(xt[GROUP_ORDER])
    wp = np.ascontiguousarray(wt[GROUP_ORDER])
    xg = xp.reshape(8, 4, nb)
    wg = wp.reshape(8, 4, nb)
    sx = np.empty((NCAND, nb), F32)
    s2 = np.empty((NCAND, nb), F32)
    c = 0
    for itry in range(-NTRY, NTRY + 1):
        for shifted, bi in ((False, IQ4_BI), (True, IQ4_BI_SHIFTED)):
            id_ = F32(itry + int(bi.ivalues[0])) / mx
            this_d = F32(1) / id_
            al = xp * id_
            for neg in (False, True):
                q = _levels_t(al, bi, neg).reshape(8, 4, nb)
                prune_t(q, xg, wg, this_d, shifted)
                sx[c], s2[c] = _cand_sums(q, bi.values, xp, wp)
                c += 1
    d = _scan(sx, s2, d)
    return np.where(skip, F32(0), d), np.zeros(nb, bool)


@ieee
def quantize_iq4_kss(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq4_kss: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, 4 + n/256*128)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    n = rows.shape[1]
    if n % QK_K:
        raise ValueError(f"IQ4_KSS: row length {n} is not a multiple of {QK_K}")
    return chunked_two_pass(rows, imatrix, 4 + n // 2, scale_search_t, exact_search_t, _finish, _CHUNK_BLOCKS)


def _finish(xr: np.ndarray, xt: np.ndarray, wt: np.ndarray, scale: np.ndarray, _shifted: np.ndarray) -> np.ndarray:
    """Pass 2 of quantize_row_iq4_kss_impl on a chunk of rows xr -> their bytes."""
    nr, n = xr.shape
    nb = xt.shape[1]
    xp = np.ascontiguousarray(xt[GROUP_ORDER])
    wp = np.ascontiguousarray(wt[GROUP_ORDER])
    amax_scale = np.fmax.reduce(np.abs(scale).reshape(nr, -1), axis=1, initial=F32(0))
    d = (amax_scale / F32(127)).astype(F32)
    dr = np.repeat(d, nb // nr)
    li = nearest_int(F32(0.5) * (recip(dr) * scale + F32(127)))
    li = (np.clip(li, 0, 127) << 1) - 127
    dl = dr * li.astype(F32)
    al = xp * recip(dl)
    xg = xp.reshape(8, 4, nb)
    wg = wp.reshape(8, 4, nb)
    qs = []
    mse = []
    for shifted, bi in ((False, IQ4_BI), (True, IQ4_BI_SHIFTED)):
        q = _levels_t(al, bi).reshape(8, 4, nb)
        prune_t(q, xg, wg, dl, shifted)
        diff = xp - dl * bi.values.take(q.reshape(BLOCK, nb), mode="wrap")
        e = wp * diff
        e *= diff
        qs.append(q)
        mse.append(seq_sum(e))
    use_s = mse[1] < mse[0]
    qb = np.where(use_s, qs[1], qs[0]).reshape(BLOCK, nb)
    ivals = np.concatenate([IQ4K_VALUES[:16], IQ4K_VALUES[16:]]).astype(np.int32)
    qv = (ivals[qb.astype(np.intp) + (use_s * 16)] * li).astype(F32)
    wq = wp * qv
    tx = wq * xp
    wq *= qv
    sx = seq_sum(row_order(tx, nr))
    s2 = seq_sum(row_order(wq, nr))
    dfin = np.where(s2 > 0, (sx / s2) * F32(1.01), d).astype(F32)
    # storage
    lb = (li + 127) | use_s  # (nb,)
    v = qb.reshape(8, 4, nb).astype(np.uint16)
    v16 = v[:, 0] | (v[:, 1] << 4) | (v[:, 2] << 8) | (v[:, 3] << 12)  # (8, nb)
    code = SCRAMBLE_TABLE.take(v16 & 0x7FFF, mode="wrap").astype(np.uint16) << 1
    code |= ((lb[None, :] >> np.arange(8)[:, None]) & 1).astype(np.uint16)
    zero = d == 0
    res = np.zeros((nr, 4 + n // 2), np.uint8)
    body = np.ascontiguousarray(code.T).reshape(nr, -1)  # per block 8 uint16, blocks in row order
    body[zero] = 0  # C returns after pass 1: d = 0, blocks zeroed
    res[:, 4:] = body.view(np.uint8)
    res[:, :4] = np.where(zero, d, dfin).astype(F32).view(np.uint8).reshape(nr, 4)
    return res


@ieee
def dequantize_iq4_kss(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq4_kss: uint8 (nrows, 4 + n/256*128) -> float32 (nrows, n)."""
    d, body = row_meta_split(data)
    nrows = d.size
    q16 = np.ascontiguousarray(body).view("<u2").reshape(nrows, -1, 8)  # (nrows, blocks, 8)
    ls = np.zeros(q16.shape[:2], np.int32)
    for k in range(8):
        ls |= (q16[:, :, k] & 1).astype(np.int32) << k
    a = q16 & np.uint16(0xFFFE)
    a ^= a >> np.uint16(1)
    a8 = a.view(np.uint8)  # (nrows, blocks, 16): aux8, little-endian
    off = ((ls & 1) << 4)[:, :, None]
    dl = (d[:, None] * ((ls & 254) - 127).astype(F32))[:, :, None]
    vals = IQ4K_VALUES.astype(F32)
    y = np.empty((nrows, q16.shape[1], BLOCK), F32)
    y[:, :, :16] = dl * vals[off + (a8 & 15)]
    y[:, :, 16:] = dl * vals[off + (a8 >> 4)]
    return y.reshape(nrows, n)


QUANTIZE: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]] = {"IQ4_KSS": quantize_iq4_kss}
DEQUANTIZE: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"IQ4_KSS": dequantize_iq4_kss}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())  # ik_llama.cpp's own type
