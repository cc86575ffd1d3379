"""Non-linear 4-bit types IQ4_NL and IQ4_XS, byte-exact ports of mainline ggml-quants.c.

C functions ported: `best_index_int8`, `quantize_row_iq4_nl_impl` (ntry = 7), `quantize_iq4_nl`,
`quantize_iq4_xs`, `dequantize_row_iq4_nl`, `dequantize_row_iq4_xs`; table `kvalues_iq4nl`
(ggml-common.h). Byte-exact for finite inputs, overflow to inf included (fp16 scales overflow
as in C); NaN / inf inputs are not reproduced.

quantize_row_iq4_nl_impl, per super-block of S values (S = 32 for IQ4_NL, 256 for IQ4_XS),
in blocks of 32:
- weights: with an imatrix qw, w[j] = qw[j]*sqrtf(sigma2 + x[j]^2), sigma2 = (sequential float
  sum of x^2 over the super-block) * (2/S); without one, w[j] = x[j]^2.
- per block: max = first x of largest |x|; blocks with amax < 1e-15 get scale 0. Otherwise the
  first candidate is id = 1/(max/127) and then id = (itry - 127)/max for itry = -7..7; for each,
  q[j] = kvalues[best_index(id*x[j])], sumqx = sum w*q*x, sumq2 = sum w*q*q (sequential); the
  first gives d = sumqx/sumq2 (0 if sumq2 == 0), best = d*sumqx; a later one replaces them when
  sumq2 > 0 and sumqx^2 > best*sumq2.
- IQ4_NL (one block): d is stored as fp16 and the levels are best_index((1/d)*x) (0 if d == 0).
- IQ4_XS: max_scale = first scale of largest |d| (+0 if none > 0); D = -max_scale/32 (stored as
  fp16, used unrounded); l = clamp(nearest_int((1/D)*d_ib), -32, 31) (6-bit, stored l + 32);
  levels best_index((1/(D*l))*x) (0 if D*l == 0).

best_index_int8(16, kvalues, x) returns the level whose value is nearest to x, the upper one on
an exact tie: C compares x - v[mu-1] < v[mu] - x in float32. Rounding is monotone, so only x next
to a midpoint m = (v[mu-1] + v[mu])/2 could be misjudged, and there both differences are exact
(they are multiples of ulp(x) below 2*|x|: |m| >= 4.5 and each half-width is <= 12 and < 2^(e+1)
for |m| in [2^e, 2^(e+1))). So the level is the number of midpoints m <= x. The midpoints are
multiples of 1/2, so m <= x  <=>  2m <= floor(2x): the level is a table lookup on k = floor(2x)
(as int16; tests check this against a port of the C binary search on the 4096 floats either
side of each midpoint and of each table value). In the candidate loop |id*x| <= 134*(1+eps), so k needs no clamp there
(blocks below 1e-15 run with max = 1 and get scale 0 afterwards); the final level passes clamp.

Layout of the work: chunks of blocks transposed to (32, n_blocks) (index in block, block), so
every C reduction over the block is np.add.reduce down axis 0 (which adds rows in order); the
candidate loop writes [(w*q)*q, (w*q)*x] into one (2, 32, nb) array and sums both in one reduce.
Chunks of 2048 blocks keep the loop's ~1.4 MB of arrays near L2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .numeric import GROUP_MAX_EPS, QK_K, absmax_t, blocks_t, fp16_bits, ieee, recip, seq_sum_t
from .registry import register
from .rounding import fp16_bits_to_fp32, nearest_int

F32 = np.float32
QK4_NL = 32
NTRY = 7

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                         dtype=np.int8)
KV_F32 = KVALUES_IQ4NL.astype(F32)

BLOCK_IQ4_NL = np.dtype([("d", "<u2"), ("qs", "u1", (16,))])
BLOCK_IQ4_XS = np.dtype([("d", "<u2"), ("scales_h", "<u2"), ("scales_l", "u1", (4,)), ("qs", "u1", (128,))])
assert BLOCK_IQ4_NL.itemsize == 18 and BLOCK_IQ4_XS.itemsize == 136

# Level tables on k = floor(2x) as int16, indexed by its uint16 bit pattern (k < 0 at 65536 + k):
# no offset to add, and np.take's fast non-negative path. Only entries near both ends are touched.
_K = np.arange(1 << 16, dtype=np.uint16).view(np.int16).astype(np.int32)
_MID2 = KVALUES_IQ4NL[:-1].astype(np.int32) + KVALUES_IQ4NL[1:].astype(np.int32)  # 2*midpoints
_IDX_LUT = np.searchsorted(_MID2, _K, side="right").astype(np.uint8)  # level index
_VAL_LUT = KV_F32[_IDX_LUT]  # level value as float32

_CHUNK_BLOCKS = 2048  # blocks of 32 per chunk (measured best of 512..4096: the loop works in L2)


def best_index_t(a: np.ndarray) -> np.ndarray:
    """best_index_int8(16, kvalues_iq4nl, a) for every element of float32 a (any shape) -> uint8."""
    t = np.multiply(a, F32(2))
    np.fmin(t, F32(2 * 114), out=t)  # NaN -> the top level, as C's binary search gives
    np.fmax(t, F32(-2 * 128), out=t)
    k = np.floor(t, out=np.empty(t.shape, np.int16), casting="unsafe")
    return np.take(_IDX_LUT, k.view(np.uint16))


def iq4_weights_t(xt: np.ndarray, qwt: np.ndarray | None, sigma2: np.ndarray | None) -> np.ndarray:
    """Weights (32, nb): x*x, or qw*sqrtf(sigma2 + x*x) with sigma2 (nb,) per block's super-block."""
    w = np.multiply(xt, xt)
    if qwt is None:
        return w
    w += sigma2
    np.sqrt(w, out=w)
    return np.multiply(qwt, w, out=w)


