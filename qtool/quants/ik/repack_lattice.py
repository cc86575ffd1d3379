"""ik_llama.cpp's row-interleaved lattice types IQ2_XXS_R4, IQ2_XS_R4, IQ2_S_R4, IQ3_XXS_R4,
IQ3_S_R4.

Ports of ggml/src/iqk/iqk_quantize.cpp `quantize_<type>_r4`: `quantize_repack<block_size, ...>`
quantizes each row with the base type's quantizer (ik's, `quantize_<base>(x, y, 1, n, weights)`),
the weights being `QHelper::row_weights` (the imatrix, with each block of block_size = 32 for
IQ2_XXS / IQ3_XXS, 16 for the others, whose float sums of w², x², w|x| are not all above
block_size*1e-18 set to 1e-9; `repack_iqk.qhelper_quantize`), then interleaves groups of 4 rows
with `repack_<base>`. IQ2_XXS / IQ3_XXS / IQ2_XS also re-encode each 7-bit sign field with
`scrambled_sign` (a permutation of 0..127): done in place on the base blocks (`pre`), after
which the repack is a bit permutation like the others (see repack_iqk.RepackSpec). The
dequantizers (`dequantize_row_<type>_r4`) are mirrored by undoing both and dequantizing the base.
"""

from __future__ import annotations

import numpy as np

from ..lattice import iq2, iq3  # noqa: F401  (base kernels register before `support` is asked)
from ..registry import register, support
from ..types import IK, get_type
from . import lattice_ik  # noqa: F401
from .repack_iqk import RepackSpec

U8 = np.uint8
U32 = np.uint32

# iqk_quantize.cpp scrambled_sign's k_table
SCRAMBLED_SIGN = np.array([
    0x00, 0x7f, 0x7e, 0x01, 0x7c, 0x03, 0x02, 0x7d, 0x78, 0x07, 0x06, 0x79, 0x04, 0x7b, 0x7a, 0x05,
    0x70, 0x0f, 0x0e, 0x71, 0x0c, 0x73, 0x72, 0x0d, 0x08, 0x77, 0x76, 0x09, 0x74, 0x0b, 0x0a, 0x75,
    0x60, 0x1f, 0x1e, 0x61, 0x1c, 0x63, 0x62, 0x1d, 0x18, 0x67, 0x66, 0x19, 0x64, 0x1b, 0x1a, 0x65,
    0x10, 0x6f, 0x6e, 0x11, 0x6c, 0x13, 0x12, 0x6d, 0x68, 0x17, 0x16, 0x69, 0x14, 0x6b, 0x6a, 0x15,
    0x40, 0x3f, 0x3e, 0x41, 0x3c, 0x43, 0x42, 0x3d, 0x38, 0x47, 0x46, 0x39, 0x44, 0x3b, 0x3a, 0x45,
    0x30, 0x4f, 0x4e, 0x31, 0x4c, 0x33, 0x32, 0x4d, 0x48, 0x37, 0x36, 0x49, 0x34, 0x4b, 0x4a, 0x35,
    0x20, 0x5f, 0x5e, 0x21, 0x5c, 0x23, 0x22, 0x5d, 0x58, 0x27, 0x26, 0x59, 0x24, 0x5b, 0x5a, 0x25,
    0x50, 0x2f, 0x2e, 0x51, 0x2c, 0x53, 0x52, 0x2d, 0x28, 0x57, 0x56, 0x29, 0x54, 0x2b, 0x2a, 0x55,
], dtype=U8)
UNSCRAMBLED_SIGN = np.argsort(SCRAMBLED_SIGN).astype(U8)
assert np.array_equal(np.sort(SCRAMBLED_SIGN), np.arange(128))


def _sas_words(b: np.ndarray) -> np.ndarray:
    """(..., 4) bytes -> little-endian uint32."""
    return b.astype(U32) @ (U32(1) << (8 * np.arange(4, dtype=U32)))


