"""`--device cuda` without a GPU: qtool.gpu.pipeline, the runner's GPU path, the api and
CudaKernels' Python side run on tests/fake_cupy.py (numpy arrays as device memory, stream work
deferred until its event is waited for, the kernel source compiled for the CPU as the modules),
and every output file must equal the CPU engine's byte for byte: several ftypes with and without
an imatrix, chunks of a few rows (slots reused many times), two devices, a MoE model's
per-expert imatrix, types without a GPU kernel on the CPU in the same run, the command line, and
the error without CuPy. Skipped without a C++ compiler (as tests/test_gpu_kernels.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import qtool.gpu.cuda as qcuda
import qtool.gpu.pipeline as pipeline
from qtool.api import quantize_file
from qtool.cli import cli

from . import fake_cupy

DATA = Path(__file__).parent / "data" / "quantize"
IMATRIX = DATA / "tiny-256.imatrix.gguf"
CASES = [("Q4_0", False), ("Q4_0", True), ("Q4_K_M", False), ("Q4_K_M", True), ("IQ4_XS", False),
         ("Q6_K", True), ("Q8_0", False), ("IQ2_XXS", True)]


@pytest.fixture(scope="module", autouse=True)
def host_build(gpu_host: Any) -> None:
    """Every test here runs the host-built kernels (skipped without a C++ compiler)."""


@pytest.fixture(scope="module")
def cpu_ref(tiny256: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The CPU engine's file for (ftype, imatrix?), made once per module."""
    d = tmp_path_factory.mktemp("cpu")
    cache: dict[tuple[str, bool], bytes] = {}

    def get(ftype: str, im: bool) -> bytes:
        if (ftype, im) not in cache:
            out = d / f"{ftype}-{im}.gguf"
            quantize_file(tiny256, out, ftype, imatrix=IMATRIX if im else None, nthreads=1)
            cache[ftype, im] = out.read_bytes()
        return cache[ftype, im]

    return get


def small_chunks(monkeypatch: pytest.MonkeyPatch, elements: int) -> list[int]:
    """GpuPipeline with chunks of `elements` values; returns the list of submitted chunk sizes."""
    base = pipeline.GpuPipeline
    sizes: list[int] = []

    class Small(base):  # type: ignore[misc, valid-type]
        def __init__(self, fd: int, devices: list[int] | None = None, chunk_elements: int = elements) -> None:
            super().__init__(fd, devices, chunk_elements)

        def submit(self, src: Any, *args: Any, **kwargs: Any) -> None:
            sizes.append(src.nbytes)
            super().submit(src, *args, **kwargs)

    monkeypatch.setattr(pipeline, "GpuPipeline", Small)
    return sizes


