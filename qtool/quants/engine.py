"""The engine contract: quantize / dequantize float rows for any implemented type.

    quantize(rows: float32[nrows, n_per_row], qtype, imatrix: float32[n_per_row] | None)
        -> uint8[nrows, row_bytes]
    dequantize(data: uint8[nrows, row_bytes], qtype, n_per_row) -> float32[nrows, n_per_row]

Kernels register themselves (qtool.quants.registry) keyed by type, flavour and imatrix variant;
this module imports the kernel families once and dispatches. Row kernels take (rows, imatrix)
and return bytes; dequantizers take (data, n_per_row).
"""

from __future__ import annotations

import numpy as np

from . import floats, fp4, ik, kquants, legacy, lowbit, nonlinear, ternary  # noqa: F401  (each registers its kernels)
from .lattice import iq1, iq2, iq3  # noqa: F401
from .registry import dequantizer, quantizer, registered_types, support
from .types import IK, MAINLINE, QType, get_type


class NotImplementedType(NotImplementedError):
    """The engine has no quantizer for this type (yet)."""


def can_quantize(qtype: str | QType, flavour: str = MAINLINE, imatrix: bool | None = None) -> bool:
    """Whether the engine quantizes qtype as the flavour's reference does (imatrix: with or without
    one; None: both)."""
    noim, im = support(qtype, flavour)
    return (noim and im) if imatrix is None else (im if imatrix else noim)


def can_dequantize(qtype: str | QType) -> bool:
    qt = get_type(qtype)
    return dequantizer(qt) is not None or _gguf_dequantizable(qt)


def quantize(rows: np.ndarray, qtype: str | QType, imatrix: np.ndarray | None = None,
             flavour: str = MAINLINE) -> np.ndarray:
    """Quantize float rows to the bytes ggml_quantize_chunk writes for the same rows and imatrix."""
    qt = get_type(qtype)
    fn = quantizer(qt, flavour, imatrix is not None)
    if fn is None:
        how = " with an imatrix" if imatrix is not None else ""
        raise NotImplementedType(f"qtool cannot quantize to {qt.name}{how} as {flavour} does yet")
    x, qw = check_rows(rows, qt, imatrix)
    n_per_row = x.shape[1]
    out = fn(x, qw)
    assert out.dtype == np.uint8 and out.shape == (x.shape[0], qt.row_bytes(n_per_row)), (
        f"{qt.name} kernel returned {out.dtype}{out.shape}")
    return out


def check_rows(rows: np.ndarray, qt: QType, imatrix: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The engine contract's inputs as every backend takes them: C-contiguous float32 rows
    (nrows, n_per_row) with n_per_row a multiple of the block size, and the imatrix as float32
    [n_per_row] (required where the type needs one)."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"rows must be 2-D (nrows, n_per_row), got shape {x.shape}")
    n_per_row = x.shape[1]
    if n_per_row % qt.block_size:
        raise ValueError(f"{qt.name}: row length {n_per_row} is not a multiple of {qt.block_size}")
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if qw.shape[0] != n_per_row:
            raise ValueError(f"imatrix has {qw.shape[0]} values, rows have {n_per_row}")
    elif qt.needs_imatrix:
        raise ValueError(f"{qt.name} requires an importance matrix")
    return x, qw


def dequantize(data: np.ndarray, qtype: str | QType, n_per_row: int) -> np.ndarray:
    """Dequantize rows of bytes back to float32[nrows, n_per_row]."""
    qt = get_type(qtype)
    d = np.ascontiguousarray(data, dtype=np.uint8)
    nrb = qt.row_bytes(n_per_row)
    d = d.reshape(-1, nrb)
    fn = dequantizer(qt)
    if fn is not None:
        return fn(d, n_per_row)
    if _gguf_dequantizable(qt):
        import gguf

        out = gguf.quants.dequantize(d, gguf.GGMLQuantizationType(qt.id))
        return np.asarray(out, dtype=np.float32).reshape(d.shape[0], n_per_row)
    raise NotImplementedType(f"qtool cannot dequantize {qt.name} yet")


def _gguf_dequantizable(qt: QType) -> bool:
    if qt.flavour == IK:
        return False
    try:
        import gguf

        gguf.quants._type_traits[gguf.GGMLQuantizationType(qt.id)]  # noqa: B018
        return True
    except (ValueError, KeyError, AttributeError):
        return False


def quantizable_types(flavour: str = MAINLINE, imatrix: bool | None = None) -> list[str]:
    """Types the engine quantizes as `flavour` does (imatrix: that variant; None: both)."""
    return [n for n in registered_types(flavour) if can_quantize(n, flavour, imatrix)]
