"""ik_llama.cpp's 8-bit activation-style types used as weight ftypes, the BF16 row interleave and
the ARM repacks of Q4_0 (flavour "ik" only): Q8_KV, Q8_KV_R8, Q8_K_R8, BF16_R16, Q4_0_4_4,
Q4_0_4_8, Q4_0_8_8.

- Q8_KV (iqk_quantize_row_q8_KV, AVX2 path of the -mavx2 build): per row a header {float d,
  int32 sum of the quants}, then n int8. d = max|x| / 127.f, quants = round-half-even(x * (1/d))
  (_mm256_round_ps + _mm256_cvtps_epi32, saturated to int8 by the packs); max|x| folds 8 lanes
  with _mm256_max_ps and hmax_f32_8 (NaN semantics kept: `_maxps`). The imatrix is ignored.
- Q8_KV_R8 (quantize_q8_KV_r8 + repack_q8_KV): 8 Q8_KV rows, the 8 d first (32 bytes), then per
  16 columns qs[128 ib + 32 l + 4 k + i] = row k's q[16 ib + 4 l + i]; the row sums are dropped.
- Q8_K_R8 (quantize_q8_k_r8: quantize_row_q8_K32 + repack_q8_k): per 256 values d = max/127.f,
  id = 127.f/max (0 when max is 0), q = round-half-even(id * x); d stored as fp16, 8 rows
  interleaved 4 bytes at a time: qs[32 ib + 4 k + i] = row k's q[4 ib + i].
- BF16_R16 (repack_f32_bf16_r16): bf16 by truncation (u >> 16, not rounding), 16 rows
  interleaved 2 values at a time: y[32 ib + 2 k + j] = row k's x[2 ib + j].
- Q4_0_4_4 / Q4_0_4_8 / Q4_0_8_8 (ggml-aarch64.c quantize_q4_0_nr_bl): Q4_0 rows
  (quantize_row_q4_0_ref) interleaved by make_block_q4_0x4 / x8 with xor 0x88; ik writes these
  types as such (no conversion to Q4_0_R8). With an imatrix ik's quantize_q4_0_4x4 hits
  assert(false) (compiled out: it writes nothing): only the variant without one is registered.

Rows must be a multiple of the interleave (ik asserts it); a ValueError otherwise. The
dequantizers mirror dequantize_row_q8_KV / _q8_KV_r8 / _q8_k_r8; BF16_R16 and Q4_0_x have no
to_float in ik: theirs are the exact inverses (bf16 -> f32; un-xor, un-interleave, Q4_0's).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..numeric import F32, fp16_bits, fp16_bits_to_fp32, ieee
from ..registry import register

_I32_MIN = -(1 << 31)


def _check(name: str, nrows: int, r: int) -> None:
    if nrows % r:
        raise ValueError(f"{name}: {nrows} rows is not a multiple of {r} (ik_llama.cpp interleaves {r} rows; "
                         f"it asserts nrows%{r} == 0)")


def _maxps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """_mm_max_ps(a, b): a > b ? a : b (b when either is NaN)."""
    return np.where(a > b, a, b)


def lane_absmax(x: np.ndarray) -> np.ndarray:
    """max|x| over the last axis as the AVX2 code computes it: maxAbs = _mm256_max_ps(maxAbs,
    |v|) over 8-float loads from 0, then hmax_f32_8. x float32 (..., m*8) -> float32 (...)."""
    a = np.abs(x).reshape(*x.shape[:-1], -1, 8)
    nan = np.isnan(a)
    if nan.any():  # a NaN operand makes max_ps return |v|: the lane restarts after its last NaN
        m = a.shape[-2]
        idx = np.arange(m).reshape(*([1] * (a.ndim - 2)), m, 1)
        last = np.where(nan, idx, -1).max(axis=-2, keepdims=True)
        keep = idx > last
        lane = np.where(keep, a, F32(0)).max(axis=-2)
        lane = np.where((last[..., 0, :] == m - 1), np.float32(np.nan), lane)
        lane = np.where(last[..., 0, :] >= 0, lane, np.maximum(F32(0), lane))
    else:
        lane = np.maximum(a.max(axis=-2), F32(0))
    m4 = _maxps(lane[..., 4:8], lane[..., 0:4])
    m2 = _maxps(m4[..., 0:2], m4[..., 2:4])
    return _maxps(m2[..., 0], m2[..., 1]).astype(F32)


def _cvt_round(v: np.ndarray) -> np.ndarray:
    """_mm256_round_ps(nearest) + _mm256_cvtps_epi32: int64 values, INT_MIN for NaN / out of range."""
    r = np.rint(v)
    ok = np.isfinite(r) & (r >= F32(-2147483648.0)) & (r < F32(2147483648.0))
    return np.where(ok, np.where(ok, r, 0).astype(np.int64), _I32_MIN)


def _sat8(i: np.ndarray) -> np.ndarray:
    """The int32 -> int16 -> int8 saturating packs."""
    return np.clip(i, -128, 127).astype(np.int8)


# ---- Q8_KV ---------------------------------------------------------------------------------------

def q8_kv_parts(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """iqk_quantize_row_q8_KV per row: (d float32 (r,), int32 sum (r,), int8 q (r, n))."""
    x = np.ascontiguousarray(rows, dtype=F32)
    with np.errstate(all="ignore"):  # inf / NaN follow IEEE, as in C
        mx = lane_absmax(x)
        zero = mx == 0
        d = np.where(zero, F32(0), mx / F32(127)).astype(F32)
        mul = (F32(1) / d).astype(F32)
        i = _cvt_round(x * mul[:, None])
    i[zero] = 0
    s = (i.sum(axis=1) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    return d, s, _sat8(i)


def quantize_q8_kv(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q8_KV (imatrix ignored): rows -> uint8 (r, 8 + n)."""
    d, s, q = q8_kv_parts(rows)
    out = np.empty((q.shape[0], 8 + q.shape[1]), np.uint8)
    out[:, 0:4] = d.view(np.uint8).reshape(-1, 4)
    out[:, 4:8] = s.view(np.uint8).reshape(-1, 4)
    out[:, 8:] = q.view(np.uint8)
    return out


