"""Grid recovery for the 32-value legacy types Q8_0, Q4_0, Q5_0 (y = d*q) and Q4_1, Q5_1
(y = d*q + m), as dequantize_row_q* computes them (float32, no FMA).

Candidates, nearest first: the scale from the block's signed max-abs value divided by each code
the reference can give it (quantize_row_q4_0_ref gives it -8, the imatrix search -8 or -7, ...),
then the fp16 neighbours of that scale; the minimum of Q4_1 / Q5_1 is the block's smallest value
(its code is 0 in quantize_row_q4_1_ref) or its fp16 neighbours. Codes follow by rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..legacy import BLOCKS
from ..numeric import F32
from .common import OFFSETS, fp16_bits_of, fp16_near

# name -> (lowest code, highest code) of y = d * code
_SYM = {"Q8_0": (-128, 127), "Q4_0": (-8, 7), "Q5_0": (-16, 15)}
_ASYM = {"Q4_1": 15, "Q5_1": 31}


def encode(name: str, d: np.ndarray, codes: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """Block bytes (nb, type_size) from scales d (nb,) float32 (exact fp16 values), integer codes
    (nb, 32) as dequantize sees them (Q4_0: q - 8, Q5_0: q - 16, Q8_0: q, Q*_1: q) and Q*_1 mins."""
    nb = codes.shape[0]
    blk = np.zeros(nb, dtype=BLOCKS[name])
    blk["d"] = fp16_bits_of(d)
    if name == "Q8_0":
        blk["qs"] = codes.astype(np.int8)
        return blk.view(np.uint8).reshape(nb, -1)
    off = {"Q4_0": 8, "Q5_0": 16}.get(name, 0)
    q = (codes + off).astype(np.uint8)
    if m is not None:
        blk["m"] = fp16_bits_of(m)
    if name in ("Q5_0", "Q5_1"):
        blk["qh"] = np.packbits((q >> 4) & 1, axis=1, bitorder="little")
        q &= 0x0F
    blk["qs"] = q[:, :16] | (q[:, 16:] << 4)
    return blk.view(np.uint8).reshape(nb, -1)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The first value of largest magnitude per block (ggml's `if (ax > amax)` loop)."""
    return x[np.arange(x.shape[0]), np.argmax(np.abs(x), axis=1)]


def candidates(name: str) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
    """Candidate generators for `name`, most likely first: each maps blocks x (nb, 32) to bytes."""
    if name in _SYM:
        lo, hi = _SYM[name]
        # quantize_row_q8_0_ref: d = amax / 127 > 0, so the max-abs value's code is +-127 with d > 0
        # (a negative d, codes negated, decodes alike: tried last)
        top = (0, 1, -127, -126) if name == "Q8_0" else (lo, lo + 1, hi, -hi + 1 if hi > 1 else hi)
        for code in top:
            for off in OFFSETS:
                yield _sym(name, code, off, lo, hi)
    else:
        nmax = _ASYM[name]
        for span in (nmax, nmax - 1):
            for moff in (0, -1, 1):
                for off in OFFSETS:
                    yield _asym(name, span, moff, off, nmax)


def _sym(name: str, code: int, off: int, lo: int, hi: int) -> Callable[[np.ndarray], np.ndarray]:
    def make(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            xm = _signed_absmax(x)
            # Q8_0 codes 0 / 1: d = |max| / 127 or 126 (positive); others: the signed max over the code
            est = np.abs(xm) / F32(127 - code) if name == "Q8_0" and code in (0, 1) else xm / F32(code)
            d = fp16_near(est, off)
            q = np.rint(x / d[:, None])
        q = np.nan_to_num(np.clip(q, lo, hi)).astype(np.int32)
        return encode(name, np.nan_to_num(d), q)
    return make


def _asym(name: str, span: int, moff: int, off: int, nmax: int) -> Callable[[np.ndarray], np.ndarray]:
    def make(x: np.ndarray) -> np.ndarray:
        m = fp16_near(x.min(axis=1), moff)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = fp16_near((x.max(axis=1) - m) / F32(span), off)
            q = np.rint((x - m[:, None]) / d[:, None])
        q = np.nan_to_num(np.clip(q, 0, nmax)).astype(np.int32)
        return encode(name, np.nan_to_num(d), q, np.nan_to_num(m))
    return make


TYPES = tuple(_SYM) + tuple(_ASYM)
