"""`qtool mix`: show the per-tensor type plan of an ftype (`mix show`), list ftypes (`mix ftypes`).

`mix show` takes llama-quantize's rule options from the option table (commands/common.py), as
`qtool quantize` does; `render_plan` prints the plan table (or JSON) that `qtool quantize
--dry-run` shows too.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..mix import Plan, check_plan, ftype_table, plan, specs_from_gguf
from ..mix.diagnostics import rule_reports
from ..mix.ftypes import implied_flavour
from .common import flavour_option, mix_options, options_from_cli


def tensor_bytes(shape: tuple[int, ...], type_name: str) -> int | None:
    """Bytes of a tensor of this shape and type (None for a type qtool's table lacks)."""
    from ..quants.types import get_type

    try:
        qt = get_type(type_name)
    except KeyError:
        return None
    n_rows = 1
    for d in shape[1:]:
        n_rows *= d
    try:
        return qt.row_bytes(shape[0]) * n_rows
    except ValueError:
        return None


def plan_rows(p: Plan) -> list[dict[str, Any]]:
    """One dict per tensor: what `mix show --json` prints."""
    rows = []
    for d in p:
        rows.append({
            "name": d.name, "source_name": d.source_name, "shape": list(d.shape), "src_type": d.src_type,
            "type": d.type, "quantize": d.quantize, "bytes_in": tensor_bytes(d.shape, d.src_type),
            "bytes": tensor_bytes(d.shape, d.type), "reason": d.reason, "fallback": d.fallback,
            "requires_imatrix": d.requires_imatrix,
        })
    return rows


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1048576:.2f}"


def render_plan(p: Plan, as_json: bool, warnings: list[str], show_all: bool = True) -> None:
    """Print the plan: a rich table and totals, or one JSON document."""
    rows = plan_rows(p)
    n_el = sum(_n(r["shape"]) for r in rows)
    size_in = sum(r["bytes_in"] or 0 for r in rows)
    size_out = None if any(r["bytes"] is None for r in rows) else sum(r["bytes"] for r in rows)
    totals = {"tensors": len(rows), "quantized": sum(r["quantize"] for r in rows),
              "fallbacks": p.n_fallback, "bytes_in": size_in, "bytes": size_out,
              "bpw_in": 8.0 * size_in / n_el if n_el else 0.0,
              "bpw": (8.0 * size_out / n_el if n_el else 0.0) if size_out is not None else None}
    from ..mix.diagnostics import fallbacks

    fb = fallbacks(p)
    totals["fallback_extra_bytes"] = sum(f.extra_bytes for f in fb)
    totals["fallback_extra_bpw"] = 8.0 * totals["fallback_extra_bytes"] / n_el if n_el else 0.0
    if as_json:
        click.echo(json.dumps({"ftype": p.ftype.name, "flavour": p.flavour, "file_type": p.file_type,
                               "default_type": p.default_type, "block_count": p.block_count,
                               "pruned": p.pruned, "tensors": rows, "totals": totals,
                               "rules": [r.to_json() for r in rule_reports(p)],
                               "fallbacks": [f.to_json() for f in fb], "warnings": warnings}, indent=1))
        return
    con = Console()
    table = Table(title=f"{p.ftype.name} ({p.flavour}): default type {p.default_type}")
    table.add_column("#", justify="right")
    table.add_column("tensor", overflow="fold")  # never cut a tensor name short
    table.add_column("shape")
    table.add_column("type", no_wrap=True)
    table.add_column("MiB", justify="right")
    table.add_column("reason")
    for i, r in enumerate(rows, 1):
        if not show_all and not r["quantize"]:
            continue
        t = r["type"].lower() if not r["quantize"] else f"{r['src_type'].lower()} → [bold]{r['type'].lower()}[/]"
        table.add_row(str(i), r["name"], "×".join(map(str, r["shape"])), t, _mib(r["bytes"]), r["reason"])
    con.print(table)
    if p.rules:  # what each REGEX=TYPE rule did (first match wins)
        rt = Table(title="rules (first match wins)")
        for col in ("#", "rule", "decides", "shadowed", "ignored"):
            rt.add_column(col, justify="right" if col in ("#", "decides", "shadowed", "ignored") else "left")
        for rep in rule_reports(p):
            n_sh, n_ig = sum(map(len, rep.shadowed.values())), sum(map(len, rep.ignored.values()))
            rt.add_row(str(rep.index + 1), escape(rep.rule.describe()), str(len(rep.decided)), str(n_sh),
                       str(n_ig))
        con.print(rt)
    bpw = "?" if totals["bpw"] is None else f"{totals['bpw']:.2f}"
    con.print(f"{totals['tensors']} tensors, {totals['quantized']} converted, {totals['fallbacks']} fallback(s); "
              f"size {_mib(size_in)} MiB ({totals['bpw_in']:.2f} bpw) -> {_mib(size_out)} MiB ({bpw} bpw)")
    for w in warnings:
        Console(stderr=True).print(f"[yellow]warning:[/] {escape(w)}")  # rules hold [a-z]-like text


