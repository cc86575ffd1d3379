"""Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 against mainline ggml: golden vectors byte for byte (with and without
imatrix), golden dequantization bit for bit, chunking invariance, round-trip error bounds, and
(when the reference library is built) random and edge rows straight against ggml_quantize_chunk."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtool.quants import engine, legacy
from tests.vectors import expected, inputs, mismatched_rows

from .refs import ggml_lib, why

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
IDS = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8}
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34}
GGML_LIB = ggml_lib() or Path("/nonexistent/QTOOL_GGML_LIB")
F = np.float32


@pytest.fixture(scope="module")
def vec() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return inputs()


def _bits_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row: float32 arrays equal bit for bit, any NaN matching any NaN."""
    same = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
    return same.all(axis=1)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_bytes(vec, qtype: str, variant: str) -> None:
    x, im, kinds = vec
    want = expected(qtype)[f"q_{variant}"]
    got = engine.quantize(x, qtype, im if variant == "im" else None)
    assert got.shape == want.shape and got.dtype == np.uint8
    bad = mismatched_rows(got, want)
    assert not bad, f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_dequantize(qtype: str, variant: str) -> None:
    e = expected(qtype)
    got = engine.dequantize(e[f"q_{variant}"], qtype, 1024)
    assert got.dtype == np.float32 and got.shape == e[f"deq_{variant}"].shape
    ok = _bits_equal(got, e[f"deq_{variant}"])
    assert ok.all(), f"{qtype} {variant}: rows {np.flatnonzero(~ok).tolist()} differ"


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_0"])
def test_golden_bytes_without_einsum(monkeypatch, vec, qtype: str) -> None:
    """The multiply + reduce fallback of the search (numpy builds whose einsum fuses or reorders)."""
    from qtool.quants import search

    monkeypatch.setattr(search, "_EINSUM_SEQUENTIAL", False)
    x, im, _ = vec
    assert not mismatched_rows(engine.quantize(x, qtype, im), expected(qtype)["q_im"])


def test_block_layouts() -> None:
    for name, dt in legacy.BLOCKS.items():
        assert dt.itemsize == BLOCK_BYTES[name]
        assert dt.names[0] == "d" and dt.fields["d"][1] == 0
    assert legacy.BLOCK_Q5_0.fields["qh"][1] == 2 and legacy.BLOCK_Q5_0.fields["qs"][1] == 6
    assert legacy.BLOCK_Q5_1.fields["qh"][1] == 4 and legacy.BLOCK_Q5_1.fields["qs"][1] == 8


def test_q5_packing_by_hand() -> None:
    """Blocks with known levels: nibble order and the qh bit of every value, then dequantized."""
    lv = np.stack([np.arange(32)[::-1], (np.arange(32) * 7) % 32]).astype(np.uint32)  # (2 blocks, 32)
    qs, qh = legacy._pack_t(np.ascontiguousarray(lv.T), True)
    blk = np.zeros(2, dtype=legacy.BLOCK_Q5_0)
    legacy._write_qs(blk, qs, qh)
    for b in range(2):
        h = int(blk["qh"][b].view("<u4")[0])
        assert [(h >> k) & 1 for k in range(32)] == [int(v >> 4) for v in lv[b]]
        assert blk["qs"][b].tolist() == [int(lv[b, j] & 15 | (lv[b, j + 16] & 15) << 4) for j in range(16)]
    blk["d"] = np.float16(1).view(np.uint16)
    y = engine.dequantize(blk.view(np.uint8).reshape(1, -1), "Q5_0", 64)
    assert y.reshape(2, 32).tolist() == (lv.astype(int) - 16).tolist()


