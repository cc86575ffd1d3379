"""Execute a quantization plan: stream tensors from the input, quantize row slabs in a process
pool, write the output GGUF in llama-quantize's layout.

The parent writes the header and the tensors that are copied; with N > 1 processes each worker
converts a slab of rows and writes it with os.pwrite at its final offset in the temporary output
(known from the header), so results never travel back through the parent, and slabs of the next
tensors are handed out while earlier ones are still running. Output identical for every
process count: rows are independent and every slab has one place in the file. The file is
renamed only after every slab has been written. Memory: at most ~2 slabs per worker in flight,
each a few MB.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import AbortError, OutputError, QtoolError, WorkerError
from .gguf_io import KV, GGUFModel, GGUFStreamWriter, OutTensor, TensorInfo, kv_u32, remove_kv, set_kv
from .gguf_io.atomic import start_writeback
from .pool import InFlight, WorkerPool
from .quants import dequantize, quantize
from .quants.to_float import FLOAT_TARGETS, dequantize_to
from .quants.types import IK, MAINLINE, QType

if TYPE_CHECKING:
    from .gpu.pipeline import GpuPipeline

SLAB_ELEMENTS = 1 << 20  # values per work item
GGML_QNT_VERSION = 2


class QuantizeError(QtoolError):
    """A user-facing error of a quantization run (bad options for this model, missing imatrix ...)."""


@dataclass
class TensorJob:
    """What to do with one input tensor."""

    info: TensorInfo
    out_name: str
    out_type: QType
    reason: str = ""
    imatrix: np.ndarray | None = None  # float32 (n_expert, n_per_row) or None

    @property
    def converts(self) -> bool:
        return self.out_type.id != self.info.qtype.id or self.out_type.name != self.info.qtype.name

    @property
    def out_bytes(self) -> int:
        return self.out_type.row_bytes(self.info.n_per_row) * self.info.n_rows


@dataclass
class RunResult:
    output: str
    n_tensors: int
    size_in: int
    size_out: int
    n_elements: int
    seconds: float
    tensors: list[dict] = field(default_factory=list)

    @property
    def bpw_in(self) -> float:
        return 8.0 * self.size_in / max(1, self.n_elements)

    @property
    def bpw_out(self) -> float:
        return 8.0 * self.size_out / max(1, self.n_elements)


def output_kvs(kvs: list[KV], ftype_id: int, overrides: Sequence[KV] = (),
               block_count: tuple[str, int] | None = None, flavour: str = MAINLINE) -> list[KV]:
    """The output's key/value pairs in llama-quantize's order: the input's, then
    quantization_version and file_type (re-appended), split keys removed, overrides appended.
    ik_llama.cpp's llama-quantize sets file_type last, after the overrides (llama-quantize.cpp),
    and its older gguf code updates a key that exists in place (gguf_get_or_add_key)."""
    put = set_kv_in_place if flavour == IK else set_kv
    out = list(kvs)
    out = put(out, kv_u32("general.quantization_version", GGML_QNT_VERSION))
    if flavour != IK:
        out = put(out, kv_u32("general.file_type", ftype_id))
    for k in ("split.no", "split.count", "split.tensors.count"):
        out = remove_kv(out, k)
    for kv in overrides:
        out = put(out, kv)
    if block_count is not None:
        out = put(out, kv_u32(*block_count))
    if flavour == IK:
        out = put(out, kv_u32("general.file_type", ftype_id))
    return out


def set_kv_in_place(kvs: list[KV], kv: KV) -> list[KV]:
    """ik_llama.cpp's gguf_set_val_*: replace the value where the key is, else append it."""
    if any(k.key == kv.key for k in kvs):
        return [kv if k.key == kv.key else k for k in kvs]
    return [*kvs, kv]


