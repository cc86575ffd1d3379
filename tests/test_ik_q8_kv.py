"""ik_llama.cpp's Q8_KV, Q8_KV_R8, Q8_K_R8, BF16_R16 and the ARM repacks Q4_0_4_4 / Q4_0_4_8 /
Q4_0_8_8 (qtool.quants.ik.q8_kv): hand-computed golden bytes, the interleaves against literal
transliterations of the C loops, the AVX2 max fold with NaN, refusals, the registry, the files
ik's llama-quantize writes for tiny-256 (recorded sha256, with and without an imatrix), and
byte / bit identity with ik's ggml_quantize_chunk and to_float (QTOOL_IK_LIB)."""

from __future__ import annotations

import ctypes
import hashlib
import lzma
import os
from pathlib import Path

import numpy as np
import pytest

from qtool.api import quantize_file
from qtool.errors import QtoolError
from qtool.quants import engine
from qtool.quants.ik import q8_kv as qk
from qtool.quants.registry import support
from qtool.quants.types import get_type

from . import ik_lib, refs
from .vectors import mismatched_rows

F32 = np.float32
DATA = Path(__file__).parent / "data" / "quantize"
TYPES = ["Q8_KV", "Q8_KV_R8", "Q8_K_R8", "BF16_R16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8"]
ROWS = {"Q8_KV": 1, "Q8_KV_R8": 8, "Q8_K_R8": 8, "BF16_R16": 16, "Q4_0_4_4": 4, "Q4_0_4_8": 4, "Q4_0_8_8": 8}
Q40X = ["Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8"]


def _rows(rng: np.random.Generator, nrows: int, n: int, finite: bool = False) -> np.ndarray:
    """Gaussian rows of varied scale with edge rows (zero, a zero block, tiny, huge, constant,
    denormal, ±0.5 ties) and, unless `finite`, rows with inf / NaN (first, middle, last lane)."""
    x = (rng.standard_normal((nrows, n)) * rng.exponential(1.0, (nrows, 1))).astype(F32)
    x[1] = 0
    x[2, :64] = 0
    x[3] *= F32(1e-30)
    x[4] *= F32(1e4)
    x[5] = F32(0.25)
    x[6, 32:48] = F32(1e-12)
    x[10] = F32(1e-45)
    x[11, ::2], x[11, 1::2] = F32(0.5), F32(-0.5)
    x[12] = np.round(x[12] * 4) / 4  # many exact ties after scaling
    m = min(126, n // 2 - 1)
    for r in range(14, min(nrows, 24)):  # values near (k + 1/2) d: 127/max and 1/d round some differently
        mx = F32(np.abs(x[r]).max())
        x[r, :m] = (np.arange(m, dtype=F32) + F32(0.5)) * (mx / F32(127))
        x[r, m:2 * m] = np.nextafter(x[r, :m], F32(0))
        x[r, [2 * m, -1]] = mx  # the max of the row and of its first 256-block (Q8_K_R8's scale)
    if not finite:
        x[7, 5] = np.inf
        x[8, 9] = np.nan
        x[9, -1] = np.nan
        x[13, 0] = np.nan
    return x


# ---- library-free: golden bytes and transliterations ----------------------------------------------

def test_q8_kv_golden_row() -> None:
    """max 127 -> d = 1, mul = 1: quants are the round-half-even values, the header {d, sum}."""
    x = np.zeros((1, 32), F32)
    x[0, :6] = [127, -2.5, 3.5, 0.5, -126.6, 1.49]
    q = engine.quantize(x, "Q8_KV", None, flavour="ik")
    assert q.shape == (1, 40)
    assert q[0, :4].view(F32)[0] == F32(1)
    want = np.array([127, -2, 4, 0, -127, 1] + [0] * 26, np.int8)
    assert np.array_equal(q[0, 8:].view(np.int8), want)
    assert q[0, 4:8].view(np.int32)[0] == int(want.astype(np.int64).sum())
    assert np.array_equal(engine.dequantize(q, "Q8_KV", 32)[0], want.astype(F32))
    z = engine.quantize(np.zeros((1, 64), F32), "Q8_KV", None, flavour="ik")
    assert not z.any()


def test_q8_kv_scale_is_max_over_127_then_reciprocal() -> None:
    """d = max/127.f and the multiplier is 1/d, not 127/max: rows of values near (k + 1/2) d,
    where the two multipliers round some values differently."""
    rng = np.random.default_rng(3)
    rows = []
    while len(rows) < 4:
        mx = F32(rng.uniform(0.1, 10))
        d = F32(mx / F32(127))
        k = np.arange(126, dtype=F32)
        x = ((k + F32(0.5)) * d).astype(F32)
        x = np.concatenate([[mx], x, np.nextafter(x, F32(0)), np.nextafter(x, F32(100))])[:256].astype(F32)
        if (np.rint(x * (F32(1) / d)) != np.rint(x * (F32(127) / mx))).any():
            rows.append(x)
    xr = np.stack(rows)
    q = engine.quantize(xr, "Q8_KV", None, flavour="ik")
    d = (xr[:, 0] / F32(127)).astype(F32)
    assert np.array_equal(q[:, :4].copy().view(F32)[:, 0], d)
    want = np.rint(xr * (F32(1) / d)[:, None]).astype(np.int8)
    assert np.array_equal(q[:, 8:].view(np.int8), want)


def _fold_scalar(v: np.ndarray) -> F32:
    """The literal _mm256_max_ps fold over 8-float loads and hmax_f32_8, one float at a time."""
    acc = [F32(0)] * 8
    a = np.abs(v)
    for ib in range(a.size // 8):
        for j in range(8):
            b = a[8 * ib + j]
            acc[j] = acc[j] if acc[j] > b else b
    m4 = [acc[4 + j] if acc[4 + j] > acc[j] else acc[j] for j in range(4)]
    m2 = [m4[j] if m4[j] > m4[j + 2] else m4[j + 2] for j in range(2)]
    return F32(m2[0] if m2[0] > m2[1] else m2[1])


def test_lane_absmax_matches_the_avx2_fold_with_nan() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 64)).astype(F32)
    for i, pos in enumerate([0, 7, 8, 31, 56, 63, 62, 15]):
        x[i, pos] = np.nan
    x[8, [3, 40]] = np.nan
    x[9, [3, 59]] = np.nan
    x[10, 10] = np.inf
    got = qk.lane_absmax(x)
    want = np.array([_fold_scalar(r) for r in x], F32)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.isnan(got).any() and not np.isnan(got).all()


