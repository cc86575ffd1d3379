"""`qtool mix convert`: recipe TOML <-> --tensor-type-file <-> --custom-q, round trips, the
lower-casing of llama-quantize, refusals, and that a converted rule set plans the same types."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.gguf_io import GGUFModel
from qtool.mix import MixError, plan, specs_from_gguf
from qtool.mix.convert import (
    CUSTOM_Q,
    RECIPE,
    TENSOR_TYPE_FILE,
    RuleSet,
    convert,
    lowercase_safe,
    parse_custom_q_text,
    parse_tensor_type_text,
    read_rules,
)
from qtool.mix.options import TypeRule, build_options
from qtool.mix.recipe import load_recipe

RECIPE_TEXT = r"""base = "Q4_K_M"
description = "ffn_down up, attention first layers at q8_0"
[options]
output_tensor_type = "q8_0"
[[rules]]
pattern = 'blk\.(0|1)\.attn_(q|k|v)'
type = "q8_0"
[[rules]]
pattern = 'ffn_down'
type = "q6_k"
[[rules]]
pattern = 'blk\.[0-9]+\D+up'
type = "q5_0"
"""


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def pairs(rules: list[TypeRule]) -> list[tuple[str, str]]:
    return [(r.pattern, r.type) for r in rules]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("conv") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in (("llama.block_count", 3), ("llama.attention.head_count", 4),
                 ("llama.attention.head_count_kv", 1), ("llama.embedding_length", 256)):
        w.add_uint32(k, v)
    w.add_file_type(1)
    ts = [("token_embd.weight", (256, 64)), ("output.weight", (256, 64))]
    for i in range(3):
        p = f"blk.{i}."
        ts += [(p + "attn_q.weight", (256, 256)), (p + "attn_k.weight", (256, 64)), (p + "attn_v.weight", (256, 64)),
               (p + "attn_output.weight", (256, 256)), (p + "ffn_up.weight", (256, 256)),
               (p + "ffn_down.weight", (256, 256))]
    for name, ne in ts:
        w.add_tensor(name, np.zeros(tuple(reversed(ne)), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def types(model: Path, ftype: str, **kw: Any) -> dict[str, str]:
    opts = build_options(**kw)
    with GGUFModel(model, flavour=opts.flavour) as m:
        tensors, info = specs_from_gguf(m)
    return plan(tensors, info, ftype, opts).types()


def test_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "r.toml"
    src.write_text(RECIPE_TEXT)
    rs = read_rules(src)
    assert rs.base == "Q4_K_M" and rs.options == {"output_tensor_type": "Q8_0"}
    want = [(r"blk\.(0|1)\.attn_(q|k|v)", "Q8_0"), ("ffn_down", "Q6_K"), (r"blk\.[0-9]+\D+up", "Q5_0")]
    assert pairs(rs.rules) == want
    # recipe -> custom-q -> recipe: identical rules (custom-q keeps case)
    cq = convert(rs, CUSTOM_Q).text
    assert cq == r"blk\.(0|1)\.attn_(q|k|v)=q8_0,ffn_down=q6_k,blk\.[0-9]+\D+up=q5_0" + "\n"
    assert pairs(parse_custom_q_text(cq, "mainline")) == want
    # recipe -> tensor-type file: \D rewritten so that llama-quantize's lower-casing keeps it
    tt = convert(rs, TENSOR_TYPE_FILE).text
    assert tt.splitlines()[2] == r"blk\.[0-9]+[^\d]+up=q5_0"
    back = parse_tensor_type_text(tt)
    assert pairs(back)[:2] == want[:2]
    # -> recipe -> file again: byte-identical texts; recipe text parses back to the same rules
    rec = convert(RuleSet(back, "mainline", "Q4_K_M", "", {"output_tensor_type": "Q8_0"}), RECIPE).text
    (tmp_path / "b.toml").write_text(rec)
    r2 = load_recipe(tmp_path / "b.toml")
    assert pairs(r2.rules) == pairs(back) and r2.base == "Q4_K_M" and r2.options == {"output_tensor_type": "Q8_0"}
    assert convert(read_rules(tmp_path / "b.toml"), TENSOR_TYPE_FILE).text == tt
    # custom-q -> tensor-type -> custom-q
    assert convert(RuleSet(parse_custom_q_text(cq, "mainline")), CUSTOM_Q).text == cq


def test_rewritten_pattern_means_the_same() -> None:
    pat = r"blk\.[0-9]+\D+up\W\S"
    low = lowercase_safe(pat, "r")
    assert low == low.lower() and low == r"blk\.[0-9]+[^\d]+up[^\w][^\s]"
    names = ["blk.1.ffn_up.x", "blk.12.ffn_up..", "blk.1.ffn_up_", "blk.1up.a", "blk.7.ffn_up w", "blk.x.up.a"]
    for n in names:
        assert bool(re.search(pat, n)) == bool(re.search(low.lower(), n)), n


@pytest.mark.parametrize(("pattern", "to", "msg"), [
    (r"attn_Q", TENSOR_TYPE_FILE, "upper-case 'Q'"),
    (r"[\D]x", TENSOR_TYPE_FILE, r"'\\D' cannot be written in lower case"),
    (r"\Bx", TENSOR_TYPE_FILE, r"'\\B' cannot be written"),
    (r"blk\.[0-9]{1,2}\.x", CUSTOM_Q, "cannot hold ',' or '='"),
    (r"(?=x)", CUSTOM_Q, "cannot hold ',' or '='"),
    (r"(?=x)", TENSOR_TYPE_FILE, "white space or '='"),
    (r"a b", TENSOR_TYPE_FILE, "white space or '='"),
])
def test_refused(pattern: str, to: str, msg: str) -> None:
    with pytest.raises(MixError, match=msg):
        convert(RuleSet([TypeRule(pattern, "Q8_0", "recipe")]), to)


def test_shared_shell_form() -> None:
    text = """--custom-q "
