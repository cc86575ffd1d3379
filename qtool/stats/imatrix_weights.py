"""Per-tensor importance weights for `qtool stats --imatrix`.

The weights are what llama-quantize passes to the quantizers (tools/quantize/quantize.cpp
`load_imatrix`): for a GGUF imatrix, `<name>.in_sum2 / <name>.counts` per matrix (counts rounded
to integers; a matrix that never saw input gets weights 1); for a legacy .dat file, the stored
values divided by the entry's ncall. A tensor's weights are float32[n_mats, n_per_row] (one row per
expert of a 3-D tensor).

qtool.imatrix (the imatrix package) is used when it provides `load_imatrix(path)` returning an
object with `weights_for(name)`; otherwise the two formats are read here directly.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..gguf_io import GGUFModel, TensorInfo

WeightsFn = Callable[[TensorInfo], "np.ndarray | None"]


class ImatrixError(ValueError):
    """The file is not a readable imatrix."""


def _shape(w: np.ndarray, t: TensorInfo) -> np.ndarray | None:
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    if w.size % t.n_per_row:
        raise ImatrixError(f"imatrix entry for {t.name} has {w.size} values, the tensor's rows have "
                           f"{t.n_per_row}")
    return w.reshape(-1, t.n_per_row)


def read_gguf_imatrix(path: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with GGUFModel(path) as m:
        by = {t.name: t for t in m.tensors}
        for name, t in by.items():
            if not name.endswith(".in_sum2"):
                continue
            base = name[: -len(".in_sum2")]
            c = by.get(base + ".counts")
            if c is None:
                raise ImatrixError(f"{path}: {name} has no matching {base}.counts")
            if t.qtype.name != "F32" or c.qtype.name != "F32":
                raise ImatrixError(f"{path}: sums and counts for {base} must be F32")
            sums = np.asarray(m.tensor_data(t)).view("<f4").astype(np.float32)
            counts = np.rint(np.asarray(m.tensor_data(c)).view("<f4").astype(np.float64)).astype(np.float32)
            ncounts = counts.size
            if ncounts == 0 or sums.size % ncounts:
                raise ImatrixError(f"{path}: {base} has {sums.size} sums for {ncounts} counts")
            s = sums.reshape(ncounts, -1)
            cnt = counts[:, None]
            out[base] = np.where(cnt > 0, s / np.where(cnt > 0, cnt, np.float32(1)), np.float32(1)).astype(np.float32)
    return out


def read_dat_imatrix(path: str) -> dict[str, np.ndarray]:
    raw = Path(path).read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(raw):
            raise ImatrixError(f"{path}: truncated at offset {pos} while reading {what}")
        b = raw[pos:pos + n]
        pos += n
        return b

    (n_entries,) = struct.unpack("<i", take(4, "the entry count"))
    if n_entries < 1 or n_entries > len(raw):
        raise ImatrixError(f"{path}: not an imatrix file ({n_entries} entries)")
    out: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        (ln,) = struct.unpack("<i", take(4, f"entry {i + 1} name length"))
        if ln <= 0 or ln > len(raw):
            raise ImatrixError(f"{path}: bad name length {ln} for entry {i + 1}")
        name = take(ln, f"entry {i + 1} name").decode("utf-8", errors="replace")
        ncall, nval = struct.unpack("<ii", take(8, f"{name} ncall/nval"))
        if nval < 1:
            raise ImatrixError(f"{path}: {name} has {nval} values")
        vals = np.frombuffer(take(4 * nval, f"{name} values"), dtype="<f4").astype(np.float32)
        out[name] = vals / np.float32(ncall) if ncall > 0 else vals.copy()
    return out


def load_weights(path: str) -> WeightsFn:
    """A function giving each tensor's imatrix weights (float32[n_mats, n_per_row]) or None."""
    try:  # the imatrix package, when it offers this interface
        from .. import imatrix as imx  # type: ignore[attr-defined]

        loader = getattr(imx, "load_imatrix", None)
    except ImportError:
        loader = None
    if loader is not None:
        data = loader(path)
        fn = getattr(data, "weights_for", None)
        if fn is not None:
            def from_pkg(t: TensorInfo) -> np.ndarray | None:
                w = fn(t.name)
                return None if w is None else _shape(w, t)
            return from_pkg
    with open(path, "rb") as f:
        magic = f.read(4)
    table = read_gguf_imatrix(path) if magic == b"GGUF" else read_dat_imatrix(path)
    if not table:
        raise ImatrixError(f"{path}: no imatrix entries")

    def lookup(t: TensorInfo) -> np.ndarray | None:
        w = table.get(t.name)
        return None if w is None else _shape(w, t)

    return lookup
