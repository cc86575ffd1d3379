"""Issue 10, items 4, 6 and 8: one option table (click options, build_options, the API's keywords),
one error handler with --debug for every command, and options that mean the same in every command
(-t/--threads, --flavour, stats --format / --rmse, help texts, the text plot's axis)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import qtool
from qtool.api import QuantizeError, build_options, quantize_file
from qtool.cli import cli
from qtool.errors import QtoolError
from qtool.mix import MixError, MixOptions, parse_recipe
from qtool.mix.options import MIX_OPTIONS, OPTION_BY_FLAG, OPTIONS, RECIPE_OPTIONS

REPO = Path(__file__).resolve().parent.parent
IMATRIX = REPO / "tests" / "data" / "imatrix"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"})


@pytest.fixture
def garbage(tmp_path: Path) -> Path:
    """A file that is neither a GGUF model nor an imatrix."""
    p = tmp_path / "garbage.gguf"
    p.write_bytes(b"GGUF" + b"\xff" * 60)
    return p


# --- item 4: one option table ----------------------------------------------------------------------

def test_table_rows_are_consistent() -> None:
    fields = {f.name for f in dataclasses.fields(MixOptions)}
    assert len({o.name for o in OPTIONS}) == len({o.flag for o in OPTIONS}) == len(OPTIONS)
    for o in OPTIONS:
        assert o.flag.startswith("--") and o.help and o.kind in ("flag", "value", "multi")
        assert o.field is None or o.field in fields
    assert set(RECIPE_OPTIONS) == {  # what docs/mix.md lists for a recipe's [options]
        "pure", "leave_output_tensor", "output_tensor_type", "token_embedding_type", "per_layer_token_embedding_type",
        "ffn_gate_inp_type", "attn_q_type", "attn_k_type", "attn_v_type", "attn_qkv_type", "attn_output_type",
        "ffn_gate_type", "ffn_down_type", "ffn_up_type"}
    for key, o in RECIPE_OPTIONS.items():  # and recipes take exactly these
        value, want = (True, True) if o.kind == "flag" else ("q8_0", "Q8_0")
        assert parse_recipe({"flavour": "ik", "options": {key: value}}).options == {key: want}
    with pytest.raises(MixError, match="unknown option"):
        parse_recipe({"options": {"keep_split": True}})


@pytest.mark.parametrize("command", [["quantize"], ["mix", "show"]])
def test_click_options_come_from_the_table(command: list[str]) -> None:
    r = invoke(*command, "-h")
    assert r.exit_code == 0, r.output
    rows = [o for o in OPTIONS if o.cli and (o.field is not None or command == ["quantize"])]
    for o in rows:
        assert o.flag in r.output, o.flag
        assert " ".join(o.help.split()[:3]) in " ".join(r.output.split()), o.help
    assert "--attn-q-type" not in r.output  # API and recipes only (cli=False)


def test_api_keywords_come_from_the_table() -> None:
    for fn in (qtool.plan, quantize_file):
        params = inspect.signature(fn).parameters
        assert all(params[o.name].kind is inspect.Parameter.KEYWORD_ONLY for o in MIX_OPTIONS)
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert all(o.flag in (fn.__doc__ or "") for o in MIX_OPTIONS)
    with pytest.raises(TypeError, match="unknown option.*tensor_typ"):
        build_options(tensor_typ=["a=q8_0"])


def test_build_options_never_changes_its_argument() -> None:
    base = build_options(tensor_type=["attn_v=q8_0"])
    snapshot = dataclasses.replace(base, tensor_types=list(base.tensor_types))
    once = build_options(base, tensor_type=["ffn_down=q6_k"], custom_q=["attn=q4_0"], pure=True)
    twice = build_options(base, tensor_type=["ffn_down=q6_k"], custom_q=["attn=q4_0"], pure=True)
    assert base == snapshot and not base.pure
    assert once == twice
    assert [r.pattern for r in once.tensor_types] == ["attn_v", "ffn_down"]  # added after base's rules
    assert once.tensor_types is not base.tensor_types and once.custom_q is not base.custom_q
    # one rule given as a string, not a list of characters
    assert [r.pattern for r in build_options(tensor_type="ffn_up=q8_0").tensor_types] == ["ffn_up"]


def test_quantize_file_and_plan_do_not_change_the_callers_options(tiny256: Path, tmp_path: Path) -> None:
    opts = build_options(tensor_type=["ffn_down=q8_0"])
    before = dataclasses.replace(opts, tensor_types=list(opts.tensor_types))
    im = str(REPO / "tests" / "data" / "quantize" / "tiny-256.imatrix.gguf")
    r = quantize_file(tiny256, tmp_path / "o.gguf", "Q4_0", nthreads=1, imatrix=im, options=opts,
                      tensor_type=["attn_v=q8_0"])
    assert opts == before and not opts.has_imatrix and opts.imatrix_names is None
    p = qtool.plan(tiny256, "Q4_0", options=opts, imatrix=im, tensor_type=["attn_v=q8_0"])
    assert opts == before and not opts.dry_run
    assert [d.type for d in p] == [d.type for d in r.plan]


@pytest.mark.parametrize("kw,option", [
    ({"tensor_type": ["attn_q=q9_x"]}, "--tensor-type"),
    ({"tensor_type": ["attn_q"]}, "--tensor-type"),
    ({"output_tensor_type": "q3_kk"}, "--output-tensor-type"),
    ({"custom_q": ["a=q9"]}, "--custom-q"),
    ({"prune_layers": "1,x"}, "--prune-layers"),
    ({"prune_layers": ["x"]}, "--prune-layers"),
    ({"flavour": "gpu"}, "--flavour"),
    ({"recipe": "/nonexistent/r.toml"}, "--recipe"),
    ({"tensor_type_file": ["/nonexistent/t.txt"]}, "--tensor-type-file"),
])
def test_errors_carry_their_option(kw: dict, option: str, tiny256: Path, tmp_path: Path) -> None:
    with pytest.raises(MixError) as ei:
        build_options(**kw)
    assert ei.value.option == option and ei.value.message.startswith(option)
    with pytest.raises(QuantizeError) as qi:
        quantize_file(tiny256, tmp_path / "o.gguf", "Q4_0", **kw)
    assert qi.value.option == option and qi.value.message == ei.value.message
    assert os.listdir(tmp_path) == []


def test_option_errors_are_usage_errors(tiny256: Path, tmp_path: Path) -> None:
    """A bad option value: `Error: --OPTION: ...`, exit 2, for quantize and mix show alike."""
    bad_file = tmp_path / "rules.txt"
    bad_file.write_text("attn_q=q8_0 ffn_up\n")
    for cmd in (["quantize"], ["mix", "show"]):
        r = invoke(*cmd, str(tiny256), "Q4_0", "--tensor-type-file", str(bad_file))
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert "Error: --tensor-type-file rules.txt: malformed tensor type 'ffn_up'" in r.output


def test_llama_quantize_options_of_the_manifest_are_in_the_table() -> None:
    """Every llama-quantize option the byte-identity manifest uses is a row, with its arity."""
    manifest = json.loads((REPO / "tests" / "data" / "quantize" / "llama_quantize_sha256.json").read_text())
    seen = set()
    for case in manifest.values():
        it = iter(case["args"][:-1])
        for a in it:
            o = OPTION_BY_FLAG[a]
            seen.add(a)
            if o.kind != "flag":
                next(it)
    assert {"--imatrix", "--tensor-type", "--override-kv", "--pure"} <= seen


# --- item 6: one error handler, --debug everywhere --------------------------------------------------

def _error_cases(tiny256: Path, garbage: Path, tmp_path: Path) -> dict[str, list[str]]:
    """One user error (a QtoolError) per command."""
    return {
        "quantize": ["quantize", str(garbage), str(tmp_path / "o.gguf"), "Q8_0"],
        "mix show": ["mix", "show", str(garbage), "Q8_0"],
        "mix extract": ["mix", "extract", str(garbage)],
        "mix diff": ["mix", "diff", str(tiny256), str(garbage)],
        "imatrix convert": ["imatrix", "convert", str(garbage), str(tmp_path / "o.dat")],
        "imatrix merge": ["imatrix", "merge", str(IMATRIX / "moe-a.gguf"), str(garbage), "-o",
                          str(tmp_path / "o.gguf")],
        "imatrix show": ["imatrix", "show", str(garbage)],
        "stats": ["stats", str(garbage), "--type", "q8_0"],
    }


COMMANDS = ["quantize", "mix show", "mix extract", "mix diff", "imatrix convert", "imatrix merge", "imatrix show",
            "stats"]


@pytest.mark.parametrize("command", COMMANDS)
def test_user_errors_without_and_with_debug(command: str, tiny256: Path, garbage: Path, tmp_path: Path) -> None:
    args = _error_cases(tiny256, garbage, tmp_path)[command]
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert r.output.startswith("Error: ") and "garbage.gguf" in r.output
    r = invoke("--debug", *args)  # the error leaves the command with its traceback
    assert r.exit_code == 1 and isinstance(r.exception, QtoolError), (r.output, r.exception)
    assert sorted(os.listdir(tmp_path)) == ["garbage.gguf"]


def test_usage_errors_from_qtool_with_debug(tiny256: Path) -> None:
    """Errors about what was typed (an option's value, TYPE) are usage errors (exit 2), and raise
    with their traceback under --debug too."""
    for args in (["quantize", str(tiny256), "Q4_0", "--tensor-type", "attn_q"],
                 ["mix", "show", str(tiny256), "Q4_0", "--output-tensor-type", "q9"],
                 ["quantize", str(tiny256), "out.gguf", "Q9_9"]):
        r = invoke(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        r = invoke("--debug", *args)
        assert isinstance(r.exception, QtoolError), r.output


@pytest.mark.parametrize("command", ["stats", "imatrix show"])
def test_debug_prints_a_traceback(command: str, tiny256: Path, garbage: Path, tmp_path: Path) -> None:
    """The installed entry point: a traceback on stderr with --debug, one `Error:` line without."""
    args = _error_cases(tiny256, garbage, tmp_path)[command]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    plain = subprocess.run([sys.executable, "-m", "qtool", *args], capture_output=True, text=True, env=env,
                           timeout=120)
    debug = subprocess.run([sys.executable, "-m", "qtool", "--debug", *args], capture_output=True, text=True,
                           env=env, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and plain.stderr.startswith("Error: ")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "Error" in debug.stderr.strip().splitlines()[-1]  # the QtoolError subclass's name ends the traceback


def test_no_command_catches_exceptions_itself() -> None:
    """One handler: no command turns a QtoolError into a ClickException or catches Exception."""
    for path in (REPO / "qtool" / "commands").glob("*.py"):
        text = path.read_text()
        assert "except Exception" not in text, path.name
        assert "ClickException(" not in text, path.name
        assert "partition(\": \")" not in text, path.name


# --- item 8: the same options in every command --------------------------------------------------------

def test_threads_option_quantize(tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int | None] = []
    import qtool.commands.quantize_cmd as qc

    real = qc.quantize_file

    def spy(*a: object, **k: object) -> object:
        seen.append(k["nthreads"])  # type: ignore[arg-type]
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(qc, "quantize_file", spy)
    for args, want in (([], None), (["-t", "2"], 2), (["--threads", "1"], 1), (["1"], 1), (["2", "-t", "2"], 2)):
        out = tmp_path / "o.gguf"
        r = invoke("quantize", "-q", str(tiny256), str(out), "Q8_0", *args)
        assert r.exit_code == 0, r.output
        assert seen[-1] == want
        out.unlink()
    r = invoke("quantize", str(tiny256), str(tmp_path / "o.gguf"), "Q8_0", "1", "-t", "2")
    assert r.exit_code == 2 and "NTHREADS 1 and --threads 2 disagree" in r.output


def test_threads_option_stats(tiny256: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qtool.commands.stats_cmd as sc

    seen: list[object] = []
    real = sc.run_stats

    def spy(*a: object, **k: object) -> object:
        seen.append((k["threads"], [t.name for t in a[1]]))  # type: ignore[index]
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(sc, "run_stats", spy)
    for args, want in (([], None), (["-t", "2"], 2), (["--threads", "1"], 1), (["-n", "2"], 2)):
        r = invoke("stats", str(tiny256), "--type", "q8_0", "--json", *args)
        assert r.exit_code == 0, r.output
        assert seen[-1] == (want, ["Q8_0"])
    # a -t value that is not a number is a type (`qtool stats m.gguf --rmse -t q4_k -t iq4_k`)
    r = invoke("stats", str(tiny256), "-t", "q8_0,q4_0", "-t", "1", "--rmse")
    assert r.exit_code == 0, r.output
    assert seen[-1] == (1, ["Q8_0", "Q4_0"])
    assert "warning" not in r.stderr
    r = invoke("stats", str(tiny256), "-h")
    assert "-t, -n, --threads N" in r.output and "-T, --type TYPE" in r.output


def test_stats_formats(tiny256: Path) -> None:
    docs = {fmt: invoke("stats", str(tiny256), "--type", "q8_0,q4_0", "--format", fmt) for fmt in
            ("json", "csv", "ik", "rmse", "table")}
    assert all(r.exit_code == 0 for r in docs.values()), {k: r.output for k, r in docs.items()}
    for fmt, short in (("json", "--json"), ("csv", "--csv"), ("ik", "--ik"), ("rmse", "--rmse")):
        r = invoke("stats", str(tiny256), "--type", "q8_0,q4_0", short)
        assert r.stdout == docs[fmt].stdout, fmt
    doc = json.loads(docs["json"].stdout)
    lines = docs["rmse"].stdout.splitlines()
    assert [ln.split() for ln in lines] == [[t["type"], f"{t['bpw']:.4f}", f"{t['rmse']:.6e}"] for t in doc["types"]]
    assert [ln.split()[0] for ln in lines] == ["q8_0", "q4_0"] and docs["rmse"].stderr == ""
    assert "Totals per type" in docs["table"].stdout
    r = invoke("stats", str(tiny256), "--type", "q8_0", "--json", "--rmse")
    assert r.exit_code == 2 and "choose one output format" in r.output
    r = invoke("stats", str(tiny256), "--type", "q8_0", "--format", "rmse", "--plot", "-")
    assert r.exit_code == 0 and r.stdout.count("\n") == 1 and "bits per weight" in r.stderr


def test_flavour_default_is_mainline_everywhere(tiny256: Path) -> None:
    for cmd in (["quantize"], ["mix", "show"], ["mix", "ftypes"], ["stats"]):
        text = " ".join(invoke(*cmd, "-h").output.split())
        assert "--flavour [mainline|ik] Whose ftypes, rules and kernels" in text and "[default: mainline]" in text
    for cmd in (["mix", "extract"], ["mix", "diff"]):  # they describe files: default, the file's own
        text = " ".join(invoke(*cmd, "-h").output.split())
        assert "--flavour [mainline|ik]" in text and ("default: the file's" in text or "default: each file's" in text)
    assert json.loads(invoke("mix", "ftypes", "--json").stdout)["flavour"] == "mainline"
    assert json.loads(invoke("mix", "show", str(tiny256), "Q8_0", "--json").stdout)["flavour"] == "mainline"
    doc = json.loads(invoke("stats", str(tiny256), "--type", "q8_0", "--json").stdout)
    assert doc["flavour"] == "mainline"


def test_help_texts() -> None:
    show = " ".join(invoke("imatrix", "show", "-h").output.split())
    assert "[default: default]" not in show and "default is llama-imatrix's" in show
    assert "first GGUF input" not in show and "legacy .dat file" in show
    merge = " ".join(invoke("imatrix", "merge", "-h").output.split())
    assert "the first GGUF input's imatrix.chunk_size" in merge


def test_tqdm_is_not_a_dependency() -> None:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith("tqdm") for d in deps)
    for path in (REPO / "qtool").rglob("*.py"):
        assert "tqdm" not in path.read_text(), path


def test_progress_bar_draws_only_when_enabled() -> None:
    """commands.common.ProgressBar (quantize, dequantize, dequantize --from, mix solve): nothing
    without a terminal; with one, the tensor names and a total; stop() is safe twice."""
    import io

    from rich.console import Console

    from qtool.commands.common import ProgressBar, plan_values

    class D:
        def __init__(self, *shape: int) -> None:
            self.shape = shape

    assert plan_values([D(4, 8), D(16)]) == 48
    buf = io.StringIO()
    off = ProgressBar(Console(file=buf, force_terminal=True), "quantizing", enabled=False)
    off.start(10)
    off.advance("blk.0.attn_q.weight", 5)
    off.stop()
    assert buf.getvalue() == ""
    on = ProgressBar(Console(file=buf, force_terminal=True, width=100), "quantizing", enabled=True, prefix="x ")
    on.start(10)
    on.advance("blk.0.attn_q.weight", 5)
    on.stop()
    on.stop()
    assert "x blk.0.attn_q.weight" in buf.getvalue()