def scale_search_t(xt: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """The per-block scale of quantize_row_iq4_nl_impl (ntry = 7) on xt, wt float32 (32, nb) -> (nb,)."""
    amax, mx = absmax_t(xt)
    ok = amax >= GROUP_MAX_EPS
    mx = np.where(ok, mx, F32(1))
    wq = np.empty_like(xt)  # (2*id)*x, then w*q
    k = np.empty(xt.shape, np.int16)  # floor(2*id*x)
    ku = k.view(np.uint16)
    p = np.empty((2,) + xt.shape, F32)  # [q -> (w*q)*q, (w*q)*x]

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sumqx, sumq2) (nb,) for levels best_index(iscale*x), C's order and rounding."""
        np.multiply(xt, iscale + iscale, out=wq)  # (2*id)*x == 2*(id*x) exactly
        np.floor(wq, out=k, casting="unsafe")
        np.take(_VAL_LUT, ku, out=p[0], mode="wrap")  # q
        np.multiply(wt, p[0], out=wq)
        np.multiply(wq, p[0], out=p[0])
        np.multiply(wq, xt, out=p[1])
        s = seq_sum_t(p, axis=1)
        return s[1], s[0]

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = -mx / F32(-127)
        sumqx, sumq2 = sums(F32(1) / d)
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0))
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            sumqx, sumq2 = sums(F32(itry + int(KVALUES_IQ4NL[0])) / mx)
            upd = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            if upd.any():
                dn = sumqx / sumq2
                d = np.where(upd, dn, d)
                best = np.where(upd, dn * sumqx, best)
    return np.where(ok, d, F32(0))


ScaleSearch = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (xt, wt) (32, nb) -> d (nb,)
LevelIndex = Callable[[np.ndarray], np.ndarray]  # float32 a (any shape) -> level uint8 (best_index_t)


def pack_nibbles_t(lt: np.ndarray) -> np.ndarray:
    """Levels uint8 (32, nb) -> qs (nb, 16): L[j] | L[j+16] << 4."""
    lb = np.ascontiguousarray(lt.T)
    q = lb[:, 16:] << np.uint8(4)
    q |= lb[:, :16]
    return q


# --- IQ4_NL -------------------------------------------------------------------------------------

@ieee
def quantize_iq4_nl(rows: np.ndarray, imatrix: np.ndarray | None, search: ScaleSearch = scale_search_t,
                    index: LevelIndex = best_index_t) -> np.ndarray:
    """quantize_iq4_nl: rows float32 (nrows, n) -> uint8 (nrows, n/32*18). search: the block scale
    search (mainline's; ik_llama.cpp's differs); index: the final levels' lookup (ik's differs on
    NaN and on values >= 2^31)."""
    nrows, n = rows.shape
    nbr = n // QK4_NL
    xb = rows.reshape(-1, QK4_NL)
    total = xb.shape[0]
    out = np.empty(total, BLOCK_IQ4_NL)
    qwt_row = None if imatrix is None else blocks_t(imatrix.reshape(nbr, QK4_NL))
    for b0 in range(0, total, _CHUNK_BLOCKS):
        b1 = min(total, b0 + _CHUNK_BLOCKS)
        xt = blocks_t(xb[b0:b1])
        if qwt_row is None:
            wt = iq4_weights_t(xt, None, None)
        else:
            qwt = np.take(qwt_row, np.arange(b0, b1) % nbr, axis=1)
            sigma2 = seq_sum_t(xt * xt) * F32(2.0 / QK4_NL)
            wt = iq4_weights_t(xt, qwt, sigma2)
        d = search(xt, wt)
        lt = index(xt * recip(d))
        out["d"][b0:b1] = fp16_bits(d)
        out["qs"][b0:b1] = pack_nibbles_t(lt)
    return out.view(np.uint8).reshape(nrows, nbr * BLOCK_IQ4_NL.itemsize)


