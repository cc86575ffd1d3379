"""Golden vectors from the reference implementations (copied from ../shared/vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
VECTORS = DATA / "vectors"


def inputs(impl: str = "mainline") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(x float32[55, 1024], imatrix float32[1024], kinds) of the golden vectors."""
    z = np.load(VECTORS / impl / "inputs.npz", allow_pickle=False)
    return z["x"], z["imatrix"], [str(k) for k in z["kinds"]]


def expected(qtype: str, impl: str = "mainline") -> dict[str, np.ndarray]:
    z = np.load(VECTORS / impl / f"{qtype}.npz", allow_pickle=False)
    return {k: z[k] for k in z.files}


def mismatched_rows(got: np.ndarray, want: np.ndarray) -> list[int]:
    return [int(i) for i in np.nonzero((got != want).any(axis=1))[0]]
