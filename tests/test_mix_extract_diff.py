"""mix extract / mix diff on GGUF files carrying the types real llama-quantize runs produced.

tests/data/plans/synthetic.json.gz holds synthetic models and, for many ftypes and options, the
per-tensor types llama-quantize --dry-run chose. Each test file here is such a model written
with those types (zero bytes): `extract` must give a recipe that the planner turns back into
exactly those types for the original (F16) model, and `diff` must list exactly the tensors
whose types differ.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from click.testing import CliRunner

from qtool.cli import cli
from qtool.gguf_io import GGUFStreamWriter, OutTensor, kv_f32, kv_str, kv_u32
from qtool.mix import MixOptions, ModelInfo, TensorSpec, parse_ftype, parse_recipe, plan
from qtool.mix.diff import diff_models, tensor_group
from qtool.mix.extract import extract_recipe, fold_names, range_regex
from qtool.quants import get_type

REPO = Path(__file__).resolve().parents[1]
DATA = json.loads(gzip.open(REPO / "tests" / "data" / "plans" / "synthetic.json.gz", "rt").read())


def _kvs(kv: dict, ftype_id: int, imatrix: bool) -> list:
    out = []
    for k, v in kv.items():
        if k == "general.file_type":
            continue
        if isinstance(v, str):
            out.append(kv_str(k, v))
        elif isinstance(v, float):
            out.append(kv_f32(k, v))
        else:
            out.append(kv_u32(k, int(v)))
    out.append(kv_u32("general.file_type", ftype_id))
    if imatrix:
        out.append(kv_str("quantize.imatrix.file", "imatrix.dat"))
    return out


def write_typed(path: Path, model: dict, names: list[str], types: list[str], ftype_id: int,
                imatrix: bool = False) -> Path:
    """The model's tensors with the given types (zero bytes), in the given order."""
    shapes = {n: tuple(s) for n, s, _ in model["tensors"]}
    outs = [OutTensor(n, shapes[n], get_type(t)) for n, t in zip(names, types, strict=True)]
    with GGUFStreamWriter(path, _kvs(model["kv"], ftype_id, imatrix), outs) as w:
        for o in outs:
            w.write_tensor_chunk(np.zeros(o.n_bytes, np.uint8))
    return path


def _runs(max_per_model: int | None = None) -> list[int]:
    """Runs with types and no renaming (--prune-layers) or copying, a few per model and option."""
    picked, seen = [], {}
    for i, r in enumerate(DATA["runs"]):
        if "types" not in r or r["ftype"] == "COPY" or "--prune-layers" in r["args"]:
            continue
        key = (r["model"], r["args"][0] if r["args"] else "")
        seen[key] = seen.get(key, 0) + 1
        if max_per_model is None or seen[key] <= max_per_model:
            picked.append(i)
    return picked


def _run_id(i: int) -> str:
    r = DATA["runs"][i]
    return f"{i}-{r['model']}-{r['ftype']}-{'_'.join(a for a in r['args'] if not a.endswith('.dat'))}"[:80]


@pytest.mark.parametrize("i", _runs(3), ids=_run_id)
def test_extract_reproduces_llama_quantize_types(i: int, tmp_path: Path) -> None:
    run = DATA["runs"][i]
    model = DATA["models"][run["model"]]
    names = run.get("names") or [t[0] for t in model["tensors"]]
    types = run["types"].split()
    imatrix = "--imatrix" in run["args"]
    p = write_typed(tmp_path / "q.gguf", model, names, types, parse_ftype(run["ftype"]).id, imatrix)
    ex = extract_recipe(str(p))
    assert ex.verified, ex.mismatches
    # feed the recipe, as --recipe, to the planner with the original model's tensors
    recipe = parse_recipe(tomllib.loads(ex.toml))
    src = [TensorSpec(n, tuple(s), t) for n, s, t in model["tensors"]]
    got = plan(src, ModelInfo.from_kv(model["kv"]), None, MixOptions(recipe=recipe, has_imatrix=imatrix))
    assert {d.name: d.type for d in got} == dict(zip(names, types, strict=True))
    # a rule only where the ftype's mix alone gets it wrong: none for plain runs
    if not run["args"] or run["args"][0] == "--imatrix":
        assert ex.rules == [], ex.toml
    full = extract_recipe(str(p), full=True)
    assert full.verified
    got = plan(src, ModelInfo.from_kv(model["kv"]), None,
               MixOptions(recipe=parse_recipe(tomllib.loads(full.toml)), has_imatrix=imatrix))
    assert [d.type for d in got] == [dict(zip(names, types, strict=True))[d.name] for d in got]


