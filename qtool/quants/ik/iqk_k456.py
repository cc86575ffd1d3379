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
  two levels with the float test `x - v[a] < v[a+1] - x`"; the same table serves the shifted
  values. `(int)` truncates; NaN and values >= 2^31 give INT_MIN on x86 (level 0). `best_index_c`
  is that function, exactly, on arrays.
- Measured on every float near every level midpoint, C's level is monotone in x and changes only
  at the midpoints (x = m goes up), except one shifted threshold of IQ4_K (-0.5 - 2.4e-7) and of
  IQ5_K (-1.5 - 1.2e-7). So levels are read from 65536-entry tables keyed by the float's high 16
  bits: `keys` (one ulp less for negative floats) never straddle a midpoint, and the few keys that
  straddle a threshold are marked (NaN) and resolved exactly. Rows holding NaN run `best_index_c`
  throughout (NaN payloads can share a key).
- The search (`_search`) has 2 + 4*(2*ntry + 1) candidates (IQ4_K 62) but only 2*ntry + 2 + DELTA
  distinct ids (IQ4_K 20): plain itry + DELTA and shifted itry divide the same integer by max.
  `_fast_sums` computes al = id*x once per id, reads per value one record holding the levels of
  +al and -al in one or both tables (a gather on the unadjusted 16-bit key, with the keys' first
  floats looked up apart), and sums sum_j (w*q)*x and (w*q)*q with one einsum pass each (numpy's
  einsum runs C's loop: products left to right, added to +0 in j order; checked once per process,
  `einsum_sums_ok`). `_choose` then runs C's comparisons over the candidates in C's order (strict
  >, the p/m/shifted order) on views of those sums. The per-table path (`_cand_sums`, the exact
  level function on NaN rows) is the reference the tests hold the fast one to.
- float32 throughout as in C, no fused multiply-add, nearest_int as ggml's magic-number trick,
  fp16 as astype(float16).

Shapes: a chunk of rows is cut into blocks of 16 laid out (16, nblocks) C-contiguous, columns in
row-major block order (row, super-block, block); super-block quantities are (nsb,) and repeated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..numeric import (
    F32,
    QK_K,
    absmax_t,
    blocks_t,
    c_einsum,
    fp16_bits,
    fp16_bits_to_fp32,
    ieee,
    nearest_int,
    seq_sum0,
)
from ..registry import register
from .iqk_tables import IQ4K_VALUES, IQ4NL_INDEX, IQ5NL_INDEX, IQ5NL_VALUES, IQ6NL_INDEX, IQ6NL_VALUES

__all__ = ["BLOCK_IQ4_K", "BLOCK_IQ5_K", "BLOCK_IQ6_K", "DEQUANTIZE", "IQ4NL_INDEX", "IQ5NL_INDEX",
           "IQ6NL_INDEX", "IQ6_K_VALUES", "KINDS", "QUANTIZE", "best_index_c", "dequantize_iq4_k",
           "dequantize_iq5_k", "dequantize_iq6_k", "einsum_sums_ok", "keys", "level_index", "level_values", "luts",
           "quantize_iq4_k", "quantize_iq5_k", "quantize_iq6_k"]

BLOCK_IQ4_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales_h", "u1", (4,)), ("scales_l", "u1", (8,)),
                        ("qs", "u1", (128,))])
BLOCK_IQ5_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales_h", "u1", (4,)), ("scales_l", "u1", (8,)),
                        ("qs", "u1", (128,)), ("qh", "u1", (32,))])
BLOCK_IQ6_K = np.dtype([("d", "<u2"), ("extra", "<u2"), ("scales", "i1", (16,)), ("qs", "u1", (128,)),
                        ("qh", "u1", (64,))])
assert BLOCK_IQ4_K.itemsize == 144 and BLOCK_IQ5_K.itemsize == 176 and BLOCK_IQ6_K.itemsize == 212

# ---- the C index tables (iqk_quantize.cpp) are in iqk_tables ---------------------------------------

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
    with np.errstate(all="ignore"):
        u = (x - v0) if kind.sub_first else x
        u64 = u.astype(np.float64)
        valid = u64 < 2.0 ** 31  # NaN and >= 2^31: cvttss2si gives INT_MIN
        t = np.where(valid, np.trunc(np.maximum(u64, float(_INT_MIN))), float(_INT_MIN)).astype(np.int64)
        ix = t if kind.sub_first else t - int(v0)
        e = kind.index[np.clip(ix, 0, kind.index.size - 1)].astype(np.int64)
        a = np.clip(e - kind.n, 0, kind.n - 2)
        lower = (x - kind.values[a]) < (kind.values[a + 1] - x)
    r = np.where(e < kind.n, e, np.where(lower, a, a + 1))
    return np.where(ix < 0, 0, np.where(ix >= kind.bound, kind.n - 1, r))


_AMBIGUOUS = 255
"""Index-table marker of a key whose floats do not all get the same level (value table: NaN)."""


