"""Mainline's lattice i-quant and small-type ftypes end to end: qtool's output equals
llama-quantize's (llama-cpp-python 0.3.36's vendor tree) on the tiny fixture models, without and
with the GGUF imatrix (manifest made by tests/data/quantize/make_lattice_refs.py). Cases
llama-quantize refuses (an imatrix required, a block size that does not divide the rows) are
refused by qtool too, before anything is written; mixes that need a type the engine does not
have yet (IQ1_S / IQ1_M) are refused with a message.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from pathlib import Path
from typing import Any

import pytest

from qtool.api import quantize_file
from qtool.errors import QtoolError

DATA = Path(__file__).parent / "data" / "quantize"
MANIFEST: dict[str, dict[str, Any]] = json.loads((DATA / "llama_quantize_lattice_sha256.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lattice-models")
    out = {}
    for name in ("tiny-256", "tiny-320"):
        out[name] = d / f"{name}.gguf"
        out[name].write_bytes(lzma.open(DATA / f"{name}.gguf.xz").read())
    return out


@pytest.mark.parametrize("case", sorted(MANIFEST))
def test_case(case: str, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = MANIFEST[case]
    args = ref["args"]
    kw = {"imatrix": args[1]} if args[0] == "--imatrix" else {}
    monkeypatch.chdir(DATA)
    out = tmp_path / "out.gguf"
    if "error" in ref:
        with pytest.raises(QtoolError, match="requires an importance matrix|not a multiple of|no tensor type fallback"):
            quantize_file(models[ref["model"]], out, args[-1], nthreads=1, **kw)
        assert os.listdir(tmp_path) == []
        return
    quantize_file(models[ref["model"]], out, args[-1], nthreads=1, **kw)
    assert out.stat().st_size == ref["size"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref["sha256"], f"{case}: differs from llama-quantize"
