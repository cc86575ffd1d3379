"""ik_llama.cpp's IQ3_KS: blocks of 32 non-linear 3-bit levels, an fp16 scale per row.

Ports of ggml/src/iqk/iqk_quantize.cpp, byte-exact with the -ffp-contract=off build:

- `quantize_iq3_ks` / `quantize_row_iq3_ks_impl` (ntry = 5, iq3nl_values). Pass 1, per block
  of 32: weights x*x, or qw*sqrtf(sigma2 + x*x) with sigma2 = 2/256 * the sequential sum of x*x
  over the block's super-block and qw the imatrix after `QHelper::row_weights`; the first scale
  -max/values[0] tried on +id*x and -id*x, then for itry = -5..5 id = (itry + values[0])/max and
  (itry + shifted[0])/max, each on +id*x and -id*x; a candidate replaces the best when sumq2 > 0
  and sumqx² > best*sumq2 and sets the block's shift bit when it used the shifted table.
  Pass 2, per row: d = -max_scale/16 (the scale of largest |scale|, first one), per block
  l = clamp(nearest_int(scale/d), -16, 15), levels best_index_iq3nl(values, x/(d*l)); the row
  scale is fp16(sumqx/sumq2) summed along the whole row in C's order (fp16(d) when sumq2 = 0).
- `dequantize_row_iq3_ks`: y = d * (l - 16) * values[shift + q].

Shared with iq2_kl / iq2_ks (public helpers): `best_index_iq3nl` / `best_index_iq2nl` (C's level
choice as the number of exact float32 flip points <= x, a sum of comparisons: C's table lookup
and float test are monotone in x, and the flips are found by bisection on the float32 bits),
`qhelper_weights_t` (ik's QHelper per-block guard), `block_weights`, `seq_sum0`, `row_seq_sum`,
`superblock_sumx2`, `first_absmax_rows`, `chunk_rows`.

Row layout: fp16 d, then per super-block of 256 block_iq3_ks {extra u16, scales[4], qs[64],
qh[32]}. Work is on (32, nb) transposed chunks of whole rows (C's order down axis 0).
"""

from __future__ import annotations

import numpy as np

from ..numeric import F32, QK_K, absmax_t, blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int
from ..registry import register
from .iqk_tables import IQ2NL_VALUES, IQ3NL_VALUES

__all__ = [
    "BLOCK", "BLOCK_IQ3_KS", "DEQUANTIZE", "IQ2NL_FLIPS", "IQ2NL_FLIPS_SHIFTED", "IQ3NL_FLIPS",
    "IQ3NL_FLIPS_SHIFTED", "QUANTIZE", "best_index_iq2nl", "best_index_iq3nl", "block_weights", "count_ge",
    "chunk_rows", "dequantize_iq3_ks", "first_absmax_rows", "flip_point", "qhelper_weights_t", "quantize_iq3_ks",
    "row_seq_sum", "seq_sum0", "superblock_sumx2",
]

BLOCK = 32
BLOCK_IQ3_KS = np.dtype([("extra", "<u2"), ("scales", "u1", (4,)), ("qs", "u1", (64,)), ("qh", "u1", (32,))])
assert BLOCK_IQ3_KS.itemsize == 102
CHUNK_BLOCKS = 4096
NTRY = 5
_V3 = IQ3NL_VALUES.astype(F32)  # 16: plain then shifted (+4)


# --- C's level choice ---------------------------------------------------------------------------

def flip_point(a: int, b: int) -> np.float32:
    """Smallest float32 x with !(x - a < b - x) in float32 (the test is monotone in x): where
    C's choice between neighbouring levels a < b moves to b. Not always (a+b)/2: near -0.5 the
    float subtractions round."""
    fa, fb = F32(a), F32(b)

    def key(f: np.float32) -> int:
        u = int(np.array(f, F32).view(np.int32))
        return u if u >= 0 else -(u & 0x7FFFFFFF)

    def val(k: int) -> np.float32:
        u = k if k >= 0 else ((-k) | -0x80000000)
        return F32(np.array(u, np.int32).view(F32)[()])

    lo, hi = key(fa), key(fb)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        x = val(mid)
        if (x - fa) < (fb - x):
            lo = mid
        else:
            hi = mid
    return val(hi)


def _flips(values: np.ndarray) -> np.ndarray:
    v = [int(t) for t in values]
    return np.array([flip_point(v[i], v[i + 1]) for i in range(len(v) - 1)], F32)


