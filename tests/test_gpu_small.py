"""Edge rows for the kernels of qtool/gpu/cuda/small.cuh (F16, BF16, Q1_0, Q2_0, MXFP4, NVFP4,
TQ1_0, TQ2_0), compiled for the CPU: fp16 / bf16 rounding ties, denormals, -0, +-inf, values just
below powers of two (MXFP4's floorf(log2f(amax))), an odd number of MXFP4 blocks (17-byte blocks
stored in pairs), against the numpy engine; NaN payloads, NaN in blocks and FLT_MAX-sized blocks
against bytes of mainline's ggml_quantize_chunk (libggml-base, llama.cpp as vendored by
llama-cpp-python 0.3.36), where the numpy engine does not follow C."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quants import engine
from qtool.quants.types import get_type

from .vectors import mismatched_rows

F = np.float32
SIZES = {"F16": 64, "BF16": 64, "TQ1_0": 256, "TQ2_0": 256, "MXFP4": 96, "NVFP4": 64, "Q1_0": 128, "Q2_0": 64}
"""Row length of the C-checked rows (MXFP4: three blocks, an odd count)."""



def bits(*u: int) -> np.ndarray:
    return np.array(u, np.uint32).view(F)


FLOAT_SPECIALS = bits(
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,  # +-0, +-inf, +-NaN
    0x00000001, 0x80000001, 0x007FFFFF, 0x00800000,                          # fp32 denormals
    0x33000000, 0x33000001, 0x337FFFFF, 0x33400000, 0x33C00000,              # fp16 denormal ties
    0x387FE000, 0x387FC000, 0x38800000, 0x387FF000,                          # fp16 denormal / normal edge
    0x3F801000, 0x3F803000, 0x3F801001, 0xBF803000,                          # fp16 ties (even / odd)
    0x3F808000, 0x3F818000, 0x3F808001, 0xBF818000,                          # bf16 ties
    0x477FE000, 0x477FEFFF, 0x477FF000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000,  # fp16 / bf16 overflow
    0x477FFFFF, 0x47800000,
)
NAN_PAYLOADS = bits(0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF, 0x7FC00001, 0xFF800001, 0x7FFFFFFF)

# ggml_fp32_to_fp16_row / ggml_fp32_to_bf16_row_ref of FLOAT_SPECIALS + NAN_PAYLOADS (libggml):
# ggml's fp16 conversion makes every NaN 0x7E00 | sign (numpy keeps payload bits).
C_FLOATS = {
    "F16": [0, 32768, 31744, 64512, 32256, 65024, 0, 32768, 0, 0, 0, 1, 1, 1, 2, 1024, 1023, 1024, 1024,
            15360, 15362, 15361, 48130, 15364, 15372, 15364, 48140, 31743, 31743, 31744, 31744, 64512, 31744,
            31744, 31744, 32256, 65024, 32256, 32256, 65024, 32256],
    "BF16": [0, 32768, 32640, 65408, 32704, 65472, 0, 32768, 128, 128, 13056, 13056, 13184, 13120, 13248,
             14464, 14464, 14464, 14464, 16256, 16256, 16256, 49024, 16256, 16258, 16257, 49026, 18304, 18304,
             18304, 32640, 65408, 32640, 18304, 18304, 32704, 65535, 32767, 32704, 65472, 32767],
}


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_float_specials_as_ggml(gpu_host, name: str) -> None:  # type: ignore[no-untyped-def]
    x = np.concatenate([FLOAT_SPECIALS, NAN_PAYLOADS])[None, :]
    got = gpu_host.quantize(x, name).view("<u2")[0].tolist()
    assert got == C_FLOATS[name]
    # the numpy engine gives ggml's bytes too, NaN payloads included
    with np.errstate(all="ignore"):
        assert engine.quantize(x, name).view("<u2")[0].tolist() == C_FLOATS[name]


def nan_row(n: int, with_inf: bool) -> np.ndarray:
    """NaNs (quiet, signalling, all ones) in the first and second half; a large value before the
    last NaN (C's MAX(amax, |x|) restarts after a NaN, so |x*id| > 1 for TQ1_0 / TQ2_0)."""
    x = ((np.arange(n) % 17 - 8) / F(8)).astype(F) * F(0.75)
    x[3] = np.nan
    x[5] = bits(0x7F800001)[0]
    x[10] = F(100.0)
    x[n // 2 + 1] = bits(0xFFFFFFFF)[0]
    x[n - 20] = np.inf if with_inf else F(5.0)
    x[n - 1] = F(0.25)
    return x


def big_row(n: int) -> np.ndarray:
    """The finite FLOAT_SPECIALS (FLT_MAX among them: MXFP4's levels k*d overflow), then small values."""
    fin = FLOAT_SPECIALS[np.isfinite(FLOAT_SPECIALS)]
    x = ((np.arange(n) % 13 - 6) / F(16)).astype(F)
    x[: fin.size] = fin[:n]
    return x


# ggml_quantize_chunk (libggml) of nan_row(n, False), nan_row(n, True), big_row(n), n = SIZES[type]
C_BLOCKS = {
    "TQ1_0": (
        "80808080808080808080d8808080808080808080808080808080808080808080808080808080808080808080818080807f7f7f7f0045",
        "8080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080807f7f7f7f007c",
        "8080808080808080808080808080808080808080808080808080d52bd5808080808080808080808080808080808080807f7f7f7f007c",
    ),
    "TQ2_0": (
        "555555555555555555555555555555555555555555555555555555555555555555555555555555555555555595555555555555555555555555555555555555550045",
        "55555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555007c",
        "55555555555555555555555555555555555555555555555555555654565555555555555555555555555555555555555555555555555555555555555555555555007c",
    ),
    "MXFP4": (
        "83000000000000000000000700000000007c67077ffffeeeeddccbb99001133445567f11111111199999999999900006000001",
        "83000000000000000000000700000000007c67077ffffeeeeddccbb99001133445560000000000000000000000000000000000",
        "fd0000000000000000000050d0500000007b50626475f6e6e7dfceae0d2c4a5062647be7dfceae0d2c4a50626475f6e6e7dfce",
    ),
    "NVFP4": (
        "582035200000700000000000970f1f3e4e5d6c6b02000a0a79191919c6b7970f1f3e4e4d",
        "58207e200000700000000000970f1f3e4e5d6c6b0000000000000000c6b7970f1f3e4e4d",
        "237e181800000000000000707070000000707007e0e2d4c5a606274fc5a606274f5e6e6d",
    ),
    "Q1_0": (
        "007e00ff01fe03fc07f80df01fe03fd07f80",
        "007e00ff01fe03fc07f80df01fe03fd07f80",
        "007cf7ffbb777fe00ffc813ff007fec01ff8",
    ),
    "Q2_0": (
        "405615516555555555555155555555555555",
        "007c15515555555555555155555455555555",
        "007c55555555555525565555555555555555",
    ),
}


@pytest.mark.parametrize("name", list(C_BLOCKS))
@pytest.mark.parametrize("imatrix", [False, True])
def test_nan_and_huge_blocks_as_ggml(gpu_host, name: str, imatrix: bool) -> None:  # type: ignore[no-untyped-def]
    n = SIZES[name]
    rows = np.stack([nan_row(n, False), nan_row(n, True), big_row(n)])
    got = gpu_host.quantize(rows, name, np.ones(n, F) if imatrix else None)
    for i, want in enumerate(C_BLOCKS[name]):
        assert got[i].tobytes().hex() == want, f"{name} row {i}"


def edge_rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, n)).astype(F)
    x[0] *= F(1e-40)                          # fp32 denormals
    x[1] = np.where(rng.random(n) < 0.5, F(-0.0), F(0.0))
    x[1, ::7] = F(-1e-45)
    x[2] *= F(3e-39)                          # normal / denormal mix
    x[3, 1] = np.inf                          # inf in a block
    x[4, :] = -np.inf
    x[4, 3::5] = F(1.0)
    p = (2.0 ** rng.integers(-140, 127, size=n)).astype(F)  # just below powers of two
    x[5] = (p.view(np.uint32) - rng.integers(0, 300, size=n).astype(np.uint32)).view(F)
    x[6] = -x[5]
    x[7] *= F(6e4)                            # near the fp16 overflow of d
    x[8] = F(65520.0) * np.sign(x[8])
    fin = FLOAT_SPECIALS[np.abs(FLOAT_SPECIALS) < F(1e38)]
    x[9, : fin.size] = fin[:n]
    x[10] = np.round(x[10] * 4) / F(4)        # ties of roundf / lroundf
    x[11] = F(2.0) ** rng.integers(-30, 30, size=n).astype(F)
    return x


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("imatrix", [False, True])
def test_edge_rows_equal_numpy_engine(gpu_host, name: str, imatrix: bool) -> None:  # type: ignore[no-untyped-def]
    bs = 64 if name in ("F16", "BF16") else get_type(name).block_size
    for n in (3 * bs, 8 * bs):
        x = edge_rows(n)
        w = np.ones(n, F) if imatrix else None
        with np.errstate(all="ignore"):
            want = engine.quantize(x, name, w)
        assert mismatched_rows(gpu_host.quantize(x, name, w), want) == [], (name, n)
    # an odd number of blocks in all (MXFP4 stores its 17-byte blocks in pairs)
    x = edge_rows(bs)[[3, 5, 9]]
    with np.errstate(all="ignore"):
        assert mismatched_rows(gpu_host.quantize(x, name), engine.quantize(x, name)) == []