def _n(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@click.group()
def mix() -> None:
    """Per-tensor type choice of llama-quantize: plans, ftypes, recipes."""


@mix.command("show")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("ftype", required=False)
@mix_options
@click.option("--imatrix", "imatrix", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Plan as with this importance matrix (some mixes change with one).")
@click.option("--changed", is_flag=True, help="Only list the tensors whose type changes.")
@click.option("--explain", "explain_name", metavar="TENSOR", default=None,
              help="Print the decision chain of one tensor: every source consulted, which matched, why its type won.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def show(model: str, ftype: str | None, imatrix: str | None, changed: bool, as_json: bool,
         explain_name: str | None = None, **kw: Any) -> None:
    """Print the type llama-quantize would give each tensor of MODEL for FTYPE, and why.

    FTYPE is what llama-quantize takes (Q4_K_M, q4_k_m, 15, ...); with --recipe it may be left out.
    Rules that decide no tensor and row-length fallbacks are warned about (--strict,
    --no-fallback: refused).
    """
    from ..gguf_io import GGUFModel

    if click.get_current_context().get_parameter_source("flavour") == ParameterSource.DEFAULT:
        kw["flavour"] = implied_flavour([ftype]) or kw["flavour"]  # an ik-only ftype implies --flavour ik
    opts = dataclasses.replace(options_from_cli(**kw), dry_run=True, has_imatrix=imatrix is not None)
    with GGUFModel(model, flavour=opts.flavour) as m:
        tensors, info = specs_from_gguf(m)
    p = plan(tensors, info, ftype, opts)
    warnings = check_plan(p, opts)
    if not imatrix and any(d.requires_imatrix and d.allows_quantization for d in p):
        warnings.append("quantizing with this plan will require an imatrix")
    if explain_name is not None:
        _explain(p, explain_name, as_json, warnings)
        return
    render_plan(p, as_json, warnings, show_all=not changed)


def _explain(p: Plan, name: str, as_json: bool, warnings: list[str]) -> None:
    """mix show --explain TENSOR: the decision chain (text on stdout, or JSON)."""
    from ..mix.explain import explain
    from ..mix.options import MixError

    try:
        ex = explain(p, name)
    except KeyError as e:
        raise MixError(str(e.args[0]), option="--explain") from None
    if as_json:
        click.echo(json.dumps(dict(ex.to_json(), warnings=warnings), indent=1))
        return
    click.echo(ex.text())
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


@mix.command("ftypes")
@flavour_option()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def ftypes(flavour: str, as_json: bool) -> None:
    """List the ftypes (TYPE argument) llama-quantize accepts, with their ids and default types."""
    rows = [{"name": f.name, "id": f.id, "key": f.key, "default_type": f.default_type,
             "description": f.description.strip()} for f in ftype_table(flavour)]
    if as_json:
        click.echo(json.dumps({"flavour": flavour, "ftypes": rows}, indent=1))
        return
    table = Table(title=f"ftypes ({flavour} llama-quantize)")
    for col in ("name", "id", "default type", "description"):
        table.add_column(col, justify="right" if col == "id" else "left")
    for r in rows:
        table.add_row(str(r["name"]), str(r["id"]), str(r["default_type"]), str(r["description"]))
    Console().print(table)


def _attach_tools() -> None:
    """Add `mix extract` / `mix diff` when their module is present."""
    try:
        from . import mix_tools_cmd
    except ImportError:
        return
    for name in ("extract", "diff"):
        cmd = getattr(mix_tools_cmd, name, None)
        if isinstance(cmd, click.Command):
            mix.add_command(cmd, name)
    from .mix_convert_cmd import convert_cmd

    mix.add_command(convert_cmd, "convert")


_attach_tools()


def _attach_solve() -> None:
    """Add `mix solve` (budgeted mixes, qtool/commands/solve_cmd.py)."""
    from .solve_cmd import solve as solve_cmd

    mix.add_command(solve_cmd, "solve")


_attach_solve()

__all__ = ["mix", "mix_options", "options_from_cli", "plan_rows", "render_plan", "tensor_bytes"]
