"""The kernels' own NVRTC build (qtool.gpu.nvrtc): CuPy's RawModule adds -ftz=true (subnormals
flushed, other bytes than ggml's x86 C), so CudaKernels compiles through CuPy's lower-level
compile_using_nvrtc with --ftz=false, caches the binary, and probes the result. Run on the fake
CuPy (tests/fake_cupy.py, the host build behind it); tests/test_gpu_cuda.py checks the probe on a
real GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qtool.gpu.cuda import CudaKernels
from qtool.gpu.nvrtc import NVRTC_OPTIONS
from qtool.quants import engine

from . import fake_cupy


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu_host: Any) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _rows() -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    x[2] *= np.float32(2.0**-140)  # subnormal float32 values
    return x


def test_direct_build_states_no_flush_and_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_cupy.install(monkeypatch, direct=True)
    k = CudaKernels(0)
    x = _rows()
    assert np.array_equal(k.quantize(x, "Q8_0"), engine.quantize(x, "Q8_0"))
    assert k.keeps_subnormals is True
    assert fake_cupy.COMPILED == [NVRTC_OPTIONS]
    assert "--ftz=false" in NVRTC_OPTIONS and "--fmad=false" in NVRTC_OPTIONS
    assert list((tmp_path / "cache" / "qtool" / "cuda").glob("*.bin"))
    k2 = CudaKernels(0)  # as a second process: the core module comes from the disk cache
    assert np.array_equal(k2.quantize(x, "Q4_K"), engine.quantize(x, "Q4_K"))
    assert len(fake_cupy.COMPILED) == 1


def test_corrupt_cache_entry_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_cupy.install(monkeypatch, direct=True)
    x = _rows()
    CudaKernels(0).quantize(x, "Q8_0")
    (entry,) = (tmp_path / "cache" / "qtool" / "cuda").glob("*.bin")
    entry.write_bytes(entry.read_bytes()[:-10])
    assert np.array_equal(CudaKernels(0).quantize(x, "Q8_0"), engine.quantize(x, "Q8_0"))
    assert len(fake_cupy.COMPILED) == 2


def test_flushing_build_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that flushes subnormals (as CuPy's RawModule path does) is said, not hidden."""
    fake_cupy.install(monkeypatch)
    k = CudaKernels(0)
    monkeypatch.setattr(k, "_probe_subnormals", lambda m: CudaKernels._probe_subnormals(k, _Flushing(m)))
    with pytest.warns(RuntimeWarning, match="flushes subnormal"):
        k.quantize(_rows(), "Q8_0")
    assert k.keeps_subnormals is False


class _Flushing:
    """A module whose probe kernel behaves as a -ftz=true build."""

    def __init__(self, m: Any) -> None:
        self.m = m

    def get_function(self, name: str) -> Any:
        assert name == "qtool_probe_subnormal"

        def launch(grid: Any, block: Any, args: tuple[Any, ...]) -> None:
            args[0][:] = 0

        return launch
