"""ik_llama.cpp's ternary BitNet / TriLM types IQ1_BN (1.625 bpw) and IQ2_BN (2 bpw).

Both quantizers (`IQ1BNQuantizer::quantize_one_row_1bn` / `quantize_one_row_2bn` in
ggml/src/iqk/iqk_quantize.cpp, called row by row from `quantize_iq1_bn` / `quantize_iq2_bn`)
ignore the imatrix and map every value to a trit with one threshold per row:

    max = max |x| over the row (C's `std::max(max, fabsf(x))`: a NaN never wins, all-NaN gives 0)
    thresh = 0.5f*max
    q = fabsf(x) < thresh ? 1 : x < 0 ? 0 : 2          (the value is q - 1 in units of max)

Row layout as ggml_quantize_chunk writes it (row meta first):

- IQ1_BN: fp16(max) (2 bytes), then per 64 values a 13-byte block_iq1_bn: `ql[3*i16 + k]`
  packs the trits of values 16*i16 + 5*k + j (j = 0..4) as idx = sum 3^j * q_j, stored as
  (256*idx + 242)/243 so that the decoder can recover trit j from the top bits of
  uint8(ql * 3^(4-j))); `extra` packs the 4 trits of values 16*i16 + 15 the same way.
- IQ2_BN: float32 max (4 bytes), then per 64 values 16 bytes:
  qs[j] = q[j] | q[j+16] << 2 | q[j+32] << 4 | q[j+48] << 6.

Dequantization. ik_llama.cpp's `dequantize_row_iq1_bn` / `dequantize_row_iq2_bn` (the types'
`to_float`) decode the trits only: they never read the row scale, and ggml (get_rows,
llama-quantize's requantize path) and the golden vectors call them with a pointer to the start of
the row, i.e. to the row meta, so they decode the meta bytes as if they were the first block and
stop `row_meta` bytes short of the row's end. `DEQUANTIZE` reproduces that byte-exactly (it is the
reference's behaviour, and what the golden vectors hold); `DEQUANTIZE_SCALED` gives the values the
type stands for (max * (q - 1), as ik's matrix multiplication uses them) for callers that want a
meaningful float tensor.

Everything here is exact (comparisons, a max, small-integer work; no float sums), and the row max is
order-free, so the layout is row-major (nrows, n) in chunks of rows. Speed comes from keeping
inner loops long: the trits are two comparisons per value, IQ1_BN's base-3 groups are formed
eight bytes at a time by one uint64 multiply (`_iq1_groups`), IQ2_BN's 2-bit packing by shifts
on uint64 lanes.
"""

from __future__ import annotations

import numpy as np

from ..numeric import F32, fp16_bits, fp16_bits_to_fp32, ieee
from ..registry import register

__all__ = [
    "CHUNK_VALUES", "DEQUANTIZE", "DEQUANTIZE_SCALED", "QK_IQ1BN", "QUANTIZE", "dequantize_iq1_bn",
    "dequantize_iq1_bn_scaled", "dequantize_iq2_bn", "dequantize_iq2_bn_scaled", "pack243",
    "quantize_iq1_bn", "quantize_iq2_bn", "row_max", "ternary",
]

QK_IQ1BN = 64
"""Values per block of both types."""
IQ1BN_BLOCK = 13
IQ2BN_BLOCK = 16
IQ1BN_META = 2
IQ2BN_META = 4
CHUNK_VALUES = 1 << 18  # values per row chunk (4096 blocks): bounded temporaries, cache friendly

_U8 = np.uint8
_K_MULT = np.array([81, 27, 9, 3, 1], dtype=np.int64)  # IQ1BNQuantizer::k_mult


def pack243(idx: np.ndarray) -> np.ndarray:
    """The byte C stores for a group of trits: (256*idx + k_nb[5] - 1)/k_nb[5] with k_nb[5] = 243,
    idx in 0..242 (uint16 arithmetic: 256*242 + 242 < 2^16) -> uint8, same shape."""
    v = idx.astype(np.uint16)
    v *= np.uint16(256)
    v += np.uint16(242)
    v //= np.uint16(243)
    return v.astype(_U8)