IQ3NL_FLIPS = _flips(IQ3NL_VALUES[:8])
IQ3NL_FLIPS_SHIFTED = _flips(IQ3NL_VALUES[8:])
IQ2NL_FLIPS = _flips(IQ2NL_VALUES[:4])
IQ2NL_FLIPS_SHIFTED = _flips(IQ2NL_VALUES[4:])
_TWO31 = F32(2.0**31)


def count_ge(x: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Number of flips <= x (uint8; NaN: 0), as a sum of comparisons (much faster than searchsorted)."""
    lev = np.greater_equal(x, flips[0]).view(np.uint8)
    t = np.empty(x.shape, bool)
    for f in flips[1:]:
        np.greater_equal(x, f, out=t)
        lev += t.view(np.uint8)
    return lev


def best_index_iq3nl(x: np.ndarray, shifted: bool = False) -> np.ndarray:
    """iqk best_index_iq3nl(values or values + 8, x) on float32 x -> uint8 levels 0..7.

    C: ix = (int)x - values[0], an index table for the clear cases and x - v[i] < v[i+1] - x
    between two levels; that is the number of flip points <= x (checked against the table in the
    tests), except that (int)x of NaN or |x| >= 2^31 is INT_MIN on x86, giving level 0."""
    i = count_ge(x, IQ3NL_FLIPS_SHIFTED if shifted else IQ3NL_FLIPS)  # NaN: 0 already
    big = x >= _TWO31
    if big.any():
        i[big] = 0
    return i


def best_index_iq2nl(x: np.ndarray, shifted: bool = False) -> np.ndarray:
    """iqk best_index_iq2nl(values or values + 4, x) on float32 x -> uint8 levels 0..3.

    C: idx = x < v[1] ? 0 : x > v[2] ? 2 : 1, then x - v[idx] < v[idx+1] - x ? idx : idx+1:
    the number of flip points <= x; NaN fails every test and gives 2."""
    i = count_ge(x, IQ2NL_FLIPS_SHIFTED if shifted else IQ2NL_FLIPS)
    nan = np.isnan(x)
    if nan.any():
        i[nan] = 2
    return i


# --- shared row pieces --------------------------------------------------------------------------

def seq_sum0(a: np.ndarray) -> np.ndarray:
    """C's `s = 0; s += a[j]` down axis 0 of (n, m) -> (m,) float32. numpy adds the rows of a
    C-contiguous array in order; a single column would be summed pairwise, so it is doubled."""
    a = np.ascontiguousarray(a)
    if a.shape[1] == 1:
        return seq_sum0(np.concatenate([a, a], axis=1))[:1]
    s = np.add.reduce(a, axis=0)
    s += F32(0)
    return s


def row_seq_sum(t: np.ndarray, nrows: int) -> np.ndarray:
    """Per-block terms (m, nrows*B) (blocks of a row consecutive) -> (nrows,): each row's terms
    summed sequentially in C's order (block, then in-block index)."""
    m, nb = t.shape
    per = nb // nrows
    rt = t.reshape(m, nrows, per).transpose(2, 0, 1).reshape(per * m, nrows)
    return seq_sum0(rt)


def superblock_sumx2(rows: np.ndarray) -> np.ndarray:
    """Sequential sum of x*x over each super-block of 256 -> (nrows*n/256,) float32."""
    xs = np.array(rows.reshape(-1, QK_K).T, order="C")  # a copy: for one super-block .T is rows itself
    xs *= xs
    return seq_sum0(xs)


def qhelper_weights_t(xt: np.ndarray, imatrix: np.ndarray, nrows: int) -> np.ndarray:
    """ik's QHelper::row_weights with block size 32 on xt (32, nrows*B) -> qw (32, nb): the
    imatrix, or 1e-9 in the blocks where sum qw², sum x², sum qw*|x| are not all > 32*1e-9²."""
    nb = xt.shape[1]
    qw = np.ascontiguousarray(np.asarray(imatrix, F32).reshape(-1, BLOCK).T)  # (32, B)
    eps = F32(1e-9)
    thr = F32(BLOCK) * (eps * eps)
    qwt = np.tile(qw, (1, nrows))
    assert qwt.shape[1] == nb
    ok = np.tile(seq_sum0(qw * qw) > thr, nrows)
    ok &= seq_sum0(xt * xt) > thr
    ok &= seq_sum0(qwt * np.abs(xt)) > thr
    if not ok.all():
        qwt[:, ~ok] = eps
    return qwt


def chunk_rows(nrows: int, n: int, chunk_blocks: int = CHUNK_BLOCKS) -> list[tuple[int, int]]:
    """Row ranges holding about chunk_blocks blocks of 32 each."""
    rpc = max(1, chunk_blocks // max(1, n // BLOCK))
    return [(r, min(nrows, r + rpc)) for r in range(0, nrows, rpc)]


# --- IQ3_KS ---------------------------------------------------------------------------------------

def _sums(xt: np.ndarray, wt: np.ndarray, lev: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum (w*q)*x, sum (w*q)*q) down axis 0 for levels lev of the table vals."""
    q = vals.take(lev)
    wq = wt * q
    q *= wq
    wq *= xt
    return seq_sum0(wq), seq_sum0(q)


def _levels_pm(al: np.ndarray, shifted: bool, finite: bool) -> tuple[np.ndarray, np.ndarray]:
    """best_index_iq3nl of al and of -al (the second counts -f >= al, no negated copy). With
    finite data pass 1 has |al| <= 68, so C's (int)x never overflows there."""
    flips = IQ3NL_FLIPS_SHIFTED if shifted else IQ3NL_FLIPS
    if not finite:
        return best_index_iq3nl(al, shifted), best_index_iq3nl(-al, shifted)
    lp = count_ge(al, flips)
    lm = np.less_equal(al, -flips[0]).view(np.uint8)
    t = np.empty(al.shape, bool)
    for f in flips[1:]:
        np.less_equal(al, -f, out=t)
        lm += t.view(np.uint8)
    return lp, lm


def _search(xt: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1 of quantize_row_iq3_ks_impl on (32, nb) -> (scale float32 (nb,), shifted bool (nb,))."""
    amax, mx = absmax_t(xt)
    ok = amax >= F32(1e-16)
    mx = np.where(ok, mx, F32(1))
    finite = bool(np.isfinite(amax).all())
    plain, shifted = _V3[:8], _V3[8:]
    d = -mx / F32(IQ3NL_VALUES[0])
    lp, lm = _levels_pm(xt * (F32(1) / d), False, finite)
    sxp, sqp = _sums(xt, wt, lp, plain)
    sxm, sqm = _sums(xt, wt, lm, plain)
    pos = sqp > 0
    d = np.where(pos, sxp / sqp, d)
    best = np.where(pos, d * sxp, F32(0))
    upd = (sqm > 0) & (sxm * sxm > best * sqm)
    d = np.where(upd, sxm / sqm, d)
    best = np.where(upd, d * sxm, best)
    is_shifted = np.zeros(d.shape, bool)
    for itry in range(-NTRY, NTRY + 1):
        for sh, vals in ((False, plain), (True, shifted)):
            iv = F32(itry + int(IQ3NL_VALUES[8 if sh else 0])) / mx
            for lev in _levels_pm(xt * iv, sh, finite):
                sx, s2 = _sums(xt, wt, lev, vals)
                upd = (s2 > 0) & (sx * sx > best * s2)
                if upd.any():
                    dn = sx / s2
                    d = np.where(upd, dn, d)
                    best = np.where(upd, dn * sx, best)
                    is_shifted = np.where(upd, sh, is_shifted)
    return np.where(ok, d, F32(0)), ok & is_shifted


def block_weights(xt: np.ndarray, rows: np.ndarray, imatrix: np.ndarray | None, sigma_scale: np.float32,
                  noim: str = "x2") -> np.ndarray:
    """Per-element weights (32, nb): without an imatrix x*x ("x2") or |x| ("abs"); with one
    QHelper's qw * sqrtf(sigma2 + x*x), sigma2 = sumx2(super-block) * sigma_scale."""
    if imatrix is None:
        return xt * xt if noim == "x2" else np.abs(xt)
    nrows = rows.shape[0]
    qw = qhelper_weights_t(xt, imatrix, nrows)
    sigma2 = np.repeat(superblock_sumx2(rows) * sigma_scale, QK_K // BLOCK)
    w = xt * xt
    w += sigma2
    np.sqrt(w, out=w)
    w *= qw
    return w


def first_absmax_rows(s: np.ndarray) -> np.ndarray:
    """C's `if (|s| > amax) { amax = |s|; max = s; }` along axis 1 of (nrows, m) from amax = 0
    (NaN never wins) -> max (nrows,)."""
    a = np.abs(s)
    a = np.where(np.isnan(a), F32(0), a)
    j = np.argmax(a, axis=1)
    r = np.arange(s.shape[0])
    return np.where(a[r, j] > 0, s[r, j], F32(0)).astype(F32)


def _quantize_chunk(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    nr, n = rows.shape
    nbr = n // BLOCK
    nsb = n // QK_K
    xt = blocks_t(rows.reshape(-1, BLOCK))
    wt = block_weights(xt, rows, imatrix, F32(2) / F32(QK_K))
    scale, shifted = _search(xt, wt)
    # pass 2
    mxs = first_absmax_rows(scale.reshape(nr, nbr))
    d = -mxs / F32(16)
    idr = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)
    l = np.clip(nearest_int(np.repeat(idr, nbr) * scale), -16, 15)
    dl = np.repeat(d, nbr) * l.astype(F32)
    idl = np.where(dl != 0, F32(1) / np.where(dl != 0, dl, F32(1)), F32(0)).astype(F32)
    al = xt * idl
    lev = np.where(shifted, best_index_iq3nl(al, True), best_index_iq3nl(al, False))
    q = _V3.take(lev + 8 * shifted) * l.astype(F32)  # values[i]*l: small ints, exact
    wq = wt * q
    sumqx = row_seq_sum(wq * xt, nr)
    sumq2 = row_seq_sum(wq * q, nr)
    dfin = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), d).astype(F32)
    live = np.repeat(d != 0, nbr)  # rows with d == 0 stop after pass 1 (only the shift bits)
    ul = np.where(live, l + 16, 0).astype(np.uint16)
    lev = np.where(live, lev, 0).astype(np.uint8)
    # packing: 8 blocks per super-block
    ib = np.arange(8)
    ulb = ul.reshape(-1, 8)  # (nsb_total, 8)
    shb = shifted.reshape(-1, 8).astype(np.uint16)
    out = np.zeros(nr * nsb, BLOCK_IQ3_KS)
    out["extra"] = ((shb << (8 + ib)) | ((ulb >> 4) << ib)).sum(axis=1, dtype=np.uint16)
    sc = (ulb & 0xF).astype(np.uint8)
    out["scales"] = sc[:, :4] | (sc[:, 4:] << 4)
    lv = lev.T.reshape(-1, 8, BLOCK)  # (nsb_total, ib, j)
    lo = lv & 3
    out["qs"] = (lo[:, 0::4] | (lo[:, 1::4] << 2) | (lo[:, 2::4] << 4) | (lo[:, 3::4] << 6)).reshape(-1, 64)
    hi = (lv >> 2).astype(np.uint8)
    out["qh"] = (hi << ib[None, :, None].astype(np.uint8)).sum(axis=1, dtype=np.uint8)
    res = np.empty((nr, 2 + nsb * BLOCK_IQ3_KS.itemsize), np.uint8)
    res[:, :2] = fp16_bits(dfin).view(np.uint8).reshape(nr, 2)
    res[:, 2:] = out.view(np.uint8).reshape(nr, -1)
    return res


@ieee
def quantize_iq3_ks(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq3_ks: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, 2 + n/256*102)."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    assert n % QK_K == 0
    out = np.empty((nrows, 2 + n // QK_K * BLOCK_IQ3_KS.itemsize), np.uint8)
    for r0, r1 in chunk_rows(nrows, n):
        out[r0:r1] = _quantize_chunk(rows[r0:r1], imatrix)
    return out


@ieee
def dequantize_iq3_ks(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq3_ks: uint8 (nrows, 2 + n/256*102) -> float32 (nrows, n)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    nrows = data.shape[0]
    d = fp16_bits_to_fp32(data[:, :2].copy().view(np.uint16).reshape(-1))
    b = data[:, 2:].copy().view(BLOCK_IQ3_KS).reshape(-1)  # (nsb_total,)
    ib = np.arange(8)
    extra = b["extra"].astype(np.int32)[:, None]
    sc = b["scales"].astype(np.int32)
    ls = np.concatenate([sc & 0xF, sc >> 4], axis=1) | (((extra >> ib) & 1) << 4)  # (nsb, 8)
    dl = np.repeat(d, n_per_row // QK_K)[:, None] * (ls - 16).astype(F32)
    qs = b["qs"].reshape(-1, 2, 32).astype(np.int32)  # (nsb, ib/4, j)
    lo = (qs[:, :, None, :] >> (2 * np.arange(4))[None, None, :, None]) & 3  # (nsb, 2, 4, 32)
    lo = lo.reshape(-1, 8, 32)
    hi = (b["qh"].astype(np.int32)[:, None, :] >> ib[None, :, None]) & 1
    sh = ((extra >> (8 + ib)) & 1)[:, :, None]
    v = _V3.take(lo | (hi << 2) | (sh << 3))
    y = dl[:, :, None] * v
    return y.reshape(nrows, n_per_row)


QUANTIZE: dict = {"IQ3_KS": quantize_iq3_ks}
DEQUANTIZE: dict = {"IQ3_KS": dequantize_iq3_ks}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())  # ik_llama.cpp's own type
