"""ik_llama.cpp's trellis types IQ1_KT, IQ2_KT, IQ3_KT, IQ4_KT: byte-exact against the golden
vectors (every row, with and without an imatrix, and the dequantizers); the vectorized
find_best_match (matmul pruning) against a plain transliteration of QuantizerIQKT's AVX2 search
on random blocks; fma32 against exact rational arithmetic; the trellis values against a scalar
set_values; the cluster tables, find_best_match and find_best_scale against QuantizerIQKT itself
(compiled from ik's source with the reference's flags, when QTOOL_IK_SRC is set); edge rows."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from qtool.quants import registry
from qtool.quants.ik import trellis
from qtool.quants.ik.trellis import DEQUANTIZE, QUANTIZE, find_best_match, find_best_scale, fma32
from qtool.quants.ik.trellis_tables import KT_PARAMS, kt_tables, trellis_values
from qtool.quants.types import get_type

from .refs import ik_source, why
from .vectors import expected, inputs, mismatched_rows

F = np.float32
TYPES = ["IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT"]
BLOCK_BYTES = {"IQ1_KT": 56, "IQ2_KT": 68, "IQ3_KT": 100, "IQ4_KT": 128}
TABLES = {"IQ1_KT": 1, "IQ2_KT": 2, "IQ3_KT": 3, "IQ4_KT": 4, "IQ4_KT_OFFSET": 5}
IK_SRC = ik_source("ggml", "src", "iqk")


# ---- golden vectors --------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_bytes(qtype: str, variant: str) -> None:
    x, imatrix, kinds = inputs("ik_llama")
    want = expected(qtype, "ik_llama")[f"q_{variant}"]
    got = QUANTIZE[qtype](x, imatrix if variant == "im" else None)
    assert got.shape == want.shape == (55, 4 + 4 * BLOCK_BYTES[qtype])
    bad = mismatched_rows(got, want)
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_dequantize(qtype: str, variant: str) -> None:
    e = expected(qtype, "ik_llama")
    got = DEQUANTIZE[qtype](e[f"q_{variant}"], 1024)
    assert got.dtype == F and np.array_equal(got.view(np.uint32), e[f"deq_{variant}"].view(np.uint32))


def test_row_bytes_and_registry() -> None:
    for qtype in TYPES:
        t = get_type(qtype)
        assert t.row_bytes(1024) == 4 + 4 * BLOCK_BYTES[qtype]
        assert registry.quantizer(qtype, "ik", False) is QUANTIZE[qtype]
        assert registry.quantizer(qtype, "ik", True) is QUANTIZE[qtype]
        assert registry.quantizer(qtype, "mainline", False) is None


def test_chunked_rows_equal_whole() -> None:
    """Rows split over chunks give the same bytes as one call (the kernels are row-independent)."""
    x, imatrix, _ = inputs("ik_llama")
    want = QUANTIZE["IQ1_KT"](x[:12], imatrix)
    old = trellis.CHUNK_BLOCKS["IQ1_KT"]
    trellis.CHUNK_BLOCKS["IQ1_KT"] = 64  # two rows of 1024 per chunk
    try:
        got = QUANTIZE["IQ1_KT"](x[:12], imatrix)
    finally:
        trellis.CHUNK_BLOCKS["IQ1_KT"] = old
    assert np.array_equal(got, want)


# ---- edge rows ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows(qtype: str) -> None:
    n = 512
    rng = np.random.default_rng(5)
    rows = np.stack([np.zeros(n, F), np.full(n, 1e-30, F), (rng.standard_normal(n) * 3e4).astype(F),
                     np.full(n, 0.7, F), np.full(n, -2.5, F), (rng.standard_normal(n) * 1e-12).astype(F)])
    for imx in (None, (rng.random(n) + 0.1).astype(F)):
        q = QUANTIZE[qtype](rows, imx)
        assert q.shape == (6, get_type(qtype).row_bytes(n))
        y = DEQUANTIZE[qtype](q, n)
        assert np.isfinite(y).all()
        assert not y[0].any() and not q[0].any()  # zeros: all-zero bytes
        for i in (2, 3, 4):  # round trip within the type's coarse error
            err = np.sqrt(np.mean((y[i] - rows[i]) ** 2)) / np.sqrt(np.mean(rows[i] ** 2))
            assert err < 0.6, (qtype, i, err)


def test_bad_row_length() -> None:
    with pytest.raises(ValueError, match="multiple of 256"):
        QUANTIZE["IQ2_KT"](np.zeros((1, 100), F), None)


# ---- helpers against independent arithmetic ----------------------------------------------------------

def test_fma32_exact() -> None:
    rng = np.random.default_rng(1)
    a = (rng.standard_normal(4000) * 10.0 ** rng.integers(-3, 4, 4000)).astype(F)
    b = (rng.standard_normal(4000) * 10.0 ** rng.integers(-3, 4, 4000)).astype(F)
    c = (-a.astype(np.float64) * b).astype(F)  # near cancellation: the hard cases
    c[::2] = (rng.standard_normal(2000) * 100).astype(F)
    got = fma32(a, b, c)
    for i in range(0, 4000, 7):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        want = F(exact.numerator / exact.denominator) if exact else F(0)
        lo, hi = np.nextafter(want, F(-np.inf)), np.nextafter(want, F(np.inf))
        # correct rounding: no float32 neighbour of the result is nearer to the exact value
        e = abs(Fraction(float(got[i])) - exact)
        assert e <= abs(Fraction(float(lo)) - exact) and e <= abs(Fraction(float(hi)) - exact), i


def test_fma32_double_rounding_case() -> None:
    """(1 + 2^-23) * -(1 - 2^-23) 2^-24 + (1 + 2^-23) = 1 + 2^-24 + 2^-70: float64 rounds it to the
    float32 midpoint 1 + 2^-24, then to 1 (even); the fused result is 1 + 2^-23."""
    a = np.array([1 + 2.0 ** -23, -(1 + 2.0 ** -23)], F)
    b = np.array([-(1 - 2.0 ** -23) * 2.0 ** -24, (1 - 2.0 ** -23) * 2.0 ** -24], F)
    c = np.array([1 + 2.0 ** -23, -(1 + 2.0 ** -23)], F)
    assert (a.astype(np.float64) * b + c).astype(F)[0] == F(1)  # the naive emulation is wrong here
    assert fma32(a, b, c).tolist() == [1 + 2.0 ** -23, -(1 + 2.0 ** -23)]


def _set_values_scalar(i: int, group: int, is_abs: bool, offset: int) -> list[float]:
    """QuantizerIQKT::set_values (is_int), one index, Python ints."""
    x = (i + offset) & 0xFFFFFFFF
    out = []
    for _ in range(group):
        x = (0xCBAC1FED * x) & 0xFFFFFFFF
        s = x & 0x3F3F3F3F
        v = sum((s >> (8 * k)) & 0xFF for k in range(4)) - 126
        out.append(float(abs(v) if is_abs else v))
    return out


def test_trellis_values_scalar() -> None:
    for name, p in KT_PARAMS.items():
        idx = np.array([0, 1, 2, 4095, (1 << p.num_bits) - 1, 12345 % (1 << p.num_bits)])
        got = trellis_values(idx, p.group, p.is_abs, p.offset)
        want = [_set_values_scalar(int(i), p.group, p.is_abs, p.offset) for i in idx]
        assert got.tolist() == want, name
        t = kt_tables(name)
        assert np.array_equal(t.values[idx], got)


def test_dequantize_uses_set_values() -> None:
    """dequantize_row_iq2_kt: one index per group of 8, scale d * iq4k_values[nibble]."""
    q = np.zeros((1, 4 + 68), np.uint8)
    q[0, :4] = np.array([0.5], "<f4").view(np.uint8)
    q[0, 4] = 0x3A  # block 0 scale nibble 10, block 4 nibble 3
    q[0, 8:10] = np.array([777], "<u2").view(np.uint8)
    y = DEQUANTIZE["IQ2_KT"](q, 256)
    vals0 = np.array(_set_values_scalar(0, 8, False, 4096), F)
    assert np.array_equal(y[0, :8], F(0.5) * F(25) * np.array(_set_values_scalar(777, 8, False, 4096), F))
    assert np.array_equal(y[0, 128:136], F(0.5) * F(-65) * vals0)


# ---- find_best_match against a plain transliteration of the AVX2 search ------------------------------

def _match_plain(t: object, d: float, xb: np.ndarray, wb: np.ndarray) -> list[int]:
    """QuantizerIQKT::find_best_match (AVX2 branch, fast cluster paths), one block: every member
    of the group's cluster scored in float32 in hsum order; per SIMD lane the first minimum
    (`_CMP_LT_OQ`), then the first lane with the least score."""
    p = t.params  # type: ignore[attr-defined]
    g = p.group
    if d == 0:
        return [0] * (32 // g)
    vid = F(1) / F(d)
    out = []
    for lg in range(32 // g):
        vx = (vid * xb[lg * g:(lg + 1) * g]).astype(F)
        vw = wb[lg * g:(lg + 1) * g]
        c = int(t.cluster_of(vx[None, :])[0])  # type: ignore[attr-defined]
        s0, s1 = int(t.start[c]), int(t.start[c + 1])  # type: ignore[attr-defined]
        vals = t.mvalues[s0:s1]  # type: ignore[attr-defined]
        diff = (vals - vx).astype(F)
        v = (vw * (diff * diff)).astype(F)
        if g == 8:
            score = ((v[:, 0] + v[:, 4]) + (v[:, 2] + v[:, 6])) + ((v[:, 1] + v[:, 5]) + (v[:, 3] + v[:, 7]))
            lanes = list(range(8))
        else:
            score = (v[:, 0] + v[:, 2]) + (v[:, 1] + v[:, 3])
            lanes = [0, 2, 4, 6, 1, 3, 5, 7]  # lane i of add_idx = (0, 2, 4, 6, 1, 3, 5, 7)
        best, jbest = F(np.inf), -1
        for off in lanes:
            lane = score[off::8]
            j = int(np.argmin(lane))  # first minimum of the lane
            if lane[j] < best:
                best, jbest = lane[j], off + 8 * j
        out.append(int(t.members[s0 + jbest]))  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("name", ["IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT", "IQ4_KT_OFFSET"])
def test_find_best_match_plain(name: str) -> None:
    t = kt_tables(name)
    rng = np.random.default_rng(TABLES[name])
    nb = 96
    scale = (10.0 ** rng.uniform(-4, 3, nb)).astype(F)
    xb = (rng.standard_normal((nb, 32)) * scale[:, None]).astype(F)
    if t.params.is_abs:
        xb = np.abs(xb)
    xb[5] = np.round(xb[5] * 4) / 4  # values on a grid: more exact ties
    wb = np.where(rng.random((nb, 1)) < 0.5, xb * xb + scale[:, None] ** 2 / 4,
                  rng.random((nb, 32)) * scale[:, None] ** 2).astype(F)
    wb[7] = F(1e-4)  # equal weights
    d = (np.abs(xb).max(axis=1) / rng.uniform(60, 130, nb) * rng.choice([-1, 1], nb)).astype(F)
    d[3] = 0
    got = find_best_match(t, d, xb, wb)
    for i in range(nb):
        assert got[i].tolist() == _match_plain(t, float(d[i]), xb[i], wb[i]), (name, i)


# ---- against QuantizerIQKT compiled from ik's source ---------------------------------------------------

HARNESS = r"""
#include <immintrin.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
#include <algorithm>
#include <random>
#include <utility>
#define QK_K 256
#define GGML_ASSERT(x) do { if (!(x)) { fprintf(stderr, "assert %s\n", #x); abort(); } } while (0)
#define GGML_ABORT(...) abort()
static inline float GGML_FP16_TO_FP32(uint32_t) { return 0.f; }
@HSUM@
#define private public
@CLASS@
#undef private
using Q1 = QuantizerIQKT<32, 8, 13, false, true>;
using Q2 = QuantizerIQKT<32, 8, 16, false, true>;
using Q3 = QuantizerIQKT<32, 8, 16, true, true>;
using Q4 = QuantizerIQKT<32, 4, 15, false, true>;
static Q1 * q1; static Q2 * q2; static Q3 * q3; static Q4 * q4; static Q4 * q5;
template <class Q> static int members(const Q& q, int64_t * start, int * out) {
    int n = 0; start[0] = 0;
    for (size_t c = 0; c < q.m_in_cluster.size(); ++c) {
        auto& pts = q.m_in_cluster[c];
        if (pts.empty()) { for (int i = 0; i < Q::kNumVal; ++i) out[n++] = i; }
        for (int p : pts) out[n++] = p;
        start[c + 1] = n;
    }
    return n;
}
template <class Q> static void match(const Q& q, int nb, const float * d, const float * x, const float * w, int * idx,
                                     float * sc) {
    for (int i = 0; i < nb; ++i) {
        q.find_best_match(d[i], x + 32*i, w + 32*i, idx + Q::kNg*i);
        auto r = q.find_best_scale(x + 32*i, w + 32*i, idx + Q::kNg*i);
        sc[2*i] = r.first; sc[2*i+1] = r.second;
    }
}
extern "C" {
void kt_init() {
    q1 = new Q1(256, 32); q2 = new Q2(256, 8); q3 = new Q3(256, 8);
    q4 = new Q4(625, 6, 4096); q5 = new Q4(625, 6, 4096 + 32768);
}
int kt_members(int t, int64_t * start, int * out) {
    switch (t) { case 1: return members(*q1, start, out); case 2: return members(*q2, start, out);
                 case 3: return members(*q3, start, out); case 4: return members(*q4, start, out);
                 default: return members(*q5, start, out); }
}
void kt_match(int t, int nb, const float * d, const float * x, const float * w, int * idx, float * sc) {
    switch (t) { case 1: match(*q1, nb, d, x, w, idx, sc); break; case 2: match(*q2, nb, d, x, w, idx, sc); break;
                 case 3: match(*q3, nb, d, x, w, idx, sc); break; case 4: match(*q4, nb, d, x, w, idx, sc); break;
                 default: match(*q5, nb, d, x, w, idx, sc); }
}
}
"""


@pytest.fixture(scope="module")
def c_quantizer(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if IK_SRC is None:
        pytest.skip(why("QTOOL_IK_SRC"))
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++ to compile QuantizerIQKT")
    src = (IK_SRC / "iqk_quantize.cpp").read_text()
    a = src.index("template <int block_size, int group_size, int num_bits, bool is_abs = false, bool is_int = false>\n"
                  "class QuantizerIQKT")
    b = src.index("// ========================================== iq1_kt", a)
    common = (IK_SRC / "iqk_common.h").read_text()
    hsum = "\n".join(m.group(0) for name in ("hsum_float_4", "hsum_float_8", "hsum_float_8x8", "hsum_float_4x8")
                     for m in [re.search(r"static inline \w+ " + name + r"\(.*?\n}\n", common, re.S)] if m)
    assert hsum.count("static inline") == 4
    d = tmp_path_factory.mktemp("kt")
    (d / "h.cpp").write_text(HARNESS.replace("@HSUM@", hsum).replace("@CLASS@", src[a:b]))
    lib = d / "libkt.so"
    # the reference's flags: AVX2 + FMA paths, no FP contraction
    subprocess.run([cxx, "-O2", "-std=c++17", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-shared", "-fPIC",
                    "-w", str(d / "h.cpp"), "-o", str(lib)], check=True)
    so = ctypes.CDLL(str(lib))
    vp = ctypes.c_void_p
    so.kt_members.argtypes = [ctypes.c_int, vp, vp]
    so.kt_match.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, vp]
    so.kt_init()
    return so


@pytest.mark.slow  # compiling the harness and C's own table build take ~30 s
@pytest.mark.reference
@pytest.mark.parametrize("name", list(TABLES))
def test_tables_and_match_against_c(c_quantizer: ctypes.CDLL, name: str) -> None:
    t = kt_tables(name)
    start = np.zeros(t.params.n_clusters + 1, np.int64)
    out = np.zeros(2 * 10 ** 6, np.int32)
    n = c_quantizer.kt_members(TABLES[name], start.ctypes.data, out.ctypes.data)
    assert np.array_equal(start, t.start) and np.array_equal(out[:n], t.members)
    rng = np.random.default_rng(10 + TABLES[name])
    nb = 2000
    scale = (10.0 ** rng.uniform(-5, 4, nb)).astype(F)
    xb = (rng.standard_normal((nb, 32)) * scale[:, None]).astype(F)
    if t.params.is_abs:
        xb = np.abs(xb)
    wb = (xb * xb + rng.random((nb, 32)) * scale[:, None] ** 2).astype(F)
    d = (np.abs(xb).max(axis=1) / rng.uniform(60, 130, nb) * rng.choice([-1, 1], nb)).astype(F)
    ng = 32 // t.params.group
    idx = np.zeros((nb, ng), np.int32)
    sc = np.zeros((nb, 2), F)
    c_quantizer.kt_match(TABLES[name], nb, d.ctypes.data, xb.ctypes.data, wb.ctypes.data, idx.ctypes.data,
                         sc.ctypes.data)
    got = find_best_match(t, d, xb, wb)
    assert np.array_equal(got, idx)
    dd, ss = find_best_scale(t, xb, wb, got)
    assert np.array_equal(dd.view(np.uint32), sc[:, 0].view(np.uint32))
    assert np.array_equal(ss.view(np.uint32), sc[:, 1].view(np.uint32))
