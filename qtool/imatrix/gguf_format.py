"""The GGUF imatrix format of llama-imatrix, read and written byte for byte.

A GGUF imatrix (tools/imatrix/imatrix.cpp `save_imatrix`) is a GGUF v3 file with exactly these
key/value pairs, in this order: `general.type` = "imatrix" (string), `imatrix.datasets` (array of
strings), `imatrix.chunk_count` (u32), `imatrix.chunk_size` (u32); and for each entry, names
sorted bytewise, two F32 tensors: `<name>.in_sum2` with ne = (n_per_row, n_mat) (the raw sums of
squared activations) and `<name>.counts` with ne = (1, n_mat) (tokens seen per matrix, as float).
Trailing dimensions of size 1 are not written (ggml_n_dims), the alignment is 32, the tensor data
follow the tensor infos padded with zeros, each tensor padded to 32 bytes.

The `gguf` package's GGUFWriter cannot produce these bytes: it always writes a
`general.architecture` key first. This module is a schema on qtool.gguf_io.format: the header,
key/value pairs, tensor infos and padding are read and written there.

Reading checks what ggml's gguf reader checks (format.read_header: magic, version 2 or 3, key and
tensor counts, string and array lengths against the bytes left, duplicate keys and tensor names,
names shorter than 64 bytes, at most 4 dimensions, known tensor types, contiguous aligned
offsets, the data inside the file) and what common_imatrix_load needs (each `.in_sum2` has its
`.counts` and both are F32), and more: a file whose `general.type` is not "imatrix" or that has
no imatrix tensors is refused as a model, sums and counts must be finite, counts non-negative,
the sums must split into the counts' matrices. Counts are rounded with lround, as llama.cpp does.
Names and strings that are not UTF-8 keep their bytes (surrogate escapes), so any file
round-trips.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from ..gguf_io.format import (
    DEFAULT_ALIGNMENT,
    GGML_MAX_NAME,
    GGUF_MAGIC,
    TYPE_NAME,
    Cursor,
    TensorInfo,
    ValueType,
    check_shape,
    first_kv_value,
    header_bytes,
    make_kv,
    padding,
    read_header,
)
from ..quants.types import MAINLINE, all_types, get_type
from .data import FileFormat, ImatrixData, ImatrixEntry, ImatrixError, Warn, name_bytes, partial_data, sorted_names

__all__ = ["GGUF", "GGUF_MAGIC", "decode_gguf", "dump_gguf", "encode_gguf", "read_gguf", "write_gguf"]

F32 = get_type("F32")
KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"
_GGML_TYPES = {t.id: t for t in all_types(MAINLINE)}  # mainline's ggml types, as common_imatrix_load reads


def _check_shape(c: Cursor, name: str, shape: tuple[int, ...], at: int) -> None:
    """format.check_shape, naming a negative dimension by its index."""
    for j, d in enumerate(shape):
        if d < 0:  # at: the dimension's own offset, after the name, its length and n_dims
            raise c.fail(f"tensor {name!r} dimension {j} is negative ({d})", at + 12 + len(name_bytes(name)) + 8 * j)
    check_shape(c, name, shape, at)


def decode_gguf(buf: bytes | memoryview, source: str = "<bytes>") -> ImatrixData:
    """Parse a GGUF imatrix from bytes (see the module docstring for what is checked)."""
    c = Cursor(buf, source, ImatrixError, name_errors="surrogateescape", value_errors="surrogateescape")
    h = read_header(c, _GGML_TYPES.__getitem__, _check_shape)
    kv = {k.key: k for k in h.kvs}
    arch = first_kv_value(h.kvs, "general.architecture")
    gtype = kv.get(KEY_TYPE)
    if gtype is not None and (gtype.vtype != ValueType.STRING or gtype.value != "imatrix"):
        raise c.err(f"a GGUF {gtype.value!r} file (general.type), not an imatrix"
                    + (f" (architecture {arch})" if arch else ""))
    pairs: dict[str, list[TensorInfo | None]] = {}
    for t in h.tensors:
        for k, suffix in enumerate((SUFFIX_SUMS, SUFFIX_COUNTS)):
            if t.name.endswith(suffix):
                base = t.name[: -len(suffix)]
                if not base:
                    raise c.err(f"tensor {t.name!r} has an empty entry name")
                pairs.setdefault(base, [None, None])[k] = t
    if not pairs:
        what = f"a GGUF model (architecture {arch}, {len(h.tensors)} tensors)" if arch else \
            f"a GGUF file with {len(h.tensors)} tensors and no <name>{SUFFIX_SUMS} / <name>{SUFFIX_COUNTS} pair"
        raise c.err(f"{what}, not an imatrix")
    entries = {base: _entry(c, base, *pairs[base]) for base in sorted_names(pairs)}
    datasets: list[str] = []
    if KEY_DATASETS in kv:
        d = kv[KEY_DATASETS]
        if d.vtype != ValueType.ARRAY or d.atype != ValueType.STRING:
            raise c.err(f"{KEY_DATASETS} must be an array of strings")
        datasets = list(d.value)
    meta: dict[str, int] = {}
    for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        if key in kv:
            if kv[key].vtype != ValueType.UINT32:
                raise c.err(f"{key} must be u32, not {TYPE_NAME[kv[key].vtype]}")
            meta[key] = int(kv[key].value)
    has_metadata = KEY_DATASETS in kv and KEY_CHUNK_COUNT in kv and KEY_CHUNK_SIZE in kv
    return ImatrixData(entries, datasets, meta.get(KEY_CHUNK_COUNT, 0), meta.get(KEY_CHUNK_SIZE, 0),
                       legacy=False, has_metadata=has_metadata, source=source)


def _entry(c: Cursor, base: str, sums: TensorInfo | None, counts: TensorInfo | None) -> ImatrixEntry:
    """One entry from its two tensors (common_imatrix_load): F32 sums, finite and splitting into
    the matrices of the counts; counts finite, >= 0, rounded with lround."""
    if sums is None or counts is None:
        have, miss = (SUFFIX_SUMS, SUFFIX_COUNTS) if counts is None else (SUFFIX_COUNTS, SUFFIX_SUMS)
        raise c.err(f"tensor {base + have!r} has no matching {base + miss!r} (sums and counts come in pairs)")
    for t in (sums, counts):
        if t.qtype.id != F32.id:
            raise c.err(f"tensor {t.name!r} must be F32, not {t.qtype.name}")
    nval, ncounts = sums.n_bytes // 4, counts.n_bytes // 4
    if nval < 1 or ncounts < 1 or nval % ncounts:
        raise c.err(f"entry {base!r}: {nval} sums do not split into {ncounts} matrices "
                    f"(tensors {sums.name!r}, {counts.name!r})")
    s_off = sums.offset
    s = np.frombuffer(c.buf, dtype="<f4", count=nval, offset=s_off)
    bad = ~np.isfinite(s)
    if bad.any():
        k = int(np.argmax(bad))
        raise c.err(f"tensor {sums.name!r}: non-finite value {float(s[k])} at offset {s_off + 4 * k} (element {k})")
    c_off = counts.offset
    cnt = np.frombuffer(c.buf, dtype="<f4", count=ncounts, offset=c_off).astype(np.float64)
    bad = ~np.isfinite(cnt) | (cnt < 0) | (cnt > 2.0**62)
    if bad.any():
        k = int(np.argmax(bad))
        raise c.err(f"tensor {counts.name!r}: invalid count {cnt[k]} at offset {c_off + 4 * k} "
                    "(counts are non-negative token counts)")
    n = np.trunc(cnt + 0.5).astype(np.int64)  # lround; counts are >= 0
    return ImatrixEntry(s.astype(np.float32).reshape(ncounts, nval // ncounts), n)


def dump_gguf(data: ImatrixData, f: BinaryIO, warn: Warn) -> None:
    """Write the collected form of `data` as llama-imatrix's save_imatrix does."""
    if data.legacy:
        raise ImatrixError("a legacy (.dat) imatrix must be combined first (qtool.imatrix.combine) to get "
                           "raw sums and counts for a GGUF file")
    for name, e in data.entries.items():
        note = partial_data("save_imatrix", name, e)
        if note:
            warn(note)
    names = [n for n in sorted_names(data.entries) if data.entries[n].nval > 0 and data.entries[n].n_mat > 0]
    if not names:
        raise ImatrixError("the imatrix has no entries; nothing to write")
    for key in ("chunk_count", "chunk_size"):
        v = int(getattr(data, key))
        if not 0 <= v < 2**32:
            raise ImatrixError(f"{key} {v} does not fit in u32")
    kvs = [make_kv(KEY_TYPE, ValueType.STRING, "imatrix"),
           make_kv(KEY_DATASETS, ValueType.ARRAY, data.datasets, ValueType.STRING),
           make_kv(KEY_CHUNK_COUNT, ValueType.UINT32, int(data.chunk_count)),
           make_kv(KEY_CHUNK_SIZE, ValueType.UINT32, int(data.chunk_size))]
    infos: list[tuple[str, Sequence[int], int, int]] = []
    blobs: list[np.ndarray] = []
    for name in names:
        e = data.entries[name]
        for suffix, ne, arr in ((SUFFIX_SUMS, (e.n_per_row, e.n_mat), e.sums),
                                (SUFFIX_COUNTS, (1, e.n_mat), e.counts.astype(np.float32))):
            n = len(name_bytes(name + suffix))
            if n >= GGML_MAX_NAME:
                raise ImatrixError(f"entry {name!r}: tensor name {name + suffix!r} is {n} bytes; GGUF "
                                   f"(ggml) names must be shorter than {GGML_MAX_NAME}")
            blobs.append(np.ascontiguousarray(arr, dtype="<f4"))
            infos.append((name + suffix, ne, F32.id, blobs[-1].nbytes))
    f.write(header_bytes(kvs, infos))  # GGUF v3, alignment 32
    for arr in blobs:
        f.write(arr.tobytes())
        f.write(padding(arr.nbytes, DEFAULT_ALIGNMENT))


GGUF = FileFormat(decode_gguf, dump_gguf)
read_gguf, encode_gguf, write_gguf = GGUF.read, GGUF.encode, GGUF.write
