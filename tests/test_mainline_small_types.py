"""Mainline's small types TQ1_0, TQ2_0 (ternary.py), MXFP4, NVFP4 (fp4.py), Q1_0, Q2_0 (lowbit.py):
golden vectors, scalar ports of the C on extra blocks, edge rows, and ggml itself when available."""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np
import pytest

from qtool.quants import fp4, lowbit, ternary
from qtool.quants.registry import dequantizer, quantizer

from .refs import ggml_lib, why
from .vectors import expected, inputs, mismatched_rows

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32 = np.float32
QUANTIZE = {"TQ1_0": ternary.quantize_tq1_0, "TQ2_0": ternary.quantize_tq2_0, "MXFP4": fp4.quantize_mxfp4,
            "NVFP4": fp4.quantize_nvfp4, "Q1_0": lowbit.quantize_q1_0, "Q2_0": lowbit.quantize_q2_0}
DEQUANTIZE = {"TQ1_0": ternary.dequantize_tq1_0, "TQ2_0": ternary.dequantize_tq2_0, "MXFP4": fp4.dequantize_mxfp4,
              "NVFP4": fp4.dequantize_nvfp4, "Q1_0": lowbit.dequantize_q1_0, "Q2_0": lowbit.dequantize_q2_0}
TYPES = list(QUANTIZE)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# --- golden vectors ------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
def test_golden_rows(qtype):
    x, imatrix, _ = inputs()
    want = expected(qtype)
    assert mismatched_rows(QUANTIZE[qtype](x, None), want["q_noim"]) == []
    assert mismatched_rows(QUANTIZE[qtype](x, imatrix), want["q_im"]) == []  # the imatrix is ignored


@pytest.mark.parametrize("qtype", TYPES)
def test_golden_dequantize(qtype):
    want = expected(qtype)
    for v in ("noim", "im"):
        assert _bits_equal(DEQUANTIZE[qtype](want[f"q_{v}"], 1024), want[f"deq_{v}"])


@pytest.mark.parametrize("qtype", TYPES)
def test_registered(qtype):
    assert quantizer(qtype, "mainline", False) is QUANTIZE[qtype]
    assert quantizer(qtype, "mainline", True) is QUANTIZE[qtype]
    assert dequantizer(qtype) is DEQUANTIZE[qtype]


# --- scalar ports of ggml-quants.c (one block at a time, float32 scalars) -------------------------

KV = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]


def _h(v) -> bytes:
    with np.errstate(over="ignore"):
        return F32(v).astype(np.float16).tobytes()


def _roundf(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1) if abs(v) < 2 ** 22 else int(v)


def _c_int(v: F32) -> int:
    """(int) of a float on x86: INT_MIN when out of range or NaN."""
    return int(v) if np.isfinite(v) and abs(float(v)) < 2 ** 31 else -2 ** 31


