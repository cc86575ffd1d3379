"""The dequantize kernels of ik_llama.cpp's own types (qtool/gpu/cuda/dequant_ik.cuh), compiled for
the CPU (qtool.gpu.host), against the numpy engine's dequantize bit for bit (NaN-aware): on the
golden vectors' bytes and on random bytes with extreme scales. Skipped without a C++ compiler."""

from __future__ import annotations

import ctypes
import zlib
from typing import Any

import numpy as np
import pytest

from qtool.gpu.source import kernel_modules
from qtool.quants import engine
from qtool.quants.types import IK, QType, all_types, get_type

from .vectors import VECTORS, expected

TYPES = ["IQ2_K", "IQ3_K", "IQ4_K", "IQ5_K", "IQ6_K", "IQ2_KS", "IQ3_KS", "IQ4_KS", "IQ5_KS", "IQ4_KSS",
         "IQ2_KL", "IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT", "IQ1_BN", "IQ2_BN", "Q6_0", "Q8_KV", "Q8_KV_R8",
         "Q8_K_R8"]
"""Every type dequant_ik.cuh has a kernel for."""

FP16_EXTREMES = [0x7C00, 0x7E00, 0x7BFF, 0x0001, 0x8000, 0xFC00, 0x7C01, 0x03FF, 0x0400, 0x0000, 0xFBFF, 0x8001,
                 0x3C00]
"""fp16 scales: +-inf, NaNs, +-max, +-smallest subnormal, largest subnormal, smallest normal, +-0, 1
(inf and NaN among the first 8: every test shape meets them)."""
F32_EXTREMES = [0x7F800000, 0x7FC00000, 0x7F7FFFFF, 0x00000001, 0x80000000, 0xFF800000, 0x7F800001, 0x5F000000,
                0xFF7FFFFF, 0x80000001, 0x007FFFFF, 0x00800000, 0x00000000, 0x3F800000]
"""float32 row scales: the same, and 2^63 (products overflow)."""


def _dequantize(h: Any, qt: QType, data: np.ndarray, n_per_row: int) -> tuple[np.ndarray, bool]:
    """dequantize_<type>(q, y, nrows, n_per_row) of the host build -> (float32 rows, abort flag)."""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, qt.row_bytes(n_per_row))
    nrows = data.shape[0]
    y = np.full((nrows, n_per_row), np.nan, dtype=np.float32)
    flag = ctypes.c_int(0)
    ctypes.c_void_p.in_dll(h.lib, "qtool_abort").value = ctypes.addressof(flag)
    try:
        getattr(h.lib, f"dequantize_{qt.lname}")(data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                 y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                 ctypes.c_int64(nrows), ctypes.c_int64(n_per_row))
    finally:
        ctypes.c_void_p.in_dll(h.lib, "qtool_abort").value = None
    return y, bool(flag.value)


def _engine(data: np.ndarray, qt: QType, n_per_row: int) -> np.ndarray:
    """engine.dequantize, quiet about the overflows and NaNs extreme scales give."""
    with np.errstate(all="ignore"):
        return engine.dequantize(data, qt, n_per_row)


