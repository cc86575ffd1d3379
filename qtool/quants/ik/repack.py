"""ik_llama.cpp's row-interleaved types of the legacy, k-quant and IQ4 families: Q4_0_R8, Q5_0_R4,
Q6_0_R4, Q8_0_R8, Q2_K_R4 .. Q6_K_R4, IQ4_NL_R4, IQ4_XS_R8 (flavour "ik" only).

ik_llama.cpp iqk_quantize.cpp quantizes R rows (4 or 8) at a time with the plain type's own
quantizer (quantize_repack / quantize_<type>_r<R>) and interleaves them with repack_<type>
(online = false: no 0x88 / +127 bias, those are applied when loading for the ARM / AVX512 matmul
only). Every repack here is a bijection of the bits of R base blocks (one per row, same block
index) onto one interleaved block of the same size. The `_repack_<type>` functions transliterate
each repack_<type> line by line, vectorized over a leading axis; they are run once on one-hot
probes to get the bit permutation (`bit_permutation`), compiled into a few dozen vectorized byte
operations (`byte_terms`: gather, mask, shift, or) that quantize applies, and dequantize inverts,
on all row groups at once (~30-230 M weights/s). Q4_0_R8 and Q8_0_R8 move whole bytes: one gather.

Q2_K_R4 without an imatrix: ik's quantize_q2_K gets one row per call, so quantize_row_q2_K_ref's
"TriNet" test (ternary tensors) is made per row here (`trinet_rows`, `ternary_q2_k`), not over the
whole tensor as for plain Q2_K.

Quantize mirrors QHelper::row_weights where ik uses it (all but Q5_0_R4 and Q8_0_R8, which call
quantize_q5_0 / quantize_q8_0 on the R rows directly): with an imatrix, a block (32 or 16 values,
the `block_size` template argument) whose sum of w², x² or w·|x| is not above block_size·1e-18
gets weights 1e-9 for that row. ik asserts nrows % R == 0 (quantize_repack, repack_*): refused
here with a ValueError. Dequantize mirrors dequantize_row_<type>_r<R>; it equals the base type's
dequantizer on the un-interleaved bytes except Q5_0_R4 / Q6_0_R4, which compute d*L + (-16d) /
d*L + (-32d) where the base computes (L - 16)*d / (L - 32)*d.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..numeric import F32, fp16_bits, fp16_bits_to_fp32, ieee, seq_sum_t
from ..registry import register
from ..types import get_type

_I = np.int64
Translit = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RepackSpec:
    """One interleaved type: its base type, rows per group, the QHelper block size (0: no QHelper)
    and the transliterated repack (x int64 (P, R, base block bytes) -> int64 (P, R*block bytes))."""

    name: str
    base: str
    rows: int
    helper_block: int
    translit: Translit


def _u16(x: np.ndarray, k: int, off: int) -> np.ndarray:
    return x[:, k, off] | (x[:, k, off + 1] << 8)


def _put16(y: np.ndarray, off: int, v: np.ndarray) -> None:
    y[:, off] = v & 0xFF
    y[:, off + 1] = (v >> 8) & 0xFF


# ---- transliterations of ik_llama.cpp iqk_quantize.cpp repack_<type>(R, n, x, y, false) --------

def _repack_q4_0(x: np.ndarray) -> np.ndarray:
    """repack_q4_0 -> block_iq4_nl_r8 {d[8], qs[128]}: qs[32l+4k+i] = x8[k].qs[4l+i]."""
    y = np.zeros((x.shape[0], 8 * 18), _I)
    for k in range(8):
        y[:, 2 * k:2 * k + 2] = x[:, k, 0:2]
        for l in range(4):
            for i in range(4):
                y[:, 16 + 32 * l + 4 * k + i] = x[:, k, 2 + 4 * l + i]
    return y


def _repack_iq4_nl(x: np.ndarray) -> np.ndarray:
    """repack_iq4_nl -> block_iq4_nl_r4 {d[4], qs[64]}."""
    y = np.zeros((x.shape[0], 4 * 18), _I)
    for k in range(4):
        y[:, 2 * k:2 * k + 2] = x[:, k, 0:2]
        q = x[:, k, 2:]
        for i in range(4):
            y[:, 8 + 4 * k + i + 0] = (q[:, i + 0] & 0xF) | ((q[:, i + 8] & 0x0F) << 4)
            y[:, 8 + 4 * k + i + 16] = (q[:, i + 0] >> 4) | (q[:, i + 8] & 0xF0)
            y[:, 8 + 4 * k + i + 32] = (q[:, i + 4] & 0xF) | ((q[:, i + 12] & 0x0F) << 4)
            y[:, 8 + 4 * k + i + 48] = (q[:, i + 4] >> 4) | (q[:, i + 12] & 0xF0)
    return y


def _repack_q8_0(x: np.ndarray) -> np.ndarray:
    """repack_q8_0 -> block_q8_0_r8 {d[8], qs[256]}."""
    y = np.zeros((x.shape[0], 8 * 34), _I)
    for k in range(8):
        y[:, 2 * k:2 * k + 2] = x[:, k, 0:2]
    for l in range(4):
        for k in range(8):
            for i in range(4):
                y[:, 16 + 32 * l + 4 * k + i] = x[:, k, 2 + i + 4 * l]
                y[:, 16 + 32 * l + 4 * k + i + 128] = x[:, k, 2 + i + 4 * l + 16]
    return y


def _interleave_legacy(y: np.ndarray, L: np.ndarray, k: int, qs: int, qh: int,
                       hi_shift: Callable[[int], tuple[int, int]]) -> None:
    """The shared inner loop of repack_q5_0 / repack_q6_0: qs[4k+i+16l] and the high bits."""
    for l in range(4):
        l1 = 4 * (l // 2) + 16 * (l % 2)
        l2 = l1 + 8
        for i in range(4):
            y[:, qs + 4 * k + i + 16 * l] = (L[:, i + l1] & 0xF) | ((L[:, i + l2] & 0xF) << 4)
            pos, sh = hi_shift(l)
            y[:, qh + 4 * k + i + pos] |= (((L[:, i + l1] >> 4) | ((L[:, i + l2] >> 4) << 4)) << sh) & 0xFF


def _repack_q5_0(x: np.ndarray) -> np.ndarray:
    """repack_q5_0 (convert_q5_0) -> block_q5_0_r4 {d[4], qh[16], qs[64]}."""
    y = np.zeros((x.shape[0], 4 * 22), _I)
    for k in range(4):
        y[:, 2 * k:2 * k + 2] = x[:, k, 0:2]
        qh = x[:, k, 2] | (x[:, k, 3] << 8) | (x[:, k, 4] << 16) | (x[:, k, 5] << 24)
        L = np.zeros((x.shape[0], 32), _I)
        for j in range(16):
            L[:, j] = (x[:, k, 6 + j] & 0x0F) | (((qh >> j) << 4) & 0x10)
            L[:, j + 16] = (x[:, k, 6 + j] >> 4) | ((qh >> (j + 12)) & 0x10)
        _interleave_legacy(y, L, k, 24, 8, lambda l: (0, l))
    return y


def _repack_q6_0(x: np.ndarray) -> np.ndarray:
    """repack_q6_0 (convert_q6_0) -> block_q6_0_r4 {d[4], qh[32], qs[64]}."""
    y = np.zeros((x.shape[0], 4 * 26), _I)
    for k in range(4):
        y[:, 2 * k:2 * k + 2] = x[:, k, 0:2]
        L = np.zeros((x.shape[0], 32), _I)
        for j in range(16):
            h = x[:, k, 2 + j % 8] >> (4 * (j // 8))
            L[:, j] = (x[:, k, 10 + j] & 0x0F) | ((h << 4) & 0x30)
            L[:, j + 16] = (x[:, k, 10 + j] >> 4) | ((h << 2) & 0x30)
        _interleave_legacy(y, L, k, 40, 8, lambda l: (16 * (l % 2), 2 * (l // 2)))
    return y


def _repack_iq4_xs(x: np.ndarray) -> np.ndarray:
    """repack_iq4_xs -> block_iq4_xs_r8 {d[8], scales_h[16], scales_l[32], qs[1024]}."""
    y = np.zeros((x.shape[0], 8 * 136), _I)
    sh_, sl_, qs_ = 16, 32, 64
    for k in range(8):
        y[:, 2 * k:2 * k + 2] = x[:, k, 0:2]
        scales_h = _u16(x, k, 2)
        q = x[:, k, 8:]
        for ib in range(8):
            sl = (x[:, k, 4 + ib // 2] >> (4 * (ib % 2))) & 0xF
            sh = (scales_h >> (2 * ib)) & 3
            i = 8 * ib + k
            y[:, sl_ + i % 32] |= sl << (4 * (i // 32))
            y[:, sh_ + i % 16] |= sh << (2 * (i // 16))
            for j in range(4):
                o = qs_ + 128 * ib + 4 * k + j
                b = 16 * ib + j
                y[:, o + 0] = (q[:, b + 0] & 0xF) | ((q[:, b + 4] & 0xF) << 4)
                y[:, o + 32] = (q[:, b + 8] & 0xF) | ((q[:, b + 12] & 0xF) << 4)
                y[:, o + 64] = (q[:, b + 0] >> 4) | ((q[:, b + 4] >> 4) << 4)
                y[:, o + 96] = (q[:, b + 8] >> 4) | ((q[:, b + 12] >> 4) << 4)
    return y


def _pack_2bit(y: np.ndarray, L: np.ndarray, k: int, qs: int) -> None:
    """repack_q2_k / repack_q3_k: qs[32ib+4k+i (+16)] from the low 2 bits of L[32ib+i+4t]."""
    for ib in range(8):
        for i in range(4):
            b = 32 * ib + i
            for half in range(2):
                v = np.zeros(L.shape[0], _I)
                for t in range(4):
                    v |= (L[:, b + 16 * half + 4 * t] & 3) << (2 * t)
                y[:, qs + 32 * ib + 4 * k + i + 16 * half] = v


def _repack_q2_k(x: np.ndarray) -> np.ndarray:
    """repack_q2_k (convert_q2_k) -> block_q2_k_r4 {d[8], scales[64], qs[256]}."""
    y = np.zeros((x.shape[0], 4 * 84), _I)
    for k in range(4):
        y[:, 2 * k:2 * k + 2] = x[:, k, 80:82]
        y[:, 2 * k + 8:2 * k + 10] = x[:, k, 82:84]
        for ib in range(16):
            y[:, 16 + 4 * ib + k] = x[:, k, ib]
        L = np.zeros((x.shape[0], 256), _I)
        for n in range(2):
            for j in range(32):
                for s in range(4):
                    L[:, 128 * n + j + 32 * s] = (x[:, k, 16 + 32 * n + j] >> (2 * s)) & 3
        _pack_2bit(y, L, k, 80)
    return y


def _repack_q3_k(x: np.ndarray) -> np.ndarray:
    """repack_q3_k (convert_q3_k) -> block_q3_k_r4 {d[4], scales_h[16], scales_l[32], qh[128], qs[256]}."""
    y = np.zeros((x.shape[0], 4 * 110), _I)
    sh_, sl_, qh_, qs_ = 8, 24, 56, 184
    m1, m2 = 0x03030303, 0x0F0F0F0F
    for k in range(4):
        y[:, 2 * k:2 * k + 2] = x[:, k, 108:110]
        aux = [x[:, k, 96 + 4 * a] | (x[:, k, 97 + 4 * a] << 8) | (x[:, k, 98 + 4 * a] << 16)
               | (x[:, k, 99 + 4 * a] << 24) for a in range(3)]
        tmp = aux[2]
        a2 = ((aux[0] >> 4) & m2) | (((tmp >> 4) & m1) << 4)
        a3 = ((aux[1] >> 4) & m2) | (((tmp >> 6) & m1) << 4)
        a0 = (aux[0] & m2) | (((tmp >> 0) & m1) << 4)
        a1 = (aux[1] & m2) | (((tmp >> 2) & m1) << 4)
        Ld = [(a >> (8 * b)) & 0xFF for a in (a0, a1, a2, a3) for b in range(4)]
        L = np.zeros((x.shape[0], 256), _I)
        for n in range(2):
            for j in range(4):
                m = 1 << (4 * n + j)
                for l in range(32):
                    hbit = np.where(x[:, k, l] & m, 4, 0)
                    L[:, 128 * n + 32 * j + l] = ((x[:, k, 32 + 32 * n + l] >> (2 * j)) & 3) + hbit
        for ib in range(8):
            for t in range(2):
                i_s = 8 * ib + k + 4 * t
                y[:, sl_ + i_s % 32] |= (Ld[2 * ib + t] & 0xF) << (4 * (i_s // 32))
                y[:, sh_ + i_s % 16] |= (Ld[2 * ib + t] >> 4) << (2 * (i_s // 16))
            for i in range(4):
                v = np.zeros(x.shape[0], _I)
                for t in range(8):
                    v |= (L[:, 32 * ib + i + 4 * t] >> 2) << t
                y[:, qh_ + 16 * ib + 4 * k + i] = v
        _pack_2bit(y, L, k, qs_)
    return y


def _scale_min_k4(x: np.ndarray, k: int, off: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4(j, scales) of row k's block (scales at byte `off`)."""
    q = x[:, k, off:off + 12]
    if j < 4:
        return q[:, j] & 63, q[:, j + 4] & 63
    return (q[:, j + 4] & 0xF) | ((q[:, j - 4] >> 6) << 4), (q[:, j + 4] >> 4) | ((q[:, j] >> 6) << 4)