@dataclass(frozen=True)
class _Lut:
    """C's level for every 16-bit key of a float (see `keys`): value (float32, NaN where the key's
    floats straddle a threshold) and index (uint8, _AMBIGUOUS there); for each straddling key the
    one threshold t inside it (level lo below t, hi from t on, in x order)."""

    kind: _Kind
    q: np.ndarray  # float32 (65536,)
    idx: np.ndarray  # uint8 (65536,)
    amb_key: np.ndarray  # uint32 (k,)
    amb_t: np.ndarray  # float32 (k,)
    amb_lo: np.ndarray  # int64 (k,)
    amb_hi: np.ndarray  # int64 (k,)

    def resolve(self, al: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Levels (int64) of floats al whose keys are ambiguous (1-D arrays)."""
        out = np.zeros(al.shape, np.int64)
        for k, t, lo, hi in zip(self.amb_key, self.amb_t, self.amb_lo, self.amb_hi, strict=True):
            m = key == k
            out[m] = np.where(al[m] < t, lo, hi)
        return out


def keys(al: np.ndarray) -> np.ndarray:
    """In place on float32 al (C-contiguous; destroyed): the 16-bit key of each float as uint32.

    The key is the high half of the float's bits, less one ulp for negative floats. A key is then a
    range of floats [lo, hi) for x >= 0 and [-hi, -lo) for x < 0: both sides closed towards -inf,
    as C's level changes at x = m exactly (x - a < b - x is false at the midpoint). The levels'
    midpoints are integers or half-integers below 128, which the ranges never straddle. -0.0 lands
    on key 0x7fff (with positive NaNs whose payload starts 0x7fff, handled as NaN input)."""
    b = al.view(np.uint32)
    t = np.right_shift(b, 31)
    np.subtract(b, t, out=b)
    np.right_shift(b, 16, out=b)
    return b


def _key_floats(k: np.ndarray, low: int | np.ndarray) -> np.ndarray:
    """The float with key k and low 16 bits `low` of (bits - 1 for negative floats)."""
    b = (k.astype(np.uint64) << 16) + low
    b = np.where(b >= (1 << 31), b + 1, b)
    return np.minimum(b, 0xFFFFFFFF).astype(np.uint32).view(F32)


def _build_lut(kind: _Kind) -> _Lut:
    """C's level at both ends of each key's float range (best_index_c): C's level is monotone in x
    (tested), so equal ends mean one level for the whole range. The few other keys get every float
    evaluated: each must hold one step (else the build fails)."""
    k = np.arange(1 << 16, dtype=np.uint32)
    lo = best_index_c(_key_floats(k, 0), kind)
    hi = best_index_c(_key_floats(k, 0xFFFF), kind)
    lo[0x7FFF] = hi[0x7FFF] = best_index_c(np.array([0.0], F32), kind)[0]  # -0.0
    same = lo == hi
    idx = np.where(same, lo, _AMBIGUOUS).astype(np.uint8)
    q = np.where(same, kind.values[np.where(same, lo, 0)], F32(np.nan)).astype(F32)
    amb = np.flatnonzero(~same).astype(np.uint32)
    ts, los, his = [], [], []
    for key in amb:
        x = _key_floats(np.full(1 << 16, key, np.uint32), np.arange(1 << 16))
        x = np.sort(x[~np.isnan(x)])
        f = best_index_c(x, kind)
        step = np.flatnonzero(f[1:] != f[:-1])
        assert step.size == 1, f"key {key:#x} holds {step.size} level changes"
        ts.append(x[step[0] + 1])
        los.append(f[0])
        his.append(f[-1])
    return _Lut(kind, q, idx, amb, np.array(ts, F32), np.array(los, np.int64), np.array(his, np.int64))


def level_values(al: np.ndarray, lut: _Lut, exact: bool = False) -> np.ndarray:
    """Level values of C's best_index on al (C-contiguous float32, destroyed); NaN where a key is
    ambiguous (callers resolve those). exact: best_index_c throughout."""
    if exact:
        return lut.kind.values[best_index_c(al, lut.kind)]
    return np.take(lut.q, keys(al))


def _exact_values(al: np.ndarray, lut: _Lut) -> np.ndarray:
    """Level values of C's best_index on float32 al (any shape, kept), ambiguous keys resolved."""
    k = keys(np.array(al, dtype=F32, order="C"))
    q = np.take(lut.q, k)
    amb = np.isnan(q)
    if amb.any():
        q[amb] = lut.kind.values[lut.resolve(al[amb], k[amb])]
    return q


def level_index(al: np.ndarray, lut: _Lut, exact: bool = False) -> np.ndarray:
    """C's best_index on al (float32, any shape) as uint8, exact (ambiguous keys resolved)."""
    if exact:
        return best_index_c(al, lut.kind).astype(np.uint8)
    al = np.asarray(al, dtype=F32)
    k = keys(al.copy(order="C"))
    idx = np.take(lut.idx, k)
    amb = idx == _AMBIGUOUS
    if amb.any():
        idx[amb] = lut.resolve(al[amb], k[amb])
    return idx


def _kinds(values: np.ndarray, index: np.ndarray, bound: int, sub_first: bool) -> tuple[_Kind, _Kind]:
    n = values.size // 2
    v = values.astype(F32)
    return (_Kind(v[:n].copy(), index, bound, sub_first), _Kind(v[n:].copy(), index, bound, sub_first))


IQ6_K_VALUES = np.concatenate([IQ6NL_VALUES[:64].astype(F32), IQ6NL_VALUES[:64].astype(F32) + F32(1)])
"""quantize_iq6_k's float table: values[i] = iq6nl_values[i], shifted values[i] + S_IQ6K (1)."""
KINDS = {
    "IQ4_K": _kinds(IQ4K_VALUES, IQ4NL_INDEX, 241, False),
    "IQ5_K": _kinds(IQ5NL_VALUES, IQ5NL_INDEX, 247, False),
    "IQ6_K": _kinds(IQ6_K_VALUES, IQ6NL_INDEX, 249, True),
}
_LUT_CACHE: dict[str, tuple[_Lut, _Lut]] = {}


def luts(qtype: str) -> tuple[_Lut, _Lut]:
    """The key tables of a type's plain and shifted values (built once, ~10 ms)."""
    if qtype not in _LUT_CACHE:
        _LUT_CACHE[qtype] = (_build_lut(KINDS[qtype][0]), _build_lut(KINDS[qtype][1]))
    return _LUT_CACHE[qtype]


# ---- shared pieces of the three quantizers --------------------------------------------------------

_K_EPS = F32(1e-9)
_K_EPS_THR = F32(16) * (_K_EPS * _K_EPS)  # QHelper: m_block_size*kEps2


def _qhelper_weights(xt: np.ndarray, imatrix: np.ndarray, nrows: int) -> np.ndarray:
    """QHelper::row_weights: the imatrix per block of 16, replaced by kEps where the block's sum of
    w², x² or w*|x| is <= 16*kEps² (iqk_quantize.cpp). Returns qw (16, nblocks)."""
    qwt = np.tile(blocks_t(np.asarray(imatrix, dtype=F32).reshape(-1, 16)), nrows)
    sw2 = seq_sum0(qwt * qwt)
    sx2 = seq_sum0(xt * xt)
    swx = seq_sum0(qwt * np.abs(xt))
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


_SUB_NB = 256  # blocks per candidate batch: (16, ncand, 256) float32 temporaries stay in L2


def _cand_sums(xt: np.ndarray, wt: np.ndarray, ids: np.ndarray, lut: _Lut, exact: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """(sumqx, sumq2) (ncand, nb) of levels best_index(id*x): sum (w*q)*x and (w*q)*q in index order."""
    nc, nb = ids.shape
    sx = np.empty((nc, nb), F32)
    s2 = np.empty((nc, nb), F32)
    sub = min(_SUB_NB, nb)
    buf_a = np.empty((16, nc, sub), F32)  # in-block index first: the sums reduce down axis 0
    buf_t = np.empty((16, nc, sub), np.uint32)
    buf_q = np.empty((16, nc, sub), F32)
    for b0 in range(0, nb, sub):  # nb and sub are multiples of 16: no lone column
        m = min(sub, nb - b0)
        sl = slice(b0, b0 + m)
        x = xt[:, None, sl]
        al, t, q = buf_a[..., :m], buf_t[..., :m], buf_q[..., :m]
        np.multiply(ids[None, :, sl], x, out=al)
        if exact:
            q[...] = lut.kind.values[best_index_c(al, lut.kind)]
        else:  # keys(al) into t, then the level values
            b = al.view(np.uint32)
            np.right_shift(b, 31, out=t)
            np.subtract(b, t, out=t)
            np.right_shift(t, 16, out=t)
            np.take(lut.q, t, out=q, mode="clip")
        wq = np.multiply(wt[:, None, sl], q, out=al)
        np.multiply(wq, q, out=q)
        s2[:, sl] = np.add.reduce(q, axis=0)
        np.multiply(wq, x, out=wq)
        sx[:, sl] = np.add.reduce(wq, axis=0)
    sx += F32(0)
    s2 += F32(0)
    redo = np.isnan(s2)
    if not exact and redo.any():  # an ambiguous key (or NaN data): resolve those blocks' levels
        ci, bi = np.nonzero(redo)
        x = xt[:, bi]
        al = ids[ci, bi] * x
        k = keys(al.copy())
        q = np.take(lut.q, k)
        amb = np.isnan(q)
        q[amb] = lut.kind.values[lut.resolve(al[amb], k[amb])]
        sx[ci, bi], s2[ci, bi] = _loop_sums(wt[:, bi] * q, x, q)
    return sx, s2


def _loop_sums(wq: np.ndarray, x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum_j wq[j]*x[j] and wq[j]*q[j] from +0 down axis 0 in order (any column count, any memory
    order: np.add.reduce would sum an F-ordered array, e.g. a fancy-indexed xt[:, cols], pairwise)."""
    sx = np.zeros(wq.shape[1:], F32)
    s2 = np.zeros(wq.shape[1:], F32)
    for j in range(wq.shape[0]):
        sx += wq[j] * x[j]
        s2 += wq[j] * q[j]
    return sx, s2


# ---- fast candidate sums ---------------------------------------------------------------------------
# The search's 2 + 4*(2*ntry + 1) candidates share their ids: C's id = (itry + values[0])/max, and the
# shifted table's values[0] is the plain one's + DELTA (IQ4_K 4, IQ5_K 2, IQ6_K 1), so plain itry +
# DELTA and shifted itry give the same float. al = id*x is computed once per distinct id ("row";
# IQ4_K: 20 rows for 62 candidates) and one gather reads, per value, a record of the levels of +al
# and -al in one or both tables (complex64 or complex128: 2 or 4 float32 side by side).
# The key is the float's high 16 bits (one shift), a range of 2^16 consecutive bit patterns on which
# C's level is constant except at the range's first float (low 16 bits zero): no midpoint lies
# strictly inside (see `keys`), but x = m exactly goes up, which for -al and for negative al is the
# other end. So the values with low 16 bits zero read a second table, of the first floats' levels,
# where that level differs ("bad" keys). Such values are rare except in two known places, handled in
# advance: each block's largest value (id*max often comes out an integer) and zeros. A sub-batch
# counts its zero low halves and looks for their positions only when the count is off (a chance hit,
# about 2^-16 of the values). The few keys straddling an odd threshold hold NaN: those (candidate,
# block) sums come out NaN and are recomputed with the exact level function.
# The sums sum_j (w*q)*x and (w*q)*q are one einsum pass each, which numpy runs as C's loop (products
# left to right, added to +0 in j order, no fused multiply-add); that is checked once per process
# (`einsum_sums_ok`), with multiply + np.add.reduce as the fallback.

_FAST_SUB = 256  # blocks per sub-batch of the fast sums


@dataclass(frozen=True)
class _FastPlan:
    """The distinct ids of a type's search and how their records map to C's candidates."""

    nums: np.ndarray  # float32 (nk - 1,): numerators of rows 1.. (row 0 is id0 = 1/d0)
    groups: tuple[tuple[int, int, np.ndarray, np.ndarray, np.ndarray], ...]
    # (row lo, row hi, records, first-float records, C index of each record slot (rows, r))
    bad: np.ndarray  # bool (65536,): keys whose first float has another level in some table/side
    crow: np.ndarray  # per C candidate: its row,
    ckind: np.ndarray  # its table (0 plain, 1 shifted)
    cneg: np.ndarray  # and whether it is the -al side
    ncand: int


def _side_table(kind: _Kind, neg: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per unadjusted 16-bit key: the level value of C's best_index(kind, +-f) common to the key's
    floats with nonzero low bits (NaN where they straddle a threshold), and the level value of the
    key's first float (low bits zero)."""
    k = np.arange(1 << 16, dtype=np.uint32) << 16
    sgn = F32(-1) if neg else F32(1)
    with np.errstate(invalid="ignore"):  # (NaN bit patterns)
        lo = best_index_c(sgn * (k + 1).view(F32), kind)
        hi = best_index_c(sgn * (k + 0xFFFF).view(F32), kind)
        base = best_index_c(sgn * k.view(F32), kind)
    same = lo == hi
    val = np.where(same, kind.values[lo], F32(np.nan)).astype(F32)
    return val, kind.values[base].astype(F32)


@functools.cache
def _fast_plan(qtype: str, ntry: int) -> _FastPlan:
    """Rows, record tables and candidate map of the fast sums for a type (built once, ~50 ms)."""
    ku, ks = KINDS[qtype]
    v0, s0 = int(ku.values[0]), int(ks.values[0])
    tabs = {}
    first = {}
    bad = np.zeros(1 << 16, bool)
    for t, kind in enumerate((ku, ks)):
        for neg in (False, True):
            tabs[t, neg], first[t, neg] = _side_table(kind, neg)
            bad |= tabs[t, neg] != first[t, neg]  # (NaN keys too: harmless)
    tries = range(-ntry, ntry + 1)
    nums = sorted({v0 + i for i in tries} | {s0 + i for i in tries})
    sets = [(0,)] + [tuple(t for t, b in ((0, v0), (1, s0)) if k - b in tries) for k in nums]
    row_of = {(t, k): 1 + i for i, k in enumerate(nums) for t in sets[1 + i]}
    cands = [(0, 0, False), (0, 0, True)]
    for itry in tries:
        cands += [(row_of[0, v0 + itry], 0, False), (row_of[0, v0 + itry], 0, True),
                  (row_of[1, s0 + itry], 1, False), (row_of[1, s0 + itry], 1, True)]
    index = {c: i for i, c in enumerate(cands)}
    groups = []
    lo = 0
    for hi in range(1, len(sets) + 1):
        if hi < len(sets) and sets[hi] == sets[lo]:
            continue
        slots = [(t, neg) for t in sets[lo] for neg in (False, True)]
        ctype = np.complex64 if len(slots) == 2 else np.complex128
        rec = np.stack([tabs[s] for s in slots], axis=1).view(ctype).reshape(-1)
        recf = np.stack([first[s] for s in slots], axis=1).view(ctype).reshape(-1)
        cmap = np.array([[index[r, t, neg] for t, neg in slots] for r in range(lo, hi)], np.intp)
        assert rec[0] == rec[0x8000] and recf[0] == recf[0x8000] and not bad[0] | bad[0x8000]  # +-0 alike
        groups.append((lo, hi, rec, recf, cmap))
        lo = hi
    crow, ckind, cneg = (np.array(v) for v in zip(*cands, strict=True))
    return _FastPlan(np.array(nums, F32), tuple(groups), bad, crow, ckind, cneg.astype(bool), len(cands))


@functools.cache
def einsum_sums_ok() -> bool:
    """Whether c_einsum("kjb,jb,jb->kb", q, w, x) and ("kjb,jb,kjb->kb", q, w, q) are C's
    `s += w*q*x` / `s += w*q*q` loops bit for bit (float32 products left to right, no fused
    multiply-add, added to +0 in j order), on data where another order, pairing or fusion shows,
    with operands and outputs laid out as `_fast_sums` passes them (column slices of wider arrays)."""
    rng = np.random.default_rng(20240612)
    for nk, nj, nb in ((1, 16, 2), (3, 16, 4), (5, 16, 6), (2, 16, 514), (11, 16, 1024), (4, 32, 512), (2, 32, 7)):
        q = rng.integers(-127, 128, (nk, nj, nb)).astype(F32)
        w = (rng.uniform(0, 3, (nj, nb + 3)) * np.exp(rng.uniform(-10, 10, (nj, nb + 3)))).astype(F32)[:, 1:nb + 1]
        x = (rng.standard_normal((nj, nb + 3)) * np.exp(rng.uniform(-10, 10, (nj, nb + 3)))).astype(F32)[:, 2:nb + 2]
        x[0, 0] = -0.0
        wx = np.zeros((nk, nb), F32)
        w2 = np.zeros((nk, nb), F32)
        for j in range(nj):
            wq = w[j] * q[:, j]
            wx += wq * x[j]
            w2 += wq * q[:, j]
        out = np.full((2, nk, nb + 5), np.nan, F32)
        c_einsum("kjb,jb,jb->kb", q, w, x, out=out[0, :, 3:nb + 3])
        c_einsum("kjb,jb,kjb->kb", q, w, q, out=out[1, :, 3:nb + 3])
        if not (np.array_equal(out[0, :, 3:nb + 3].view(np.uint32), wx.view(np.uint32))
                and np.array_equal(out[1, :, 3:nb + 3].view(np.uint32), w2.view(np.uint32))):
            return False
        prod = c_einsum("kb,jb->kjb", w[:min(nk, nj)], x)  # products exact; -0 comes out +0 (harmless: keys
        if not np.array_equal(prod, w[:min(nk, nj), None, :] * x[None]):  # of +-0 hold the same records)
            return False
    return True


def _repeat_cols(a: np.ndarray, r: int) -> np.ndarray:
    """np.repeat(a, r, axis=1) for float32 a (n, m) and r in (1, 2, 4), through 64-bit copies: a
    float's bits times 2^32 + 1 are two copies of it."""
    if r == 1:
        return a
    u = np.ascontiguousarray(a).view(np.uint32).astype(np.uint64)
    u *= np.uint64(0x100000001)
    if r == 4:
        u = np.repeat(u, 2, axis=1)
    return u.view(F32)


def _fast_sums(xt: np.ndarray, wt: np.ndarray, mx: np.ndarray, id0: np.ndarray, plan: _FastPlan,
               qtype: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(sumqx, sumq2) of every candidate of the search, per group of ids as einsum writes them:
    [(sumqx, sumq2 (rows, nb*r): the r record slots of each block side by side, C index of each
    (row, slot) (rows, r))].

    Values whose al has low 16 bits zero need the first-float record where their key is `bad`. Each
    block's largest value gives such an al in most rows (id*max comes out an integer) and zeros give
    +-0: those are known in advance, so a sub-batch only counts its zero low halves and looks for the
    positions of the others when the count is off (a chance hit, about 2^-16 of the values)."""
    nb = xt.shape[1]
    nk = plan.nums.size + 1
    ids = np.empty((nk, nb), F32)
    ids[0] = id0
    np.divide(plan.nums[:, None], mx[None, :], out=ids[1:])
    cols = np.arange(nb)
    jmax = np.argmax(np.abs(xt), axis=0)
    alm = ids * xt[jmax, cols]  # (nk, nb): al of each block's largest value
    bm = alm.view(np.uint32)
    lowm = (bm << 16) == 0
    fb, fk = np.divmod(np.flatnonzero((lowm & plan.bad[bm >> 16]).T), nk)  # largest values to fix, by block
    zero = xt == 0
    zero[jmax, cols] = False
    expect = lowm + zero.sum(axis=0)  # (nk, nb): values with low 16 bits zero known in advance
    cexp = np.zeros((nk, nb + 1), np.int64)
    np.cumsum(expect, axis=1, out=cexp[:, 1:])
    rs = sorted({g[4].shape[1] for g in plan.groups})
    wr = {r: _repeat_cols(wt, r) for r in rs}  # w and x repeated for the r record slots of each block
    xr = {r: _repeat_cols(xt, r) for r in rs}
    raw = [(np.empty((g[1] - g[0], nb * g[4].shape[1]), F32), np.empty((g[1] - g[0], nb * g[4].shape[1]), F32))
           for g in plan.groups]
    sub = min(_FAST_SUB, nb)
    n_al = nk * 16 * sub
    buf_al = np.empty(n_al, F32)
    buf_k = np.empty(n_al, np.int64)
    buf_t = np.empty(n_al, np.uint32)
    qbufs = [np.empty((g[1] - g[0]) * 16 * sub * g[4].shape[1], F32) for g in plan.groups]
    ein = einsum_sums_ok()
    for b0 in range(0, nb, sub):
        m = min(sub, nb - b0)
        sl = slice(b0, b0 + m)
        xs = xt[:, sl]
        al = buf_al[:nk * 16 * m].reshape(nk, 16, m)
        if ein:
            c_einsum("kb,jb->kjb", ids[:, sl], xs, out=al)  # (faster than the broadcast multiply)
        else:
            np.multiply(ids[:, None, sl], xs[None], out=al)
        bits = al.view(np.uint32)
        key = buf_k[:al.size].reshape(al.shape)
        np.right_shift(bits, 16, out=key, casting="unsafe")  # (take's wrap mode is slow on < 0)
        low = np.left_shift(bits.reshape(nk, 16 * m), 16, out=buf_t[:al.size].reshape(nk, 16 * m))
        f0, f1 = np.searchsorted(fb, (b0, b0 + m))
        pos = (fk[f0:f1] * 16 + jmax[fb[f0:f1]]) * m + (fb[f0:f1] - b0)
        want = cexp[:, b0 + m] - cexp[:, b0]
        if low.size - np.count_nonzero(low) != want.sum():  # a chance hit (2^-16 of the values): which rows
            odd = [k for k in range(nk) if low.shape[1] - np.count_nonzero(low[k]) != want[k]]
            more = np.concatenate([np.flatnonzero(low[k] == 0) + k * 16 * m for k in odd])
            pos = np.union1d(pos, more[plan.bad.take(key.reshape(-1).take(more))])
        for (lo, hi, rec, recf, cmap), qb, (rx, r2) in zip(plan.groups, qbufs, raw, strict=True):
            r = cmap.shape[1]
            q = qb[:(hi - lo) * 16 * m * r].view(rec.dtype).reshape(hi - lo, 16, m)
            np.take(rec, key[lo:hi], out=q, mode="clip")
            if pos.size:
                p = pos[(pos >= lo * 16 * m) & (pos < hi * 16 * m)]
                if p.size:
                    q.reshape(-1)[p - lo * 16 * m] = recf.take(key.reshape(-1).take(p))
            qf = q.view(F32).reshape(hi - lo, 16, m * r)
            ox = rx[:, b0 * r:(b0 + m) * r]
            w = wr[r][:, b0 * r:(b0 + m) * r]
            x = xr[r][:, b0 * r:(b0 + m) * r]
            o2 = r2[:, b0 * r:(b0 + m) * r]
            if ein:
                c_einsum("kjb,jb,jb->kb", qf, w, x, out=ox)
                c_einsum("kjb,jb,kjb->kb", qf, w, qf, out=o2)
            else:
                wq = qf * w
                np.add.reduce(wq * qf, axis=1, out=o2)
                wq *= x
                np.add.reduce(wq, axis=1, out=ox)
    if not ein:
        for rx, r2 in raw:
            rx += F32(0)
            r2 += F32(0)
    for (_, _, _, _, cmap), (rx, r2) in zip(plan.groups, raw, strict=True):
        redo = np.flatnonzero(np.isnan(r2))
        if not redo.size:  # else a straddling key: C's level function on those candidates
            continue
        r = cmap.shape[1]
        k, bs = np.divmod(redo, nb * r)
        bi, sl_ = np.divmod(bs, r)
        ci = cmap[k, sl_]
        x = xt[:, bi]
        al = ids[plan.crow[ci], bi] * x
        al = np.where(plan.cneg[ci], -al, al)
        q = np.empty_like(al)
        for t, lut in enumerate(luts(qtype)):
            c = plan.ckind[ci] == t
            q[:, c] = _exact_values(al[:, c], lut)
        rx.reshape(-1)[redo], r2.reshape(-1)[redo] = _loop_sums(wt[:, bi] * q, x, q)
    return [(rx, r2, g[4]) for (rx, r2), g in zip(raw, plan.groups, strict=True)]


def _choose(groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]], nb: int) -> tuple[np.ndarray, np.ndarray]:
    """C's choice over the candidates -> (the winner's C index (nb,), its d = sumqx/sumq2 (nb,)).

    groups: [(sumqx, sumq2 (rows, nb*r), C index of each (row, slot) (rows, r))] covering every
    candidate once. C: candidate 0 unconditionally (d = sumqx/sumq2, best = d*sumqx), then in C's
    order each one with `sumq2 > 0 && sumqx*sumqx > best*sumq2`. The sequential loop runs on
    (nb,) views of the groups (no reordering copy); best and the winner's index are one complex64
    per block, so each step is three numpy calls."""
    ncand = sum(g[2].size for g in groups)
    s2v: list[np.ndarray] = [np.empty(0, F32)] * ncand
    sxxv: list[np.ndarray] = [np.empty(0, F32)] * ncand
    candv: list[np.ndarray] = [np.empty(0, np.complex64)] * ncand
    dns = []
    for rx, r2, cmap in groups:
        rows, r = cmap.shape
        with np.errstate(all="ignore"):
            dn = rx / r2
            cand = np.empty(rx.shape, np.complex64)
            cv = cand.view(F32).reshape(rows, nb, r, 2)
            cv[..., 0] = (dn * rx).reshape(rows, nb, r)
            cv[..., 1] = cmap[:, None, :].astype(F32)
            sxx = rx * rx
            off = ~(r2 > 0)
            if off.any():
                sxx[off] = -np.inf
        dns.append(dn)
        for k in range(rows):
            for j in range(r):
                c = cmap[k, j]
                s2v[c] = r2[k, j::r]
                sxxv[c] = sxx[k, j::r]
                candv[c] = cand[k, j::r]
    state = candv[0].copy()
    best = state.view(F32)[0::2]
    upd = np.empty(nb, bool)
    tmp = np.empty(nb, F32)
    with np.errstate(invalid="ignore", over="ignore"):
        for c in range(1, ncand):
            np.multiply(best, s2v[c], out=tmp)
            np.greater(sxxv[c], tmp, out=upd)
            np.putmask(state, upd, candv[c])
    last = state.view(F32)[1::2].astype(np.intp)
    d = np.empty(nb, F32)
    for (_, _, cmap), dn in zip(groups, dns, strict=True):
        rows, r = cmap.shape
        where = np.full(ncand, -1, np.intp)
        where[cmap.reshape(-1)] = np.arange(cmap.size)
        pos = where[last]
        sel = np.flatnonzero(pos >= 0)
        kk, jj = np.divmod(pos[sel], r)
        d[sel] = dn[kk, sel * r + jj]
    return last, d


def _search(xt: np.ndarray, wt: np.ndarray, qtype: str, ntry: int, refine: bool, exact: bool,
            fast: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The per-block search of quantize_row_iq{4,5,6}_k_impl on xt, wt (16, nb) -> (scale float32
    (nb,), is_shifted bool (nb,)); blocks with max |x| < 1e-16 get 0, not shifted. fast: the
    candidates' sums from `_fast_sums` (not with exact, i.e. NaN data), else per table through
    `_cand_sums` (the reference path)."""
    lut_u, lut_s = luts(qtype)
    v0 = lut_u.kind.values[0]
    s0 = lut_s.kind.values[0]
    amax, mx = absmax_t(np.where(np.isnan(xt), F32(0), xt) if exact else xt)  # NaN never wins in C
    skip = amax < F32(1e-16)
    mx = np.where(skip, F32(1), mx)
    d0 = -mx / v0
    id0 = F32(1) / d0
    tries = range(-ntry, ntry + 1)
    # C's order: p0, m0, then per itry: plain p, plain m, shifted p, shifted m
    if fast and not exact:
        plan = _fast_plan(qtype, ntry)
        last, d = _choose(_fast_sums(xt, wt, mx, id0, plan, qtype), mx.size)
        shifted_c = plan.ckind == 1
    else:
        ids_u = np.empty((2 + 2 * len(tries), mx.size), F32)
        ids_s = np.empty((2 * len(tries), mx.size), F32)
        ids_u[0] = id0
        for i, itry in enumerate(tries):
            ids_u[2 + 2 * i] = (F32(itry) + v0) / mx
            ids_s[2 * i] = (F32(itry) + s0) / mx
        ids_u[1::2] = -ids_u[0::2]
        ids_s[1::2] = -ids_s[0::2]
        sxu, s2u = _cand_sums(xt, wt, ids_u, lut_u, exact)
        sxs, s2s = _cand_sums(xt, wt, ids_s, lut_s, exact)
        nu = sxu.shape[0]
        order = [0, 1] + [r for i in range(len(tries)) for r in (2 + 2 * i, 3 + 2 * i, nu + 2 * i, nu + 2 * i + 1)]
        sx = np.concatenate([sxu, sxs])[order]
        s2 = np.concatenate([s2u, s2s])[order]
        shifted_c = np.array(order) >= nu
        last, d = _choose([(sx, s2, np.arange(len(order))[:, None])], mx.size)
    shifted = shifted_c[last]

    if refine:  # IQ5_K / IQ6_K: one more pass at id = 1/d with the chosen table
        nz = d != 0
        idr = F32(1) / np.where(nz, d, F32(1))
        sx_u, s2_u = _cand_sums(xt, wt, idr[None], lut_u, exact)
        sx_s, s2_s = _cand_sums(xt, wt, idr[None], lut_s, exact)
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
    return seq_sum0(np.ascontiguousarray(u))


_CHUNK_SB = 128  # super-blocks per chunk (2048 blocks of 16; candidates run in batches of _SUB_NB)


def _prepare(x: np.ndarray, imatrix: np.ndarray | None, sigma_iq4: bool
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int]:
    """xt (16, nb), qwt (16, nb) | None, sigma2 per block (nb,), nsb for a chunk of whole rows."""
    nrows, n = x.shape
    nsb = nrows * n // QK_K
    xt = blocks_t(x.reshape(-1, 16))
    sumx2 = seq_sum0(np.ascontiguousarray((x * x).reshape(nsb, QK_K).T))
    sigma2 = sumx2 * F32(2.0 / QK_K) if sigma_iq4 else (F32(2) * sumx2) / F32(QK_K)
    qwt = None if imatrix is None else _qhelper_weights(xt, imatrix, nrows)
    return xt, qwt, np.repeat(sigma2, 16), nsb


def _by_chunks(rows: np.ndarray, imatrix: np.ndarray | None, dtype: np.dtype,
               fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray]) -> np.ndarray:
    """fn(chunk of whole rows, imatrix) -> blocks of dtype, over chunks of ~_CHUNK_SB super-blocks."""
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
    exact = bool(np.isnan(xt).any())  # NaN payloads may share the key of -0.0: no tables then
    scales, shifted = _search(xt, wt, "IQ4_K", 7, False, exact)
    max_scale, _ = _max_scale(scales.reshape(nsb, 16))
    d = -max_scale / F32(32)
    idd = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
    l = nearest_int(np.repeat(idd, 16) * scales)
    np.clip(l, -32, 31, out=l)
    lf = l.astype(F32)
    dl = np.repeat(d, 16) * lf
    idl = np.where(dl != 0, F32(1) / np.where(dl != 0, dl, F32(1)), F32(0))
    L, qv = _final_levels(xt, idl, shifted, "IQ4_K", exact)
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


def _final_levels(xt: np.ndarray, idl: np.ndarray, shifted: np.ndarray, qtype: str, exact: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Levels best_index(block_values, idl*x) with each block's table: (index uint8, value float32)."""
    lut_u, lut_s = luts(qtype)
    al = idl * xt
    vals = np.concatenate([lut_u.kind.values, lut_s.kind.values])
    if exact:
        L = np.where(shifted, level_index(al, lut_s, True), level_index(al, lut_u, True))
    else:  # both tables' indices in one uint16 per key
        k = keys(al.copy())
        both = _both_idx(qtype).take(k)
        L = np.where(shifted, both >> 8, both & 0xFF).astype(np.uint8)
        amb = L == _AMBIGUOUS
        if amb.any():
            sh = np.broadcast_to(shifted, L.shape)[amb]
            L[amb] = np.where(sh, lut_s.resolve(al[amb], k[amb]), lut_u.resolve(al[amb], k[amb]))
    return L, vals[L.astype(np.intp) + np.where(shifted, lut_u.kind.n, 0)]


@functools.cache
def _both_idx(qtype: str) -> np.ndarray:
    """uint16 per key of `keys`: the plain table's level index | the shifted table's << 8."""
    lut_u, lut_s = luts(qtype)
    return (lut_u.idx.astype(np.uint16) | (lut_s.idx.astype(np.uint16) << 8)).astype(np.uint16)


@ieee
def quantize_iq4_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ik_llama.cpp quantize_iq4_k: rows float32 (nrows, n) -> uint8 (nrows, n/256*144)."""
    return _by_chunks(rows, imatrix, BLOCK_IQ4_K, _iq4_k_chunk)


# ---- IQ5_K / IQ6_K -------------------------------------------------------------------------------

def _iq56_chunk(x: np.ndarray, imatrix: np.ndarray | None, qtype: str) -> np.ndarray:
    """quantize_row_iq5_k_impl / quantize_row_iq6_k_impl (ntry = 5) on a chunk of rows."""
    six = qtype == "IQ6_K"
    xt, qwt, sig, nsb = _prepare(x, imatrix, False)
    wt = _block_weights(xt, qwt, sig, False)
    exact = bool(np.isnan(xt).any())  # NaN payloads may share the key of -0.0: no tables then
    scales, shifted = _search(xt, wt, qtype, 5, True, exact)
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
    L, qv = _final_levels(xt, idl, shifted, qtype, exact)
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


# ---- dequantizers -------------------------------------------------------------------------------

_DEQ_CHUNK = 1 << 16  # values per chunk of rows


def _by_row_chunks(data: np.ndarray, n: int, dtype: np.dtype,
                   fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """fn(blocks (nb,) of dtype) -> float32 (nb, 256) over chunks of rows: (nrows, n) float32."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    nrows = data.shape[0]
    if n % QK_K or data.shape[1] != n // QK_K * dtype.itemsize:
        raise ValueError(f"rows of {data.shape[1]} bytes do not hold {n} values of this type")
    out = np.empty((nrows, n), F32)
    step = max(1, _DEQ_CHUNK // n)
    for r0 in range(0, nrows, step):
        blocks = data[r0:r0 + step].view(dtype).reshape(-1)
        out[r0:r0 + step] = fn(blocks).reshape(-1, n)
    return out


_IB = np.arange(16)


def _iq4_k_blocks(b: np.ndarray) -> np.ndarray:
    """dequantize_row_iq4_k on blocks: y = d*(6-bit scale - 32) * values[(extra bit)*16 + q]."""
    sh = b["scales_h"].view("<u2").astype(np.int32)  # (nb, 2)
    slo = b["scales_l"].astype(np.int32)
    lo = np.where(_IB % 2 == 0, slo[:, _IB // 2] & 0xF, slo[:, _IB // 2] >> 4)
    hi = (sh[:, _IB // 8] >> (2 * (_IB % 8))) & 3
    dl = fp16_bits_to_fp32(b["d"])[:, None] * ((lo | (hi << 4)) - 32).astype(F32)  # (nb, 16)
    shift = ((b["extra"][:, None] >> _IB) & 1).astype(np.uint8) << 4  # (nb, 16)
    qs = b["qs"].reshape(-1, 8, 1, 16)
    idx = np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(-1, 16, 16)  # (nb, ib, j)
    idx += shift[:, :, None]
    return dl[:, :, None] * _IQ4K_F32[idx]


def _levels_56(b: np.ndarray, six: bool) -> np.ndarray:
    """Level index (nb, 16 ib, 16 j) uint8 of IQ5_K / IQ6_K blocks (plain/shifted bit not added)."""
    ib32, half = _IB // 2, _IB % 2
    qs = b["qs"].reshape(-1, 4, 2, 16)  # pair, half, j
    low = (qs[:, ib32 // 2, half, :] >> (4 * (ib32 % 2)).astype(np.uint8)[None, :, None]) & 0xF
    hi: np.ndarray
    if six:
        qh6 = b["qh"].reshape(-1, 2, 2, 16)  # ib32/4, half, j
        hi = (qh6[:, ib32 // 4, half, :] >> (2 * (ib32 % 4)).astype(np.uint8)[None, :, None]) & 3
    else:
        qh5 = b["qh"].reshape(-1, 2, 16)  # half, j
        hi = (qh5[:, half, :] >> ib32.astype(np.uint8)[None, :, None]) & 1
    return low | (hi << 4)


def _iq5_k_blocks(b: np.ndarray) -> np.ndarray:
    """dequantize_row_iq5_k on blocks: y = d*(6-bit scale - 32) * iq5nl_values[(extra bit)*32 + q]."""
    slo = b["scales_l"].astype(np.int32)
    lo = np.where(_IB % 2 == 0, slo[:, _IB // 2] & 0xF, slo[:, _IB // 2] >> 4)
    hi = (b["scales_h"].astype(np.int32)[:, _IB // 4] >> (2 * (_IB % 4))) & 3
    dl = fp16_bits_to_fp32(b["d"])[:, None] * ((lo | (hi << 4)) - 32).astype(F32)
    idx = _levels_56(b, False)
    idx += (((b["extra"][:, None] >> _IB) & 1).astype(np.uint8) << 5)[:, :, None]
    return dl[:, :, None] * _IQ5NL_F32[idx]


_A6, _B6, _C6, _D6 = F32(-127.0), F32(6.2568), F32(0.11218), F32(0.0011972)
_Q6 = np.arange(64, dtype=F32)
_IQ6_POLY = _A6 + _Q6 * (_B6 + _Q6 * (-_C6 + _Q6 * _D6))
"""A_IQ6K + q*(B_IQ6K + q*(-C_IQ6K + q*D_IQ6K)) for q = 0..63, in C's float order."""


def _iq6_k_blocks(b: np.ndarray) -> np.ndarray:
    """dequantize_row_iq6_k on blocks: y = d*scale * (poly(q) + m), m = 1 where the extra bit is set."""
    dl = fp16_bits_to_fp32(b["d"])[:, None] * b["scales"].astype(F32)
    m = ((b["extra"][:, None] >> _IB) & 1).astype(F32)
    t = _IQ6_POLY[_levels_56(b, True)]
    t += m[:, :, None]
    return dl[:, :, None] * t


_IQ4K_F32 = IQ4K_VALUES.astype(F32)
_IQ5NL_F32 = IQ5NL_VALUES.astype(F32)


@ieee
def dequantize_iq4_k(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq4_k: uint8 (nrows, n/256*144) -> float32 (nrows, n)."""
    return _by_row_chunks(data, n, BLOCK_IQ4_K, _iq4_k_blocks)


@ieee
def dequantize_iq5_k(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq5_k: uint8 (nrows, n/256*176) -> float32 (nrows, n)."""
    return _by_row_chunks(data, n, BLOCK_IQ5_K, _iq5_k_blocks)


@ieee
def dequantize_iq6_k(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq6_k: uint8 (nrows, n/256*212) -> float32 (nrows, n)."""
    return _by_row_chunks(data, n, BLOCK_IQ6_K, _iq6_k_blocks)


QUANTIZE = {"IQ4_K": quantize_iq4_k, "IQ5_K": quantize_iq5_k, "IQ6_K": quantize_iq6_k}
DEQUANTIZE = {"IQ4_K": dequantize_iq4_k, "IQ5_K": dequantize_iq5_k, "IQ6_K": dequantize_iq6_k}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())
