"""The one kernel registry: every quantizer and dequantizer is registered once, next to its code,
keyed by type, flavour and imatrix variant.

A kernel module ends with `register("Q4_K", quantize_q4_k, dequantize_q4_k, ik=(False,))`:
the variants it is byte-exact for in each flavour (mainline llama.cpp's ggml, ik_llama.cpp's).
ik_llama.cpp quantizes several mainline types with its own algorithms; a variant that neither
a shared kernel nor an ik port covers is simply not registered, so the engine refuses it,
`can_quantize` says no, and `qtool types` / `mix ftypes` / refusal messages agree.

Registering the same (type, flavour, variant) twice is an error at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .types import IK, MAINLINE, Flavour, QType, get_type

QuantizeFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
DequantizeFn = Callable[[np.ndarray, int], np.ndarray]

_QUANTIZE: dict[tuple[str, Flavour, bool], QuantizeFn] = {}
_DEQUANTIZE: dict[str, DequantizeFn] = {}
BOTH_VARIANTS = (False, True)


def register(type_name: str, quantize: QuantizeFn | None = None, dequantize: DequantizeFn | None = None, *,
             mainline: Iterable[bool] = BOTH_VARIANTS, ik: Iterable[bool] = BOTH_VARIANTS) -> None:
    """Register the kernels of one type. mainline / ik: the imatrix variants (False: without,
    True: with) for which `quantize` gives that flavour's reference bytes."""
    name = get_type(type_name).name
    if quantize is not None:
        for flavour, variants in ((MAINLINE, mainline), (IK, ik)):
            for v in variants:
                key = (name, Flavour(flavour), bool(v))
                if key in _QUANTIZE:
                    raise RuntimeError(f"{name}: a quantizer for {flavour} {'with' if v else 'without'} an imatrix "
                                       "is registered twice")
                _QUANTIZE[key] = quantize
    if dequantize is not None:
        if name in _DEQUANTIZE and _DEQUANTIZE[name] is not dequantize:
            raise RuntimeError(f"{name}: two dequantizers registered")
        _DEQUANTIZE[name] = dequantize


def _name(qt: QType | str) -> str | None:
    """The registry key of a type: its name, unless the record is not the one the name denotes
    (ik_llama.cpp's 296-byte Q8_K shares mainline's name; kernels are mainline's)."""
    t = get_type(qt)
    return t.name if get_type(t.name) == t else None


def quantizer(qt: QType | str, flavour: str, imatrix: bool) -> QuantizeFn | None:
    """The kernel giving `flavour`'s bytes for qt with / without an imatrix, or None."""
    return _QUANTIZE.get((_name(qt) or "", Flavour(flavour), bool(imatrix)))


def dequantizer(qt: QType | str) -> DequantizeFn | None:
    return _DEQUANTIZE.get(_name(qt) or "")


def support(qt: QType | str, flavour: str) -> tuple[bool, bool]:
    """(without an imatrix, with one): which variants the engine quantizes as `flavour` does."""
    return quantizer(qt, flavour, False) is not None, quantizer(qt, flavour, True) is not None


def registered_types(flavour: str) -> list[str]:
    """Names of the types with at least one quantizer for `flavour`."""
    f = Flavour(flavour)
    return sorted({n for (n, fl, _) in _QUANTIZE if fl == f})
