"""ik_llama.cpp's Q4_0 and Q5_0 with an imatrix: mainline's quantize_row_q4_0_impl /
quantize_row_q5_0_impl (weights qw*sqrt(sigma2 + x²)), with ik's make_qx_quants (search_ik) for
each block. Without an imatrix ik_llama.cpp quantizes them as mainline does."""

from __future__ import annotations

import numpy as np

from ..legacy import QUANTIZE as MAINLINE_QUANTIZE
from ..legacy import quantize_with_imatrix
from ..registry import register
from ..scratch import Workspace
from .search_ik import make_qx_quants_ik_t

F32 = np.float32


def ik_qx(xt: np.ndarray, wt: np.ndarray, nmax: int, ws: Workspace, Lu: np.ndarray) -> np.ndarray:
    """ik's make_qx_quants(32, nmax, x, L, 1, w) per column: d (nb,), C's L[] into Lu uint32 (32, nb)."""
    d, lt = make_qx_quants_ik_t(xt, wt, nmax, 1)
    Lu[...] = lt
    return d


def _quantizer(name: str):  # noqa: ANN202
    def quantize(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        if imatrix is None:  # as mainline does
            return MAINLINE_QUANTIZE[name](rows, None)
        return quantize_with_imatrix(name, np.ascontiguousarray(rows, dtype=F32), np.asarray(imatrix, dtype=F32),
                                     ik_qx)

    quantize.__name__ = f"quantize_{name.lower()}_ik"
    quantize.__doc__ = f"ik_llama.cpp quantize_{name.lower()}: rows float32 (nrows, n) [, imatrix (n,)] -> uint8."
    return quantize


QUANTIZE: dict = {name: _quantizer(name) for name in ("Q4_0", "Q5_0")}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], mainline=(), ik=(True,))  # without an imatrix: mainline's kernel
