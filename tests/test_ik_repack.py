"""ik_llama.cpp's row-interleaved Q4_0_R8, Q5_0_R4, Q6_0_R4, Q8_0_R8, Q2_K_R4 .. Q6_K_R4, IQ4_NL_R4,
IQ4_XS_R8 (qtool.quants.ik.repack): the repack is a lossless bit permutation of the base rows,
QHelper's weights and the per-row TriNet test of quantize_q2_k_r4, refusals, the registry; and
byte / bit identity with ik's own ggml_quantize_chunk and to_float (QTOOL_IK_LIB) and with ik's
llama-quantize end to end (QTOOL_IK_BIN)."""

from __future__ import annotations

import ctypes
import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qtool.quants import engine
from qtool.quants.ik import repack as rp
from qtool.quants.registry import support
from qtool.quants.types import get_type

from . import ik_lib, refs
from .vectors import mismatched_rows

F32 = np.float32
TYPES = list(rp.SPECS)
DATA = Path(__file__).parent / "data" / "quantize"


def _rows(rng: np.random.Generator, nrows: int, n: int) -> np.ndarray:
    """Gaussian rows of varied scale with edge rows: all zero, a zero block, tiny, huge, constant."""
    x = (rng.standard_normal((nrows, n)) * rng.exponential(1.0, (nrows, 1))).astype(F32)
    x[1] = 0
    x[2, :64] = 0
    x[3] *= F32(1e-30)
    x[4] *= F32(1e4)
    x[5] = F32(0.25)
    x[6, 32:48] = F32(1e-12)
    return x


def _imatrix(rng: np.random.Generator, n: int) -> np.ndarray:
    im = rng.exponential(1.0, n).astype(F32)
    im[64:96] = 0  # a block without weight: QHelper gives it 1e-9
    return im


def _base(name: str, rows: np.ndarray, im: np.ndarray | None = None) -> np.ndarray:
    return engine.quantize(rows, rp.SPECS[name].base, im, flavour="ik")


# ---- the repack as a permutation ----------------------------------------------------------------

@pytest.mark.parametrize("name", TYPES)
def test_repack_is_a_bit_permutation(name: str) -> None:
    """Every bit of R base blocks lands on one bit of the interleaved block and back; the table
    agrees with the literal transliteration of repack_<type> on random bytes (which would expose
    an operation that is not a pure move of bits); popcount kept; un-repack inverts."""
    s = rp.SPECS[name]
    bb = get_type(s.base).type_size
    src = rp.bit_permutation(name)
    assert np.array_equal(np.sort(src), np.arange(s.rows * bb * 8))
    rng = np.random.default_rng(3)
    nb = 3
    base = rng.integers(0, 256, (2 * s.rows, nb * bb), dtype=np.uint8)
    got = rp.repack(base, name)
    g = base.reshape(2, s.rows, nb, bb).transpose(0, 2, 1, 3).reshape(-1, s.rows, bb).astype(np.int64)
    direct = s.translit(g).astype(np.uint8).reshape(2 * s.rows, nb * bb)
    assert np.array_equal(got, direct)
    assert np.unpackbits(got).sum() == np.unpackbits(base).sum()
    assert np.array_equal(rp.unrepack(got, name), base)
    assert not np.array_equal(got, base)  # it does move things


@pytest.mark.parametrize("name", ["Q4_0_R8", "Q8_0_R8"])
def test_legacy_r8_is_a_byte_permutation(name: str) -> None:
    """Q4_0_R8 / Q8_0_R8 move whole bytes (no 0x88 / +127 bias without `online`): each group of 8
    rows keeps its multiset of bytes, and the scales are the 8 rows' fp16 d in order."""
    rng = np.random.default_rng(4)
    rows = _rows(rng, 16, 256)
    base = _base(name, rows)
    r = rp.repack(base, name)
    bb = get_type(rp.SPECS[name].base).type_size
    for g in range(2):
        assert np.array_equal(np.sort(r[8 * g:8 * g + 8].reshape(-1)), np.sort(base[8 * g:8 * g + 8].reshape(-1)))
        first = r[8 * g:8 * g + 8].reshape(-1)[:16]  # block 0: d[8]
        assert np.array_equal(first, base[8 * g:8 * g + 8, :2].reshape(-1))
    assert r.shape == base.shape
    assert not np.array_equal(r[:, bb:2 * bb], base[:, bb:2 * bb])  # the bytes moved across rows


