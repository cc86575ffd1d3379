"""IQ4_NL, IQ4_XS: byte-exact against mainline's golden vectors, dequantization, best_index_int8,
chunking, edge rows, and (when the local llama.cpp build exists) random and extreme rows against
ggml_quantize_chunk itself."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from qtool.quants import engine, nonlinear, numeric
from qtool.quants.types import get_type

from .refs import ggml_lib, why
from .vectors import expected, inputs, mismatched_rows

TYPES = ["IQ4_NL", "IQ4_XS"]
GGML_IDS = {"IQ4_NL": 20, "IQ4_XS": 23}
LIB = ggml_lib() or Path("/nonexistent/QTOOL_GGML_LIB")
F32 = np.float32


# --- golden vectors ------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_quantize(qtype, variant):
    x, imatrix, kinds = inputs()
    want = expected(qtype)[f"q_{variant}"]
    got = engine.quantize(x, qtype, imatrix if variant == "im" else None)
    assert got.shape == want.shape == (55, get_type(qtype).row_bytes(1024))
    bad = mismatched_rows(got, want)
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_dequantize(qtype, variant):
    e = expected(qtype)
    got = engine.dequantize(e[f"q_{variant}"], qtype, 1024)
    want = e[f"deq_{variant}"]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_matches_gguf(qtype):
    """Our dequantizer against gguf-py's on bytes of our own quantization."""
    import gguf

    x, imatrix, _ = inputs()
    q = engine.quantize(x[:12], qtype, imatrix)
    ref = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[qtype]).reshape(12, 1024)
    assert np.array_equal(nonlinear.DEQUANTIZE[qtype](q, 1024), ref.astype(F32))


def test_kvalues_table():
    import gguf

    assert tuple(int(v) for v in nonlinear.KVALUES_IQ4NL) == tuple(gguf.quants.IQ4_NL.kvalues)


# --- best_index_int8 -----------------------------------------------------------------------------

def _best_index_c(x: np.ndarray) -> np.ndarray:
    """C's best_index_int8(16, kvalues_iq4nl, x): its binary search and float32 comparison,
    run element-wise (vectorized over x, one step of the search at a time)."""
    val = nonlinear.KVALUES_IQ4NL.astype(F32)
    x = np.asarray(x, F32)
    ml = np.zeros(x.shape, np.int64)
    mu = np.full(x.shape, 15, np.int64)
    for _ in range(5):
        live = mu - ml > 1
        mav = (ml + mu) // 2
        lower = x < val[mav]
        mu = np.where(live & lower, mav, mu)
        ml = np.where(live & ~lower, mav, ml)
    pick = np.where((x - val[mu - 1]) < (val[mu] - x), mu - 1, mu)
    pick = np.where(x >= val[15], 15, pick)
    return np.where(x <= val[0], 0, pick).astype(np.uint8)


def test_best_index_around_every_midpoint():
    """Every float32 within 4096 ulps of each midpoint and of each table value, plus wide random
    values: the floor(2x) table gives C's binary-search answer, ties included."""
    kv = nonlinear.KVALUES_IQ4NL.astype(np.float64)
    centers = np.concatenate([(kv[:-1] + kv[1:]) / 2, kv, [0.0]]).astype(F32)
    steps = np.arange(-4096, 4097, dtype=np.int64)
    pts = []
    for c in centers:
        if c == 0:
            continue
        bits = np.int64(np.array(c, F32).view(np.int32))
        pts.append((bits + steps).astype(np.int32).view(F32))
    rng = np.random.default_rng(3)
    pts.append((rng.uniform(-300, 300, 200_000)).astype(F32))
    pts.append((rng.standard_normal(10_000) * 10.0 ** rng.uniform(-40, 38, 10_000)).astype(F32))
    pts.append(np.array([0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 127.5, -127.5, 113, -127], F32))
    x = np.concatenate(pts)
    with np.errstate(over="ignore"):
        got = nonlinear.best_index_t(x)
    assert np.array_equal(got, _best_index_c(x))
    ties = ((kv[:-1] + kv[1:]) / 2).astype(F32)
    assert np.array_equal(nonlinear.best_index_t(ties), np.arange(1, 16))  # a tie takes the upper level


def test_best_index_nan_takes_top_level():
    assert nonlinear.best_index_t(np.array([np.nan], F32))[0] == 15  # C: every comparison false


# --- layout, chunks, edge rows -------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
def test_chunking_does_not_change_bytes(qtype, monkeypatch):
    """Rows straddling chunks of blocks (odd chunk sizes), with and without imatrix."""
    rng = np.random.default_rng(5)
    n = 768
    x = (rng.standard_normal((7, n)) * 10.0 ** rng.uniform(-3, 3, (7, 1))).astype(F32)
    im = rng.chisquare(1, n).astype(F32)
    whole = [engine.quantize(x, qtype, q) for q in (None, im)]
    monkeypatch.setattr(nonlinear, "_CHUNK_BLOCKS", 40)  # 40 blocks of 32; IQ4_XS: 5 super-blocks
    for q, want in zip((None, im), whole, strict=True):
        assert np.array_equal(engine.quantize(x, qtype, q), want)
    for r in range(7):  # row by row
        assert np.array_equal(engine.quantize(x[r:r + 1], qtype, im), whole[1][r:r + 1])


@pytest.mark.parametrize("qtype", TYPES)
def test_empty_input(qtype):
    rb = get_type(qtype).row_bytes(512)
    out = engine.quantize(np.zeros((0, 512), F32), qtype)
    assert out.shape == (0, rb)
    assert engine.dequantize(out, qtype, 512).shape == (0, 512)


