"""ik_llama.cpp's Q6_K: mainline's block layout and steps, with ik's make_qx_quants for the
sub-block scales (search_ik: more candidates and a greedy descent), with and without imatrix.
Dequantization is mainline's."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..kquants.q6_k import quantize_q6_k
from ..registry import register
from ..scratch import Workspace
from .search_ik import make_qx_quants_ik_t


def ik_search(xt: np.ndarray, qwt: np.ndarray | None, ws: Workspace) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
    """ik's make_qx_quants(16, 32, x, L, 1, qw) of every sub-block of xt (16, nsub)."""
    scale, lt = make_qx_quants_ik_t(xt, qwt, 32, 1)
    return scale, lambda: lt


def quantize_q6_k_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q6_K: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, n/256*210)."""
    return quantize_q6_k(rows, imatrix, ik_search)


QUANTIZE: dict = {"Q6_K": quantize_q6_k_ik}
register("Q6_K", quantize_q6_k_ik, mainline=())
