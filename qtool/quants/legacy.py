"""Legacy 32-value block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Ports of ggml-quants.c, byte-exact with mainline's `ggml_quantize_chunk`:

- without imatrix, `quantize_row_q4_0_ref` ... `quantize_row_q8_0_ref` (every block on its own);
- with imatrix, `quantize_row_q4_0_impl` ... `quantize_row_q5_1_impl`: per row
  sigma2 = sum(x^2)/n_per_row (sequential float32 sum over the row), per value
  weight = qw[j]*sqrtf(sigma2 + x^2); Q4_0 / Q5_0 take d = make_qx_quants(32, 8|16, x, L, 1,
  weight), Q4_1 / Q5_1 take (d, -min) = make_qkx3_quants(32, 15|31, x, weight, L, &min, Laux,
  -0.9, 0.05, 36, false). Q8_0 ignores the imatrix.
- `dequantize_row_q4_0` ... `_q8_0`.

Block layouts (declared once below, shared by quantize and dequantize):
  Q4_0  d fp16 | qs[16]: value j in the low nibble of qs[j], value j+16 in the high nibble
  Q4_1  d fp16, m fp16 | qs[16]
  Q5_0  d fp16 | qh[4] (bit k = 5th bit of value k, little-endian uint32) | qs[16]
  Q5_1  d fp16, m fp16 | qh[4] | qs[16]
  Q8_0  d fp16 | qs[32] int8

Layouts of the work: the reference paths work on blocks in their natural layout (n_blocks, 32)
in chunks of rows; the imatrix paths transpose a chunk of rows to (32, n_blocks) (index in block,
block), where every C reduction over the block runs down axis 0 in C's order, and run the search
there. Levels are packed four bytes at a time as uint32 words (no bits cross a byte).
"""

from __future__ import annotations

import numpy as np

from .rounding import fp16_bits_to_fp32
from .search import make_qx_quants_t
from .search_kx import Workspace, qkx_search_t

F32 = np.float32
U32 = np.uint32
QK = 32

BLOCK_Q4_0 = np.dtype([("d", "<u2"), ("qs", "u1", (16,))])
BLOCK_Q4_1 = np.dtype([("d", "<u2"), ("m", "<u2"), ("qs", "u1", (16,))])
BLOCK_Q5_0 = np.dtype([("d", "<u2"), ("qh", "u1", (4,)), ("qs", "u1", (16,))])
BLOCK_Q5_1 = np.dtype([("d", "<u2"), ("m", "<u2"), ("qh", "u1", (4,)), ("qs", "u1", (16,))])
BLOCK_Q8_0 = np.dtype([("d", "<u2"), ("qs", "i1", (32,))])
BLOCKS = {"Q4_0": BLOCK_Q4_0, "Q4_1": BLOCK_Q4_1, "Q5_0": BLOCK_Q5_0, "Q5_1": BLOCK_Q5_1, "Q8_0": BLOCK_Q8_0}
for _name, _bytes in (("Q4_0", 18), ("Q4_1", 20), ("Q5_0", 22), ("Q5_1", 24), ("Q8_0", 34)):
    assert BLOCKS[_name].itemsize == _bytes, _name

_REF_CHUNK_BLOCKS = 1 << 13  # blocks per chunk of the reference paths
_IM_CHUNK_BLOCKS = 1 << 13  # blocks per chunk of the imatrix paths (whole rows at least)
_ROUNDF_C = np.nextafter(F32(0.5), F32(0))  # roundf(v) = trunc(v + copysign(0.49999997, v))