def test_zero_and_tiny_blocks():
    """Blocks with max |x| < 1e-15 get scale 0 and level 8 (value 1): IQ4_NL d = +0; IQ4_XS
    d = -max_scale/32 = -0.0 (fp16 0x8000), sub-block scales 0 -> stored 32."""
    x = np.zeros((2, 512), F32)
    x[1] = 1e-30
    nl = engine.quantize(x, "IQ4_NL").reshape(2, 16, 18)
    assert (nl[:, :, :2] == 0).all() and (nl[:, :, 2:] == 0x88).all()
    xs = engine.quantize(x, "IQ4_XS").reshape(2, 2, 136)
    assert (xs[:, :, 0] == 0x00).all() and (xs[:, :, 1] == 0x80).all()
    assert (xs[:, :, 2:4].view("<u2") == 0xAAAA).all() and (xs[:, :, 4:8] == 0).all()
    assert (xs[:, :, 8:] == 0x88).all()


@pytest.mark.parametrize("qtype", TYPES)
def test_round_trip_error(qtype):
    """Gaussian rows: relative RMS error of dequantize(quantize(x)) within IQ4's known range
    (~0.1 of the RMS), and the imatrix weighting lowers the weighted error."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 1024)).astype(F32)
    y = engine.dequantize(engine.quantize(x, qtype), qtype, 1024)
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2))
    assert 0.05 < rel < 0.12
    im = np.where(np.arange(1024) % 4 == 0, F32(100), F32(0.01)).astype(F32)
    yw = engine.dequantize(engine.quantize(x, qtype, im), qtype, 1024)
    assert np.sum(im * (yw - x) ** 2) < np.sum(im * (y - x) ** 2)


def test_absmax_first_extreme():
    """C's `if (fabsf(x) > amax) { amax = fabsf(x); max = x; }`: the first value of largest |x|,
    also when +a and -a both occur (the fallback path), against the scalar loop."""
    rng = np.random.default_rng(2)
    xt = np.round(rng.standard_normal((32, 3000)) * 3).astype(F32)  # many +-a ties
    xt[:, :5] = 0
    xt[7, 1] = -0.0
    xt[4, 2], xt[9, 2] = -6, 6
    xt[4, 3], xt[9, 3] = 6, -6
    amax, mx = numeric.absmax_t(xt)
    want_a = np.zeros(xt.shape[1], F32)
    want_m = np.zeros(xt.shape[1], F32)
    for c in range(xt.shape[1]):
        for j in range(32):
            if abs(xt[j, c]) > want_a[c]:
                want_a[c], want_m[c] = abs(xt[j, c]), xt[j, c]
    assert np.array_equal(amax, want_a)
    ok = want_a > 0  # all-zero blocks: C's max is unused (scale 0)
    assert np.array_equal(mx[ok], want_m[ok])
    assert mx[2] == -6 and mx[3] == 6


# --- against the reference library itself (skipped when it is not built) ---------------------

def _ggml_quantize(qtype: str, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    lib = ctypes.CDLL(str(LIB))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    nrows, n = rows.shape
    out = np.zeros((nrows, get_type(qtype).row_bytes(n)), dtype=np.uint8)
    src = np.ascontiguousarray(rows, dtype=F32)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=F32)
    lib.ggml_quantize_chunk(GGML_IDS[qtype], src.ctypes.data, out.ctypes.data, 0, nrows, n,
                            None if im is None else im.ctypes.data)
    return out


@pytest.mark.reference
@pytest.mark.skipif(not LIB.exists(), reason=why("QTOOL_GGML_LIB"))
@pytest.mark.parametrize("qtype", TYPES)
def test_against_local_ggml(qtype):
    """Random rows over 12 decades, integer rows (exact ties with table values and midpoints),
    sparse / half-zero rows, and extreme ranges (subnormal, near-overflow, fp16 overflow)."""
    rng = np.random.default_rng(11)
    n = 768
    x = (rng.standard_t(4, (60, n)) * 10.0 ** rng.uniform(-6, 6, (60, 1))).astype(F32)
    x[0] = np.round(rng.standard_normal(n) * 40)
    x[1] = rng.integers(-130, 131, n)
    x[2] = np.round(rng.standard_normal(n) * 8) / 2
    x[3, 256:512] = 0
    x[4, ::3] = 0
    x[5] *= rng.random(n) < 0.05
    x[6] = (rng.standard_normal(n) * 1e-38).astype(F32)
    x[7] = (np.where(rng.random(n) < 0.5, 1e-40, -1e-40) * rng.random(n)).astype(F32)
    x[8] = (rng.standard_normal(n) * 1e25).astype(F32)
    x[9] = (rng.standard_normal(n) * 3e37).astype(F32)
    x[10] = (rng.standard_normal(n) * 1e-15).astype(F32)
    x[11] = (rng.standard_normal(n) * 1e6).astype(F32)  # fp16 scale overflows to inf
    x[12] = (10.0 ** rng.uniform(-30, 30, n) * np.sign(rng.standard_normal(n))).astype(F32)
    x[13, ::2] = -0.0
    x[14] = np.abs(x[14])
    x[15] = -np.abs(x[15])
    imatrix = rng.chisquare(1, n).astype(F32)
    imatrix[::17] = 0
    wide = (10.0 ** rng.uniform(-20, 20, n)).astype(F32)
    for imat in (None, imatrix, wide):
        want = _ggml_quantize(qtype, x, imat)
        assert mismatched_rows(engine.quantize(x, qtype, imat), want) == []
