"""ik_llama.cpp's ternary IQ1_BN / IQ2_BN (qtool/quants/ik/bitnet.py): byte-exact against the golden
vectors (both variants: the imatrix is ignored), the vectorized kernels against a scalar Python
transliteration of the C (IQ1BNQuantizer::quantize_one_row_1bn / _2bn, dequantize_row_iq1_bn /
_iq2_bn) on random rows with exact threshold ties, and edge rows (zeros, tiny, huge, constant,
denormal, NaN, inf)."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quants import engine
from qtool.quants.ik import bitnet as B
from qtool.quants.types import get_type

from .vectors import expected, inputs, mismatched_rows

F32 = np.float32
TYPES = ["IQ1_BN", "IQ2_BN"]
K_NB = [1, 3, 9, 27, 81, 243]
K_MULT = [81, 27, 9, 3, 1]


# ---- scalar transliteration of the C (iqk_quantize.cpp), one row at a time -------------------------

def _trit(v: np.float32, thresh: np.float32) -> int:
    return 1 if abs(v) < thresh else 0 if v < 0 else 2


def _row_max(x: np.ndarray) -> np.float32:
    m = F32(0)
    for v in x:
        a = F32(abs(v))
        m = a if m < a else m  # std::max(m, a)
    return m


def ref_quantize_iq1_bn(x: np.ndarray) -> bytes:
    """IQ1BNQuantizer::quantize_one_row_1bn on one row float32 (n,)."""
    mx = _row_max(x)
    with np.errstate(over="ignore"):
        out = bytearray(np.float16(mx).tobytes())
    thresh = F32(0.5) * mx
    for ib in range(x.size // 64):
        xb = x[64 * ib: 64 * ib + 64]
        ql = [0] * 12
        v13 = 0
        for i16 in range(4):
            for k in range(3):
                idx = 0
                for j in range(5):
                    idx += K_NB[j] * _trit(xb[16 * i16 + 5 * k + j], thresh)
                ql[3 * i16 + k] = (256 * idx + K_NB[5] - 1) // K_NB[5]
            v13 += K_NB[i16] * _trit(xb[16 * i16 + 15], thresh)
        out += bytes(ql) + bytes([(256 * v13 + K_NB[5] - 1) // K_NB[5]])
    return bytes(out)


def ref_quantize_iq2_bn(x: np.ndarray) -> bytes:
    """IQ1BNQuantizer::quantize_one_row_2bn on one row float32 (n,)."""
    mx = _row_max(x)
    out = bytearray(np.float32(mx).tobytes())
    thresh = F32(0.5) * mx
    for ib in range(x.size // 64):
        L = [_trit(v, thresh) for v in x[64 * ib: 64 * ib + 64]]
        out += bytes(L[j] | (L[j + 16] << 2) | (L[j + 32] << 4) | (L[j + 48] << 6) for j in range(16))
    return bytes(out)


def ref_dequantize_iq1_bn(blocks: bytes, n: int) -> list[float]:
    """dequantize_row_iq1_bn(blocks, y, n)."""
    y: list[float] = []
    for i in range(n // 64):
        b = blocks[13 * i: 13 * i + 13]
        for i16 in range(4):
            for k in range(3):
                for j in range(5):
                    v = (b[3 * i16 + k] * K_MULT[j]) & 0xFF
                    y.append(float(((v + (v >> 1)) >> 7) - 1))
            v = (b[12] * K_MULT[i16]) & 0xFF
            y.append(float(((v + (v >> 1)) >> 7) - 1))
    return y


def ref_dequantize_iq2_bn(blocks: bytes, n: int) -> list[float]:
    """dequantize_row_iq2_bn(blocks, y, n)."""
    y = [0.0] * n
    for i in range(n // 64):
        qs = blocks[16 * i: 16 * i + 16]
        for j in range(16):
            y[64 * i + j] = 1.0 * (qs[j] & 0x03) - 1
            y[64 * i + j + 16] = 0.25 * (qs[j] & 0x0C) - 1
            y[64 * i + j + 32] = 0.0625 * (qs[j] & 0x30) - 1
            y[64 * i + j + 48] = 0.015625 * (qs[j] & 0xC0) - 1
    return y


REF_Q = {"IQ1_BN": ref_quantize_iq1_bn, "IQ2_BN": ref_quantize_iq2_bn}
REF_DQ = {"IQ1_BN": ref_dequantize_iq1_bn, "IQ2_BN": ref_dequantize_iq2_bn}
META = {"IQ1_BN": 2, "IQ2_BN": 4}


def random_rows(seed: int, nrows: int = 24, n: int = 512) -> np.ndarray:
    """Gaussian / heavy-tailed rows over many decades, with exact ±thresh ties, ±0 and repeats."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(nrows):
        s = F32(10.0 ** rng.uniform(-6, 4))
        r = (rng.standard_normal(n) if i % 3 else rng.standard_t(2, n)).astype(F32) * s
        mx = F32(np.max(np.abs(r)))
        t = F32(0.5) * mx
        pos = rng.choice(n, 24, replace=False)
        r[pos[:6]] = t  # |v| == thresh: not small -> 2
        r[pos[6:12]] = -t  # -> 0
        r[pos[12:15]] = np.nextafter(t, F32(0))  # just below: 1
        r[pos[15:18]] = F32(0.0)
        r[pos[18:21]] = F32(-0.0)
        r[pos[21:]] = -mx  # the row max reached by a negative value too
        rows.append(r)
    return np.stack(rows)


