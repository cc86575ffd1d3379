"""Unit tests of the mix library: parsers, recipes, precedence, reasons, checks, ik_llama.cpp rules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from qtool.mix import (
    MixError,
    MixOptions,
    ModelInfo,
    TensorSpec,
    check_plan,
    ftype_table,
    load_recipe,
    parse_custom_q,
    parse_ftype,
    parse_ggml_type,
    parse_prune_layers,
    parse_recipe,
    parse_tensor_type,
    parse_tensor_type_file,
    plan,
)
from qtool.mix.ftypes import FTypeError

DATA = Path(__file__).parent / "data" / "plans"


def smollm2() -> tuple[list[TensorSpec], ModelInfo]:
    d = json.loads((DATA / "smollm2.json").read_text())
    return [TensorSpec(n, tuple(s), t) for n, s, t in d["tensors"]], ModelInfo.from_kv(d["kv"])


def gemma3() -> tuple[list[TensorSpec], ModelInfo]:
    d = json.loads((DATA / "gemma3-270m.json").read_text())
    return [TensorSpec(n, tuple(s), t) for n, s, t in d["tensors"]], ModelInfo.from_kv(d["kv"])


def llama(n_layer: int = 8, n_embd: int = 256, n_ff: int = 512, output: bool = True,
          n_head: int = 8, n_head_kv: int = 2, src: str = "F16", arch: str = "llama",
          n_expert: int = 0) -> tuple[list[TensorSpec], ModelInfo]:
    """A small llama-like model in file order (tensors are never read: only names and shapes)."""
    ts = [TensorSpec("token_embd.weight", (n_embd, 1000), src), TensorSpec("output_norm.weight", (n_embd,), "F32")]
    if output:
        ts.append(TensorSpec("output.weight", (n_embd, 1000), src))
    for i in range(n_layer):
        p = f"blk.{i}."
        ts += [TensorSpec(p + "attn_norm.weight", (n_embd,), "F32"),
               TensorSpec(p + "attn_q.weight", (n_embd, n_embd), src),
               TensorSpec(p + "attn_k.weight", (n_embd, n_embd // 4), src),
               TensorSpec(p + "attn_v.weight", (n_embd, n_embd // 4), src),
               TensorSpec(p + "attn_output.weight", (n_embd, n_embd), src),
               TensorSpec(p + "ffn_norm.weight", (n_embd,), "F32")]
        if n_expert:
            ts += [TensorSpec(p + "ffn_gate_inp.weight", (n_embd, n_expert), "F32"),
                   TensorSpec(p + "ffn_gate_exps.weight", (n_embd, n_ff, n_expert), src),
                   TensorSpec(p + "ffn_up_exps.weight", (n_embd, n_ff, n_expert), src),
                   TensorSpec(p + "ffn_down_exps.weight", (n_ff, n_embd, n_expert), src)]
        else:
            ts += [TensorSpec(p + "ffn_gate.weight", (n_embd, n_ff), src),
                   TensorSpec(p + "ffn_up.weight", (n_embd, n_ff), src),
                   TensorSpec(p + "ffn_down.weight", (n_ff, n_embd), src)]
    kv = {"general.architecture": arch, f"{arch}.block_count": n_layer,
          f"{arch}.attention.head_count": n_head, f"{arch}.attention.head_count_kv": n_head_kv,
          f"{arch}.embedding_length": n_embd, f"{arch}.vocab_size": 1000}
    if n_expert:
        kv[f"{arch}.expert_count"] = n_expert
    return ts, ModelInfo.from_kv(kv)


# --- ftypes --------------------------------------------------------------------------------------


def test_parse_ftype_names_aliases_ids() -> None:
    assert parse_ftype("q4_k_m").name == "Q4_K_M"
    assert parse_ftype("Q4_K").key == "Q4_K_M" and parse_ftype("Q4_K").id == 15
    assert parse_ftype("15").name == "Q4_K"  # first row with id 15 is the alias
    assert parse_ftype("15abc").name == "Q4_K"  # std::stoi reads the leading integer
    assert parse_ftype(12).name == "Q3_K"
    assert parse_ftype("0").name == "F32"  # COPY comes after F32
    assert parse_ftype("copy").is_copy
    assert parse_ftype("IQ2_M").default_type == "IQ2_S"
    assert parse_ftype("iq3_xs").default_type == "IQ3_S"
    with pytest.raises(FTypeError, match="valid types: Q1_0, Q2_0, Q4_0") as e:
        parse_ftype("Q4_K_X")
    assert "IQ4_KS" not in str(e.value)
    with pytest.raises(FTypeError):
        parse_ftype("39")  # NVFP4 exists in llama.h but llama-quantize does not offer it


def test_ik_ftypes() -> None:
    assert parse_ftype("iq4_ks", "ik").id == 145
    assert parse_ftype("IQ3_KL", "ik").default_type == "IQ3_K"
    assert parse_ftype("38", "ik").name == "MXFP4"
    assert parse_ftype("38").name == "MXFP4_MOE"
    with pytest.raises(FTypeError, match="IQ4_KS"):
        parse_ftype("Q4_K_X", "ik")
    with pytest.raises(FTypeError):
        parse_ftype("IQ4_KS")
    ml = {f.name for f in ftype_table("mainline")}
    ik = {f.name for f in ftype_table("ik")}
    assert ml - ik == {"Q1_0", "Q2_0", "MXFP4_MOE", "TQ1_0", "TQ2_0"}
    assert len(ik) == 87 and len(ml) == 39


# --- rule parsers --------------------------------------------------------------------------------


def test_parse_tensor_type() -> None:
    r = parse_tensor_type(r"Blk\.0\.FFN_DOWN=Q6_k")
    assert (r.pattern, r.type) == (r"blk\.0\.ffn_down", "Q6_K")  # the name is lower-cased
    for bad, msg in (("attn_v", "malformed"), ("=q8_0", "missing tensor name"),
                     ("attn_v=", "missing quantization type"), ("attn_v=q9_0", "invalid ggml_type")):
        with pytest.raises(MixError, match=msg):
            parse_tensor_type(bad)
    with pytest.raises(MixError, match="valid types: .*q4_k"):
        parse_ggml_type("q4_kk")
    assert parse_ggml_type("iq4_k_r4", "ik") == "IQ4_K_R4"
    with pytest.raises(MixError):
        parse_ggml_type("iq4_k_r4")


def test_parse_tensor_type_first_equals() -> None:
    with pytest.raises(MixError, match="invalid ggml_type 'b=q8_0'"):
        parse_tensor_type("a=b=q8_0")


def test_parse_tensor_type_file(tmp_path: Path) -> None:
    f = tmp_path / "tt.txt"
    f.write_text("attn_q=q8_0\n\n  ffn_up=IQ4_XS output=q4_1\n")
    rules = parse_tensor_type_file(f)
    assert [(r.pattern, r.type) for r in rules] == [("attn_q", "Q8_0"), ("ffn_up", "IQ4_XS"), ("output", "Q4_1")]
    with pytest.raises(MixError, match="failed to open"):
        parse_tensor_type_file(tmp_path / "missing.txt")


def test_parse_custom_q_and_prune() -> None:
    rules = parse_custom_q(r"Blk\.[0-3]\.ffn_down=iq4_k,attn_v=q8_0")
    assert [(r.pattern, r.type) for r in rules] == [(r"Blk\.[0-3]\.ffn_down", "IQ4_K"), ("attn_v", "Q8_0")]
    with pytest.raises(MixError, match="invalid custom"):
        parse_custom_q("attn_v")
    with pytest.raises(MixError, match="invalid quantization type"):
        parse_custom_q("attn_v=q9")
    assert parse_prune_layers("5,1,3,1") == [1, 3, 5]
    with pytest.raises(MixError, match="invalid layer id"):
        parse_prune_layers("1,-2")
    with pytest.raises(MixError, match="invalid layer id"):
        parse_prune_layers("1,x")


# --- reasons and rules ---------------------------------------------------------------------------


def test_reasons_say_why() -> None:
    ts, info = smollm2()
    p = plan(ts, info, "Q4_K_M")
    assert p.by_name("blk.0.ffn_down.weight").reason == (
        "ffn_down layer 0 of 30: Q4_K_M uses Q6_K in the first 1/8 of layers")
    d = p.by_name("blk.4.ffn_down.weight")
    assert d.type == "Q4_K" and "not a use_more_bits layer" in d.reason
    d = p.by_name("blk.5.attn_v.weight")  # (5 - 3) % 3 == 2: use_more_bits
    assert d.type == "Q8_0" and d.fallback
    assert "every third layer in between" in d.reason
    assert "fallback: row length 576 not divisible by 256 (q6_k) -> q8_0" in d.reason
    d = p.by_name("output_norm.weight")
    assert not d.quantize and "1-D" in d.reason
    assert "tied" in p.by_name("token_embd.weight").reason


def test_tensor_type_rule_first_match_and_counters() -> None:
    ts, info = llama(n_layer=16)
    rules = [parse_tensor_type(r"blk\.[0-1]\.ffn_down=q2_k"), parse_tensor_type("ffn_down=q8_0")]
    p = plan(ts, info, "Q4_K_M", MixOptions(tensor_types=rules))
    assert p.by_name("blk.0.ffn_down.weight").type == "Q2_K"
    assert p.by_name("blk.0.ffn_down.weight").reason == r"--tensor-type blk\.[0-1]\.ffn_down=q2_k"
    assert p.by_name("blk.9.ffn_down.weight").type == "Q8_0"
    # a rule skips the mix for that tensor, so the attn_v counter does not advance
    p = plan(ts, info, "Q4_K_M", MixOptions(tensor_types=[parse_tensor_type(r"blk\.0\.attn_v=q8_0")]))
    base = plan(ts, info, "Q4_K_M")
    shifted = [d.type for d in p if "attn_v" in d.name][1:]
    unshifted = [d.type for d in base if "attn_v" in d.name][:-1]
    assert shifted == unshifted


def test_rules_ignored_for_float_ftypes_but_embedding_types_apply() -> None:
    ts, info = llama()
    opts = MixOptions(tensor_types=[parse_tensor_type("attn=q8_0")], output_tensor_type="Q6_K",
                      token_embedding_type="Q4_0")
    p = plan(ts, info, "F16", opts)
    assert p.by_name("blk.0.attn_q.weight").type == "F16"
    assert p.by_name("output.weight").type == "Q6_K"
    assert p.by_name("token_embd.weight").type == "Q4_0"


def test_output_and_embedding_options() -> None:
    ts, info = llama()
    p = plan(ts, info, "Q4_K_M")
    assert p.by_name("output.weight").type == "Q6_K"
    assert p.by_name("token_embd.weight").type == "Q4_K"  # untied: the default type
    p = plan(ts, info, "Q4_K_M", MixOptions(leave_output_tensor=True))
    assert p.by_name("output.weight").type == "F16" and "--leave-output-tensor" in p.by_name("output.weight").reason
    p = plan(ts, info, "Q4_K_M", MixOptions(output_tensor_type="IQ4_XS"))
    assert p.by_name("output.weight").reason == "--output-tensor-type iq4_xs"
    p = plan(ts, info, "Q4_K_M", MixOptions(pure=True))
    assert {d.type for d in p if d.allows_quantization} == {"Q4_K"}


def test_moe_rules() -> None:
    ts, info = llama(n_layer=4, n_expert=8, arch="qwen3moe", n_head=4, n_head_kv=4)
    p = plan(ts, info, "Q4_K_M")
    assert p.by_name("blk.0.attn_v.weight").type == "Q8_0"  # 8 experts
    assert p.by_name("blk.0.attn_k.weight").type == "Q8_0"
    assert p.by_name("blk.0.ffn_gate_inp.weight").type == "F32"
    assert p.by_name("blk.3.ffn_down_exps.weight").type == "Q6_K"  # layer from the name: last 1/8
    assert p.by_name("blk.1.ffn_down_exps.weight").type == "Q4_K"
    p = plan(ts, info, "MXFP4_MOE")
    assert p.by_name("blk.0.ffn_up_exps.weight").type == "MXFP4"
    assert p.by_name("blk.0.attn_q.weight").type == "Q8_0"
    bad = [*ts, TensorSpec("mm.ffn_down.weight", (512, 256), "F16")]
    with pytest.raises(MixError, match="Failed to determine layer"):
        plan(bad, info, "Q4_K_M")


def test_falcon_and_70b() -> None:
    ts, info = llama(arch="falcon")
    p = plan(ts, info, "Q4_K_M")
    assert p.by_name("output.weight").type == "Q8_0"
    assert p.by_name("blk.0.ffn_down.weight").type == "Q5_K"  # falcon: use_more_bits -> Q5_K
    assert p.by_name("blk.2.ffn_down.weight").type == "Q4_K"
    ts, info = llama(n_layer=80, n_embd=256, n_ff=256)
    assert info.is_70b_mainline()
    p = plan(ts, info, "Q3_K_S")
    assert p.by_name("blk.3.attn_v.weight").type == "Q5_K"
    assert "70B" in p.by_name("blk.3.attn_v.weight").reason


def test_fallback_to_f16_and_no_fallback() -> None:
    ts = [TensorSpec("blk.0.ffn_up.weight", (40, 16), "F16"), TensorSpec("blk.0.ffn_down.weight", (96, 64), "F16")]
    info = ModelInfo("llama", 1)
    p = plan(ts, info, "Q4_K_S")
    assert [d.type for d in p] == ["Q5_0", "F16"]  # sorted by name: ffn_down first
    assert "must use F16" in p[1].reason
    assert p.n_fallback == 2
    with pytest.raises(MixError, match="no tensor type fallback is defined for type q1_0"):
        plan(ts, info, "Q1_0")


def test_n_dims_and_names() -> None:
    ts = [TensorSpec("blk.0.attn_vec.weight", (256, 1), "F16"), TensorSpec("blk.0.x.scale", (256, 4), "F16"),
          TensorSpec("abcde", (256, 4), "F16"), TensorSpec("position_embd.weight", (256, 64), "F16"),
          TensorSpec("blk.0.ssm_conv1d.weight", (256, 4), "F32")]
    p = plan(ts, ModelInfo("llama", 1), "Q8_0", MixOptions())
    got = {d.name: d.type for d in p}
    assert got["blk.0.attn_vec.weight"] == "F16"  # ne = [256, 1]: one dimension for ggml_n_dims
    assert got["blk.0.x.scale"] == "F16"
    assert got["abcde"] == "Q8_0"  # 5 characters: rfind("weight") == size - 6 wraps around, as in C++
    assert got["position_embd.weight"] == "F16"
    assert got["blk.0.ssm_conv1d.weight"] == "F32"


def test_order_prune_keep_split() -> None:
    ts, info = llama(n_layer=12)
    p = plan(ts, info, "Q8_0")
    names = [d.name for d in p]
    assert names[:3] == ["output.weight", "output_norm.weight", "token_embd.weight"]
    assert names.index("blk.2.attn_k.weight") < names.index("blk.10.attn_k.weight")
    p = plan(ts, info, "Q8_0", MixOptions(prune_layers=[1, 5]))
    assert p.block_count == 10 and len(p.pruned) == 2 * 9
    d = p.by_name("blk.4.attn_q.weight")
    assert d.source_name == "blk.6.attn_q.weight"
    p = plan(ts, info, "Q8_0", MixOptions(prune_layers=[1, 5], has_imatrix=True))
    assert p.by_name("blk.4.attn_q.weight").imatrix_name == "blk.6.attn_q.weight"
    split = [dataclasses.replace(t, split=i // 40, offset=i) for i, t in enumerate(ts)]
    p = plan(split, info, "Q8_0", MixOptions(keep_split=True))
    assert [d.name for d in p] == [t.name for t in ts]


def test_copy_file_type() -> None:
    ts, info = llama()
    p = plan(ts, info, "COPY")
    assert all(not d.quantize for d in p)
    assert p.file_type == 1 | 1024  # guessed from the most common type (F16), marked GUESSED
    info.kv["general.file_type"] = 7
    assert plan(ts, info, "COPY").file_type == 7
    assert plan(ts, info, "Q4_K_M").file_type == 15


# --- checks --------------------------------------------------------------------------------------


def test_check_plan_imatrix_and_requantize() -> None:
    ts, info = smollm2()
    p = plan(ts, info, "IQ2_XS")
    with pytest.raises(MixError, match="requires an importance matrix"):
        check_plan(p, MixOptions())
    check_plan(p, MixOptions(dry_run=True))
    assert p.by_name("blk.3.ffn_down.weight").type == "IQ2_XS"  # 1536-long rows: no fallback
    names = frozenset(d.name for d in p if d.name != "blk.3.ffn_down.weight")
    p = plan(ts, info, "IQ2_XS", MixOptions(imatrix_names=names))
    with pytest.raises(MixError, match="Missing importance matrix for tensor blk.3.ffn_down.weight"):
        check_plan(p, MixOptions(imatrix_names=names))
    p = plan(ts, info, "Q8_0", MixOptions(imatrix_names=names))
    assert check_plan(p, MixOptions(imatrix_names=names)) == ["did not find imatrix weights for blk.3.ffn_down.weight"]

    q8 = [dataclasses.replace(t, type="Q8_0") if t.type == "F16" else t for t in ts]
    check_plan(plan(q8, info, "Q8_0"), MixOptions())  # same type: copied, not requantized
    p = plan(q8, info, "Q4_0")
    with pytest.raises(MixError, match="requantizing from type q8_0 is disabled"):
        check_plan(p, MixOptions())
    check_plan(p, MixOptions(allow_requantize=True))
    bad = [TensorSpec("blk.0.idx.weight", (64, 64), "I32")]
    with pytest.raises(MixError, match="cannot dequantize/convert tensor type i32"):
        check_plan(plan(bad, ModelInfo("llama", 1), "Q8_0"), MixOptions())


# --- recipes -------------------------------------------------------------------------------------


RECIPE = """
base = "q4_k_m"
description = "test"
[options]
output_tensor_type = "q8_0"
[[rules]]
pattern = 'ffn_down'
type = "q6_k"
[[rules]]
pattern = 'blk\\.(0|1)\\.attn_v'
type = "q8_0"
"""


def test_recipe(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text(RECIPE)
    r = load_recipe(f)
    assert r.base == "Q4_K_M" and r.options == {"output_tensor_type": "Q8_0"}
    assert [(x.pattern, x.type) for x in r.rules] == [("ffn_down", "Q6_K"), (r"blk\.(0|1)\.attn_v", "Q8_0")]
    ts, info = llama(n_layer=16)
    p = plan(ts, info, None, MixOptions(recipe=r))
    assert p.ftype.name == "Q4_K_M"
    assert {d.type for d in p if "ffn_down" in d.name} == {"Q6_K"}
    assert p.by_name("blk.0.ffn_down.weight").reason == "recipe rule 1: ffn_down=q6_k"
    assert p.by_name("blk.1.attn_v.weight").type == "Q8_0"
    assert p.by_name("output.weight").type == "Q8_0"
    # the command line comes first: its rules win, its options are kept, its TYPE replaces base
    opts = MixOptions(recipe=r, tensor_types=[parse_tensor_type("ffn_down=q5_k")], output_tensor_type="Q4_0")
    p = plan(ts, info, "Q5_K_S", opts)
    assert p.ftype.name == "Q5_K_S"
    assert {d.type for d in p if "ffn_down" in d.name} == {"Q5_K"}
    assert p.by_name("output.weight").type == "Q4_0"


@pytest.mark.parametrize(("doc", "msg"), [
    ({"base": "Q4_K_X"}, "base: invalid ftype"),
    ({"bsae": "Q4_K_M"}, "unknown key"),
    ({"rules": [{"pattern": "x", "type": "q9"}]}, "rule 1: invalid ggml_type"),
    ({"rules": [{"pattern": "(", "type": "q8_0"}]}, "invalid regular expression"),
    ({"rules": [{"pattern": "x"}]}, "type must be"),
    ({"rules": [{"pattern": "x", "type": "q8_0", "when": 1}]}, "unknown key"),
    ({"options": {"purr": True}}, "unknown option"),
    ({"options": {"pure": "yes"}}, "true or false"),
    ({"flavour": "other"}, "flavour must be"),
])
def test_recipe_errors(doc: dict, msg: str) -> None:
    with pytest.raises(MixError, match=msg):
        parse_recipe(doc)


def test_recipe_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("base = ")
    with pytest.raises(MixError, match="not valid TOML"):
        load_recipe(f)
    with pytest.raises(MixError, match="cannot read"):
        load_recipe(tmp_path / "none.toml")
    with pytest.raises(MixError, match="no TYPE given"):
        plan(*llama(), None, MixOptions(recipe=parse_recipe({})))
    with pytest.raises(MixError, match="ik flavour"):
        plan(*llama(), None, MixOptions(recipe=parse_recipe({"flavour": "ik", "base": "IQ4_K"})))


# --- ik_llama.cpp ---------------------------------------------------------------------------------


def ik(**kw: object) -> MixOptions:
    return MixOptions(flavour="ik", dry_run=True, **kw)  # type: ignore[arg-type]


def test_ik_rules_differ_from_mainline() -> None:
    ts, info = gemma3()  # n_gqa 4, rows of 640
    p = plan(ts, info, "Q4_K_M", ik())
    # attn_v of a non-use_more_bits layer: Q4_K -> Q5_K (n_gqa >= 4) -> Q6_0 (640 % 256)
    d = p.by_name("blk.3.attn_v.weight")
    assert d.type == "Q6_0" and d.fallback
    assert [x.name for x in p] == [t.name for t in ts]  # ik keeps the file order
    ml = plan(ts, info, "Q4_K_M")
    assert ml.by_name("blk.3.attn_v.weight").type == "Q5_0"
    assert p.by_name("token_embd.weight").type == "Q8_0"  # tied, 640 % 256 != 0


def test_ik_moe_and_iq_k() -> None:
    ts, info = llama(n_layer=4, n_expert=4, arch="qwen3moe", n_head=4, n_head_kv=4)
    p = plan(ts, info, "IQ4_K", ik())
    assert p.by_name("blk.0.attn_v.weight").type == "Q8_0"  # n_expert >= 4
    assert p.by_name("blk.0.attn_k.weight").type == "Q8_0"
    assert p.by_name("blk.0.attn_output.weight").type == "Q5_K"
    assert p.by_name("blk.0.ffn_down_exps.weight").type == "IQ4_K"
    ts, info = llama(n_head=8, n_head_kv=2)
    p = plan(ts, info, "IQ3_KL", ik())
    assert p.by_name("blk.0.attn_v.weight").type == "IQ5_K"
    assert p.by_name("output.weight").type == "Q6_K"
    assert p.by_name("blk.0.ffn_down.weight").type == "IQ4_KS"  # use_more_bits
    assert p.by_name("blk.2.ffn_down.weight").type == "IQ3_K"


def test_ik_custom_q_after_rules() -> None:
    ts, info = llama(n_layer=16)
    opts = ik(custom_q=parse_custom_q(r"blk\.0\.attn_v=iq6_k,ffn_down=iq4_k_r4"))
    p = plan(ts, info, "Q4_K_M", opts)
    assert p.by_name("blk.0.attn_v.weight").type == "IQ6_K"
    assert p.by_name("blk.0.ffn_down.weight").type == "IQ4_K_R4"
    # the mix still ran for blk.0.attn_v, so the counters advanced as without the rule
    base = plan(ts, info, "Q4_K_M", ik())
    assert [d.type for d in p if "attn_v" in d.name][1:] == [d.type for d in base if "attn_v" in d.name][1:]
    assert plan(ts, info, "Q4_K_M", dataclasses.replace(opts, pure=True)).by_name(
        "blk.0.attn_v.weight").type == "Q4_K"  # --pure skips llama_tensor_get_type, custom rules too


def test_ik_interleaved_and_embeddings() -> None:
    ts, info = llama()
    p = plan(ts, info, "Q4_0_R8", ik())
    assert p.by_name("token_embd.weight").type == "Q4_0"  # no row-interleaved embeddings
    assert p.by_name("blk.0.attn_q.weight").type == "Q4_0_R8"
    odd = [TensorSpec("blk.0.ffn_up.weight", (256, 12), "F16")]
    p = plan(odd, ModelInfo("llama", 1), "Q4_0_R8", ik())
    assert p[0].type == "Q4_0"  # 12 rows are not a multiple of 8
    p = plan(ts, info, "IQ4_KS", ik(token_embedding_type="IQ4_KS_R4"))
    assert p.by_name("token_embd.weight").type == "IQ4_KS"


def test_ik_checks() -> None:
    ts, info = llama()
    p = plan(ts, info, "IQ2_XS", ik())
    with pytest.raises(MixError, match="needs an importance matrix"):
        check_plan(p, ik())
    check_plan(p, ik(ignore_imatrix_rules=True))
    with pytest.raises(MixError, match="prune-layers"):
        plan(ts, info, "Q4_0", ik(prune_layers=[1]))


def test_ik_attention_count_sanity_check() -> None:
    ts, info = llama(n_layer=4)
    extra = [*ts, TensorSpec("blk.0.extra.attn_v.weight", (256, 64), "F16")]
    with pytest.raises(MixError, match="n_attention_wv is unexpected"):
        plan(extra, info, "Q4_K_M", ik())
    plan(extra, info, "Q4_K_M")  # mainline has no such check
    info.arch = "deci"
    plan(extra, info, "Q4_K_M", ik())


def test_filter_imatrix_names_and_mainline_custom_q() -> None:
    from qtool.mix import filter_imatrix_names

    names = ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "output.weight"]
    assert filter_imatrix_names(names, exclude=["ffn"]) == ["blk.0.attn_q.weight", "output.weight"]
    assert filter_imatrix_names(names, include=["attn", "output"]) == ["blk.0.attn_q.weight", "output.weight"]
    assert filter_imatrix_names(names, include=["nothing"]) == []
    with pytest.raises(MixError, match="cannot be used together"):
        filter_imatrix_names(names, include=["a"], exclude=["b"])
    # mainline flavour: --custom-q rules act like --tensor-type rules placed after them
    ts, info = llama()
    opts = MixOptions(tensor_types=[parse_tensor_type("attn_v=q8_0")],
                      custom_q=parse_custom_q("attn_v=q4_0,Attn_Q=q5_1,attn_q=q6_k"))
    p = plan(ts, info, "Q4_K_M", opts)
    assert p.by_name("blk.0.attn_v.weight").type == "Q8_0"
    assert p.by_name("blk.0.attn_q.weight").type == "Q6_K"  # custom-q patterns keep their case
    assert p.by_name("blk.0.attn_q.weight").reason == "--custom-q attn_q=q6_k"
