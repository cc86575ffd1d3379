"""The GPU kernels' CUDA C, compiled for the CPU (qtool.gpu.host), against the golden vectors and
the numpy engine: every kernel of qtool.gpu.GPU_KERNELS, every variant it claims. The same
source runs on the GPU (tests/test_gpu_cuda.py, skipped without one); these tests make sure its
arithmetic is right on machines without a GPU. Skipped without a C++ compiler."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.gpu import GPU_KERNELS, gpu_kernel
from qtool.gpu.kernels import KernelAbort
from qtool.gpu.tables import TABLES
from qtool.quants import engine
from qtool.quants.types import IK, MAINLINE

from .vectors import VECTORS, expected, inputs, mismatched_rows

CASES = [pytest.param(k.type_name, k.flavour, v, id=f"{k.type_name}-{k.flavour}-{'im' if v else 'noim'}")
         for k in GPU_KERNELS.values() for v in k.variants]



@pytest.mark.parametrize(("name", "flavour", "imatrix"), CASES)
def test_golden_vectors(gpu_host, name: str, flavour: str, imatrix: bool) -> None:  # type: ignore[no-untyped-def]
    impl = "ik_llama" if flavour == IK else "mainline"
    if not (VECTORS / impl / f"{name}.npz").exists():
        pytest.skip(f"no golden vectors for {name} (F32: a copy)")
    x, im, kinds = inputs(impl)
    want = expected(name, impl)["q_im" if imatrix else "q_noim"]
    got = gpu_host.quantize(x, name, im if imatrix else None, flavour=flavour)
    bad = mismatched_rows(got, want)
    assert bad == [], f"{name} imatrix={imatrix}: rows {bad} ({[kinds[i] for i in bad]}) differ"


def _extra_rows(n_per_row: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows the vectors lack: six decades of scale, a zero block, one huge outlier, a 1e-30 row;
    an imatrix with zero stretches."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((24, n_per_row)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-4, 2, size=(24, 1))).astype(np.float32)
    x[3, : min(64, n_per_row)] = 0
    x[5, 7] = 3e4
    x[7] = np.float32(1e-30) * rng.standard_normal(n_per_row).astype(np.float32)
    x[9] = np.abs(x[9])
    im = rng.chisquare(2, n_per_row).astype(np.float32)
    im[: n_per_row // 8] = 0
    return x, im


@pytest.mark.parametrize(("name", "flavour", "imatrix"), CASES)
def test_equals_numpy_engine(gpu_host, name: str, flavour: str, imatrix: bool) -> None:  # type: ignore[no-untyped-def]
    k = GPU_KERNELS[(name, flavour)]
    n = 4 * max(256, k.qtype.block_size)
    x, im = _extra_rows(n, seed=len(name) * 7 + imatrix)
    w = im if imatrix else None
    try:
        want = engine.quantize(x, name, w, flavour=k.flavour)
    except RuntimeError:  # rows on which the C aborts (ik's IQ2_XXS / IQ1_S on the zero stretch)
        with pytest.raises(KernelAbort, match=f"{name} \\({k.flavour}\\)"):
            gpu_host.quantize(x, name, w, flavour=k.flavour)
        w = None if w is None else w + np.float32(0.25)  # then the bytes, on an imatrix without zeros
        want = engine.quantize(x, name, w, flavour=k.flavour)
    got = gpu_host.quantize(x, name, w, flavour=k.flavour)
    assert mismatched_rows(got, want) == []


def test_kernel_table_is_consistent() -> None:
    for (name, flavour), k in GPU_KERNELS.items():
        assert k.type_name == name and k.flavour == flavour and k.kernel.startswith("quantize_")
        assert set(k.row_prepass) <= set(k.variants)
        assert all(t in TABLES for t in k.tables), name
        for v in k.variants:
            assert engine.can_quantize(name, k.flavour, v), f"{name}: the numpy engine has no {k.flavour} variant {v}"


def test_flavour_reuse_only_where_the_engine_shares_the_function() -> None:
    # Q4_0 with an imatrix: ik_llama.cpp has its own algorithm, so mainline's kernel must not serve it
    assert gpu_kernel("Q4_0", True, MAINLINE) is not None
    ik = gpu_kernel("Q4_0", True, IK)
    assert ik is None or ik.flavour == IK
    # without an imatrix both trees run quantize_row_q4_0_ref: the engine shares it, so does the GPU
    assert gpu_kernel("Q4_0", False, IK) is gpu_kernel("Q4_0", False, MAINLINE)


def test_types_command_shows_the_gpu_kernels() -> None:
    import json

    from click.testing import CliRunner

    from qtool.cli import cli

    res = CliRunner().invoke(cli, ["types", "--flavour", "ik", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["types"]}
    assert rows["IQ4_K"]["gpu_without_imatrix"] and rows["IQ4_K"]["gpu_with_imatrix"]
    assert not rows["Q4_0_R8"]["gpu_without_imatrix"]  # repacks run on the CPU
    assert gpu_kernel("Q2_K", False, IK) is None  # ik's Q2_K without imatrix (TriNet): CPU only
    assert not rows["Q2_K"]["gpu_without_imatrix"] and rows["Q2_K"]["gpu_with_imatrix"]


def test_host_kernels_check_their_input_as_the_engine_does(gpu_host) -> None:  # type: ignore[no-untyped-def]
    x = np.ones((2, 256), dtype=np.float32)
    with pytest.raises(ValueError, match="imatrix has 128 values"):  # C would read past its end
        gpu_host.quantize(x, "Q4_K", np.ones(128, dtype=np.float32))
    with pytest.raises(ValueError, match="not a multiple of 256"):
        gpu_host.quantize(np.ones((2, 320), dtype=np.float32), "Q4_K")
    with pytest.raises(ValueError, match="no GPU kernel for Q4_0_R8"):
        gpu_host.quantize(x, "Q4_0_R8", flavour=IK)
