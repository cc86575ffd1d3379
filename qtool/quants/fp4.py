"""FP4 (E2M1) types MXFP4 and NVFP4, byte-exact ports of mainline ggml-quants.c.

C functions ported: `best_index_mxfp4`, `quantize_row_mxfp4_ref`, `quantize_row_nvfp4_ref` (what
`quantize_mxfp4` / `quantize_nvfp4` run; the imatrix is ignored, so both variants give the same
bytes), `dequantize_row_mxfp4`, `dequantize_row_nvfp4`; helpers `ggml_e8m0_to_fp32_half`,
`ggml_fp32_to_ue4m3`, `ggml_ue4m3_to_fp32` (ggml-impl.h); table `kvalues_mxfp4` (ggml-common.h).

- MXFP4 (32 values, 1 byte E8M0 exponent + 16 bytes): amax = max |x| (NaN skipped: C's
  `amax < fabsf(v)`); e = (uint8_t)(floorf(log2f(amax)) - 2 + 127) (0 if amax == 0);
  d = e8m0_to_fp32_half(e). log2f is glibc's; its floor equals floor of the float32 rounding of
  the double log2 (checked against libm on the 400 floats below every power of two), which
  matters just below a power of two, where log2f rounds up to the integer. The float -> uint8_t
  cast keeps the low byte of the int32 conversion (x86), so tiny amax gives e = (E + 125) & 255.
- NVFP4 (64 values in 4 sub-blocks of 16, 4 UE4M3 scale bytes + 32 bytes): per sub-block,
  ue = fp32_to_ue4m3(amax/6), d = ue4m3_to_fp32(ue) (a 256-entry table).
- Levels: best_index_mxfp4 picks the first of the 16 values kvalues[i]*d with the smallest
  float32 |kvalues[i]*d - x|. The negative half mirrors the positive one exactly (negation is
  exact; a positive value is never strictly nearer to x < 0 than its mirror, and index 0 wins
  all ties with 0 / -0), so the search runs over the 8 magnitudes on |x| with a strict `<`
  running minimum, and indices k > 0 of x < 0 become k + 8.
- Packing: byte j of a (sub-)block of m values holds value j in the low nibble and j + m/2 in the
  high one.
"""

from __future__ import annotations

import functools

import numpy as np

from .numeric import F32, ieee
from .registry import register

QK_MXFP4 = 32
QK_NVFP4 = 64
QK_NVFP4_SUB = 16
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
KV_F32 = KVALUES_MXFP4.astype(F32)
_MAG = KV_F32[:8]

