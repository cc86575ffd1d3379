"""Rows are quantized independently, so quantizing rows one call at a time (one call per group
of rows for ik's interleaved _R4/_R8 types) must give the same bytes as one call over all of
them, for every registered kernel, flavour and imatrix variant; and no kernel may write into the
caller's rows or imatrix (a one-row input's transpose is a view of it, which once let several ik
kernels square the caller's data in place).

The golden vectors exercise kernels on many blocks at once; a single row of a single block is the
case where numpy would change the summation order (np.add.reduce sums one column pairwise, not
in C's order), which a one-super-block Q4_K row with an imatrix once showed. This test needs no
reference build: the many-row path is the one pinned to the references elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quants import engine
from qtool.quants.registry import registered_types, support
from qtool.quants.types import get_type

CASES = [(t, fl) for fl in ("mainline", "ik") for t in registered_types(fl)]
# ik_llama.cpp's IQ1_M carries shifts[] of a near-zero sub-block over from the block before (and
# reads uninitialised memory at the start of a call), so there a row's bytes depend on the rows
# before it, in C too: only rows without an all-zero sub-block are compared
CARRIES_STATE = {("IQ1_M", "ik")}


def _rows(n: int, nrows: int = 10, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(-6.0, 3.0, (nrows, 1)))
    x = rng.standard_t(4, (nrows, n)) * scale
    x[1] = 0.0  # an all-zero row
    x[2, : n // 2] = 0.0
    return x.astype(np.float32)


@pytest.mark.parametrize(("qtype", "flavour"), CASES)
def test_one_row_at_a_time_equals_all_rows(qtype: str, flavour: str) -> None:
    qt = get_type(qtype)
    n = max(qt.block_size, 256) if qt.block_size > 1 else 32
    r = qt.rows_interleaved  # ik's interleaved types quantize groups of r rows (nrows % r == 0)
    x = _rows(n, nrows=10 if r == 1 else 3 * r)
    im = np.random.default_rng(5).gamma(0.5, 2.0, n).astype(np.float32)
    for variant, imatrix in ((False, None), (True, im)):
        if not support(qtype, flavour)[variant]:
            continue
        x0, im0 = x.copy(), im.copy()
        whole = engine.quantize(x, qtype, imatrix, flavour=flavour)
        one = np.concatenate([engine.quantize(x[i:i + r], qtype, imatrix, flavour=flavour)
                              for i in range(0, len(x), r)])
        assert np.array_equal(x, x0) and np.array_equal(im, im0), f"{qtype} ({flavour}) changed its input"
        bad = np.flatnonzero((whole != one).any(axis=1)).tolist()
        if (qtype, flavour) in CARRIES_STATE:
            bad = [i for i in bad if (np.abs(x[i].reshape(-1, 32)).max(axis=1) > 0).all()]
        assert bad == [], f"{qtype} ({flavour}, {'with' if variant else 'without'} imatrix): rows {bad} differ"
