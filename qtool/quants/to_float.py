"""Dequantize rows straight to the bytes of a float type (F16 / BF16 / F32): `qtool dequantize`'s
hot path, and every quantize run whose output type is a float.

The bytes are those of the engine's dequantize (float32) followed by the float type's quantize
(qtool.quants.floats): ggml's fp32 -> fp16 rounding is to nearest even, a NaN becomes 0x7E00 with
its sign. What differs is the speed (numpy's float32 -> float16 cast is scalar here, ~250 M
values/s):

- `fp32_to_fp16_bits` rounds with integer ops on the float32 bits (~1.5-2x numpy's cast), in
  chunks that stay in the L2 cache; a chunk holding a NaN, an inf or |x| >= 65536 goes through the
  exact (numpy) path, and so does each nonzero |x| below 2^-14 (a subnormal fp16).
- Q8_0 / Q5_0 / Q4_0 values are q * d, exact in float32 (an int8 times an fp16), so their fp16 is a
  function of (d's 16 bits, q): a table per d exponent (built on first use, with the exact path)
  and one gather per value replace the dequantize and the cast.
- other types: the engine's dequantize of a chunk of rows (float32 in cache), then the fast cast.
"""

from __future__ import annotations

import threading

import numpy as np

from .engine import dequantize
from .rounding import fp16_bits_ggml, fp32_to_bf16_bits
from .types import QType, get_type

U16, U32, F32 = np.uint16, np.uint32, np.float32
CHUNK = 1 << 16
"""Values per chunk of the fast paths: the float32 chunk, its uint32 temporary and the result
(~0.6 MB; the table path's intp index 0.5 MB) stay in a 2 MB L2. 16 K values pay more numpy
call overhead per value; 128 K was no faster (noisy measurements on a shared 2-core VM)."""
FLOAT_TARGETS = ("F16", "BF16", "F32")
_SCALE_DOWN = F32(2.0**-112)  # f32 exponent 127+e -> 15+e: f16's exponent field, exact for normals
_HUGE = U32(31 << 24)  # y's bits << 1 for |x| = 65536: from there on (inf, NaN too) the fast path is wrong
_SUBNORMAL = U32((1 << 24) - 1)  # (bits << 1) - 1 of the smallest normal float32, 2^-126


class _F16Scratch:
    """The fast cast's chunk buffers (one set per thread, reused)."""

    def __init__(self) -> None:
        self.y = np.empty(CHUNK, F32)
        self.t = np.empty(CHUNK, U32)


_SCRATCH = threading.local()  # one set of chunk buffers per thread


