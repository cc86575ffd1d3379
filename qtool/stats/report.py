"""`qtool stats`: round-trip every selected tensor through every selected type and report the error.

Mirrors ik_llama.cpp's examples/quantize-stats: the same tensor selection (1-D tensors and
norms, ne[0] == 1 or ne[1] == 1, are skipped), the same figures (see metrics.py), the same
include/exclude regex semantics (an exclude match wins; with includes, a tensor must match one).

How a tensor is cut into rows for the engine (`layout`):
- "rows": its real rows, as llama-quantize quantizes it (the default whenever the row length is
  a multiple of the type's block size);
- "flat": the tensor as one flat array in pieces of one block, used when the row length is not
  a multiple of the block size. quantize-stats treats every tensor as a flat array, so this is
  what it measures; for types without per-row data and without an imatrix the blocks are
  quantized independently, so the bytes are the same as any other cut of the flat array;
- "chunks" (`ik_chunks=True`): exactly quantize-stats' cut, 16384-value pieces each quantized
  as one row. It differs from "rows" only for types with per-row scales (IQ4_KS, *_KT, ...).
Tensors that fit none of these for a type are listed under `skipped` with the reason.

Work is streamed: a tensor is read in slabs of about a million values, each slab is converted
to float32 once and round-tripped through all selected types, and only the running statistics
(and, for the low-rank study, one n x n Gram matrix per matrix and type) are kept. Slabs can
run in a process pool; results are merged in slab order, so the figures do not depend on the
thread count.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import QtoolError
from ..gguf_io import GGUFModel, TensorInfo
from ..pool import InFlight, WorkerPool, resolve_workers
from ..quants import can_dequantize, dequantize, quantize
from ..quants.rowref import quantize_row_ref
from ..quants.types import MAINLINE, QType
from .metrics import ErrorStats, normalized_weights
from .svd import GramAccumulator, LowRankResidual, lowrank_residuals

SLAB_ELEMENTS = 1 << 20
IK_CHUNK = 32 * 512  # quantize-stats' chunk_size (values)
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


class StatsError(QtoolError):
    """A user-facing error (bad regex, no tensor selected, ...)."""


# --- planning --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How one tensor is cut into rows for one type."""

    kind: str  # "rows" | "flat" | "chunks"
    row_len: int  # values per engine row (the last row of "chunks" may be shorter)
    align: int  # slab row counts must be multiples of this (so slabs cut whole engine rows)


def tensor_selected(name: str, include: list[re.Pattern[str]], exclude: list[re.Pattern[str]]) -> bool:
    """quantize-stats' layer_included: exclusions first, then any inclusion, default all."""
    if any(p.search(name) for p in exclude):
        return False
    if include:
        return any(p.search(name) for p in include)
    return True


def tensor_shape_ok(t: TensorInfo) -> bool:
    """quantize-stats skips tensors with ne[0] == 1 or ne[1] == 1 ("we never quantize those")."""
    ne1 = t.shape[1] if len(t.shape) > 1 else 1
    return t.shape[0] != 1 and ne1 != 1