@ieee
def dequantize_iq4_nl(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq4_nl: uint8 (nrows, n/32*18) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_IQ4_NL)
    d = fp16_bits_to_fp32(blk["d"])[:, None]
    qs = blk["qs"]
    y = np.empty((blk.shape[0], QK4_NL), F32)
    np.multiply(d, KV_F32[qs & 15], out=y[:, :16])
    np.multiply(d, KV_F32[qs >> 4], out=y[:, 16:])
    return y.reshape(nrows, n)


# --- IQ4_XS -------------------------------------------------------------------------------------

@ieee
def quantize_iq4_xs(rows: np.ndarray, imatrix: np.ndarray | None, search: ScaleSearch = scale_search_t,
                    index: LevelIndex = best_index_t) -> np.ndarray:
    """quantize_iq4_xs: rows float32 (nrows, n) -> uint8 (nrows, n/256*136). search, index: as
    quantize_iq4_nl. A NaN block scale (ik's search, all weights 0) never wins C's `abs_d >
    amax_scale`, and nearest_int(NaN) is 0: its 6-bit scale is 0 (stored 32), its levels
    index(0*x)."""
    nrows, n = rows.shape
    nsr = n // QK_K
    xs = rows.reshape(-1, QK_K)
    total = xs.shape[0]
    out = np.empty(total, BLOCK_IQ4_XS)
    qwt_row = None if imatrix is None else blocks_t(imatrix.reshape(nsr * 8, 32))
    step = max(1, _CHUNK_BLOCKS // 8)
    for s0 in range(0, total, step):
        s1 = min(total, s0 + step)
        ns = s1 - s0
        xt = blocks_t(xs[s0:s1].reshape(ns * 8, 32))  # (32, ns*8): block 8*s + ib
        if qwt_row is None:
            wt = iq4_weights_t(xt, None, None)
        else:
            sub = (np.arange(s0, s1) % nsr)[:, None] * 8 + np.arange(8)
            qwt = np.take(qwt_row, sub.reshape(-1), axis=1)
            x2 = blocks_t(xs[s0:s1])  # (256, ns)
            sigma2 = seq_sum_t(x2 * x2) * F32(2.0 / QK_K)
            wt = iq4_weights_t(xt, qwt, np.repeat(sigma2, 8))
        scales = search(xt, wt).reshape(ns, 8)
        abs_d = np.abs(scales)
        abs_d[np.isnan(abs_d)] = 0  # C: NaN > amax_scale is false
        ib = np.argmax(abs_d, axis=1)
        ar = np.arange(ns)
        max_scale = np.where(abs_d[ar, ib] > 0, scales[ar, ib], F32(0))
        dsup = -max_scale / F32(32)
        ls = np.clip(nearest_int(recip(dsup)[:, None] * scales), -32, 31)
        dl = dsup[:, None] * ls.astype(F32)
        lt = index(xt * recip(dl).reshape(-1))
        out["d"][s0:s1] = fp16_bits(dsup)
        lu = (ls + 32).astype(np.uint16)
        out["scales_h"][s0:s1] = np.bitwise_or.reduce((lu >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1)
        lo = (lu & 15).astype(np.uint8)
        out["scales_l"][s0:s1] = lo[:, 0::2] | (lo[:, 1::2] << np.uint8(4))
        out["qs"][s0:s1] = pack_nibbles_t(lt).reshape(ns, 128)
    return out.view(np.uint8).reshape(nrows, nsr * BLOCK_IQ4_XS.itemsize)


@ieee
def dequantize_iq4_xs(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq4_xs: uint8 (nrows, n/256*136) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    blk = np.ascontiguousarray(data).reshape(-1).view(BLOCK_IQ4_XS)
    d = fp16_bits_to_fp32(blk["d"])
    ib = np.arange(8)
    ls = ((blk["scales_l"][:, ib // 2] >> (4 * (ib % 2))).astype(np.int32) & 15) | (
        ((blk["scales_h"][:, None].astype(np.int32) >> (2 * ib)) & 3) << 4)
    dl = (d[:, None] * (ls - 32).astype(F32))[:, :, None]  # (nsb, 8, 1)
    qs = blk["qs"].reshape(-1, 8, 16)
    y = np.empty((blk.shape[0], 8, 32), F32)
    np.multiply(dl, KV_F32[qs & 15], out=y[:, :, :16])
    np.multiply(dl, KV_F32[qs >> 4], out=y[:, :, 16:])
    return y.reshape(nrows, n)


QUANTIZE = {"IQ4_NL": quantize_iq4_nl, "IQ4_XS": quantize_iq4_xs}
DEQUANTIZE = {"IQ4_NL": dequantize_iq4_nl, "IQ4_XS": dequantize_iq4_xs}
register("IQ4_NL", quantize_iq4_nl, dequantize_iq4_nl, ik=())  # ik: its own search (ik/iq4_ik.py)
register("IQ4_XS", quantize_iq4_xs, dequantize_iq4_xs, ik=())
