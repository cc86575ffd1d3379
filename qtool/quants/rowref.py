"""The row quantizers quantize-stats measures (ggml's `from_float_ref`), where they differ from
`ggml_quantize_chunk`, the path llama-quantize (and the rest of qtool) takes.

IQ4_NL and ik_llama.cpp's Q6_0 differ among the types the engine has. `quantize_row_q6_0_ref`
scales by -max/32 and stores the least-squares d of those levels (ik/q6_0.py);
`quantize_row_iq4_nl_ref` runs
quantize_row_iq4_nl_impl with ntry = -1 in both mainline and ik_llama.cpp: the first scale is
-max/127 (the opposite orientation to ntry = 7's), no other candidate is tried, d = sumqx/sumq2 is
stored and the levels of that first candidate are kept (ik_llama.cpp first runs its greedy
descent, see ik/iq4_ik.py). `qtool stats --ik-chunks` uses these, so it measures what
llama-quantize-stats measures; a file quantized by llama-quantize never contains them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ik.iq4_ik import iq4_sums, quantize_row_iq4_nl_ik
from .ik.q6_0 import quantize_row_q6_0_ref
from .nonlinear import BLOCK_IQ4_NL, QK4_NL, best_index_t, iq4_weights_t, pack_nibbles_t
from .numeric import GROUP_MAX_EPS, absmax_t, blocks_t, fp16_bits, ieee
from .types import IK, MAINLINE

F32 = np.float32


@ieee
def quantize_row_iq4_nl_ref(rows: np.ndarray) -> np.ndarray:
    """mainline quantize_row_iq4_nl_ref: rows float32 (nrows, n) -> uint8 (nrows, n/32*18)."""
    nrows, _ = rows.shape
    xt = blocks_t(rows.reshape(-1, QK4_NL))
    wt = iq4_weights_t(xt, None, None)
    amax, mx = absmax_t(xt)
    ok = amax >= GROUP_MAX_EPS
    d = np.where(ok, mx, F32(1)) / F32(-127)
    lt = best_index_t(xt * (F32(1) / d))
    sumqx, sumq2 = iq4_sums(xt, wt, lt)
    d = np.where(ok & (sumq2 > 0), sumqx / sumq2, F32(0))
    out = np.empty(xt.shape[1], BLOCK_IQ4_NL)
    out["d"] = fp16_bits(d)
    out["qs"] = pack_nibbles_t(np.where(ok, lt, 0).astype(np.uint8))
    return out.view(np.uint8).reshape(nrows, -1)


ROW_REF: dict[tuple[str, str], Callable[[np.ndarray], np.ndarray]] = {
    ("IQ4_NL", MAINLINE): quantize_row_iq4_nl_ref,
    ("IQ4_NL", IK): quantize_row_iq4_nl_ik,
    ("Q6_0", IK): quantize_row_q6_0_ref,
}


def quantize_row_ref(rows: np.ndarray, qtype: str, flavour: str) -> np.ndarray | None:
    """quantize-stats' quantizer for rows float32 (nrows, n), or None where it is the engine's."""
    fn = ROW_REF.get((qtype, flavour))
    return None if fn is None else fn(np.ascontiguousarray(rows, dtype=F32))
