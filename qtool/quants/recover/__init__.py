"""Grid recovery: quantize float values that were dequantized from a quant type back to the exact
blocks they came from.

When a float tensor's values lie exactly on type T's grid (they are dequantize_row_T of some
blocks, rounded as the tensor stores them: F16, BF16 or F32), `recover_rows` finds, per block,
block bytes whose dequantization reproduces every value bit for bit, starting from the normal
kernel's bytes (kept where they already reproduce the block) and searching near them elsewhere;
blocks not on the grid keep the kernel's bytes. Pure functions on numpy arrays, vectorized over
blocks. Types: Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS (RECOVERABLE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import quantize
from ..numeric import F32
from ..types import MAINLINE, QType, get_type
from . import kquants, legacy
from .common import STORED, blocks_ok, round_stored

RECOVERABLE = ("Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")
"""Types whose grid `recover_rows` searches (others: the kernel's bytes, unchanged)."""
MIN_KERNEL_EXACT = 0.05
"""The search runs only where the normal kernel already reproduces at least this share of the rows'
non-constant blocks, or where most sub-blocks have no more distinct values than the type has
levels (imatrix-made quants the plain kernel rarely reproduces): data that is not a dequant costs
the kernel plus one dequantization."""
DETECT_ORDER = ("Q2_K", "Q3_K", "Q4_0", "Q4_1", "IQ4_XS", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")
"""Types `detect_grid` tries, fewest bits first (a Q4_1 dequant also lies on Q5_1's grid)."""


def can_recover(qtype: str | QType) -> bool:
    return get_type(qtype).name in RECOVERABLE


def stored_name(qtype: str | QType) -> str | None:
    """'F16' / 'BF16' / 'F32' for a float tensor type, None for a quantized one."""
    n = get_type(qtype).name
    return n if n in STORED else None


def recover_rows(x: np.ndarray, qtype: str | QType, stored: str = "F16", kernel: np.ndarray | None = None,
                 canonical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Blocks for float rows x (nrows, n_per_row) that reproduce them exactly where they lie on
    qtype's grid. kernel: the normal kernel's bytes for x (computed without an imatrix if None).
    canonical: apply the type's tie rule for encodings that decode to the same values (Q6_K
    signs). Returns (bytes uint8 (nrows, row_bytes), found bool (nrows, blocks per row))."""
    qt = get_type(qtype)
    xr = np.ascontiguousarray(x, dtype=F32)
    if xr.ndim == 1:
        xr = xr[None, :]
    nrows, n = xr.shape
    if kernel is None:
        kernel = quantize(xr, qt)
    out = np.array(kernel, dtype=np.uint8).reshape(-1, qt.type_size)
    xb = xr.reshape(-1, qt.block_size)
    if not np.array_equal(round_stored(xb, stored).view(np.uint32), xb.view(np.uint32)):
        # values the storage could not hold: not a stored tensor of this kind, nothing to recover
        return out.reshape(nrows, -1), np.zeros((nrows, n // qt.block_size), dtype=bool)
    ok = blocks_ok(out, xb, qt, stored)
    name = qt.name
    if _exact_share(ok, xb) < MIN_KERNEL_EXACT and not _few_levels(xb, name):
        # the kernel reproduces almost no block and the values are not on few levels: not a
        # dequant of qtype (the search would only cost time)
        return out.reshape(nrows, -1), ok.reshape(nrows, -1)
    if name in legacy.TYPES:
        for make in legacy.candidates(name):
            idx = np.nonzero(~ok)[0]
            if len(idx) == 0:
                break
            cand = make(xb[idx])
            good = blocks_ok(cand, xb[idx], qt, stored)
            out[idx[good]] = cand[good]
            ok[idx[good]] = True
    elif name == "Q6_K":
        kquants.recover_q6_k(xb, out, ok, stored, canonical)
    elif name in ("Q4_K", "Q5_K"):
        kquants.recover_k45(xb, out, ok, stored, name == "Q5_K")
    elif name == "Q2_K":
        kquants.recover_k45(xb, out, ok, stored, False, name)
    elif name in ("Q3_K", "IQ4_XS"):
        kquants.recover_scaled(name, xb, out, ok, stored)
    return out.reshape(nrows, -1), ok.reshape(nrows, -1)


def _exact_share(ok: np.ndarray, xb: np.ndarray) -> float:
    """The share of exact blocks among those that are not constant (a block of zeros, or of one
    value, lies on every grid and says nothing about where the data came from)."""
    informative = (xb != xb[:, :1]).any(axis=1)
    n = int(informative.sum())
    return float(ok[informative].sum()) / n if n else 0.0


# type: (values per sub-block, most distinct values a sub-block of a dequant has)
_LEVELS = {"Q2_K": (16, 4), "Q4_0": (32, 16), "Q4_1": (32, 16), "Q4_K": (32, 16), "IQ4_XS": (32, 16), "Q3_K": (16, 8)}


def _few_levels(xb: np.ndarray, name: str) -> bool:
    """Whether most sub-blocks have no more distinct values than qtype has levels (a cheap sign of
    a dequant when the kernel alone reproduces nothing, e.g. blocks made with an imatrix)."""
    if name not in _LEVELS:
        return False
    sub, most = _LEVELS[name]
    v = np.sort(xb.reshape(-1, sub), axis=1)
    distinct = 1 + (v[:, 1:] != v[:, :-1]).sum(axis=1)
    distinct = distinct[distinct > 1]  # constant sub-blocks say nothing
    return bool(distinct.size and (distinct <= most).mean() >= 0.5)


def quantize_recovering(rows: np.ndarray, qtype: str | QType, imatrix: np.ndarray | None = None,
                        flavour: str = MAINLINE, stored: str = "F16") -> np.ndarray:
    """The engine's quantize, with blocks that lie on qtype's grid replaced by their exact encoding
    (`qtool quantize --recover-grid`). Types without a recoverer: the kernel's bytes."""
    q = quantize(rows, qtype, imatrix, flavour=flavour)
    if not can_recover(qtype):
        return q
    return recover_rows(rows, qtype, stored, kernel=q)[0]


@dataclass(frozen=True)
class GridMatch:
    """How much of a tensor lies on one type's grid (blocks: the non-constant blocks looked at)."""

    type: str
    blocks: int
    on_grid: int

    @property
    def fraction(self) -> float:
        return self.on_grid / max(1, self.blocks)


def grid_fraction(x: np.ndarray, qtype: str | QType, stored: str = "F16", search: bool = True) -> GridMatch:
    """The share of x's blocks (rows (nrows, n_per_row)) that lie on qtype's grid; search=False
    counts only the blocks the normal kernel reproduces (cheap, a lower bound)."""
    qt = get_type(qtype)
    xr = np.ascontiguousarray(x, dtype=F32).reshape(-1, x.shape[-1])
    xb = xr.reshape(-1, qt.block_size)
    informative = (xb != xb[:, :1]).any(axis=1)  # constant blocks lie on every grid: not counted
    if not search:
        ok = blocks_ok(quantize(xr, qt).reshape(-1, qt.type_size), xb, qt, stored)
    else:
        ok = recover_rows(xr, qt, stored, canonical=False)[1].reshape(-1)
    return GridMatch(qt.name, int(informative.sum()), int(ok[informative].sum()))


def detect_grid(x: np.ndarray, stored: str = "F16", types: tuple[str, ...] = DETECT_ORDER, max_rows: int = 64,
                threshold: float = 0.99) -> GridMatch | None:
    """The first type (fewest bits first) on whose grid at least `threshold` of the blocks of the first
    `max_rows` rows lie ("this F16 tensor is a Q4_1 dequant"), or None."""
    xr = np.ascontiguousarray(x, dtype=F32)
    if xr.ndim == 1:
        xr = xr[None, :]
    xr = xr[:max_rows]
    for t in types:
        if xr.shape[1] % get_type(t).block_size:
            continue
        g = grid_fraction(xr, t, stored, search=False)  # the kernel alone: most blocks of a dequant
        if g.blocks and MIN_KERNEL_EXACT <= g.fraction < threshold:
            g = grid_fraction(xr, t, stored)
        if g.blocks and g.fraction >= threshold:
            return g
    return None


__all__ = ["DETECT_ORDER", "RECOVERABLE", "GridMatch", "can_recover", "detect_grid", "grid_fraction",
           "quantize_recovering", "recover_rows", "stored_name"]