def edge_rows(n: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    g = rng.standard_normal(n).astype(F32)
    den = np.zeros(n, F32)
    den[::5] = np.float32(1e-45)  # smallest denormal: thresh = 0.5f*max rounds to 0
    den[1::5] = -np.float32(1e-45)
    den[2::5] = F32(-0.0)
    nan = g.copy()
    nan[::7] = np.nan
    inf = g.copy()
    inf[3] = np.inf
    inf[9] = -np.inf
    return {
        "zeros": np.zeros(n, F32), "neg_zeros": np.full(n, -0.0, F32), "tiny": g * F32(1e-30),
        "huge": g * F32(3e4), "constant": np.full(n, F32(0.125)), "constant_neg": np.full(n, F32(-3)),
        "denormal": den, "nan": nan, "all_nan": np.full(n, np.nan, F32), "inf": inf,
        "fp16_overflow": g * F32(1e5),
    }


# ---- golden vectors ------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden(qtype: str, variant: str) -> None:
    x, imatrix, kinds = inputs("ik_llama")
    want = expected(qtype, "ik_llama")
    got = B.QUANTIZE[qtype](x, imatrix if variant == "im" else None)
    assert got.shape == (x.shape[0], get_type(qtype).row_bytes(x.shape[1]))
    bad = mismatched_rows(got, want[f"q_{variant}"])
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"
    deq = B.DEQUANTIZE[qtype](want[f"q_{variant}"], x.shape[1])
    assert deq.dtype == F32
    np.testing.assert_array_equal(deq, want[f"deq_{variant}"])


@pytest.mark.parametrize("qtype", TYPES)
def test_engine_when_registered(qtype: str) -> None:
    """Once the engine has the kernels (flavour ik), it gives the same bytes as the golden vectors."""
    if not engine.can_quantize(qtype, "ik"):
        pytest.skip(f"{qtype} not registered in the engine yet")
    x, imatrix, _ = inputs("ik_llama")
    want = expected(qtype, "ik_llama")
    for variant, im in (("noim", None), ("im", imatrix)):
        got = engine.quantize(x, qtype, im, flavour="ik")
        assert mismatched_rows(got, want[f"q_{variant}"]) == []
    np.testing.assert_array_equal(engine.dequantize(want["q_noim"], qtype, x.shape[1]), want["deq_noim"])


# ---- vectorized against the scalar transliteration ---------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
def test_against_scalar_random(qtype: str) -> None:
    x = random_rows(11)  # 24 rows x 8 blocks
    x = np.concatenate([x, random_rows(12, nrows=8, n=128)[:, :128].repeat(4, axis=1)[:, :512]])
    im = np.random.default_rng(3).chisquare(2, x.shape[1]).astype(F32)
    got = B.QUANTIZE[qtype](x, None)
    np.testing.assert_array_equal(got, B.QUANTIZE[qtype](x, im))  # the imatrix is ignored
    for i, r in enumerate(x):
        assert got[i].tobytes() == REF_Q[qtype](r), f"row {i}"
    deq = B.DEQUANTIZE[qtype](got, x.shape[1])
    for i in range(0, x.shape[0], 5):
        np.testing.assert_array_equal(deq[i], np.array(REF_DQ[qtype](got[i].tobytes(), x.shape[1]), F32))


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_random_bytes(qtype: str) -> None:
    """Every byte value through the decoders (faithful: from the row start; scaled: meta * trits)."""
    n = 256
    rb = get_type(qtype).row_bytes(n)
    data = np.random.default_rng(5).integers(0, 256, (12, rb), dtype=np.uint8)
    data[0, : rb - META[qtype]] = np.arange(rb - META[qtype]) % 256
    data[:, : META[qtype]] = np.frombuffer(  # sane scales for the scaled decoder
        (np.float16(0.75) if qtype == "IQ1_BN" else np.float32(0.75)).tobytes() * 12, np.uint8).reshape(12, -1)
    deq = B.DEQUANTIZE[qtype](data, n)
    sc = B.DEQUANTIZE_SCALED[qtype](data, n)
    for i, row in enumerate(data):
        np.testing.assert_array_equal(deq[i], np.array(REF_DQ[qtype](row.tobytes(), n), F32))
        trits = np.array(REF_DQ[qtype](row[META[qtype]:].tobytes(), n), F32)
        np.testing.assert_array_equal(sc[i], trits * F32(0.75))


# ---- edge rows and round trips ---------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows(qtype: str) -> None:
    rows = edge_rows()
    x = np.stack(list(rows.values()))
    got = B.QUANTIZE[qtype](x, None)
    for i, (kind, r) in enumerate(rows.items()):
        assert got[i].tobytes() == REF_Q[qtype](r), kind
    y = B.DEQUANTIZE_SCALED[qtype](got, x.shape[1])
    for i, (kind, r) in enumerate(rows.items()):
        fin = np.isfinite(r)
        mx = F32(np.max(np.abs(r[fin]))) if fin.any() else F32(0)
        if not np.isfinite(r).all() or (qtype == "IQ1_BN" and mx > 65504):
            continue  # inf / NaN in the row or an fp16 scale of inf: defined by the C, checked above
        scale = F32(np.float16(mx)) if qtype == "IQ1_BN" else mx
        err = np.abs(y[i] - r)
        half = F32(0.5) * mx  # the threshold; when it underflows to 0, a 0 becomes +max (C: `0 < 0` false)
        assert np.all(err <= (half if half > 0 else mx) + np.abs(scale - mx)), kind
        assert np.all(np.isin(y[i], [-scale, 0, scale])), kind


@pytest.mark.parametrize("qtype", TYPES)
def test_shapes_and_errors(qtype: str) -> None:
    fn = B.QUANTIZE[qtype]
    assert fn(np.zeros((0, 128), F32), None).shape == (0, get_type(qtype).row_bytes(128))
    one = fn(np.ones((1, 64), F32), None)
    assert one.shape == (1, get_type(qtype).row_bytes(64))
    with pytest.raises(ValueError):
        fn(np.zeros((2, 96), F32), None)
    with pytest.raises(ValueError):
        B.DEQUANTIZE[qtype](np.zeros((2, 10), np.uint8), 96)


def test_chunking_matches_whole() -> None:
    """Rows split over several chunks give the bytes of one call per row."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((150, 4096)).astype(F32) * F32(0.01)
    for qtype in TYPES:
        whole = B.QUANTIZE[qtype](x, None)
        assert x.size > 2 * B.CHUNK_VALUES
        for i in (0, 63, 64, 127, 128, 149):
            np.testing.assert_array_equal(whole[i], B.QUANTIZE[qtype](x[i:i + 1], None)[0])


def test_pack243_every_group() -> None:
    idx = np.arange(243, dtype=np.uint8)
    want = np.array([(256 * i + 242) // 243 for i in range(243)], np.uint8)
    np.testing.assert_array_equal(B.pack243(idx), want)
