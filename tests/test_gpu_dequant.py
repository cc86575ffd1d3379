"""GPU dequantize kernels (qtool/gpu/cuda/dequant*.cuh, compiled for the CPU by qtool.gpu.host)
against the numpy engine and the golden vectors, float32 bit for bit (NaN sign and payload too:
F16 / BF16 outputs keep them): every kernel of the registry (qtool.gpu.dequant), on the vectors'
quantized rows and on random bytes (every bit pattern is a block there: fp16 scales that are
inf, NaN or subnormal included). Then `dequantize --device cuda` and `quantize --device cuda`
from quantized inputs through the fake CuPy: the CPU's bytes. Skipped without a C++ compiler."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import qtool.gpu.pipeline as pipeline
from qtool.api import quantize_file
from qtool.cli import cli
from qtool.dequantize import dequantize_file
from qtool.gpu.dequant import dequant_kernel, dequant_kernels
from qtool.gpu.source import MODULES
from qtool.gpu.tables import TABLES
from qtool.quants import engine
from qtool.quants.types import IK, MAINLINE, all_types, get_type

from . import fake_cupy
from .vectors import VECTORS, expected, inputs

KERNELS = sorted(dequant_kernels())
MAINLINE_DEQUANT = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                    "Q8_K", "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
                    "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"]
DATA = Path(__file__).parent / "data" / "quantize"


def bits_mismatch(got: np.ndarray, want: np.ndarray) -> str | None:
    """None where the float32 bits are equal (NaN payloads too), else a description."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    g, w = got.view(np.uint32), want.view(np.uint32)
    bad = np.argwhere(g != w)
    if bad.size == 0:
        return None
    r, c = (int(v) for v in bad[0])
    return f"{len(bad)} values differ, first at row {r} col {c}: got {g[r, c]:#010x} want {w[r, c]:#010x}"


def _impl(name: str) -> str:
    return "ik_llama" if get_type(name).flavour == IK else "mainline"


def random_blocks(name: str, nrows: int, n_per_row: int, seed: int) -> np.ndarray:
    """Random bytes as rows of the type; the first row's fp16 words set to inf, NaN (quiet and
    signalling, both signs) and subnormal bit patterns where the type has fp16 words."""
    qt = get_type(name)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(nrows, qt.row_bytes(n_per_row)), dtype=np.uint8)
    specials = np.array([0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x7C01, 0x7DFF, 0x0001, 0x83FF, 0x0000, 0x8000], np.uint16)
    if data.shape[1] % 2 == 0:
        w = data.view(np.uint16)
        for i in range(1, min(nrows, 6)):
            w[i, ::3] = specials[(np.arange(w[i, ::3].size) + i) % specials.size]
    return data


@pytest.fixture(scope="module")
def host(gpu_host: Any) -> Any:
    return gpu_host


def test_registry_covers_every_mainline_type_the_engine_dequantizes() -> None:
    have = set(dequant_kernels())
    assert set(MAINLINE_DEQUANT) <= have
    for t in all_types(MAINLINE):
        if engine.can_dequantize(t) and t.name != "F32":
            assert dequant_kernel(t) is not None, t.name
    # ik_llama.cpp's Q8_K (292 + 4 bytes) is not mainline's: no kernel serves it
    ik_q8k = next(t for t in all_types(IK) if t.name == "Q8_K")
    assert dequant_kernel(ik_q8k) is None
    assert dequant_kernel("F32") is None and dequant_kernel("Q4_0_R8") is None


def test_kernel_tables_exist() -> None:
    """Every QTABLE a dequantize file declares has a builder (the backends bind them)."""
    for module in ("dequant", "dequant_ik"):
        for f in MODULES[module][1]:
            text = (resources.files("qtool.gpu") / "cuda" / f).read_text(encoding="utf-8")
            for name in re.findall(r"^\s*QTABLE\(\s*\w+\s*,\s*(\w+)\s*\)", text, re.M):
                assert name in TABLES, f"{f}: table {name} has no builder in qtool/gpu/tables.py"


@pytest.mark.parametrize("name", KERNELS)
def test_golden_vectors(host: Any, name: str) -> None:
    """The vectors' quantized rows: the engine's floats and, where the vectors hold the C's own
    dequantized rows, those too."""
    impl = _impl(name)
    if not (VECTORS / impl / f"{name}.npz").exists():
        pytest.skip(f"no golden vectors for {name}")
    n = inputs(impl)[0].shape[1]
    vec = expected(name, impl)
    for key in ("q_noim", "q_im"):
        if key not in vec:
            continue
        q = vec[key]
        got = host.dequantize(q, name, n)
        assert (msg := bits_mismatch(got, engine.dequantize(q, name, n))) is None, f"{key}: {msg}"
        ref = vec.get("deq_" + key[2:])
        if ref is not None:
            assert (msg := bits_mismatch(got, ref.astype(np.float32))) is None, f"{key} vs the C: {msg}"