# Token embedding and output tensors
token_embd\\.weight=q8_0
output\\.weight=q6_k

# routed experts
blk\\.[0-9]\\.ffn_down_exps\\.weight=iq3_k,blk\\.[0-9]\\.ffn_up_exps\\.weight=iq2_k,
"
"""
    rules = parse_custom_q_text(text)
    assert pairs(rules) == [(r"token_embd\.weight", "Q8_0"), (r"output\.weight", "Q6_K"),
                            (r"blk\.[0-9]\.ffn_down_exps\.weight", "IQ3_K"),
                            (r"blk\.[0-9]\.ffn_up_exps\.weight", "IQ2_K")]


def test_first_match_in_both_formats_plans_the_same(model: Path, tmp_path: Path) -> None:
    """Both tools take the first matching rule: converted rules keep their order and their plan."""
    src = tmp_path / "r.toml"
    src.write_text(RECIPE_TEXT)
    rs = read_rules(src)
    ref = types(model, "Q4_K_M", recipe=str(src))
    assert ref["blk.0.attn_v.weight"] == "Q8_0" and ref["blk.2.ffn_down.weight"] == "Q6_K"
    assert ref["blk.1.ffn_up.weight"] == "Q5_0" and ref["output.weight"] == "Q8_0"
    tt = tmp_path / "r.txt"
    tt.write_text(convert(rs, TENSOR_TYPE_FILE).text)
    assert types(model, "Q4_K_M", tensor_type_file=[str(tt)], output_tensor_type="q8_0") == ref
    cq = convert(rs, CUSTOM_Q).text.strip()
    assert types(model, "Q4_K_M", custom_q=[cq], output_tensor_type="q8_0") == ref
    # order matters (first match): the general rule first shadows the specific one
    gen_first = [TypeRule("attn", "Q4_0"), TypeRule(r"blk\.0\.attn_q", "Q8_0")]
    text = convert(RuleSet(gen_first), CUSTOM_Q).text.strip()
    assert text == r"attn=q4_0,blk\.0\.attn_q=q8_0"
    for fl in ("mainline", "ik"):
        assert types(model, "Q4_K_M", flavour=fl, custom_q=[text])["blk.0.attn_q.weight"] == "Q4_0"


def test_cli(tmp_path: Path) -> None:
    src = tmp_path / "r.toml"
    src.write_text(RECIPE_TEXT)
    out = tmp_path / "r.txt"
    r = run("mix", "convert", str(src), str(out))
    assert r.exit_code == 0, r.output
    assert out.read_text().splitlines()[1] == "ffn_down=q6_k"
    assert "pass TYPE Q4_K_M --output-tensor-type q8_0 on the command line" in r.stderr
    r = run("mix", "convert", str(out), "-", "--to", "custom-q")
    assert r.exit_code == 0 and r.stdout.startswith(r"blk\.(0|1)\.attn_(q|k|v)=q8_0,ffn_down=q6_k,")
    cq = tmp_path / "r.cq"
    r = run("mix", "convert", str(out), str(cq))
    assert r.exit_code == 0, r.output
    assert cq.read_text() == r"blk\.(0|1)\.attn_(q|k|v)=q8_0,ffn_down=q6_k,blk\.[0-9]+[^\d]+up=q5_0" + "\n"
    r = run("mix", "convert", str(cq), str(tmp_path / "back.toml"), "--flavour", "mainline")
    assert r.exit_code == 0, r.output
    assert pairs(load_recipe(tmp_path / "back.toml").rules) == pairs(parse_tensor_type_text(out.read_text()))
    r = run("mix", "convert", str(src), str(tmp_path / "x.unknown"))
    assert r.exit_code == 2 and "--to" in r.output
    r = run("mix", "convert", str(out), str(out), "--to", "tensor-type-file")
    assert r.exit_code == 1 and out.read_text().splitlines()[1] == "ffn_down=q6_k"  # never overwrites the input
