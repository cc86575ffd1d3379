"""Importance matrices: the data model, the legacy .dat and GGUF codecs, merge, statistics, weights.

Mirrors mainline llama.cpp's tools/imatrix/imatrix.cpp (formats, loading, merging, statistics),
common/imatrix-loader.cpp and the imatrix handling of tools/quantize/quantize.cpp.

    data = read_imatrix("imatrix.gguf")             # or a .dat file: the format is told by the magic
    merged = combine([data, read_imatrix("b.dat")])  # llama-imatrix --in-file A --in-file B
    write_imatrix(merged, "out.dat")                 # format from the extension (or fmt="dat"/"gguf")
    qi = prepare_imatrix(data, "imatrix.gguf")       # llama-quantize's weights and KV keys
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .dat import decode_dat, encode_dat, legacy_loss_warnings, legacy_losses, read_dat, write_dat
from .data import ImatrixData, ImatrixEntry, ImatrixError, Warn, atomic_write, check_values, default_warn
from .gguf_format import GGUF_MAGIC, decode_gguf, encode_gguf, read_gguf, write_gguf
from .merge import DEFAULT_CHUNK_SIZE, combine, default_chunk_size
from .stats import TensorStats, compute_statistics, layer_statistics
from .weights import QuantizeImatrix, entry_weights, prepare_imatrix, quantize_kv, remap_imatrix, tensor_weights

FORMATS = ("dat", "gguf")


def decode_imatrix(buf: bytes, source: str = "<bytes>") -> ImatrixData:
    """Parse either format from bytes: GGUF when it starts with the GGUF magic, else legacy."""
    if bytes(buf[:4]) == GGUF_MAGIC:
        return decode_gguf(buf, source)
    return decode_dat(buf, source)


def read_imatrix(path: str | os.PathLike[str]) -> ImatrixData:
    """Read an imatrix file of either format (as read: a .dat file stays in legacy form).

    OSError becomes ImatrixError naming the file; negative or non-finite sums and negative counts
    (a corrupt file: no collector writes them) are refused, naming the entry and index.
    """
    src = os.fspath(path)
    try:
        with open(src, "rb") as f:
            magic = f.read(4)
        data = read_gguf(src) if magic == GGUF_MAGIC else read_dat(src)
    except OSError as e:
        raise ImatrixError(f"{src}: cannot read: {e.strerror or e}") from None
    check_values(data.entries, src)
    return data


def format_for_path(path: str | os.PathLike[str]) -> str | None:
    """'dat' or 'gguf' from a file name's extension, None when neither."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    return {".dat": "dat", ".gguf": "gguf"}.get(ext)


def write_imatrix(data: ImatrixData, path: str | os.PathLike[str], fmt: str | None = None,
                  warn: Warn | None = None, inputs: Sequence[str | os.PathLike[str]] = ()) -> str:
    """Write `data` as `fmt` (default: from the extension); returns the format written.

    GGUF needs the collected form: a legacy-form ImatrixData is combined first with the default
    chunk size (512), as llama-imatrix would. Collected data written as .dat first get warnings
    saying what the legacy format loses (legacy_losses: per-expert counts, ...), never silently.
    """
    fmt = fmt or format_for_path(path)
    if fmt not in FORMATS:
        raise ImatrixError(f"{os.fspath(path)}: cannot tell the output format from the extension; "
                           "use .dat or .gguf (or give the format)")
    if fmt == "dat":
        if not data.legacy:
            for line in legacy_loss_warnings(data):
                (default_warn if warn is None else warn)(line)
        write_dat(data, path, warn, inputs)
    else:
        write_gguf(combine([data], DEFAULT_CHUNK_SIZE) if data.legacy else data, path, warn, inputs)
    return fmt


__all__ = [
    "DEFAULT_CHUNK_SIZE", "FORMATS", "ImatrixData", "ImatrixEntry", "ImatrixError", "QuantizeImatrix", "TensorStats",
    "atomic_write", "combine", "compute_statistics", "decode_dat", "decode_gguf", "decode_imatrix",
    "default_chunk_size", "encode_dat", "encode_gguf", "entry_weights", "format_for_path", "layer_statistics",
    "legacy_loss_warnings", "legacy_losses",
    "prepare_imatrix", "quantize_kv", "read_dat", "read_gguf", "read_imatrix", "remap_imatrix",
    "tensor_weights", "write_dat", "write_gguf", "write_imatrix",
]
