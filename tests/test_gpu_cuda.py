"""The GPU backend on a real CUDA device (skipped where CuPy or a GPU is missing, as in CI): every
kernel and variant on the golden vectors and against the numpy engine, and whole models
quantized with device="cuda" byte-identical to the CPU's. Extra models for the last test:
QTOOL_GPU_MODELS=path1.gguf:path2.gguf (F16 / BF16 / F32 models), with QTOOL_GPU_IMATRIX_<n>
naming an imatrix for the n-th (optional)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qtool.api import quantize_file
from qtool.gpu import GPU_KERNELS
from qtool.gpu.cuda import device_count
from qtool.quants import engine

from .vectors import VECTORS, expected, inputs, mismatched_rows

pytestmark = pytest.mark.skipif(device_count() == 0, reason="no CUDA device (CuPy and a GPU needed)")
CASES = [pytest.param(k.type_name, k.flavour, v, id=f"{k.type_name}-{k.flavour}-{'im' if v else 'noim'}")
         for k in GPU_KERNELS.values() for v in k.variants]
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def gpu():  # type: ignore[no-untyped-def]
    from qtool.gpu.cuda import CudaKernels

    return CudaKernels(0)


def test_build_keeps_subnormals_on_gpu(gpu) -> None:  # type: ignore[no-untyped-def]
    """The kernels are built without flush-to-zero (qtool.gpu.nvrtc; CuPy's RawModule adds
    -ftz=true): rows of subnormal float32 values quantize as the CPU engine does."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((16, 1024)).astype(np.float32) * np.float32(2.0**-121)
    x[8:] *= np.float32(2.0**-4)  # scales and products subnormal, values mostly normal
    assert np.count_nonzero(engine.quantize(x, "Q8_0")) > 1000
    im = rng.chisquare(2, 1024).astype(np.float32) * np.float32(2.0**-130)
    for name in ("Q8_0", "Q4_0", "Q5_1", "Q3_K", "Q4_K", "Q6_K", "IQ4_XS"):
        assert np.array_equal(gpu.quantize(x, name), engine.quantize(x, name)), name
        assert np.array_equal(gpu.quantize(x, name, im), engine.quantize(x, name, im)), name
    assert gpu.keeps_subnormals is True


@pytest.mark.parametrize(("name", "flavour", "imatrix"), CASES)
def test_golden_vectors_on_gpu(gpu, name: str, flavour: str, imatrix: bool) -> None:  # type: ignore[no-untyped-def]
    k = GPU_KERNELS[(name, flavour)]
    impl = "ik_llama" if k.flavour == "ik" else "mainline"
    if not (VECTORS / impl / f"{name}.npz").exists():
        pytest.skip(f"no golden vectors for {name} (F32: a copy)")
    x, im, kinds = inputs(impl)
    want = expected(name, impl)["q_im" if imatrix else "q_noim"]
    got = gpu.quantize(x, name, im if imatrix else None, flavour=k.flavour)
    bad = mismatched_rows(got, want)
    assert bad == [], f"{name} imatrix={imatrix}: rows {bad} ({[kinds[i] for i in bad]}) differ on the GPU"


@pytest.mark.parametrize(("name", "flavour", "imatrix"), CASES)
def test_gpu_equals_numpy_engine(gpu, name: str, flavour: str, imatrix: bool) -> None:  # type: ignore[no-untyped-def]
    k = GPU_KERNELS[(name, flavour)]
    rng = np.random.default_rng(17)
    n = 4096 if 4096 % k.qtype.block_size == 0 else 16 * k.qtype.block_size
    x = rng.standard_normal((48, n)).astype(np.float32) * (10.0 ** rng.uniform(-3, 1, (48, 1))).astype(np.float32)
    x[1, :256] = 0
    x[2] = 1e-30
    im = rng.chisquare(2, n).astype(np.float32) if imatrix else None
    want = engine.quantize(x, name, im, flavour=k.flavour)
    assert mismatched_rows(gpu.quantize(x, name, im, flavour=k.flavour), want) == []