@pytest.mark.parametrize("name", TYPES)
def test_quantize_is_repacked_base(name: str) -> None:
    """Without an imatrix (and with one where no block trips QHelper) the R rows are the base type's
    rows of qtool's ik kernel, interleaved; dequantizing gives the base values (the repack loses
    nothing): bit for bit except Q5_0_R4 / Q6_0_R4, whose ik dequantizer computes d*L - 16d / 32d."""
    rng = np.random.default_rng(5)
    rows = (rng.standard_normal((8, 512)) * 2).astype(F32)
    im = rng.exponential(1.0, 512).astype(F32) + F32(0.1)
    for imx in (None, im):
        base = _base(name, rows, imx)
        q = engine.quantize(rows, name, imx, flavour="ik")
        assert np.array_equal(q, rp.repack(base, name))
        y = engine.dequantize(q, name, 512)
        yb = engine.dequantize(base, rp.SPECS[name].base, 512)
        if name in ("Q5_0_R4", "Q6_0_R4"):
            np.testing.assert_allclose(y, yb, rtol=2e-7, atol=1e-30)
        else:
            assert np.array_equal(y.view(np.uint32), yb.view(np.uint32))


def test_q5_0_q6_0_dequantize_formula() -> None:
    """dequantize_row_q5_0_r4: d*L + (-16*d) in float32, one value written out by hand."""
    d = F32(0.1)
    rows = np.full((4, 32), 0, F32)
    base = _base("Q5_0_R4", rows)
    base[:, 0:2] = np.array([d], np.float16).view(np.uint8)
    base[:, 2:6] = 0
    base[:, 6:22] = 0x33  # L = 3 everywhere
    y = engine.dequantize(rp.repack(base, "Q5_0_R4"), "Q5_0_R4", 32)
    dd = F32(np.float16(d))
    assert np.all(y == F32(dd * F32(3)) + F32(F32(-16) * dd))


# ---- QHelper and TriNet ---------------------------------------------------------------------------

def test_qhelper_flags() -> None:
    """QHelper::row_weights: a block is re-weighted (1e-9) when its x², w² or w|x| sum is not above
    block*1e-18: here row 1 (zeros), row 2's first two blocks, and every row's block 2 (w = 0)."""
    rng = np.random.default_rng(6)
    rows = _rows(rng, 8, 256)
    im = _imatrix(rng, 256)
    f = rp.helper_block_flags(rows, im, 32)
    want = np.zeros((8, 8), bool)
    want[:, 2] = True
    want[1] = True
    want[2, :2] = True
    want[3] = True  # 1e-30 * x: x² sums underflow below 32e-18
    assert np.array_equal(f, want)


def test_qhelper_weights_change_the_bytes() -> None:
    """With the imatrix's zero block, ik's per-row weights (1e-9 there) give other bytes than the
    plain imatrix would for some rows; quantize equals the base kernel run with those weights."""
    rng = np.random.default_rng(7)
    rows = _rows(rng, 8, 256)
    im = _imatrix(rng, 256)
    q = engine.quantize(rows, "Q4_K_R4", im, flavour="ik")
    plain = rp.repack(_base("Q4_K_R4", rows, im), "Q4_K_R4")
    assert mismatched_rows(q, plain) != []
    w = im.copy()
    w[64:96] = F32(1e-9)
    r0 = np.nonzero(~rp.helper_block_flags(rows, im, 32)[:, [0, 1, 3, 4, 5, 6, 7]].any(axis=1))[0]
    base = _base("Q4_K_R4", rows, w)
    assert np.array_equal(rp.unrepack(q, "Q4_K_R4")[r0], base[r0])


