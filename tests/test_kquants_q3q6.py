"""Q3_K, Q6_K and Q8_K against mainline ggml: golden vectors byte for byte, dequantization, packing.

Q3_K / Q6_K vectors are tests/data/vectors/mainline/{Q3_K,Q6_K}.npz (ggml_quantize_chunk with and
without the imatrix). Q8_K.npz was made the same way from `quantize_row_q8_K_ref` /
`dequantize_row_q8_K` of the same libggml-base.so (Q8_K has no ggml_quantize_chunk case).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtool.quants import engine
from qtool.quants.kquants import q3_k, q6_k
from qtool.quants.rounding import nearest_int
from qtool.quants.scratch import Workspace
from tests.vectors import VECTORS, expected, inputs, mismatched_rows

from .refs import ggml_lib, why

GGML_LIB = ggml_lib() or Path("/nonexistent/QTOOL_GGML_LIB")
ROW_BYTES = {"Q3_K": 110, "Q6_K": 210, "Q8_K": 292}


@pytest.fixture(scope="module")
def vec() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return inputs()


@pytest.mark.parametrize("qtype", ["Q3_K", "Q6_K"])
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_bytes(vec, qtype: str, variant: str) -> None:
    x, im, kinds = vec
    want = expected(qtype)[f"q_{variant}"]
    got = engine.quantize(x, qtype, im if variant == "im" else None)
    bad = mismatched_rows(got, want)
    assert not bad, f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"


@pytest.mark.parametrize("qtype", ["Q3_K", "Q6_K"])
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_dequantize(qtype: str, variant: str) -> None:
    e = expected(qtype)
    got = engine.dequantize(e[f"q_{variant}"], qtype, 1024)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, e[f"deq_{variant}"])


def test_q8_k_golden(vec) -> None:
    x, _, kinds = vec
    z = np.load(VECTORS / "mainline" / "Q8_K.npz")
    got = engine.quantize(x, "Q8_K")
    bad = mismatched_rows(got, z["q_noim"])
    assert not bad, f"Q8_K rows {bad} ({[kinds[i] for i in bad]}) differ"
    np.testing.assert_array_equal(engine.dequantize(z["q_noim"], "Q8_K", 1024), z["deq_noim"])


@pytest.mark.parametrize("qtype", ["Q3_K", "Q6_K"])
def test_chunking_and_imatrix_tiling(vec, qtype: str) -> None:
    """More super-blocks than one chunk, rows of 512: row-major imatrix indexing must wrap per row."""
    x, im, _ = vec
    e = expected(qtype)
    xt = np.tile(x, (6, 1))  # 330 rows x 1024 = 1320 super-blocks, several chunks
    np.testing.assert_array_equal(engine.quantize(xt, qtype), np.tile(e["q_noim"], (6, 1)))
    np.testing.assert_array_equal(engine.quantize(xt, qtype, im), np.tile(e["q_im"], (6, 1)))
    # the same data as rows of 512 with the imatrix halves: same bytes (blocks do not cross rows)
    half = engine.quantize(x.reshape(-1, 512)[0::2], qtype, im[:512])
    np.testing.assert_array_equal(half, e["q_im"][:, : ROW_BYTES[qtype] * 2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 63), min_size=16, max_size=16))
def test_q3_scale_packing_roundtrip(ls: list[int]) -> None:
    a = np.array([ls], dtype=np.uint8)
    packed = q3_k.pack_scales_q3(a)
    np.testing.assert_array_equal(q3_k.unpack_scales_q3(packed), a)
    # scale j's low nibble in byte j%8 (high nibble for j >= 8), top bits in byte 8 + j%4
    for j, v in enumerate(ls):
        nib = (packed[0, j % 8] >> (4 if j >= 8 else 0)) & 0xF
        top = (packed[0, 8 + j % 4] >> (2 * (j // 4))) & 3
        assert nib | (top << 4) == v


@pytest.mark.parametrize("qtype,rel", [("Q3_K", 0.35), ("Q6_K", 0.06), ("Q8_K", 0.01)])
@pytest.mark.parametrize("use_im", [False, True])
def test_roundtrip_error(qtype: str, rel: float, use_im: bool) -> None:
    """dequantize(quantize(x)) of gaussian rows: RMS error relative to RMS(x) within the type's bound."""
    if qtype == "Q8_K" and use_im:
        pytest.skip("Q8_K ignores the imatrix")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 2048)).astype(np.float32)
    im = rng.chisquare(2, 2048).astype(np.float32) if use_im else None
    q = engine.quantize(x, qtype, im)
    assert q.shape == (8, 2048 // 256 * ROW_BYTES[qtype])
    y = engine.dequantize(q, qtype, 2048)
    err = np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2))
    assert err < rel, err


def test_zero_and_tiny_blocks() -> None:
    """All-zero and sub-GROUP_MAX_EPS super-blocks: Q6_K writes an all-zero block, Q3_K d = 0."""
    x = np.zeros((2, 512), dtype=np.float32)
    x[1, :256] = 1e-30
    q6 = engine.quantize(x, "Q6_K")
    assert not q6[0].any() and not q6[1, :210].any()
    np.testing.assert_array_equal(engine.dequantize(q6, "Q6_K", 512), np.zeros_like(x))
    q3 = engine.quantize(x, "Q3_K")
    assert not q3.view(q3_k.BLOCK_Q3_K)["d"].any()
    q8 = engine.quantize(x, "Q8_K")
    assert not q8[0].any()


