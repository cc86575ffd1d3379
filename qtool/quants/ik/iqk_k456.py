"""ik_llama.cpp's IQ4_K, IQ5_K and IQ6_K: quantizers and dequantizers, byte-exact, vectorized.

The three types share one algorithm (ggml/src/iqk/iqk_quantize.cpp): a super-block of 256 values
is cut into 16 blocks of 16; each block searches a scale d over candidates 1/d and keeps the one
with the largest sumqx²/sumq2 (`quantize_row_iq4_k_impl_bs16`, `quantize_row_iq5_k_impl`,
`quantize_row_iq6_k_impl`); the block also chooses between the plain value table and the shifted
one (its `extra` bit). The super-block scale is -max_scale/32 (IQ6_K: /127), the block scales are
stored as 6-bit (IQ6_K: 8-bit) multiples of it, values are re-quantized with the stored scales and
the super-block scale is refitted (sumqx/sumq2).

Porting notes (what decides the bytes):
- The level search is not a plain nearest-value search: `best_index_iq4nl` / `best_index_iq5nl`
  take `(int)x - values[0]` (IQ6: `(int)(x - values[0])`, float subtraction first) into a table
  (iq4nl_index, iq5nl_index, iq6nl_index, copied below) whose entries >= N mean "decide between
  two levels with the float test `x - v[a] < v[a+1] - x`". The same table serves the shifted
  values. `(int)` truncates; NaN and values >= 2^31 give INT_MIN on x86 (level 0).
- Vectorized, the truncation cell of x is read from a 65536-entry table indexed by the high 16
  bits of the float (IQ6: of x - values[0]): for |x| < 256 those cells never straddle an integer,
  so each gives a fixed pair of levels (equal where the C table has no test); the float test on x
  then picks one. `_check_tables` style tests compare this with a direct transliteration.
- Every candidate of the search (p: best_index(al), m: best_index(-al) = al of -id) is one row of a
  (candidates, 16, blocks) array; sums are np.add.reduce down the in-block axis (C's order); the
  comparisons then run over the candidates in C's order (strict >, the p/m/shifted order).
- float32 throughout as in C, no fused multiply-add, nearest_int as ggml's magic-number trick.

Shapes: a chunk of rows is cut into blocks of 16 laid out (16, nblocks) C-contiguous, columns in
row-major block order (row, super-block, block); super-block quantities are (nsb,) and repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..numeric import F32, QK_K, absmax_t, blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int
from .iqk_tables import IQ4K_VALUES, IQ5NL_VALUES, IQ6NL_VALUES

__all__ = ["BLOCK_IQ4_K", "BLOCK_IQ5_K", "BLOCK_IQ6_K", "DEQUANTIZE", "QUANTIZE", "best_index_c",
           "dequantize_iq4_k", "dequantize_iq5_k", "dequantize_iq6_k", "level_lookup",
           "quantize_iq4_k", "quantize_iq5_k", "quantize_iq6_k"]

BLOCK_IQ4_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales_h", "u1", (4,)), ("scales_l", "u1", (8,)),
                        ("qs", "u1", (128,))])
BLOCK_IQ5_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales_h", "u1", (4,)), ("scales_l", "u1", (8,)),
                        ("qs", "u1", (128,)), ("qh", "u1", (32,))])
BLOCK_IQ6_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales", "i1", (16,)), ("qs", "u1", (128,)),
                        ("qh", "u1", (64,))])
assert BLOCK_IQ4_K.itemsize == 144 and BLOCK_IQ5_K.itemsize == 176 and BLOCK_IQ6_K.itemsize == 212

# ---- the C index tables (iqk_quantize.cpp), verbatim ---------------------------------------------
_IQ4NL_INDEX = np.array([
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 17, 17, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 18, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 19, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 20, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
    5, 5, 21, 21, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 22, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 23, 23, 8, 8, 8, 8,
    8, 8, 8, 8, 8, 8, 24, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 25, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 26, 26,
    11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 27, 27, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    28, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 29, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 30, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15], np.int16)
_IQ5NL_INDEX = np.array([
    0, 0, 0, 0, 0, 0, 32, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 33, 33, 2, 2, 2, 2, 2, 2, 2, 2, 2, 34, 34, 3, 3,
    3, 3, 3, 3, 3, 3, 35, 35, 4, 4, 4, 4, 4, 4, 4, 36, 36, 5, 5, 5, 5, 5, 5, 5, 37, 37, 6, 6, 6, 6, 6, 6,
    6, 38, 7, 7, 7, 7, 7, 7, 39, 39, 8, 8, 8, 8, 8, 40, 40, 9, 9, 9, 9, 9, 41, 41, 10, 10, 10, 10, 10, 42, 11, 11,
    11, 11, 11, 43, 12, 12, 12, 12, 12, 44, 13, 13, 13, 13, 13, 45, 14, 14, 14, 14, 14, 46, 15, 15, 15, 15, 47, 47,
    16, 16, 16, 16, 48, 17, 17, 17, 17, 17, 49, 18, 18, 18, 18, 18, 50, 19, 19, 19, 19, 19, 51, 20, 20, 20, 20, 20,
    52, 21, 21, 21, 21, 21, 53, 53, 22, 22, 22, 22, 22, 54, 54, 23, 23, 23, 23, 23, 23, 55, 24, 24, 24, 24, 24, 24,
    24, 56, 25, 25, 25, 25, 25, 25, 25, 57, 57, 26, 26, 26, 26, 26, 26, 26, 58, 58, 27, 27, 27, 27, 27, 27, 27, 27,
    59, 28, 28, 28, 28, 28, 28, 28, 28, 28, 60, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29, 61, 30, 30, 30, 30, 30, 30,
    30, 30, 30, 30, 30, 62, 31, 31, 31, 31, 31, 31], np.int16)
_IQ6NL_INDEX = np.array([
    0, 0, 0, 64, 1, 1, 1, 1, 1, 65, 2, 2, 2, 2, 2, 66, 3, 3, 3, 3, 67, 67, 4, 4, 4, 4, 68, 5, 5, 5, 5, 69,
    69, 6, 6, 6, 70, 70, 7, 7, 7, 71, 8, 8, 8, 72, 72, 9, 9, 9, 73, 73, 10, 10, 10, 74, 11, 11, 11, 75, 12, 12, 12, 76,
    13, 13, 13, 77, 14, 14, 14, 78, 15, 15, 79, 79, 16, 16, 80, 17, 17, 81, 81, 18, 18, 82, 19, 19, 83, 83, 20, 84,
    84, 21, 85, 85, 22, 86, 86, 23, 87, 87, 24, 88, 88, 25, 89, 89, 26, 90, 90, 27, 91, 91, 28, 92, 29, 93, 93, 30,
    94, 94, 31, 95, 95, 32, 96, 33, 97, 97, 34, 98, 98, 35, 99, 99, 36, 100, 100, 37, 101, 38, 102, 102, 39, 103,
    103, 40, 104, 104, 41, 41, 105, 42, 42, 106, 106, 43, 107, 107, 44, 108, 108, 45, 45, 109, 46, 46, 46, 110, 47,
    47, 111, 111, 48, 48, 112, 49, 49, 49, 113, 50, 50, 50, 114, 51, 51, 51, 115, 52, 52, 52, 116, 116, 53, 53, 53,
    117, 54, 54, 54, 118, 118, 55, 55, 55, 119, 119, 56, 56, 56, 120, 120, 57, 57, 57, 121, 121, 58, 58, 58, 58, 122,
    59, 59, 59, 59, 123, 123, 60, 60, 60, 60, 124, 61, 61, 61, 61, 61, 125, 62, 62, 62, 62, 62, 126, 63, 63, 63],
    np.int16)
assert _IQ4NL_INDEX.size == 241 and _IQ5NL_INDEX.size == 248 and _IQ6NL_INDEX.size == 249

_INT_MIN = -(2 ** 31)


@dataclass(frozen=True)
class _Kind:
    """One of C's best_index_iq{4,5,6}nl on one value table (plain or shifted half)."""

    values: np.ndarray  # float32 (n,): the levels of this half
    index: np.ndarray  # the C index table
    bound: int  # ix >= bound -> top level (C: 241, 247, 249)
    sub_first: bool  # IQ6: (int)(x - values[0]); IQ4/IQ5: (int)x - values[0]

    @property
    def n(self) -> int:
        return int(self.values.size)