def _scramble_words(b: np.ndarray) -> np.ndarray:
    """aux32 (4 bytes: 4 x 7 sign bits, 4 scale bits) -> s_m = scrambled_sign(7 bits) << 1 | scale bit m."""
    w = _sas_words(b)[..., None]
    m = np.arange(4, dtype=U32)
    s = (SCRAMBLED_SIGN[(w >> (7 * m)) & 127] << 1) | ((w >> (28 + m)) & 1).astype(U8)
    return s.astype(U8)


def _unscramble_words(b: np.ndarray) -> np.ndarray:
    m = np.arange(4, dtype=U32)
    sign = UNSCRAMBLED_SIGN[b >> 1].astype(U32)
    w = ((sign << (7 * m)) | ((b & 1).astype(U32) << (28 + m))).sum(axis=-1, dtype=U32)
    return ((w[..., None] >> (8 * m)) & 255).astype(U8)


# ---- IQ2_XXS: block {d, qs[32 u16]}: per ib32 aux32[0] = 4 grid bytes, aux32[1] = signs + scale

def _iq2_xxs_pre(x: np.ndarray, inverse: bool = False) -> np.ndarray:
    y = x.copy()
    q = y[:, :, 2:66].reshape(*x.shape[:2], 8, 8)
    q[..., 4:8] = (_unscramble_words if inverse else _scramble_words)(q[..., 4:8])
    return y


def repack_iq2_xxs(x: np.ndarray) -> np.ndarray:
    """repack_iq2_xxs (after the sign scrambling): d[4], sas[4*ib+k] (u32), qs[16*ib + 4*k + i]."""
    m = x.shape[0]
    q = x[:, :, 2:66].reshape(m, 4, 8, 8).transpose(0, 2, 1, 3)  # (M, ib, k, 8)
    return np.concatenate([x[:, :, 0:2].reshape(m, 8), q[..., 4:8].reshape(m, 128), q[..., 0:4].reshape(m, 128)],
                          axis=1)


# ---- IQ3_XXS: block {d, qs[64] grid bytes, sas[8 u32]}

def _iq3_xxs_pre(x: np.ndarray, inverse: bool = False) -> np.ndarray:
    y = x.copy()
    q = y[:, :, 66:98].reshape(*x.shape[:2], 8, 4)
    q[...] = (_unscramble_words if inverse else _scramble_words)(q)
    return y


def repack_iq3_xxs(x: np.ndarray) -> np.ndarray:
    """repack_iq3_xxs: d[4], sas[4*ib + k], qs[32*ib + 8*k + i] = x_k.qs[8*ib + i]."""
    m = x.shape[0]
    qs = x[:, :, 2:66].reshape(m, 4, 8, 8).transpose(0, 2, 1, 3).reshape(m, 256)
    sas = x[:, :, 66:98].reshape(m, 4, 8, 4).transpose(0, 2, 1, 3).reshape(m, 128)
    return np.concatenate([x[:, :, 0:2].reshape(m, 8), sas, qs], axis=1)


# ---- IQ2_XS: block {d, qs[32 u16] = 9-bit grid | 7-bit signs << 9, scales[8]}

def _iq2_xs_pre(x: np.ndarray, inverse: bool = False) -> np.ndarray:
    y = x.copy()
    q = y[:, :, 2:66].reshape(*x.shape[:2], 32, 2)
    table = UNSCRAMBLED_SIGN if inverse else SCRAMBLED_SIGN
    q[..., 1] = (q[..., 1] & 1) | (table[q[..., 1] >> 1] << 1)
    return y


def repack_iq2_xs(x: np.ndarray) -> np.ndarray:
    """repack_iq2_xs: d[4], qs[16*ib + 4*k + i] (u16), scales[4*ib + k]."""
    m = x.shape[0]
    qs = x[:, :, 2:66].reshape(m, 4, 8, 8).transpose(0, 2, 1, 3).reshape(m, 256)
    scales = x[:, :, 66:74].transpose(0, 2, 1).reshape(m, 32)
    return np.concatenate([x[:, :, 0:2].reshape(m, 8), qs, scales], axis=1)


# ---- IQ2_S: block {d, qs[32], signs[32], qh[8], scales[8]}

