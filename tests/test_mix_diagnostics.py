"""Rule diagnostics (unmatched, shadowed, ignored rules; --strict), `mix show --explain`, fallbacks
and --no-fallback, through the library and the real CLI (`qtool mix show`, `qtool quantize`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.gguf_io import GGUFModel
from qtool.mix import Plan, check_plan, plan, specs_from_gguf
from qtool.mix.diagnostics import IGNORED, OK, SHADOWED, UNMATCHED, fallbacks, rule_reports, rule_warnings
from qtool.mix.explain import explain
from qtool.mix.options import MixError, build_options


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama with an untied output, rows of 256; ffn_down rows of 96 (fallbacks)."""
    path = tmp_path_factory.mktemp("diag") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in (("llama.block_count", 2), ("llama.attention.head_count", 4),
                 ("llama.attention.head_count_kv", 1), ("llama.embedding_length", 256)):
        w.add_uint32(k, v)
    w.add_file_type(1)
    ts = [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output.weight", (256, 64))]
    for i in range(2):
        p = f"blk.{i}."
        ts += [(p + "attn_norm.weight", (256,)), (p + "attn_q.weight", (256, 256)), (p + "attn_k.weight", (256, 64)),
               (p + "attn_v.weight", (256, 64)), (p + "attn_output.weight", (256, 256)),
               (p + "ffn_up.weight", (256, 96)), (p + "ffn_down.weight", (96, 256))]
    rng = np.random.default_rng(0)
    for name, ne in ts:
        dt = np.float32 if len(ne) == 1 else np.float16
        w.add_tensor(name, rng.standard_normal(tuple(reversed(ne))).astype(dt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_plan(model: Path, ftype: str, **kw: Any) -> Plan:
    opts = build_options(**kw)
    with GGUFModel(model, flavour=opts.flavour) as m:
        tensors, info = specs_from_gguf(m)
    return plan(tensors, info, ftype, opts)


def kinds(p: Plan) -> list[str]:
    return [r.kind for r in rule_reports(p)]


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


# --- rule diagnostics -----------------------------------------------------------------------------


def test_unmatched_rule(model: Path) -> None:
    p = make_plan(model, "Q4_K_M", tensor_type=["attn_q=q8_0", "attn_qq=q6_k"])
    reps = rule_reports(p)
    assert [r.kind for r in reps] == [OK, UNMATCHED]
    assert reps[0].decided == ["blk.0.attn_q.weight", "blk.1.attn_q.weight"]
    assert reps[1].message == r"rule #2 (--tensor-type attn_qq=q6_k) matches no tensor"
    assert rule_warnings(p) == [reps[1].message]


def test_unmatched_hint_for_case(model: Path) -> None:
    # --custom-q keeps the pattern as typed (llama-quantize lower-cases only --tensor-type)
    p = make_plan(model, "Q4_K_M", custom_q=["ATTN_Q=q8_0"])
    assert rule_warnings(p) == ["rule #1 (--custom-q ATTN_Q=q8_0) matches no tensor (ignoring case it would match 2)"]


def test_shadowed_rule(model: Path) -> None:
    p = make_plan(model, "Q4_K_M", tensor_type=["attn_q=q8_0", r"blk\.0\.attn_q=q6_k"])
    assert kinds(p) == [OK, SHADOWED]
    w = rule_warnings(p)
    assert len(w) == 1 and w[0].startswith(r"rule #2 (--tensor-type blk\.0\.attn_q=q6_k) is always shadowed")
    assert "rule #1 (--tensor-type attn_q=q8_0) decides blk.0.attn_q.weight" in w[0]
    assert p.by_name("blk.0.attn_q.weight").type == "Q8_0"  # first match wins


def test_partly_shadowed_rule_is_not_a_warning(model: Path) -> None:
    # the specific rule first: both decide tensors
    p = make_plan(model, "Q4_K_M", tensor_type=[r"blk\.0\.attn_q=q6_k", "attn_q=q8_0"])
    assert kinds(p) == [OK, OK] and rule_warnings(p) == []
    assert p.by_name("blk.0.attn_q.weight").type == "Q6_K" and p.by_name("blk.1.attn_q.weight").type == "Q8_0"


def test_recipe_rule_shadowed_by_command_line(model: Path, tmp_path: Path) -> None:
    r = tmp_path / "r.toml"
    r.write_text("base = 'Q4_K_M'\n[[rules]]\npattern = 'ffn_down'\ntype = 'q8_0'\n")
    p = make_plan(model, "Q4_K_M", tensor_type=["ffn=q5_0"], recipe=str(r))
    reps = rule_reports(p)
    assert [r.kind for r in reps] == [OK, SHADOWED]
    assert reps[1].shadowed == {0: ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]}
    assert "recipe rule 1 ffn_down=q8_0" in reps[1].message


def test_ignored_float_base_type(model: Path) -> None:
    p = make_plan(model, "F16", tensor_type=["attn_q=q8_0"])
    reps = rule_reports(p)
    assert [r.kind for r in reps] == [IGNORED]
    assert list(reps[0].ignored) == ["float base type F16: llama-quantize applies no rule"]
    assert "ignored for every tensor it matches (2)" in reps[0].message
    assert p.by_name("blk.0.attn_q.weight").type == "F16"


def test_ignored_never_quantized(model: Path) -> None:
    p = make_plan(model, "Q4_K_M", tensor_type=["norm=q8_0"])
    reps = rule_reports(p)
    assert [r.kind for r in reps] == [IGNORED]
    assert list(reps[0].ignored) == ["never quantized: 1-D tensor (only 2-D and 3-D tensors are quantized)"]
    assert len(reps[0].ignored[list(reps[0].ignored)[0]]) == 3


def test_pure_semantics_differ_between_flavours(model: Path) -> None:
    # mainline applies --tensor-type rules under --pure; ik_llama.cpp consults no --custom-q rule
    main = make_plan(model, "Q4_K_M", tensor_type=["attn_q=q8_0"], pure=True)
    assert kinds(main) == [OK] and main.by_name("blk.0.attn_q.weight").type == "Q8_0"
    ik = make_plan(model, "Q4_K_M", flavour="ik", custom_q=["attn_q=q8_0"], pure=True)
    reps = rule_reports(ik)
    assert [r.kind for r in reps] == [IGNORED]
    assert list(reps[0].ignored) == ["--pure: ik_llama.cpp consults no --custom-q rule"]
    assert ik.by_name("blk.0.attn_q.weight").type == "Q4_K"


def test_ignored_by_output_tensor_type(model: Path) -> None:
    for kw in ({}, {"flavour": "ik"}):
        key = "custom_q" if kw else "tensor_type"
        p = make_plan(model, "Q4_K_M", output_tensor_type="q4_0", **{key: [r"^output\.weight=q8_0"]}, **kw)
        reps = rule_reports(p)
        assert [r.kind for r in reps] == [IGNORED], kw
        assert "--output-tensor-type" in list(reps[0].ignored)[0]
        assert p.by_name("output.weight").type == "Q4_0"


def test_rule_matching_only_pruned_layers(model: Path) -> None:
    p = make_plan(model, "Q4_K_M", prune_layers="1", tensor_type=[r"blk\.1\.attn_q=q8_0"])
    reps = rule_reports(p)
    assert reps[0].kind == IGNORED and reps[0].pruned == ["blk.1.attn_q.weight"]
    assert "matches only tensors of pruned layers" in reps[0].message


def test_no_rules_no_rule_warnings(model: Path) -> None:
    p = make_plan(model, "Q8_0")
    assert rule_reports(p) == [] and check_plan(p, build_options()) == []


def test_strict_library(model: Path) -> None:
    opts = build_options(tensor_type=["nothing=q8_0"], strict=True)
    p = make_plan(model, "Q4_K_M", tensor_type=["nothing=q8_0"])
    with pytest.raises(MixError, match=r"--strict: rule #1 \(--tensor-type nothing=q8_0\) matches no tensor") as e:
        check_plan(p, opts)
    assert e.value.option == "--strict"


def test_cli_warnings_and_strict(model: Path, tmp_path: Path) -> None:
    args = ["--tensor-type", "attn_q=q8_0", "--tensor-type", r"blk\.0\.attn_q=q6_k", "--tensor-type", "zzz=q4_0"]
    r = run("mix", "show", str(model), "Q4_K_M", "--json", *args)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert [x["kind"] for x in d["rules"]] == ["ok", "shadowed", "unmatched"]
    assert "rule #3 (--tensor-type zzz=q4_0) matches no tensor" in d["warnings"]
    r = run("mix", "show", str(model), "Q4_K_M", "--strict", *args)
    assert r.exit_code == 1 and "--strict: 2 rules have no effect" in r.output
    out = tmp_path / "o.gguf"
    for extra in ([], ["--dry-run"]):
        r = run("quantize", "--strict", *args, *extra, str(model), str(out), "Q4_K_M", "1")
        assert r.exit_code == 1, r.output
        assert "matches no tensor" in r.output and "always shadowed" in r.output
        assert not out.exists() and list(tmp_path.iterdir()) == []
    r = run("quantize", *args, str(model), str(out), "Q4_K_M", "1")  # warnings only
    assert r.exit_code == 0, r.output
    assert "warning: rule #3 (--tensor-type zzz=q4_0) matches no tensor" in r.stderr.replace("\n", " ")
    assert out.exists()


# --- explain --------------------------------------------------------------------------------------


def test_explain_chain_rule_then_fallback(model: Path) -> None:
    p = make_plan(model, "Q4_K_M", tensor_type=["attn_q=q8_0"], custom_q=["ffn=q5_k", "ffn_down=q6_k"])
    ex = explain(p, "blk.0.ffn_down.weight")
    src = [(ln.source, ln.rule, ln.matched, ln.decided, ln.type) for ln in ex.lines]
    assert src == [
        ("quantizable", None, None, False, None),
        ("ftype default", None, None, True, "Q4_K"),
        ("rules", None, None, False, None),
        ("rule", 1, False, False, None),
        ("rule", 2, True, True, "Q5_K"),
        ("rule", 3, True, False, "Q6_K"),
        ("ftype mix", None, None, False, None),
        ("fallback", None, None, True, "Q5_1"),
    ]
    assert "shadowed by rule #2" in ex.lines[5].detail
    assert ex.decision.type == "Q5_1" and ex.verdict.startswith("fallback set it last")
    assert "row length 96 not divisible by 256 (q5_k) -> q5_1" in ex.lines[-1].detail


def test_explain_mix_and_not_quantized(model: Path) -> None:
    p = make_plan(model, "Q4_K_M", tensor_type=["norm=q8_0"])
    ex = explain(p, "blk.1.attn_v.weight")
    mix = [ln for ln in ex.lines if ln.source == "ftype mix"]
    assert mix[0].decided and mix[0].type == "Q6_K" and "last 1/8 of layers" in mix[0].detail
    ex = explain(p, "blk.0.attn_norm.weight")
    assert ex.lines[0].detail == "no: 1-D tensor (only 2-D and 3-D tensors are quantized)"
    assert any(ln.rule == 1 and ln.matched and "ignored" in ln.detail for ln in ex.lines)
    assert ex.verdict.startswith("the tensor is never quantized")


def test_explain_ik_rule_replaces_mix(model: Path) -> None:
    p = make_plan(model, "Q4_K_M", flavour="ik", custom_q=["attn_v=q8_0"])
    ex = explain(p, "blk.1.attn_v.weight")
    order = [ln.source for ln in ex.lines if ln.decided]
    assert order == ["ftype default", "ftype mix", "rule"]  # ik: the mix runs, then the rule replaces it
    assert ex.decision.type == "Q8_0"


def test_explain_cli(model: Path) -> None:
    r = run("mix", "show", str(model), "Q4_K_M", "--tensor-type", "attn_q=q8_0", "--explain", "blk.0.attn_q.weight")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == "blk.0.attn_q.weight [256x256] f16 -> q8_0 (Q4_K_M, mainline)"
    assert "rule #1 (--tensor-type attn_q=q8_0): matches first: decides" in r.stdout
    assert r.stdout.rstrip().endswith("final: q8_0: rule set it last (--tensor-type attn_q=q8_0)")
    r = run("mix", "show", str(model), "Q4_K_M", "--explain", "blk.0.attn_q.weight", "--json")
    d = json.loads(r.stdout)
    assert d["type"] == "Q4_K" and d["chain"][-2]["source"] == "ftype mix"
    r = run("mix", "show", str(model), "Q4_K_M", "--explain", "blk.0.attn_qq.weight")
    assert r.exit_code == 1 and "did you mean blk.0.attn_q.weight" in r.output


# --- fallbacks ------------------------------------------------------------------------------------


def test_fallback_cost(model: Path) -> None:
    p = make_plan(model, "Q4_K_M")
    fb = fallbacks(p)
    assert [(f.name, f.type, f.row_length, f.fallback_type) for f in fb] == [
        ("blk.0.ffn_down.weight", "Q4_K", 96, "Q5_0"), ("blk.1.ffn_down.weight", "Q6_K", 96, "Q8_0")]
    # 256 rows of 96: Q5_0 3 blocks of 22 bytes vs Q4_K's 144 bytes per 256 -> 54 per row
    assert (fb[0].bytes, fb[0].nominal_bytes, fb[0].extra_bytes) == (256 * 66, 256 * 54, 3072)
    assert (fb[1].bytes, fb[1].nominal_bytes) == (256 * 102, int(256 * 96 * 210 / 256))
    w = check_plan(p, build_options())
    assert w[0] == "2 of 17 tensor(s) required fallback quantization"
    assert w[1].startswith("2 tensor(s) fall back to another type because their row length does not fit "
                           "(1 q4_k->q5_0, 1 q6_k->q8_0): +9024 bytes")


def test_no_fallback_refuses(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    r = run("quantize", "--no-fallback", str(model), str(out), "Q4_K_M", "1")
    assert r.exit_code == 1
    assert "--no-fallback: 2 tensor(s) would fall back" in r.output
    assert "blk.0.ffn_down.weight: q4_k, row length 96 (not a multiple of 256) -> q5_0 (+3072 bytes)" in r.output
    assert list(tmp_path.iterdir()) == []
    r = run("mix", "show", str(model), "Q4_K_M", "--no-fallback")
    assert r.exit_code == 1 and "blk.1.ffn_down.weight: q6_k" in r.output
    # a type whose block divides 96 needs no fallback
    r = run("quantize", "--no-fallback", "--tensor-type", "ffn_down=q8_0", str(model), str(out), "Q4_K_M", "1")
    assert r.exit_code == 0, r.output
    assert out.exists()


def test_fallback_summary_in_quantize_and_show(model: Path, tmp_path: Path) -> None:
    r = run("quantize", str(model), str(tmp_path / "o.gguf"), "Q4_K_M", "1")
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())
    assert "fallbacks │ 2 tensor(s): +0.01 MiB (+0.157 bpw)" in err
    assert "+9024 bytes" in err
    r = run("mix", "show", str(model), "Q4_K_M", "--json")
    d = json.loads(r.stdout)
    assert d["totals"]["fallback_extra_bytes"] == 9024
    assert [f["fallback_type"] for f in d["fallbacks"]] == ["Q5_0", "Q8_0"]


def test_rule_text_is_not_markup(model: Path) -> None:
    """Rule patterns hold [a-z]-like text that rich would take for markup: shown as typed."""
    r = run("mix", "show", str(model), "Q4_K_M", "--tensor-type", r"blk\.[a-z]=q8_0")
    assert r.exit_code == 0, r.output
    assert r"warning: rule #1 (--tensor-type blk\.[a-z]=q8_0) matches no tensor" in r.stderr
    assert r"--tensor-type blk\.[a-z]=q8_0 │       0 │        0 │       0" in r.stdout
