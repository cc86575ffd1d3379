"""ik_llama.cpp's IQ4_NL / IQ4_XS (flavour ik) with an imatrix that is zero on whole 32-blocks or
on parts of them.

A block whose weights are all 0 gets d = sumqx/sumq2 = 0/0 = NaN in ik's C (no guard). IQ4_NL
stores fp16(NaN) = 0xfe00 and rebuilds the levels with best_index_iq4nl(NaN*x): (int)NaN is
INT_MIN on x86, ix = INT_MIN + 127 < 0, level 0. IQ4_XS skips the NaN in its max, stores 6-bit
scale code 32 (nearest_int(NaN) = 0) and levels best_index_iq4nl(0) = 8. A block whose only
weighted value is tiny gets a tiny d, and best_index_iq4nl(x/d) with x/d >= 2^31 is level 0 too
((int)x is INT_MIN), where mainline's binary search gives 15.

The rows are built from an integer generator (exact float32 values, no RNG or libm), so the bytes
are pinned by sha256 (computed with ik's libggml) and checked without the library; with
QTOOL_IK_LIB the library itself is compared, and the GPU kernels' host build on the same rows."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from qtool.quants import engine
from qtool.quants.ik.iq4_ik import best_index_ik_t, scale_search_ik_t
from qtool.quants.nonlinear import KVALUES_IQ4NL, QUANTIZE, best_index_t

from . import ik_lib, refs

F32 = np.float32
NROWS, N = 4, 768  # 3 IQ4_XS super-blocks, 24 IQ4_NL blocks

WANT_SHA256 = {
    "IQ4_NL": "ac015aca079cdb5e480d6f80999648094c949263e7fd282591a0a8bb10159bb2",
    "IQ4_XS": "16985a4bd2907a945afdd7218e0480d18bd53f604c1da47d0c59097f33957905",
}


def _lcg(count: int, seed: int) -> np.ndarray:
    """count uint32 values of a 32-bit LCG (Python integers: the same everywhere)."""
    out = np.empty(count, np.uint64)
    s = seed
    for i in range(count):
        s = (1664525 * s + 1013904223) & 0xFFFFFFFF
        out[i] = s
    return out.astype(np.uint32)


def _rows() -> tuple[np.ndarray, np.ndarray]:
    """(x (NROWS, N), imatrix (N,)) float32, exact: multiples of 2^-16 and 2^-8."""
    u = _lcg(NROWS * N + N, 12345)
    x = (((u[:NROWS * N] >> 8).astype(np.int64) - (1 << 23)) >> 7).astype(F32) * F32(2.0 ** -16)
    x = x.reshape(NROWS, N) * F32(1 + np.arange(NROWS, dtype=np.int32)[:, None])
    im = ((u[NROWS * N:] >> 24).astype(F32) + F32(1)) * F32(2.0 ** -8)
    im[0:32] = 0  # super-block 0: block 0 all zero
    im[64:80] = 0  # block 2: half zero
    im[96:128:3] = 0  # block 3: every third zero
    im[160:192] = 0  # block 5: one weight, on a tiny value (d tiny, x/d >= 2^31)
    im[165] = 1
    x[:, 165] = F32(2.0 ** -30) * np.array([1, -1, 3, -5], F32)
    im[288:320] = 0  # super-block 1: blocks 1 and 6 all zero, the others as block 5 (D tiny)
    im[448:480] = 0
    for b in (8, 10, 11, 12, 13, 15):
        j = 32 * b + (7 * b) % 32
        im[32 * b:32 * b + 32] = 0
        im[j] = F32(0.5)
        x[:, j] = F32(2.0 ** -40) * np.array([b - 12, 3, -b, 1], F32)
    im[512:768] = 0  # super-block 2: every block all zero
    return x, im


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("qtype", ["IQ4_NL", "IQ4_XS"])
def test_engine_pinned_bytes(qtype: str) -> None:
    x, im = _rows()
    got = engine.quantize(x, qtype, im, flavour="ik")
    assert _sha(got) == WANT_SHA256[qtype]
    if qtype == "IQ4_NL":  # the all-zero block 0: d = fp16 NaN, levels 0
        assert got[0, :18].tobytes().hex() == "00fe" + "00" * 16
    else:  # super-block 2: D = fp16(-0), every scale code 32, levels 8
        assert got[0, 272:].tobytes().hex() == "0080" + "aaaa" + "00" * 4 + "88" * 128
    # mainline's level lookup gives other bytes on these rows (NaN and x/d >= 2^31: level 15)
    assert not np.array_equal(QUANTIZE[qtype](x, im, scale_search_ik_t), got)


def test_best_index_ik_matches_c() -> None:
    """best_index_ik_t against a line-by-line port of ik's best_index_iq4nl, (int) as on x86."""
    table = np.array([  # ik's iq4nl_index (ggml-quants.c)
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 17, 17, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 18, 3, 3,
        3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 19, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
        4, 20, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 21, 21, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 22,
        7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 23, 23, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 24, 9, 9, 9, 9, 9,
        9, 9, 9, 9, 9, 9, 25, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 26, 26, 11, 11, 11, 11, 11, 11, 11, 11,
        11, 11, 11, 11, 27, 27, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 28, 13, 13, 13, 13, 13, 13, 13,
        13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 29, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
        14, 14, 14, 14, 30, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15], np.int64)
    assert table.size == 241
    v = KVALUES_IQ4NL.astype(F32)
    # every float near each table value, each midpoint, each integer in range, and the ends
    centres = np.concatenate([v, (v[:-1] + v[1:]) / 2, np.arange(-130, 117, dtype=F32)]).astype(F32)
    steps = np.arange(-64, 65, dtype=np.int32)
    a = (centres.view(np.int32)[:, None] + steps).view(F32).reshape(-1)
    a = a[np.isfinite(a)]
    special = np.array([0.0, -0.0, 0.3, -0.3, 2.0 ** 31, -(2.0 ** 31), 2.0 ** 31 - 128, 1e30, -1e30,
                        np.inf, -np.inf, np.nan], F32)
    a = np.concatenate([a, special])
    with np.errstate(invalid="ignore"):
        fits = (a > F32(-(2.0 ** 31))) & (a < F32(2.0 ** 31))
        t = np.where(fits, np.trunc(np.where(fits, a, 0)), 0).astype(np.int64)
    ix = np.where(fits, t, -(2 ** 31)) - int(KVALUES_IQ4NL[0])  # (int)x - values[0]
    inr = (ix >= 0) & (ix < 241)
    j = table[np.where(inr, ix, 0)]
    af = a.astype(np.float64)
    lo = np.where(j >= 16, j - 16, 0)
    pick = np.where((af - v[lo]).astype(F32) < (v[np.minimum(lo + 1, 15)] - af).astype(F32), lo, lo + 1)
    want = np.where(inr, np.where(j < 16, j, pick), np.where(ix < 0, 0, 15))
    got = best_index_ik_t(a).astype(np.int64)
    assert np.array_equal(got, want)
    # where (int) is defined, ik's lookup and mainline's binary search agree
    assert np.array_equal(best_index_t(a)[fits], got[fits])


