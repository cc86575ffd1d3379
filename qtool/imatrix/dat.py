"""The legacy `.dat` imatrix format of llama-imatrix (and ik_llama.cpp), read and written byte for byte.

Layout (little-endian int32 / float32, no magic):

    int32 n_entries
    n_entries times: int32 len, len bytes name, int32 ncall, int32 nval, nval float32 values
    optional trailer: int32 chunk number (llama-imatrix's m_last_chunk), int32 len, len bytes dataset

A value is the column's mean squared activation times ncall (the entry's chunk count), so
llama-quantize divides by ncall (tools/quantize/quantize.cpp `load_imatrix`).

Reading (common/imatrix-loader.cpp `common_imatrix_load_legacy`) gives the legacy form of
ImatrixData (values as stored, counts [ncall]). It is stricter than llama.cpp, which reads past
garbage: every length is checked against the bytes left, values must be finite, names unique and
free of NUL bytes, and nothing may follow the dataset name. A trailer of just the chunk number
(no dataset length) is accepted, as llama.cpp does.

Writing a legacy-form ImatrixData re-encodes it as read (entries in their order; the trailer is
always the full chunk number + dataset form, dataset length 0 when there is none), so read then
write gives the same bytes for any file llama-imatrix or ik_llama.cpp wrote. Writing a collected
(GGUF-form) ImatrixData is llama-imatrix's `save_imatrix_legacy` (`legacy_losses` says what that
loses for given data; `write_imatrix` warns with it): names sorted, entries without
any count skipped, ncall = ceil(max count / chunk size), values (sum / count) * ncall in float32,
and experts with zero count (partial MoE data) stored as 1 * ncall (weight 1 after division).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from .data import (
    ImatrixData,
    ImatrixEntry,
    ImatrixError,
    Warn,
    atomic_write,
    default_warn,
    name_bytes,
    name_str,
    sorted_names,
)

_I32 = struct.Struct("<i")
INT32_MAX = 2**31 - 1
# smallest possible entry: name length, 1-byte name, ncall, nval, one value
_MIN_ENTRY = 4 + 1 + 4 + 4 + 4


def decode_dat(buf: bytes | memoryview, source: str = "<bytes>") -> ImatrixData:
    """Parse a legacy .dat imatrix from bytes; ImatrixError names the offset of any problem."""
    mv = memoryview(buf).cast("B")
    size = len(mv)
    pos = 0

    def i32(what: str) -> int:
        nonlocal pos
        if pos + 4 > size:
            raise ImatrixError(f"{source}: truncated at offset {pos} (file size {size}) while reading {what}")
        (v,) = _I32.unpack_from(mv, pos)
        pos += 4
        return v

    if size < 4:
        raise ImatrixError(f"{source}: {size} bytes is too short for an imatrix file "
                           "(no GGUF magic, no legacy entry count)")
    n_entries = i32("the entry count")
    if n_entries < 1:
        raise ImatrixError(f"{source}: not an imatrix file: legacy entry count {n_entries} at offset 0 "
                           "(and no GGUF magic)")
    if n_entries > (size - 4) // _MIN_ENTRY:
        raise ImatrixError(f"{source}: truncated or not an imatrix file: legacy entry count {n_entries} at "
                           f"offset 0 needs at least {4 + n_entries * _MIN_ENTRY} bytes, the file has {size} "
                           "(and no GGUF magic)")
    entries: dict[str, ImatrixEntry] = {}
    for i in range(n_entries):
        at = pos
        ln = i32(f"the name length of entry {i + 1}")
        if ln < 1:
            raise ImatrixError(f"{source}: entry {i + 1}: bad name length {ln} at offset {at}")
        if ln > size - pos:
            raise ImatrixError(f"{source}: truncated or corrupt: entry {i + 1}: name length {ln} at offset {at} "
                               f"exceeds the {size - pos} bytes left")
        raw = bytes(mv[pos:pos + ln])
        if b"\0" in raw:
            raise ImatrixError(f"{source}: entry {i + 1}: name at offset {pos} contains a NUL byte")
        name = name_str(raw)
        pos += ln
        if name in entries:
            raise ImatrixError(f"{source}: duplicate entry name {name!r} at offset {at}")
        at = pos
        ncall = i32(f"ncall of {name!r}")
        if ncall < 0:
            raise ImatrixError(f"{source}: {name!r}: negative ncall {ncall} at offset {at}")
        at = pos
        nval = i32(f"the value count of {name!r}")
        if nval < 1:
            raise ImatrixError(f"{source}: {name!r}: bad value count {nval} at offset {at}")
        if 4 * nval > size - pos:
            raise ImatrixError(f"{source}: truncated or corrupt: {name!r}: value count {nval} at offset {at} "
                               f"needs {4 * nval} bytes, {size - pos} left")
        vals = np.frombuffer(mv, dtype="<f4", count=nval, offset=pos)
        bad = ~np.isfinite(vals)
        if bad.any():
            k = int(np.argmax(bad))
            raise ImatrixError(f"{source}: {name!r}: non-finite value {float(vals[k])} at offset {pos + 4 * k} "
                               f"(column {k})")
        entries[name] = ImatrixEntry(vals.astype(np.float32).reshape(1, nval), np.array([ncall], np.int64))
        pos += 4 * nval

    datasets: list[str] = []
    chunk_count = 0
    has_trailer = pos < size
    if has_trailer:
        at = pos
        chunk_count = i32("the chunk count of the trailer")
        if chunk_count < 0:
            raise ImatrixError(f"{source}: negative chunk count {chunk_count} at offset {at}")
        if pos < size:
            at = pos
            ln = i32("the dataset name length")
            if ln < 0:
                raise ImatrixError(f"{source}: bad dataset name length {ln} at offset {at}")
            if ln > size - pos:
                raise ImatrixError(f"{source}: truncated or corrupt: dataset name length {ln} at offset {at} "
                                   f"exceeds the {size - pos} bytes left")
            raw = bytes(mv[pos:pos + ln])
            if b"\0" in raw:
                raise ImatrixError(f"{source}: dataset name at offset {pos} contains a NUL byte")
            if ln:
                datasets.append(name_str(raw))
            pos += ln
            if pos != size:
                raise ImatrixError(f"{source}: {size - pos} unexpected bytes after the dataset name at offset {pos}")
    return ImatrixData(entries, datasets, chunk_count, 0, legacy=True, has_metadata=has_trailer, source=source)


def read_dat(path: str | os.PathLike[str]) -> ImatrixData:
    """Read a legacy .dat imatrix file (read whole: imatrix files are small, and a memory map
    could not be closed while an error's traceback still holds a view of it)."""
    src = os.fspath(path)
    with open(src, "rb") as f:
        return decode_dat(f.read(), src)


def _pack_str(b: bytes) -> bytes:
    return _I32.pack(len(b)) + b


def _check_name(name: str) -> bytes:
    b = name_bytes(name)
    if not b or b"\0" in b or len(b) > INT32_MAX:
        raise ImatrixError(f"cannot store entry name {name!r} in a .dat file")
    return b


def _trailer(data: ImatrixData) -> bytes:
    """The chunk number and the last dataset name (the format holds one), checked to be readable."""
    if not 0 <= int(data.chunk_count) <= INT32_MAX:
        raise ImatrixError(f"chunk count {data.chunk_count} does not fit in a .dat file (int32)")
    ds = name_bytes(data.datasets[-1]) if data.datasets else b""
    if b"\0" in ds or len(ds) > INT32_MAX:
        raise ImatrixError(f"cannot store dataset name {data.datasets[-1]!r} in a .dat file")
    return _I32.pack(int(data.chunk_count)) + _pack_str(ds)


def dump_dat(data: ImatrixData, f: BinaryIO, warn: Warn | None = None) -> None:
    """Write `data` in the legacy format to a binary file object (see the module docstring)."""
    warn = default_warn if warn is None else warn
    if data.legacy:
        _dump_verbatim(data, f)
    else:
        _dump_collected(data, f, warn)


def _dump_verbatim(data: ImatrixData, f: BinaryIO) -> None:
    if not data.entries:
        raise ImatrixError("the imatrix has no entries; nothing to write")
    f.write(_I32.pack(len(data.entries)))
    for name, e in data.entries.items():
        if e.n_mat != 1:
            raise ImatrixError(f"{name}: a legacy entry has one count, not {e.n_mat}")
        f.write(_pack_str(_check_name(name)))
        f.write(struct.pack("<ii", int(e.counts[0]), e.nval))
        f.write(e.sums.astype("<f4").tobytes())
    if data.has_metadata:
        f.write(_trailer(data))


def legacy_values(e: ImatrixEntry, ncall: int) -> np.ndarray:
    """save_imatrix_legacy's stored values: (sum / count) * ncall, 1 * ncall where count is 0.

    float32 throughout, as C: count is (float) of the int64 count. Returns float32[n_mat, n_per_row].
    """
    cnt = e.counts.astype(np.float32)
    zero = cnt == np.float32(0)
    vals = np.where(zero[:, None], np.float32(1), e.sums)
    cnt = np.where(zero, np.float32(1), cnt)
    with np.errstate(over="ignore", invalid="ignore"):
        return (vals / cnt[:, None]) * np.float32(ncall)


def _dump_collected(data: ImatrixData, f: BinaryIO, warn: Warn) -> None:
    chunk_size = int(data.chunk_size)
    if chunk_size < 1:
        raise ImatrixError(f"chunk size {chunk_size} must be at least 1 to write a .dat file")
    to_store = []
    for name in data.entries:  # the warnings come in llama-imatrix's (unordered) map order; ours is file order
        e = data.entries[name]
        n_all = e.n_mat
        if n_all == 0:
            continue
        n_zeros = int(np.count_nonzero(e.counts == 0))
        if n_zeros == n_all:
            warn(f"save_imatrix_legacy: entry '{name:>40}' has no data - skipping")
            continue
        if n_zeros > 0:
            pct = np.float32(100.0) * np.float32(n_all - n_zeros) / np.float32(n_all)
            warn(f"save_imatrix_legacy: entry '{name:>40}' has partial data ({float(pct):.2f}%)")
        to_store.append(name)
    if len(to_store) < len(data.entries):
        warn(f"save_imatrix_legacy: storing only {len(to_store)} out of {len(data.entries)} entries")
    if not to_store:
        raise ImatrixError("no imatrix entry has any data; nothing to write")
    f.write(_I32.pack(len(to_store)))
    for name in sorted_names(to_store):
        e = data.entries[name]
        ncall = (int(e.counts.max()) + (chunk_size - 1)) // chunk_size
        if ncall > INT32_MAX or e.nval > INT32_MAX:
            raise ImatrixError(f"{name}: too large for the legacy format (ncall {ncall}, {e.nval} values)")
        f.write(_pack_str(_check_name(name)))
        f.write(struct.pack("<ii", ncall, e.nval))
        f.write(legacy_values(e, ncall).astype("<f4").tobytes())
    f.write(_trailer(data))


def encode_dat(data: ImatrixData, warn: Warn | None = None) -> bytes:
    """The bytes of `data` in the legacy format."""
    b = io.BytesIO()
    dump_dat(data, b, warn)
    return b.getvalue()


def write_dat(data: ImatrixData, path: str | os.PathLike[str], warn: Warn | None = None,
              inputs: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Write a legacy .dat file (temporary file in the target folder, renamed when complete)."""
    atomic_write(path, lambda f: dump_dat(data, f, warn), inputs)


def legacy_losses(c: ImatrixData) -> list[str]:
    """What writing the collected data `c` to the legacy .dat format loses (human-readable lines).

    The first line is always there (float32 rounding); the others name what this imatrix loses:
    per-expert counts, experts without tokens, counts that are not whole chunks, dataset names,
    the chunk size.
    """
    cs = c.chunk_size
    out = ["the legacy format stores per-column means x chunk count, rounded to float32: sums read back "
           "differ from these in the last bits"]
    per_expert = [n for n, e in c.entries.items() if e.n_mat > 1 and np.unique(e.counts).size > 1]
    if per_expert:
        out.append(f"per-expert token counts of {len(per_expert)} entries (e.g. {per_expert[0]}) are replaced by one "
                   "chunk count per entry: merging the .dat file later weights their experts alike")
    zero = sum(int(np.count_nonzero(e.counts == 0)) for e in c.entries.values() if np.any(e.counts))
    if zero:
        out.append(f"{zero} experts without tokens are stored with weight 1 (indistinguishable from data)")
    partial = [n for n, e in c.entries.items() if cs > 0 and np.any(e.counts % cs)]
    if partial:
        out.append(f"token counts of {len(partial)} entries are not whole chunks of {cs} tokens: the .dat file "
                   "keeps ceil(count / chunk size) chunks")
    if len(c.datasets) > 1:
        out.append(f"only the last of {len(c.datasets)} dataset names is kept ({c.datasets[-1]!r})")
    if cs != 512:
        out.append(f"the chunk size ({cs}) is not stored; readers of the .dat file assume their own "
                   "(512 by default)")
    return out


def legacy_loss_warnings(c: ImatrixData) -> list[str]:
    """legacy_losses as warnings, the first introduced by "GGUF -> .dat loses information"."""
    lines = legacy_losses(c)
    return [f"GGUF -> .dat loses information: {lines[0]}", *lines[1:]]