@pytest.mark.parametrize("name", ["IQ2_XXS", "IQ1_S"])
def test_rows_ik_aborts_on_raise_on_gpu(gpu, name: str) -> None:  # type: ignore[no-untyped-def]
    """ik's C aborts on a sub-block whose imatrix is all zero: KernelAbort, as the engine raises;
    the flag is cleared, so the next launch gives the engine's bytes."""
    from qtool.errors import AbortError
    from qtool.gpu.kernels import KernelAbort

    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 1024)).astype(np.float32)
    im = rng.chisquare(2, 1024).astype(np.float32)
    im[:128] = 0
    with pytest.raises(AbortError):
        engine.quantize(x, name, im, flavour="ik")
    with pytest.raises(KernelAbort):
        gpu.quantize(x, name, im, flavour="ik")
    im += np.float32(0.25)
    assert mismatched_rows(gpu.quantize(x, name, im, flavour="ik"), engine.quantize(x, name, im, flavour="ik")) == []


FTYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_S", "Q6_K", "IQ4_NL", "IQ4_XS"]


@pytest.mark.parametrize("ftype", FTYPES)
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_whole_model_cuda_equals_cpu(tiny256: Path, tmp_path: Path, ftype: str, with_imatrix: bool) -> None:
    im = str(DATA / "quantize" / "tiny-256.imatrix.gguf") if with_imatrix else None
    cpu, cuda = tmp_path / "cpu.gguf", tmp_path / "cuda.gguf"
    quantize_file(tiny256, cpu, ftype, nthreads=1, imatrix=im)
    quantize_file(tiny256, cuda, ftype, nthreads=1, imatrix=im, device="cuda")
    assert cuda.read_bytes() == cpu.read_bytes()


def _extra_models() -> list[tuple[str, str | None]]:
    paths = [p for p in os.environ.get("QTOOL_GPU_MODELS", "").split(":") if p]
    return [(p, os.environ.get(f"QTOOL_GPU_IMATRIX_{i}")) for i, p in enumerate(paths)]


def _model_ftypes() -> list[tuple[str, str]]:
    """(ftype, flavour) for the extra models: QTOOL_GPU_FTYPES=all gives every ftype of both
    flavours whose default type has a GPU kernel (ik's mainline ftypes too: ik's algorithms
    differ); a comma list names ftypes (mainline, or FTYPE@ik); unset, five common ones."""
    from qtool.gpu import gpu_kernel
    from qtool.mix.ftypes import ftype_names, ftype_table

    spec = os.environ.get("QTOOL_GPU_FTYPES", "Q8_0,Q4_K_M,IQ4_XS,Q6_K,Q4_0")
    if spec != "all":
        return [(w.split("@")[0], w.split("@")[1] if "@" in w else "mainline") for w in spec.split(",") if w]
    out = []
    for fl in ("mainline", "ik"):
        valid, seen = set(ftype_names(fl)), set()
        for f in ftype_table(fl):
            if f.key in seen or f.default_type == "F32":
                continue
            seen.add(f.key)
            if gpu_kernel(f.default_type, True, fl) or gpu_kernel(f.default_type, False, fl):
                out.append((f.key if f.key in valid else f.name, fl))  # Q4_K_M, not its alias Q4_K
    return out


@pytest.mark.parametrize(("model", "imatrix"), _extra_models())
@pytest.mark.parametrize(("ftype", "flavour"), _model_ftypes())
@pytest.mark.parametrize("with_imatrix", [True, False], ids=["im", "noim"])
def test_real_model_cuda_equals_cpu(model: str, imatrix: str | None, ftype: str, flavour: str,
                                    with_imatrix: bool, tmp_path: Path) -> None:
    """Whole model, one ftype: the bytes of device="cuda" equal the CPU engine's (or both refuse
    with the same QuantizeError, e.g. an i-quant ftype without an imatrix)."""
    from qtool.api import QuantizeError

    if with_imatrix and imatrix is None:
        pytest.skip("no imatrix for this model")
    im = imatrix if with_imatrix else None
    cpu, cuda = tmp_path / "cpu.gguf", tmp_path / "cuda.gguf"
    try:
        quantize_file(model, cpu, ftype, nthreads=0, imatrix=im, flavour=flavour)
    except QuantizeError as e:
        with pytest.raises(QuantizeError) as got:
            quantize_file(model, cuda, ftype, nthreads=0, imatrix=im, flavour=flavour, device="cuda")
        assert str(got.value) == str(e)
        return
    quantize_file(model, cuda, ftype, nthreads=0, imatrix=im, flavour=flavour, device="cuda")
    assert cuda.read_bytes() == cpu.read_bytes()
