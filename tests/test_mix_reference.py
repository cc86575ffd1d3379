"""The mix reproduces llama-quantize's tensor types, order and fallback count on real models.

tests/data/plans/<model>.json holds, for SmolLM2-135M (llama, rows of 576) and Gemma3-270M
(gemma3, rows of 640, tied embeddings), the tensors of the F16 model and llama-quantize
--dry-run's result for every ftype it lists, without and with an imatrix (make_plans.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qtool.mix import MixError, MixOptions, ModelInfo, TensorSpec, ftype_table, plan

DATA = Path(__file__).parent / "data" / "plans"
MODELS = ("smollm2", "gemma3-270m")


def _load(model: str) -> dict:
    return json.loads((DATA / f"{model}.json").read_text())


_CACHE = {m: _load(m) for m in MODELS}


def _cases() -> list[tuple[str, str]]:
    return [(m, run) for m in MODELS for run in sorted(_CACHE[m]["runs"])]


@pytest.mark.parametrize(("model", "run"), _cases())
def test_plan_matches_llama_quantize(model: str, run: str) -> None:
    data = _CACHE[model]
    tensors = [TensorSpec(n, tuple(s), t) for n, s, t in data["tensors"]]
    info = ModelInfo.from_kv(data["kv"])
    imatrix = run.endswith("-im")
    ftype = run[:-3] if imatrix else run
    ref = data["runs"][run]
    opts = MixOptions(has_imatrix=imatrix, dry_run=True)
    if "error" in ref:
        with pytest.raises(MixError, match="no tensor type fallback"):
            plan(tensors, info, ftype, opts)
        assert ref["error"].startswith("no tensor type fallback")
        return
    p = plan(tensors, info, ftype, opts)
    expected_names = [data["tensors"][i][0] for i in data["order"]]
    assert [d.name for d in p] == expected_names
    got = [d.type for d in p]
    want = ref["types"].split()
    bad = [(n, w, g) for n, w, g in zip(expected_names, want, got, strict=True) if w != g]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:5]}"
    assert p.n_fallback == ref["n_fallback"]


def test_every_listed_ftype_is_covered() -> None:
    names = {f.name for f in ftype_table("mainline")}
    for m in MODELS:
        runs = set(_CACHE[m]["runs"])
        assert names == {r for r in runs if not r.endswith("-im")}
        assert names == {r[:-3] for r in runs if r.endswith("-im")}
