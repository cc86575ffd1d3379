"""`qtool mix`: show the per-tensor type plan of an ftype (`mix show`), list ftypes (`mix ftypes`).

The option decorator `mix_options` and `options_from_cli` are shared with `qtool quantize`, so
both commands accept llama-quantize's rule options under the same names; `render_plan` prints
the plan table (or JSON) that `qtool quantize --dry-run` shows too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..mix import (
    FLAVOURS,
    MAINLINE,
    MixError,
    MixOptions,
    Plan,
    check_plan,
    ftype_table,
    plan,
    specs_from_gguf,
)


def mix_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """llama-quantize's type-choice options (plus --custom-q, --recipe, --flavour) on a command."""
    opts = [
        click.option("--flavour", type=click.Choice(FLAVOURS), default=MAINLINE, show_default=True,
                     help="Whose rules: mainline llama.cpp or ik_llama.cpp."),
        click.option("--pure", is_flag=True, help="No k-quant mixture: every tensor gets the default type."),
        click.option("--output-tensor-type", metavar="TYPE", default=None, help="Type of output.weight."),
        click.option("--token-embedding-type", metavar="TYPE", default=None,
                     help="Type of the token embeddings."),
        click.option("--leave-output-tensor", is_flag=True, help="Leave output.weight un(re)quantized."),
        click.option("--tensor-type", "tensor_type", metavar="REGEX=TYPE", multiple=True,
                     help="Type of the tensors matching REGEX (first match wins; repeatable)."),
        click.option("--tensor-type-file", "tensor_type_file", metavar="FILE", multiple=True,
                     type=click.Path(exists=True, dir_okay=False),
                     help="REGEX=TYPE words separated by spaces or newlines."),
        click.option("--custom-q", "custom_q", metavar="REGEX=TYPE,...", multiple=True,
                     help="ik_llama.cpp's comma-separated rules."),
        click.option("--recipe", metavar="FILE.toml", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="A base type and ordered rules (docs/mix.md)."),
        click.option("--prune-layers", metavar="L0,L1,...", default=None, help="Drop these layers."),
        click.option("--keep-split", is_flag=True, help="Keep the input's split files (changes the order)."),
        click.option("--allow-requantize", is_flag=True, help="Allow requantizing quantized tensors."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def options_from_cli(flavour: str, pure: bool, output_tensor_type: str | None,
                     token_embedding_type: str | None, leave_output_tensor: bool,
                     tensor_type: tuple[str, ...], tensor_type_file: tuple[str, ...],
                     custom_q: tuple[str, ...], recipe: str | None, prune_layers: str | None,
                     keep_split: bool, allow_requantize: bool, **_: Any) -> MixOptions:
    """MixOptions from mix_options' parameters (qtool.api.build_options); click.BadParameter
    names the offending option.

    --tensor-type and --tensor-type-file rules keep their relative order only per option (click
    collects each option separately): --tensor-type rules first, then the files'.
    """
    from ..api import build_options

    try:
        return build_options(flavour=flavour, pure=pure, output_tensor_type=output_tensor_type,
                             token_embedding_type=token_embedding_type, leave_output_tensor=leave_output_tensor,
                             tensor_type=tensor_type, tensor_type_file=tensor_type_file, custom_q=custom_q,
                             recipe=recipe, prune_layers=prune_layers, keep_split=keep_split,
                             allow_requantize=allow_requantize)
    except MixError as e:
        hint, _, msg = str(e).partition(": ")
        if hint.startswith("--"):
            raise click.BadParameter(msg, param_hint=hint) from None
        raise click.BadParameter(str(e)) from None


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
    if as_json:
        click.echo(json.dumps({"ftype": p.ftype.name, "flavour": p.flavour, "file_type": p.file_type,
                               "default_type": p.default_type, "block_count": p.block_count,
                               "pruned": p.pruned, "tensors": rows, "totals": totals,
                               "warnings": warnings}, indent=1))
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
    bpw = "?" if totals["bpw"] is None else f"{totals['bpw']:.2f}"
    con.print(f"{totals['tensors']} tensors, {totals['quantized']} converted, {totals['fallbacks']} fallback(s); "
              f"size {_mib(size_in)} MiB ({totals['bpw_in']:.2f} bpw) -> {_mib(size_out)} MiB ({bpw} bpw)")
    for w in warnings:
        Console(stderr=True).print(f"[yellow]warning:[/] {w}")


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
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def show(model: str, ftype: str | None, imatrix: str | None, changed: bool, as_json: bool, **kw: Any) -> None:
    """Print the type llama-quantize would give each tensor of MODEL for FTYPE, and why.

    FTYPE is what llama-quantize takes (Q4_K_M, q4_k_m, 15, ...); with --recipe it may be left out.
    """
    from ..gguf_io import GGUFError, GGUFModel

    opts = options_from_cli(**kw)
    opts.dry_run = True
    opts.has_imatrix = imatrix is not None
    try:
        with GGUFModel(model, flavour=opts.flavour) as m:
            tensors, info = specs_from_gguf(m)
    except GGUFError as e:
        raise click.ClickException(str(e)) from None
    try:
        p = plan(tensors, info, ftype, opts)
        warnings = check_plan(p, opts)
    except MixError as e:
        raise click.ClickException(str(e)) from None
    if not imatrix and any(d.requires_imatrix and d.allows_quantization for d in p):
        warnings.append("quantizing with this plan will require an imatrix")
    render_plan(p, as_json, warnings, show_all=not changed)


@mix.command("ftypes")
@click.option("--flavour", type=click.Choice(FLAVOURS), default=MAINLINE, show_default=True)
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
        table.add_row(r["name"], str(r["id"]), r["default_type"], r["description"])
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


_attach_tools()

__all__ = ["mix", "mix_options", "options_from_cli", "plan_rows", "render_plan", "tensor_bytes"]