def choose_layout(t: TensorInfo, qt: QType, weighted: bool, ik_chunks: bool) -> Layout | str:
    """The layout for tensor t and type qt, or the reason it cannot be round-tripped."""
    n = t.n_per_row
    bs = qt.block_size
    if ik_chunks and not weighted:
        if t.n_elements % bs:
            return f"{t.n_elements} values are not a multiple of the block size {bs}"
        return Layout("chunks", IK_CHUNK, IK_CHUNK // math.gcd(n, IK_CHUNK))
    if n % bs == 0:
        return Layout("rows", n, 1)
    if weighted:
        return f"row length {n} is not a multiple of the block size {bs} (an imatrix needs whole rows)"
    if qt.row_meta:
        return f"row length {n} is not a multiple of the block size {bs} ({qt.name} has per-row scales)"
    if t.n_elements % bs:
        return f"{t.n_elements} values are not a multiple of the block size {bs}"
    return Layout("flat", bs, bs // math.gcd(n, bs))


def layout_bits(t: TensorInfo, qt: QType, lay: Layout) -> int:
    """Bits the tensor takes in this type with this layout."""
    if lay.kind == "rows":
        return 8 * t.n_rows * qt.row_bytes(t.n_per_row)
    if lay.kind == "flat":
        return 8 * (t.n_elements // qt.block_size) * qt.type_size
    full, rest = divmod(t.n_elements, lay.row_len)
    bits = 8 * full * qt.row_bytes(lay.row_len)
    return bits + (8 * qt.row_bytes(rest) if rest else 0)


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def rows_per_matrix(t: TensorInfo) -> int:
    """Rows of one 2-D matrix (ne[1]); 3-D expert tensors hold ne[2] of them."""
    return t.shape[1] if len(t.shape) > 1 else 1


@dataclass
class TensorPlan:
    index: int
    info: TensorInfo
    layouts: dict[str, Layout]  # type name -> layout, for the types it is round-tripped to
    weights: np.ndarray | None  # float32[n_mats, n_per_row] raw imatrix values, or None
    slab_rows: int

    def slabs(self) -> Iterator[tuple[int, int]]:
        t = self.info
        for start in range(0, t.n_rows, self.slab_rows):
            yield start, min(t.n_rows, start + self.slab_rows)


def plan_slab_rows(t: TensorInfo, layouts: dict[str, Layout], target: int = SLAB_ELEMENTS) -> int:
    align = 1
    for lay in layouts.values():
        align = _lcm(align, lay.align)
    rows = max(1, target // max(1, t.n_per_row))
    return max(align, rows // align * align)


# --- per-slab work (in-process or in a worker) -------------------------------------------------

@dataclass
class SlabResult:
    """Statistics of one slab for each type (same order as the plan's layouts)."""

    stats: dict[str, ErrorStats]
    grams: dict[str, dict[int, GramAccumulator]]  # type -> matrix index -> partial Gram
    n: int


def slab_to_float(model: GGUFModel, t: TensorInfo, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as float32[rows, n_per_row] (dequantized when quantized)."""
    raw = model.tensor_rows(t, start, stop)
    if t.qtype.name == "F32":
        return np.asarray(raw).view("<f4").reshape(stop - start, t.n_per_row).astype(np.float32)
    return dequantize(raw, t.qtype, t.n_per_row)


def _segments(start: int, stop: int, per_matrix: int) -> Iterator[tuple[int, int, int]]:
    """(matrix index, row start, row stop) pieces of [start, stop) that stay inside one matrix."""
    s = start
    while s < stop:
        e = min(stop, (s // per_matrix + 1) * per_matrix)
        yield s // per_matrix, s, e
        s = e


def round_trip(x: np.ndarray, qt: QType, lay: Layout, imatrix: np.ndarray | None, flavour: str,
               quantizer: Callable[..., np.ndarray] = quantize) -> np.ndarray:
    """quantize + dequantize rows x (float32[rows, n]) cut as the layout says; same shape back.
    quantizer: the engine's quantize or a GPU one with its contract (qtool.gpu.rows; the
    llama-quantize row layout only: quantize-stats' own cuts stay on the CPU)."""
    rows, n = x.shape
    if lay.kind == "rows":
        return dequantize(quantizer(x, qt, imatrix, flavour=flavour), qt, n)
    flat = x.reshape(-1)
    full = flat.size // lay.row_len * lay.row_len

    def q(y: np.ndarray) -> np.ndarray:  # quantize-stats' own row quantizer in its cut ("chunks")
        ref = quantize_row_ref(y, qt.name, flavour) if lay.kind == "chunks" else None
        return quantize(y, qt, None, flavour=flavour) if ref is None else ref

    parts = []
    if full:
        y = flat[:full].reshape(-1, lay.row_len)
        parts.append(dequantize(q(y), qt, lay.row_len).reshape(-1))
    if full < flat.size:  # the tensor's last, shorter quantize-stats chunk
        y = flat[full:].reshape(1, -1)
        parts.append(dequantize(q(y), qt, y.shape[1]).reshape(-1))
    return np.concatenate(parts).reshape(rows, n) if len(parts) > 1 else parts[0].reshape(rows, n)


def process_slab(model: GGUFModel, plan: TensorPlan, start: int, stop: int, types: dict[str, QType],
                 flavour: str, svd: bool, quantizer: Callable[..., np.ndarray] = quantize) -> SlabResult:
    t = plan.info
    x = slab_to_float(model, t, start, stop)
    per_matrix = rows_per_matrix(t)
    nw = normalized_weights(plan.weights) if plan.weights is not None else None
    out_stats: dict[str, ErrorStats] = {}
    out_grams: dict[str, dict[int, GramAccumulator]] = {}
    for name, lay in plan.layouts.items():
        qt = types[name]
        st = ErrorStats()
        grams: dict[int, GramAccumulator] = {}
        if plan.weights is not None:
            q = np.empty_like(x)
            for mi, s, e in _segments(start, stop, per_matrix):
                imx = plan.weights[mi if plan.weights.shape[0] > 1 else 0]
                q[s - start:e - start] = round_trip(x[s - start:e - start], qt, lay, imx, flavour, quantizer)
        else:
            q = round_trip(x, qt, lay, None, flavour, quantizer)
        for mi, s, e in _segments(start, stop, per_matrix):
            xs, qs = x[s - start:e - start], q[s - start:e - start]
            w = None
            if nw is not None:
                w = nw[mi if nw.shape[0] > 1 else 0]
            st.update(xs, qs, w)
            if svd:
                g = GramAccumulator(t.n_per_row)
                g.add(xs.astype(np.float64) - qs.astype(np.float64))
                grams[mi] = g
        out_stats[name] = st
        out_grams[name] = grams
    return SlabResult(out_stats, out_grams, x.size)


_W: dict[str, object] = {}


def _worker_init(path: str, flavour: str) -> None:
    _W["model"] = GGUFModel(path, flavour=flavour)


def _worker(plan: TensorPlan, start: int, stop: int, types: dict[str, QType], flavour: str,
            svd: bool) -> SlabResult:
    model = _W["model"]
    assert isinstance(model, GGUFModel)
    return process_slab(model, plan, start, stop, types, flavour, svd)


# --- results ----------------------------------------------------------------------------------

@dataclass
class TensorResult:
    name: str
    shape: tuple[int, ...]
    source_type: str
    layout: str
    bits: int
    stats: ErrorStats
    weighted: bool
    svd: list[LowRankResidual] | None = None

    @property
    def bpw(self) -> float:
        return self.bits / self.stats.n if self.stats.n else 0.0


@dataclass
class TypeResult:
    qtype: QType
    tensors: list[TensorResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: ErrorStats = field(default_factory=ErrorStats)
    bits: int = 0
    svd: list[LowRankResidual] | None = None

    @property
    def name(self) -> str:
        return self.qtype.lname

    @property
    def bpw(self) -> float:
        return self.bits / self.total.n if self.total.n else 0.0

    def layers(self) -> list[tuple[str, ErrorStats, int]]:
        """(layer key, merged stats, bits) per block index, in order of first appearance;
        tensors outside the repeating blocks are grouped under 'other'."""
        acc: dict[str, tuple[ErrorStats, list[int]]] = {}
        for tr in self.tensors:
            m = _LAYER_RE.match(tr.name)
            key = f"blk.{m.group(1)}" if m else "other"
            if key not in acc:
                acc[key] = (ErrorStats(), [0])
            acc[key][0].merge(tr.stats)
            acc[key][1][0] += tr.bits
        return [(k, s, b[0]) for k, (s, b) in acc.items()]


@dataclass
class StatsReport:
    model: str
    reference: str  # "original" | "dequantized"
    flavour: str
    imatrix: str | None
    source_types: dict[str, int]
    types: list[TypeResult]
    svd_ranks: list[int]
    ik_chunks: bool
    tied_embeddings: bool = False  # no output.weight: llama.cpp uses token_embd.weight twice

    def to_json(self, per_layer: bool = False, histogram: bool = False) -> dict:
        """The documented JSON document (docs/stats.md)."""
        types = []
        for tr in self.types:
            d: dict = {"type": tr.name, "bpw": tr.bpw}
            d.update(_figs(tr.total))
            d["tensors"] = [_tensor_json(x) for x in tr.tensors]
            d["skipped"] = [{"name": n, "reason": r} for n, r in tr.skipped]
            if tr.svd is not None:
                d["svd"] = [_svd_json(r, tr.bpw) for r in tr.svd]
            if per_layer:
                d["layers"] = [{"layer": k, "n": s.n, "bpw": b / s.n if s.n else 0.0, **_figs(s)}
                               for k, s, b in tr.layers()]
            if histogram:
                d["histogram"] = {"bucket_width": tr.total.histogram_rows()[0][1],
                                  "counts": [int(c) for c in tr.total.hist]}
            types.append(d)
        return {"model": self.model, "reference": self.reference, "flavour": self.flavour,
                "imatrix": self.imatrix, "layout": "chunks" if self.ik_chunks else "rows",
                "source_types": self.source_types, "svd_ranks": self.svd_ranks, "types": types}


def _num(v: float | None) -> float | None:
    if v is None:
        return None
    return v if math.isfinite(v) else None


def _figs(s: ErrorStats) -> dict:
    return {k: (_num(v) if isinstance(v, float) else v) for k, v in s.figures().items()}


def _svd_json(r: LowRankResidual, base_bpw: float) -> dict:
    f = r.figures()
    f["total_bpw"] = base_bpw + float(f["extra_bpw"] or 0.0)
    return f


def _tensor_json(t: TensorResult) -> dict:
    d = {"name": t.name, "shape": list(t.shape), "source_type": t.source_type.lower(), "layout": t.layout,
         "bpw": t.bpw, **_figs(t.stats), "imatrix": t.weighted}
    if t.svd is not None:
        d["svd"] = [_svd_json(r, t.bpw) for r in t.svd]
    return d


# --- the run ----------------------------------------------------------------------------------

WeightsFn = Callable[[TensorInfo], "np.ndarray | None"]


def compile_patterns(patterns: list[str], what: str) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise StatsError(f"invalid {what} regex {p!r}: {e}") from None
    return out


def run_stats(model_path: str, types: list[QType], *, weights_fn: WeightsFn | None = None,
              imatrix_path: str | None = None, include: Sequence[str] = (), exclude: Sequence[str] = (),
              threads: int | None = None, svd_ranks: Sequence[int] = (), flavour: str = MAINLINE,
              ik_chunks: bool = False, device: str = "cpu",
              on_start: Callable[[int], None] | None = None,
              on_progress: Callable[[str, int], None] | None = None,
              on_note: Callable[[str], None] | None = None) -> StatsReport:
    """Compute the report. `weights_fn(tensor)` gives the raw imatrix rows of a tensor
    (float32[n_mats, n_per_row]) or None; threads: worker processes (None or <= 0: all cores, as
    everywhere; the figures do not depend on it); `on_progress(name, values)` is called per slab.
    device "cuda": the rows are quantized on the first CUDA device where their type has a kernel
    (qtool.gpu.rows; the same bytes, so the same figures), in this process (no workers)."""
    if device not in ("cpu", "cuda"):
        raise StatsError(f"unknown device {device!r} (cpu, cuda)", option="--device")
    quantizer: Callable[..., np.ndarray] = quantize
    if device == "cuda":  # before any work: CuPy and a GPU must be there
        from ..gpu.rows import gpu_quantizer

        quantizer = gpu_quantizer()
    inc = compile_patterns(list(include), "include")
    exc = compile_patterns(list(exclude), "exclude")
    model = GGUFModel(model_path, flavour=flavour)
    try:
        return _run(model, types, weights_fn, imatrix_path, inc, exc, threads, list(svd_ranks), flavour,
                    ik_chunks, on_start, on_progress, on_note, quantizer)
    finally:
        model.close()


def _run(model: GGUFModel, types: list[QType], weights_fn: WeightsFn | None, imatrix_path: str | None,
         inc: list[re.Pattern[str]], exc: list[re.Pattern[str]], threads: int | None, svd_ranks: list[int],
         flavour: str, ik_chunks: bool, on_start: Callable[[int], None] | None,
         on_progress: Callable[[str, int], None] | None, on_note: Callable[[str], None] | None,
         quantizer: Callable[..., np.ndarray] = quantize) -> StatsReport:
    type_map = {qt.name: qt for qt in types}
    results = {qt.name: TypeResult(qt) for qt in types}
    plans: list[TensorPlan] = []
    source_types: dict[str, int] = {}
    n_selected = 0
    for i, t in enumerate(model.tensors):
        if not tensor_selected(t.name, inc, exc) or not tensor_shape_ok(t):
            continue
        st = t.qtype
        if st.name not in FLOAT_TYPES and not st.quantized:
            continue  # integer tensors
        n_selected += 1
        if not can_dequantize(st):
            for r in results.values():
                r.skipped.append((t.name, f"qtool cannot dequantize its type {st.name}"))
            continue
        source_types[st.lname] = source_types.get(st.lname, 0) + 1
        w = weights_fn(t) if weights_fn is not None else None
        if w is not None:
            w = np.asarray(w, dtype=np.float32).reshape(-1, t.n_per_row)
        layouts: dict[str, Layout] = {}
        for qt in types:
            if qt.needs_imatrix and w is None:
                results[qt.name].skipped.append((t.name, f"{qt.name} needs an importance matrix entry"))
                continue
            lay = choose_layout(t, qt, w is not None, ik_chunks)
            if isinstance(lay, str):
                results[qt.name].skipped.append((t.name, lay))
                continue
            layouts[qt.name] = lay
        if layouts:
            plans.append(TensorPlan(i, t, layouts, w, plan_slab_rows(t, layouts)))
    if not n_selected:
        raise StatsError("no tensor selected (check --include/--exclude)")
    reference = "original" if all(p.info.qtype.name in FLOAT_TYPES for p in plans) else "dequantized"
    if on_start:
        on_start(sum(p.info.n_elements for p in plans))
    svd = bool(svd_ranks)
    total_values = sum(p.info.n_elements * len(p.layouts) for p in plans)
    n_slabs = sum(sum(1 for _ in p.slabs()) for p in plans)
    n_workers = resolve_workers(threads, n_slabs, on_note)  # more than the cores: capped, with a note
    with contextlib.ExitStack() as stack:
        pool = None
        if n_workers > 1 and total_values > 4 * SLAB_ELEMENTS and quantizer is quantize:
            pool = stack.enter_context(WorkerPool(n_workers, _worker_init, (model.path, flavour)))
        _run_all(model, plans, type_map, results, flavour, svd_ranks, pool, n_workers, on_progress, quantizer)
    ordered = [results[qt.name] for qt in types]
    if svd:
        for r in ordered:
            tot = [LowRankResidual(R) for R in svd_ranks]
            for tr in r.tensors:
                for a, b in zip(tot, tr.svd or [], strict=False):
                    a.merge(b)
            r.svd = tot
    tied = not any(t.name == "output.weight" for t in model.tensors)
    return StatsReport(model.path, reference, flavour, imatrix_path, source_types, ordered, svd_ranks, ik_chunks,
                       tied)


class _TensorAcc:
    """Running results of one tensor while its slabs come back (in slab order)."""

    def __init__(self, plan: TensorPlan, type_map: dict[str, QType], svd_ranks: list[int]) -> None:
        self.plan = plan
        self.types = {n: type_map[n] for n in plan.layouts}
        self.acc = {n: ErrorStats() for n in plan.layouts}
        self.per_matrix = rows_per_matrix(plan.info)
        self.svd_ranks = svd_ranks
        self.grams: dict[str, dict[int, GramAccumulator]] = {n: {} for n in plan.layouts}
        self.svd_acc = {n: [LowRankResidual(R) for R in svd_ranks] for n in plan.layouts}
        self.nw = normalized_weights(plan.weights) if plan.weights is not None else None
        self.pending = sum(1 for _ in plan.slabs())

    def absorb(self, res: SlabResult) -> None:
        for name, st in res.stats.items():
            self.acc[name].merge(st)
            if not self.svd_ranks:
                continue
            grams = self.grams[name]
            for mi, g in res.grams[name].items():
                if mi in grams:
                    grams[mi].merge(g)
                else:
                    grams[mi] = g
                if grams[mi].m == self.per_matrix:  # matrix complete: study it, drop the Gram
                    full = grams.pop(mi)
                    w = None if self.nw is None else self.nw[mi if self.nw.shape[0] > 1 else 0]
                    for a, b in zip(self.svd_acc[name],
                                    lowrank_residuals(full.gram, self.per_matrix, self.svd_ranks, w), strict=True):
                        a.merge(b)
        self.pending -= 1

    def finish(self, results: dict[str, TypeResult]) -> None:
        assert not any(self.grams.values()), "a matrix of the low-rank study was left incomplete"
        t = self.plan.info
        for name, lay in self.plan.layouts.items():
            qt = self.types[name]
            bits = layout_bits(t, qt, lay)
            tr = TensorResult(t.name, t.shape, t.qtype.name, lay.kind, bits, self.acc[name],
                              self.plan.weights is not None, self.svd_acc[name] if self.svd_ranks else None)
            r = results[name]
            r.tensors.append(tr)
            r.total.merge(self.acc[name])
            r.bits += bits


def _run_all(model: GGUFModel, plans: list[TensorPlan], type_map: dict[str, QType], results: dict[str, TypeResult],
             flavour: str, svd_ranks: list[int], pool: WorkerPool | None, threads: int,
             on_progress: Callable[[str, int], None] | None,
             quantizer: Callable[..., np.ndarray] = quantize) -> None:
    """Every slab of every tensor, in order; with a pool, up to 2 x threads slabs in flight across
    tensor boundaries (small tensors are one slab each). Tensors are finished in file order."""
    svd = bool(svd_ranks)
    accs: deque[_TensorAcc] = deque()

    def absorb(acc: _TensorAcc, res: SlabResult) -> None:
        acc.absorb(res)
        if on_progress:
            on_progress(acc.plan.info.name, res.n)
        while accs and accs[0].pending == 0:
            accs.popleft().finish(results)

    if pool is None:
        for plan in plans:
            acc = _TensorAcc(plan, type_map, svd_ranks)
            accs.append(acc)
            types = acc.types
            for start, stop in plan.slabs():
                model.check_size(plan.info)
                absorb(acc, process_slab(model, plan, start, stop, types, flavour, svd, quantizer))
        return
    inflight: InFlight[_TensorAcc] = InFlight(2 * threads)
    for plan in plans:
        acc = _TensorAcc(plan, type_map, svd_ranks)
        accs.append(acc)
        for start, stop in plan.slabs():
            model.check_size(plan.info)
            for a, res in inflight.add(pool.submit(_worker, plan, start, stop, acc.types, flavour, svd), acc):
                absorb(a, res)
    for a, res in inflight.drain():
        absorb(a, res)