def best_index_c(x: np.ndarray, kind: _Kind) -> np.ndarray:
    """C's best_index_iq{4,5,6}nl(values, x) on float32 x (any shape) -> int64 level, exactly:
    (int) truncation with x86's INT_MIN for NaN / out of range, the index table, the float test."""
    x = np.asarray(x, dtype=F32)
    v0 = kind.values[0]
    u = (x - v0) if kind.sub_first else x
    u64 = u.astype(np.float64)
    valid = u64 < 2.0 ** 31  # NaN and >= 2^31: cvttss2si gives INT_MIN
    t = np.where(valid, np.trunc(np.maximum(u64, float(_INT_MIN))), float(_INT_MIN)).astype(np.int64)
    ix = t if kind.sub_first else t - int(v0)
    e = kind.index[np.clip(ix, 0, kind.index.size - 1)].astype(np.int64)
    a = np.clip(e - kind.n, 0, kind.n - 2)
    with np.errstate(invalid="ignore", over="ignore"):
        lower = (x - kind.values[a]) < (kind.values[a + 1] - x)
    r = np.where(e < kind.n, e, np.where(lower, a, a + 1))
    return np.where(ix < 0, 0, np.where(ix >= kind.bound, kind.n - 1, r))


@dataclass(frozen=True)
class _Lut:
    """Per 16-bit key (high half of the float that C truncates): the two candidate levels."""

    kind: _Kind
    vals: np.ndarray  # uint64 (65536,): float32 pair (lower value, upper value) per key
    idx: np.ndarray  # uint16 (65536,): uint8 pair (lower index, upper index) per key


