"""Q2_K, Q4_K, Q5_K: byte-exact against mainline's golden vectors, dequantization, chunking."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from qtool.quants import engine
from qtool.quants.kquants import q45_k
from qtool.quants.types import get_type

from .refs import ggml_lib, why
from .vectors import expected, inputs, mismatched_rows

TYPES = ["Q2_K", "Q4_K", "Q5_K"]
GGML_IDS = {"Q2_K": 10, "Q4_K": 12, "Q5_K": 13}
LIB = ggml_lib() or Path("/nonexistent/QTOOL_GGML_LIB")


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_quantize(qtype, variant):
    x, imatrix, kinds = inputs()
    want = expected(qtype)[f"q_{variant}"]
    got = engine.quantize(x, qtype, imatrix if variant == "im" else None)
    assert got.shape == want.shape
    bad = mismatched_rows(got, want)
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_dequantize(qtype, variant):
    x, _, _ = inputs()
    e = expected(qtype)
    got = engine.dequantize(e[f"q_{variant}"], qtype, x.shape[1])
    want = e[f"deq_{variant}"]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_chunk_boundaries(qtype, monkeypatch):
    """Many chunks, rows split across chunks (2 super-blocks a chunk, 4 a row): every row exact."""
    monkeypatch.setattr(q45_k, "CHUNK_SUPERBLOCKS", 2)
    x, imatrix, _ = inputs()
    e = expected(qtype)
    rows = np.concatenate([x, x[::-1]])
    for imat, key in ((None, "q_noim"), (imatrix, "q_im")):
        want = np.concatenate([e[key], e[key][::-1]])
        assert mismatched_rows(engine.quantize(rows, qtype, imat), want) == []


@pytest.mark.parametrize("qtype", TYPES)
def test_round_trip_error(qtype):
    """dequantize(quantize(x)) is close to x for gaussian rows (relative RMSE bound per type)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    bound = {"Q2_K": 0.45, "Q4_K": 0.12, "Q5_K": 0.06}[qtype]
    for imat in (None, rng.chisquare(2, 512).astype(np.float32)):
        y = engine.dequantize(engine.quantize(x, qtype, imat), qtype, 512)
        rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x * x))
        assert rel < bound, (qtype, rel)


def _ggml_quantize(lib, qtype: str, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    nrows, n = rows.shape
    rb = get_type(qtype).row_bytes(n)
    out = np.zeros((nrows, rb), dtype=np.uint8)
    fp = ctypes.POINTER(ctypes.c_float)
    src = np.ascontiguousarray(rows, dtype=np.float32)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    lib.ggml_quantize_chunk(GGML_IDS[qtype], src.ctypes.data_as(fp), out.ctypes.data_as(ctypes.c_void_p),
                            0, nrows, n, None if im is None else im.ctypes.data_as(fp))
    return out


@pytest.mark.reference
@pytest.mark.skipif(not LIB.exists(), reason=why("QTOOL_GGML_LIB"))
@pytest.mark.parametrize("qtype", TYPES)
def test_against_local_ggml(qtype):
    """Random rows with 3 super-blocks per row (rows straddle chunks), against libggml-base."""
    lib = ctypes.CDLL(str(LIB))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rng = np.random.default_rng(11)
    n = 768
    x = (rng.standard_t(4, (100, n)) * 10.0 ** rng.uniform(-3, 3, (100, 1))).astype(np.float32)
    x[5, 256:512] = 0
    x[6, :300] = -np.abs(x[6, :300])
    # extreme ranges: the exact (bit-level nearest_int) paths of the search and re-quantization
    x[7] = (rng.standard_normal(n) * 1e-38).astype(np.float32)
    x[8] = (np.where(rng.random(n) < 0.5, 1e-40, -1e-40) * rng.random(n)).astype(np.float32)
    x[9] = (rng.standard_normal(n) * 1e25).astype(np.float32)
    x[10, rng.integers(0, n, 4)] *= 1e6
    x[11, ::2] = -0.0
    imatrix = rng.chisquare(1, n).astype(np.float32)
    imatrix[::17] = 0
    wide = (10.0 ** rng.uniform(-20, 20, n)).astype(np.float32)
    for imat in (None, imatrix, wide):
        want = _ggml_quantize(lib, qtype, x, imat)
        assert mismatched_rows(engine.quantize(x, qtype, imat), want) == []


@pytest.mark.parametrize("qtype", TYPES)
def test_empty_and_single_superblock(qtype):
    rb = get_type(qtype).row_bytes(512)
    q = engine.quantize(np.zeros((0, 512), np.float32), qtype)
    assert q.shape == (0, rb)
    assert engine.dequantize(q, qtype, 512).shape == (0, 512)
    x, imatrix, _ = inputs()
    e = expected(qtype)
    # one row, one super-block at a time: the first super-block of each golden row
    rows = x[:, :256]
    got = engine.quantize(rows, qtype, imatrix[:256])
    want = engine.quantize(x, qtype, imatrix)[:, : get_type(qtype).type_size]
    assert np.array_equal(got, want)
    assert np.array_equal(want, e["q_im"][:, : get_type(qtype).type_size])
