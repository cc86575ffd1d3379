"""Combine imatrix files as llama-imatrix does with `--in-file A --in-file B ...` (and no text).

`combine` is IMatrixCollector::load_imatrix applied to each input in order
(tools/imatrix/imatrix.cpp), giving the collected form that save_imatrix / save_imatrix_legacy
write:

- GGUF input: sums added element-wise in float32, counts added per matrix. An entry seen first
  with one count and then with n > 1 counts has its count broadcast to the n matrices; any other
  difference in the number of sums or counts is an error naming the tensor.
- Legacy input (values are mean * ncall, one ncall per entry): values * chunk_size added to the
  sums, ncall * chunk_size added to every count of the entry. This is how llama-imatrix weights
  .dat files; exact when chunk_size is a power of two.
- datasets are concatenated in input order; chunk_count is llama-imatrix's m_last_chunk after the
  last input: the largest count of any matrix // chunk_size.

chunk_size is llama-imatrix's `-c` (n_ctx / n_parallel, 512 by default). Converting one file is
`combine([data], chunk_size)`.
"""

from __future__ import annotations

import numpy as np

from .data import ImatrixData, ImatrixEntry, ImatrixError

DEFAULT_CHUNK_SIZE = 512


def default_chunk_size(inputs: list[ImatrixData]) -> tuple[int, list[str]]:
    """The chunk size qtool uses when none is given: the first GGUF input's, else 512.

    llama-imatrix always uses its own -c (512 unless given); qtool keeps the chunk size the data
    were collected with. Returns (chunk_size, notes about disagreeing inputs).
    """
    sizes = [(d.source or "input", d.chunk_size) for d in inputs if not d.legacy and d.chunk_size > 0]
    if not sizes:
        return DEFAULT_CHUNK_SIZE, []
    cs = sizes[0][1]
    notes = [f"{src} has chunk size {s}, using {cs} (first input's)" for src, s in sizes[1:] if s != cs]
    return cs, notes


def combine(inputs: list[ImatrixData], chunk_size: int = DEFAULT_CHUNK_SIZE) -> ImatrixData:
    """Accumulate imatrices (GGUF or legacy form) into the collected form (see the module docstring)."""
    if chunk_size < 1 or chunk_size > 2**31 - 1:
        raise ImatrixError(f"chunk size {chunk_size} must be between 1 and 2^31-1")
    values: dict[str, np.ndarray] = {}  # float32 flat
    counts: dict[str, np.ndarray] = {}  # int64
    datasets: list[str] = []
    last_chunk = 0
    cs32 = np.float32(chunk_size)
    for data in inputs:
        src = data.source or "input"
        for name in sorted(data.entries):  # llama.cpp walks a std::map; order only affects which error is first
            e = data.entries[name]
            sums = e.sums.reshape(-1)
            if data.legacy:
                if name not in values:
                    values[name] = np.zeros(sums.size, np.float32)
                    counts[name] = np.zeros(1, np.int64)
                elif values[name].size != sums.size:
                    raise ImatrixError(f"{src}: mismatched sums size for {name}: {sums.size} != {values[name].size}")
                with np.errstate(over="ignore"):
                    values[name] += sums * cs32
                counts[name] += int(e.counts[0]) * chunk_size
            else:
                nval, ncounts = sums.size, e.n_mat
                if name not in values:
                    values[name] = np.zeros(nval, np.float32)
                elif nval != values[name].size:
                    raise ImatrixError(f"{src}: mismatched sums size for {name}: {nval} != {values[name].size}")
                if name not in counts:
                    counts[name] = np.zeros(ncounts, np.int64)
                elif counts[name].size == 1 and ncounts > 1:
                    counts[name] = np.full(ncounts, counts[name][0], np.int64)
                elif ncounts != counts[name].size:
                    raise ImatrixError(f"{src}: mismatched counts size (experts) for {name}: "
                                       f"{ncounts} != {counts[name].size}")
                with np.errstate(over="ignore"):
                    values[name] += sums
                counts[name] += e.counts
            if not np.isfinite(values[name]).all():
                raise ImatrixError(f"{src}: {name}: the sums overflow float32 when combined")
        datasets.extend(data.datasets)
        max_count = max((int(c.max()) for c in counts.values() if c.size), default=0)
        last_chunk = max_count // chunk_size
        if last_chunk > 2**31 - 1:
            raise ImatrixError(f"{src}: chunk count {last_chunk} does not fit in int32")
    entries = {}
    for name in values:
        v, c = values[name], counts[name]
        if v.size % c.size:
            raise ImatrixError(f"{name}: {v.size} sums do not split into {c.size} matrices")
        entries[name] = ImatrixEntry(v.reshape(c.size, -1), c)
    return ImatrixData(entries, datasets, last_chunk, chunk_size, legacy=False, has_metadata=True)
