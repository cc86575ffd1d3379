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

Work is on (32, nb) transposed chunks of whole rows, rows of a block permuted to group order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..numeric import F32, QK_K, absmax_t, ieee, nearest_int, recip
from .iq45_ks import (
    CELL_SCALE,
    IQ4_BI,
    IQ4_BI_SHIFTED,
    BestIndex,
    block_weights_t,
    row_meta_split,
    seq_sum,
)
from .iqk_tables import IQ4K_VALUES

__all__ = ["DEQUANTIZE", "QUANTIZE", "SCRAMBLE_TABLE", "dequantize_iq4_kss", "prune_t", "quantize_iq4_kss"]

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


def _alt_values(values: np.ndarray) -> np.ndarray:
    """(3, 16) float32: values[alternative s of q] (NaN where q has no alternative s)."""
    v = np.append(np.asarray(values, F32), F32(np.nan))
    return v[np.minimum(_ALT, 16)]


_ALTV = {False: _alt_values(IQ4K_VALUES[:16]), True: _alt_values(IQ4K_VALUES[16:])}


def prune_t(q: np.ndarray, xg: np.ndarray, wg: np.ndarray, dl: np.ndarray, shifted: bool) -> None:
    """prune_iq4ks on every group, in place: q uint8 (8, 4, nb) level indices, xg, wg float32
    (8, 4, nb) the group-ordered values and weights, dl float32 (nb,) the trial scale of each
    block, shifted: which half of iq4k_values `values` is (diff0 always uses the unshifted one)."""
    par = _PARITY.take(q)
    odd = par[:, 0] ^ par[:, 1] ^ par[:, 2] ^ par[:, 3]  # (8, nb)
    ks, bs = np.nonzero(odd)
    if ks.size == 0:
        return
    qo = q[ks, :, bs].T  # (4, nodd)
    xo = xg[ks, :, bs].T
    wo = wg[ks, :, bs].T
    dlo = dl[bs]
    d0 = dlo * _V4.take(qo) - xo
    d0 *= d0
    altv = _ALTV[shifted]
    scores = np.empty((4, 3, ks.size), F32)
    for s in range(3):
        d1 = dlo * altv[s].take(qo) - xo
        d1 *= d1
        d1 -= d0
        np.multiply(wo, d1, out=scores[:, s])
    scores = scores.reshape(12, -1)
    scores[np.isnan(scores)] = np.inf  # no alternative: never chosen (C: score < best_score)
    c = np.argmin(scores, axis=0)  # the first of the smallest: C's strict < in j, iq order
    j, s = np.divmod(c, 3)
    cols = np.arange(ks.size)
    q[ks, j, bs] = _ALT[s, qo[j, cols]]


def _levels_t(a: np.ndarray, bi: BestIndex, neg: bool = False) -> np.ndarray:
    """best_index_iq4nl(values, +-a) (same shape as a, uint8), exact."""
    return bi(-a if neg else a)