def _k45_scales(y: np.ndarray, x: np.ndarray, k: int) -> None:
    """repack_q4_k / repack_q5_k: d, dmin and the 6-bit scales / mins into scales_l / scales_h."""
    y[:, 2 * k:2 * k + 2] = x[:, k, 0:2]
    y[:, 2 * k + 8:2 * k + 10] = x[:, k, 2:4]
    for ib in range(8):
        ld, lm = _scale_min_k4(x, k, 4, ib)
        y[:, 32 + 4 * ib + k] = (ld & 0xF) | ((lm & 0xF) << 4)
        h = (ld >> 4) | ((lm >> 4) << 2)
        y[:, 16 + (4 * ib + k) % 16] |= h << (4 * ((4 * ib + k) // 16))


def _k_nibbles(y: np.ndarray, L: np.ndarray, k: int, qs: int, stride: int) -> None:
    """qs[stride*ib + 4k+i + {0,16,32,48}] = L[32ib+i + {0,16,4,20}] | L[... + 8] << 4 (low nibbles)."""
    for ib in range(8):
        for i in range(4):
            b = 32 * ib + i
            o = qs + stride * ib + 4 * k + i
            for dst, src in ((0, 0), (16, 16), (32, 4), (48, 20)):
                y[:, o + dst] = (L[:, b + src] & 0xF) | ((L[:, b + src + 8] & 0xF) << 4)


def _repack_q4_k(x: np.ndarray) -> np.ndarray:
    """repack_q4_k (convert_q4_k) -> block_q4_k_r4 {d[8], scales_h[16], scales_l[32], qs[512]}."""
    y = np.zeros((x.shape[0], 4 * 144), _I)
    for k in range(4):
        _k45_scales(y, x, k)
        L = np.zeros((x.shape[0], 256), _I)
        for ib64 in range(4):
            for j in range(32):
                L[:, 64 * ib64 + j] = x[:, k, 16 + 32 * ib64 + j] & 0xF
                L[:, 64 * ib64 + j + 32] = x[:, k, 16 + 32 * ib64 + j] >> 4
        _k_nibbles(y, L, k, 64, 64)
    return y


def _repack_q5_k(x: np.ndarray) -> np.ndarray:
    """repack_q5_k (convert_q5_k) -> block_q5_k_r4 {d[8], scales_h[16], scales_l[32], qh[128], qs[512]}."""
    y = np.zeros((x.shape[0], 4 * 176), _I)
    for k in range(4):
        _k45_scales(y, x, k)
        L = np.zeros((x.shape[0], 256), _I)
        for ib64 in range(4):
            for j in range(32):
                q, h = x[:, k, 48 + 32 * ib64 + j], x[:, k, 16 + j]
                L[:, 64 * ib64 + j] = (q & 0xF) | (((h >> (2 * ib64)) & 1) << 4)
                L[:, 64 * ib64 + j + 32] = (q >> 4) | (((h >> (2 * ib64 + 1)) & 1) << 4)
        _k_nibbles(y, L, k, 192, 64)
        for ib in range(8):
            for i in range(4):
                b = 32 * ib + i
                v = np.zeros(x.shape[0], _I)
                for t, src in enumerate((0, 8, 4, 12, 16, 24, 20, 28)):
                    v |= (L[:, b + src] >> 4) << t
                y[:, 64 + 16 * ib + 4 * k + i] = v
    return y


def _repack_q6_k(x: np.ndarray) -> np.ndarray:
    """repack_q6_k (convert_q6_k) -> block_q6_k_r4 {d[4], scales[64], qh[256], ql[512]}."""
    y = np.zeros((x.shape[0], 4 * 210), _I)
    for k in range(4):
        y[:, 2 * k:2 * k + 2] = x[:, k, 208:210]
        L = np.zeros((x.shape[0], 256), _I)
        for n in range(2):
            for l in range(32):
                ql0, ql1, qh = x[:, k, 64 * n + l], x[:, k, 64 * n + l + 32], x[:, k, 128 + 32 * n + l]
                L[:, 128 * n + l + 0] = (ql0 & 0xF) | (((qh >> 0) & 3) << 4)
                L[:, 128 * n + l + 32] = (ql1 & 0xF) | (((qh >> 2) & 3) << 4)
                L[:, 128 * n + l + 64] = (ql0 >> 4) | (((qh >> 4) & 3) << 4)
                L[:, 128 * n + l + 96] = (ql1 >> 4) | (((qh >> 6) & 3) << 4)
        for ib in range(8):
            y[:, 8 + 8 * ib + k + 0] = x[:, k, 192 + 2 * ib + 0]
            y[:, 8 + 8 * ib + k + 4] = x[:, k, 192 + 2 * ib + 1]
            for i in range(4):
                b = 32 * ib + i
                for half, srcs in ((0, (0, 8, 4, 12)), (16, (16, 24, 20, 28))):
                    v = np.zeros(x.shape[0], _I)
                    for t, src in enumerate(srcs):
                        v |= (L[:, b + src] >> 4) << (2 * t)
                    y[:, 72 + 32 * ib + 4 * k + i + half] = v
        _k_nibbles(y, L, k, 328, 64)
    return y


SPECS: dict[str, RepackSpec] = {s.name: s for s in (
    RepackSpec("Q4_0_R8", "Q4_0", 8, 32, _repack_q4_0),
    RepackSpec("Q5_0_R4", "Q5_0", 4, 0, _repack_q5_0),
    RepackSpec("Q6_0_R4", "Q6_0", 4, 32, _repack_q6_0),
    RepackSpec("Q8_0_R8", "Q8_0", 8, 0, _repack_q8_0),
    RepackSpec("Q2_K_R4", "Q2_K", 4, 16, _repack_q2_k),
    RepackSpec("Q3_K_R4", "Q3_K", 4, 16, _repack_q3_k),
    RepackSpec("Q4_K_R4", "Q4_K", 4, 32, _repack_q4_k),
    RepackSpec("Q5_K_R4", "Q5_K", 4, 32, _repack_q5_k),
    RepackSpec("Q6_K_R4", "Q6_K", 4, 16, _repack_q6_k),
    RepackSpec("IQ4_NL_R4", "IQ4_NL", 4, 32, _repack_iq4_nl),
    RepackSpec("IQ4_XS_R8", "IQ4_XS", 8, 32, _repack_iq4_xs),
)}


# ---- the bit permutation ------------------------------------------------------------------------

@functools.cache
def bit_permutation(name: str) -> np.ndarray:
    """src (R*B*8,): bit j of an interleaved block is bit src[j] of its R base blocks (little-endian
    bit order within a byte). Derived by running the transliteration on every one-hot input; fails
    if the repack is not a bijection of bits."""
    s = SPECS[name]
    nbytes = s.rows * get_type(s.base).type_size
    nbits = 8 * nbytes
    src = np.full(nbits, -1, np.int64)
    for a in range(0, nbits, 1024):
        p = np.arange(a, min(nbits, a + 1024))
        x = np.zeros((p.size, nbytes), _I)
        x[np.arange(p.size), p // 8] = 1 << (p % 8)
        y = s.translit(x.reshape(p.size, s.rows, -1))
        nz = np.nonzero(y)
        if y.shape != (p.size, nbytes) or nz[0].size != p.size or not np.array_equal(nz[0], np.arange(p.size)):
            raise AssertionError(f"{name}: repack is not a bit permutation")
        v = y[nz]
        sh = np.log2(v).astype(np.int64)
        if not np.array_equal(1 << sh, v):
            raise AssertionError(f"{name}: repack is not a bit permutation")
        out = nz[1] * 8 + sh
        src[out] = p
    if (src < 0).any() or np.unique(src).size != nbits:
        raise AssertionError(f"{name}: repack is not a bit permutation")
    if s.translit(np.zeros((1, s.rows, nbytes // s.rows), _I)).any():
        raise AssertionError(f"{name}: repack of zeros is not zero")
    return src


Term = tuple[np.ndarray, np.ndarray, int, int]


@functools.cache
def byte_terms(name: str, inverse: bool) -> tuple[Term, ...]:
    """The repack (or its inverse) as byte operations: out[:, J] |= shift(in[:, I] & mask, delta)
    for each term (J, I, mask, delta); within a term J has no repeats. Bits that move together
    (same source byte, target byte and shift) share one mask, and all pairs of bytes with the same
    (mask, shift) form one vectorized term."""
    src = bit_permutation(name)
    if inverse:
        inv = np.empty_like(src)
        inv[src] = np.arange(src.size)
        src = inv
    j = np.arange(src.size)
    masks: dict[tuple[int, int, int], int] = {}
    for jj, ii in zip(j.tolist(), src.tolist(), strict=True):
        key = (jj // 8, ii // 8, jj % 8 - ii % 8)
        masks[key] = masks.get(key, 0) | (1 << (ii % 8))
    classes: dict[tuple[int, int], list[list[tuple[int, int]]]] = {}
    for (jb, ib, delta), mask in masks.items():
        layers = classes.setdefault((mask, delta), [])
        for layer in layers:  # a target byte once per layer: `out[:, J] |= ...` does not accumulate repeats
            if all(t[0] != jb for t in layer):
                layer.append((jb, ib))
                break
        else:
            layers.append([(jb, ib)])
    terms = []
    for (mask, delta), layers in sorted(classes.items()):
        for layer in layers:
            arr = np.array(layer, dtype=np.intp)
            terms.append((arr[:, 0].copy(), arr[:, 1].copy(), mask, delta))
    return tuple(terms)


def _permute(groups: np.ndarray, name: str, inverse: bool) -> np.ndarray:
    """Apply the repack (or un-repack) to groups uint8 (G, R*B) -> (G, R*B)."""
    terms = byte_terms(name, inverse)
    if len(terms) == 1 and terms[0][2] == 0xFF:  # whole bytes: one gather
        out = np.empty_like(groups)
        out[:, terms[0][0]] = groups[:, terms[0][1]]
        return out
    out = np.zeros_like(groups)
    for jb, ib, mask, delta in terms:
        v = groups[:, ib] & np.uint8(mask)
        if delta > 0:
            v <<= np.uint8(delta)
        elif delta < 0:
            v >>= np.uint8(-delta)
        out[:, jb] |= v
    return out


def _check_rows(name: str, nrows: int) -> RepackSpec:
    s = SPECS[name]
    if nrows % s.rows:
        raise ValueError(f"{name}: {nrows} rows is not a multiple of {s.rows} (ik_llama.cpp interleaves "
                         f"{s.rows} rows; it asserts nrows%{s.rows} == 0)")
    return s


def repack(base: np.ndarray, name: str) -> np.ndarray:
    """repack_<type>(nrows, n, base rows, y, false): base-type rows uint8 (nrows, row bytes) -> the
    interleaved type's rows (same shape)."""
    s = _check_rows(name, base.shape[0])
    nrows, rb = base.shape
    bb = get_type(s.base).type_size
    nb = rb // bb
    g = np.ascontiguousarray(base, dtype=np.uint8).reshape(nrows // s.rows, s.rows, nb, bb).transpose(0, 2, 1, 3)
    y = _permute(g.reshape(-1, s.rows * bb), name, False)
    return y.reshape(nrows, rb)


def unrepack(data: np.ndarray, name: str) -> np.ndarray:
    """The inverse of `repack`: interleaved rows uint8 (nrows, row bytes) -> the base type's rows."""
    s = _check_rows(name, data.shape[0])
    nrows, rb = data.shape
    bb = get_type(s.base).type_size
    nb = rb // bb
    g = _permute(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, s.rows * bb), name, True)
    return np.ascontiguousarray(g.reshape(nrows // s.rows, nb, s.rows, bb).transpose(0, 2, 1, 3)).reshape(nrows, rb)


# ---- quantize -------------------------------------------------------------------------------------

_EPS = F32(1e-9)
_EPS2 = _EPS * _EPS


def helper_block_flags(rows: np.ndarray, imatrix: np.ndarray, block: int) -> np.ndarray:
    """QHelper::row_weights: bool (nrows, n/block), True where the block's weights become 1e-9
    (not all of sum w², sum x², sum w|x| above block*1e-18, sequential float sums)."""
    nrows, n = rows.shape
    nb = n // block
    thr = F32(block) * _EPS2
    w = imatrix.astype(F32).reshape(nb, block)
    sumw2 = seq_sum_t(np.ascontiguousarray((w * w).T), 0)  # (nb,)
    xt = np.ascontiguousarray(rows.reshape(nrows * nb, block).T)  # (block, nrows*nb)
    sumx2 = seq_sum_t(xt * xt, 0).reshape(nrows, nb)
    wt = np.tile(np.ascontiguousarray(w.T), (1, nrows))
    sumwx = seq_sum_t(wt * np.abs(xt), 0).reshape(nrows, nb)
    keep = (sumw2 > thr)[None, :] & (sumx2 > thr) & (sumwx > thr)
    return ~keep


def trinet_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q2_K_ref's TriNet test on each row alone (ik's quantize_q2_k_r4 calls
    quantize_q2_K with one row): (max|x| per row, bool per row: mse < 0.1f*mse0 with C's
    sequential float32 sums). A row with inf or NaN is never ternary (its mse is NaN in C)."""
    nrows, n = rows.shape
    mx = np.zeros(nrows, F32)
    tri = np.zeros(nrows, bool)
    step = max(1, (1 << 22) // n)
    with np.errstate(all="ignore"):
        for a in range(0, nrows, step):
            _trinet_chunk(rows[a:a + step], mx[a:a + step], tri[a:a + step])
    return mx, tri


def _trinet_chunk(rows: np.ndarray, mx: np.ndarray, tri: np.ndarray) -> None:
    """trinet_rows on one chunk of rows, into mx / tri."""
    xt = np.ascontiguousarray(rows.T)  # (n, r)
    m = np.abs(xt).max(axis=0)
    h = F32(0.5) * m
    lv = np.where(xt < -h, F32(-1), np.where(xt < h, F32(0), F32(1)))
    diff = xt - m * lv
    mse0 = seq_sum_t(xt * xt, 0)
    mse = seq_sum_t(diff * diff, 0)
    mx[:] = m
    tri[:] = (mse < F32(0.1) * mse0) & np.isfinite(xt).all(axis=0)


def ternary_q2_k(rows: np.ndarray, mx: np.ndarray) -> np.ndarray:
    """quantize_row_q2_K_ref's TriNet branch per row: d = dmin = fp16(max), scales 0x11,
    L = 0/1/2 (x < -max/2, < max/2, else) -> Q2_K rows uint8 (nrows, n/256*84)."""
    nrows, n = rows.shape
    h = (F32(0.5) * mx.astype(F32))[:, None]
    lv = np.where(rows < -h, 0, np.where(rows < h, 1, 2)).astype(np.uint8).reshape(nrows, n // 256, 2, 4, 32)
    qs = lv[:, :, :, 0] | (lv[:, :, :, 1] << 2) | (lv[:, :, :, 2] << 4) | (lv[:, :, :, 3] << 6)  # (r, nb, 2, 32)
    out = np.empty((nrows, n // 256, 84), np.uint8)
    out[:, :, 0:16] = 0x11
    out[:, :, 16:80] = qs.reshape(nrows, n // 256, 64)
    d = fp16_bits(mx).view(np.uint8).reshape(nrows, 1, 2)
    out[:, :, 80:82] = d
    out[:, :, 82:84] = d
    return out.reshape(nrows, -1)


@ieee
def _quantize_base(s: RepackSpec, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """The base-type rows ik's quantize_<type>_r<R> interleaves (with QHelper's weights)."""
    from .. import engine  # the engine imports the registry users; import it when first used

    if imatrix is None and s.base == "Q2_K":  # the TriNet test of one row at a time
        from .kquants_q23_ik import quantize_q2_k_ik

        mx, tri = trinet_rows(rows)
        out = np.empty((rows.shape[0], get_type("Q2_K").row_bytes(rows.shape[1])), np.uint8)
        if (~tri).any():
            out[~tri] = quantize_q2_k_ik(rows[~tri], None, trinet=None)
        if tri.any():
            out[tri] = ternary_q2_k(rows[tri], mx[tri])
        return out
    if imatrix is None or not s.helper_block:
        return engine.quantize(rows, s.base, imatrix, flavour="ik")
    flags = helper_block_flags(rows, imatrix, s.helper_block)
    out = np.empty((rows.shape[0], get_type(s.base).row_bytes(rows.shape[1])), np.uint8)
    patterns, inverse = np.unique(flags, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for pi, pat in enumerate(patterns):
        sel = np.nonzero(inverse == pi)[0]
        w = imatrix.astype(F32).reshape(-1, s.helper_block).copy()
        w[pat] = _EPS
        out[sel] = engine.quantize(rows[sel], s.base, w.reshape(-1), flavour="ik")
    return out


def _quantizer(name: str) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    s = SPECS[name]

    def quantize(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=F32)
        _check_rows(name, rows.shape[0])
        return repack(_quantize_base(s, rows, imatrix), name)

    quantize.__name__ = f"quantize_{name.lower()}"
    quantize.__doc__ = (f"ik_llama.cpp quantize_{name.lower()}: {s.base} rows (ik's quantizer) interleaved "
                        f"{s.rows} at a time by repack_{s.base.lower()}.")
    return quantize


# ---- dequantize -----------------------------------------------------------------------------------

@ieee
def _dequantize_q56_0(base: np.ndarray, n: int, name: str) -> np.ndarray:
    """dequantize_row_q5_0_r4 / _q6_0_r4 on un-interleaved Q5_0 / Q6_0 bytes: d*L + (-16d) / (-32d)."""
    nrows = base.shape[0]
    if name == "Q5_0_R4":
        b = base.reshape(-1, 22)
        qb = b[:, 2:6].astype(np.int64)
        qh = qb[:, 0] | (qb[:, 1] << 8) | (qb[:, 2] << 16) | (qb[:, 3] << 24)
        j = np.arange(16, dtype=np.int64)
        qs = b[:, 6:22]
        hi = ((qh[:, None] >> j) & 1).astype(np.uint8), ((qh[:, None] >> (j + 16)) & 1).astype(np.uint8)
        L = np.concatenate([(qs & 15) | (hi[0] << 4), (qs >> 4) | (hi[1] << 4)], axis=1)
        off = F32(-16)
    else:
        b = base.reshape(-1, 26)
        h = b[:, 2:10]
        j = np.arange(16)
        hj = h[:, j % 8] >> (4 * (j // 8)).astype(np.uint8)
        qs = b[:, 10:26]
        L = np.concatenate([(qs & 15) | ((hj << 4) & 0x30), (qs >> 4) | ((hj << 2) & 0x30)], axis=1)
        off = F32(-32)
    d = fp16_bits_to_fp32(b[:, 0:2].copy().view("<u2").reshape(-1)).astype(F32)
    y = d[:, None] * L.astype(F32) + (off * d)[:, None]
    return y.astype(F32).reshape(nrows, n)


def _dequantizer(name: str) -> Callable[[np.ndarray, int], np.ndarray]:
    s = SPECS[name]

    def dequantize(data: np.ndarray, n_per_row: int) -> np.ndarray:
        from .. import engine

        base = unrepack(data, name)
        if name in ("Q5_0_R4", "Q6_0_R4"):
            return _dequantize_q56_0(base, n_per_row, name)
        return engine.dequantize(base, s.base, n_per_row)

    dequantize.__name__ = f"dequantize_{name.lower()}"
    dequantize.__doc__ = f"ik_llama.cpp dequantize_row_{name.lower()} (rows a multiple of {s.rows})."
    return dequantize


QUANTIZE = {name: _quantizer(name) for name in SPECS}
DEQUANTIZE = {name: _dequantizer(name) for name in SPECS}
for _name in SPECS:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=(), ik=(False, True))
