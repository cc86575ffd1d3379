"""The importance-matrix data model shared by both codecs, merge, statistics and quantize.

An importance matrix holds, per weight tensor name, the sums of squared input activations of
each column (`sums`, float32, shape (n_mat, n_per_row); n_mat = number of experts of a stacked
3-D MoE tensor, else 1) and the number of input rows (tokens) each matrix saw (`counts`, int64,
shape (n_mat,)), plus the datasets it was collected on, the chunk count and the chunk size.

Two forms exist, exactly as in llama.cpp (common/imatrix-loader.cpp `common_imatrix`):

- GGUF / collected form (`legacy=False`): `sums` are raw sums, `counts` raw token counts. This is
  what a GGUF imatrix stores and what llama-imatrix's IMatrixCollector accumulates.
- Legacy form (`legacy=True`): read from a `.dat` file. `sums` are the stored values, i.e. the
  per-column mean times `ncall` (the number of chunks), `counts` is `[ncall]`, `chunk_size` is
  unknown (0). `merge.combine` turns it into the collected form the way llama-imatrix does
  (values * chunk_size, counts ncall * chunk_size).

Names are `str`; bytes that are not UTF-8 are kept with the "surrogateescape" error handler so
that any file round-trips byte for byte (`name_bytes`). Sorting uses the bytes, like std::sort on
std::string.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from ..errors import OutputError
from ..gguf_io import GGUFError
from ..gguf_io.atomic import AtomicOutput

log = logging.getLogger("qtool.imatrix")

Warn = Callable[[str], None]


class ImatrixError(GGUFError, ValueError):
    """A bad or unreadable importance matrix (message names the file and offset or tensor).

    A subclass of `qtool.gguf_io.GGUFError` (and ValueError) so code catching qtool's file
    format errors catches it too.
    """


def check_values(entries: dict[str, ImatrixEntry], source: str) -> None:
    """Refuse what no collector writes: negative or non-finite sums (they are sums of squared
    activations) and negative counts. The message names the entry, the matrix and the column."""
    for name, e in entries.items():
        if e.counts.size and (e.counts < 0).any():
            i = int(np.argmax(e.counts < 0))
            raise ImatrixError(f"{source}: entry {name!r}: count #{i} is {int(e.counts[i])} (negative): a corrupt file")
        bad = ~np.isfinite(e.sums) | (e.sums < 0)
        if bad.any():
            m, j = (int(v) for v in np.unravel_index(int(np.argmax(bad)), e.sums.shape))
            raise ImatrixError(f"{source}: entry {name!r}: sum of matrix {m}, column {j} is {float(e.sums[m, j])!r}; "
                               "sums of squared activations are finite and >= 0: a corrupt file")


def name_bytes(name: str) -> bytes:
    """The bytes of a name or dataset string as stored in the files."""
    return name.encode("utf-8", "surrogateescape")


def name_str(raw: bytes) -> str:
    """A stored name as str (non-UTF-8 bytes kept as surrogate escapes)."""
    return raw.decode("utf-8", "surrogateescape")


def sorted_names(names: Iterable[str]) -> list[str]:
    """Names in std::sort order (bytewise)."""
    return sorted(names, key=name_bytes)


def default_warn(msg: str) -> None:
    log.warning(msg)


def partial_data(who: str, name: str, e: ImatrixEntry) -> str | None:
    """llama-imatrix's warning (from its function `who`) for an entry with matrices (experts)
    that saw no token, in float as C computes the percentage; None when all saw some."""
    n_zeros = int(np.count_nonzero(e.counts == 0))
    if not n_zeros:
        return None
    pct = np.float32(100.0) * np.float32(e.n_mat - n_zeros) / np.float32(e.n_mat)
    return f"{who}: entry '{name:>40}' has partial data ({float(pct):.2f}%)"


@dataclass
class ImatrixEntry:
    """One tensor: sums float32[n_mat, n_per_row] and counts int64[n_mat]."""

    sums: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64).reshape(-1)
        s = np.asarray(self.sums, dtype=np.float32)
        n_mat = max(1, self.counts.size)
        if s.size % n_mat:
            raise ImatrixError(f"{s.size} sums do not split into {n_mat} matrices")
        self.sums = s.reshape(n_mat, s.size // n_mat)

    @property
    def n_mat(self) -> int:
        return int(self.counts.size)

    @property
    def n_per_row(self) -> int:
        return int(self.sums.shape[1])

    @property
    def nval(self) -> int:
        return int(self.sums.size)


@dataclass
class ImatrixData:
    """An importance matrix (see the module docstring for the two forms).

    entries: name -> ImatrixEntry, in file order (writers of the collected form sort them).
    datasets: dataset names (GGUF `imatrix.datasets`; a .dat file holds at most one).
    chunk_count: GGUF `imatrix.chunk_count`, the legacy trailer's chunk number, or for a
        collected (merged / converted) result llama-imatrix's m_last_chunk = max count // chunk size.
    chunk_size: tokens per chunk (GGUF `imatrix.chunk_size`; 0 for legacy).
    legacy: sums are legacy means * ncall and counts are [ncall] (as read from a .dat file).
    has_metadata: GGUF: datasets, chunk_count and chunk_size keys all present (llama-quantize
        requires it); legacy: the trailer (chunk number + dataset) is present.
    source: the path it was read from, if any.
    """

    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False
    has_metadata: bool = True
    source: str | None = None

    @property
    def format(self) -> str:
        return "dat" if self.legacy else "gguf"

    def names(self) -> list[str]:
        return sorted_names(self.entries)

    def weights_for(self, name: str) -> np.ndarray | None:
        """llama-quantize's per-column weights of an entry, float32[n_mat, n_per_row], or None."""
        from .weights import entry_weights

        e = self.entries.get(name)
        return None if e is None else entry_weights(self, name)

    def summary(self) -> dict[str, object]:
        """Counts of entries / matrices for logs and JSON."""
        return {
            "format": self.format, "entries": len(self.entries),
            "matrices": int(sum(e.n_mat for e in self.entries.values())),
            "datasets": list(self.datasets), "chunk_count": self.chunk_count, "chunk_size": self.chunk_size,
        }