@pytest.mark.parametrize("qtype", TYPES)
def test_chunking_does_not_change_bytes(monkeypatch, qtype: str) -> None:
    """Many short rows / few long rows cross chunk boundaries; every row as its own call agrees."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((37, 320)) * rng.uniform(0.01, 10, (37, 1))).astype(F)
    im = rng.chisquare(2, 320).astype(F)
    monkeypatch.setattr(legacy, "_REF_CHUNK_BLOCKS", 7)
    monkeypatch.setattr(legacy, "_IM_CHUNK_BLOCKS", 25)
    for w in (None, im):
        whole = engine.quantize(x, qtype, w)
        single = np.concatenate([engine.quantize(x[i:i + 1], qtype, w) for i in range(x.shape[0])])
        assert np.array_equal(whole, single)


@pytest.mark.parametrize("qtype", TYPES)
def test_single_short_row(qtype: str) -> None:
    """One row of one block (the sums then run over a single column) and a 2-row input agree."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((2, 32)) * 3).astype(F)
    im = rng.chisquare(2, 32).astype(F)
    for w in (None, im):
        both = engine.quantize(x, qtype, w)
        for i in range(2):
            assert np.array_equal(engine.quantize(x[i:i + 1], qtype, w)[0], both[i])


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(TYPES), st.integers(1, 4), st.integers(0, 2**32 - 1), st.floats(-6, 10),
       st.booleans())
def test_round_trip_error_bound(qtype: str, nblk: int, seed: int, log2s: float, with_im: bool) -> None:
    """|x - dequantize(quantize(x))| <= c * step of each block (the level spacing; scales kept in
    fp16's normal range). The imatrix searches trade the largest values' error for a weighted
    least-squares fit, so they get a looser bound (a zero or wild scale still breaks it)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 32 * nblk)) * np.float32(2.0**log2s)).astype(F)
    im = rng.uniform(0.1, 2, 32 * nblk).astype(F) if with_im else None
    y = engine.dequantize(engine.quantize(x, qtype, im), qtype, x.shape[1])
    xb = x.reshape(-1, 32)
    err = np.abs(xb - y.reshape(-1, 32)).max(axis=1)
    amax = np.abs(xb).max(axis=1)
    rng_b = xb.max(axis=1) - np.minimum(xb.min(axis=1), 0)
    step = {"Q4_0": amax / 8, "Q5_0": amax / 16, "Q8_0": amax / 127, "Q4_1": rng_b / 15, "Q5_1": rng_b / 31}[qtype]
    c = 3.0 if (with_im and qtype != "Q8_0") else (0.6 if qtype in ("Q8_0", "Q4_1", "Q5_1") else 1.01)
    assert (err <= c * step * (1 + 2**-9)).all(), (err / step).max()


# --- against the reference library itself (skipped when it is not built) ---------------------

def _ggml():
    if not GGML_LIB.exists():
        pytest.skip(why("QTOOL_GGML_LIB"))
    lib = ctypes.CDLL(str(GGML_LIB))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def _edge_rows(nr: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((nr, n)) * 10.0 ** rng.uniform(-6, 5, (nr, 1))).astype(F)
    x[0] = 0
    x[0, ::3] = -0.0  # signed zeros: the min / max C keeps
    x[1] = rng.standard_normal(n).astype(F) * F(1e-39)  # denormals: 1/d overflows
    x[2] = np.abs(x[2])
    x[2, 5::7] = 0
    x[2, 9::11] = -0.0
    x[3] = rng.integers(-16, 16, n).astype(F) * F(0.5)  # exact ties
    x[4, : n // 2] = F(1e-42)
    x[5] = rng.standard_normal(n).astype(F) * F(1e5)
    x[6] = -np.abs(x[6])
    x[6, 3::5] = 0
    x[7] = F(2.5)
    x[8, ::2] = -0.0
    return x


@pytest.mark.reference
@pytest.mark.parametrize("qtype", TYPES)
def test_against_ggml_random(qtype: str) -> None:
    lib = _ggml()
    for seed, (nr, n) in enumerate([(24, 1024), (12, 96 + 32 * 40)]):
        x = _edge_rows(nr, n, seed)
        im = np.random.default_rng(seed).chisquare(1, n).astype(F)
        im[::4] = 0
        for w in (None, im):
            want = np.zeros((nr, n // 32 * BLOCK_BYTES[qtype]), dtype=np.uint8)
            lib.ggml_quantize_chunk(IDS[qtype], x.ctypes.data, want.ctypes.data, 0, nr, n,
                                    None if w is None else w.ctypes.data)
            with np.errstate(all="ignore"):
                got = engine.quantize(x, qtype, w)
            bad = mismatched_rows(got, want)
            assert not bad, f"{qtype} n={n} imatrix={w is not None}: rows {bad} differ"