def fp32_to_fp16_bits(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values -> their float16 bits (uint16, x's shape), exactly `fp16_bits_ggml`.

    Per chunk: y = x * 2^-112 puts a normal fp16's exponent in the float32 exponent field (and keeps
    0 at 0), rounding to nearest even is `(bits + 0xfff + lsb) >> 13`, the low 16 bits of that are
    exponent and mantissa, the sign is moved from bit 31 to 15. Exact for 0 and for |x| in
    [2^-14, 65536) (65520 and up round to inf as in C); a chunk with a NaN, an inf or a larger value,
    and the values with a nonzero |x| below 2^-14 (y subnormal: rounded once already, the second
    rounding could be off) go through the slow path."""
    xf = np.ascontiguousarray(x, dtype=F32)
    shape = xf.shape
    xf = xf.reshape(-1)
    o = np.empty(xf.size, U16) if out is None else out.reshape(-1)
    if xf.size == 0:
        return o.reshape(shape)
    sc: _F16Scratch | None = getattr(_SCRATCH, "f16", None)
    if sc is None or sc.y.size != CHUNK:
        sc = _SCRATCH.f16 = _F16Scratch()
    with np.errstate(invalid="ignore"):  # a signalling NaN in x (its chunk goes the slow way)
        _fp16_chunks(xf, o, sc)
    return o.reshape(shape)


def _fp16_chunks(xf: np.ndarray, o: np.ndarray, sc: _F16Scratch) -> None:
    """fp32_to_fp16_bits' loop: xf float32 (n,) -> o uint16 (n,), CHUNK values at a time."""
    for a in range(0, xf.size, CHUNK):
        b = min(xf.size, a + CHUNK)
        n = b - a
        y, t, oc = sc.y[:n], sc.t[:n], o[a:b]
        yu = y.view(U32)
        np.multiply(xf[a:b], _SCALE_DOWN, out=y)
        np.left_shift(yu, U32(1), out=t)  # |y|'s bits, shifted: 0 for +-0, < 2^24 when y is subnormal
        if t.max() >= _HUGE:  # NaN, inf or |x| >= 65536 (rare): the chunk exactly
            oc[:] = fp16_bits_ggml(xf[a:b])
            continue
        np.subtract(t, U32(1), out=t)  # 0 -> 0xffffffff
        tiny = np.flatnonzero(t < _SUBNORMAL) if t.min() < _SUBNORMAL else None  # nonzero |x| < 2^-14
        np.right_shift(yu, U32(13), out=t)
        np.bitwise_and(t, U32(1), out=t)
        np.add(yu, t, out=yu)
        np.add(yu, U32(0xFFF), out=yu)  # round to nearest even at bit 13 (carries into the exponent)
        np.right_shift(yu, U32(16), out=t)
        np.bitwise_and(t, U32(0x8000), out=t)  # the sign, on bit 15
        np.right_shift(yu, U32(13), out=yu)  # exponent and mantissa on bits 0-14, bits 15-17 zero
        np.bitwise_or(yu, t, out=yu)
        np.copyto(oc, yu, casting="unsafe")  # the low 16 bits
        if tiny is not None:  # y was subnormal, rounded once already: those values exactly
            oc[tiny] = fp16_bits_ggml(xf[a:b][tiny])


# --- q * d types: a table per d exponent ------------------------------------------------------

class _QdTable:
    """fp16 bits of q * d for every fp16 d (its 16 bits) and level q of a type: rows [d16, code],
    filled 1024 d values (one sign and exponent) at a time on first use. Virtual memory for all
    65536 rows (64 K x levels x 2 bytes: 32 MB for Q8_0); only filled rows are touched."""

    def __init__(self, levels: np.ndarray) -> None:
        self.levels = levels.astype(F32)  # value of each code (the code indexes a row)
        self.n = levels.size
        self.table = np.empty(65536 * self.n, U16)
        self.filled = np.zeros(64, dtype=bool)

    def ensure(self, d16: np.ndarray) -> None:
        """Fill the rows of every sign/exponent that d16 (uint16) uses."""
        used = np.zeros(64, dtype=bool)
        used[d16 >> 10] = True
        for e in np.flatnonzero(used & ~self.filled).tolist():  # at most 64 groups ever, not per block
            d = np.arange(e << 10, (e + 1) << 10, dtype=np.uint32).astype(U16).view(np.float16).astype(F32)
            with np.errstate(invalid="ignore"):  # inf * 0: NaN, as in C
                vals = d[:, None] * self.levels[None, :]  # exact: an fp16 times a small integer
            self.table[e * 1024 * self.n:(e + 1) * 1024 * self.n] = fp16_bits_ggml(vals).reshape(-1)
            self.filled[e] = True


_TABLES: dict[str, _QdTable] = {}


def _table(name: str) -> _QdTable:
    t = _TABLES.get(name)
    if t is None:
        levels: np.ndarray
        if name == "Q8_0":
            levels = np.arange(256, dtype=np.uint8).view(np.int8)  # code = the int8's byte
        elif name == "Q5_0":
            levels = np.arange(32) - 16
        else:  # Q4_0
            levels = np.arange(16) - 8
        t = _TABLES[name] = _QdTable(levels)
    return t


_QD_TYPES = {"Q8_0": 34, "Q5_0": 22, "Q4_0": 18}  # block bytes: d (fp16) first, 32 values


def _codes(blk: np.ndarray, name: str, q: np.ndarray) -> np.ndarray:
    """Level codes of Q4_0 / Q5_0 blocks (m, type_size) into q (m, 32) uint8: the nibbles, plus bit 4
    from qh for Q5_0 (as dequantize_row_q5_0: values j and j + 16 share byte j). Q8_0's codes are
    its bytes."""
    qs = blk[:, 6:] if name == "Q5_0" else blk[:, 2:]
    np.bitwise_and(qs, 0x0F, out=q[:, :16])
    np.right_shift(qs, 4, out=q[:, 16:])
    if name == "Q5_0":
        hb = np.unpackbits(blk[:, 2:6], axis=1, bitorder="little")  # bit k of qh: value k's bit 4
        hb <<= 4
        q |= hb
    return q


def _qd_to_f16(data: np.ndarray, name: str, out: np.ndarray) -> None:
    """Blocks of a q * d type -> fp16 bits, through the type's table, a chunk of blocks at a time."""
    bs = _QD_TYPES[name]
    blk_all = data.reshape(-1, bs)
    tab = _table(name)
    d16_all = np.ascontiguousarray(blk_all[:, :2]).view(U16).reshape(-1)
    tab.ensure(d16_all)
    o = out.reshape(-1, 32)
    step = CHUNK // 32
    idx = np.empty((step, 32), dtype=np.intp)
    codes = np.empty((step, 32), dtype=np.uint8)
    for a in range(0, blk_all.shape[0], step):
        b = min(blk_all.shape[0], a + step)
        base = d16_all[a:b].astype(np.intp)
        base *= tab.n
        ix = idx[:b - a]
        np.copyto(ix, blk_all[a:b, 2:] if name == "Q8_0" else _codes(blk_all[a:b], name, codes[:b - a]))
        ix += base[:, None]  # one dtype: a mixed uint8 + intp sum runs through numpy's buffered cast
        np.take(tab.table, ix, out=o[a:b], mode="clip")  # in range by construction; "raise" checks cost


# --- entry point --------------------------------------------------------------------------------

def dequantize_to(data: np.ndarray, qtype: str | QType, n_per_row: int, target: str) -> np.ndarray:
    """Rows of `qtype` bytes (nrows, row_bytes) -> the same rows as `target` (F16, BF16 or F32)
    bytes, uint8 (nrows, target row bytes): what quantize(dequantize(data), target) gives."""
    qt = get_type(qtype)
    d = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, qt.row_bytes(n_per_row))
    nrows = d.shape[0]  # (a tensor already of the target type is copied by the runner, not converted)
    if target == "F32":
        return np.ascontiguousarray(dequantize(d, qt, n_per_row), dtype="<f4").view(np.uint8).reshape(nrows, -1)
    if target == "BF16":
        y = dequantize(d, qt, n_per_row)
        return np.ascontiguousarray(fp32_to_bf16_bits(y).astype("<u2")).view(np.uint8).reshape(nrows, -1)
    if target != "F16":
        raise ValueError(f"{target} is not a float type ({', '.join(FLOAT_TARGETS)})")
    out = np.empty((nrows, n_per_row), dtype=U16)
    if _QD_TYPES.get(qt.name) == qt.type_size and qt.block_size == 32 and qt.row_meta == 0:
        _qd_to_f16(d, qt.name, out)
    else:  # a chunk of rows dequantized (float32 in cache), then the fast cast
        step = max(1, CHUNK // n_per_row)
        for a in range(0, nrows, step):
            b = min(nrows, a + step)
            fp32_to_fp16_bits(dequantize(d[a:b], qt, n_per_row), out=out[a:b])
    return out.view(np.uint8).reshape(nrows, -1)