BLOCK_MXFP4 = np.dtype([("e", "u1"), ("qs", "u1", (QK_MXFP4 // 2,))])
BLOCK_NVFP4 = np.dtype([("d", "u1", (QK_NVFP4 // QK_NVFP4_SUB,)), ("qs", "u1", (QK_NVFP4 // 2,))])
assert BLOCK_MXFP4.itemsize == 17 and BLOCK_NVFP4.itemsize == 36


def e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """ggml_e8m0_to_fp32_half: 2^(e-128) as float32 (denormal for e < 2)."""
    e32 = np.asarray(e).astype(np.uint32)
    bits = np.where(e32 < 2, np.uint32(0x00200000) << e32, (e32 - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(F32)


@functools.cache
def ue4m3_table() -> np.ndarray:
    """ggml_ue4m3_to_fp32 for the 256 byte values (x & 0x80 ignored as in C: exp = (x >> 3) & 15)."""
    t = np.empty(256, F32)
    for x in range(256):
        ex, man = (x >> 3) & 0xF, x & 7
        if x in (0, 0x7F):
            t[x] = 0.0
        elif ex == 0:
            t[x] = np.ldexp(F32(man), -9) * F32(0.5)
        else:
            t[x] = np.ldexp(F32(1) + F32(man) / F32(8), ex - 7).astype(F32) * F32(0.5)
    t.setflags(write=False)
    return t


def fp32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """ggml_fp32_to_ue4m3 on float32 values -> uint8."""
    x = np.asarray(x, dtype=F32)
    pos = x > 0  # !(x > 0) -> 0 (NaN included)
    xc = np.where(pos, np.minimum(x, F32(448)), F32(1))
    bits = xc.view(np.uint32).astype(np.int32)
    ex = ((bits >> 23) & 0xFF) - 127 + 7
    man = (bits >> 20) & 7
    rnd = (bits >> 19) & 1
    m2 = man + rnd
    ex2 = ex + (m2 > 7)
    m2 = np.where(m2 > 7, 0, m2)
    normal = np.where(ex2 >= 15, 0x7E, (ex2 << 3) | m2)
    sub_m = (xc * F32(512) + F32(0.5)).astype(np.int32)  # (int)(x*512 + 0.5f), x < 2^-6 here
    sub_m = np.minimum(sub_m, 7)
    sub = np.where(sub_m < 1, 0, sub_m)
    r = np.where(ex <= 0, sub, np.where(ex >= 15, 0x7E, normal))
    return np.where(pos, r, 0).astype(np.uint8)


def best_index_loop(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """best_index_mxfp4(x, d) for x (nb, m) float32 and d (nb, 1) -> uint8 (nb, m): C's scan, as a
    strict running minimum over the 8 magnitudes on |x| (any d, inf / NaN included)."""
    a = np.abs(x)
    best = a.copy()  # k = 0: |0*d - a|
    idx = np.zeros(x.shape, np.uint8)
    err = np.empty_like(a)
    better = np.empty(x.shape, bool)
    for k in range(1, 8):
        np.subtract(_MAG[k] * d, a, out=err)
        np.abs(err, out=err)
        np.less(err, best, out=better)
        np.copyto(best, err, where=better)
        np.copyto(idx, np.uint8(k), where=better)
    idx[(x < 0) & (idx > 0)] += np.uint8(8)
    return idx


# midpoints between neighbouring magnitudes, in units of d
_MID = np.array([0.5, 1.5, 2.5, 3.5, 5, 7, 10], F32)
_FAST_LIMIT = F32(2.0 ** 22)


def block_amax(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C's amax: max of |x| skipping NaN, as `amax < fabsf(v)` from 0; numpy's NaN-propagating max)
    over axis 1 of a = |x| (nb, m) -> (nb,), (nb,)."""
    amax = np.max(a, axis=1)
    nan = np.isnan(amax)
    c_amax = amax
    if nan.any():
        c_amax = amax.copy()
        c_amax[nan] = np.fmax(np.fmax.reduce(a[nan], axis=1), F32(0))
    return c_amax, amax


def best_index(x: np.ndarray, a: np.ndarray, d: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """best_index_mxfp4(x, d) for x (nb, m) float32, a = |x|, d (nb,) and amax (nb,) the
    NaN-propagating max of a -> uint8 (nb, m).

    The exact errors |c_k - a| (c_k = K_k*d, exact products) fall strictly while c_k <= a and then
    rise; float rounding is monotone, and while a < 2^22*d it keeps the falling part strictly
    falling (neighbouring errors differ by >= d, each is rounded by <= d/4). So C's first minimum
    is the floor level j (c_j <= a < c_{j+1}) unless fl(c_{j+1} - a) < fl(a - c_j); between
    neighbours c_{j+1} <= 2*c_j, so both differences are exact (Sterbenz; for j = 0 a < c_1/2
    keeps fl(c_1 - a) >= c_1/2 > a), and the level is the number of midpoints
    M_k*d (exact products) strictly below a. Blocks with d == 0, an inf / huge / NaN amax
    (where rounding can tie the falling errors) take the loop."""
    fast = (d > 0) & (amax < _FAST_LIMIT * d)  # false for NaN / inf amax
    thr = _MID[None, :] * np.where(fast, d, F32(1))[:, None]
    gt = np.empty(x.shape, bool)
    np.greater(a, thr[:, :1], out=gt)
    idx = gt.astype(np.uint8)
    neg = np.less(x, F32(0))
    np.logical_and(neg, gt, out=neg)  # x < 0 and level > 0
    for k in range(1, 7):
        np.greater(a, thr[:, k:k + 1], out=gt)
        idx += gt.view(np.uint8)
    idx += neg.view(np.uint8) << np.uint8(3)
    if not fast.all():
        slow = ~fast
        idx[slow] = best_index_loop(x[slow], d[slow, None])
    return idx


def _pack(idx: np.ndarray, m: int) -> np.ndarray:
    """(nb, m) levels -> (nb, m/2) bytes: value j low nibble, j + m/2 high nibble."""
    h = m // 2
    return idx[:, :h] | (idx[:, h:] << np.uint8(4))


def _blocks(rows: np.ndarray, qk: int) -> tuple[np.ndarray, int, int]:
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = x.shape
    if n % qk:
        raise ValueError(f"row length {n} is not a multiple of {qk}")
    return x.reshape(-1, qk), nrows, n


def mxfp4_exponent(amax: np.ndarray) -> np.ndarray:
    """(uint8_t)(floorf(log2f(amax)) - 2 + 127) for amax > 0 (else 0); inf -> 0 (INT_MIN's low byte)."""
    pos = amax > 0
    fin = pos & np.isfinite(amax)
    lg = np.floor(np.log2(np.where(fin, amax, F32(1)).astype(np.float64)).astype(F32))
    e = (lg.astype(np.int32) + 125) & 0xFF
    return np.where(fin, e, 0).astype(np.uint8)


@ieee
def quantize_mxfp4(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_mxfp4: float32 (nrows, n) -> uint8 (nrows, n/32*17); the imatrix is ignored."""
    xb, nrows, n = _blocks(rows, QK_MXFP4)
    out = np.empty(xb.shape[0], BLOCK_MXFP4)
    a = np.abs(xb)
    amax, pmax = block_amax(a)
    e = mxfp4_exponent(amax)
    out["e"] = e
    out["qs"] = _pack(best_index(xb, a, e8m0_to_fp32_half(e), pmax), QK_MXFP4)
    return out.view(np.uint8).reshape(nrows, n // QK_MXFP4 * BLOCK_MXFP4.itemsize)


@ieee
def dequantize_mxfp4(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_mxfp4: uint8 (nrows, n/32*17) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_MXFP4)
    d = e8m0_to_fp32_half(blk["e"])[:, None, None]
    qs = blk["qs"]
    lv = np.stack([KV_F32[qs & 15], KV_F32[qs >> 4]], axis=1)  # (nb, 2, 16)
    return (lv * d).reshape(nrows, n)


@ieee
def quantize_nvfp4(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_nvfp4: float32 (nrows, n) -> uint8 (nrows, n/64*36); the imatrix is ignored."""
    xs, nrows, n = _blocks(rows, QK_NVFP4_SUB)
    if n % QK_NVFP4:
        raise ValueError(f"row length {n} is not a multiple of {QK_NVFP4}")
    nsub = xs.shape[0]
    out = np.empty(nsub // 4, BLOCK_NVFP4)
    a = np.abs(xs)
    amax, pmax = block_amax(a)
    ue = fp32_to_ue4m3(amax / F32(6))
    out["d"] = ue.reshape(-1, 4)
    out["qs"] = _pack(best_index(xs, a, ue4m3_table()[ue], pmax), QK_NVFP4_SUB).reshape(-1, QK_NVFP4 // 2)
    return out.view(np.uint8).reshape(nrows, n // QK_NVFP4 * BLOCK_NVFP4.itemsize)


@ieee
def dequantize_nvfp4(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_nvfp4: uint8 (nrows, n/64*36) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_NVFP4)
    d = ue4m3_table()[blk["d"]][:, :, None, None]  # (nb, 4, 1, 1)
    qs = blk["qs"].reshape(-1, 4, 8)
    lv = np.stack([KV_F32[qs & 15], KV_F32[qs >> 4]], axis=2)  # (nb, 4, 2, 8)
    return (lv * d).reshape(nrows, n)


register("MXFP4", quantize_mxfp4, dequantize_mxfp4)  # ik_llama.cpp: the same search (iqk quantize_mxfp4)
register("NVFP4", quantize_nvfp4, dequantize_nvfp4, ik=())