@pytest.fixture(scope="module")
def iklib():  # type: ignore[no-untyped-def]
    if refs.ik_lib() is None:
        pytest.skip(refs.why("QTOOL_IK_LIB"))
    return ik_lib.load()


@pytest.mark.parametrize("qtype", ["IQ4_NL", "IQ4_XS"])
def test_against_ik_library(iklib, qtype: str) -> None:  # type: ignore[no-untyped-def]
    x, im = _rows()
    want = ik_lib.quantize(iklib, qtype, x, im)
    assert _sha(want) == WANT_SHA256[qtype]
    assert np.array_equal(engine.quantize(x, qtype, im, flavour="ik"), want)
    # a second set of rows: random values, zero blocks at other places
    rng = np.random.default_rng(7)
    x2 = rng.standard_normal((6, 1024)).astype(F32)
    im2 = rng.exponential(1.0, 1024).astype(F32)
    for b in (0, 3, 9, 17, 31):
        im2[32 * b:32 * b + 32] = 0
    im2[32 * 12:32 * 12 + 31] = 0
    im2[32 * 20 + 7:32 * 20 + 25] = 0
    want2 = ik_lib.quantize(iklib, qtype, x2, im2)
    assert np.array_equal(engine.quantize(x2, qtype, im2, flavour="ik"), want2)


@pytest.mark.parametrize("qtype", ["IQ4_NL", "IQ4_XS"])
def test_gpu_host_kernel(qtype: str) -> None:
    """The GPU kernels' host build (quantize_iq4_{nl,xs}_ik) gives the same bytes."""
    from qtool.gpu.host import HostBuildError, HostKernels

    try:
        host = HostKernels()
    except HostBuildError as e:
        if "no C++ compiler" in str(e):
            pytest.skip(str(e))
        raise
    x, im = _rows()
    assert _sha(host.quantize(x, qtype, im, flavour="ik")) == WANT_SHA256[qtype]
