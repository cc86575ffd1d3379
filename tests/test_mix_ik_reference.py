"""The ik flavour against ik_llama.cpp's own llama-quantize --dry-run (tests/data/plans/ik_runs.json.gz).

1404 runs (ik_dryrun.py): every ftype ik's llama-quantize lists (87) on SmolLM2-135M, Gemma3-270M
and the synthetic llama / 8-expert qwen3moe / falcon / 80-layer llama, without and with an
importance matrix, plus --pure, --output-tensor-type, --token-embedding-type,
--leave-output-tensor, --custom-q, ik's per-role --*-type options and --ignore-imatrix-rules.
Types in file order, fallback counts, and the runs ik refuses (missing imatrix, unsupported row
length) must all agree.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from qtool.mix import (
    MixError,
    MixOptions,
    ModelInfo,
    TensorSpec,
    check_plan,
    ftype_names,
    parse_custom_q,
    parse_ggml_type,
    plan,
)

DATA = Path(__file__).parent / "data" / "plans"
RUNS = json.loads(gzip.open(DATA / "ik_runs.json.gz", "rt").read())["runs"]


def _models() -> dict[str, tuple[list[TensorSpec], ModelInfo]]:
    out = {}
    for m in ("smollm2", "gemma3-270m"):
        d = json.loads((DATA / f"{m}.json").read_text())
        out[m] = ([TensorSpec(n, tuple(s), t) for n, s, t in d["tensors"]], d["kv"])
    syn = json.loads(gzip.open(DATA / "synthetic.json.gz", "rt").read())
    for m, d in syn["models"].items():
        out[m] = ([TensorSpec(n, tuple(s), t) for n, s, t in d["tensors"]], d["kv"])
    return {k: (ts, ModelInfo.from_kv(kv)) for k, (ts, kv) in out.items()}


MODELS = _models()


def options(args: list[str], tensors: list[TensorSpec]) -> MixOptions:
    o = MixOptions(flavour="ik")
    it = iter(args)
    for a in it:
        if a == "--imatrix":
            next(it)
            o.has_imatrix = True
            o.imatrix_names = frozenset(t.name for t in tensors if len(t.shape) >= 2)
        elif a == "--pure":
            o.pure = True
        elif a == "--leave-output-tensor":
            o.leave_output_tensor = True
        elif a == "--ignore-imatrix-rules":
            o.ignore_imatrix_rules = True
        elif a == "--custom-q":
            o.custom_q = parse_custom_q(next(it))
        else:
            field = a.removeprefix("--").replace("-", "_")
            assert hasattr(o, field), a
            setattr(o, field, parse_ggml_type(next(it), "ik"))
    return o


@pytest.mark.parametrize("i", range(len(RUNS)),
                         ids=[f"{r['model']}-{r['ftype']}-{'_'.join(r['args'])}"[:80] for r in RUNS])
def test_ik_run(i: int) -> None:
    run = RUNS[i]
    tensors, info = MODELS[run["model"]]
    opts = options(run["args"], tensors)
    if "error" in run:
        with pytest.raises(MixError) as e:
            check_plan(plan(tensors, info, run["ftype"], opts), opts)
        want = {"imatrix": "mportance matrix", "size": "Unsupported tensor size"}[run["error"]]
        assert want in str(e.value)
        return
    p = plan(tensors, info, run["ftype"], opts)
    check_plan(p, opts)
    assert [d.name for d in p] == [t.name for t in tensors]
    want = run["types"].split()
    bad = [(d.name, w, d.type) for d, w in zip(p, want, strict=True) if w != d.type]
    assert not bad, f"{len(bad)} differ, e.g. {bad[:5]}"
    fb = [int(w.split()[0]) for w in p.warnings if "fallback" in w]
    assert (fb[0] if fb else 0) == run["n_fallback"]


def test_every_ik_ftype_is_covered() -> None:
    assert {r["ftype"] for r in RUNS} == set(ftype_names("ik"))