def _assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal float32 bits, or NaN in both (a GPU writes its own NaN payload)."""
    want = np.asarray(want, dtype=np.float32).reshape(got.shape)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    bad = np.argwhere(~same)
    assert bad.size == 0, (f"{what}: {len(bad)} values differ, first at {tuple(bad[0])}: "
                           f"{got[tuple(bad[0])]!r} vs {want[tuple(bad[0])]!r}")


def _scale_offsets(qt: QType) -> tuple[int, int, list[int]]:
    """(row header bytes holding a scale, its width, per-block offsets of an fp16 scale) of a type."""
    if qt.name in ("IQ1_BN", "IQ2_BN"):
        return 0, 0, []  # the row scale is not applied (ggml's to_float reads it as block bytes)
    if qt.name == "Q8_KV":
        return 8, 4, []
    if qt.row_meta:
        return qt.row_meta, qt.row_meta, []
    if qt.name in ("Q8_KV_R8", "Q8_K_R8"):
        return 0, 0, []
    return 0, 0, [0]  # IQ2_K .. IQ6_K, Q6_0: ggml_half d first in the block


def _random_rows(qt: QType, nrows: int, n_per_row: int, seed: int) -> np.ndarray:
    """Random bytes (every byte pattern decodes) with the scales set to extremes in turn."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(nrows, qt.row_bytes(n_per_row)), dtype=np.uint8)
    meta, width, offs = _scale_offsets(qt)
    if width == 2:
        vals = np.array([FP16_EXTREMES[i % len(FP16_EXTREMES)] for i in range(nrows)], dtype="<u2")
        data[:, :2] = vals.view(np.uint8).reshape(nrows, 2)
    elif width == 4:
        vals32 = np.array([F32_EXTREMES[i % len(F32_EXTREMES)] for i in range(nrows)], dtype="<u4")
        data[:, :4] = vals32.view(np.uint8).reshape(nrows, 4)
    if offs:
        nb = n_per_row // qt.block_size
        blocks = data[:, meta:].reshape(nrows * nb, qt.type_size)
        vals = np.array([FP16_EXTREMES[i % len(FP16_EXTREMES)] for i in range(0, nrows * nb, 2)], dtype="<u2")
        blocks[0::2, 0:2] = vals.view(np.uint8).reshape(-1, 2)  # odd blocks keep random scales
        data[:, meta:] = blocks.reshape(nrows, -1)
    if qt.name == "Q8_KV_R8":  # 8 float scales at the start of each group of 8 rows (4 + n bytes each)
        g = data.reshape(nrows // 8, -1)
        vals32 = np.array(F32_EXTREMES[:8], dtype="<u4")  # inf and NaN among them
        g[0, :32] = vals32.view(np.uint8)
    if qt.name == "Q8_K_R8":  # 8 fp16 scales at the start of each interleaved super-block (2064 bytes)
        sb = data.reshape(-1, 2064)
        vals = np.array([FP16_EXTREMES[i % len(FP16_EXTREMES)] for i in range(8 * sb.shape[0])], dtype="<u2")
        sb[:, :16] = vals.view(np.uint8).reshape(-1, 16)
    return data


@pytest.fixture(scope="module")
def host(gpu_host: Any) -> Any:
    return gpu_host


def test_kernel_for_every_plain_ik_type() -> None:
    """Every ik type the engine dequantizes, interleaved repacks aside, has a kernel here (a new
    type fails this until it gets one or is listed as skipped)."""
    mods = kernel_modules()
    plain = [t.name for t in all_types() if t.flavour == IK and t.rows_interleaved == 1 and engine.can_dequantize(t)]
    missing = [n for n in plain if mods.get(f"dequantize_{n.lower()}") != "dequant_ik"]
    assert missing == []
    assert [n for n in TYPES if mods.get(f"dequantize_{n.lower()}") != "dequant_ik"] == []


GOLDEN = [t for t in TYPES if (VECTORS / "ik_llama" / f"{t}.npz").exists()]


@pytest.mark.parametrize("name", GOLDEN)
@pytest.mark.parametrize("key", ["q_im", "q_noim"])
def test_golden_vector_bytes(host: Any, name: str, key: str) -> None:
    """ik_llama.cpp's own bytes of the golden vectors' rows (1024 per row)."""
    qt = get_type(name)
    q = expected(name, "ik_llama")[key]
    n = (q.shape[1] - qt.row_meta) // qt.type_size * qt.block_size
    got, abort = _dequantize(host, qt, q, n)
    assert not abort
    _assert_same(got, _engine(q, qt, n), f"{name} {key}")


def test_golden_vectors_cover_most_types() -> None:
    """The golden-vector test is not vacuous: every type but ik's Q8_KV(_R8) and Q8_K_R8 has vectors."""
    assert sorted(set(TYPES) - set(GOLDEN)) == ["Q8_KV", "Q8_KV_R8", "Q8_K_R8"]


SHAPES = [pytest.param(name, nrows, n, id=f"{name}-{nrows}x{n}") for name in TYPES
          for nrows, n in [(16, 256), (8, 768)] + ([(8, 3 * get_type(name).block_size)]
                                                   if get_type(name).block_size < 256 else [])]
"""Rows of 1 and 3 super-blocks, and of 3 blocks where blocks are smaller (IQ1_BN: odd row sizes)."""


@pytest.mark.parametrize(("name", "nrows", "n"), SHAPES)
def test_random_bytes(host: Any, name: str, nrows: int, n: int) -> None:
    """Random bytes, extreme fp16 / float scales (inf, NaN, subnormal, max, overflowing products)."""
    qt = get_type(name)
    data = _random_rows(qt, nrows, n, seed=zlib.crc32(f"{name}/{nrows}/{n}".encode()))
    got, abort = _dequantize(host, qt, data, n)
    assert not abort
    _assert_same(got, _engine(data, qt, n), name)
    assert np.isfinite(got).any()
    if name not in ("IQ1_BN", "IQ2_BN"):  # (their row scale is not applied: trits only)
        assert np.isnan(got).any() and np.isinf(got).any(), "the extreme scales were not exercised"


@pytest.mark.parametrize("name", ["Q8_KV", "Q6_0", "IQ2_K", "IQ4_KS", "IQ3_KT", "IQ1_BN"])
def test_quantized_rows_round_trip(host: Any, name: str) -> None:
    """Bytes the engine writes for real-valued rows (the values are finite and not all zero)."""
    qt = get_type(name)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    q = engine.quantize(x, qt, None, flavour=IK)
    got, _ = _dequantize(host, qt, q, 512)
    _assert_same(got, _engine(q, qt, 512), name)
    assert np.isfinite(got).all() and np.abs(got).max() > 0


@pytest.mark.parametrize("name", ["Q8_KV_R8", "Q8_K_R8"])
def test_r8_needs_groups_of_8_rows(host: Any, name: str) -> None:
    """The _R8 types interleave 8 rows: the engine raises on 4, the kernel signals an abort."""
    qt = get_type(name)
    data = np.zeros((4, qt.row_bytes(256)), np.uint8)
    with pytest.raises(ValueError):
        engine.dequantize(data, qt, 256)
    _, abort = _dequantize(host, qt, data, 256)
    assert abort