def _cand_sums(q: np.ndarray, values: np.ndarray, xp: np.ndarray, wp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sumqx += w*q*x, sumq2 += w*q*q over the group-ordered rows of (32, nb)."""
    qv = values.take(q.reshape(BLOCK, -1))
    wq = np.multiply(wp, qv)
    q2 = np.multiply(wq, qv)
    wq *= xp
    return seq_sum(wq), seq_sum(q2)


def scale_search_t(xt: np.ndarray, xp: np.ndarray, wp: np.ndarray) -> np.ndarray:
    """Pass 1 of quantize_row_iq4_kss_impl -> scales (nb,); xt (32, nb) the blocks (max |x| is
    the first in block order), xp, wp the group-ordered values and weights."""
    nb = xp.shape[1]
    amax, mx = absmax_t(xt)
    skip = amax < F32(1e-16)
    mx = np.where(skip, F32(1), mx)
    d = -mx / F32(IQ4K_VALUES[0])
    best = np.zeros(nb, F32)
    xg = xp.reshape(8, 4, nb)
    wg = wp.reshape(8, 4, nb)
    for itry in range(-NTRY, NTRY + 1):
        for shifted, bi in ((False, IQ4_BI), (True, IQ4_BI_SHIFTED)):
            id_ = F32(itry + int(bi.ivalues[0])) / mx
            this_d = F32(1) / id_
            al = xp * id_
            for neg in (False, True):
                q = _levels_t(al, bi, neg).reshape(8, 4, nb)
                prune_t(q, xg, wg, this_d, shifted)
                sx, s2 = _cand_sums(q, bi.values, xp, wp)
                upd = (s2 > 0) & (sx * sx > best * s2)
                dn = sx / s2
                d = np.where(upd, dn, d)
                best = np.where(upd, dn * sx, best)
    return np.where(skip, F32(0), d)


@ieee
def quantize_iq4_kss(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq4_kss: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, 4 + n/256*128)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"IQ4_KSS: row length {n} is not a multiple of {QK_K}")
    B = n // BLOCK
    out = np.zeros((nrows, 4 + n // 2), np.uint8)
    step = max(1, _CHUNK_BLOCKS // B)
    for r0 in range(0, nrows, step):
        r1 = min(nrows, r0 + step)
        out[r0:r1] = _quantize_rows(rows[r0:r1], imatrix)
    return out


def _quantize_rows(xr: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    nr, n = xr.shape
    xt = np.ascontiguousarray(xr.reshape(-1, BLOCK).T)
    nb = xt.shape[1]
    wt = block_weights_t(xt, imatrix, xr)
    xp = np.ascontiguousarray(xt[GROUP_ORDER])
    wp = np.ascontiguousarray(wt[GROUP_ORDER])
    scale = scale_search_t(xt, xp, wp)
    # pass 2
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
        diff = xp - dl * bi.values.take(q.reshape(BLOCK, nb))
        e = wp * diff
        e *= diff
        qs.append(q)
        mse.append(seq_sum(e))
    use_s = mse[1] < mse[0]
    q = np.where(use_s, qs[1], qs[0]).reshape(BLOCK, nb)
    ivals = np.concatenate([IQ4K_VALUES[:16], IQ4K_VALUES[16:]]).astype(np.int32)
    qv = (ivals[q.astype(np.intp) + (use_s * 16)] * li).astype(F32)
    wq = wp * qv
    tx = wq * xp
    wq *= qv
    sx = seq_sum(_row_order(tx, nr))
    s2 = seq_sum(_row_order(wq, nr))
    dfin = np.where(s2 > 0, (sx / s2) * F32(1.01), d).astype(F32)
    # storage
    lb = (li + 127) | use_s  # (nb,)
    v = q.reshape(8, 4, nb).astype(np.uint16)
    v16 = v[:, 0] | (v[:, 1] << 4) | (v[:, 2] << 8) | (v[:, 3] << 12)  # (8, nb)
    code = SCRAMBLE_TABLE.take(v16 & 0x7FFF).astype(np.uint16) << 1
    code |= ((lb[None, :] >> np.arange(8)[:, None]) & 1).astype(np.uint16)
    zero = d == 0
    res = np.zeros((nr, 4 + n // 2), np.uint8)
    body = np.ascontiguousarray(code.T).reshape(nr, -1)  # per block 8 uint16, blocks in row order
    body[zero] = 0  # C returns after pass 1: d = 0, blocks zeroed
    res[:, 4:] = body.view(np.uint8)
    res[:, :4] = np.where(zero, d, dfin).astype(F32).view(np.uint8).reshape(nr, 4)
    return res


def _row_order(t: np.ndarray, nrows: int) -> np.ndarray:
    """Per-block terms (m, nrows*B) -> (B*m, nrows): each row's terms in C's order, a row per column."""
    m, nb = t.shape
    return np.ascontiguousarray(t.reshape(m, nrows, nb // nrows).transpose(2, 0, 1)).reshape(-1, nrows)


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