def _fp16_bits(x: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16: round to nearest even (numpy's cast; overflow gives inf), as uint16 bits."""
    with np.errstate(over="ignore"):
        return x.astype(np.float16).view(np.uint16)


# --- packing ------------------------------------------------------------------------------

def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """uint8 (m, 32) levels (low 4 bits used) -> qs (m, 16): L[j] & 15 | (L[j+16] & 15) << 4."""
    m = L.shape[0]
    w = np.ascontiguousarray(L).view(U32).reshape(m, 2, 4)
    q = w[:, 1] << U32(4)
    q &= U32(0xF0F0F0F0)
    lo = w[:, 0] & U32(0x0F0F0F0F)
    q |= lo
    return q.view(np.uint8).reshape(m, 16)


def _pack_nibbles_t(Lt: np.ndarray) -> np.ndarray:
    """Transposed levels uint8 (32, m) (values < 16 or < 32) -> qs (m, 16)."""
    return _pack_nibbles(np.ascontiguousarray(Lt.T))


def _pack_high_bits(L: np.ndarray) -> np.ndarray:
    """uint8 (m, 32) levels < 32 -> qh (m, 4): bit k of the little-endian uint32 = bit 4 of L[k]."""
    return np.packbits((L >> 4).astype(bool), axis=1, bitorder="little")


# --- reference paths (no imatrix) -----------------------------------------------------------

def _absmax_signed(xb: np.ndarray) -> np.ndarray:
    """C's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` from 0 -> max float32 (m,)."""
    idx = np.argmax(np.abs(xb), axis=1)
    mx = np.take_along_axis(xb, idx[:, None], axis=1)[:, 0]
    return np.where(mx == 0, F32(0), mx)  # all zero: C keeps max = +0


def _min_max(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `min = FLT_MAX; max = -FLT_MAX; if (v < min) min = v; if (v > max) max = v;` per block.

    The first zero in index order is the min C keeps when the minimum is zero (strict < never
    replaces -0 by +0 or the reverse), so its sign is looked up; the sign of a zero max never
    reaches the bytes (max - min is the same).
    """
    mn = xb.min(axis=1)
    mx = xb.max(axis=1)
    z = np.flatnonzero(mn == 0)
    if z.size:
        sub = xb[z]
        first = np.argmax(sub == 0, axis=1)
        mn[z] = np.where(np.signbit(sub[np.arange(z.size), first]), F32(-0.0), F32(0.0))
    return mn, mx


def _q4_0_ref(xb: np.ndarray, blk: np.ndarray) -> None:
    """quantize_row_q4_0_ref on blocks xb float32 (m, 32) into blk (m,) BLOCK_Q4_0."""
    mx = _absmax_signed(xb)
    d = mx / F32(-8)
    nz = d != 0
    with np.errstate(divide="ignore"):
        idv = np.where(nz, F32(1) / np.where(nz, d, F32(1)), F32(0)).astype(F32)
    v = xb * idv[:, None]
    v += F32(8.5)
    L = v.astype(np.uint8)  # (int8_t) truncation; 0 <= v < 17
    np.minimum(L, np.uint8(15), out=L)
    blk["d"] = _fp16_bits(d)
    blk["qs"] = _pack_nibbles(L)


def _q5_0_ref(xb: np.ndarray, blk: np.ndarray) -> None:
    """quantize_row_q5_0_ref on blocks xb float32 (m, 32) into blk (m,) BLOCK_Q5_0."""
    mx = _absmax_signed(xb)
    d = mx / F32(-16)
    nz = d != 0
    with np.errstate(divide="ignore"):
        idv = np.where(nz, F32(1) / np.where(nz, d, F32(1)), F32(0)).astype(F32)
    v = xb * idv[:, None]
    v += F32(16.5)
    L = v.astype(np.uint8)
    np.minimum(L, np.uint8(31), out=L)
    blk["d"] = _fp16_bits(d)
    blk["qh"] = _pack_high_bits(L)
    blk["qs"] = _pack_nibbles(L)


def _qx_1_ref(xb: np.ndarray, blk: np.ndarray, nmax: int) -> None:
    """quantize_row_q4_1_ref (nmax 15) / q5_1_ref (nmax 31) on blocks xb (m, 32) into blk."""
    mn, mx = _min_max(xb)
    d = np.abs((mx - mn) / F32(nmax))  # C's max - min is never -0 (all zero: both are x[0])
    nz = d != 0
    with np.errstate(divide="ignore"):
        idv = np.where(nz, F32(1) / np.where(nz, d, F32(1)), F32(0)).astype(F32)
    v = xb - mn[:, None]
    v *= idv[:, None]
    v += F32(0.5)
    L = v.astype(np.uint8)  # (int8_t) / (uint8_t) truncation; 0 <= v < 32.5
    if nmax == 15:
        np.minimum(L, np.uint8(15), out=L)  # Q5_1 has no MIN(31, ...)
    blk["d"] = _fp16_bits(d)
    blk["m"] = _fp16_bits(mn)
    if nmax == 31:
        blk["qh"] = _pack_high_bits(L)
    blk["qs"] = _pack_nibbles(L)


def _q8_0_ref(xb: np.ndarray, blk: np.ndarray) -> None:
    """quantize_row_q8_0_ref on blocks xb float32 (m, 32) into blk (m,) BLOCK_Q8_0."""
    amax = np.maximum(xb.max(axis=1), -xb.min(axis=1))  # MAX(amax, fabsf(v)) from 0
    d = amax / F32(127)
    nz = d != 0
    with np.errstate(divide="ignore"):
        idv = np.where(nz, F32(1) / np.where(nz, d, F32(1)), F32(0)).astype(F32)
    v = xb * idv[:, None]
    v += np.copysign(_ROUNDF_C, v)  # roundf: half away from zero, exactly
    blk["d"] = _fp16_bits(np.abs(d))
    blk["qs"] = v.astype(np.int8)  # trunc


_REF = {
    "Q4_0": _q4_0_ref,
    "Q4_1": lambda xb, blk: _qx_1_ref(xb, blk, 15),
    "Q5_0": _q5_0_ref,
    "Q5_1": lambda xb, blk: _qx_1_ref(xb, blk, 31),
    "Q8_0": _q8_0_ref,
}


def _quantize_ref(name: str, rows: np.ndarray) -> np.ndarray:
    """quantize_row_<name>_ref over all rows (blocks are independent), in chunks of blocks."""
    nrows = rows.shape[0]
    xb_all = rows.reshape(-1, QK)
    nb = xb_all.shape[0]
    out = np.empty(nb, dtype=BLOCKS[name])
    fn = _REF[name]
    for a in range(0, nb, _REF_CHUNK_BLOCKS):
        b = min(nb, a + _REF_CHUNK_BLOCKS)
        fn(xb_all[a:b], out[a:b])
    return out.view(np.uint8).reshape(nrows, -1)


# --- imatrix paths ------------------------------------------------------------------------

def _row_sigma2(xr: np.ndarray) -> np.ndarray:
    """sum_x2 = sequential float32 sum of x*x over each row, / n_per_row: xr (r, n) -> (r,)."""
    x2 = xr * xr
    np.add.accumulate(x2, axis=1, out=x2)  # sequential, unlike np.sum's pairwise sum
    return x2[:, -1] / F32(xr.shape[1])


class _ImChunk:
    """One chunk of whole rows for the imatrix paths.

    xt float32 (32, r*nbr): block k = row k // nbr, block k % nbr of it; wt float32 (32, r*nbr)
    = qw[j]*sqrtf(sigma2 + x*x) in C's order of operations.
    """

    def __init__(self, xr: np.ndarray, qwt: np.ndarray, ws: Workspace) -> None:
        r, n = xr.shape
        nbr = n // QK
        sigma2 = _row_sigma2(xr)
        xt = ws.get("leg_xt", (QK, r * nbr))
        xt[...] = xr.reshape(r * nbr, QK).T
        wt = ws.get("leg_wt", (QK, r * nbr))
        np.multiply(xt, xt, out=wt)
        w3 = wt.reshape(QK, r, nbr)
        w3 += sigma2[None, :, None]
        np.sqrt(wt, out=wt)
        w3 *= qwt[:, None, :]
        self.xt, self.wt = xt, wt


def _quantize_im(name: str, rows: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """quantize_row_<name>_impl for every row, in chunks of whole rows."""
    nrows, n = rows.shape
    nbr = n // QK
    out = np.empty((nrows, nbr), dtype=BLOCKS[name])
    qwt = np.ascontiguousarray(imatrix.reshape(nbr, QK).T)  # (32, nbr)
    ws = Workspace()
    step = max(1, _IM_CHUNK_BLOCKS // nbr)
    for a in range(0, nrows, step):
        b = min(nrows, a + step)
        c = _ImChunk(rows[a:b], qwt, ws)
        blk = out[a:b].reshape(-1)
        if name in ("Q4_0", "Q5_0"):
            d, Lt = make_qx_quants_t(c.xt, c.wt, 8 if name == "Q4_0" else 16, 1, ws)
            blk["d"] = _fp16_bits(d)
        else:
            d, the_min, Lt = qkx_search_t(c.xt, c.wt, 15 if name == "Q4_1" else 31, -0.9, 0.05, 36, False,
                                          ws=ws)
            blk["d"] = _fp16_bits(d)
            blk["m"] = _fp16_bits(-the_min)
        L = np.ascontiguousarray(Lt.T)
        if name in ("Q5_0", "Q5_1"):
            blk["qh"] = _pack_high_bits(L)
        blk["qs"] = _pack_nibbles(L)
    return out.view(np.uint8).reshape(nrows, -1)


def _quantizer(name: str):  # noqa: ANN202
    def quantize(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=F32)
        if imatrix is None or name == "Q8_0":  # quantize_q8_0 ignores quant_weights
            return _quantize_ref(name, rows)
        return _quantize_im(name, rows, np.asarray(imatrix, dtype=F32))

    quantize.__name__ = f"quantize_{name.lower()}"
    quantize.__doc__ = f"quantize_{name.lower()}: rows float32 (nrows, n) [, imatrix float32 (n,)] -> uint8 bytes."
    return quantize


# --- dequantize ---------------------------------------------------------------------------

def _levels(blk: np.ndarray, five_bit: bool) -> np.ndarray:
    """The 32 levels of each block as int32 (m, 32): nibbles of qs, plus bit 4 from qh."""
    qs = blk["qs"]
    m = qs.shape[0]
    q = np.empty((m, 32), dtype=np.uint8)
    q[:, :16] = qs & 0x0F
    q[:, 16:] = qs >> 4
    if five_bit:
        hb = np.unpackbits(blk["qh"], axis=1, bitorder="little")  # (m, 32): bit k of qh
        q |= hb << 4
    return q.astype(np.int32)


def _dequantizer(name: str):  # noqa: ANN202
    dt = BLOCKS[name]

    def dequantize(data: np.ndarray, n_per_row: int) -> np.ndarray:
        blk = np.ascontiguousarray(data).reshape(-1).view(dt)
        d = fp16_bits_to_fp32(blk["d"])[:, None]
        if name == "Q8_0":
            y = blk["qs"].astype(F32) * d
        else:
            q = _levels(blk, name in ("Q5_0", "Q5_1"))
            if name == "Q4_0":
                q -= 8
            elif name == "Q5_0":
                q -= 16
            y = q.astype(F32) * d  # int*float: float
            if name in ("Q4_1", "Q5_1"):
                y += fp16_bits_to_fp32(blk["m"])[:, None]  # x*d + m, no FMA
        return y.reshape(data.shape[0], n_per_row)

    dequantize.__name__ = f"dequantize_{name.lower()}"
    dequantize.__doc__ = f"dequantize_row_{name.lower()}: uint8 (nrows, row_bytes) -> float32 (nrows, n_per_row)."
    return dequantize


QUANTIZE: dict = {name: _quantizer(name) for name in BLOCKS}
DEQUANTIZE: dict = {name: _dequantizer(name) for name in BLOCKS}