def atomic_write(path: str | os.PathLike[str], dump: Callable[[BinaryIO], None],
                 inputs: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Write a file through `dump(f)` to a temporary name in the target folder, then rename it.

    The path is checked first (`check_output`: never an input, a directory or a device); nothing
    is left behind when `dump` raises.
    """
    with AtomicOutput(path, inputs) as out:
        try:
            dump(out.f)
        except OSError as e:
            raise OutputError(f"{os.fspath(path)}: cannot write the output: {e.strerror or e}",
                              path=os.fspath(path)) from None


@dataclass(frozen=True)
class FileFormat:
    """An imatrix file format as its decoder and writer; files and bytes go through them alike."""

    decode: Callable[[bytes | memoryview, str], ImatrixData]
    dump: Callable[[ImatrixData, BinaryIO, Warn], None]  # warn: where the writer's warnings go

    def read(self, path: str | os.PathLike[str]) -> ImatrixData:
        """Read a file (whole: imatrix files are small, and a memory map could not be closed
        while an error's traceback still holds a view of it)."""
        src = os.fspath(path)
        with open(src, "rb") as f:
            return self.decode(f.read(), src)

    def encode(self, data: ImatrixData, warn: Warn | None = None) -> bytes:
        """The bytes of `data` in this format."""
        b = io.BytesIO()
        self.dump(data, b, default_warn if warn is None else warn)
        return b.getvalue()

    def write(self, data: ImatrixData, path: str | os.PathLike[str], warn: Warn | None = None,
              inputs: Sequence[str | os.PathLike[str]] = ()) -> None:
        """Write a file (a temporary file in the target folder, renamed when complete)."""
        atomic_write(path, lambda f: self.dump(data, f, default_warn if warn is None else warn), inputs)
