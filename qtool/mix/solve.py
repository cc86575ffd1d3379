"""Budgeted mixes: the type of every tensor that minimizes the predicted loss under a size budget.

`qtool mix solve MODEL --target-bpw 4.0 -o recipe.toml` and `qtool quantize INPUT OUTPUT
--target-bpw 4.0` (docs/target-bpw.md). Three steps:

1. Which tensors are free (`free_tensors`): the planner is run twice with --pure, once with Q8_0
   and once with Q4_0 as the default type. A tensor whose type is the same in both was decided by
   something else: never quantized (1-D, norms, routers, ...), --tensor-type / --custom-q /
   recipe rules, --output-tensor-type, --token-embedding-type, or a row length no block of 32
   divides (F16). Those keep that type; every other tensor is free.
2. The predictor (`measure`): each free tensor's imatrix-weighted squared error
   sum_ij w_j (x_ij - q_ij)^2 (w: the tensor's imatrix column weights scaled to mean 1, the
   sum `qtool stats` adds up (ErrorStats.w_err2); 1 without an imatrix entry) for every candidate
   type, measured with the engine (quantize + dequantize, with the imatrix the quantizer gets) on
   a stratified sample of rows (`sample_rows_of`: the rows with the largest |x|, whose outliers
   coarse types get worst, count once; evenly spaced runs of the other rows count for all of
   them), on a worker pool (qtool/pool.py) over tensors. A candidate whose block does not divide
   the row length is replaced by the fallback llama-quantize would use (tensor_type_fallback:
   Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, i-quants -> IQ4_NL; with
   --no-fallback it is no candidate); candidates the engine cannot make for the tensor, or that
   llama-quantize refuses without imatrix data for it, are left out.
3. The solver (`solve_budget`): loss = sensitivity x error (qtool/mix/sensitivity.py). On the
   lower convex hull of each tensor's (bytes, loss) points, upgrades are taken in order of loss
   saved per byte while they fit (the Lagrangian path); the hull points of the few tensors that
   are a large share of the budget (token_embd) are enumerated around it; then local moves fill
   the leftover (the change that saves the most and fits, else one tensor up and another down).
   Never over budget; what is left is smaller than any single improving step.

Size and bpw are what llama-quantize's summary counts: the data bytes of all tensors (the
unquantized ones included) over all their weights. The result is a recipe (qtool/mix/recipe.py)
with the fixed rules first and one rule per type for the free tensors; it is checked with the
planner before it is returned, so `qtool quantize --recipe` reproduces it exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tomllib

from ..gguf_io import GGUFModel, TensorInfo
from ..imatrix import QuantizeImatrix, prepare_imatrix, read_imatrix
from ..pool import InFlight, WorkerPool, resolve_workers
from ..quants import can_quantize, dequantize, get_type, quantize
from ..quants.types import MAINLINE
from ..stats.metrics import normalized_weights
from ..stats.report import slab_to_float
from .decision import Plan
from .extract import Rule, fold_names, recipe_toml
from .ftypes import FType, ftype_table
from .mainline import OUTPUT, tensor_get_category, tensor_requires_imatrix, tensor_type_fallback
from .model import ModelInfo, TensorSpec, specs_from_gguf
from .options import MixError, MixOptions, parse_ggml_type
from .plan import effective_options, plan, rule_list
from .recipe import Recipe, parse_recipe
from .sensitivity import SENSITIVITY_MODES, sensitivity

K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
I_QUANTS = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS")
DEFAULT_TYPES = K_QUANTS + I_QUANTS + ("Q8_0",)
DEFAULT_SAMPLE_ROWS = 64
SAMPLE_RUNS = 8
_IMATRIX_REQUIRED = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS")  # tensor_requires_imatrix

# --- budgets -------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """'2.5GiB' -> bytes. KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB (or K/M/G/T) powers of
    1000, B or no unit bytes; any case. The result is rounded down to whole bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise MixError(f"--target-size: cannot read {text!r} as a size (e.g. 2.5GiB, 800MB, 123456789)",
                       option="--target-size")
    n = int(math.floor(float(m.group(1)) * _UNITS[unit]))
    if n <= 0:
        raise MixError(f"--target-size: {text!r} is not a positive size", option="--target-size")
    return n