def repack_iq2_s(x: np.ndarray) -> np.ndarray:
    """repack_iq2_s: d[4], qs[16*ib+4*k+i], qh[4*ib+k], signs[16*ib+4*k+i], scales[4*ib+k]."""
    m = x.shape[0]

    def inter4(a: np.ndarray) -> np.ndarray:
        return a.reshape(m, 4, 8, 4).transpose(0, 2, 1, 3).reshape(m, 128)

    return np.concatenate([x[:, :, 0:2].reshape(m, 8), inter4(x[:, :, 2:34]),
                           x[:, :, 66:74].transpose(0, 2, 1).reshape(m, 32), inter4(x[:, :, 34:66]),
                           x[:, :, 74:82].transpose(0, 2, 1).reshape(m, 32)], axis=1)


# ---- IQ3_S: block {d, qs[64], qh[8], signs[32], scales[4]}

_POS32 = (8 * np.arange(4)[None, :, None] + np.arange(4)[:, None, None] + 4 * np.arange(2)[None, None, :]).ravel()


def repack_iq3_s(x: np.ndarray) -> np.ndarray:
    """repack_iq3_s: d[4]; qs[32*ib + 8*i + 4*h + k] = x_k.qs[8*ib + 4*h + i]; qh[4*ib+k] = x_k.qh[ib];
    signs[16*ib + 4*k + i] bit 2m+h = x_k.signs[4*ib+m] bit 4h+i; scale nibble j = 8*ib64+k (+4: high)
    at scales[j%16] << 4*(j/16)."""
    m = x.shape[0]
    qs = x[:, :, 2:66].reshape(m, 4, 8, 2, 4).transpose(0, 2, 4, 3, 1).reshape(m, 256)
    qh = x[:, :, 66:74].transpose(0, 2, 1).reshape(m, 32)
    sg = x[:, :, 74:106].reshape(m, 4, 8, 4)  # (M, k, ib, m)
    signs = np.zeros((m, 8, 4, 4), dtype=U8)  # (M, ib, k, i)
    for mm in range(4):
        for h in range(2):
            for i in range(4):
                signs[..., i] |= (((sg[..., mm] >> (4 * h + i)) & 1) << (2 * mm + h)).transpose(0, 2, 1)
    sc = x[:, :, 106:110]  # (M, k, ib64)
    nib = np.zeros((m, 32), dtype=U8)
    nib[:, _POS32] = np.stack([sc & 15, sc >> 4], axis=-1).reshape(m, 32)
    scales = nib[:, :16] | (nib[:, 16:] << 4)
    return np.concatenate([x[:, :, 0:2].reshape(m, 8), qs, qh, signs.reshape(m, 128), scales], axis=1)


SPECS: dict[str, RepackSpec] = {s.name: s for s in (
    RepackSpec("IQ2_XXS_R4", "IQ2_XXS", 4, 66, 0, repack_iq2_xxs, pre=_iq2_xxs_pre,
               pre_inv=lambda b: _iq2_xxs_pre(b, True), qhelper_block=32),
    RepackSpec("IQ2_XS_R4", "IQ2_XS", 4, 74, 0, repack_iq2_xs, pre=_iq2_xs_pre,
               pre_inv=lambda b: _iq2_xs_pre(b, True), qhelper_block=16),
    RepackSpec("IQ2_S_R4", "IQ2_S", 4, 82, 0, repack_iq2_s, qhelper_block=16),
    RepackSpec("IQ3_XXS_R4", "IQ3_XXS", 4, 98, 0, repack_iq3_xxs, pre=_iq3_xxs_pre,
               pre_inv=lambda b: _iq3_xxs_pre(b, True), qhelper_block=32),
    RepackSpec("IQ3_S_R4", "IQ3_S", 4, 110, 0, repack_iq3_s, qhelper_block=16),
)}

for _s in SPECS.values():
    assert get_type(_s.name).repack_of == _s.base and get_type(_s.name).rows_interleaved == _s.nrep
    _without, _with = support(_s.base, IK)
    register(_s.name, _s.quantize, _s.dequantize, mainline=(),
             ik=tuple(v for v, ok in ((False, _without), (True, _with)) if ok))
