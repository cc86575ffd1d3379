"""ik_llama.cpp's row-interleaved IQK types: IQ2_K_R4, IQ3_K_R4, IQ4_K_R4, IQ5_K_R4, IQ4_KS_R4,
IQ5_KS_R4, IQ2_BN_R4 and MXFP4_R8.

Ports of ggml/src/iqk/iqk_quantize.cpp: `quantize_<type>_r4` quantizes each group of 4 (8 for
MXFP4_R8) rows with the base type's own quantizer (rows are independent, so the whole tensor is
quantized at once with the registered ik kernel of the base type) and interleaves the group with
`repack_<base>`: per super-block, the 4 rows' scales, `extra` bits and quants are shuffled into
one block_<type>_r4 (IQ4_KS / IQ5_KS / IQ2_BN: the 4 row scales first, then the blocks).
`quantize_mxfp4_r8` is its own loop, but it is ik's MXFP4 search (e = floor(log2(amax)) - 2 + 127,
best_index_mxfp4) repacked, and it ignores the imatrix.

Every repack here is a bit permutation of one super-block of the group (each output bit copies
exactly one input bit), so `dequantize_row_<type>_r4` is mirrored by the inverse permutation back
to the base bytes and the base dequantizer; the permutation is derived once per type from the
forward repack (`RepackSpec.inverse`, checked to be a bijection).

ik's C asserts nrows % 4 == 0 (GGML_ASSERT aborts); ik's llama-quantize gives tensors whose rows
do not divide the base type (llama-quantize.cpp, `tensor->ne[1] % num_rows`; qtool's mix layer
does the same) and the runner's slabs are whole groups. Here such a call raises ValueError.
`RepackSpec` (the driver) is shared with repack_lattice.py (the lattice _R4 types).

Note: ik's `dequantize_row_mxfp4_r8` takes nblock = k/32 for a group of k = 8*n_per_row values
(8x the group: it reads and writes past it); the dequantizer here gives the group's values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import fp4  # noqa: F401  (base kernels register before `support` is asked)
from ..numeric import seq_sum_t
from ..registry import register, support
from ..types import IK, get_type
from . import bitnet, iq2_k, iq3_k, iq45_ks, iqk_k456  # noqa: F401

U8 = np.uint8
BlockFn = Callable[[np.ndarray], np.ndarray]


def _u16(b: np.ndarray) -> np.ndarray:
    """Little-endian uint16 from the last axis of 2 bytes."""
    return b[..., 0].astype(np.uint16) | (b[..., 1].astype(np.uint16) << 8)


# ---- quant-index ("L") conversions of the base blocks ---------------------------------------

def _l_nibbles(qs: np.ndarray) -> np.ndarray:
    """IQ4_K / IQ4_KS qs[128] -> L[256]: per block of 32, qs[16*ib+j] holds j (low) and j+16 (high)."""
    q = qs.reshape(*qs.shape[:-1], 8, 16)
    return np.concatenate([q & 15, q >> 4], axis=-1).reshape(*qs.shape[:-1], 256)


def _l_iq5(qs: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """convert_iq5_k: qs[128], qh[32] -> L[256] (5-bit)."""
    q = qs.reshape(*qs.shape[:-1], 4, 32)
    sh = (2 * np.arange(4, dtype=U8))[:, None]
    h = qh[..., None, :]
    lo = (q & 15) | (((h >> sh) & 1) << 4)
    hi = (q >> 4) | (((h >> (sh + 1)) & 1) << 4)
    return np.concatenate([lo, hi], axis=-1).reshape(*qs.shape[:-1], 256)


def _l_2bit(qs: np.ndarray) -> np.ndarray:
    """convert_iq2_k: qs[64] -> L[256] (2-bit): block ib32 reads qs[32*(ib32/4) + j] >> 2*(ib32%4)."""
    q = qs.reshape(*qs.shape[:-1], 2, 1, 32)
    sh = (2 * np.arange(4, dtype=U8))[:, None]
    return ((q >> sh) & 3).reshape(*qs.shape[:-1], 256)


# ---- R4 field builders (x: (M, 4 rows, ...)) -------------------------------------------------

_NIB_PAIRS = ((0, 8), (16, 24), (4, 12), (20, 28))


def _qs_r4_nibbles(L: np.ndarray) -> np.ndarray:
    """qs[64*ib + 16*o + 4*k + i] = L[32*ib+i+a] & 15 | (L[32*ib+i+b] & 15) << 4, (a, b) = pairs[o]."""
    m = L.shape[0]
    Lr = L.reshape(m, 4, 8, 32)
    parts = [(Lr[..., a:a + 4] & 15) | ((Lr[..., b:b + 4] & 15) << 4) for a, b in _NIB_PAIRS]
    return np.stack(parts, axis=1).transpose(0, 3, 1, 2, 4).reshape(m, 512)


_QH5_ORDER = (0, 8, 16, 24, 4, 12, 20, 28)


def _qh_r4(L: np.ndarray, order: tuple[int, ...], shift: int) -> np.ndarray:
    """qh[16*ib + 4*k + i] = sum_t (L[32*ib+i+order[t]] >> shift) << t."""
    m = L.shape[0]
    Lr = L.reshape(m, 4, 8, 32)
    out = np.zeros((m, 4, 8, 4), dtype=U8)
    for t, c in enumerate(order):
        out |= ((Lr[..., c:c + 4] >> shift) & 1) << t
    return out.transpose(0, 2, 1, 3).reshape(m, 128)


def _qs_r4_2bit(L: np.ndarray) -> np.ndarray:
    """qs[32*ib + 16*o + 4*k + i] = sum_t (L[32*ib + 16*o + 4*t + i] & 3) << 2t."""
    m = L.shape[0]
    Lr = L.reshape(m, 4, 8, 2, 4, 4)
    out = np.zeros((m, 4, 8, 2, 4), dtype=U8)
    for t in range(4):
        out |= (Lr[..., t, :] & 3) << (2 * t)
    return out.transpose(0, 2, 3, 1, 4).reshape(m, 256)


_POS64 = (8 * np.arange(8)[None, :, None] + np.arange(4)[:, None, None] + 4 * np.arange(2)[None, None, :]).ravel()


def _scales64(vals: np.ndarray) -> np.ndarray:
    """vals (M, 4 k, 8 ib, 2 half) -> S[M, 64] with S[8*ib + k + 4*half] (the R4 scale order)."""
    s = np.zeros((vals.shape[0], 64), dtype=U8)
    s[:, _POS64] = vals.reshape(vals.shape[0], 64)
    return s


def _split_scales(sl: np.ndarray) -> np.ndarray:
    """scales_l[ib] -> (M, 4, 8, 2): low nibble (first 16), high nibble (second 16)."""
    return np.stack([sl & 15, sl >> 4], axis=-1)


def _pack_nibbles64(s: np.ndarray) -> np.ndarray:
    """scales_l[j] = S[j] & 15 | (S[j+32] & 15) << 4."""
    return (s[:, :32] & 15) | ((s[:, 32:] & 15) << 4)


def _extra_r4(extra: np.ndarray) -> np.ndarray:
    """u16 extra (M, 4): bit 2*ib+h -> R4 extra[4*h + k] bit ib."""
    m = extra.shape[0]
    ib = np.arange(8, dtype=np.uint16)
    out = np.zeros((m, 2, 4), dtype=U8)
    for h in range(2):
        bits = (extra[..., None] >> (2 * ib + h)) & 1  # (M, 4, 8)
        out[:, h, :] = (bits << ib).sum(axis=-1).astype(U8)
    return out.reshape(m, 8)


def _d4(x: np.ndarray) -> np.ndarray:
    return x[:, :, 0:2].reshape(x.shape[0], 8)


# ---- per-type block repacks: (M, nrep, B) base super-blocks -> (M, nrep*B) -------------------

def repack_iq4_k(x: np.ndarray) -> np.ndarray:
    """repack_iq4_k: block_iq4_k {d, extra, scales_h[4], scales_l[8], qs[128]} x4 -> block_iq4_k_r4."""
    m = x.shape[0]
    sl = x[:, :, 8:16]
    shb = x[:, :, 4:8]
    sh = np.repeat(shb, 2, axis=-1) >> (4 * (np.arange(8, dtype=U8) % 2))
    vals = _split_scales(sl) | (np.stack([sh & 3, (sh >> 2) & 3], axis=-1) << 4)
    s = _scales64(vals)
    scales_h = np.zeros((m, 16), dtype=U8)
    for t in range(4):
        scales_h |= ((s[:, 16 * t:16 * t + 16] >> 4) & 3) << (2 * t)
    return np.concatenate([_d4(x), _extra_r4(_u16(x[:, :, 2:4])), scales_h, _pack_nibbles64(s),
                           _qs_r4_nibbles(_l_nibbles(x[:, :, 16:144]))], axis=1)


def repack_iq5_k(x: np.ndarray) -> np.ndarray:
    """repack_iq5_k: block_iq5_k (iq4_k + qh[32]) x4 -> block_iq5_k_r4 (iq4_k_r4 + qh[128])."""
    head = repack_iq4_k(np.concatenate([x[:, :, :16], np.zeros((*x.shape[:2], 128), U8)], axis=2))[:, :64]
    L = _l_iq5(x[:, :, 16:144], x[:, :, 144:176])
    return np.concatenate([head, _qs_r4_nibbles(L), _qh_r4(L, _QH5_ORDER, 4)], axis=1)


def repack_iq4_ks(x: np.ndarray) -> np.ndarray:
    """repack_iq4_ks blocks: {scales[8], qs[128]} x4 -> {scales[32] (4*ib+k), qs[512]}."""
    m = x.shape[0]
    scales = x[:, :, 0:8].transpose(0, 2, 1).reshape(m, 32)
    return np.concatenate([scales, _qs_r4_nibbles(_l_nibbles(x[:, :, 8:136]))], axis=1)


def repack_iq5_ks(x: np.ndarray) -> np.ndarray:
    """repack_iq5_ks blocks: {scales[8], qs[128], qh[32]} x4 -> {scales[32], qs[512], qh[128]}."""
    m = x.shape[0]
    scales = x[:, :, 0:8].transpose(0, 2, 1).reshape(m, 32)
    L = _l_iq5(x[:, :, 8:136], x[:, :, 136:168])
    return np.concatenate([scales, _qs_r4_nibbles(L), _qh_r4(L, _QH5_ORDER, 4)], axis=1)


def repack_iq2_k(x: np.ndarray) -> np.ndarray:
    """repack_iq2_k: block_iq2_k {d, extra, scales[8], qs[64]} x4 -> block_iq2_k_r4."""
    s = _scales64(_split_scales(x[:, :, 4:12]))
    return np.concatenate([_d4(x), _extra_r4(_u16(x[:, :, 2:4])), _pack_nibbles64(s),
                           _qs_r4_2bit(_l_2bit(x[:, :, 12:76]))], axis=1)


def repack_iq3_k(x: np.ndarray) -> np.ndarray:
    """repack_iq3_k: block_iq3_k {d, extra, scales_h (u16), scales_l[8], qs[64], qh[32]} x4."""
    m = x.shape[0]
    sh16 = _u16(x[:, :, 4:6])[..., None] >> (2 * np.arange(8, dtype=np.uint16))  # (M, 4, 8)
    shv = np.stack([sh16 & 1, (sh16 >> 1) & 1], axis=-1).astype(U8)
    s = _scales64(_split_scales(x[:, :, 6:14]) | (shv << 4))
    scales_h = np.zeros((m, 8), dtype=U8)
    for t in range(8):
        scales_h |= ((s[:, 8 * t:8 * t + 8] >> 4) & 1) << t
    hb = x[:, :, 78:110][:, :, None, :] >> np.arange(8, dtype=U8)[:, None]  # (M, 4, 8 ib32, 32)
    L = _l_2bit(x[:, :, 14:78]) | ((hb & 1) << 2).reshape(m, 4, 256)
    return np.concatenate([_d4(x), _extra_r4(_u16(x[:, :, 2:4])), scales_h, _pack_nibbles64(s),
                           _qs_r4_2bit(L), _qh_r4(L, tuple(range(0, 32, 4)), 2)], axis=1)


def repack_iq2_bn(x: np.ndarray) -> np.ndarray:
    """repack_iq2_bn blocks of 64: y[16*l + 4*k + i] = sum_m ((x_k[i + 4*m] >> 2l) & 3) << 2m."""
    m = x.shape[0]
    xr = x.reshape(m, 4, 4, 4)  # (M, k, m, i)
    out = np.zeros((m, 4, 4, 4), dtype=U8)  # (M, l, k, i)
    for l in range(4):
        for mm in range(4):
            out[:, l] |= ((xr[:, :, mm, :] >> (2 * l)) & 3) << (2 * mm)
    return out.reshape(m, 64)


def repack_mxfp4(x: np.ndarray) -> np.ndarray:
    """repack_mxfp4 / quantize_mxfp4_r8: e[k] = x_k.e, qs[32*l + 4*k + i] = x_k.qs[4*l + i]."""
    m = x.shape[0]
    qs = x[:, :, 1:17].reshape(m, 8, 4, 4).transpose(0, 2, 1, 3).reshape(m, 128)
    return np.concatenate([x[:, :, 0], qs], axis=1)


# ---- driver ---------------------------------------------------------------------------------

_EPS = np.float32(1e-9)
_EPS2 = np.float32(_EPS * _EPS)


def qhelper_quantize(x: np.ndarray, qw: np.ndarray, block: int,
                     quantize: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """QHelper::quantize / row_weights: per row, each block of `block` imatrix weights whose float
    sums of w*w, x*x, w*|x| are not all above block*1e-18 is replaced by 1e-9, then the row is
    quantized with those weights. Rows sharing one pattern of replaced blocks are quantized together."""
    nrows, n = x.shape
    nb = n // block
    w = qw.astype(np.float32).reshape(nb, block)
    xb = x.reshape(nrows, nb, block)
    thr = np.float32(block) * _EPS2
    sw2 = seq_sum_t(np.broadcast_to((w * w)[None], xb.shape).transpose(2, 0, 1), 0)
    sx2 = seq_sum_t((xb * xb).transpose(2, 0, 1), 0)
    swx = seq_sum_t((w[None] * np.abs(xb)).transpose(2, 0, 1), 0)
    bad = ~((sw2 > thr) & (sx2 > thr) & (swx > thr))  # (nrows, nb)
    pats, inv = np.unique(bad, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    parts = []
    for p in range(pats.shape[0]):
        rows = np.nonzero(inv == p)[0]
        wp = w.copy()
        wp[pats[p]] = _EPS
        parts.append((rows, quantize(np.ascontiguousarray(x[rows]), wp.reshape(n))))
    out = np.empty((nrows, parts[0][1].shape[1]), dtype=U8)
    for rows, q in parts:
        out[rows] = q
    return out


# ---- spec ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RepackSpec:
    """One interleaved type: its base, rows per group, the base block (bytes) the repack works
    on, the per-row float header (bytes), the block repack `fwd` ((M, nrep, block) -> (M, nrep*block),
    a bit permutation), optional byte bijection `pre` before it, QHelper's block size."""

    name: str
    base: str
    nrep: int
    block: int  # bytes of one base block unit the repack works on
    header: int  # bytes of per-row float scale in front of the row (IQ4_KS, IQ5_KS, IQ2_BN)
    fwd: BlockFn
    ignores_imatrix: bool = False
    pre: BlockFn | None = None  # a bijection on the base blocks applied before the bit permutation fwd
    pre_inv: BlockFn | None = None
    qhelper_block: int = 0  # quantize_repack's QHelper block size (0: the base quantizer sees the imatrix as is)
    base_dequantize: Callable[[np.ndarray, int], np.ndarray] | None = None  # instead of the registered one

    def _check(self, nrows: int) -> None:
        if nrows % self.nrep:
            raise ValueError(f"{self.name}: {nrows} rows are not a multiple of {self.nrep} "
                             f"(ik_llama.cpp asserts nrows % {self.nrep} == 0)")

    def repack(self, q: np.ndarray) -> np.ndarray:
        """Base rows uint8[nrows, rb] -> the interleaved rows (same shape)."""
        nrows, rb = q.shape
        self._check(nrows)
        g, r, h = nrows // self.nrep, self.nrep, self.header
        nb = (rb - h) // self.block
        qg = q.reshape(g, r, rb)
        blocks = qg[:, :, h:].reshape(g, r, nb, self.block).transpose(0, 2, 1, 3).reshape(g * nb, r, self.block)
        blocks = np.ascontiguousarray(blocks)
        if self.pre is not None:
            blocks = self.pre(blocks)
        body = self.fwd(blocks).reshape(g, nb * r * self.block)
        return np.concatenate([qg[:, :, :h].reshape(g, r * h), body], axis=1).reshape(nrows, rb)

    @functools.cached_property
    def inverse(self) -> np.ndarray:
        """Index of the output bit holding each input bit of one repacked block group; checks that
        the repack is a bijection on bits (so the inverse is exact)."""
        nbits = self.nrep * self.block * 8
        nlab = max(1, (nbits - 1).bit_length())
        idx = np.arange(nbits)
        planes = np.stack([(idx >> b) & 1 for b in range(nlab)] + [np.ones(nbits, dtype=np.int64)]).astype(U8)
        inp = np.packbits(planes, axis=1, bitorder="little").reshape(nlab + 1, self.nrep, self.block)
        out = np.unpackbits(self.fwd(inp), axis=1, bitorder="little").astype(np.int64)
        zero = self.fwd(np.zeros((1, self.nrep, self.block), dtype=U8))
        label = (out[:nlab] << np.arange(nlab)[:, None]).sum(axis=0)
        if zero.any() or not out[nlab].all() or not np.array_equal(np.sort(label), idx):
            raise RuntimeError(f"{self.name}: repack is not a bit permutation")
        return np.argsort(label)

    def unpack(self, d: np.ndarray) -> np.ndarray:
        """Interleaved rows uint8[nrows, rb] -> the base rows."""
        nrows, rb = d.shape
        self._check(nrows)
        g, r, h = nrows // self.nrep, self.nrep, self.header
        nb = (rb - h) // self.block
        dg = d.reshape(g, nrows // g * rb)
        body = dg[:, r * h:].reshape(g * nb, r * self.block)
        bits = np.unpackbits(body, axis=1, bitorder="little")[:, self.inverse]
        blocks = np.packbits(bits, axis=1, bitorder="little").reshape(g * nb, r, self.block)
        if self.pre_inv is not None:
            blocks = self.pre_inv(blocks)
        rows = blocks.reshape(g, nb, r, self.block).transpose(0, 2, 1, 3).reshape(g, r, nb * self.block)
        return np.concatenate([dg[:, :r * h].reshape(g, r, h), rows],
                              axis=2).reshape(nrows, rb)

    def quantize(self, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        """quantize_<type>_r4: the base type's ik bytes, repacked in groups of nrep rows."""
        self._check(x.shape[0])
        from ..engine import quantize  # the engine imports this package: import at call time

        if self.ignores_imatrix:
            qw = None
        if qw is None or not self.qhelper_block:
            return self.repack(quantize(x, self.base, qw, flavour=IK))
        return self.repack(qhelper_quantize(x, qw, self.qhelper_block,
                                            lambda r, w: quantize(r, self.base, w, flavour=IK)))

    def dequantize(self, d: np.ndarray, n_per_row: int) -> np.ndarray:
        """dequantize_row_<type>_r4: the base rows' values."""
        from ..engine import dequantize

        if self.base_dequantize is not None:
            return self.base_dequantize(self.unpack(d), n_per_row)
        return dequantize(self.unpack(d), self.base, n_per_row)


SPECS: dict[str, RepackSpec] = {s.name: s for s in (
    RepackSpec("IQ4_K_R4", "IQ4_K", 4, 144, 0, repack_iq4_k),
    RepackSpec("IQ5_K_R4", "IQ5_K", 4, 176, 0, repack_iq5_k),
    RepackSpec("IQ2_K_R4", "IQ2_K", 4, 76, 0, repack_iq2_k),
    RepackSpec("IQ3_K_R4", "IQ3_K", 4, 110, 0, repack_iq3_k),
    RepackSpec("IQ4_KS_R4", "IQ4_KS", 4, 136, 4, repack_iq4_ks),
    RepackSpec("IQ5_KS_R4", "IQ5_KS", 4, 168, 4, repack_iq5_ks),
    # dequantize_row_iq2_bn_r4 scales by the row's float (dequantize_row_iq2_bn does not)
    RepackSpec("IQ2_BN_R4", "IQ2_BN", 4, 16, 4, repack_iq2_bn, base_dequantize=bitnet.dequantize_iq2_bn_scaled),
    RepackSpec("MXFP4_R8", "MXFP4", 8, 17, 0, repack_mxfp4, ignores_imatrix=True),
)}

for _s in SPECS.values():
    assert get_type(_s.name).repack_of == _s.base and get_type(_s.name).rows_interleaved == _s.nrep
    _without, _with = support(_s.base, IK)
    _variants = (False, True) if _s.ignores_imatrix and _without else \
        tuple(v for v, ok in ((False, _without), (True, _with)) if ok)
    register(_s.name, _s.quantize, _s.dequantize, mainline=(), ik=_variants)