def _build_lut(kind: _Kind) -> _Lut:
    """Evaluate C's truncation cell at both ends of each key's float range; for |x| < 2^31 finite
    and NaN the cell is the same at both ends (checked), so the pair of levels is fixed per key."""
    k = np.arange(1 << 16, dtype=np.uint32) << 16
    lo_f = k.view(F32)
    hi_f = (k | 0xFFFF).view(F32)
    v0 = kind.values[0]

    def cell(u: np.ndarray) -> np.ndarray:
        u64 = u.astype(np.float64)
        valid = u64 < 2.0 ** 31
        t = np.where(valid, np.trunc(np.maximum(u64, float(_INT_MIN))), float(_INT_MIN)).astype(np.int64)
        ix = t if kind.sub_first else t - int(v0)
        return np.where(ix < 0, -1, np.where(ix >= kind.bound, kind.bound, ix))

    c_lo, c_hi = cell(lo_f), cell(hi_f)
    nan = np.isnan(lo_f)
    assert np.array_equal(c_lo[~nan], c_hi[~nan]), "a key straddles a truncation cell"
    c = np.where(nan, -1, c_lo)
    e = np.where(c < 0, 0, np.where(c >= kind.bound, kind.n - 1, kind.index[np.clip(c, 0, kind.index.size - 1)]))
    e = e.astype(np.int64)
    test = e >= kind.n
    il = np.where(test, e - kind.n, e)
    ih = np.where(test, e - kind.n + 1, e)
    pair = np.empty((1 << 16, 2), F32)
    pair[:, 0], pair[:, 1] = kind.values[il], kind.values[ih]
    ipair = np.empty((1 << 16, 2), np.uint8)
    ipair[:, 0], ipair[:, 1] = il, ih
    return _Lut(kind, pair.view(np.uint64).ravel(), ipair.view(np.uint16).ravel())


def _keys(al: np.ndarray, kind: _Kind) -> np.ndarray:
    """The 16-bit key of each float C truncates (al, or al - values[0] for IQ6) as intp."""
    src = np.subtract(al, kind.values[0]) if kind.sub_first else np.ascontiguousarray(al)
    return src.view(np.uint16)[..., 1::2].astype(np.intp)


