"""Mainline's ftypes on a tiny Mixtral-style MoE model with a per-expert imatrix (one expert never
routed): qtool's file equals llama-quantize's byte for byte (manifest made by
tests/data/quantize/make_moe_refs.py), so the 3-D expert tensors take the right per-expert slice
of the imatrix (sums over counts, ones for an unrouted expert) in every i-quant and k-quant."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from qtool.api import quantize_file

DATA = Path(__file__).parent / "data" / "quantize"
sys.path.insert(0, str(DATA))
from moe_fixture import make_imatrix, make_model  # noqa: E402

MANIFEST: dict[str, Any] = json.loads((DATA / "llama_quantize_moe_sha256.json").read_text())


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("moe")
    model, imat = d / "tiny-moe.gguf", d / "tiny-moe.imatrix.gguf"
    make_model(model)
    make_imatrix(imat)
    assert _sha(model) == MANIFEST["model_sha256"], "the generated model is not the one the manifest was made from"
    assert _sha(imat) == MANIFEST["imatrix_sha256"], "the generated imatrix is not the one the manifest was made from"
    return model, imat


@pytest.mark.parametrize("ftype", sorted(MANIFEST["cases"]))
def test_moe_case(ftype: str, fixture: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = MANIFEST["cases"][ftype]
    model, imat = fixture
    monkeypatch.chdir(imat.parent)  # the imatrix name is recorded in the file, as llama-quantize was given it
    out = tmp_path / "out.gguf"
    quantize_file(model, out, ftype, imatrix=imat.name, nthreads=1)
    assert out.stat().st_size == ref["size"]
    assert _sha(out) == ref["sha256"], f"{ftype}: differs from llama-quantize"
