"""Grid recovery (qtool.quants.recover): values dequantized from a type and stored as F16 go back
to the exact blocks they came from.

Fixture tests/data/recover/grid_blocks.npz: 6 random rows of 512 (seed 16, normal values scaled
per row) quantized by qtool's engine to each type (with the stored imatrix where a `TYPE_imatrix`
array is present); made by the snippet in docs/dequantize.md. The tests dequantize those blocks,
round to F16 and recover.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qtool.quants import dequantize, quantize
from qtool.quants.recover import detect_grid, quantize_recovering, recover_rows
from qtool.quants.types import get_type

FIX = np.load(Path(__file__).parent / "data" / "recover" / "grid_blocks.npz")
N = 512


def _f16(q: np.ndarray, t: str) -> np.ndarray:
    return dequantize(q, t, N).astype(np.float16).astype(np.float32)


def _block_match(a: np.ndarray, b: np.ndarray, t: str) -> float:
    ts = get_type(t).type_size
    return float((a.reshape(-1, ts) == b.reshape(-1, ts)).all(axis=1).mean())


@pytest.mark.parametrize("t", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q5_K", "IQ4_XS"])
def test_recovers_original_bytes(t: str) -> None:
    q = FIX[t]
    out, found = recover_rows(_f16(q, t), t, "F16")
    assert found.all()
    assert np.array_equal(out, q)


@pytest.mark.parametrize("t,min_match", [("Q6_K", 0.8), ("Q4_K", 0.9), ("Q3_K", 0.9), ("Q2_K", 0.9)])
def test_recovered_blocks_reproduce_values(t: str, min_match: float) -> None:
    """Every block found reproduces the stored values bit for bit; most are the original bytes
    (Q6_K and Q3_K have encodings that decode to the same values: the values cannot choose; Q4_K
    made with an imatrix can have both super-block scales far from the kernel's)."""
    q = FIX[t]
    x = _f16(q, t)
    out, found = recover_rows(x, t, "F16")
    assert found.mean() >= min_match
    back = _f16(out, t)
    bs = get_type(t).block_size
    same = (back.reshape(-1, bs).view(np.uint32) == x.reshape(-1, bs).view(np.uint32)).all(axis=1)
    assert np.array_equal(same, found.reshape(-1))
    assert _block_match(out, q, t) >= min_match
    # the recovery beats the plain kernel on the dequantized values
    w = FIX[t + "_imatrix"] if t + "_imatrix" in FIX else None
    assert _block_match(out, q, t) >= _block_match(quantize(x, t, w), q, t)


@pytest.mark.parametrize("t", ["Q4_0", "Q4_1", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q6_K", "Q8_0", "IQ4_XS"])
def test_random_data_keeps_kernel_bytes(t: str) -> None:
    """Values that are not a dequant: quantize_recovering writes the kernel's bytes exactly."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, N)).astype(np.float16).astype(np.float32)
    x[1] = 0.0  # constant rows lie on every grid: the kernel's bytes too
    x[2, :256] = np.float32(0.25)
    assert np.array_equal(quantize_recovering(x, t, None, stored="F16"), quantize(x, t))


def test_unsupported_type_keeps_kernel() -> None:
    """A type without a recoverer (IQ4_NL): the kernel's bytes, whatever the values."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, N)).astype(np.float32)
    y = _f16(quantize(x, "IQ4_NL"), "IQ4_NL")
    out, _ = recover_rows(y, "IQ4_NL", "F16")
    assert np.array_equal(out, quantize(y, "IQ4_NL"))
    assert np.array_equal(quantize_recovering(y, "IQ4_NL"), quantize(y, "IQ4_NL"))


def test_signed_zero_matters() -> None:
    """-0.0 and 0.0 are different stored values: the original block no longer verifies when one
    zero's sign is flipped (this sign is what settles Q6_K's (sc, q) / (-sc, -q) ambiguity)."""
    from qtool.quants.recover.common import blocks_ok

    qt = get_type("Q6_K")
    q = FIX["Q6_K"]
    x = _f16(q, "Q6_K")
    xb = x.reshape(-1, 256)
    qb = q.reshape(-1, qt.type_size)
    assert blocks_ok(qb, xb, qt, "F16").all()
    i = np.nonzero((xb == 0).any(axis=1))[0][0]
    j = np.nonzero(xb[i] == 0)[0][0]
    y = xb.copy()
    y[i, j] = np.float32(0.0) if np.signbit(y[i, j]) else np.float32(-0.0)
    ok = blocks_ok(qb, y, qt, "F16")
    assert not ok[i] and ok.sum() == len(ok) - 1


def test_detect_grid() -> None:
    g = detect_grid(_f16(FIX["Q4_1"], "Q4_1"))
    assert g is not None and g.type == "Q4_1" and g.fraction == 1.0
    g = detect_grid(_f16(FIX["Q5_K"], "Q5_K"))
    assert g is not None and g.type == "Q5_K"
    g = detect_grid(_f16(FIX["Q6_K"], "Q6_K"))
    assert g is not None and g.type == "Q6_K"
    rng = np.random.default_rng(5)
    assert detect_grid(rng.standard_normal((4, N)).astype(np.float16).astype(np.float32)) is None


def test_bf16_storage() -> None:
    from qtool.quants.recover.common import round_stored

    q = FIX["Q4_0"]
    x = round_stored(dequantize(q, "Q4_0", N), "BF16")
    out, found = recover_rows(x, "Q4_0", "BF16")
    back = round_stored(dequantize(out, "Q4_0", N), "BF16")
    assert np.array_equal(back.view(np.uint32)[found.repeat(32, axis=1)], x.view(np.uint32)[found.repeat(32, axis=1)])
    assert found.mean() > 0.5