def test_q2_k_r4_trinet_per_row() -> None:
    """quantize_q2_k_r4 calls quantize_q2_K one row at a time, so the TriNet test is per row: a
    ternary row among gaussian ones is written ternary (d = dmin = max, values {-max, 0, max})."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 256)).astype(F32)
    x[2] = rng.integers(-1, 2, 256).astype(F32) * F32(0.5)
    mx, tri = rp.trinet_rows(x)
    assert tri.tolist() == [False, False, True, False] and mx[2] == F32(0.5)
    q = engine.quantize(x, "Q2_K_R4", None, flavour="ik")
    y = engine.dequantize(q, "Q2_K_R4", 256)
    assert np.array_equal(y[2], x[2])
    assert np.array_equal(rp.unrepack(q, "Q2_K_R4")[[0, 1, 3]], _base("Q2_K_R4", x[[0, 1, 3]]))
    whole = _base("Q2_K_R4", x)  # the plain Q2_K sees all four rows: not ternary
    assert mismatched_rows(rp.unrepack(q, "Q2_K_R4"), whole) == [2]
    bad = x.copy()
    bad[2, 7] = np.inf
    assert not rp.trinet_rows(bad)[1][2]


# ---- refusals and registry ------------------------------------------------------------------------

@pytest.mark.parametrize("name", TYPES)
def test_refuses_rows_not_a_multiple(name: str) -> None:
    """ik asserts nrows % R == 0 (quantize_repack / repack_*): refused with a ValueError."""
    s = rp.SPECS[name]
    n = get_type(name).block_size * (1 if get_type(name).block_size == 256 else 8)
    x = np.ones((s.rows + 2, n), F32)
    with pytest.raises(ValueError, match=f"not a multiple of {s.rows}"):
        engine.quantize(x, name, None, flavour="ik")
    with pytest.raises(ValueError, match=f"not a multiple of {s.rows}"):
        engine.dequantize(np.zeros((s.rows + 2, get_type(name).row_bytes(n)), np.uint8), name, n)


@pytest.mark.parametrize("name", TYPES)
def test_registry(name: str) -> None:
    t = get_type(name)
    assert t.repack_of == rp.SPECS[name].base and t.rows_interleaved == rp.SPECS[name].rows
    assert support(name, "ik") == (True, True)
    assert support(name, "mainline") == (False, False)
    assert engine.can_dequantize(name)


# ---- against ik_llama.cpp's libggml ---------------------------------------------------------------

@pytest.fixture(scope="module")
def iklib() -> ctypes.CDLL:
    if refs.ik_lib() is None:
        pytest.skip(refs.why("QTOOL_IK_LIB"))
    return ik_lib.load()


@pytest.mark.parametrize("name", TYPES)
def test_against_ik_library(iklib: ctypes.CDLL, name: str) -> None:
    """ggml_quantize_chunk of 16 rows (edge rows, a ternary row for Q2_K_R4's per-row TriNet) with
    and without an imatrix (with a zero block: QHelper), and ik's to_float on those bytes."""
    rng = np.random.default_rng(9)
    x = _rows(rng, 16, 512)
    x[9] = rng.integers(-1, 2, 512).astype(F32) * F32(0.03)
    im = _imatrix(rng, 512)
    for imx in (None, im):
        want = ik_lib.quantize(iklib, name, x, imx)
        got = engine.quantize(x, name, imx, flavour="ik")
        assert mismatched_rows(got, want) == [], (name, imx is not None)
        yw = ik_lib.to_float(iklib, name, want, 512, rp.SPECS[name].rows)
        yg = engine.dequantize(want, name, 512)
        assert np.array_equal(yg.view(np.uint32), yw.view(np.uint32)), name


# ---- end to end against ik's llama-quantize -------------------------------------------------------

@pytest.mark.parametrize("ftype", ["Q2_K_R4", "Q4_0_R8", "IQ4_XS_R8"])
def test_cli_against_ik_llama_quantize(tmp_path: Path, ftype: str) -> None:
    """qtool quantize --flavour ik tiny-256.gguf FTYPE writes the file ik's llama-quantize writes."""
    exe = refs.ik_bin("llama-quantize")
    if exe is None:
        pytest.skip(refs.why("QTOOL_IK_BIN"))
    src = tmp_path / "tiny.gguf"
    src.write_bytes(lzma.decompress((DATA / "tiny-256.gguf.xz").read_bytes()))
    want, got = tmp_path / "ik.gguf", tmp_path / "q.gguf"
    subprocess.run([str(exe), str(src), str(want), ftype, "1"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "qtool", "quantize", "--flavour", "ik", str(src), str(got), ftype, "1"],
                   check=True, capture_output=True)
    assert got.read_bytes() == want.read_bytes()
