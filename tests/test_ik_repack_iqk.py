"""ik_llama.cpp's row-interleaved IQK and lattice types (qtool/quants/ik/repack_iqk.py,
repack_lattice.py): quantize bytes and dequantized values against ik's libggml
(ggml_quantize_chunk, the type's to_float) on random rows with edge rows, both imatrix variants;
without the library: the repack is a bijection that round-trips, the values equal the base type's
row for row, scalar transliterations of two C repacks, bad input, the registry."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.quants import can_quantize, dequantize, get_type, quantize
from qtool.quants.ik import bitnet
from qtool.quants.ik.repack_iqk import SPECS as IQK_SPECS
from qtool.quants.ik.repack_iqk import repack_iq4_k
from qtool.quants.ik.repack_lattice import SCRAMBLED_SIGN, repack_iq2_xxs, repack_iq3_s
from qtool.quants.ik.repack_lattice import SPECS as LATTICE_SPECS

from . import ik_lib, refs

F32 = np.float32
DATA = Path(__file__).parent / "data" / "quantize"
SPECS = {**IQK_SPECS, **LATTICE_SPECS}
TYPES = list(SPECS)
VARIANTS = {t: (True,) if t in ("IQ2_XXS_R4", "IQ2_XS_R4") else (False, True) for t in TYPES}


def _rows(nrows: int, n: int, seed: int) -> np.ndarray:
    """Random rows of varied scale with edge rows: all zero, a zero block, tiny, one outlier,
    all equal, negative only."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((nrows, n)) * rng.exponential(1.0, (nrows, 1))).astype(F32)
    x[1] = 0
    x[2, :64] = 0
    x[3] *= F32(1e-30)
    x[5, min(100, n - 1)] = 50
    x[6] = 0.5
    x[7] = -np.abs(x[7])
    return x


def _imatrix(n: int, seed: int, zero_block: bool = False) -> np.ndarray:
    im = np.random.default_rng(seed).exponential(1.0, n).astype(F32)
    if zero_block:
        im[32:64] = 0  # QHelper replaces these weights by 1e-9 (the lattice types)
    return im


# ---- without the library ----------------------------------------------------------------------

def test_registry() -> None:
    for t in TYPES:
        assert get_type(t).repack_of == SPECS[t].base
        for v in (False, True):
            assert can_quantize(t, "ik", v) == (v in VARIANTS[t]), (t, v)
            assert not can_quantize(t, "mainline", v)


