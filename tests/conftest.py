"""Shared fixtures: the tiny fixture models of tests/data/quantize, decompressed once per session,
a 23 KB model with a real header for fuzzing and malformed-file tests, and the GPU kernels built
for the CPU (`gpu_host`)."""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qtool.gguf_io import GGUFModel, GGUFStreamWriter, OutTensor

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/quantize/tiny-256.gguf (a 2-layer llama, rows of 256, F16), read-only use."""
    p = tmp_path_factory.mktemp("tiny256") / "tiny-256.gguf"
    p.write_bytes(lzma.open(DATA / "quantize" / "tiny-256.gguf.xz").read())
    return p


@pytest.fixture(scope="session")
def mini_gguf(tiny256: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """tiny-256's header (its real key/value pairs, 21 tensor names and types) with every tensor
    cut to 2 rows: a real model's structure in 23 KB."""
    small = tmp_path_factory.mktemp("mini") / "mini.gguf"
    with GGUFModel(tiny256) as m:
        outs = [OutTensor(t.name, t.shape[:1] + ((2,) if len(t.shape) > 1 else ()), t.qtype) for t in m.tensors]
        with GGUFStreamWriter(small, m.kvs, outs, m.alignment) as w:
            for t in m.tensors:
                rows = 2 if len(t.shape) > 1 else 1
                w.write_tensor_chunk(np.ascontiguousarray(m.tensor_rows(t, 0, rows)).reshape(-1))
    return small.read_bytes()


@pytest.fixture(scope="session")
def gpu_host() -> Any:
    """The GPU kernels' source built for the CPU (qtool.gpu.host.HostKernels), once per session;
    skips the test where no C++ compiler is found (a source that does not compile fails it)."""
    from qtool.gpu.host import HostBuildError, HostKernels

    try:
        return HostKernels()
    except HostBuildError as e:
        if "no C++ compiler" in str(e):
            pytest.skip(str(e))
        raise