@pytest.mark.parametrize(("ftype", "im"), CASES, ids=[f"{f}-{'im' if i else 'noim'}" for f, i in CASES])
def test_cuda_equals_cpu(ftype: str, im: bool, tiny256: Path, tmp_path: Path, cpu_ref: Any,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cupy.install(monkeypatch)
    out = tmp_path / "gpu.gguf"
    warnings: list[str] = []
    quantize_file(tiny256, out, ftype, imatrix=IMATRIX if im else None, nthreads=1, device="cuda",
                  warn=warnings.append)
    assert out.read_bytes() == cpu_ref(ftype, im)
    assert not [w for w in warnings if "--device cuda" in w]  # every converted tensor went to the GPU
    assert any(k.startswith("quantize_") for k in fake_cupy.CALLS)


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize(("ftype", "im", "rows"), [("Q4_K_M", True, 3), ("Q6_K", False, 7), ("IQ4_XS", True, 48)])
def test_small_chunks(ftype: str, im: bool, rows: int, devices: int, tiny256: Path, tmp_path: Path,
                      cpu_ref: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few rows (not dividing the tensors): each slot is reused many times, buffers are
    sliced smaller than allocated, chunks alternate over the devices."""
    fake_cupy.install(monkeypatch, devices)
    sizes = small_chunks(monkeypatch, rows * 256)
    out = tmp_path / "gpu.gguf"
    quantize_file(tiny256, out, ftype, imatrix=IMATRIX if im else None, nthreads=1, device="cuda")
    assert out.read_bytes() == cpu_ref(ftype, im)
    assert len(sizes) > 4 * devices * pipeline.SLOTS_PER_DEVICE
    assert len(set(sizes)) > 1  # partial last chunks (and rows of 512: fewer rows per chunk)


@pytest.mark.parametrize("source", ["BF16", "F32", "Q8_0"])
def test_input_types(source: str, tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BF16 and F32 inputs (read as stored, widened on the device) and a quantized input
    (dequantized on the CPU, sent as float32 rows in memory)."""
    inp = tmp_path / f"in-{source}.gguf"
    quantize_file(tiny256, inp, source, nthreads=1, pure=True)
    kw: dict[str, Any] = {"nthreads": 1, "allow_requantize": source == "Q8_0"}
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    quantize_file(inp, cpu, "Q4_K_M", **kw)
    fake_cupy.install(monkeypatch)
    small_chunks(monkeypatch, 100 * 256)
    quantize_file(inp, gpu, "Q4_K_M", device="cuda", **kw)
    assert gpu.read_bytes() == cpu.read_bytes()
    assert "quantize_q4_K" in fake_cupy.CALLS


def test_moe_per_expert_imatrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(DATA))
    try:
        from moe_fixture import make_imatrix, make_model
    finally:
        sys.path.remove(str(DATA))
    model, imat = tmp_path / "tiny-moe.gguf", tmp_path / "tiny-moe.imatrix.gguf"
    make_model(model)
    make_imatrix(imat)
    monkeypatch.chdir(tmp_path)
    for ftype in ("IQ2_XXS", "Q4_K_M"):
        cpu, gpu = tmp_path / f"cpu-{ftype}.gguf", tmp_path / f"gpu-{ftype}.gguf"
        quantize_file(model, cpu, ftype, imatrix=imat.name, nthreads=1)
        with monkeypatch.context() as m:
            fake_cupy.install(m, 2)
            sizes = small_chunks(m, 100 * 256)  # 100 rows: chunks end at every expert's last row too
            quantize_file(model, gpu, ftype, imatrix=imat.name, nthreads=1, device="cuda")
        assert gpu.read_bytes() == cpu.read_bytes(), ftype
        assert len(sizes) > 12


def test_types_without_kernel_run_on_cpu(tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ik's Q4_K_M with ffn_down forced to q4_0_r8 (an interleaved repack: no GPU kernel): the rest
    on the GPU, ffn_down on the CPU in the same run, said once."""
    from qtool.gpu import gpu_kernel
    from qtool.quants.types import IK, get_type

    assert gpu_kernel(get_type("Q4_0_R8"), False, IK) is None
    kw: dict[str, Any] = {"flavour": "ik", "tensor_type": ["ffn_down=q4_0_r8"], "nthreads": 2}
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    quantize_file(tiny256, cpu, "Q4_K_M", **kw)
    fake_cupy.install(monkeypatch)
    warnings: list[str] = []
    quantize_file(tiny256, gpu, "Q4_K_M", device="cuda", warn=warnings.append, **kw)
    assert gpu.read_bytes() == cpu.read_bytes()
    notes = [w for w in warnings if w.startswith("--device cuda")]
    assert len(notes) == 1 and "q4_0_r8" in notes[0] and "2 tensor(s)" in notes[0], warnings
    assert "quantize_q4_K_ik" in fake_cupy.CALLS


def test_cli(tiny256: Path, tmp_path: Path, cpu_ref: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cupy.install(monkeypatch)
    out = tmp_path / "gpu.gguf"
    r = CliRunner().invoke(cli, ["quantize", "-q", "--device", "cuda", str(tiny256), str(out), "Q4_0", "1"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == cpu_ref("Q4_0", False)


def test_cli_without_cupy(tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    monkeypatch.setattr(qcuda, "_CUPY", None)
    out = tmp_path / "gpu.gguf"
    r = CliRunner().invoke(cli, ["quantize", "--device", "cuda", str(tiny256), str(out), "Q4_0", "1"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.output
    assert "CuPy" in r.output and "Traceback" not in r.output, r.output
    assert isinstance(r.exception, SystemExit)  # reported by the click group, not raised
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_tables_ordered_before_other_streams(tiny256: Path, tmp_path: Path, cpu_ref: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookup tables are uploaded on one stream and used by kernels on the others: CudaKernels
    waits for the device after binding them (the fake raises StreamRace otherwise)."""
    fake_cupy.install(monkeypatch, 2)
    monkeypatch.setattr(fake_cupy, "STRICT_TABLES", True)
    small_chunks(monkeypatch, 64 * 256)
    out = tmp_path / "gpu.gguf"
    quantize_file(tiny256, out, "IQ2_XXS", imatrix=IMATRIX, nthreads=1, device="cuda")
    assert out.read_bytes() == cpu_ref("IQ2_XXS", True)


def test_write_error(tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed pwrite in the writer thread (disk full) surfaces as OutputError; no file is left."""
    from qtool.errors import OutputError

    fake_cupy.install(monkeypatch)

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.GpuPipeline, "_write", full)
    with pytest.raises(OutputError, match="No space left"):
        quantize_file(tiny256, tmp_path / "gpu.gguf", "Q4_0", nthreads=1, device="cuda")
    assert list(tmp_path.iterdir()) == []


def test_short_read_is_an_input_error(tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input that ends inside a tensor while its rows are read (truncated during the run) is
    reported as the input's error, naming it, not as a failed write; no output is left."""
    from qtool.errors import OutputError, QtoolError

    fake_cupy.install(monkeypatch)
    monkeypatch.setattr(pipeline.os, "preadv", lambda fd, bufs, offset: 0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(QtoolError, match="tiny-256.gguf: the file ends at byte") as e:
        quantize_file(tiny256, out_dir / "gpu.gguf", "Q4_0", nthreads=1, device="cuda")
    assert not isinstance(e.value, OutputError)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("ftype", ["IQ3_XXS", "IQ2_S"])
def test_row_carrying_kernels_follow_the_cpu_calls(ftype: str, tiny256: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ik's lattice variants carry state from row to row within a call, in C and in the engine:
    their GPU launches take the CPU engine's slabs (here 3 rows), not the GPU's chunk size (7 rows),
    so both devices make the same calls and the same bytes."""
    import qtool.runner as runner
    from qtool.gpu import gpu_kernel

    assert gpu_kernel(ftype, True, "ik") is not None and gpu_kernel(ftype, True, "ik").carries_rows
    monkeypatch.setattr(runner, "SLAB_ELEMENTS", 3 * 256)
    cpu, gpu = tmp_path / "cpu.gguf", tmp_path / "gpu.gguf"
    quantize_file(tiny256, cpu, ftype, imatrix=IMATRIX, nthreads=1, flavour="ik")
    fake_cupy.install(monkeypatch)
    sizes = small_chunks(monkeypatch, 7 * 256)
    quantize_file(tiny256, gpu, ftype, imatrix=IMATRIX, nthreads=1, flavour="ik", device="cuda")
    assert gpu.read_bytes() == cpu.read_bytes()
    assert 3 * 256 * 2 in sizes  # F16 rows: a carrying kernel's launch is one CPU slab (3 rows)


def test_rows_the_c_aborts_on_are_an_error_on_both_devices(tiny256: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """ik's IQ2_XXS aborts (GGML_ASSERT) on a sub-block whose imatrix is all zero: the CPU engine
    refuses it, and so does the GPU run (the kernel sets prelude.cuh's qtool_abort; the writer
    thread raises KernelAbort): a clean error on the command line, and no output file."""
    import numpy as np

    from qtool.errors import AbortError
    from qtool.imatrix import read_imatrix, write_imatrix

    d = read_imatrix(IMATRIX)
    for e in d.entries.values():
        e.sums[..., : e.sums.shape[-1] // 8] = np.float32(0)
    im = tmp_path / "im0.gguf"
    write_imatrix(d, im)
    with pytest.raises(AbortError, match=r"^blk\.\d+\.\w+\.weight \(rows \d+\.\.\d+\): IQ2_XXS: "):
        quantize_file(tiny256, tmp_path / "cpu.gguf", "IQ2_XXS", imatrix=im, flavour="ik", nthreads=1)
    fake_cupy.install(monkeypatch)
    out = tmp_path / "gpu.gguf"
    r = CliRunner().invoke(cli, ["quantize", "--device", "cuda", "--flavour", "ik", "--imatrix", str(im),
                                 str(tiny256), str(out), "IQ2_XXS", "1"], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "make the C quantizer abort" in r.output and "Traceback" not in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["im0.gguf"]
    assert "quantize_iq2_xxs_ik" in fake_cupy.CALLS


def test_stats_on_the_gpu_gives_the_cpu_figures(tiny256: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`stats --device cuda` quantizes the rows through the kernels (qtool.gpu.rows): the same bytes,
    so the same report, to the last digit of the JSON."""
    import json

    args = ["stats", str(tiny256), "--type", "q4_k", "--type", "iq4_xs", "--type", "q6_k", "--type", "q8_0",
            "--imatrix", str(IMATRIX), "--threads", "2", "--json"]
    cpu = CliRunner().invoke(cli, args, env={"COLUMNS": "200"})
    assert cpu.exit_code == 0, cpu.output
    fake_cupy.install(monkeypatch)
    gpu = CliRunner().invoke(cli, [*args, "--device", "cuda"], env={"COLUMNS": "200"})
    assert gpu.exit_code == 0, gpu.output
    assert json.loads(gpu.stdout) == json.loads(cpu.stdout)
    assert {"quantize_q4_K", "quantize_iq4_xs", "quantize_q6_K", "quantize_q8_0"} <= set(fake_cupy.CALLS)


def test_stats_device_without_cupy_is_a_clean_error(tiny256: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(qcuda, "_CUPY", None)
    r = CliRunner().invoke(cli, ["stats", str(tiny256), "--type", "q4_k", "--device", "cuda"], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "CuPy" in r.output and "Traceback" not in r.output, r.output