def ref_q1_0(x: np.ndarray) -> bytes:
    out = b""
    for b in x.reshape(-1, 128):
        s = F32(0)
        for v in b:
            s = F32(s + F32(abs(v)))
        qs = bytearray(16)
        for j, v in enumerate(b):
            if v >= 0:
                qs[j // 8] |= 1 << (j % 8)
        out += _h(F32(s / F32(128))) + bytes(qs)
    return out


def ref_q2_0(x: np.ndarray) -> bytes:
    out = b""
    for b in x.reshape(-1, 64):
        amax = F32(0)
        for v in b:
            if abs(v) > amax:
                amax = F32(abs(v))
        idv = F32(F32(1) / amax) if amax > 0 else F32(0)
        qs = bytearray(16)
        for j, v in enumerate(b):
            t = F32(v * idv)
            q = _c_int(F32(_roundf(float(t)))) if np.isfinite(t) else -2 ** 31
            q = min(max(q + 1, 0), 3)
            qs[j // 4] |= q << (2 * (j % 4))
        out += _h(amax) + bytes(qs)
    return out


def _lroundf_plus1(t: F32) -> int:
    if not np.isfinite(t) or abs(float(t)) >= 2 ** 62:
        return 1  # LONG_MIN + 1 truncated to int
    return _roundf(float(t)) + 1


def _tq_block(b: np.ndarray) -> tuple[F32, F32]:
    amax = F32(0)
    for v in b:
        amax = amax if amax > abs(v) else F32(abs(v))
    return amax, (F32(F32(1) / amax) if amax else F32(0))


def ref_tq1_0(x: np.ndarray) -> bytes:
    out = b""
    for b in x.reshape(-1, 256):
        d, idv = _tq_block(b)
        xi = [_lroundf_plus1(F32(v * idv)) for v in b]
        qs = bytearray()
        for base, w in ((0, 32), (160, 16)):
            for m in range(w):
                q = 0
                for n in range(5):
                    q = (q * 3 + xi[base + m + n * w]) & 0xFF
                qs.append((q * 256 + 242) // 243)
        qh = bytearray()
        for j in range(4):
            q = 0
            for m in range(4):
                q = (q * 3 + xi[240 + j + 4 * m]) & 0xFF
            q = (q * 3) & 0xFF
            qh.append((q * 256 + 242) // 243)
        out += bytes(qs) + bytes(qh) + _h(d)
    return out


def ref_tq2_0(x: np.ndarray) -> bytes:
    out = b""
    for b in x.reshape(-1, 256):
        d, idv = _tq_block(b)
        qs = bytearray()
        for c in range(2):
            for m in range(32):
                q = 0
                for n in range(4):
                    q += (_lroundf_plus1(F32(b[128 * c + m + 32 * n] * idv)) & 3) << (2 * n)
                qs.append(q)
        out += bytes(qs) + _h(d)
    return out


def _best_index_mxfp4(v: F32, d: F32) -> int:
    best, err = 0, F32(abs(F32(F32(KV[0]) * d) - v))
    for i in range(1, 16):
        e = F32(abs(F32(F32(KV[i]) * d) - v))
        if e < err:
            best, err = i, e
    return best


def _log2f(a: F32) -> F32:
    return F32(math.log2(float(a)))


def ref_mxfp4(x: np.ndarray) -> bytes:
    out = b""
    for b in x.reshape(-1, 32):
        amax = F32(0)
        for v in b:
            if amax < abs(v):
                amax = F32(abs(v))
        if amax > 0:
            f = F32(math.floor(_log2f(amax))) if np.isfinite(amax) else F32(np.inf)
            e = _c_int(F32(f - 2 + 127)) & 0xFF
        else:
            e = 0
        d = fp4.e8m0_to_fp32_half(np.array([e], np.uint8))[0]
        qs = bytes(_best_index_mxfp4(b[j], d) | (_best_index_mxfp4(b[j + 16], d) << 4) for j in range(16))
        out += bytes([e]) + qs
    return out


def ref_ue4m3_to_fp32(u: int) -> F32:
    if u in (0, 0x7F):
        return F32(0)
    ex, man = (u >> 3) & 0xF, u & 7
    raw = F32(math.ldexp(man, -9)) if ex == 0 else F32(math.ldexp(1.0 + man / 8.0, ex - 7))
    return F32(raw * F32(0.5))


def ref_fp32_to_ue4m3(x: F32) -> int:
    if not x > 0:
        return 0
    x = min(x, F32(448))
    bits = int(np.array([x], F32).view(np.uint32)[0])
    ex = ((bits >> 23) & 0xFF) - 127 + 7
    if ex <= 0:
        man = int(F32(F32(x * F32(512)) + F32(0.5)))
        man = min(man, 7)
        return 0 if man < 1 else man
    if ex >= 15:
        return 0x7E
    man = ((bits >> 20) & 7) + ((bits >> 19) & 1)
    if man > 7:
        man, ex = 0, ex + 1
        if ex >= 15:
            return 0x7E
    return (ex << 3) | man


def ref_nvfp4(x: np.ndarray) -> bytes:
    out = b""
    for b in x.reshape(-1, 64):
        ds, qs = bytearray(), bytearray()
        for s in range(4):
            xb = b[16 * s:16 * s + 16]
            amax = F32(0)
            for v in xb:
                if amax < abs(v):
                    amax = F32(abs(v))
            ue = ref_fp32_to_ue4m3(F32(amax / F32(6)))
            d = ref_ue4m3_to_fp32(ue)
            ds.append(ue)
            qs += bytes(_best_index_mxfp4(xb[j], d) | (_best_index_mxfp4(xb[j + 8], d) << 4) for j in range(8))
        out += bytes(ds) + bytes(qs)
    return out


SCALAR = {"TQ1_0": ref_tq1_0, "TQ2_0": ref_tq2_0, "MXFP4": ref_mxfp4, "NVFP4": ref_nvfp4, "Q1_0": ref_q1_0,
          "Q2_0": ref_q2_0}


def _edge_rows(n: int = 256) -> np.ndarray:
    rng = np.random.default_rng(5)
    g = rng.standard_normal(n)
    rows = [np.zeros(n), -np.zeros(n), np.full(n, 0.125), np.full(n, -3.0), g * 1e-30, g * 1e-40, g * 3e-38,
            np.full(n, 1.4e-45), g * 1e5, g * 1e30, (rng.integers(-24, 25, n) / 4), (rng.integers(-24, 25, n) / 8),
            (rng.integers(-6, 7, n) / 12), g * 7e4]
    with np.errstate(over="ignore"):
        x = np.array(rows).astype(F32)
    x[1, ::3] = 0  # mixed +0 / -0
    # block maxima just below powers of two (log2f rounds up to the integer there)
    x[-1, ::32] = np.resize([np.nextafter(F32(2.0 ** k), F32(0)) for k in range(-2, 6)], n // 32)
    return x


def _random_rows(nrows: int, n: int = 256, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((nrows, n)) * np.exp(rng.uniform(-12, 12, (nrows, 1)))).astype(F32)


@pytest.mark.parametrize("qtype", TYPES)
def test_scalar_port(qtype):
    x = np.concatenate([_random_rows(4), _edge_rows()])
    got = QUANTIZE[qtype](x, None)
    for i, row in enumerate(x):
        assert got[i].tobytes() == SCALAR[qtype](row), (qtype, i)


@pytest.mark.parametrize("qtype", TYPES)
def test_edge_roundtrip_and_chunks(qtype):
    x = _edge_rows(1024)
    q = QUANTIZE[qtype](x, None)
    assert np.array_equal(q[:5], QUANTIZE[qtype](x[:5], None))  # rows are independent
    y = DEQUANTIZE[qtype](q, 1024)
    assert y.shape == x.shape and y.dtype == F32
    assert not y[0].any() and not y[1].any()  # zeros stay zeros (Q1_0: +-0 with d = 0)


def test_infinities_and_nan():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 256)).astype(F32)
    x[0, 5], x[1, 100], x[2, 255], x[3, 70] = np.inf, -np.inf, np.nan, np.nan
    for qtype in TYPES:
        got = QUANTIZE[qtype](x, None)
        for i in range(4):
            assert got[i].tobytes() == SCALAR[qtype](x[i]), (qtype, i)


# --- helpers against the C -----------------------------------------------------------------------

def test_ue4m3():
    tab = fp4.ue4m3_table()
    assert all(tab[u] == ref_ue4m3_to_fp32(u) for u in range(256))
    # every fp16 value (all float32 inputs round at bit 19 the same way as these cover each decade)
    xs = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(F32)
    xs = np.concatenate([xs, np.nextafter(xs, F32(np.inf)), F32([np.nan, np.inf, -1, 448, 449, 1e30])])
    got = fp4.fp32_to_ue4m3(xs)
    assert [int(g) for g in got] == [ref_fp32_to_ue4m3(v) for v in xs]


def _libm_log2f():
    name = ctypes.util.find_library("m")
    if not name:
        return None
    try:
        f = ctypes.CDLL(name).log2f
    except (OSError, AttributeError):
        return None
    f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
    return f


def test_mxfp4_exponent_matches_log2f():
    log2f = _libm_log2f()
    if log2f is None:
        pytest.skip("no libm")
    vals = []
    for k in range(-148, 129):
        b = np.array([2.0 ** k], np.float64).astype(F32).view(np.uint32)[0] if k < 128 else 0x7F800000
        u = np.arange(int(b) - 40, int(b) + 4, dtype=np.int64)
        vals.append(u[(u > 0) & (u < 0x7F800000)].astype(np.uint32).view(F32))
    a = np.concatenate(vals)
    want = [(int(math.floor(log2f(float(v)))) + 125) & 0xFF for v in a]
    assert [int(e) for e in fp4.mxfp4_exponent(a)] == want


def test_best_index_fast_path_matches_loop():
    rng = np.random.default_rng(2)
    d = np.concatenate([fp4.ue4m3_table()[1:0x7F], fp4.e8m0_to_fp32_half(np.arange(256, dtype=np.uint8))])
    d = d[d > 0]
    x = (rng.uniform(-14, 14, (d.size, 32)) * d[:, None]).astype(F32)
    x[:, :8] = (rng.integers(-28, 29, (d.size, 8)) / F32(2)) * d[:, None]  # exact midpoints and levels
    a = np.abs(x)
    with np.errstate(all="ignore"):
        assert np.array_equal(fp4.best_index(x, a, d, a.max(axis=1)), fp4.best_index_loop(x, d[:, None]))


# --- against ggml itself -------------------------------------------------------------------------

@pytest.mark.skipif(ggml_lib() is None, reason=why("QTOOL_GGML_LIB"))
@pytest.mark.parametrize("qtype", TYPES)
def test_against_ggml(qtype, monkeypatch):
    monkeypatch.setenv("QTOOL_GGML_LIB", str(ggml_lib()))
    from benchmarks import ggml_ref

    tid = ggml_ref.type_id(qtype)
    x = np.concatenate([_edge_rows(1024), _random_rows(32, 1024, seed=8)])
    x[-1, 7] = np.nan
    x[-2, 700] = np.inf
    x[-3, 255] = x[-3, 600] = np.nan  # a block ending with NaN, one with NaN inside
    x[-4, 0] = -np.inf
    with np.errstate(all="ignore"):
        assert mismatched_rows(QUANTIZE[qtype](x, None), ggml_ref.quantize_chunk(tid, x, None)) == []
