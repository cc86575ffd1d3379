"""Per-tensor importance weights for `qtool stats --imatrix`.

The weights are what llama-quantize passes to the quantizers (tools/quantize/quantize.cpp
`load_imatrix`): for a GGUF imatrix, `<name>.in_sum2 / <name>.counts` per matrix (counts rounded
with lround; a matrix that never saw input gets weights 1); for a legacy .dat file, the stored
values divided by the entry's ncall. A tensor's weights are float32[n_mats, n_per_row] (one row per
expert of a 3-D tensor).

Reading and the arithmetic are qtool.imatrix's (`read_imatrix`, `entry_weights`): one reader for
both formats and every command. Unlike `qtool quantize`, a GGUF imatrix without its metadata keys
is accepted here (statistics need only the sums and counts).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..gguf_io import TensorInfo
from ..imatrix import ImatrixData, ImatrixError, entry_weights, read_imatrix

WeightsFn = Callable[[TensorInfo], "np.ndarray | None"]

__all__ = ["ImatrixError", "WeightsFn", "load_weights", "read_dat_imatrix", "read_gguf_imatrix"]


def _shape(w: np.ndarray, t: TensorInfo) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    if w.size % t.n_per_row:
        raise ImatrixError(f"imatrix entry for {t.name} has {w.size} values, the tensor's rows have "
                           f"{t.n_per_row}")
    return w.reshape(-1, t.n_per_row)


def _table(data: ImatrixData) -> dict[str, np.ndarray]:
    return {name: entry_weights(data, name) for name in data.entries}


def read_gguf_imatrix(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Weights of a GGUF imatrix: entry name -> float32[n_mats, n_per_row]."""
    data = read_imatrix(path)
    if data.legacy:
        raise ImatrixError(f"{os.fspath(path)}: a legacy .dat imatrix, not GGUF")
    return _table(data)


def read_dat_imatrix(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Weights of a legacy .dat imatrix: entry name -> float32[nval] (flat, one matrix)."""
    data = read_imatrix(path)
    if not data.legacy:
        raise ImatrixError(f"{os.fspath(path)}: a GGUF imatrix, not a legacy .dat file")
    return {name: w.reshape(-1) for name, w in _table(data).items()}


def load_weights(path: str | os.PathLike[str]) -> WeightsFn:
    """A function giving each tensor's imatrix weights (float32[n_mats, n_per_row]) or None.

    The file (either format) is read and checked now; ImatrixError names the file and the offset or
    tensor of any problem.
    """
    table = _table(read_imatrix(path))

    def lookup(t: TensorInfo) -> np.ndarray | None:
        w = table.get(t.name)
        return None if w is None else _shape(w, t)

    return lookup
