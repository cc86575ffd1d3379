"""Imatrix pre-flight: does this importance matrix cover what this quantization plan needs?

`qtool imatrix check IMATRIX MODEL [FTYPE]` and `qtool quantize --imatrix` (before any tensor is
processed) run `check_imatrix(plan, data, path)`. It reads the plan's record (`Decision.quantize`,
`imatrix_name`, `requires_imatrix`, the tensor's experts from its shape) and the imatrix as read
(per-matrix token counts: the GGUF format stores one count per expert of a stacked MoE tensor; a
legacy .dat file one call count per entry), and reports:

- errors (what llama-quantize would fail on, possibly an hour in): a tensor whose type requires
  an imatrix (IQ1_*, IQ2_*, IQ3_XXS, Q2_K of Q2_K_S; ik: also IQ1_KT / IQ2_KT) without an entry;
  an entry whose size does not match the tensor (llama-quant.cpp: "imatrix size ... is different
  from tensor size"); a GGUF imatrix without its metadata keys; non-finite weights.
- warnings: tensors to quantize without an entry (they go without weights), experts of a MoE
  tensor no token was routed to (llama-quantize then uses weight 1 for every column of that
  expert; counts listed), entries with no data at all, imatrix entries for tensors the model
  does not have (a different model?).
- facts: format, datasets, chunk count and size, entries used / unused, per-tensor coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import ImatrixData, ImatrixError
from .weights import entry_weights, filter_names

if TYPE_CHECKING:
    from ..mix.decision import Plan

_TOKEN_EMBD = ("token_embd.weight", "per_layer_token_embd.weight")


@dataclass
class TensorCoverage:
    """One tensor the plan quantizes. status: "ok", "missing", "size" (mismatch), "partial"
    (experts never routed), "empty" (every count 0). counts: tokens per matrix (expert) as stored
    (None for a legacy .dat entry: one call count, no per-expert counts)."""

    name: str
    type: str
    entry: str
    n_experts: int
    status: str = "ok"
    requires_imatrix: bool = False
    counts: list[int] | None = None
    unrouted: list[int] = field(default_factory=list)
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "entry": self.entry, "n_experts": self.n_experts,
                "status": self.status, "requires_imatrix": self.requires_imatrix, "counts": self.counts,
                "unrouted_experts": self.unrouted, "message": self.message}


@dataclass
class ImatrixCheck:
    """The pre-flight result. ok: no errors."""

    path: str
    format: str
    datasets: list[str]
    chunk_count: int
    chunk_size: int
    n_entries: int
    n_used: int
    unused: list[str] = field(default_factory=list)
    tensors: list[TensorCoverage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ftype: str | None = None
    missing: list[str] = field(default_factory=list)
    coverage_warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"imatrix": self.path, "format": self.format, "datasets": self.datasets,
                "chunk_count": self.chunk_count, "chunk_size": self.chunk_size, "entries": self.n_entries,
                "entries_used": self.n_used, "entries_unused": self.unused, "ftype": self.ftype, "ok": self.ok,
                "errors": self.errors, "warnings": self.warnings, "missing": self.missing,
                "tensors": [t.to_json() for t in self.tensors]}


def _kernel_needs_imatrix(type_name: str) -> bool:
    """The type's kernel needs weights (IQ2_XXS, IQ2_XS, IQ1_S: the type table's needs_imatrix)."""
    from ..quants.types import get_type

    try:
        return get_type(type_name).needs_imatrix
    except KeyError:
        return False


def _n_experts(shape: Sequence[int]) -> int:
    return int(shape[2]) if len(shape) > 2 else 1


def _ranges(ix: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    start = prev = -2
    for i in [*ix, -2]:
        if i == prev + 1:
            prev = i
            continue
        if start >= 0:
            out.append(str(start) if prev == start else f"{start}-{prev}")
        start = prev = i
    return ", ".join(out)


def check_imatrix(p: Plan, data: ImatrixData, path: str, include: Sequence[str] = (),
                  exclude: Sequence[str] = (), ftype: str | None = None) -> ImatrixCheck:
    """Check `data` (as read) against plan p (see the module docstring); nothing raises for what
    the check finds: errors are in the result."""
    res = ImatrixCheck(path, data.format, list(data.datasets), int(data.chunk_count), int(data.chunk_size),
                       len(data.entries), 0, ftype=ftype if ftype is not None else p.ftype.name)
    if not data.legacy and not data.has_metadata:
        res.errors.append(f"{path}: missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, "
                          "imatrix.chunk_size): llama-quantize refuses it")
    try:
        kept = set(filter_names(list(data.entries), include, exclude))
    except ImatrixError as err:
        res.errors.append(str(err))
        kept = set(data.entries)
    used: set[str] = set()
    for d in p:
        if not d.quantize:
            continue
        n_exp = _n_experts(d.shape)
        key = d.imatrix_name or d.name
        tc = TensorCoverage(d.name, d.type, key, n_exp, requires_imatrix=d.requires_imatrix)
        res.tensors.append(tc)
        if key not in kept:
            tc.status = "missing"
            why = "filtered out by --include/--exclude-weights" if key in data.entries else "no entry"
            if d.requires_imatrix:
                tc.message = (f"{d.name}: {d.type.lower()} requires an importance matrix and the imatrix has "
                              f"{why} for it")
                res.errors.append(tc.message)
            elif _kernel_needs_imatrix(d.type):  # llama-quantize would not refuse it, ggml would abort on it
                tc.message = (f"{d.name}: {d.type.lower()} cannot be quantized without imatrix weights (ggml's "
                              f"kernel asserts on them) and the imatrix has {why} for it")
                res.errors.append(tc.message)
            else:
                tc.message = f"{d.name}: {why} in the imatrix: quantized to {d.type.lower()} without weights"
            res.missing.append(d.name)
            continue
        used.add(key)
        e = data.entries[key]
        n_per_row = d.shape[0]
        if e.nval != n_per_row * n_exp:
            tc.status = "size"
            tc.message = (f"imatrix size {e.nval} is different from tensor size {n_per_row * n_exp} for {d.name}")
            if d.name in _TOKEN_EMBD:
                res.warnings.append(tc.message + " (quantized without weights)")
            else:
                res.errors.append(tc.message)
            continue
        w = entry_weights(data, key)
        if not np.isfinite(w).all():
            tc.status = "size"
            tc.message = f"{path}: imatrix contains a non-finite value for {key}"
            res.errors.append(tc.message)
            continue
        if data.legacy:
            tc.counts = None  # one call count per entry: no per-expert counts in a .dat file
            if e.counts.size and int(e.counts[0]) == 0 and not e.sums.any():
                tc.status = "empty"
                tc.message = f"{d.name}: the imatrix entry has no data"
                res.coverage_warnings.append(tc.message)
            continue
        counts = [int(c) for c in e.counts]
        tc.counts = counts
        zero = [i for i, c in enumerate(counts) if c == 0]
        if zero and len(zero) == len(counts):
            tc.status = "empty"
            tc.unrouted = zero
            tc.message = (f"{d.name}: the imatrix entry saw no token ("
                          + (f"none of its {n_exp} experts was routed" if n_exp > 1 else "count 0")
                          + "): llama-quantize uses weight 1 for every column")
            res.coverage_warnings.append(tc.message)
        elif zero:
            tc.status = "partial"
            tc.unrouted = zero
            routed = [c for c in counts if c]
            tc.message = (f"{d.name}: {len(zero)} of {n_exp} experts never routed (experts {_ranges(zero)}); "
                          f"the others saw {min(routed)}..{max(routed)} tokens: the unrouted experts are "
                          f"quantized to {d.type.lower()} with weight 1 for every column")
            res.coverage_warnings.append(tc.message)
    res.n_used = len(used)
    names = {d.imatrix_name or d.name for d in p} | {d.source_name for d in p}
    res.unused = sorted(n for n in kept if n not in names)
    if res.unused and len(res.unused) == len(kept):
        res.coverage_warnings.append(f"none of the imatrix's {len(kept)} entries names a tensor of this model: "
                                     "is it for another model?")
    if res.missing:
        res.warnings.append(f"{len(res.missing)} tensor(s) to quantize have no imatrix entry and go without "
                            f"weights: {', '.join(res.missing[:4])}{', ...' if len(res.missing) > 4 else ''}")
    res.warnings += res.coverage_warnings
    return res


def preflight_warnings(res: ImatrixCheck) -> list[str]:
    """The warnings `qtool quantize` adds to its own: expert coverage, empty entries, an imatrix
    for another model (it warns of missing entries and size mismatches itself)."""
    return list(res.coverage_warnings)


def check_summary(res: ImatrixCheck) -> str:
    """One line of facts: format, datasets, chunks."""
    ds = ", ".join(res.datasets) if res.datasets else "unknown"
    chunks = (f"{res.chunk_count} chunks of {res.chunk_size} tokens" if res.chunk_size
              else f"{res.chunk_count} chunks (chunk size not stored in a .dat file)")
    return (f"{res.path}: {res.format}, {res.n_entries} entries ({res.n_used} used by this plan), {chunks}, "
            f"dataset(s): {ds}")


__all__ = ["ImatrixCheck", "TensorCoverage", "check_imatrix", "check_summary", "preflight_warnings"]