def test_q8_kv_r8_is_the_interleave_of_q8_kv() -> None:
    """repack_q8_KV's AVX2 unpacks = qs[128 ib + 32 l + 4 k + i] = x8[k][16 ib + 4 l + i] (the
    scalar loop), d[8] first, row sums dropped."""
    rng = np.random.default_rng(5)
    x = _rows(rng, 16, 64)
    base = engine.quantize(x, "Q8_KV", None, flavour="ik")
    r8 = engine.quantize(x, "Q8_KV_R8", None, flavour="ik")
    assert r8.shape == (16, 68)
    for g in range(2):
        y = r8[8 * g:8 * g + 8].reshape(-1)
        xs = base[8 * g:8 * g + 8]
        assert np.array_equal(y[:32], xs[:, :4].reshape(-1))
        qs = y[32:]
        for ib in range(4):
            for l in range(4):
                for k in range(8):
                    for i in range(4):
                        assert qs[128 * ib + 32 * l + 4 * k + i] == xs[k, 8 + 16 * ib + 4 * l + i]
    y8 = engine.dequantize(r8, "Q8_KV_R8", 64)
    assert np.array_equal(y8.view(np.uint32), engine.dequantize(base, "Q8_KV", 64).view(np.uint32))


def test_q8_k_r8_golden_and_interleave() -> None:
    """quantize_row_q8_K32: d = max/127 as fp16, q = rint(127/max * x); repack_q8_k's 4-byte interleave."""
    rng = np.random.default_rng(6)
    x = _rows(rng, 16, 512, finite=True)
    q = engine.quantize(x, "Q8_K_R8", None, flavour="ik")
    assert q.shape == (16, 516)
    for r in (0, 4, 12):
        for ibl in range(2):
            blk = q[8 * (r // 8):8 * (r // 8) + 8].reshape(2, 2064)[ibl]
            k = r % 8
            xb = x[r, 256 * ibl:256 * ibl + 256]
            mx = np.abs(xb).max()
            d = np.array([mx / F32(127)], F32).astype(np.float16).view(np.uint16)[0]
            assert blk[2 * k:2 * k + 2].view(np.uint16)[0] == d
            want = np.rint(xb * (F32(127) / mx)).astype(np.int8)
            got = np.array([blk[16 + 32 * ib + 4 * k + i] for ib in range(64) for i in range(4)], np.uint8)
            assert np.array_equal(got.view(np.int8), want)
    y = engine.dequantize(q, "Q8_K_R8", 512)
    assert np.abs(y - x).max() <= np.abs(x).max() / 127


def test_bf16_r16_truncates_and_interleaves() -> None:
    """to_bf16 is u >> 16 (truncation, not round-to-nearest); y[32 ib + 2 k + j] = row k's x[2 ib + j]."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 8)).astype(F32)
    x[0, 0] = np.array(0x3F80FFFF, np.uint32).view(F32)  # rounds up to 0x3F81, truncates to 0x3F80
    q = engine.quantize(x, "BF16_R16", None, flavour="ik").reshape(-1).view(np.uint16)
    assert q[0] == 0x3F80
    h = (x.view(np.uint32) >> 16).astype(np.uint16)
    for ib in range(4):
        for k in range(16):
            for j in range(2):
                assert q[32 * ib + 2 * k + j] == h[k, 2 * ib + j]
    y = engine.dequantize(q.view(np.uint8).reshape(16, 16), "BF16_R16", 8)
    assert np.array_equal(y.view(np.uint32), h.astype(np.uint32) << 16)


def _make_block_q4_0x(blocks: np.ndarray, r: int, bl: int) -> np.ndarray:
    """make_block_q4_0x4 / x8 literally: d[r] then qs[i] = in[src_id].qs[src_offset] ^ 0x88."""
    out = np.zeros(18 * r, np.uint8)
    for i in range(r):
        out[2 * i:2 * i + 2] = blocks[i, 0:2]
    for i in range(16 * r):
        src_offset = (i // (r * bl)) * bl + i % bl
        src_id = (i % (r * bl)) // bl
        out[2 * r + i] = blocks[src_id, 2 + src_offset] ^ 0x88
    return out


@pytest.mark.parametrize("name", Q40X)
def test_q4_0_x_is_make_block_of_q4_0(name: str) -> None:
    r, bl = {"Q4_0_4_4": (4, 4), "Q4_0_4_8": (4, 8), "Q4_0_8_8": (8, 8)}[name]
    rng = np.random.default_rng(8)
    x = _rows(rng, 16, 96, finite=True)
    base = engine.quantize(x, "Q4_0", None, flavour="ik")
    q = engine.quantize(x, name, None, flavour="ik")
    for g in range(16 // r):
        y = q[r * g:r * g + r].reshape(3, 18 * r)
        for b in range(3):
            blocks = base[r * g:r * g + r, 18 * b:18 * b + 18]
            assert np.array_equal(y[b], _make_block_q4_0x(blocks, r, bl))
    y = engine.dequantize(q, name, 96)
    assert np.array_equal(y.view(np.uint32), engine.dequantize(base, "Q4_0", 96).view(np.uint32))


@pytest.mark.parametrize("name", [t for t in TYPES if ROWS[t] > 1])
def test_refuses_rows_not_a_multiple(name: str) -> None:
    r = ROWS[name]
    n = 256
    with pytest.raises(ValueError, match=f"not a multiple of {r}"):
        engine.quantize(np.ones((r + 2, n), F32), name, None, flavour="ik")
    with pytest.raises(ValueError, match=f"not a multiple of {r}"):
        engine.dequantize(np.zeros((r + 2, get_type(name).row_bytes(n)), np.uint8), name, n)


@pytest.mark.parametrize("name", TYPES)
def test_registry(name: str) -> None:
    """ik only; Q4_0_x without an imatrix only (ik's quantize_q4_0_4x4 asserts it has none)."""
    assert support(name, "ik") == ((True, False) if name in Q40X else (True, True))
    assert support(name, "mainline") == (False, False)
    assert engine.can_dequantize(name)


# ---- end to end: the files ik's llama-quantize writes ---------------------------------------------

# sha256 of `llama-quantize [--imatrix tiny-256.imatrix.dat] tiny-256.gguf out.gguf FTYPE 2` (ik_llama.cpp,
# run in tests/data/quantize); ik aborts on Q4_0_4_4 / _4_8 / _8_8 with an imatrix (its quantize writes
# nothing: GGML_ASSERT(result == nrows * row_size)).
IK_SHA256 = {
    "Q8_KV": "1bde540527afa7467a6bb1e4107352b6bf2ef4137a801d2b58a4320684671191",
    "Q8_KV_R8": "a33274ca6d051154ddcff15320e71a308f71a1d7cc043d91f3bee7ca278fd629",
    "Q8_K_R8": "1d856db70cbf41d16091f5cb4eae8a0fcc3fccd44089b8e7ad1df2edbacd65d8",
    "BF16_R16": "59701033cd3c4310e6e2b53ea1acd12015d701c8bb0145aa15dd9ee7b4854b13",
    "Q4_0_4_4": "1af5c512d93c83406d442e3f54ce3d24b1fc2a055002afcb2d1da468a37dc972",
    "Q4_0_4_8": "a91c97f1fe07b1961ac0e892697215e91b0527e2134fb4b70d36b3c3eb88e0e0",
    "Q4_0_8_8": "366ebacae1f8ce6f94dec25476324cd8818d18f197ca6281ac6631cd44d6c3dd",
    "Q8_KV-imdat": "fb3cbfdfc1c06ff6bd5227733e4fcc82d5d779276d01a3dd05d30507eb1f3925",
    "Q8_KV_R8-imdat": "9d2d1865f54efdd80b7b6b3a6a08ddbe3b82587ae52a62efd29faca762954a2b",
    "Q8_K_R8-imdat": "6c2343bc2394b83fa87e99cbeccda9d907cd05dc537225ffecd73c79f0890337",
    "BF16_R16-imdat": "77b2ac5ec38395c459da62be9c92653fe3ac28e31edc7eb1d865f2518d72b6f2",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("q8kv") / "tiny-256.gguf"
    p.write_bytes(lzma.decompress((DATA / "tiny-256.gguf.xz").read_bytes()))
    return p


@pytest.mark.parametrize("case", sorted(IK_SHA256))
def test_file_as_ik_llama_quantize(case: str, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ftype, _, im = case.partition("-")
    monkeypatch.chdir(DATA)
    out = tmp_path / "out.gguf"
    kw = {"imatrix": "tiny-256.imatrix.dat"} if im else {}
    quantize_file(tiny, out, ftype, nthreads=1, flavour="ik", **kw)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == IK_SHA256[case]


@pytest.mark.parametrize("ftype", Q40X)
def test_q4_0_x_with_imatrix_refused(ftype: str, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    with pytest.raises(QtoolError, match=ftype.lower()):
        quantize_file(tiny, tmp_path / "out.gguf", ftype, nthreads=1, flavour="ik", imatrix="tiny-256.imatrix.dat")
    assert os.listdir(tmp_path) == []


# ---- against ik_llama.cpp's libggml ---------------------------------------------------------------

@pytest.fixture(scope="module")
def iklib() -> ctypes.CDLL:
    if refs.ik_lib() is None:
        pytest.skip(refs.why("QTOOL_IK_LIB"))
    return ik_lib.load()


@pytest.mark.parametrize("name", TYPES)
def test_against_ik_library(iklib: ctypes.CDLL, name: str) -> None:
    """ggml_quantize_chunk of 32 rows x 512 (edge rows; inf / NaN rows except for Q4_0_x, whose
    quantize_row_q4_0_ref casts NaN to int8: undefined), with and without an imatrix (ignored by
    ik), and ik's to_float on those bytes where it has one (Q8_KV, Q8_KV_R8, Q8_K_R8)."""
    rng = np.random.default_rng(9)
    x = _rows(rng, 32, 512, finite=name in Q40X)
    im = rng.exponential(1.0, 512).astype(F32)
    for imx in ((None,) if name in Q40X else (None, im)):
        want = ik_lib.quantize(iklib, name, x, imx)
        got = engine.quantize(x, name, imx, flavour="ik")
        assert mismatched_rows(got, want) == [], (name, imx is not None)
    fp = iklib.ggml_internal_get_type_traits(get_type(name).id).to_float
    if not fp:
        return
    yw = ik_lib.to_float(iklib, name, want, 512, ROWS[name])
    yg = engine.dequantize(want, name, 512)
    assert np.array_equal(yg.view(np.uint32), yw.view(np.uint32)), name
