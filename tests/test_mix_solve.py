"""Budgeted mixes (qtool/mix/solve.py, `qtool mix solve`, `qtool quantize --target-bpw`)."""

from __future__ import annotations

import itertools
import json
import lzma
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from qtool.cli import cli
from qtool.gguf_io import GGUFModel
from qtool.mix import MixError, MixOptions, parse_tensor_type, specs_from_gguf
from qtool.mix.sensitivity import layer_factor, role_sensitivity, sensitivity
from qtool.mix.solve import (
    budget_bytes,
    build_items,
    candidate_types,
    lower_hull,
    parse_size,
    parse_types,
    sample_ranges,
    sample_rows_of,
    solve_budget,
)

DATA = Path(__file__).parent / "data" / "quantize"
IM256 = DATA / "tiny-256.imatrix.gguf"
IM320 = DATA / "tiny-320.imatrix.gguf"
TYPES = "q3_k,q4_k,q5_k,q6_k,q8_0,iq4_xs"  # fast kernels: the tests stay quick


@pytest.fixture(scope="module")
def tiny320(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/quantize/tiny-320.gguf: rows of 320 (no 256-block type fits: fallbacks)."""
    p = tmp_path_factory.mktemp("tiny320") / "tiny-320.gguf"
    p.write_bytes(lzma.open(DATA / "tiny-320.gguf.xz").read())
    return p


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"})


def tensor_data_bytes(path: Path) -> tuple[int, int, dict[str, str]]:
    with GGUFModel(path) as m:
        return (sum(t.n_bytes for t in m.tensors), sum(t.n_elements for t in m.tensors),
                {t.name: t.qtype.name for t in m.tensors})


# --- the solver on synthetic points --------------------------------------------------------------

def synthetic(n: int, seed: int = 0) -> tuple[list[list[int]], list[list[float]]]:
    """n tensors with 4..14 candidate points each: bytes growing with bpw, errors falling ~4x per
    bit, with noise (so some points are off the hull)."""
    rng = np.random.default_rng(seed)
    sizes, losses = [], []
    for _ in range(n):
        k = int(rng.integers(4, 15))
        n_w = int(rng.integers(1, 64)) * 4096
        bpw = np.sort(rng.uniform(2.0, 8.5, k))
        sizes.append([int(n_w * b / 8) for b in bpw])
        losses.append([float(n_w * rng.uniform(0.5, 2.0) * 4.0 ** -b * rng.uniform(0.8, 1.25)) for b in bpw])
    return sizes, losses


def total(sizes: list[list[int]], losses: list[list[float]], idx: list[int]) -> tuple[int, float]:
    return (sum(s[i] for s, i in zip(sizes, idx, strict=True)),
            sum(lo[i] for lo, i in zip(losses, idx, strict=True)))


def test_solver_700_tensors_under_a_second_and_never_over_budget() -> None:
    sizes, losses = synthetic(700)
    lo = sum(min(s) for s in sizes)
    hi = sum(max(s) for s in sizes)
    for frac in (0.0, 0.1, 0.37, 0.5, 0.83, 1.0):
        budget = int(lo + frac * (hi - lo))
        t0 = time.perf_counter()
        idx = solve_budget(sizes, losses, budget)
        dt = time.perf_counter() - t0
        assert dt < 1.0, dt
        used, _ = total(sizes, losses, idx)
        assert used <= budget
        # within one tensor's step: no single change that fits the leftover lowers the loss
        left = budget - used
        for s, lo_, i in zip(sizes, losses, idx, strict=True):
            for j in range(len(s)):
                assert not (s[j] - s[i] <= left and lo_[j] < lo_[i]), (j, i)


def lp_bound(sizes: list[list[int]], losses: list[list[float]], budget: int) -> tuple[float, float]:
    """(the Lagrangian / LP relaxation's optimum, a lower bound of every mix's loss within the budget;
    the largest loss saved by one hull step)."""
    segs = []
    base_b = base_l = 0.0
    biggest = 0.0
    for s, lo in zip(sizes, losses, strict=True):
        h = lower_hull(np.array(s), np.array(lo))
        base_b += s[h[0]]
        base_l += lo[h[0]]
        for a, c in itertools.pairwise(h):
            segs.append(((lo[a] - lo[c]) / (s[c] - s[a]), s[c] - s[a], lo[a] - lo[c]))
            biggest = max(biggest, lo[a] - lo[c])
    left = budget - base_b
    for eff, db, dl in sorted(segs, key=lambda x: -x[0]):
        if db <= left:
            left -= db
            base_l -= dl
        else:
            base_l -= eff * left
            break
    return base_l, biggest


def test_solver_near_exact_against_the_lp_bound() -> None:
    """No mix within the budget has a lower loss than the LP relaxation; the solver is within one
    hull step of it (the Lagrangian greedy's guarantee), and within 0.5% on 700 tensors."""
    for n in (8, 40, 700):
        sizes, losses = synthetic(n, n)
        lo, hi = sum(min(s) for s in sizes), sum(max(s) for s in sizes)
        for frac in (0.05, 0.3, 0.6, 0.9):
            budget = int(lo + frac * (hi - lo))
            bound, step = lp_bound(sizes, losses, budget)
            used, got = total(sizes, losses, solve_budget(sizes, losses, budget))
            assert used <= budget
            assert bound <= got + 1e-6 * got <= bound + step + 1e-6 * got
            if n == 700:
                assert got <= bound * 1.005, (frac, got / bound)
    # the exact optimum of a small instance (exhaustive) is never below the bound, and the solver
    # finds it here
    sizes, losses = [[3, 5, 9], [2, 4, 7], [4, 6]], [[9.0, 5.0, 1.0], [8.0, 3.0, 2.0], [6.0, 1.0]]
    for budget in range(9, 26):
        best = min(total(sizes, losses, list(c))[1] for c in itertools.product(range(3), range(3), range(2))
                   if total(sizes, losses, list(c))[0] <= budget)
        assert total(sizes, losses, solve_budget(sizes, losses, budget))[1] == best, budget


def test_solver_big_tensor_step() -> None:
    """One tensor much larger than the others (token_embd): its step does not fit after the more
    efficient small steps, and taking it instead of some of them is better than filling the budget
    with the least efficient steps (the plain greedy's 32 against 14 here)."""
    sizes = [[1, 3]] * 20 + [[100, 140]] + [[1, 2]] * 20
    losses = [[2.0, 0.0]] * 20 + [[30.0, 0.0]] + [[0.2, 0.1]] * 20
    idx = solve_budget(sizes, losses, 210)
    used, loss = total(sizes, losses, idx)
    assert used <= 210 and idx[20] == 1 and loss == pytest.approx(14.0)


def test_solver_budget_too_small_is_an_error() -> None:
    with pytest.raises(MixError, match="too small"):
        solve_budget([[10, 20], [5, 7]], [[2.0, 1.0], [3.0, 1.0]], 14)
    assert solve_budget([[10, 20], [5, 7]], [[2.0, 1.0], [3.0, 1.0]], 15) == [0, 0]
    assert solve_budget([[10, 20], [5, 7]], [[2.0, 1.0], [3.0, 1.0]], 27) == [1, 1]
    assert solve_budget([[10, 20], [5, 7]], [[2.0, 1.0], [3.0, 1.0]], 17) == [0, 1]


def test_hull_drops_dominated_and_non_convex_points() -> None:
    b = np.array([10, 20, 30, 40, 25])
    loss = np.array([8.0, 4.0, 3.5, 0.5, 9.0])  # (25, 9) dominated; (30, 3.5) above the 20->40 line
    assert lower_hull(b, loss) == [0, 1, 3]


# --- budgets, candidates, sensitivities ------------------------------------------------------------

def test_parse_size_units() -> None:
    assert parse_size("2.5GiB") == int(2.5 * (1 << 30))
    assert parse_size("800MB") == 800_000_000
    assert parse_size("123456") == 123456
    assert parse_size("1.5 mib") == 1572864
    for bad in ("", "abc", "-3MB", "2 parsecs", "0"):
        with pytest.raises(MixError):
            parse_size(bad)
    assert budget_bytes(1000, target_bpw=4.0) == 500
    assert budget_bytes(1001, target_bpw=4.0) == 500  # rounded down: never over
    with pytest.raises(MixError, match="one of"):
        budget_bytes(1000, 4.0, "1MB")


def test_candidates() -> None:
    with_im = candidate_types("mainline", True)
    assert {"Q4_K", "IQ4_XS", "IQ2_XXS", "IQ1_S", "Q8_0"} <= set(with_im)
    assert "Q4_0" not in with_im and "F16" not in with_im
    without = candidate_types("mainline", False)
    assert not {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M", "IQ2_S", "IQ3_XXS"} & set(without)
    assert {"Q4_K", "IQ4_XS", "IQ3_S", "Q8_0"} <= set(without)
    assert parse_types(["q4_k,Q5_K", "q4_k"]) == ["Q4_K", "Q5_K"]
    with pytest.raises(MixError, match="invalid ggml_type"):
        parse_types("q4_k,q9_9")


def test_role_sensitivity_follows_llama_cpp_mixes() -> None:
    n = 32
    assert role_sensitivity("output.weight", n, True) == 4.0
    assert role_sensitivity("token_embd.weight", n, False) == 4.0  # tied to the output
    assert role_sensitivity("token_embd.weight", n, True) == 0.5
    assert role_sensitivity("blk.10.attn_v.weight", n, True) == 2.0
    assert role_sensitivity("blk.10.ffn_down.weight", n, True) == 2.0
    assert role_sensitivity("blk.10.attn_q.weight", n, True) == 1.0
    assert role_sensitivity("blk.0.ffn_down.weight", n, True) == 4.0  # first 1/16
    assert role_sensitivity("blk.3.ffn_up.weight", n, True) == 1.5  # first 1/8
    assert role_sensitivity("blk.31.attn_output.weight", n, True) == 2.25  # last 1/8
    assert layer_factor(None, n) == 1.0
    assert sensitivity("blk.0.ffn_down.weight", n, True, "flat") == 1.0


def test_sample_ranges() -> None:
    assert sample_ranges(100, 0) == [(0, 100)]
    assert sample_ranges(50, 64) == [(0, 50)]
    r = sample_ranges(49152, 64)
    assert len(r) == 8 and all(b - a == 8 for a, b in r) and r[0][0] == 0 and r[-1][1] == 49152
    scores = np.random.default_rng(1).random(1000)
    scores[[7, 500, 993]] = 50.0  # outlier rows: always in the sample, counted once
    rows, w = sample_rows_of(scores, 64)
    assert len(rows) == 64 and {7, 500, 993} <= set(rows.tolist()) and np.all(np.diff(rows) > 0)
    assert w[rows.tolist().index(500)] == 1.0 and w.sum() == pytest.approx(1000)
    rows, w = sample_rows_of(scores, 2000)
    assert len(rows) == 1000 and np.all(w == 1.0)


def test_items_fixed_tensors_and_fallbacks(tiny320: Path) -> None:
    """Rows of 320: Q4_K is replaced by its fallback Q5_0, Q6_K by Q8_0, IQ4_XS by IQ4_NL, as
    llama-quantize would; norms, --tensor-type and --output-tensor-type tensors are fixed."""
    with GGUFModel(tiny320) as m:
        tensors, info = specs_from_gguf(m)
    opts = MixOptions(tensor_types=[parse_tensor_type("attn_v=q8_0")], output_tensor_type="Q4_0")
    items = build_items(tensors, info, opts, parse_types(TYPES) or [], lambda n: True)
    by = {it.name: it for it in items}
    assert by["blk.0.attn_norm.weight"].fixed and by["blk.0.attn_v.weight"].fixed
    assert by["blk.0.attn_v.weight"].points[0].type == "Q8_0"
    assert by["output.weight"].fixed and by["output.weight"].points[0].type == "Q4_0"
    with pytest.raises(MixError, match="not a multiple of the block size of q6_k"):  # llama-quantize aborts
        build_items(tensors, info, MixOptions(output_tensor_type="Q6_K"), ["Q4_K"], lambda n: True)
    q = by["blk.0.attn_q.weight"]
    assert not q.fixed
    assert {p.type: p.requested for p in q.points} == {"Q4_0": "Q3_K", "Q5_0": "Q4_K", "Q5_1": "Q5_K",
                                                       "Q8_0": "Q6_K", "IQ4_NL": "IQ4_XS"}
    nofb = build_items(tensors, info, MixOptions(no_fallback=True), parse_types(TYPES) or [], lambda n: True)
    assert {p.type for p in {it.name: it for it in nofb}["blk.0.attn_q.weight"].points} == {"Q8_0"}
    with pytest.raises(MixError, match="mainline flavour only"):
        build_items(tensors, info, MixOptions(flavour="ik"), ["Q4_K"], lambda n: True)


# --- end to end ------------------------------------------------------------------------------------

def test_mix_solve_recipe_reproduces_and_meets_budget(tiny256: Path, tmp_path: Path) -> None:
    n_bytes, n_w, _ = tensor_data_bytes(tiny256)
    recipe = tmp_path / "r.toml"
    budget = int(5.0 * n_w / 8)
    r = invoke("mix", "solve", str(tiny256), "--imatrix", str(IM256), "--target-bpw", "5.0", "--types", TYPES,
               "--sample-rows", "16", "-t", "1", "--json", "-o", str(recipe))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["budget_bytes"] == budget and doc["bytes"] <= budget
    assert doc["tensors"][0]["name"] and doc["recipe"] == recipe.read_text()
    free = [t for t in doc["tensors"] if not t["fixed"]]
    assert free and all(t["predicted_error"] is not None for t in free)
    # within one tensor's step of the budget
    left = budget - doc["bytes"]
    for t in free:
        cur = t["bytes"]
        assert not any(c["bytes"] - cur <= left and c["error"] < t["predicted_error"] for c in t["candidates"])
    # mix show --recipe gives the same types and size
    r = invoke("mix", "show", str(tiny256), "--recipe", str(recipe), "--imatrix", str(IM256), "--json")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert {t["name"]: t["type"] for t in shown["tensors"]} == {t["name"]: t["type"].upper() for t in doc["tensors"]}
    assert shown["totals"]["bytes"] == doc["bytes"]


def test_quantize_target_bpw_equals_quantize_with_the_recipe(tiny256: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.gguf"
    r = invoke("quantize", "--imatrix", str(IM256), str(tiny256), str(out), "--target-size", "700KiB",
               "--types", TYPES, "--sample-rows", "16", "-q", "-t", "1")
    assert r.exit_code == 0, r.output
    size, _, types = tensor_data_bytes(out)
    assert size <= 700 * 1024
    recipe = tmp_path / "r.toml"
    r = invoke("mix", "solve", str(tiny256), "--imatrix", str(IM256), "--target-size", "700KiB", "--types", TYPES,
               "--sample-rows", "16", "-t", "1", "-o", str(recipe), "-q")
    assert r.exit_code == 0, r.output
    out2 = tmp_path / "r.gguf"
    r = invoke("quantize", "--imatrix", str(IM256), "--recipe", str(recipe), str(tiny256), str(out2), "-q")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == out2.read_bytes()
    assert len(set(types.values())) > 2  # a real mix, not one type


def test_solved_mix_beats_q4_k_m_at_its_size(tiny256: Path) -> None:
    """With every row measured (the prediction is the real error), the solved mix for the bpw of
    Q4_K_M's mix has no more bytes and a lower weighted error (flat sensitivity: the plain sum)."""
    r = invoke("mix", "show", str(tiny256), "Q4_K_M", "--imatrix", str(IM256), "--json")
    ft = json.loads(r.stdout)
    budget = ft["totals"]["bytes"]
    ft_types = {t["name"]: t["type"] for t in ft["tensors"]}
    types = ",".join(sorted(set(ft_types.values()) - {"F32"} | {"Q5_K", "Q8_0"}))
    n_w = tensor_data_bytes(tiny256)[1]
    bpw = 8.0 * budget / n_w  # the bpw llama-quantize's summary gives the Q4_K_M file: no larger
    r = invoke("mix", "solve", str(tiny256), "--imatrix", str(IM256), "--target-bpw", repr(bpw),
               "--types", types, "--sensitivity", "flat", "--sample-rows", "0", "-t", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["bytes"] <= budget
    err_ft = 0.0
    for t in doc["tensors"]:
        if t["fixed"]:
            continue
        pts = {c["type"].upper(): c["error"] for c in t["candidates"]}
        err_ft += pts[ft_types[t["name"]]]
    assert doc["predicted_error"] < err_ft


def test_refusals(tiny256: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    r = invoke("quantize", str(tiny256), str(out), "Q4_K_M", "--target-bpw", "4")
    assert r.exit_code == 2 and "not both" in r.output
    r = invoke("mix", "solve", str(tiny256), "--types", TYPES)
    assert r.exit_code == 2 and "--target-bpw" in r.output
    r = invoke("mix", "solve", str(tiny256), "--target-bpw", "1.0", "--types", "q4_k", "--sample-rows", "4")
    assert r.exit_code == 1 and "too small" in r.output and "Traceback" not in r.output
    r = invoke("mix", "solve", str(tiny256), "--target-bpw", "four")
    assert r.exit_code == 2 and "not a number" in r.output
    r = invoke("mix", "solve", str(tiny256), "--target-size", "4 parsecs")
    assert r.exit_code == 1 and "cannot read" in r.output
    r = invoke("mix", "solve", str(tiny256), "--target-bpw", "4", "--types", "iq2_xxs")
    assert r.exit_code == 1 and "no candidate" in r.output
    assert not out.exists()


def test_moe_budget_with_per_expert_imatrix(tmp_path: Path) -> None:
    """A synthetic MoE (3-D expert tensors, a per-expert imatrix with one expert never routed):
    --target-bpw is met and the quantized file matches the plan."""
    import sys

    sys.path.insert(0, str(DATA))
    from moe_fixture import make_imatrix, make_model

    model, im = tmp_path / "moe.gguf", tmp_path / "moe-imatrix.gguf"
    make_model(model)
    make_imatrix(im)
    _, n_w, _ = tensor_data_bytes(model)
    out = tmp_path / "moe-q.gguf"
    r = invoke("quantize", "--imatrix", str(im), str(model), str(out), "--target-bpw", "4.25", "--types", TYPES,
               "--sample-rows", "32", "-q", "-t", "1", "--json")
    assert r.exit_code == 0, r.output
    size, n_w2, types = tensor_data_bytes(out)
    assert n_w2 == n_w and size <= int(4.25 * n_w / 8)
    exps = [t for n, t in types.items() if "_exps" in n]
    assert exps and not {"F16", "F32"} & set(exps)
    assert json.loads(r.stdout)["size_out"] == size