def level_lookup(al: np.ndarray, lut: _Lut, with_index: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """C's best_index on float32 al (C-contiguous) via the key table: (level value float32,
    level index uint8 if with_index)."""
    kk = _keys(al, lut.kind)
    pair = np.take(lut.vals, kk).view(F32).reshape(*al.shape, 2)
    lo, hi = pair[..., 0], pair[..., 1]
    a = np.subtract(al, lo)
    b = np.subtract(hi, al)
    lower = np.less(a, b)
    q = np.where(lower, lo, hi)
    if not with_index:
        return q, None
    ip = np.take(lut.idx, kk).view(np.uint8).reshape(*al.shape, 2)
    return q, np.where(lower, ip[..., 0], ip[..., 1])


def _kinds(values: np.ndarray, index: np.ndarray, bound: int, sub_first: bool) -> tuple[_Kind, _Kind]:
    n = values.size // 2
    v = values.astype(F32)
    return (_Kind(v[:n].copy(), index, bound, sub_first), _Kind(v[n:].copy(), index, bound, sub_first))


_IQ6_VALUES = np.concatenate([IQ6NL_VALUES[:64].astype(F32), IQ6NL_VALUES[:64].astype(F32) + F32(1)])
"""quantize_iq6_k's float table: values[i] = iq6nl_values[i], shifted values[i] + S_IQ6K (1)."""
KINDS = {
    "IQ4_K": _kinds(IQ4K_VALUES, _IQ4NL_INDEX, 241, False),
    "IQ5_K": _kinds(IQ5NL_VALUES, _IQ5NL_INDEX, 247, False),
    "IQ6_K": _kinds(_IQ6_VALUES, _IQ6NL_INDEX, 249, True),
}
_LUTS: dict[str, tuple[_Lut, _Lut]] = {}


def _luts(qtype: str) -> tuple[_Lut, _Lut]:
    if qtype not in _LUTS:
        _LUTS[qtype] = (_build_lut(KINDS[qtype][0]), _build_lut(KINDS[qtype][1]))
    return _LUTS[qtype]


# ---- shared pieces of the three quantizers --------------------------------------------------------

_K_EPS = F32(1e-9)
_K_EPS_THR = F32(16) * (_K_EPS * _K_EPS)  # QHelper: m_block_size*kEps2


def _seq_sum0(a: np.ndarray) -> np.ndarray:
    """C's `s = 0; s += a[j]` down axis 0 of a 2-D array (numpy sums a lone column pairwise)."""
    if a.shape[1] == 1:
        return _seq_sum0(np.repeat(a, 2, axis=1))[:1]
    s = np.add.reduce(a, axis=0)
    s += F32(0)
    return s


def _qhelper_weights(xt: np.ndarray, imatrix: np.ndarray, nrows: int) -> np.ndarray:
    """QHelper::row_weights: the imatrix per block of 16, replaced by kEps where the block's sum of
    w², x² or w*|x| is <= 16*kEps² (iqk_quantize.cpp). Returns qw (16, nblocks)."""
    qwt = np.tile(blocks_t(np.asarray(imatrix, dtype=F32).reshape(-1, 16)), nrows)
    sw2 = _seq_sum0(qwt * qwt)
    sx2 = _seq_sum0(xt * xt)
    swx = _seq_sum0(qwt * np.abs(xt))
    bad = ~((sw2 > _K_EPS_THR) & (sx2 > _K_EPS_THR) & (swx > _K_EPS_THR))
    if bad.any():
        qwt[:, bad] = _K_EPS
    return qwt


def _block_weights(xt: np.ndarray, qwt: np.ndarray | None, sigma2: np.ndarray, plain_sigma: bool) -> np.ndarray:
    """weight[j]: qw*sqrtf(sigma2 + x*x) with an imatrix, else x*x (IQ4_K) or 0.25f*sigma2 + x*x."""
    xx = xt * xt
    if qwt is not None:
        xx += sigma2
        np.sqrt(xx, out=xx)
        return np.multiply(qwt, xx, out=xx)
    if plain_sigma:
        return xx
    return np.add(F32(0.25) * sigma2, xx, out=xx)


def _cand_sums(xt: np.ndarray, wt: np.ndarray, ids: np.ndarray, lut: _Lut) -> tuple[np.ndarray, np.ndarray]:
    """(sumqx, sumq2) (ncand, nb) of levels best_index(id*x): sum (w*q)*x and (w*q)*q in index order."""
    al = np.multiply(ids[:, None, :], xt[None])
    q, _ = level_lookup(al, lut)
    wq = np.multiply(wt[None], q, out=al)
    sq = np.multiply(wq, q, out=q)
    np.multiply(wq, xt[None], out=wq)
    sx = np.add.reduce(wq, axis=1)
    s2 = np.add.reduce(sq, axis=1)
    sx += F32(0)
    s2 += F32(0)
    return sx, s2


def _search(xt: np.ndarray, wt: np.ndarray, qtype: str, ntry: int, refine: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    """The per-block search of quantize_row_iq{4,5,6}_k_impl on xt, wt (16, nb) -> (scale float32
    (nb,), is_shifted bool (nb,)); blocks with max |x| < 1e-16 get 0, not shifted."""
    lut_u, lut_s = _luts(qtype)
    v0 = lut_u.kind.values[0]
    s0 = lut_s.kind.values[0]
    amax, mx = absmax_t(xt)
    skip = amax < F32(1e-16)
    mx = np.where(skip, F32(1), mx)
    d0 = -mx / v0
    id0 = F32(1) / d0
    tries = range(-ntry, ntry + 1)
    ids_u = np.empty((2 + 2 * len(tries), mx.size), F32)
    ids_s = np.empty((2 * len(tries), mx.size), F32)
    ids_u[0] = id0
    for i, itry in enumerate(tries):
        ids_u[2 + 2 * i] = (F32(itry) + v0) / mx
        ids_s[2 * i] = (F32(itry) + s0) / mx
    ids_u[1::2] = -ids_u[0::2]
    ids_s[1::2] = -ids_s[0::2]
    sxu, s2u = _cand_sums(xt, wt, ids_u, lut_u)
    sxs, s2s = _cand_sums(xt, wt, ids_s, lut_s)

    d = sxu[0] / s2u[0]
    best = d * sxu[0]
    shifted = np.zeros(mx.size, bool)

    def take(sx: np.ndarray, s2: np.ndarray, sh: bool) -> None:
        nonlocal d, best
        upd = (s2 > 0) & (sx * sx > best * s2)
        if upd.any():
            dn = sx / s2
            d = np.where(upd, dn, d)
            best = np.where(upd, dn * sx, best)
            shifted[upd] = sh

    take(sxu[1], s2u[1], False)
    for i in range(len(tries)):
        take(sxu[2 + 2 * i], s2u[2 + 2 * i], False)
        take(sxu[3 + 2 * i], s2u[3 + 2 * i], False)
        take(sxs[2 * i], s2s[2 * i], True)
        take(sxs[2 * i + 1], s2s[2 * i + 1], True)

    if refine:  # IQ5_K / IQ6_K: one more pass at id = 1/d with the chosen table
        nz = d != 0
        idr = F32(1) / np.where(nz, d, F32(1))
        sx_u, s2_u = _cand_sums(xt, wt, idr[None], lut_u)
        sx_s, s2_s = _cand_sums(xt, wt, idr[None], lut_s)
        sx = np.where(shifted, sx_s[0], sx_u[0])
        s2 = np.where(shifted, s2_s[0], s2_u[0])
        d = np.where(nz & (s2 > 0), sx / s2, d)
    return np.where(skip, F32(0), d), shifted & ~skip


def _max_scale(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (fabsf(d) > amax) { amax = fabsf(d); max = d; }` over the 16 scales of each
    super-block; scales (nsb, 16) -> (max_scale, max_abs_scale) (nsb,); NaN never wins."""
    a = np.abs(scales)
    a = np.where(np.isnan(a), F32(0), a)
    j = np.argmax(a, axis=1)
    r = np.arange(scales.shape[0])
    amax = a[r, j]
    return np.where(amax > 0, scales[r, j], F32(0)), amax


def _ordered_sb_sum(t: np.ndarray, nsb: int) -> np.ndarray:
    """Sum a (16 j, nsb*16 ib) array per super-block in C's order (ib outer, j inner) -> (nsb,)."""
    u = t.reshape(16, nsb, 16).transpose(2, 0, 1).reshape(256, nsb)
    return _seq_sum0(np.ascontiguousarray(u))


_CHUNK_SB = 32  # super-blocks per chunk (512 blocks of 16)


def _prepare(x: np.ndarray, imatrix: np.ndarray | None, sigma_iq4: bool
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int]:
    """xt (16, nb), qwt (16, nb) | None, sigma2 per block (nb,), nsb for a chunk of whole rows."""
    nrows, n = x.shape
    nsb = nrows * n // QK_K
    xt = blocks_t(x.reshape(-1, 16))
    sumx2 = _seq_sum0(np.ascontiguousarray((x * x).reshape(nsb, QK_K).T))
    sigma2 = sumx2 * F32(2.0 / QK_K) if sigma_iq4 else (F32(2) * sumx2) / F32(QK_K)
    qwt = None if imatrix is None else _qhelper_weights(xt, imatrix, nrows)
    return xt, qwt, np.repeat(sigma2, 16), nsb


def _by_chunks(rows: np.ndarray, imatrix: np.ndarray | None, dtype: np.dtype,
               fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray]) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"row length {n} is not a multiple of {QK_K}")
    out = np.empty((nrows, n // QK_K), dtype)
    step = max(1, _CHUNK_SB * QK_K // n)
    for r0 in range(0, nrows, step):
        out[r0:r0 + step] = fn(rows[r0:r0 + step], imatrix).reshape(-1, n // QK_K)
    return out.view(np.uint8).reshape(nrows, -1)


# ---- IQ4_K ---------------------------------------------------------------------------------------

def _iq4_k_chunk(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_row_iq4_k_impl_bs16 (ntry = 7) on every super-block of a chunk of rows."""
    xt, qwt, sig, nsb = _prepare(x, imatrix, True)
    wt = _block_weights(xt, qwt, sig, True)
    scales, shifted = _search(xt, wt, "IQ4_K", 7, False)
    max_scale, _ = _max_scale(scales.reshape(nsb, 16))
    d = -max_scale / F32(32)
    idd = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
    l = nearest_int(np.repeat(idd, 16) * scales)
    np.clip(l, -32, 31, out=l)
    lf = l.astype(F32)
    dl = np.repeat(d, 16) * lf
    idl = np.where(dl != 0, F32(1) / np.where(dl != 0, dl, F32(1)), F32(0))
    L, qv = _final_levels(xt, idl, shifted, "IQ4_K")
    q = qv * lf  # block_values[L]*l: an exact small integer
    wq = wt * q
    sumqx = _ordered_sb_sum(wq * xt, nsb)
    sumq2 = _ordered_sb_sum(wq * q, nsb)
    dfin = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), d)

    out = np.zeros(nsb, BLOCK_IQ4_K)
    out["d"] = fp16_bits(dfin)
    bits = (1 << np.arange(16)).astype(np.uint32)
    out["extra"] = (shifted.reshape(nsb, 16) * bits).sum(axis=1).astype(np.uint16)
    ul = (l + 32).astype(np.uint32).reshape(nsb, 16)
    out["scales_l"] = ((ul[:, 0::2] & 0xF) | ((ul[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    sh = ((ul >> 4).reshape(nsb, 2, 8) << (2 * np.arange(8, dtype=np.uint32))).sum(axis=2).astype(np.uint16)
    out["scales_h"] = sh.view(np.uint8).reshape(nsb, 4)
    Lb = L.reshape(16, nsb, 8, 2)  # j, sb, ib32, half
    out["qs"] = (Lb[..., 0] | (Lb[..., 1] << 4)).transpose(1, 2, 0).reshape(nsb, 128)
    return out


def _final_levels(xt: np.ndarray, idl: np.ndarray, shifted: np.ndarray, qtype: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Levels best_index(block_values, idl*x) with each block's table: (index uint8, value float32)."""
    lut_u, lut_s = _luts(qtype)
    al = idl * xt
    qu, iu = level_lookup(al, lut_u, True)
    qs, is_ = level_lookup(al, lut_s, True)
    return np.where(shifted, is_, iu), np.where(shifted, qs, qu)


@ieee
def quantize_iq4_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ik_llama.cpp quantize_iq4_k: rows float32 (nrows, n) -> uint8 (nrows, n/256*144)."""
    return _by_chunks(rows, imatrix, BLOCK_IQ4_K, _iq4_k_chunk)


def _iq4_k_dequant_blocks(b: np.ndarray) -> np.ndarray:
    d = fp16_bits_to_fp32(b["d"])[:, None]
    sh = b["scales_h"].view("<u2").astype(np.int32)  # (nb, 2)
    ib = np.arange(16)
    slo = b["scales_l"].astype(np.int32)
    lo = np.where(ib % 2 == 0, slo[:, ib // 2] & 0xF, slo[:, ib // 2] >> 4)
    hi = (sh[:, ib // 8] >> (2 * (ib % 8))) & 3
    dl = d * ((lo | (hi << 4)) - 32).astype(F32)  # (nb, 16)
    extra = b["extra"].astype(np.int32)[:, None]
    shift = ((extra >> ib) & 1).astype(np.intp)  # (nb, 16)
    qs = b["qs"].reshape(-1, 8, 16).astype(np.intp)
    idx = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 16, 16)  # (nb, ib, j)
    vals = IQ4K_VALUES.astype(F32)[idx + 16 * shift[:, :, None]]
    return (dl[:, :, None] * vals).reshape(-1, QK_K)


def dequantize_iq4_k(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq4_k: uint8 (nrows, n/256*144) -> float32 (nrows, n)."""
    b = np.ascontiguousarray(data).view(BLOCK_IQ4_K).reshape(-1)
    return _iq4_k_dequant_blocks(b).reshape(data.shape[0], n)


# ---- IQ5_K / IQ6_K -------------------------------------------------------------------------------

def _iq56_chunk(x: np.ndarray, imatrix: np.ndarray | None, qtype: str) -> np.ndarray:
    """quantize_row_iq5_k_impl / quantize_row_iq6_k_impl (ntry = 5) on a chunk of rows."""
    six = qtype == "IQ6_K"
    xt, qwt, sig, nsb = _prepare(x, imatrix, False)
    wt = _block_weights(xt, qwt, sig, False)
    scales, shifted = _search(xt, wt, qtype, 5, True)
    max_scale, max_abs = _max_scale(scales.reshape(nsb, 16))
    live = max_abs != 0
    d = -max_scale / F32(127 if six else 32)
    idd = F32(1) / np.where(live, d, F32(1))
    ls = nearest_int(np.repeat(idd, 16) * scales)
    np.clip(ls, -127 if six else -32, 127 if six else 31, out=ls)
    ls = np.where(np.repeat(live, 16), ls, 0)
    shifted = shifted & np.repeat(live, 16)
    lf = ls.astype(F32)
    dl = np.repeat(d, 16) * lf
    on = dl != 0
    idl = F32(1) / np.where(on, dl, F32(1))
    L, qv = _final_levels(xt, idl, shifted, qtype)
    L = np.where(on, L, 0)
    q = np.where(on, qv * lf, F32(0))
    wq = wt * q
    sumqx = _ordered_sb_sum(wq * xt, nsb)
    sumq2 = _ordered_sb_sum(wq * q, nsb)
    dfin = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), np.where(live, d, F32(0)))

    out = np.zeros(nsb, BLOCK_IQ6_K if six else BLOCK_IQ5_K)
    out["d"] = fp16_bits(dfin)
    bits = (1 << np.arange(16)).astype(np.uint32)
    out["extra"] = (shifted.reshape(nsb, 16) * bits).sum(axis=1).astype(np.uint16)
    if six:
        out["scales"] = ls.reshape(nsb, 16).astype(np.int8)
    else:
        ul = (ls + 32).astype(np.uint32).reshape(nsb, 16)
        out["scales_l"] = ((ul[:, 0::2] & 0xF) | ((ul[:, 1::2] & 0xF) << 4)).astype(np.uint8)
        out["scales_h"] = ((ul >> 4).reshape(nsb, 4, 4) << (2 * np.arange(4, dtype=np.uint32))).sum(axis=2)
    # L (16 j, nsb, 16 ib) with ib = 2*ib32 + half; ib32 = 2*pair + nib
    Lb = L.astype(np.uint8).reshape(16, nsb, 4, 2, 2)  # j, sb, pair, nib, half
    lo4 = Lb & 0xF
    qs = lo4[:, :, :, 0, :] | (lo4[:, :, :, 1, :] << 4)  # j, sb, pair, half
    out["qs"] = qs.transpose(1, 2, 3, 0).reshape(nsb, 128)
    hb = (Lb >> 4).reshape(16, nsb, 8, 2)  # j, sb, ib32, half
    if six:  # qh[32*(ib32/4) + 16*half + j] |= h << 2*(ib32%4)
        h = (hb.reshape(16, nsb, 2, 4, 2) << (2 * np.arange(4, dtype=np.uint8))[None, None, None, :, None]).sum(
            axis=3, dtype=np.uint8)  # j, sb, ib32/4, half
        out["qh"] = h.transpose(1, 2, 3, 0).reshape(nsb, 64)
    else:  # qh[16*half + j] |= h << ib32
        h = (hb << np.arange(8, dtype=np.uint8)[None, None, :, None]).sum(axis=2, dtype=np.uint8)  # j, sb, half
        out["qh"] = h.transpose(1, 2, 0).reshape(nsb, 32)
    if not live.all():  # C: `if (!max_abs_scale) continue;` leaves the block all zero
        out[~live] = np.zeros((), out.dtype)
    return out


@ieee
def quantize_iq5_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ik_llama.cpp quantize_iq5_k: rows float32 (nrows, n) -> uint8 (nrows, n/256*176)."""
    return _by_chunks(rows, imatrix, BLOCK_IQ5_K, lambda x, im: _iq56_chunk(x, im, "IQ5_K"))


@ieee
def quantize_iq6_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ik_llama.cpp quantize_iq6_k: rows float32 (nrows, n) -> uint8 (nrows, n/256*212)."""
    return _by_chunks(rows, imatrix, BLOCK_IQ6_K, lambda x, im: _iq56_chunk(x, im, "IQ6_K"))


def _levels_56(b: np.ndarray, six: bool) -> tuple[np.ndarray, np.ndarray]:
    """(level index (nb, 16 ib, 16 j) intp, shifted (nb, 16) intp) of IQ5_K / IQ6_K blocks."""
    ib = np.arange(16)
    ib32, half = ib // 2, ib % 2
    qs = b["qs"].reshape(-1, 4, 2, 16).astype(np.intp)  # pair, half, j
    low = (qs[:, ib32 // 2, half, :] >> (4 * (ib32 % 2))[None, :, None]) & 0xF  # (nb, ib, j)
    if six:
        qh = b["qh"].reshape(-1, 2, 2, 16).astype(np.intp)  # ib32/4, half, j
        hi = (qh[:, ib32 // 4, half, :] >> (2 * (ib32 % 4))[None, :, None]) & 3
    else:
        qh = b["qh"].reshape(-1, 2, 16).astype(np.intp)
        hi = (qh[:, half, :] >> ib32[None, :, None]) & 1
    shift = (b["extra"].astype(np.intp)[:, None] >> ib) & 1
    return low | (hi << 4), shift


def dequantize_iq5_k(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq5_k: uint8 (nrows, n/256*176) -> float32 (nrows, n)."""
    b = np.ascontiguousarray(data).view(BLOCK_IQ5_K).reshape(-1)
    d = fp16_bits_to_fp32(b["d"])[:, None]
    ib = np.arange(16)
    slo = b["scales_l"].astype(np.int32)
    lo = np.where(ib % 2 == 0, slo[:, ib // 2] & 0xF, slo[:, ib // 2] >> 4)
    hi = (b["scales_h"].astype(np.int32)[:, ib // 4] >> (2 * (ib % 4))) & 3
    dl = d * ((lo | (hi << 4)) - 32).astype(F32)
    idx, shift = _levels_56(b, False)
    vals = IQ5NL_VALUES.astype(F32)[idx + 32 * shift[:, :, None]]
    return (dl[:, :, None] * vals).reshape(data.shape[0], n)


_A6, _B6, _C6, _D6 = F32(-127.0), F32(6.2568), F32(0.11218), F32(0.0011972)


def dequantize_iq6_k(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq6_k: dl * (A + q*(B + q*(-C + q*D)) + m), m = 1 on shifted blocks."""
    b = np.ascontiguousarray(data).view(BLOCK_IQ6_K).reshape(-1)
    d = fp16_bits_to_fp32(b["d"])[:, None]
    dl = d * b["scales"].astype(F32)
    idx, shift = _levels_56(b, True)
    q = idx.astype(F32)
    t = _A6 + q * (_B6 + q * (-_C6 + q * _D6))
    t = t + shift.astype(F32)[:, :, None]
    return (dl[:, :, None] * t).reshape(data.shape[0], n)


QUANTIZE = {"IQ4_K": quantize_iq4_k, "IQ5_K": quantize_iq5_k, "IQ6_K": quantize_iq6_k}
DEQUANTIZE = {"IQ4_K": dequantize_iq4_k, "IQ5_K": dequantize_iq5_k, "IQ6_K": dequantize_iq6_k}