@pytest.mark.parametrize("name", KERNELS)
def test_random_bytes(host: Any, name: str) -> None:
    qt = get_type(name)
    n = 4 * max(256, qt.block_size)
    data = random_blocks(name, 24, n, seed=len(name) * 31 + qt.id)
    with np.errstate(all="ignore"):
        want = engine.dequantize(data, name, n)
    assert (msg := bits_mismatch(host.dequantize(data, name, n), want)) is None, msg


def test_special_scales_are_exercised(host: Any) -> None:
    """The random rows reach NaN and inf results (else the NaN rules above test nothing)."""
    data = random_blocks("Q4_1", 24, 1024, seed=5)
    y = host.dequantize(data, "Q4_1", 1024)
    assert np.isnan(y).any() and np.isinf(y).any()
    u = y.view(np.uint32)[np.isnan(y)]
    assert (u >> 31).any() and not (u >> 31).all()  # NaNs of both signs


def test_host_dequantize_checks_its_input(host: Any) -> None:
    with pytest.raises(ValueError, match="not a multiple of 256"):
        host.dequantize(np.zeros(144, np.uint8), "Q4_K", 320)
    with pytest.raises(ValueError, match="not whole rows"):
        host.dequantize(np.zeros(145, np.uint8), "Q4_K", 256)
    with pytest.raises(ValueError, match="no GPU dequantize kernel for F32"):
        host.dequantize(np.zeros(16, np.uint8), "F32", 4)


# --- the pipeline through the fake CuPy -------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_model(tiny256: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-256 quantized with several types at once: Q4_K_M (Q4_K, Q6_K ...), IQ4_XS for the
    attention, Q8_0 and Q5_1 for a few tensors."""
    out = tmp_path_factory.mktemp("mixed") / "mixed.gguf"
    quantize_file(tiny256, out, "Q4_K_M", nthreads=1,
                  tensor_type=["attn_q=iq4_xs", "attn_k=q8_0", "attn_output=q5_1", "ffn_up=iq4_nl"])
    return out


def _types(path: Path) -> set[str]:
    from qtool.gguf_io import GGUFModel

    with GGUFModel(path) as m:
        return {t.qtype.name for t in m.tensors}


@pytest.mark.parametrize("to", ["F16", "BF16", "F32"])
def test_dequantize_cuda_equals_cpu(to: str, mixed_model: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"Q4_K", "Q6_K", "IQ4_XS", "Q8_0", "Q5_1", "IQ4_NL"} <= _types(mixed_model)
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    dequantize_file(mixed_model, cpu, to, nthreads=1)
    fake_cupy.install(monkeypatch)
    warnings: list[str] = []
    dequantize_file(mixed_model, gpu, to, nthreads=1, device="cuda", warn=warnings.append)
    assert gpu.read_bytes() == cpu.read_bytes()
    assert not [w for w in warnings if "--device cuda" in w]  # every converted tensor on the GPU
    assert {"dequantize_q4_k", "dequantize_q6_k", "dequantize_iq4_xs", "dequantize_q8_0"} <= set(fake_cupy.CALLS)
    assert f"quantize_{to.lower()}" in fake_cupy.CALLS


def test_dequantize_cuda_small_chunks_two_devices(mixed_model: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    dequantize_file(mixed_model, cpu, "F16", nthreads=1)
    fake_cupy.install(monkeypatch, devices=2)
    sizes: list[int] = []
    base = pipeline.GpuPipeline

    class Small(base):  # type: ignore[misc, valid-type]
        def __init__(self, fd: int, devices: list[int] | None = None, chunk_elements: int = 5 * 256) -> None:
            super().__init__(fd, devices, chunk_elements)

        def submit(self, src: Any, *args: Any, **kwargs: Any) -> None:
            sizes.append(src.nbytes)
            super().submit(src, *args, **kwargs)

    monkeypatch.setattr(pipeline, "GpuPipeline", Small)
    dequantize_file(mixed_model, gpu, "F16", nthreads=1, device="cuda")
    assert gpu.read_bytes() == cpu.read_bytes()
    assert len(sizes) > 12 and len(set(sizes)) > 1


def test_quantize_cuda_from_quantized_input(mixed_model: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """--allow-requantize: the quantized rows go to the device raw, are dequantized there and
    quantized again: the CPU's bytes; a type without a kernel on either side is named once."""
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    kw: dict[str, Any] = {"nthreads": 1, "allow_requantize": True, "imatrix": DATA / "tiny-256.imatrix.gguf"}
    quantize_file(mixed_model, cpu, "IQ4_XS", **kw)
    fake_cupy.install(monkeypatch)
    quantize_file(mixed_model, gpu, "IQ4_XS", device="cuda", **kw)
    assert gpu.read_bytes() == cpu.read_bytes()
    assert {"dequantize_q4_k", "dequantize_q6_k", "quantize_iq4_xs"} <= set(fake_cupy.CALLS)


