"""IQ3_K (ik_llama.cpp type 138): byte-exact port of ik_llama.cpp's quantizer and dequantizer.

C functions ported (ggml/src/iqk/iqk_quantize.cpp): `quantize_iq3_k` (QHelper's per-row imatrix
guard), `quantize_row_iq3_k_impl`, `best_index_iq3nl`, `dequantize_row_iq3_k`; block
`block_iq3_k` (ggml-common.h): d (fp16), extra (u16), scales_h (u16), scales_l[8], qs[64], qh[32]
= 110 bytes per 256 values, no row meta.

quantize_row_iq3_k_impl, per super-block of 256 values in blocks of 16:
- sigma2 = 1.5f*(sequential sum of x*x over the super-block)/256; weights qw*sqrtf(sigma2 + x*x)
  with an imatrix (after QHelper::row_weights), 0.25f*sigma2 + x*x without.
- per block (skipped with scale 0 when max |x| < 1e-16): candidates id = 1/(-max/-63), then for
  itry = -3..3 id = (2*itry - 63)/max (values iq3nl) and (2*itry - 59)/max (shifted values); each
  id gives two level sets, best_index(id*x) ("p") and best_index(-id*x) ("m"), with sumqx = sum
  (w*q)*x, sumq2 = sum (w*q)*q in index order; the first p sets d = sumqx/sumq2 (when sumq2 > 0),
  later ones replace (d, best) when sumq2 > 0 and sumqx*sumqx > best*sumq2. Then the levels are
  rebuilt from 1/d with the winning table and d = sumqx/sumq2 of those. C's 128-step descent that
  follows only updates best_d, which is never read: it does not change the bytes and is not ported.
- super-block: d = max|scale|/31, ls = clamp(nearest_int(0.5f*((1/d)*|s| - 1)), 0, 15) and a sign
  bit; levels best_index((1/(d*(2ls+1)*sign))*x); fp16 d = 1.01f*sumqx/sumq2 over the super-block.

best_index_iq3nl(values, x) (a table on (int)x - values[0], with the comparison
x - v[a] < v[a+1] - x near each midpoint) equals "number of thresholds t_a <= x" where t_a is the
first float for which that comparison is false (found once by bisection over float32, `thresholds`;
the shifted table's -0.5 midpoint rounds to -0.50000024), except where C's (int) conversion is out
of range (NaN, x >= 2^31): there C reads INT_MIN and returns level 0.

Work is on (16, nb) transposed chunks (index in block down axis 0: each C reduction is np.add.reduce
down axis 0, which adds rows in order); candidates p and m are summed in one reduce of a
(4, 16, nb) array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..numeric import F32, QK_K, absmax_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int
from ..registry import register
from .iqk_tables import IQ3NL_VALUES

__all__ = ["BLOCK_IQ3_K", "DEQUANTIZE", "QUANTIZE", "best_index_iq3nl_t", "dequantize_iq3_k",
           "guarded_imatrix_t", "quantize_iq3_k", "scale_search_iq3_k_t", "superblock_sigma2",
           "quantize_superblocks", "superblock_refit", "thresholds", "weights_t"]

BLOCK = 16
NTRY = 3
BLOCK_IQ3_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales_h", "<u2"), ("scales_l", "u1", (8,)),
                        ("qs", "u1", (64,)), ("qh", "u1", (32,))])
assert BLOCK_IQ3_K.itemsize == 110
_CHUNK_SB = 256  # super-blocks per chunk: (16, 4096) float32 work arrays of 256 KiB

_VALS = IQ3NL_VALUES.astype(F32)  # [values, shifted values]
_VALS8 = (_VALS[:8].copy(), _VALS[8:].copy())
_INT_LIMIT = F32(2.0**31)


def _float_key(f: float) -> int:
    """Monotone integer key of a float32 (for bisection over all float32 values)."""
    i = int(np.array([f], F32).view(np.uint32)[0])
    return i if i < 0x80000000 else -(i & 0x7FFFFFFF)


def _key_float(k: int) -> np.float32:
    i = k if k >= 0 else (-k) | 0x80000000
    return np.array([i], np.uint32).view(F32)[0]


def thresholds(values: np.ndarray) -> np.ndarray:
    """For sorted int levels v: t[a] = the least float32 x with NOT (x - v[a] < v[a+1] - x) in float32
    arithmetic (C's tie-break between levels a and a+1; the comparison is monotone in x)."""
    out = []
    for va, vb in zip(values[:-1].astype(F32), values[1:].astype(F32), strict=True):
        lo, hi = _float_key(va), _float_key(vb)  # pred(lo) true, pred(hi) false
        while hi - lo > 1:
            mid = (lo + hi) // 2
            x = _key_float(mid)
            if (x - va) < (vb - x):
                lo = mid
            else:
                hi = mid
        out.append(_key_float(hi))
    return np.array(out, dtype=F32)


_THR = (thresholds(IQ3NL_VALUES[:8]), thresholds(IQ3NL_VALUES[8:]))
_NTHR = (-_THR[0], -_THR[1])


def _levels(a: np.ndarray, thr: np.ndarray, out: np.ndarray, tmp: np.ndarray, neg: bool = False) -> np.ndarray:
    """Number of thresholds <= a (neg: of thresholds <= -a, i.e. -t >= a) into uint8 out; tmp a bool scratch."""
    cmp = np.less_equal if neg else np.greater_equal
    cmp(a, thr[0], out=out.view(np.bool_))
    for t in thr[1:]:
        cmp(a, t, out=tmp)
        out += tmp.view(np.uint8)
    return out


def best_index_iq3nl_t(a: np.ndarray, shifted: bool | np.ndarray) -> np.ndarray:
    """best_index_iq3nl(values or shifted values, a) for float32 a (16, nb) -> uint8 level 0..7.
    shifted: one table for all, or a bool per column. Includes C's (int) overflow: NaN or
    a >= 2^31 gives 0."""
    a = np.asarray(a, dtype=F32)
    if isinstance(shifted, (bool, np.bool_)):
        thr = _THR[1] if shifted else _THR[0]
        lv = _levels(a, thr, np.empty(a.shape, np.uint8), np.empty(a.shape, np.bool_))
    else:
        thr = np.where(np.asarray(shifted)[None, :], _THR[1][:, None], _THR[0][:, None])  # (7, nb)
        lv = np.zeros(a.shape, np.uint8)
        for t in thr:
            lv += (a >= t).view(np.uint8)
    bad = ~(a < _INT_LIMIT)  # NaN or too large for int: C's (int)x is INT_MIN
    if bad.any():
        lv[bad] = 0
    return lv


def weights_t(xt: np.ndarray, imatrix_t: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
    """Weights (16, nb): qw*sqrtf(sigma2 + x*x) with the guarded imatrix (16, nb), else
    0.25f*sigma2 + x*x; sigma2 (nb,) of each block's super-block."""
    w = np.multiply(xt, xt)
    if imatrix_t is None:
        w += F32(0.25) * sigma2
        return w
    w += sigma2
    np.sqrt(w, out=w)
    w *= imatrix_t
    return w


def guarded_imatrix_t(xt: np.ndarray, qwt: np.ndarray) -> np.ndarray:
    """QHelper::row_weights (block size 16): the imatrix columns qwt (16, nb) of each block, or 1e-9
    for the whole block unless sum w^2, sum x^2 and sum w*|x| are all > 16*(1e-9f*1e-9f)."""
    eps = F32(1e-9)
    thr = F32(BLOCK) * (eps * eps)
    ok = (np.add.reduce(qwt * qwt, axis=0) > thr) & (np.add.reduce(xt * xt, axis=0) > thr)
    ok &= np.add.reduce(qwt * np.abs(xt), axis=0) > thr
    if ok.all():
        return qwt
    return np.where(ok[None, :], qwt, eps)


def superblock_sigma2(xs: np.ndarray) -> np.ndarray:
    """1.5f*sumx2/QK_K per super-block of xs (nsb, 256), sumx2 the sequential float sum of x*x."""
    xt = np.ascontiguousarray(xs.T)  # may be a view of xs: square out of place
    x2 = np.multiply(xt, xt)
    s = np.cumsum(x2, axis=0)[-1]  # accumulate: strictly in index order
    return (F32(1.5) * s) / F32(QK_K)


def scale_search_iq3_k_t(xt: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block part of quantize_row_iq3_k_impl on xt, wt (16, nb) -> (scale float32 (nb,),
    shifted bool (nb,)); blocks with max|x| < 1e-16 or d == 0 get (0, False)."""
    nb = xt.shape[1]
    amax, mx = absmax_t(xt)
    ok = amax >= F32(1e-16)
    mx = np.where(ok, mx, F32(1))
    lv = np.empty(xt.shape, np.uint8)
    tmp = np.empty(xt.shape, np.bool_)
    p = np.empty((4,) + xt.shape, F32)  # per candidate: (w*q)*q, (w*q)*x for p and for m
    al = np.empty_like(xt)

    def sums(idv: np.ndarray, sh: int) -> np.ndarray:
        """(4, nb) [sumq2_p, sumqx_p, sumq2_m, sumqx_m] of levels of +-idv*x with table sh."""
        np.multiply(idv, xt, out=al)
        vals = _VALS8[sh]
        for i, thr, neg in ((0, _THR[sh], False), (2, _NTHR[sh], True)):
            _levels(al, thr, lv, tmp, neg)
            q = np.take(vals, lv, out=p[i], mode="wrap")
            np.multiply(wt, q, out=p[i + 1])  # w*q
            np.multiply(p[i + 1], q, out=p[i])
            np.multiply(p[i + 1], xt, out=p[i + 1])
        np.add.reduce(p, axis=1, out=s4)
        np.add(s4, F32(0), out=s4)  # -0 -> +0 as C's sums from +0
        return s4

    s4 = np.empty((4, nb), F32)
    d = (-mx) / F32(IQ3NL_VALUES[0])
    s = sums(F32(1) / d, 0)
    pos = s[0] > 0
    d = np.where(pos, s[1] / s[0], d)
    best = np.where(pos, d * s[1], F32(0))
    shifted = np.zeros(nb, np.bool_)
    take = np.empty(nb, np.bool_)
    t1 = np.empty(nb, F32)
    t2 = np.empty(nb, F32)

    def update(sq2: np.ndarray, sqx: np.ndarray, sh: bool) -> None:
        """C: if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { d = sumqx/sumq2; best = d*sumqx; shifted = sh; }"""
        np.multiply(sqx, sqx, out=t1)
        np.multiply(best, sq2, out=t2)
        np.greater(t1, t2, out=take)
        np.logical_and(take, sq2 > 0, out=take)
        if take.any():
            np.divide(sqx, sq2, out=t1)
            np.copyto(d, t1, where=take)
            np.multiply(t1, sqx, out=t1)
            np.copyto(best, t1, where=take)
            shifted[take] = sh

    update(s[2], s[3], False)
    for itry in range(-NTRY, NTRY + 1):
        for sh in (0, 1):
            s = sums(F32(2 * itry + int(IQ3NL_VALUES[8 * sh])) / mx, sh)
            update(s[0], s[1], bool(sh))
            update(s[2], s[3], bool(sh))
    ok &= d != 0
    # levels of the winner at id = 1/d, then d = sumqx/sumq2
    lvl = best_index_iq3nl_t((F32(1) / np.where(ok, d, F32(1))) * xt, shifted)
    q = _VALS[lvl + np.where(shifted, np.uint8(8), np.uint8(0))[None, :]]
    wq = wt * q
    sumqx = np.add.reduce(wq * xt, axis=0) + F32(0)
    sumq2 = np.add.reduce(wq * q, axis=0) + F32(0)
    d = np.where(sumq2 > 0, sumqx / sumq2, d)
    return np.where(ok, d, F32(0)), shifted & ok


def _pack_levels(lv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Levels uint8 (nsb, 256) in 0..7 -> (qs (nsb, 64), qh (nsb, 32)): value i goes to
    qs[32*(i//128) + i%32] bits 2*((i%128)//32) and qh[i%32] bit i//32."""
    nsb = lv.shape[0]
    lo = (lv & np.uint8(3)).reshape(nsb, 2, 4, 32)
    qs = lo[:, :, 0] | (lo[:, :, 1] << np.uint8(2)) | (lo[:, :, 2] << np.uint8(4)) | (lo[:, :, 3] << np.uint8(6))
    hi = (lv >> np.uint8(2)).reshape(nsb, 8, 32)
    qh = np.zeros((nsb, 32), np.uint8)
    for b in range(8):
        qh |= hi[:, b] << np.uint8(b)
    return qs.reshape(nsb, 64), qh


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool (nsb, 16) -> uint16 with bit ib set for bits[:, ib]."""
    return (bits.astype(np.uint16) << np.arange(16, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)


def _quantize_chunk(xs: np.ndarray, qwt_row: np.ndarray | None) -> np.ndarray:
    """quantize_row_iq3_k_impl on super-blocks xs (nsb, 256) -> BLOCK_IQ3_K (nsb,); qwt_row: the
    imatrix as (16, nsb*16) columns of these blocks (before QHelper's guard), or None."""
    nsb = xs.shape[0]
    nb = nsb * 16
    xt = np.ascontiguousarray(xs.reshape(nb, BLOCK).T)
    sigma2 = np.repeat(superblock_sigma2(xs), 16)
    qwt = None if qwt_row is None else guarded_imatrix_t(xt, qwt_row)
    wt = weights_t(xt, qwt, sigma2)
    scales, shifted = scale_search_iq3_k_t(xt, wt)

    sc = scales.reshape(nsb, 16)
    sh = shifted.reshape(nsb, 16)
    max_abs = np.max(np.abs(sc), axis=1)
    live = max_abs != 0
    d = max_abs / F32(31)
    idd = F32(1) / np.where(live, d, F32(1))
    ls = nearest_int(F32(0.5) * (idd[:, None] * np.abs(sc) - F32(1)))
    np.clip(ls, 0, 15, out=ls)
    neg = sc < 0
    lss = (2 * ls + 1) * np.where(neg, -1, 1)  # int
    dl = d[:, None] * lss.astype(F32)
    use = (dl != 0) & live[:, None]
    idl = F32(1) / np.where(use, dl, F32(1))
    idl_t = np.ascontiguousarray(idl.reshape(nb))
    al = xt * idl_t
    lv = best_index_iq3nl_t(al, sh.reshape(nb))
    q = _VALS[lv + np.where(sh.reshape(nb), np.uint8(8), np.uint8(0))[None, :]] * lss.reshape(nb).astype(F32)
    dfin = superblock_refit(xt, wt, q, use, d, F32(1.01))

    out = np.zeros(nsb, BLOCK_IQ3_K)
    lvb = np.ascontiguousarray(lv.T).reshape(nsb, 256)
    lvb[~use.repeat(16, axis=1)] = 0
    qs, qh = _pack_levels(lvb)
    scl = ls.astype(np.uint8)
    out["d"] = np.where(live, fp16_bits(dfin), 0)
    out["extra"] = np.where(live, _pack_bits(sh), 0)
    out["scales_h"] = np.where(live, _pack_bits(neg), 0)
    out["scales_l"] = np.where(live[:, None], scl[:, 0::2] | (scl[:, 1::2] << np.uint8(4)), 0)
    out["qs"] = np.where(live[:, None], qs, 0)
    out["qh"] = np.where(live[:, None], qh, 0)
    return out


def superblock_refit(xt: np.ndarray, wt: np.ndarray, q: np.ndarray, use: np.ndarray, d: np.ndarray,
                     factor: np.float32) -> np.ndarray:
    """The final super-block scale of IQ2_K / IQ3_K: factor * sumqx/sumq2 (d where sumq2 is 0),
    sums of (w*q)*x and (w*q)*q over the blocks in `use`, sequential over the super-block in (ib, j)
    order. xt, wt, q (16, nsb*16) a block per column; use bool (nsb, 16); d (nsb,)."""
    nsb = use.shape[0]
    wq = wt * q
    tx = wq * xt
    t2 = wq * q
    mask = ~use.reshape(-1)
    tx[:, mask] = 0
    t2[:, mask] = 0
    tx = np.ascontiguousarray(tx.reshape(16, nsb, 16).transpose(2, 0, 1).reshape(256, nsb))
    t2 = np.ascontiguousarray(t2.reshape(16, nsb, 16).transpose(2, 0, 1).reshape(256, nsb))
    sumqx = np.cumsum(tx, axis=0)[-1] + F32(0)
    sumq2 = np.cumsum(t2, axis=0)[-1] + F32(0)
    out: np.ndarray = factor * np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), d)
    return out


def quantize_superblocks(rows: np.ndarray, imatrix: np.ndarray | None, name: str, block: np.dtype,
                         chunk: Callable[[np.ndarray, np.ndarray | None], np.ndarray], chunk_sb: int) -> np.ndarray:
    """The row driver of IQ2_K / IQ3_K: rows (nrows, n) cut into super-blocks of 256, handed to
    `chunk(x (m, 256), imatrix (16, m*16/16) or None) -> structured (m,)` about `chunk_sb` at a time
    (whole rows each, so the imatrix columns tile), bytes (nrows, n/256*block.itemsize) back."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"{name} needs rows of a multiple of {QK_K} values, got {n}")
    nsb_row = n // QK_K
    xs = rows.reshape(-1, QK_K)
    total = xs.shape[0]
    out = np.empty(total, block)
    imt = None
    if imatrix is not None:
        imt = np.ascontiguousarray(np.asarray(imatrix, F32).reshape(n // BLOCK, BLOCK).T)  # (16, blocks per row)
    step = max(1, chunk_sb // nsb_row) * nsb_row if nsb_row <= chunk_sb else nsb_row
    for s0 in range(0, total, step):
        s1 = min(total, s0 + step)
        qwt = None if imt is None else np.tile(imt, (1, (s1 - s0) // nsb_row))
        out[s0:s1] = chunk(xs[s0:s1], qwt)
    return out.view(np.uint8).reshape(nrows, -1)


@ieee
def quantize_iq3_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq3_k: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, n/256*110)."""
    return quantize_superblocks(rows, imatrix, "IQ3_K", BLOCK_IQ3_K, _quantize_chunk, _CHUNK_SB)


def dequantize_iq3_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq3_k: uint8 (nrows, n/256*110) -> float32 (nrows, n)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    nrows = data.shape[0]
    b = data.reshape(-1).view(BLOCK_IQ3_K)
    nsb = b.shape[0]
    d = fp16_bits_to_fp32(b["d"])
    bit = np.arange(16, dtype=np.uint16)
    sh = ((b["scales_h"][:, None] >> bit) & 1).astype(bool)
    ex = ((b["extra"][:, None] >> bit) & 1).astype(np.uint8)
    sl = b["scales_l"]
    ls = np.empty((nsb, 16), np.int32)
    ls[:, 0::2] = sl & 15
    ls[:, 1::2] = sl >> 4
    dl = d[:, None] * ((2 * ls + 1) * np.where(sh, -1, 1)).astype(F32)  # (nsb, 16)
    i = np.arange(256)
    lo = (b["qs"][:, 32 * (i // 128) + i % 32] >> (2 * ((i % 128) // 32)).astype(np.uint8)) & 3
    hi = (b["qh"][:, i % 32] >> (i // 32).astype(np.uint8)) & 1
    lv = (lo | (hi << 2)).reshape(nsb, 16, 16) + (8 * ex)[:, :, None]
    y = dl[:, :, None] * _VALS[lv]
    return y.reshape(nrows, n_per_row)


QUANTIZE = {"IQ3_K": quantize_iq3_k}
DEQUANTIZE = {"IQ3_K": dequantize_iq3_k}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())  # ik_llama.cpp's own type