# --- against the reference library itself (skipped when it is not built) ---------------------

def _ggml():
    if not GGML_LIB.exists():
        pytest.skip(why("QTOOL_GGML_LIB"))
    lib = ctypes.CDLL(str(GGML_LIB))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.quantize_row_q8_K_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def _ggml_quantize(lib, qtype: str, x: np.ndarray, im: np.ndarray | None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // 256 * ROW_BYTES[qtype]), dtype=np.uint8)
    if qtype == "Q8_K":
        lib.quantize_row_q8_K_ref(x.ctypes.data, out.ctypes.data, x.size)
        return out
    imc = None if im is None else np.ascontiguousarray(im, dtype=np.float32)
    lib.ggml_quantize_chunk({"Q3_K": 11, "Q6_K": 14}[qtype], x.ctypes.data, out.ctypes.data, 0, x.shape[0],
                            x.shape[1], None if imc is None else imc.ctypes.data)
    return out


@pytest.mark.reference
@pytest.mark.parametrize("qtype", ["Q3_K", "Q6_K", "Q8_K"])
def test_against_ggml_random(qtype: str) -> None:
    lib = _ggml()
    rng = np.random.default_rng(2024)
    n = 1536
    scale = np.exp(rng.uniform(-12, 10, (48, 1)))
    x = (rng.standard_t(3, (48, n)) * scale).astype(np.float32)
    x[5, 100:400] = 0
    x[7, :] = np.float32(1e-6) * np.sign(rng.standard_normal(n))
    x[9, ::3] = 0
    im = rng.chisquare(1, n).astype(np.float32)
    im[::17] = 0
    variants = [None] if qtype == "Q8_K" else [None, im]
    for w in variants:
        got = engine.quantize(x, qtype, w)
        want = _ggml_quantize(lib, qtype, x, w)
        bad = mismatched_rows(got, want)
        assert not bad, f"{qtype} imatrix={w is not None}: rows {bad} differ"


@pytest.mark.parametrize("lo,hi", [(-32, 31), (-4, 3)])
def test_requantize_matches_nearest_int(lo: int, hi: int) -> None:
    """The final re-quantization against clamp(nearest_int(x/d)) element by element, with x/d one
    ulp around every half-integer (a shift by -lo before rounding would turn those into ties), huge
    quotients and d = 0 sub-blocks (which keep the search's levels)."""
    rng = np.random.default_rng(hi)
    m = 64
    d = (rng.uniform(0.01, 3, (m, 16)) * rng.choice([-1, 1], (m, 16))).astype(np.float32)
    half = (rng.integers(lo - 2, hi + 2, (m, 256)) + 0.5).astype(np.float32)
    t = np.nextafter(half, np.where(rng.random((m, 256)) < 0.5, np.inf, -np.inf)).astype(np.float32)
    xs = (t.reshape(m, 16, 16) * d[:, :, None]).reshape(m, 256).astype(np.float32)
    levels = rng.integers(0, hi - lo + 1, (16, 16 * m)).astype(np.uint8)
    ws = Workspace()
    for variant in ("plain", "huge", "zero"):
        dd = d.copy()
        if variant == "huge":
            dd[3, 5] = np.float32(1e-30)
        if variant == "zero":
            dd[7, :4] = 0
        got = q6_k.requantize(xs, dd, lambda: levels, lo, hi, ws).copy()
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = xs.reshape(m, 16, 16) / dd[:, :, None]
        want = (np.clip(nearest_int(q), lo, hi) - lo).astype(np.uint8)
        keep = np.ascontiguousarray(levels.T).reshape(m, 16, 16)
        want = np.where((dd != 0)[:, :, None], want, keep).reshape(m, 256)
        np.testing.assert_array_equal(got, want, err_msg=variant)


@pytest.mark.reference
@pytest.mark.parametrize("qtype", ["Q3_K", "Q6_K"])
def test_against_ggml_many_rows(qtype: str) -> None:
    """256 gaussian rows of 4096 (where a rare tie-rounding slip once showed in 1 row of 256), rows
    on integer grids (ties everywhere), a one-super-block row and a chunk-straddling row count."""
    lib = _ggml()
    rng = np.random.default_rng(77)
    x = rng.standard_normal((256, 4096)).astype(np.float32)
    im = (rng.standard_normal(4096) ** 2 + 0.05).astype(np.float32)
    grid = (rng.integers(-40, 41, (24, 1024)) * np.float32(0.125)).astype(np.float32)
    one = rng.standard_normal((1, 256)).astype(np.float32)
    odd = rng.standard_normal((2051, 256)).astype(np.float32)
    for rows, w in ((x, im), (grid, im[:1024]), (one, im[:256]), (odd, im[:256])):
        for ww in (None, w):
            bad = mismatched_rows(engine.quantize(rows, qtype, ww), _ggml_quantize(lib, qtype, rows, ww))
            assert not bad, f"{qtype} {rows.shape} imatrix={ww is not None}: rows {bad[:10]} differ"