def test_types_without_a_dequant_kernel_are_named(tiny256: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ik's row-interleaved Q4_0_R8 has no GPU dequantize kernel: dequantized on the CPU (said
    once), the rest on the GPU; the bytes are the CPU's."""
    model = tmp_path / "ik.gguf"
    quantize_file(tiny256, model, "Q4_K_M", nthreads=1, flavour=IK, tensor_type=["ffn_up=q4_0_r8"])
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    dequantize_file(model, cpu, "F16", nthreads=1, flavour=IK)
    fake_cupy.install(monkeypatch)
    warnings: list[str] = []
    dequantize_file(model, gpu, "F16", nthreads=1, flavour=IK, device="cuda", warn=warnings.append)
    assert gpu.read_bytes() == cpu.read_bytes()
    notes = [w for w in warnings if "--device cuda" in w]
    assert len(notes) == 1 and "q4_0_r8" in notes[0] and "dequantized on the CPU" in notes[0], warnings
    assert "dequantize_q4_k" in fake_cupy.CALLS


def test_dequantize_device_cli(mixed_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    dequantize_file(mixed_model, cpu, "BF16", nthreads=1)
    fake_cupy.install(monkeypatch)
    res = CliRunner().invoke(cli, ["dequantize", str(mixed_model), str(gpu), "--to", "bf16", "--device", "cuda",
                                   "-q", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert gpu.read_bytes() == cpu.read_bytes()
    res = CliRunner().invoke(cli, ["dequantize", "--from", str(mixed_model), "--from", str(mixed_model),
                                   str(tmp_path / "c.gguf"), "--device", "cuda"])
    assert res.exit_code == 2 and "--device cuda dequantizes a single input" in res.output


def test_dequantize_device_cuda_without_cupy(mixed_model: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import qtool.gpu.cuda as qcuda

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(qcuda, "_CUPY", None)
    out = tmp_path / "o.gguf"
    res = CliRunner().invoke(cli, ["dequantize", str(mixed_model), str(out), "--device", "cuda"])
    assert res.exit_code != 0 and "CuPy" in res.output
    assert not out.exists()


# --- on a real CUDA device (skipped where CuPy or a GPU is missing, as in CI) -------------------
# Extra quantized models for the last test: QTOOL_GPU_DEQUANT_MODELS=a.gguf:b.gguf
@pytest.fixture(scope="module")
def cuda() -> Any:
    from qtool.gpu.cuda import CudaKernels, device_count

    if device_count() == 0:
        pytest.skip("no CUDA device (CuPy and a GPU needed)")
    return CudaKernels(0)


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_on_gpu(cuda: Any, name: str) -> None:
    """Golden vectors (engine and C floats) and random bytes (special fp16 scales) on the device."""
    impl = _impl(name)
    if (VECTORS / impl / f"{name}.npz").exists():
        n = inputs(impl)[0].shape[1]
        vec = expected(name, impl)
        for key in ("q_noim", "q_im"):
            if key in vec:
                got = cuda.dequantize(vec[key], name, n)
                assert (msg := bits_mismatch(got, engine.dequantize(vec[key], name, n))) is None, f"{key}: {msg}"
    qt = get_type(name)
    n = 16 * max(256, qt.block_size)
    data = random_blocks(name, 64, n, seed=qt.id + 1)
    with np.errstate(all="ignore"):
        want = engine.dequantize(data, name, n)
    assert (msg := bits_mismatch(cuda.dequantize(data, name, n), want)) is None, msg


@pytest.mark.parametrize("to", ["F16", "BF16", "F32"])
def test_dequantize_model_on_gpu(cuda: Any, to: str, mixed_model: Path, tmp_path: Path) -> None:
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    dequantize_file(mixed_model, cpu, to, nthreads=1)
    dequantize_file(mixed_model, gpu, to, nthreads=1, device="cuda")
    assert gpu.read_bytes() == cpu.read_bytes()


def test_requantize_model_on_gpu(cuda: Any, mixed_model: Path, tmp_path: Path) -> None:
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    kw: dict[str, Any] = {"nthreads": 1, "allow_requantize": True, "imatrix": DATA / "tiny-256.imatrix.gguf"}
    quantize_file(mixed_model, cpu, "Q4_K_M", **kw)
    quantize_file(mixed_model, gpu, "Q4_K_M", device="cuda", **kw)
    assert gpu.read_bytes() == cpu.read_bytes()


def _extra_models() -> list[str]:
    return [p for p in os.environ.get("QTOOL_GPU_DEQUANT_MODELS", "").split(":") if p]


@pytest.mark.parametrize("model", _extra_models() or [pytest.param("", marks=pytest.mark.skip(
    reason="QTOOL_GPU_DEQUANT_MODELS not set"))])
def test_dequantize_real_model_on_gpu(cuda: Any, model: str, tmp_path: Path) -> None:
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    dequantize_file(model, cpu, "F16")
    dequantize_file(model, gpu, "F16", device="cuda")
    assert gpu.read_bytes() == cpu.read_bytes()