# SWAR weights: multiplying a little-endian word of trit bytes t_0.. by sum_k 3^(4-k) << 8k puts
# sum_j 3^j t_(p-4+j) (j = 0..4) in byte p >= 4 of the product. Every byte sum of the product is
# at most 2*(1+3+9+27+81) = 242 < 256 (trits are <= 2), so no carry ever crosses a byte.
_W5 = np.uint64(81 | 27 << 8 | 9 << 16 | 3 << 24 | 1 << 32)
_W4 = np.uint32(27 | 9 << 8 | 3 << 16 | 1 << 24)  # the same for 4 trits, sum at byte 3


def _iq1_groups(buf: np.ndarray, nv: int) -> np.ndarray:
    """idx = sum_j 3^j q[p + j] of the 5-trit groups at p = 16*c + 5*k of trits buf[:nv] (uint8,
    buf padded to nv + 8 bytes) -> uint8 (nv/16, 3): row c = 4*block + i16, column k (ql's order).

    Groups 0 and 2 (values 0-4, 10-14 of each 16) are bytes 4 and 6 of the aligned words at 16*c
    and 16*c + 8 times _W5; group 1 (values 5-9) is byte 5 of the word at 16*c + 4 times _W5."""
    a = buf[:nv].view("<u8") * _W5
    b = np.ndarray((nv // 8,), dtype="<u8", buffer=buf, offset=4) * _W5
    ab, bb = a.view(_U8), b.view(_U8)
    g = np.empty((nv // 16, 3), _U8)
    g[:, 0] = ab[4::16]
    g[:, 1] = bb[5::16]
    g[:, 2] = ab[14::16]
    return g


def _iq1_extra(q: np.ndarray) -> np.ndarray:
    """v13 = sum_i16 3^i16 q[64*b + 16*i16 + 15] of trits q (uint8, flat) -> uint8 (nblocks,)."""
    e = np.ascontiguousarray(q[15::16]).view("<u4") * _W4
    return (e >> np.uint32(24)).astype(_U8)


def _trit_table() -> np.ndarray:
    """dequantize_row_iq1_bn's decoding of one byte b: for j = 0..4, v = uint8(b*k_mult[j]),
    int8_t vs = (v + (v >> 1)) >> 7, value vs - 1 -> float32 (256, 5)."""
    b = np.arange(256, dtype=np.int64)[:, None]
    v = (b * _K_MULT[None, :]) & 0xFF
    return (((v + (v >> 1)) >> 7) - 1).astype(F32)


_TRITS = _trit_table()


def _row_step(n: int) -> int:
    """Rows per chunk for rows of n values."""
    return max(1, CHUNK_VALUES // max(n, 1))


def _check_n(n: int) -> None:
    if n % QK_IQ1BN:
        raise ValueError(f"row length {n} is not a multiple of {QK_IQ1BN}")


def row_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IQ1BNQuantizer's row max: `max = 0; max = std::max(max, fabsf(x[j]))` -> (max float32 (r,),
    rows holding a NaN bool (r,)). From the row max and min (|max(hi, -lo)|: +0 for a row of -0,
    as fabsf gives); std::max(a, b) is `a < b ? b : a`, so a NaN never replaces the running max
    (np.fmax from 0 on the rows with a NaN, which np.max propagates)."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0], F32), np.zeros(x.shape[0], bool)
    hi = np.max(x, axis=1)
    m = np.maximum(hi, np.negative(np.min(x, axis=1)))
    np.abs(m, out=m)
    nan = np.isnan(hi)
    if nan.any():
        m[nan] = np.fmax.reduce(np.abs(x[nan]), axis=1, initial=F32(0))
    return m.astype(F32, copy=False), nan


def ternary(x: np.ndarray, mx: np.ndarray, nan_rows: np.ndarray | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
    """The trits of rows x float32 (r, n) with row maxima mx (r,): `fabsf(v) < thresh ? 1 : v < 0 ?
    0 : 2` with thresh = 0.5f*max -> uint8 (r, n) (into `out` if given).

    Fast form (x > -t) + (x >= t), equal to C's wherever t > 0 or x is not ±0 / NaN; the rows
    where that may not hold (t == 0, or nan_rows: a NaN in the row; None: look) use C's form."""
    t = (F32(0.5) * mx.astype(F32))[:, None]
    q = np.empty(x.shape, _U8) if out is None else out
    np.greater(x, -t, out=q.view(bool))
    q += np.greater_equal(x, t).view(_U8)
    if nan_rows is None:
        nan_rows = np.isnan(x).any(axis=1)
    slow = (t[:, 0] == 0) | nan_rows
    if slow.any():
        xs, ts = x[slow], t[slow]
        small = np.abs(xs) < ts
        q[slow] = small.view(_U8) + ((~(small | (xs < 0))).view(_U8) << _U8(1))
    return q


@ieee
def quantize_iq1_bn(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_iq1_bn (imatrix unused, as in C): rows float32 (nrows, n) -> uint8 (nrows, 2 + n/64*13),
    fp16 row max first."""
    del imatrix
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = x.shape
    _check_n(n)
    nb = n // QK_IQ1BN
    out = np.empty((nrows, IQ1BN_META + nb * IQ1BN_BLOCK), _U8)
    step = _row_step(n)
    for a in range(0, nrows, step):
        xc = x[a:a + step]
        r = xc.shape[0]
        mx, nan_rows = row_max(xc)
        out[a:a + r, :IQ1BN_META] = fp16_bits(mx).reshape(r, 1).view(_U8)
        nv = r * n
        buf = np.empty(nv + 8, _U8)  # the trits, padded for the 8-byte reads below
        buf[nv:] = 0
        ternary(xc, mx, nan_rows, out=buf[:nv].reshape(r, n))
        blk = out[a:a + r, IQ1BN_META:].reshape(r, nb, IQ1BN_BLOCK)
        blk[..., :12] = pack243(_iq1_groups(buf, nv)).reshape(r, nb, 12)
        blk[..., 12] = pack243(_iq1_extra(buf[:nv])).reshape(r, nb)
    return out


@ieee
def quantize_iq2_bn(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """quantize_iq2_bn (imatrix unused, as in C): rows float32 (nrows, n) -> uint8 (nrows, 4 + n/64*16),
    float32 row max first."""
    del imatrix
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = x.shape
    _check_n(n)
    nb = n // QK_IQ1BN
    out = np.empty((nrows, IQ2BN_META + nb * IQ2BN_BLOCK), _U8)
    step = _row_step(n)
    for a in range(0, nrows, step):
        xc = x[a:a + step]
        r = xc.shape[0]
        mx, nan_rows = row_max(xc)
        out[a:a + r, :IQ2BN_META] = mx.reshape(r, 1).view(_U8)
        q = ternary(xc, mx, nan_rows).reshape(r, nb, 4, 16)  # q[:, :, g, j] is value j + 16*g
        # 8 trits per uint64 lane: each byte is <= 2, so shifts by <= 6 stay inside their byte
        q64 = q.view(np.uint64)  # (r, nb, 4, 2)
        qs = q64[:, :, 3] << np.uint64(6)
        qs |= q64[:, :, 2] << np.uint64(4)
        qs |= q64[:, :, 1] << np.uint64(2)
        qs |= q64[:, :, 0]
        out[a:a + r, IQ2BN_META:] = qs.view(_U8).reshape(r, nb * IQ2BN_BLOCK)
    return out


def _iq1_trits(blocks: np.ndarray) -> np.ndarray:
    """dequantize_row_iq1_bn on blocks uint8 (r, nb, 13) -> float32 (r, nb*64), values in {-1, 0, 1}."""
    r, nb, _ = blocks.shape
    y = np.empty((r, nb, 4, 16), F32)
    y[..., :15] = _TRITS[blocks[..., :12]].reshape(r, nb, 4, 15)
    y[..., 15] = _TRITS[blocks[..., 12], :4]  # extra * k_mult[i16], i16 = 0..3
    return y.reshape(r, nb * QK_IQ1BN)


def _iq2_trits(qs: np.ndarray) -> np.ndarray:
    """dequantize_row_iq2_bn on blocks uint8 (r, nb, 16) -> float32 (r, nb*64): y[j + 16*g] =
    0.25^g * (qs[j] & (3 << 2g)) - 1, i.e. the 2-bit field minus 1, exactly."""
    r, nb, _ = qs.shape
    y = np.empty((r, nb, 4, 16), F32)
    for g in range(4):
        y[:, :, g] = ((qs >> _U8(2 * g)) & _U8(3)).astype(F32) - F32(1)
    return y.reshape(r, nb * QK_IQ1BN)


def _rows(data: np.ndarray, n: int, meta: int, bsize: int) -> np.ndarray:
    _check_n(n)
    d = np.ascontiguousarray(data, dtype=_U8)
    return d.reshape(-1, meta + (n // QK_IQ1BN) * bsize)


def dequantize_iq1_bn(data: np.ndarray, n: int) -> np.ndarray:
    """ggml's to_float for IQ1_BN on each row, byte-exact: `dequantize_row_iq1_bn(row, y, n)` with
    `row` the start of the row (its fp16 meta read as block bytes, no scale applied) -> float32 (nrows, n)."""
    d = _rows(data, n, IQ1BN_META, IQ1BN_BLOCK)
    nb = n // QK_IQ1BN
    return _iq1_trits(d[:, :nb * IQ1BN_BLOCK].reshape(-1, nb, IQ1BN_BLOCK))


def dequantize_iq2_bn(data: np.ndarray, n: int) -> np.ndarray:
    """ggml's to_float for IQ2_BN on each row, byte-exact: `dequantize_row_iq2_bn(row, y, n)` with
    `row` the start of the row (its float32 meta read as block bytes, no scale) -> float32 (nrows, n)."""
    d = _rows(data, n, IQ2BN_META, IQ2BN_BLOCK)
    nb = n // QK_IQ1BN
    return _iq2_trits(d[:, :nb * IQ2BN_BLOCK].reshape(-1, nb, IQ2BN_BLOCK))


@ieee
def dequantize_iq1_bn_scaled(data: np.ndarray, n: int) -> np.ndarray:
    """The values an IQ1_BN row stands for: fp16 row scale * trit (the blocks after the meta)."""
    d = _rows(data, n, IQ1BN_META, IQ1BN_BLOCK)
    s = fp16_bits_to_fp32(np.ascontiguousarray(d[:, :IQ1BN_META]).view(np.uint16))  # (nrows, 1)
    t = _iq1_trits(d[:, IQ1BN_META:].reshape(d.shape[0], -1, IQ1BN_BLOCK))
    return t * s


@ieee
def dequantize_iq2_bn_scaled(data: np.ndarray, n: int) -> np.ndarray:
    """The values an IQ2_BN row stands for: float32 row scale * trit (the blocks after the meta)."""
    d = _rows(data, n, IQ2BN_META, IQ2BN_BLOCK)
    s = np.ascontiguousarray(d[:, :IQ2BN_META]).view(F32)  # (nrows, 1)
    t = _iq2_trits(d[:, IQ2BN_META:].reshape(d.shape[0], -1, IQ2BN_BLOCK))
    return t * s


QUANTIZE: dict = {"IQ1_BN": quantize_iq1_bn, "IQ2_BN": quantize_iq2_bn}
DEQUANTIZE: dict = {"IQ1_BN": dequantize_iq1_bn, "IQ2_BN": dequantize_iq2_bn}
DEQUANTIZE_SCALED: dict = {"IQ1_BN": dequantize_iq1_bn_scaled, "IQ2_BN": dequantize_iq2_bn_scaled}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name], mainline=())  # ik_llama.cpp's own type
