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

Layout of the work: both paths transpose a chunk of blocks to (32, n_blocks) = [index in block,
block] (in tiles: a plain strided transpose costs several times more), where every per-block
reduction is a plain reduction down axis 0 (in C's order where order matters) and every
per-block scalar is a row. The imatrix paths take whole rows per chunk, go through the row
transpose (n_per_row, rows) for the sequential sum_x2, and run the searches of search.py /
search_kx.py there. Levels are packed on that layout four bytes at a time as uint32 words (no bits
cross a byte) and the words transposed back into the blocks.

Speed (one core, 256 x 4096 gaussian rows): plain 270-390 M weights/s (ggml 260-1150), with
imatrix Q4_0 / Q5_0 ~37 M/s (ggml 31.5), Q4_1 / Q5_1 ~9 M/s (ggml 7.6).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .numeric import first_zero_signbit, fp16_bits, seq_sum0
from .registry import register
from .rounding import fp16_bits_to_fp32
from .scratch import Workspace
from .search import first_absmax_t, qx_search_state_t
from .search_kx import qkx_search_state_t, recompute_L_t

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


# --- packing ------------------------------------------------------------------------------

def _pack_t(Lu: np.ndarray, five_bit: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Levels uint32 (32, nb) (< 16, or < 32 when five_bit) -> (qs as uint32 words (4, nb),
    qh uint32 (nb,) or None), little-endian: byte t of word k is qs[4k + t]."""
    lo = Lu[:16] & U32(15) if five_bit else Lu[:16].copy()
    hi = Lu[16:] & U32(15) if five_bit else Lu[16:]
    hi <<= U32(4)
    lo |= hi  # (16, nb): qs[j] = L[j] | L[j+16] << 4
    lo3 = lo.reshape(4, 4, -1)
    lo3 <<= np.array([0, 8, 16, 24], dtype=U32)[None, :, None]
    qs = np.bitwise_or.reduce(lo3, axis=1)
    qh = None
    if five_bit:
        h = Lu >> U32(4)
        h <<= np.arange(32, dtype=U32)[:, None]
        qh = np.bitwise_or.reduce(h, axis=0)
    return qs, qh


# --- reference paths (no imatrix) -----------------------------------------------------------
#
# Every function here takes a chunk of blocks transposed to xt float32 (32, m) = [index in block,
# block] (so per-block reductions are plain reductions down axis 0 and per-block scalars are rows)
# and writes blk (m,) of the type's block dtype.

_TILE_BLOCKS = 256  # blocks per tile of the block transpose (fastest here)


def _blocks_t(xb: np.ndarray, out: np.ndarray) -> None:
    """xb float32 (m, 32) -> out (32, m), in tiles (a plain strided transpose is ~3x slower)."""
    m = xb.shape[0]
    for a in range(0, m, _TILE_BLOCKS):
        b = min(m, a + _TILE_BLOCKS)
        out[:, a:b] = xb[a:b].T


def _inverse(d: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """C's `id = d ? 1.0f/d : 0.0f` -> (id float32 (m,), the blocks where 1/d overflowed or None).

    In those blocks (|d| below ~3e-39) C's x*id is +-inf or NaN, and its float -> int8/uint8
    conversion (cvttss2si, low byte) stores 0 for every value.
    """
    nz = d != 0
    with np.errstate(divide="ignore", over="ignore"):
        idv = np.where(nz, F32(1) / np.where(nz, d, F32(1)), F32(0)).astype(F32)
    bad = ~np.isfinite(idv)
    return idv, (bad if bad.any() else None)


def _write_qs(blk: np.ndarray, qs: np.ndarray, qh: np.ndarray | None) -> None:
    """Store packed words: qs uint32 (4, m) -> blk["qs"] (m, 16), qh uint32 (m,) -> blk["qh"]."""
    m = qs.shape[1]
    blk["qs"] = np.ascontiguousarray(qs.T).view(np.uint8).reshape(m, 16)
    if qh is not None:
        blk["qh"] = qh.view(np.uint8).reshape(m, 4)


def _qx_0_ref_t(xt: np.ndarray, blk: np.ndarray, nmax: int, ws: Workspace) -> None:
    """quantize_row_q4_0_ref (nmax 8) / q5_0_ref (nmax 16): d = max/-nmax (max = the value of
    largest |x|, first wins), L = MIN(2*nmax-1, (int8_t)(x*id + nmax + 0.5))."""
    m = xt.shape[1]
    _, mx = first_absmax_t(xt)
    d = mx / F32(-nmax)
    idv, bad = _inverse(d)
    v = np.multiply(xt, idv, out=ws.get("ref_v", xt.shape))
    Lu = ws.get("ref_L", xt.shape, U32)
    np.add(v, F32(nmax + 0.5), out=Lu, casting="unsafe")  # >= 0.5: truncation = (int8_t)
    np.minimum(Lu, np.full(m, 2 * nmax - 1, dtype=U32), out=Lu)
    if bad is not None:
        Lu[:, bad] = 0
    blk["d"] = fp16_bits(d)
    _write_qs(blk, *_pack_t(Lu, nmax == 16))


def _qx_1_ref_t(xt: np.ndarray, blk: np.ndarray, nmax: int, ws: Workspace) -> None:
    """quantize_row_q4_1_ref (nmax 15) / q5_1_ref (nmax 31): min/max from FLT_MAX / -FLT_MAX with
    strict compares, d = (max - min)/nmax, L = (int8_t|uint8_t)((x - min)*id + 0.5) (MIN 15 for
    Q4_1; Q5_1 has none). When the minimum is zero, its sign is that of the first zero (strict <
    never replaces one zero by another); C's max - min is never -0 (all zero: both are x[0])."""
    m = xt.shape[1]
    mn = xt.min(axis=0)
    mx = xt.max(axis=0)
    z = np.flatnonzero(mn == 0)
    if z.size:
        mn[z] = np.where(first_zero_signbit(xt, z), F32(-0.0), F32(0.0))
    d = np.abs((mx - mn) / F32(nmax))
    idv, bad = _inverse(d)
    v = np.subtract(xt, mn, out=ws.get("ref_v", xt.shape))
    v *= idv
    Lu = ws.get("ref_L", xt.shape, U32)
    np.add(v, F32(0.5), out=Lu, casting="unsafe")  # >= 0.5: truncation
    if nmax == 15:
        np.minimum(Lu, np.full(m, 15, dtype=U32), out=Lu)
    if bad is not None:
        Lu[:, bad] = 0
    blk["d"] = fp16_bits(d)
    blk["m"] = fp16_bits(mn)
    _write_qs(blk, *_pack_t(Lu, nmax == 31))


def _q8_0_ref_t(xt: np.ndarray, blk: np.ndarray, ws: Workspace) -> None:
    """quantize_row_q8_0_ref: d = max|x|/127, qs = roundf(x*id) as int8."""
    m = xt.shape[1]
    amax = np.abs(np.maximum(xt.max(axis=0), -xt.min(axis=0)))  # MAX(amax, fabsf(v)) from +0
    d = amax / F32(127)
    idv, bad = _inverse(d)
    v = np.multiply(xt, idv, out=ws.get("ref_v", xt.shape))
    c = np.copysign(_ROUNDF_C, v, out=ws.get("ref_c", xt.shape))
    Li = ws.get("ref_L", xt.shape, np.int32)
    np.add(v, c, out=Li, casting="unsafe")  # roundf: trunc(v + copysign(0.49999997, v)), exactly
    if bad is not None:
        Li[:, bad] = 0
    Lw = Li.view(U32)
    Lw &= U32(0xFF)
    L4 = Lw.reshape(8, 4, m)  # byte 4k + t of the block -> byte t of word k
    L4 <<= np.array([0, 8, 16, 24], dtype=U32)[None, :, None]
    qs = np.bitwise_or.reduce(L4, axis=1)  # (8, m)
    blk["d"] = fp16_bits(d)
    blk["qs"] = np.ascontiguousarray(qs.T).view(np.int8).reshape(m, 32)


_REF = {
    "Q4_0": lambda xt, blk, ws: _qx_0_ref_t(xt, blk, 8, ws),
    "Q4_1": lambda xt, blk, ws: _qx_1_ref_t(xt, blk, 15, ws),
    "Q5_0": lambda xt, blk, ws: _qx_0_ref_t(xt, blk, 16, ws),
    "Q5_1": lambda xt, blk, ws: _qx_1_ref_t(xt, blk, 31, ws),
    "Q8_0": _q8_0_ref_t,
}


def _quantize_ref(name: str, rows: np.ndarray) -> np.ndarray:
    """quantize_row_<name>_ref over all rows (blocks are independent), in chunks of blocks."""
    nrows = rows.shape[0]
    xb_all = rows.reshape(-1, QK)
    nb = xb_all.shape[0]
    out = np.empty(nb, dtype=BLOCKS[name])
    fn = _REF[name]
    ws = Workspace()
    for a in range(0, nb, _REF_CHUNK_BLOCKS):
        b = min(nb, a + _REF_CHUNK_BLOCKS)
        xt = ws.get("ref_xt", (QK, b - a))
        _blocks_t(xb_all[a:b], xt)
        with np.errstate(invalid="ignore", over="ignore"):
            fn(xt, out[a:b], ws)
    return out.view(np.uint8).reshape(nrows, -1)


# --- imatrix paths ------------------------------------------------------------------------

_TILE_ROWS = 8  # rows per tile of the row transpose (8 floats = 32-byte runs: fastest here)


def _rows_t(xr: np.ndarray, out: np.ndarray) -> None:
    """Transpose rows xr float32 (r, n) into out (n // 32, 32, r) = [block, index, row], in tiles
    of a few rows (a plain strided transpose is several times slower)."""
    r, n = xr.shape
    nbr = n // QK
    for a in range(0, r, _TILE_ROWS):
        b = min(r, a + _TILE_ROWS)
        out[:, :, a:b] = xr[a:b].reshape(b - a, nbr, QK).transpose(1, 2, 0)


def _qx_levels_u32(xt: np.ndarray, isc: np.ndarray, nmax: int, zero: np.ndarray, t: np.ndarray,
                   out: np.ndarray) -> np.ndarray:
    """make_qx_quants' L = nmax + clamp(nearest_int(isc*x), -nmax, nmax-1) as uint32 (32, nb) into
    out, 0 in all-zero blocks: search.qx_levels_t with the + nmax and the cast in one pass.
    t: float32 scratch (32, nb)."""
    np.multiply(xt, isc, out=t)
    np.rint(t, out=t)
    nb = xt.shape[1]
    np.minimum(t, np.full(nb, F32(nmax - 1), dtype=F32), out=t)
    np.maximum(t, np.full(nb, F32(-nmax), dtype=F32), out=t)
    np.add(t, F32(nmax), out=out, casting="unsafe")  # small non-negative integers: exact
    if zero.any():
        out[:, zero] = 0
    return out


QxSearch = Callable[[np.ndarray, np.ndarray, int, Workspace, np.ndarray], np.ndarray]


def mainline_qx(xt: np.ndarray, wt: np.ndarray, nmax: int, ws: Workspace, Lu: np.ndarray) -> np.ndarray:
    """make_qx_quants(32, nmax, x, L, 1, w) per column of xt, wt (32, nb): returns d (nb,) and
    writes C's L[] into Lu uint32 (32, nb). wt is overwritten (scratch)."""
    d, isc, zero = qx_search_state_t(xt, wt, nmax, 1, ws)
    _qx_levels_u32(xt, isc, nmax, zero, wt, Lu)
    return d


def quantize_with_imatrix(name: str, rows: np.ndarray, imatrix: np.ndarray, qx: QxSearch = mainline_qx) -> np.ndarray:
    """quantize_row_<name>_impl for every row, in chunks of whole rows. qx: the make_qx_quants
    of Q4_0 / Q5_0 (mainline's, or ik_llama.cpp's).

    Per chunk of r rows: X1 (n/32, 32, r) = the rows transposed, then squared in place, so
    sum_x2 is one sequential reduction down axis 0 of (n, r), SIMD across rows; xt, wt
    (32, n/32, r) = the search layout (index in block first; block order (block in row, row));
    the levels are built and packed on that layout and the packed words transposed back into the
    blocks. Few, reused buffers: the working set decides the speed.
    """
    nrows, n = rows.shape
    nbr = n // QK
    five = name in ("Q5_0", "Q5_1")
    out = np.empty((nrows, nbr), dtype=BLOCKS[name])
    qw3 = np.ascontiguousarray(imatrix.reshape(nbr, QK).T)[:, :, None]  # (32, nbr, 1)
    ws = Workspace()
    step = max(1, _IM_CHUNK_BLOCKS // nbr)
    for a in range(0, nrows, step):
        b = min(nrows, a + step)
        r = b - a
        nb = nbr * r
        X1 = ws.get("leg_X1", (nbr, QK, r))
        _rows_t(rows[a:b], X1)
        xt = ws.get("leg_xt", (QK, nbr, r))
        xt[...] = X1.transpose(1, 0, 2)
        X1 *= X1
        sigma2 = seq_sum0(X1.reshape(n, r)) / F32(n)  # C's sum_x2/n_per_row
        wt = ws.get("leg_wt", (QK, nbr, r))
        np.multiply(xt, xt, out=wt)
        wt += sigma2  # sigma2 + x*x
        np.sqrt(wt, out=wt)
        wt *= qw3  # qw[j] * sqrtf(...)
        xt = xt.reshape(QK, nb)
        wt = wt.reshape(QK, nb)
        if nb == 1:  # one block: numpy would sum its single column pairwise; search two copies
            xt = np.repeat(xt, 2, axis=1)
            wt = np.repeat(wt, 2, axis=1)
        if nb > 1:
            Lu = X1.reshape(-1).view(U32).reshape(xt.shape)  # X1 is free again
        else:
            Lu = np.empty(xt.shape, dtype=U32)
        if name in ("Q4_0", "Q5_0"):
            nmax = 8 if name == "Q4_0" else 16
            d = qx(xt, wt, nmax, ws, Lu)
        else:
            nmax = 15 if name == "Q4_1" else 31
            d, the_min, isc, mnu, deg = qkx_search_state_t(xt, wt, nmax, -0.9, 0.05, 36, False, ws=ws)
            Lu[...] = recompute_L_t(xt, isc, mnu, deg, nmax)
        qs, qh = _pack_t(Lu[:, :nb], five)
        d = d[:nb]
        blk = out[a:b]  # (r, nbr); search block k = i*r + row
        blk["d"] = fp16_bits(d).reshape(nbr, r).T
        if name in ("Q4_1", "Q5_1"):
            blk["m"] = fp16_bits(-the_min[:nb]).reshape(nbr, r).T
        if qh is not None:
            blk["qh"] = np.ascontiguousarray(qh.reshape(nbr, r).T).view(np.uint8).reshape(r, nbr, 4)
        blk["qs"] = np.ascontiguousarray(qs.reshape(4, nbr, r).transpose(2, 1, 0)).view(np.uint8).reshape(r, nbr, 16)
    return out.view(np.uint8).reshape(nrows, -1)


def _quantizer(name: str):  # noqa: ANN202
    def quantize(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=F32)
        if imatrix is None or name == "Q8_0":  # quantize_q8_0 ignores quant_weights
            return _quantize_ref(name, rows)
        return quantize_with_imatrix(name, rows, np.asarray(imatrix, dtype=F32))

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
for _n in BLOCKS:  # ik_llama.cpp has its own imatrix search for Q4_0..Q5_1 (ik/legacy_ik.py); Q8_0 is the same
    register(_n, QUANTIZE[_n], DEQUANTIZE[_n], ik=(False, True) if _n == "Q8_0" else (False,))
