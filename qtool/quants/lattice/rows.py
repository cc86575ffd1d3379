"""The row loop shared by the lattice quantizers (mainline and ik flavours): whole rows are cut
into chunks of about `blocks_per_chunk` sub-blocks, the imatrix laid out per sub-block (S, nbr)
and tiled over the chunk's rows, and each chunk quantized by a vectorised chunk function.
Mirrors the `quantize_iq*` row loops of ggml-quants.c (one row at a time there: chunking changes
nothing, every row is independent except for C's carried stack state, which the chunk functions
carry themselves)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..numeric import QK_K, blocks_t

F32 = np.float32
ChunkFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def quantize_rows(kind: str, rows: np.ndarray, imatrix: np.ndarray | None, S: int, dt: np.dtype,
                  blocks_per_chunk: int, chunk: ChunkFn, need_imatrix: bool) -> np.ndarray:
    """rows float32 (nrows, n) -> uint8 (nrows, n/256*dt.itemsize): chunk(xr (r, n), qwt (S, r*n/S)
    or None) -> structured blocks (r*n/256,) of dt. Raises ValueError for a row length not a
    multiple of 256 and for a missing imatrix where the type needs one."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    if n % QK_K:
        raise ValueError(f"{kind}: row length {n} is not a multiple of {QK_K}")
    if imatrix is None and need_imatrix:
        raise ValueError(f"{kind} requires an importance matrix")
    nbr = n // S
    qw_row = None if imatrix is None else blocks_t(np.asarray(imatrix, F32).reshape(nbr, S))
    rpc = max(1, blocks_per_chunk // nbr)
    out = np.empty((nrows, (n // QK_K) * dt.itemsize), np.uint8)
    for r0 in range(0, nrows, rpc):
        r1 = min(nrows, r0 + rpc)
        qwt = None if qw_row is None else np.tile(qw_row, (1, r1 - r0))
        o = chunk(rows[r0:r1], qwt)
        out[r0:r1] = o.view(np.uint8).reshape(r1 - r0, -1)
    return out