@ieee
def dequantize_q8_kv(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q8_KV: d * q."""
    b = np.ascontiguousarray(data, dtype=np.uint8)
    d = b[:, 0:4].copy().view(F32)
    return (d * b[:, 8:8 + n_per_row].view(np.int8).astype(F32)).astype(F32)


# ---- Q8_KV_R8 ------------------------------------------------------------------------------------

def quantize_q8_kv_r8(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q8_KV_r8: 8 Q8_KV rows -> {float d[8], interleaved qs}."""
    nrows, n = rows.shape
    _check("Q8_KV_R8", nrows, 8)
    d, _, q = q8_kv_parts(rows)
    g = nrows // 8
    qi = q.reshape(g, 8, n // 16, 4, 4).transpose(0, 2, 3, 1, 4).reshape(g, 8 * n)
    out = np.empty((g, 32 + 8 * n), np.uint8)
    out[:, :32] = d.reshape(g, 8).view(np.uint8)
    out[:, 32:] = qi.view(np.uint8)
    return out.reshape(nrows, 4 + n)


@ieee
def dequantize_q8_kv_r8(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q8_KV_r8: dptr[k] * q8[128 ib + 32 l + 4 k + i]."""
    nrows = data.shape[0]
    _check("Q8_KV_R8", nrows, 8)
    n = n_per_row
    g = np.ascontiguousarray(data, dtype=np.uint8).reshape(nrows // 8, 32 + 8 * n)
    d = g[:, :32].copy().view(F32)  # (G, 8)
    q = g[:, 32:].view(np.int8).reshape(-1, n // 16, 4, 8, 4).transpose(0, 3, 1, 2, 4).reshape(-1, 8, n)
    return (d[:, :, None] * q.astype(F32)).astype(F32).reshape(nrows, n)


# ---- Q8_K_R8 -------------------------------------------------------------------------------------

@ieee
def quantize_q8_k_r8(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q8_k_r8: quantize_row_q8_K32 (AVX2) per 256 values, d as fp16,
    8 rows interleaved 4 bytes at a time (repack_q8_k)."""
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = x.shape
    _check("Q8_K_R8", nrows, 8)
    nb = n // 256
    xb = x.reshape(nrows, nb, 256)
    mx = lane_absmax(xb)  # (r, nb)
    d = (mx / F32(127)).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        idv = np.where(mx != 0, F32(127) / mx, F32(0)).astype(F32)
    q = _sat8(_cvt_round(xb * idv[..., None]))  # (r, nb, 256)
    g = nrows // 8
    dh = fp16_bits(d).reshape(g, 8, nb).transpose(0, 2, 1)  # (G, nb, 8) uint16
    qi = q.reshape(g, 8, nb, 64, 4).transpose(0, 2, 3, 1, 4).reshape(g, nb, 2048)
    out = np.empty((g, nb, 16 + 2048), np.uint8)
    out[:, :, :16] = np.ascontiguousarray(dh).view(np.uint8).reshape(g, nb, 16)
    out[:, :, 16:] = qi.view(np.uint8)
    return out.reshape(nrows, nb * 258)


@ieee
def dequantize_q8_k_r8(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q8_k_r8: fp16 d[k] * qs[32 ib + 4 k + i]."""
    nrows = data.shape[0]
    _check("Q8_K_R8", nrows, 8)
    nb = n_per_row // 256
    b = np.ascontiguousarray(data, dtype=np.uint8).reshape(nrows // 8, nb, 2064)
    d = fp16_bits_to_fp32(b[:, :, :16].copy().view("<u2")).astype(F32)  # (G, nb, 8)
    q = b[:, :, 16:].view(np.int8).reshape(-1, nb, 64, 8, 4).transpose(0, 3, 1, 2, 4).reshape(-1, 8, nb, 256)
    y = d.transpose(0, 2, 1)[..., None] * q.astype(F32)
    return y.astype(F32).reshape(nrows, n_per_row)


# ---- BF16_R16 ------------------------------------------------------------------------------------

def quantize_bf16_r16(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """repack_f32_bf16_r16: bf16 = upper 16 bits (truncation), 16 rows interleaved by pairs."""
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = x.shape
    _check("BF16_R16", nrows, 16)
    h = (x.view(np.uint32) >> 16).astype(np.uint16)
    y = h.reshape(nrows // 16, 16, n // 2, 2).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(y).reshape(nrows, n).view(np.uint8)


def dequantize_bf16_r16(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """The inverse of repack_bf16 (ik has no to_float for BF16_R16): bf16 -> f32."""
    nrows = data.shape[0]
    _check("BF16_R16", nrows, 16)
    h = np.ascontiguousarray(data, dtype=np.uint8).view("<u2").reshape(nrows // 16, n_per_row // 2, 16, 2)
    u = np.ascontiguousarray(h.transpose(0, 2, 1, 3)).reshape(nrows, n_per_row).astype(np.uint32) << 16
    return u.view(F32)


# ---- Q4_0_4_4 / Q4_0_4_8 / Q4_0_8_8 --------------------------------------------------------------

_Q40X = {"Q4_0_4_4": (4, 4), "Q4_0_4_8": (4, 8), "Q4_0_8_8": (8, 8)}


def _q40x_src(name: str) -> np.ndarray:
    """make_block_q4_0x<R>: qs[i] = in[src_id].qs[src_offset] as a flat index src_id*16 + offset."""
    r, bl = _Q40X[name]
    i = np.arange(16 * r)
    off = (i // (r * bl)) * bl + i % bl
    sid = (i % (r * bl)) // bl
    return sid * 16 + off


def _q40x_quantizer(name: str) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    r, _ = _Q40X[name]
    src = _q40x_src(name)

    def quantize(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        from .. import engine

        x = np.ascontiguousarray(rows, dtype=F32)
        nrows, n = x.shape
        _check(name, nrows, r)
        base = engine.quantize(x, "Q4_0", None, flavour="ik").reshape(nrows // r, r, n // 32, 18)
        g = base.transpose(0, 2, 1, 3)  # (G, nb, r, 18)
        out = np.empty((nrows // r, n // 32, r * 18), np.uint8)
        out[..., :2 * r] = g[..., 0:2].reshape(*g.shape[:2], 2 * r)
        qs = g[..., 2:].reshape(*g.shape[:2], 16 * r)
        out[..., 2 * r:] = qs[..., src] ^ np.uint8(0x88)
        return out.reshape(nrows, -1)

    quantize.__name__ = f"quantize_{name.lower()}"
    quantize.__doc__ = f"ggml-aarch64.c quantize_{name.lower()} (no imatrix): Q4_0 rows interleaved, xor 0x88."
    return quantize


def _q40x_dequantizer(name: str) -> Callable[[np.ndarray, int], np.ndarray]:
    r, _ = _Q40X[name]
    inv = np.argsort(_q40x_src(name))

    def dequantize(data: np.ndarray, n_per_row: int) -> np.ndarray:
        from .. import engine

        nrows = data.shape[0]
        _check(name, nrows, r)
        nb = n_per_row // 32
        b = np.ascontiguousarray(data, dtype=np.uint8).reshape(nrows // r, nb, r * 18)
        base = np.empty((nrows // r, nb, r, 18), np.uint8)
        base[..., 0:2] = b[..., :2 * r].reshape(nrows // r, nb, r, 2)
        base[..., 2:] = (b[..., 2 * r:][..., inv] ^ np.uint8(0x88)).reshape(nrows // r, nb, r, 16)
        plain = np.ascontiguousarray(base.transpose(0, 2, 1, 3)).reshape(nrows, nb * 18)
        return engine.dequantize(plain, "Q4_0", n_per_row)

    dequantize.__name__ = f"dequantize_{name.lower()}"
    dequantize.__doc__ = f"The inverse of quantize_{name.lower()} (un-xor, un-interleave) then Q4_0's dequantizer."
    return dequantize


register("Q8_KV", quantize_q8_kv, dequantize_q8_kv, mainline=(), ik=(False, True))
register("Q8_KV_R8", quantize_q8_kv_r8, dequantize_q8_kv_r8, mainline=(), ik=(False, True))
register("Q8_K_R8", quantize_q8_k_r8, dequantize_q8_k_r8, mainline=(), ik=(False, True))
register("BF16_R16", quantize_bf16_r16, dequantize_bf16_r16, mainline=(), ik=(False, True))
for _name in _Q40X:
    register(_name, _q40x_quantizer(_name), _q40x_dequantizer(_name), mainline=(), ik=(False,))
