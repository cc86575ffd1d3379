"""The imatrix test helpers (tests/imatrix_helpers.py) rebuild llama-imatrix's files byte for byte."""

from __future__ import annotations

import pytest

from .imatrix_helpers import dat_bytes, imatrix_gguf, parse_dat, read_gguf_py, ref, ref_bytes


@pytest.mark.parametrize("name", ["odd-rt.dat", "odd-resave.dat", "moe-a-conv.dat", "moe-a-c256.dat",
                                  "smol-imatrix-conv.dat", "smol-imatrix-b-native.dat", "odd.dat"])
def test_dat_helpers_rebuild_reference(name: str) -> None:
    raw = ref_bytes(name)
    entries, chunk, dataset = parse_dat(raw)
    assert chunk is not None and dataset is not None
    assert dat_bytes([(n, c, v) for n, c, v in entries], (chunk, dataset)) == raw


@pytest.mark.parametrize("name", ["moe-a-resave.gguf", "moe-ba.gguf", "odd-moe.gguf", "odd-c1000.gguf",
                                  "smol-imatrix.gguf", "smol-imatrix-merged.gguf"])
def test_gguf_helpers_rebuild_reference(name: str) -> None:
    entries, kv = read_gguf_py(ref(name))
    assert kv["general.type"] == "imatrix"
    raw = imatrix_gguf(entries, kv["imatrix.datasets"], kv["imatrix.chunk_count"], kv["imatrix.chunk_size"])
    assert raw == ref_bytes(name)