@pytest.mark.parametrize("qtype", TYPES)
def test_repack_roundtrip_random_bytes(qtype: str) -> None:
    """Random bytes in base layout (2 groups x 2 super-blocks): unpack(repack(q)) == q, and the
    repack moves every bit (a different input bit changes the output)."""
    s = SPECS[qtype]
    rb = get_type(s.base).row_bytes(2 * get_type(s.base).block_size * (256 // get_type(s.base).block_size))
    q = np.random.default_rng(1).integers(0, 256, (2 * s.nrep, rb), dtype=np.uint8)
    r = s.repack(q)
    assert r.shape == q.shape and not np.array_equal(r, q)
    assert np.array_equal(s.unpack(r), q)
    q2 = q.copy()
    q2[s.nrep + 1, -1] ^= 0x80
    r2 = s.repack(q2)
    assert np.array_equal(r2[:s.nrep], r[:s.nrep]) and not np.array_equal(r2, r)


@pytest.mark.parametrize("qtype", TYPES)
def test_values_equal_base_type(qtype: str) -> None:
    """dequantize(quantize_R4(rows)) == dequantize(quantize_base(rows)), row for row."""
    s = SPECS[qtype]
    n = 256 if s.qhelper_block else 512
    x = _rows(8, n, 2)
    im = _imatrix(n, 3) if True in VARIANTS[qtype] else None
    q = quantize(x, qtype, im, flavour="ik")
    qb = quantize(x, s.base, im, flavour="ik")
    base_deq = bitnet.dequantize_iq2_bn_scaled if s.base == "IQ2_BN" else (lambda d, m: dequantize(d, s.base, m))
    assert np.array_equal(dequantize(q, qtype, n), base_deq(qb, n))
    if not s.qhelper_block:  # the base bytes, interleaved
        assert np.array_equal(s.unpack(q), qb)


def _repack_iq4_k_scalar(x: list[bytes]) -> bytes:
    """Line-by-line transliteration of iqk_quantize.cpp repack_iq4_k on one super-block of 4 rows."""
    y = bytearray(576)
    d, extra, sh_, sl_, qs = 0, 8, 16, 32, 64
    for k in range(4):
        b = x[k]
        y[d + 2 * k:d + 2 * k + 2] = b[0:2]
        ex = b[2] | (b[3] << 8)
        for ib in range(8):
            if ex & 1:
                y[extra + k] |= 1 << ib
            if ex & 2:
                y[extra + k + 4] |= 1 << ib
            ex >>= 2
            sl1, sl2 = b[8 + ib] & 0xF, b[8 + ib] >> 4
            sh = b[4 + ib // 2] >> 4 * (ib % 2)
            sh1, sh2 = sh & 3, (sh >> 2) & 3
            i = 8 * ib + k
            y[sl_ + i % 32] |= sl1 << 4 * (i // 32)
            y[sh_ + i % 16] |= sh1 << 2 * (i // 16)
            i += 4
            y[sl_ + i % 32] |= sl2 << 4 * (i // 32)
            y[sh_ + i % 16] |= sh2 << 2 * (i // 16)
    for ib in range(8):
        for k in range(4):
            q = x[k][16:]
            for i in range(4):
                y[qs + 64 * ib + 4 * k + i + 0] = (q[16 * ib + i] & 0xF) | ((q[16 * ib + i + 8] & 0x0F) << 4)
                y[qs + 64 * ib + 4 * k + i + 16] = (q[16 * ib + i] >> 4) | (q[16 * ib + i + 8] & 0xF0)
                y[qs + 64 * ib + 4 * k + i + 32] = (q[16 * ib + i + 4] & 0xF) | ((q[16 * ib + i + 12] & 0x0F) << 4)
                y[qs + 64 * ib + 4 * k + i + 48] = (q[16 * ib + i + 4] >> 4) | (q[16 * ib + i + 12] & 0xF0)
    return bytes(y)


def _repack_iq3_s_scalar(x: list[bytes]) -> bytes:
    """Transliteration of repack_iq3_s on one super-block of 4 rows."""
    y = bytearray(440)
    d, qs, qh, signs, scales = 0, 8, 264, 296, 424
    for k in range(4):
        b = x[k]
        xqs, xqh, xsg, xsc = b[2:66], b[66:74], b[74:106], b[106:110]
        y[d + 2 * k:d + 2 * k + 2] = b[0:2]
        for ib in range(4):
            j = 8 * ib + k
            y[scales + (j + 0) % 16] |= (xsc[ib] & 0xF) << 4 * ((j + 0) // 16)
            y[scales + (j + 4) % 16] |= (xsc[ib] >> 4) << 4 * ((j + 4) // 16)
        for ib in range(8):
            y[qh + 4 * ib + k] = xqh[ib]
            for i in range(4):
                y[qs + 32 * ib + k + 8 * i + 0] = xqs[8 * ib + i + 0]
                y[qs + 32 * ib + k + 8 * i + 4] = xqs[8 * ib + i + 4]
            for i in range(4):
                v = 0
                for m in range(4):
                    s = xsg[4 * ib + m]
                    v |= (((s >> i) & 1) << (2 * m)) | (((s >> (4 + i)) & 1) << (2 * m + 1))
                y[signs + 16 * ib + 4 * k + i] = v
    return bytes(y)


def _repack_iq2_xxs_scalar(x: list[bytes]) -> bytes:
    """Transliteration of repack_iq2_xxs (scrambled_sign included) on one super-block of 4 rows."""
    y = bytearray(264)
    for k in range(4):
        b = x[k]
        y[2 * k:2 * k + 2] = b[0:2]
        for ib in range(8):
            a0 = b[2 + 8 * ib:6 + 8 * ib]
            a1 = int.from_bytes(b[6 + 8 * ib:10 + 8 * ib], "little")
            y[136 + 16 * ib + 4 * k:136 + 16 * ib + 4 * k + 4] = a0
            scale = a1 >> 28
            s = [(int(SCRAMBLED_SIGN[(a1 >> 7 * m) & 127]) << 1) | ((scale >> m) & 1) for m in range(4)]
            y[8 + 4 * (4 * ib + k):8 + 4 * (4 * ib + k) + 4] = bytes(s)
    return bytes(y)


@pytest.mark.parametrize(("fn", "scalar", "block"), [(repack_iq4_k, _repack_iq4_k_scalar, 144),
                                                    (repack_iq3_s, _repack_iq3_s_scalar, 110),
                                                    (repack_iq2_xxs, _repack_iq2_xxs_scalar, 66)])
def test_repack_matches_scalar_transliteration(fn, scalar, block: int) -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (3, 4, block), dtype=np.uint8)
    if fn is repack_iq2_xxs:
        pre = LATTICE_SPECS["IQ2_XXS_R4"].pre
        assert pre is not None
        got = fn(pre(x))
    else:
        got = fn(x)
    for m in range(3):
        assert bytes(got[m]) == scalar([bytes(x[m, k]) for k in range(4)])


@pytest.mark.parametrize("qtype", ["IQ4_K_R4", "MXFP4_R8", "IQ3_S_R4"])
def test_rows_not_a_multiple_of_the_interleave(qtype: str) -> None:
    """ik asserts nrows % 4 (8) == 0; the port raises (llama-quantize falls back to the base type)."""
    s = SPECS[qtype]
    with pytest.raises(ValueError, match="not a multiple of"):
        quantize(np.ones((s.nrep + 2, 256), F32), qtype, _imatrix(256, 0), flavour="ik")
    with pytest.raises(ValueError, match="not a multiple of"):
        dequantize(np.zeros((s.nrep - 1, get_type(qtype).row_bytes(256)), np.uint8), qtype, 256)


# ---- against ik's libggml (QTOOL_IK_LIB) ------------------------------------------------------

@pytest.fixture(scope="module")
def iklib() -> ctypes.CDLL:
    if refs.ik_lib() is None:
        pytest.skip(refs.why("QTOOL_IK_LIB"))
    return ik_lib.load()


@pytest.mark.parametrize("qtype", TYPES)
def test_against_ik_library(iklib: ctypes.CDLL, qtype: str) -> None:
    s = SPECS[qtype]
    n = 256 if s.qhelper_block else 512
    x = _rows(16, n, 5)
    for imv in VARIANTS[qtype]:
        im = _imatrix(n, 6, zero_block=bool(s.qhelper_block)) if imv else None
        want = ik_lib.quantize(iklib, qtype, x, im)
        got = quantize(x, qtype, im, flavour="ik")
        assert np.nonzero((got != want).any(axis=1))[0].tolist() == [], (qtype, imv)
        if qtype != "MXFP4_R8":  # C's dequantize_row_mxfp4_r8 reads k/32 blocks: 8x the group it is given
            want_y = ik_lib.to_float(iklib, qtype, want, n, SPECS[qtype].nrep)
            assert np.array_equal(dequantize(got, qtype, n), want_y), (qtype, imv)


def test_mxfp4_r8_dequantize_against_ik(iklib: ctypes.CDLL) -> None:
    """dequantize_row_mxfp4_r8 with n_per_row 32 and k = 256 walks 8 consecutive groups, its
    writes overlapping: y[32p + j] ends as row 0 of group p (p < 8), then rows 1..7 of group 7."""
    x = _rows(64, 32, 7)
    q = quantize(x, "MXFP4_R8", None, flavour="ik")
    mine = dequantize(q, "MXFP4_R8", 32)
    f = ik_lib.TO_FLOAT(iklib.ggml_internal_get_type_traits(get_type("MXFP4_R8").id).to_float)
    out = np.zeros(1024, F32)
    qq = np.ascontiguousarray(q)
    f(qq.ctypes.data, out.ctypes.data, 256)
    y = out[:15 * 32].reshape(15, 32)
    for p in range(8):
        assert np.array_equal(y[p], mine[8 * p])
    for r in range(8):
        assert np.array_equal(y[7 + r], mine[56 + r])


# ---- end to end: qtool quantize --flavour ik vs ik's llama-quantize (QTOOL_IK_BIN) ---------------

@pytest.mark.parametrize(("ftype", "with_imatrix"), [("IQ4_K_R4", False), ("IQ5_KS_R4", True), ("MXFP4_R8", True)])
def test_cli_matches_ik_llama_quantize(ftype: str, with_imatrix: bool, tiny256: Path, tmp_path: Path) -> None:
    """The real CLI on tiny-256 writes the file ik_llama.cpp's llama-quantize writes."""
    exe = refs.ik_bin("llama-quantize")
    if exe is None:
        pytest.skip(refs.why("QTOOL_IK_BIN"))
    im = ["--imatrix", str(DATA / "tiny-256.imatrix.dat")] if with_imatrix else []
    want, got = tmp_path / "ik.gguf", tmp_path / "q.gguf"
    subprocess.run([str(exe), *im, str(tiny256), str(want), ftype, "1"], check=True, capture_output=True, timeout=120)
    r = CliRunner().invoke(cli, ["quantize", "--flavour", "ik", *im, str(tiny256), str(got), ftype, "1"])
    assert r.exit_code == 0, r.output
    assert got.read_bytes() == want.read_bytes()
