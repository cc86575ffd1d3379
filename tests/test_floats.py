import numpy as np
import pytest

from qtool.quants import dequantize, quantize
from tests.vectors import expected, inputs, mismatched_rows


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
@pytest.mark.parametrize("variant", ["q_noim", "q_im"])
def test_float_vectors(qtype: str, variant: str) -> None:
    x, imatrix, _ = inputs()
    want = expected(qtype)[variant]
    got = quantize(x, qtype, imatrix if variant == "q_im" else None)
    assert mismatched_rows(got, want) == []


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_float_round_trip(qtype: str) -> None:
    x, _, _ = inputs()
    y = dequantize(quantize(x, qtype), qtype, x.shape[1])
    tol = {"F32": 0, "F16": 2**-11, "BF16": 2**-8}[qtype]
    finite = np.isfinite(x) & (np.abs(x) < 6e4)
    assert np.all(np.abs(y - x)[finite] <= tol * np.abs(x)[finite] + 1e-7)