def budget_bytes(n_weights: int, target_bpw: float | None = None, target_size: int | str | None = None) -> int:
    """The byte budget of all tensors' data: floor(bpw * weights / 8), or the size itself."""
    if (target_bpw is None) == (target_size is None):
        raise MixError("give one of --target-bpw and --target-size", option="--target-bpw")
    if target_bpw is not None:
        if not (target_bpw > 0 and math.isfinite(target_bpw)):
            raise MixError(f"--target-bpw must be a positive number, not {target_bpw}", option="--target-bpw")
        return int(math.floor(float(target_bpw) * n_weights / 8))
    assert target_size is not None
    return parse_size(target_size) if isinstance(target_size, str) else int(target_size)


# --- candidates ----------------------------------------------------------------------------------

def parse_types(value: str | Sequence[str] | None, flavour: str = MAINLINE) -> list[str] | None:
    """--types q4_k,q5_k,... (repeatable or comma-separated) -> upper-case names, or None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    names = [w.strip() for it in items for w in it.split(",") if w.strip()]
    if not names:
        return None
    out: list[str] = []
    for n in names:
        try:
            t = parse_ggml_type(n, flavour)
        except MixError as e:
            raise MixError(f"--types: {e.message}", option="--types") from None
        qt = get_type(t)
        if not qt.quantized or not (can_quantize(t, flavour, False) or can_quantize(t, flavour, True)):
            raise MixError(f"--types: qtool's engine cannot make {t.lower()} (`qtool types` lists what it makes)",
                           option="--types")
        if t not in out:
            out.append(t)
    return out


def candidate_types(flavour: str = MAINLINE, with_imatrix: bool = False,
                    types: Sequence[str] | None = None) -> list[str]:
    """The candidate set: `types`, or the k-quants and i-quants the engine quantizes plus Q8_0;
    without an imatrix, only those llama-quantize makes without one."""
    base = list(types) if types is not None else list(DEFAULT_TYPES)
    out = []
    for t in base:
        if not with_imatrix and (get_type(t).needs_imatrix or t in _IMATRIX_REQUIRED):
            continue
        if can_quantize(t, flavour, with_imatrix) or can_quantize(t, flavour, False):
            out.append(t)
    return out


# --- the items ---------------------------------------------------------------------------------------

@dataclass
class Point:
    """One candidate of one tensor: the type it gets (after the row-length fallback), the type
    asked for, its bytes, the predicted weighted squared error and loss (x sensitivity)."""

    type: str
    requested: str
    bytes: int
    error: float = math.nan
    loss: float = math.nan


@dataclass
class SolveItem:
    """One tensor of the plan. Fixed tensors have one point (their type) and a reason."""

    name: str
    source_name: str
    shape: tuple[int, ...]
    src_type: str
    n_elements: int
    sensitivity: float
    points: list[Point]
    fixed_reason: str = ""
    imatrix_name: str = ""
    weighted: bool = False
    choice: int = 0

    @property
    def fixed(self) -> bool:
        return bool(self.fixed_reason)

    @property
    def chosen(self) -> Point:
        return self.points[self.choice]


def tensor_nbytes(shape: Sequence[int], type_name: str) -> int:
    """Data bytes of a tensor of this shape and type (ggml_nbytes)."""
    n_rows = 1
    for d in shape[1:]:
        n_rows *= int(d)
    return get_type(type_name).row_bytes(int(shape[0])) * n_rows


def free_tensors(tensors: list[TensorSpec], info: ModelInfo, opts: MixOptions) -> tuple[Plan, set[str]]:
    """(a plan, names of the tensors the solver may choose for). See the module docstring."""
    if opts.flavour != MAINLINE:
        raise MixError("--target-bpw / --target-size / mix solve support the mainline flavour only for now",
                       option="--flavour")
    pa = plan(tensors, info, "Q8_0", dataclasses.replace(opts, pure=True))
    pb = plan(tensors, info, "Q4_0", dataclasses.replace(opts, pure=True))
    free = {a.name for a, b in zip(pa, pb, strict=True) if a.type != b.type}
    return pa, free


def build_items(tensors: list[TensorSpec], info: ModelInfo, opts: MixOptions, candidates: Sequence[str],
                has_weights: Callable[[str], bool], mode: str = "role") -> list[SolveItem]:
    """One SolveItem per tensor of the plan (llama-quantize's order), with candidate points."""
    if mode not in SENSITIVITY_MODES:
        raise MixError(f"--sensitivity: unknown mode {mode!r}; valid: {', '.join(SENSITIVITY_MODES)}",
                       option="--sensitivity")
    base, free = free_tensors(tensors, info, opts)
    has_output = any(tensor_get_category(d.name) == OUTPUT for d in base)
    items: list[SolveItem] = []
    problems: list[str] = []
    for d in base:
        n_el = int(np.prod(d.shape, dtype=np.int64))
        sens = sensitivity(d.name, info.n_layer, has_output, mode)
        if d.name not in free:
            try:
                nbytes = tensor_nbytes(d.shape, d.type)
            except ValueError:  # a forced type (llama-quantize has no fallback for these): it would abort
                raise MixError(f"{d.name}: row length {d.shape[0]} is not a multiple of the block size of "
                               f"{d.type.lower()} ({d.reason})") from None
            items.append(SolveItem(d.name, d.source_name, d.shape, d.src_type, n_el, sens,
                                   [Point(d.type, d.type, nbytes, 0.0, 0.0)],
                                   fixed_reason=d.reason or "fixed", imatrix_name=d.imatrix_name))
            continue
        w = has_weights(d.imatrix_name)
        spec = TensorSpec(d.name, d.shape, d.src_type)
        pts: dict[str, Point] = {}
        for c in candidates:
            try:
                eff, _ = tensor_type_fallback(spec, c)
            except MixError:
                continue  # no fallback for this row length: not a candidate here
            if eff != c and getattr(opts, "no_fallback", False):
                continue  # --no-fallback: a type whose block does not divide the row is no candidate
            if eff in pts or not get_type(eff).quantized:
                continue
            if not can_quantize(eff, opts.flavour, w):
                continue
            if not w and tensor_requires_imatrix(d.name, eff, ""):
                continue
            pts[eff] = Point(eff, c, tensor_nbytes(d.shape, eff))
        if not pts:
            problems.append(f"{d.name} (row length {d.shape[0]})")
            continue
        items.append(SolveItem(d.name, d.source_name, d.shape, d.src_type, n_el, sens,
                               sorted(pts.values(), key=lambda p: p.bytes), imatrix_name=d.imatrix_name,
                               weighted=w))
    if problems:
        raise MixError(f"no candidate type fits {len(problems)} tensor(s): {', '.join(problems[:5])}"
                       f"{' ...' if len(problems) > 5 else ''}; widen --types", option="--types")
    return items


# --- measurement -----------------------------------------------------------------------------------

def sample_ranges(n_rows: int, sample_rows: int, runs: int = SAMPLE_RUNS) -> list[tuple[int, int]]:
    """Row ranges to measure: all rows when there are few, else `runs` evenly spaced runs of
    sample_rows // runs rows (at least one row each)."""
    if sample_rows <= 0 or n_rows <= sample_rows:
        return [(0, n_rows)]
    runs = max(1, min(runs, sample_rows))
    length = max(1, sample_rows // runs)
    if runs == 1:
        return [(0, length)]
    starts = sorted({int(round(i * (n_rows - length) / (runs - 1))) for i in range(runs)})
    return [(s, s + length) for s in starts]


def sample_rows_of(scores: np.ndarray, sample_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, weight of each) of a stratified sample: the sample_rows // 4 rows with the
    largest scores (max |x|: the rows whose outliers a coarse type quantizes worst) count once
    each; the rest of the sample, evenly spaced runs over the other rows, counts for all of them.
    All rows (weight 1) when there are no more than sample_rows."""
    n = len(scores)
    if sample_rows <= 0 or n <= sample_rows:
        return np.arange(n), np.ones(n)
    k = sample_rows // 4
    top = np.sort(np.argsort(-scores, kind="stable")[:k]) if k else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), top)
    picks = np.concatenate([np.arange(a, b) for a, b in sample_ranges(len(rest), sample_rows - k)])
    chosen = rest[picks]
    rows = np.concatenate([top, chosen])
    wts = np.concatenate([np.ones(len(top)), np.full(len(chosen), len(rest) / len(chosen))])
    order = np.argsort(rows, kind="stable")
    return rows[order], wts[order]


@dataclass
class MeasureTask:
    """What one worker measures: one tensor, the sample size, its imatrix rows, the types."""

    info: TensorInfo
    sample_rows: int
    weights: np.ndarray | None  # float32[n_mats, n_per_row] as the quantizer gets it
    types: list[str]
    flavour: str


def _row_scores(model: GGUFModel, t: TensorInfo) -> np.ndarray:
    """max |x| of every row, read in slabs of about a million values."""
    out = np.empty(t.n_rows, dtype=np.float32)
    step = max(1, (1 << 20) // max(1, t.n_per_row))
    for a in range(0, t.n_rows, step):
        b = min(t.n_rows, a + step)
        out[a:b] = np.abs(slab_to_float(model, t, a, b)).max(axis=1)
    return np.nan_to_num(out, nan=np.inf)


def measure_task(model: GGUFModel, task: MeasureTask) -> dict[str, float]:
    """{type: weighted squared error} of the tensor, estimated from a stratified sample of its rows
    (sample_rows_of). The sampled rows of one matrix are quantized together (one engine call per
    type and matrix; rows are quantized independently, so they get what the whole tensor gets)."""
    t = task.info
    per_matrix = t.shape[1] if len(t.shape) > 1 else 1
    nw = normalized_weights(task.weights) if task.weights is not None else None
    if 0 < task.sample_rows < t.n_rows:
        rows, rw = sample_rows_of(_row_scores(model, t), task.sample_rows)
    else:
        rows, rw = np.arange(t.n_rows), np.ones(t.n_rows)
    x = np.empty((len(rows), t.n_per_row), dtype=np.float32)
    k = 0
    while k < len(rows):  # read runs of consecutive rows at once
        e = k + 1
        while e < len(rows) and rows[e] == rows[e - 1] + 1 and e - k < 4096:
            e += 1
        x[k:e] = slab_to_float(model, t, int(rows[k]), int(rows[e - 1]) + 1)
        k = e
    mats = rows // per_matrix
    out = dict.fromkeys(task.types, 0.0)
    for mi in np.unique(mats):
        sel = mats == mi
        xs = x[sel]
        imx = None if task.weights is None else task.weights[mi if task.weights.shape[0] > 1 else 0]
        w = None if nw is None else nw[mi if nw.shape[0] > 1 else 0]
        for ty in task.types:
            qt = get_type(ty)
            q = dequantize(quantize(xs, qt, imx, flavour=task.flavour), qt, t.n_per_row)
            d = (xs - q).astype(np.float64)  # float32 subtraction, widened (as ErrorStats does)
            e2 = d * d if w is None else d * d * w.astype(np.float64)
            out[ty] += float(e2.sum(axis=1) @ rw[sel])
    return out


_W: dict[str, Any] = {}


def _measure_init(path: str, flavour: str) -> None:
    _W["model"] = GGUFModel(path, flavour=flavour)


def _measure_worker(task: MeasureTask) -> dict[str, float]:
    return measure_task(_W["model"], task)


def measure(model: GGUFModel, items: list[SolveItem], weights_of: Callable[[SolveItem, TensorInfo], np.ndarray | None],
            sample_rows: int = DEFAULT_SAMPLE_ROWS, threads: int | None = None, flavour: str = MAINLINE,
            on_start: Callable[[int], None] | None = None, on_progress: Callable[[str, int], None] | None = None,
            on_note: Callable[[str], None] | None = None) -> None:
    """Fill every free item's points with measured errors (see measure_task)."""
    by_name = {t.name: t for t in model.tensors}
    tasks: list[tuple[SolveItem, MeasureTask, int]] = []
    for it in items:
        if it.fixed:
            continue
        info = by_name[it.source_name]
        w = weights_of(it, info)
        n_rows = info.n_rows if sample_rows <= 0 else min(info.n_rows, sample_rows)
        n_vals = n_rows * info.n_per_row * len(it.points)
        tasks.append((it, MeasureTask(info, sample_rows, w, [p.type for p in it.points], flavour), n_vals))
    if on_start is not None:
        on_start(sum(n for _, _, n in tasks))

    def absorb(it: SolveItem, res: dict[str, float], n: int) -> None:
        for p in it.points:
            p.error = float(res[p.type])
        if on_progress is not None:
            on_progress(it.name, n)

    n_workers = resolve_workers(threads, len(tasks), on_note)
    if n_workers <= 1 or len(tasks) < 2:
        for it, task, n in tasks:
            absorb(it, measure_task(model, task), n)
        return
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(WorkerPool(n_workers, _measure_init, (model.path, flavour)))
        inflight: InFlight[tuple[SolveItem, int]] = InFlight(2 * n_workers)
        for it, task, n in sorted(tasks, key=lambda x: -x[2]):  # largest first: fewer idle workers at the end
            for (a, na), res in inflight.add(pool.submit(_measure_worker, task), (it, n)):
                absorb(a, res, na)
        for (a, na), res in inflight.drain():
            absorb(a, res, na)


# --- the solver -------------------------------------------------------------------------------------

def lower_hull(b: np.ndarray, loss: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of the (bytes, loss) points, from the smallest (least loss
    among the smallest) to the least loss, loss strictly decreasing."""
    order = np.lexsort((loss, b))
    hull: list[int] = []
    for i in order:
        if hull and loss[i] >= loss[hull[-1]]:
            continue  # not better than a smaller point: dominated
        if hull and b[i] == b[hull[-1]]:
            continue
        while len(hull) >= 2:
            i0, i1 = hull[-2], hull[-1]
            # drop i1 when it lies on or above the line i0 -> i
            if (loss[i1] - loss[i0]) * (b[i] - b[i0]) >= (loss[i] - loss[i0]) * (b[i1] - b[i0]):
                hull.pop()
            else:
                break
        hull.append(int(i))
    return hull


BIG_STEP = 0.02  # a tensor whose hull spans more than this share of the budget is enumerated
MAX_BIG = 3
MAX_COMBOS = 256


def solve_budget(sizes: Sequence[Sequence[int]], losses: Sequence[Sequence[float]], budget: int
                 ) -> list[int]:
    """The chosen point of each item: total size <= budget, total loss (near) minimal.

    sizes / losses: per item, its points' bytes and losses. The Lagrangian greedy on the hulls
    (upgrades in order of loss saved per byte, while they fit) leaves at most one hull step
    unused; that step can be large when one tensor is a large share of the model (token_embd:
    a fifth of SmolLM2, three fifths of Gemma3-270M), so the hull points of the (at most 3)
    items whose hull spans more than 2% of the budget are enumerated, the greedy runs for each
    combination, and the best result is improved by local moves (`improve`). Raises MixError
    when even the smallest point of every item exceeds the budget.
    """
    n = len(sizes)
    width = max((len(s) for s in sizes), default=1)
    B = np.full((n, width), np.iinfo(np.int64).max // 4, dtype=np.int64)
    L = np.full((n, width), np.inf)
    for i, (s, lo) in enumerate(zip(sizes, losses, strict=True)):
        B[i, :len(s)] = s
        L[i, :len(lo)] = lo
    hulls = [lower_hull(B[i, :len(sizes[i])], L[i, :len(sizes[i])]) for i in range(n)]
    start = np.array([h[0] for h in hulls], dtype=np.int64)
    used0 = int(B[np.arange(n), start].sum()) if n else 0
    if used0 > budget:
        raise MixError(f"the budget of {budget} bytes is too small: the smallest candidates of the free "
                       f"tensors need {used0} bytes", option="--target-bpw")
    span = np.array([B[i, h[-1]] - B[i, h[0]] for i, h in enumerate(hulls)], dtype=np.int64)
    big = [int(i) for i in np.argsort(-span, kind="stable")[:MAX_BIG] if span[i] > BIG_STEP * budget]
    while big and math.prod(len(hulls[i]) for i in big) > MAX_COMBOS:
        big.pop()
    seg_item: list[int] = []
    seg_from: list[int] = []
    seg_to: list[int] = []
    seg_eff: list[float] = []
    for i, h in enumerate(hulls):
        for a, c in itertools.pairwise(h):
            seg_item.append(i)
            seg_from.append(a)
            seg_to.append(c)
            seg_eff.append((L[i, a] - L[i, c]) / float(B[i, c] - B[i, a]))
    order = np.lexsort((np.arange(len(seg_eff)), -np.asarray(seg_eff))) if seg_eff else np.zeros(0, dtype=np.int64)
    steps = [(seg_item[s], seg_from[s], seg_to[s], int(B[seg_item[s], seg_to[s]] - B[seg_item[s], seg_from[s]]))
             for s in order]
    best: tuple[float, np.ndarray, int] | None = None
    for combo in itertools.product(*[hulls[i] for i in big]):
        cur = start.copy()
        for i, c in zip(big, combo, strict=True):
            cur[i] = c
        left = budget - int(B[np.arange(n), cur].sum())
        if left < 0:
            continue
        blocked = np.zeros(n, dtype=bool)
        blocked[big] = True
        for i, a, c, step in steps:
            if blocked[i] or cur[i] != a:
                continue
            if step <= left:
                cur[i] = c
                left -= step
            else:
                blocked[i] = True  # its later (less efficient) steps are only reachable through this one
        loss = float(L[np.arange(n), cur].sum())
        if best is None or loss < best[0]:
            best = (loss, cur, left)
    assert best is not None  # the combination of the smallest points fits (checked above)
    return [int(c) for c in improve(B, L, best[1], best[2])]


def improve(B: np.ndarray, L: np.ndarray, cur: np.ndarray, left: int, max_rounds: int | None = None) -> np.ndarray:
    """Local moves after the Lagrangian greedy, each lowering the loss and staying in the budget:
    the single change that fits the leftover and saves the most, else the best pair (one tensor
    up, another one down to pay for it). B, L: bytes and losses [items, points] (padding: huge
    bytes, inf loss). Returns the new choice per item."""
    n, width = B.shape
    cur = cur.copy()
    rows = np.arange(n)
    finite = np.isfinite(L)
    rounds = max_rounds if max_rounds is not None else 4 * n + 16
    for _ in range(rounds):
        b0 = B[rows, cur]
        l0 = L[rows, cur]
        dB = B - b0[:, None]
        dL = np.where(finite, L - l0[:, None], np.inf)
        ok = (dB <= left) & (dL < 0)
        if ok.any():
            i, j = divmod(int(np.argmin(np.where(ok, dL, 0.0))), width)
            left -= int(dB[i, j])
            cur[i] = j
            continue
        # pairs: an upgrade that does not fit, paid for by the cheapest downgrade of another tensor
        di, dj = np.nonzero((dB < 0) & finite)
        ui, uj = np.nonzero((dB > left) & (dL < 0))
        if not len(di) or not len(ui):
            break
        freed = -dB[di, dj]
        order = np.argsort(freed, kind="stable")
        freed_s, cost_s, item_s = freed[order], dL[di, dj][order], di[order]
        # suffix minimum of the cost (index of it) over downgrades freeing at least x bytes
        rev = cost_s[::-1]
        acc = np.minimum.accumulate(rev)[::-1]
        arg = np.empty(len(rev), dtype=np.int64)
        best_i, best_v = len(rev) - 1, np.inf
        for k in range(len(rev) - 1, -1, -1):  # argmin of each suffix (ties: the smallest freed)
            if cost_s[k] <= best_v:
                best_i, best_v = k, cost_s[k]
            arg[k] = best_i
        need = dB[ui, uj] - left
        pos = np.searchsorted(freed_s, need, side="left")
        valid = pos < len(freed_s)
        if not valid.any():
            break
        ui, uj, pos = ui[valid], uj[valid], pos[valid]
        k = arg[pos]
        gain = dL[ui, uj] + acc[pos]
        gain = np.where(item_s[k] == ui, np.inf, gain)  # the same tensor twice is no pair
        m = int(np.argmin(gain))
        if not gain[m] < -1e-12 * max(1.0, float(np.abs(l0[np.isfinite(l0)]).sum())):
            break
        a, b = int(ui[m]), int(uj[m])
        kd = order[k[m]]
        c, d = int(di[kd]), int(dj[kd])
        left -= int(dB[a, b] + dB[c, d])
        cur[a], cur[c] = b, d
    return cur


# --- the result ---------------------------------------------------------------------------------------

@dataclass
class SolveResult:
    """A solved mix: the items with their chosen points, the budget, the recipe and its plan."""

    model: str
    items: list[SolveItem]
    budget: int
    n_weights: int
    candidates: list[str]
    sensitivity: str
    sample_rows: int
    recipe_toml: str
    recipe: Recipe
    plan: Plan
    imatrix: str | None = None
    seconds_measure: float = 0.0
    seconds_solve: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(it.chosen.bytes for it in self.items)

    @property
    def bpw(self) -> float:
        return 8.0 * self.bytes / self.n_weights if self.n_weights else 0.0

    @property
    def target_bpw(self) -> float:
        return 8.0 * self.budget / self.n_weights if self.n_weights else 0.0

    @property
    def error(self) -> float:
        """Predicted total imatrix-weighted squared error of the free tensors."""
        return sum(it.chosen.error for it in self.items if not it.fixed)

    @property
    def loss(self) -> float:
        return sum(it.chosen.loss for it in self.items if not it.fixed)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "imatrix": self.imatrix, "budget_bytes": self.budget,
            "target_bpw": self.target_bpw, "bytes": self.bytes, "bpw": self.bpw, "n_weights": self.n_weights,
            "predicted_error": self.error, "predicted_loss": self.loss,
            "candidates": [c.lower() for c in self.candidates],
            "sensitivity": self.sensitivity, "sample_rows": self.sample_rows, "base": self.recipe.base,
            "seconds_measure": self.seconds_measure, "seconds_solve": self.seconds_solve, "notes": self.notes,
            "tensors": [{
                "name": it.name, "shape": list(it.shape), "type": it.chosen.type.lower(),
                "requested": it.chosen.requested.lower(), "bytes": it.chosen.bytes,
                "fixed": it.fixed_reason or None, "sensitivity": it.sensitivity,
                "predicted_error": None if it.fixed else it.chosen.error,
                "predicted_loss": None if it.fixed else it.chosen.loss,
                "candidates": None if it.fixed else [
                    {"type": p.type.lower(), "bytes": p.bytes, "error": p.error} for p in it.points],
            } for it in self.items],
            "recipe": self.recipe_toml,
        }


def base_for(items: list[SolveItem], flavour: str) -> FType:
    """The recipe's base ftype (general.file_type): the first ftype whose default type is the type
    holding most of the free weights."""
    count: dict[str, int] = {}
    for it in items:
        if not it.fixed:
            count[it.chosen.type] = count.get(it.chosen.type, 0) + it.n_elements
    table = [f for f in ftype_table(flavour) if not f.is_copy]
    for t in sorted(count, key=lambda k: -count[k]):
        for f in table:
            if f.default_type == t:
                return f
    return next(f for f in table if f.default_type == "Q8_0")


def _recipe_options(opts: MixOptions) -> dict[str, object]:
    out: dict[str, object] = {}
    for k in ("output_tensor_type", "token_embedding_type"):
        v = getattr(opts, k)
        if v is not None:
            out[k] = v.lower()
    for k in ("pure", "leave_output_tensor"):
        if getattr(opts, k):
            out[k] = True
    return out


def build_recipe(items: list[SolveItem], opts: MixOptions, header: Sequence[str] = ()) -> tuple[str, FType]:
    """The recipe TOML of the solved mix: the fixed rules (command line, then the input recipe's),
    then one folded rule per type for the free tensors; and its base ftype."""
    opts = effective_options(opts)
    rules: list[Rule] = []
    for r in rule_list(opts):
        rules.append(Rule(r.pattern, r.type.lower(), ["fixed: " + r.source.rstrip(":")]))
    by_type: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    for k, it in enumerate(items):
        if it.fixed:
            continue
        by_type.setdefault(it.chosen.type, []).append(it.name)
        first.setdefault(it.name, k)
    solved: list[Rule] = []
    for typ, names in by_type.items():
        for pat in fold_names(names):
            rx = re.compile(pat)
            solved.append(Rule(pat, typ.lower(), [n for n in names if rx.search(n)]))
    solved.sort(key=lambda r: first[r.tensors[0]])
    base = base_for(items, opts.flavour)
    desc = f"solved mix: {sum(len(r.tensors) for r in solved)} tensor(s) chosen under a budget"
    return recipe_toml(base.name, opts.flavour, desc, rules + solved, header, _recipe_options(opts) or None), base


def solve_items(items: list[SolveItem], budget: int) -> float:
    """Set every item's choice; returns the solver's seconds."""
    t0 = time.perf_counter()
    fixed = sum(it.points[0].bytes for it in items if it.fixed)
    free = [it for it in items if not it.fixed]
    if fixed > budget:
        raise MixError(f"the budget of {budget} bytes is smaller than the {fixed} bytes of the tensors whose "
                       "type is fixed", option="--target-bpw")
    smallest = fixed + sum(min(p.bytes for p in it.points) for it in free)
    if smallest > budget:
        n_w = sum(it.n_elements for it in items)
        raise MixError(f"the budget of {budget} bytes ({8.0 * budget / n_w:.4f} bpw) is too small: the smallest mix "
                       f"of these candidates takes {smallest} bytes ({8.0 * smallest / n_w:.4f} bpw)",
                       option="--target-bpw")
    idx = solve_budget([[p.bytes for p in it.points] for it in free],
                       [[p.loss for p in it.points] for it in free], budget - fixed)
    for it, c in zip(free, idx, strict=True):
        it.choice = c
    return time.perf_counter() - t0


def solve_model(model_path: str, *, target_bpw: float | None = None, target_size: int | str | None = None,
                types: Sequence[str] | None = None, imatrix: str | None = None,
                include_weights: Sequence[str] = (), exclude_weights: Sequence[str] = (),
                options: MixOptions | None = None, sensitivity_mode: str = "role",
                sample_rows: int = DEFAULT_SAMPLE_ROWS, threads: int | None = None,
                on_start: Callable[[int], None] | None = None, on_progress: Callable[[str, int], None] | None = None,
                on_note: Callable[[str], None] | None = None) -> SolveResult:
    """Measure, solve and check a budgeted mix of the model at model_path (see the module doc)."""
    opts = effective_options(options or MixOptions())
    qi: QuantizeImatrix | None = None
    if imatrix is not None:
        qi = prepare_imatrix(read_imatrix(imatrix), imatrix, include_weights, exclude_weights)
        opts = dataclasses.replace(opts, has_imatrix=qi.has_imatrix, imatrix_names=frozenset(qi.weights))
    opts = dataclasses.replace(opts, dry_run=True)
    cands = candidate_types(opts.flavour, qi is not None and qi.has_imatrix, parse_types(types, opts.flavour))
    if not cands:
        raise MixError("no candidate type left (types that need an importance matrix need --imatrix)",
                       option="--types")
    with GGUFModel(model_path, flavour=opts.flavour) as model:
        tensors, info = specs_from_gguf(model)
        items = build_items(tensors, info, opts, cands,
                            lambda name: qi is not None and name in qi.weights, sensitivity_mode)
        n_weights = sum(it.n_elements for it in items)
        budget = budget_bytes(n_weights, target_bpw, target_size)

        def weights_of(it: SolveItem, t: TensorInfo) -> np.ndarray | None:
            if qi is None:
                return None
            n_exp = t.shape[2] if len(t.shape) > 2 else 1
            return qi.lookup(it.imatrix_name, t.n_per_row, n_exp)

        t0 = time.perf_counter()
        measure(model, items, weights_of, sample_rows, threads, opts.flavour, on_start, on_progress, on_note)
        t_measure = time.perf_counter() - t0
    for it in items:
        for p in it.points:
            p.loss = 0.0 if it.fixed else it.sensitivity * p.error
    t_solve = solve_items(items, budget)
    total = sum(it.chosen.bytes for it in items)
    header = [f"solved by qtool mix solve for {model_path.rsplit('/', 1)[-1]}",
              f"budget {budget} bytes ({8.0 * budget / n_weights:.4f} bpw); mix {total} bytes "
              f"({8.0 * total / n_weights:.4f} bpw)",
              f"candidates {','.join(c.lower() for c in cands)}; sensitivity {sensitivity_mode}; "
              f"imatrix {imatrix or 'none'}"]
    toml, _ = build_recipe(items, opts, header)
    recipe = parse_recipe(tomllib.loads(toml), "solved recipe")
    solved = plan(tensors, info, None, dataclasses.replace(opts, recipe=recipe))
    want = {it.name: it.chosen.type for it in items}
    bad = [d.name for d in solved if want.get(d.name) != d.type]
    if bad:  # a defect of qtool, never of the user's input
        raise MixError(f"internal error: the solved recipe does not reproduce {len(bad)} tensor type(s): "
                       f"{', '.join(bad[:5])}")
    notes = []
    if opts.prune_layers:
        notes.append("the recipe assumes the same --prune-layers")
    return SolveResult(model_path, items, budget, n_weights, cands, sensitivity_mode, sample_rows, toml, recipe,
                       solved, imatrix, t_measure, t_solve, notes)


__all__ = ["DEFAULT_SAMPLE_ROWS", "DEFAULT_TYPES", "I_QUANTS", "K_QUANTS", "MeasureTask", "Point", "SolveItem",
           "improve", "lower_hull",
           "SolveResult", "base_for", "budget_bytes", "build_items", "build_recipe", "candidate_types",
           "free_tensors", "measure", "measure_task", "parse_size", "parse_types", "sample_ranges", "sample_rows_of",
           "solve_budget", "solve_items", "solve_model", "tensor_nbytes"]