def rows_to_float(model: GGUFModel, t: TensorInfo, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a tensor as float32 (dequantized if needed)."""
    raw = model.tensor_rows(t, start, stop)
    return dequantize(raw, t.qtype, t.n_per_row)


def convert_rows(x: np.ndarray, out_type: QType, imatrix: np.ndarray | None, flavour: str,
                 recover: str | None = None) -> np.ndarray:
    """Quantize rows; recover: the input's float type (F16/BF16/F32) when grid recovery is on
    (blocks whose values lie on out_type's grid get their exact encoding, qtool.quants.recover)."""
    if recover is not None:
        from .quants.recover import quantize_recovering

        return quantize_recovering(x, out_type, imatrix, flavour=flavour, stored=recover)
    return quantize(x, out_type, imatrix, flavour=flavour)


def convert_slab(model: GGUFModel, t: TensorInfo, start: int, stop: int, out_type: QType,
                 imatrix: np.ndarray | None, flavour: str, recover: str | None = None) -> np.ndarray:
    """Rows [start, stop) of a tensor as out_type's bytes. A float output (F16 / BF16 / F32) goes
    straight from the stored bytes (qtool.quants.to_float: same bytes, no float32 slab). Rows the
    C quantizer aborts on raise AbortError naming the tensor."""
    if recover is None and out_type.name in FLOAT_TARGETS:
        return dequantize_to(model.tensor_rows(t, start, stop), t.qtype, t.n_per_row, out_type.name)
    try:
        return convert_rows(rows_to_float(model, t, start, stop), out_type, imatrix, flavour, recover)
    except AbortError as e:
        raise AbortError(f"{t.name} (rows {start}..{stop - 1}): {e}") from None


def _recover_for(t: TensorInfo, recover_grid: bool) -> str | None:
    """The stored float type of an input tensor when grid recovery applies to it, else None."""
    return t.qtype.name if recover_grid and t.qtype.name in ("F16", "BF16", "F32") else None


def _open_gpu(stack: contextlib.ExitStack, path: str) -> GpuPipeline:
    """The GPU pipeline writing into the output's temporary file (closed with the run)."""
    from .gpu.pipeline import GpuPipeline

    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    stack.callback(os.close, fd)
    gpu = GpuPipeline(fd)

    def close(exc_type: type[BaseException] | None, *_: object) -> bool:
        try:
            gpu.close()
        except Exception:
            if exc_type is None:
                raise
            # unwinding from an error already (a chunk's write failed: the other slots' chunks fail
            # too): that error is reported, not the other slots' raw OSError
        return False

    stack.push(close)
    return gpu


def _run_gpu(model: GGUFModel, w: GGUFStreamWriter, gpu: GpuPipeline, job: TensorJob, flavour: str,
             on_progress: Callable[[str, int], None] | None) -> None:
    """One tensor through the GPU pipeline: chunks of rows as stored (F16/BF16/F32, or the blocks of
    a type the GPU dequantizes; other input types dequantized here first), written at their
    offsets; the writer moves past the tensor."""
    from .gpu.kernels import gpu_kernel
    from .gpu.pipeline import FileSpan, raw_input

    t = job.info
    base = w.tensor_offset()
    row_bytes = job.out_type.row_bytes(t.n_per_row)
    in_row_bytes = t.qtype.row_bytes(t.n_per_row)
    k = gpu_kernel(job.out_type, job.imatrix is not None, flavour)  # one variant for all slabs
    assert k is not None  # gpu_job chose this tensor
    # kernels whose C carries state from row to row within a call get the CPU engine's calls
    elements = SLAB_ELEMENTS if k.carries_rows else gpu.chunk_elements
    for start, stop, imx in _slabs(job, elements):
        src: FileSpan | np.ndarray
        if raw_input(t.qtype):  # read straight from the file (pread into pinned memory)
            src = FileSpan(model.parts[t.part].path, t.offset + start * in_row_bytes, (stop - start) * in_row_bytes)
        else:
            src = rows_to_float(model, t, start, stop)
            model.release(t, start, stop)
        n = (stop - start) * t.n_per_row
        done = (lambda name=job.out_name, n=n: on_progress(name, n)) if on_progress else None
        gpu.submit(src, t.qtype, t.n_per_row, k, imx, base + start * row_bytes, done)
    w.skip_tensor()


# --- worker side -------------------------------------------------------------------------------
_W_MODEL: GGUFModel | None = None


def _worker_init(path: str, flavour: str, model: GGUFModel | None = None) -> None:
    """Open the input in a worker (the pool has set up signals and parent-death handling). model:
    the parent's, inherited through fork (its maps stay valid): not parsed again (~0.3 s for a
    262 k-token vocabulary, while no slab runs)."""
    global _W_MODEL
    _W_MODEL = model if model is not None else GGUFModel(path, flavour=flavour)


def _convert(tensor_index: int, start: int, stop: int, out_type: QType, imatrix: np.ndarray | None,
             flavour: str, recover: bool = False) -> np.ndarray:
    assert _W_MODEL is not None
    t = _W_MODEL.tensors[tensor_index]
    out = convert_slab(_W_MODEL, t, start, stop, out_type, imatrix, flavour, _recover_for(t, recover))
    _W_MODEL.release(t, start, stop)
    return out


def _work(tensor_index: int, start: int, stop: int, out_type: QType, imatrix: np.ndarray | None,
          flavour: str, recover: bool = False) -> bytes:
    """Convert rows and send the bytes back (where os.pwrite is missing)."""
    return _convert(tensor_index, start, stop, out_type, imatrix, flavour, recover).tobytes()


_W_FD: dict[str, int] = {}


def _work_at(tensor_index: int, start: int, stop: int, out_type: QType, imatrix: np.ndarray | None,
             flavour: str, path: str, offset: int, recover: bool = False) -> int:
    """Convert rows and write them straight into the output's temporary file at offset: no copy
    through the parent (pickling the results cost more than the two cores gained)."""
    out = memoryview(_convert(tensor_index, start, stop, out_type, imatrix, flavour, recover).data).cast("B")
    fd = _W_FD.get(path)
    if fd is None:
        fd = _W_FD[path] = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    done = 0
    while done < len(out):
        done += os.pwrite(fd, out[done:], offset + done)
    start_writeback(fd, offset, done)
    return done


def _slabs(job: TensorJob, elements: int = SLAB_ELEMENTS) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Row ranges of one tensor; a range never crosses an expert boundary (one imatrix row each)."""
    t = job.info
    rows_per_expert = t.shape[1] if len(t.shape) > 1 else 1
    n = max(1, elements // t.n_per_row)
    r = job.out_type.rows_interleaved  # ik's interleaved types quantize r rows at a time: whole groups
    n = max(r, n - n % r)
    for start in range(0, t.n_rows, n):
        stop = min(t.n_rows, start + n)
        while start < stop:
            e_stop = min(stop, (start // rows_per_expert + 1) * rows_per_expert)
            w = None
            if job.imatrix is not None:
                e = start // rows_per_expert
                w = job.imatrix[e] if job.imatrix.shape[0] > 1 else job.imatrix[0]
            yield start, e_stop, w
            start = e_stop


def work_items(jobs: list[TensorJob]) -> int:
    """How many slabs the converted tensors make (more workers than this would idle)."""
    return sum(sum(1 for _ in _slabs(j)) for j in jobs if j.converts)


_PWRITE = hasattr(os, "pwrite")


def gpu_job(job: TensorJob, flavour: str, recover_grid: bool = False) -> bool:
    """Whether `--device cuda` converts this tensor on the GPU (its type and imatrix variant have a
    kernel there, qtool.gpu.kernels); the others run on the CPU engine as without a GPU."""
    if not job.converts or _recover_for(job.info, recover_grid) is not None:
        return False
    from .gpu.kernels import gpu_kernel

    return gpu_kernel(job.out_type, job.imatrix is not None, flavour) is not None


def run_jobs(model: GGUFModel, output: str, jobs: list[TensorJob], kvs: list[KV], nthreads: int = 1,
             flavour: str = MAINLINE, on_progress: Callable[[str, int], None] | None = None,
             inputs: Sequence[str] = (), recover_grid: bool = False, device: str = "cpu") -> RunResult:
    """Write the output file for the given jobs (already in output order). `inputs`: files the
    output must never be (checked again by the writer). recover_grid: recover the exact blocks of
    float tensors that lie on their output type's grid (`quantize --recover-grid`). device "cuda":
    tensors with a GPU kernel go through qtool.gpu.pipeline (same bytes), the rest as on the CPU."""
    recover = recover_grid
    t0 = time.perf_counter()
    outs = [OutTensor(j.out_name, j.info.shape, j.out_type) for j in jobs]
    index = {id(t): i for i, t in enumerate(model.tensors)}

    def report(done: Iterable[tuple[tuple[str, int], object]]) -> None:
        for (name, n), _ in done:
            if on_progress:
                on_progress(name, n)

    tensors_report: list[dict] = []
    with contextlib.ExitStack() as stack:
        w = stack.enter_context(GGUFStreamWriter(output, kvs, outs, model.alignment, inputs=inputs))
        pool: WorkerPool | None = None
        model.check_files()  # workers read the input too (mapped again, or inherited): still as planned
        on_gpu = {id(j) for j in jobs if device == "cuda" and gpu_job(j, flavour, recover)}
        if nthreads > 1 and any(j.converts and id(j) not in on_gpu for j in jobs):  # fork before CUDA starts
            inherit = model if os.name == "posix" else None  # forked workers; spawned ones would pickle it
            pool = stack.enter_context(WorkerPool(nthreads, _worker_init, (model.path, flavour, inherit)))
        gpu = _open_gpu(stack, w.temp_path) if on_gpu else None
        inflight: InFlight[tuple[str, int]] = InFlight(2 * nthreads)
        try:
            _run(model, w, pool, inflight, jobs, index, flavour, tensors_report, on_progress, report, recover,
                 gpu, on_gpu)
            report(inflight.drain())  # every worker write lands before the file is committed
            if gpu is not None:
                gpu.drain()
        except WorkerError:
            model.check_files()  # a truncated input explains a dead worker better
            raise
        except OSError as e:  # a worker's pwrite into the temporary file failed (disk full, I/O error)
            raise OutputError(f"{output}: cannot write the output: {e.strerror or e}", path=output) from None
    size_in = sum(j.info.n_bytes for j in jobs)
    size_out = sum(j.out_bytes for j in jobs)
    n_el = sum(j.info.n_elements for j in jobs)
    return RunResult(output, len(jobs), size_in, size_out, n_el, time.perf_counter() - t0, tensors_report)


def _run(model: GGUFModel, w: GGUFStreamWriter, pool: WorkerPool | None, inflight: InFlight[tuple[str, int]],
         jobs: list[TensorJob], index: dict[int, int], flavour: str, tensors_report: list[dict],
         on_progress: Callable[[str, int], None] | None,
         report: Callable[[Iterable[tuple[tuple[str, int], object]]], None], recover: bool = False,
         gpu: GpuPipeline | None = None, on_gpu: set[int] | frozenset[int] = frozenset()) -> None:
    """Every tensor in order: copied, converted here, handed to the pool's workers or to the GPUs."""
    nthreads = pool.workers if pool is not None else 1
    for job in jobs:
        t = job.info
        model.check_size(t)
        if gpu is not None and id(job) in on_gpu:
            _run_gpu(model, w, gpu, job, flavour, on_progress)
        elif not job.converts:
            w.write_tensor_chunk(model.tensor_data(t))
            model.release(t)
            report(inflight.add(None, (job.out_name, t.n_elements)))  # in plan order, after earlier slabs
        elif pool is None:
            for start, stop, imx in _slabs(job):
                w.write_tensor_chunk(convert_slab(model, t, start, stop, job.out_type, imx, flavour,
                                                  _recover_for(t, recover)))
                model.release(t, start, stop)
                if on_progress:
                    on_progress(job.out_name, (stop - start) * t.n_per_row)
        elif _PWRITE:  # workers write their rows into the temporary file themselves
            base = w.tensor_offset()
            row_bytes = job.out_type.row_bytes(t.n_per_row)
            for start, stop, imx in _slabs(job):
                f = pool.submit(_work_at, index[id(t)], start, stop, job.out_type, imx, flavour,
                                w.temp_path, base + start * row_bytes, recover)
                report(inflight.add(f, (job.out_name, (stop - start) * t.n_per_row)))
            w.skip_tensor()  # no wait: the next tensor's slabs keep every worker busy
        else:  # the parent writes each slab's bytes, in order
            report(inflight.drain())
            pending: InFlight[tuple[str, int]] = InFlight(2 * nthreads)
            for start, stop, imx in _slabs(job):
                fb = pool.submit(_work, index[id(t)], start, stop, job.out_type, imx, flavour, recover)
                for tag, data in pending.add(fb, (job.out_name, (stop - start) * t.n_per_row)):
                    w.write_tensor_chunk(data)
                    report([(tag, None)])
            for tag, data in pending.drain():
                w.write_tensor_chunk(data)
                report([(tag, None)])
        tensors_report.append({"name": job.out_name, "shape": list(t.shape), "type_in": t.qtype.name,
                               "type": job.out_type.name, "bytes_in": t.n_bytes, "bytes": job.out_bytes,
                               "reason": job.reason})