def test_extract_with_overrides_writes_folded_rules(tmp_path: Path) -> None:
    """A Q4_K_M file whose ffn_down were forced to q8_0 and a few attn_v to q5_k."""
    model = DATA["models"]["llama-untied"]
    src = [TensorSpec(n, tuple(s), t) for n, s, t in model["tensors"]]
    info = ModelInfo.from_kv(model["kv"])
    recipe = parse_recipe({"base": "Q4_K_M", "rules": [{"pattern": "ffn_down", "type": "q8_0"},
                                                        {"pattern": r"blk\.(1|2|3|12)\.attn_v", "type": "q5_k"}]})
    p0 = plan(src, info, None, MixOptions(recipe=recipe))
    path = write_typed(tmp_path / "custom.gguf", model, [d.name for d in p0], [d.type for d in p0], 15)
    ex = extract_recipe(str(path))
    assert ex.verified and ex.base == "Q4_K_M"
    doc = tomllib.loads(ex.toml)
    assert doc["base"] == "Q4_K_M" and doc["flavour"] == "mainline"
    pats = {r["pattern"]: r["type"] for r in doc["rules"]}
    assert pats[r"^blk\.(?:[0-9]|1[0-5])\.ffn_down\.weight$"] == "q8_0"
    assert pats[r"^blk\.(?:[1-3]|12)\.attn_v\.weight$"] == "q5_k"
    # the CLI writes the same recipe and says it was checked
    r = CliRunner().invoke(cli, ["mix", "extract", str(path), "-o", str(tmp_path / "r.toml")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.toml").read_text() == ex.toml
    assert "reproduces all" in r.output


def test_range_regex_and_folding() -> None:
    for a in range(0, 125):
        for b in range(a, 125, 3):
            rx = re.compile("(?:" + "|".join(range_regex(a, b)) + ")")
            assert [n for n in range(0, 1100) if rx.fullmatch(str(n))] == list(range(a, b + 1)), (a, b)
    names = ["token_embd.weight"] + [f"blk.{i}.ffn_down.weight" for i in (0, 1, 2, 5, 10, 11, 12, 13, 99, 100)]
    pats = fold_names(names)
    assert pats[0] == r"^token_embd\.weight$"
    assert pats[1] == r"^blk\.(?:[0-2]|5|1[0-3]|99|100)\.ffn_down\.weight$"
    every = [f"blk.{i}.{k}.weight" for i in range(120) for k in ("ffn_down", "ffn_up", "attn_v")]
    for n in every:
        assert any(re.search(p, n) for p in pats) == (n in names)


def _pair(tmp_path: Path, model_name: str, a: str, b: str, args: tuple = ()) -> tuple[Path, Path, list[str]]:
    model = DATA["models"][model_name]
    runs = {r["ftype"]: r for r in DATA["runs"] if r["model"] == model_name and r["args"] == list(args)
            and "types" in r}
    ra, rb = runs[a], runs[b]
    names = ra.get("names") or [t[0] for t in model["tensors"]]
    assert (rb.get("names") or names) == names
    ta, tb = ra["types"].split(), rb["types"].split()
    pa = write_typed(tmp_path / f"{a}.gguf", model, names, ta, parse_ftype(a).id)
    pb = write_typed(tmp_path / f"{b}.gguf", model, names, tb, parse_ftype(b).id)
    return pa, pb, [n for n, x, y in zip(names, ta, tb, strict=True) if x != y]


@pytest.mark.parametrize("model_name", ["llama-untied", "qwen3moe", "falcon"])
def test_diff_lists_exactly_the_differing_tensors(model_name: str, tmp_path: Path) -> None:
    pa, pb, want = _pair(tmp_path, model_name, "Q4_K_M", "Q4_K_S")
    assert want  # the two mixes differ somewhere
    rep = diff_models([str(pa), str(pb)])
    assert rep.differing == want
    listed = [n for g in rep.groups for r in g.rows for n in r.names]
    assert sorted(listed) == sorted(want)
    for g in rep.groups:
        for r in g.rows:
            assert len(set(r.types)) > 1
    n_all = len(DATA["models"][model_name]["tensors"])
    assert sum(g.n_identical for g in rep.groups) == n_all - len(want)
    assert [sum(g.bytes[i] for g in rep.groups) for i in range(2)] == [f.n_bytes for f in rep.files]
    full = diff_models([str(pa), str(pb)], show_all=True)
    assert sum(len(r.names) for g in full.groups for r in g.rows) == n_all


def test_diff_groups_and_cli(tmp_path: Path) -> None:
    pa, pb, want = _pair(tmp_path, "qwen3moe", "Q4_K_M", "Q3_K_M")
    r = CliRunner().invoke(cli, ["mix", "diff", str(pa), str(pb), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["differing"] == want
    assert [f["file_type"] for f in doc["files"]] == [15, 12]
    groups = {g["group"]: g for g in doc["groups"]}
    assert set(groups) <= {"embeddings", "attention", "dense layers", "moe layers", "other"}
    moe = [n for row in groups["moe layers"]["rows"] for n in row["names"]]
    assert moe and all("_exps" in n or "gate_inp" in n or "shexp" in n or "ffn" in n for n in moe)
    r = CliRunner().invoke(cli, ["mix", "diff", str(pa), str(pb)])
    assert r.exit_code == 0 and f"{len(want)} tensor(s) differ" in r.output
    r = CliRunner().invoke(cli, ["mix", "diff", str(pa)])
    assert r.exit_code == 2


def test_tensor_groups() -> None:
    moe = {3}
    assert tensor_group("token_embd.weight", moe) == "embeddings"
    assert tensor_group("output.weight", moe) == "embeddings"
    assert tensor_group("output_norm.weight", moe) == "other"
    assert tensor_group("blk.0.attn_q.weight", moe) == "attention"
    assert tensor_group("blk.0.ffn_down.weight", moe) == "dense layers"
    assert tensor_group("blk.3.ffn_down_exps.weight", moe) == "moe layers"
    assert tensor_group("blk.3.ffn_gate_inp.weight", moe) == "moe layers"
    assert tensor_group("blk.3.ffn_up_shexp.weight", moe) == "moe layers"
    assert tensor_group("blk.3.ffn_norm.weight", moe) == "other"


def test_cli_subprocess(tmp_path: Path) -> None:
    pa, pb, want = _pair(tmp_path, "falcon", "Q5_K_M", "Q5_K_S")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "qtool", "mix", "diff", str(pa), str(pb), "--json"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["differing"] == want
    p = subprocess.run([sys.executable, "-m", "qtool", "mix", "extract", str(pa)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert tomllib.loads(p.stdout)["base"] == "Q5_K_M" and "reproduces all" in p.stderr
