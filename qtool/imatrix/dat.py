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

import struct
from typing import BinaryIO

import numpy as np

from ..gguf_io.format import Cursor
from .data import (
    FileFormat,
    ImatrixData,
    ImatrixEntry,
    ImatrixError,
    Warn,
    name_bytes,
    name_str,
    partial_data,
    sorted_names,
)

__all__ = ["DAT", "decode_dat", "dump_dat", "encode_dat", "legacy_loss_warnings", "legacy_losses", "legacy_values",
           "read_dat", "write_dat"]

_I32 = struct.Struct("<i")
INT32_MAX = 2**31 - 1
# smallest possible entry: name length, 1-byte name, ncall, nval, one value
_MIN_ENTRY = 4 + 1 + 4 + 4 + 4


def decode_dat(buf: bytes | memoryview, source: str = "<bytes>") -> ImatrixData:
    """Parse a legacy .dat imatrix from bytes; ImatrixError names the offset of any problem."""
    c = Cursor(buf, source, ImatrixError)
    if c.size < 4:
        raise c.err(f"{c.size} bytes is too short for an imatrix file (no GGUF magic, no legacy entry count)")
    n_entries = c.i32("the entry count")
    if n_entries < 1:
        raise c.err(f"not an imatrix file: legacy entry count {n_entries} at offset 0 (and no GGUF magic)")
    if n_entries > (c.size - 4) // _MIN_ENTRY:
        raise c.err(f"truncated or not an imatrix file: legacy entry count {n_entries} at offset 0 needs at least "
                    f"{4 + n_entries * _MIN_ENTRY} bytes, the file has {c.size} (and no GGUF magic)")
    entries: dict[str, ImatrixEntry] = {}
    for i in range(n_entries):
        at = c.pos
        name = _string(c, f"entry {i + 1}", "name")
        if name in entries:
            raise c.fail(f"duplicate entry name {name!r}", at)
        at = c.pos
        ncall = c.i32(f"ncall of {name!r}")
        if ncall < 0:
            raise c.fail(f"{name!r}: negative ncall {ncall}", at)
        at = c.pos
        nval = c.i32(f"the value count of {name!r}")
        if nval < 1:
            raise c.fail(f"{name!r}: bad value count {nval}", at)
        if 4 * nval > c.left:
            raise c.err(f"truncated or corrupt: {name!r}: value count {nval} at offset {at} needs {4 * nval} bytes, "
                        f"{c.left} left")
        at = c.pos
        vals = np.frombuffer(c.take(4 * nval, f"the values of {name!r}"), dtype="<f4")
        bad = ~np.isfinite(vals)
        if bad.any():
            k = int(np.argmax(bad))
            raise c.err(f"{name!r}: non-finite value {float(vals[k])} at offset {at + 4 * k} (column {k})")
        entries[name] = ImatrixEntry(vals.astype(np.float32).reshape(1, nval), np.array([ncall], np.int64))

    datasets: list[str] = []
    chunk_count = 0
    has_trailer = c.left > 0
    if has_trailer:
        at = c.pos
        chunk_count = c.i32("the chunk count of the trailer")
        if chunk_count < 0:
            raise c.fail(f"negative chunk count {chunk_count}", at)
        if c.left:
            dataset = _string(c, None, "dataset name")
            if dataset:
                datasets.append(dataset)
            if c.left:
                raise c.err(f"{c.left} unexpected bytes after the dataset name at offset {c.pos}")
    return ImatrixData(entries, datasets, chunk_count, 0, legacy=True, has_metadata=has_trailer, source=source)


def _string(c: Cursor, entry: str | None, noun: str) -> str:
    """An int32-length-prefixed string without NUL bytes: the name of `entry` (at least one byte)
    or the trailer's dataset name (entry None, may be empty)."""
    prefix = f"{entry}: " if entry else ""
    at = c.pos
    ln = c.i32(f"the {noun} length" + (f" of {entry}" if entry else ""))
    if ln < (1 if entry else 0):
        raise c.fail(f"{prefix}bad {noun} length {ln}", at)
    if ln > c.left:
        raise c.err(f"truncated or corrupt: {prefix}{noun} length {ln} at offset {at} exceeds the {c.left} bytes left")
    at = c.pos
    raw = bytes(c.take(ln, f"the {noun}"))
    if b"\0" in raw:
        raise c.err(f"{prefix}{noun} at offset {at} contains a NUL byte")
    return name_str(raw)


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


def dump_dat(data: ImatrixData, f: BinaryIO, warn: Warn) -> None:
    """Write `data` in the legacy format to a binary file object (see the module docstring)."""
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
        if e.n_mat == 0:
            continue
        if not e.counts.any():
            warn(f"save_imatrix_legacy: entry '{name:>40}' has no data - skipping")
            continue
        note = partial_data("save_imatrix_legacy", name, e)
        if note:
            warn(note)
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


DAT = FileFormat(decode_dat, dump_dat)
read_dat, encode_dat, write_dat = DAT.read, DAT.encode, DAT.write


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
