"""Lookup tables the GPU kernels read (grids, neighbour lists, value tables too large for code).

Each entry is a function returning a contiguous numpy array; the CUDA source declares it with
`QTABLE(type, name)` (a pointer the backend sets to a copy of the array, uploaded once per
device). Tables come from the numpy engine's own builders, which the test suite checks against
the references.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TABLES: dict[str, Callable[[], np.ndarray]] = {}
"""name -> builder. Registered by the modules that own the data (see `table`)."""


def table(name: str) -> np.ndarray:
    """The contiguous array of one table."""
    try:
        fn = TABLES[name]
    except KeyError:
        raise KeyError(f"no GPU table named {name!r} (known: {', '.join(sorted(TABLES)) or 'none'})") from None
    return np.ascontiguousarray(fn())
