"""`qtool mix extract` and `qtool mix diff` (attached to the `mix` group by mix_cmd)."""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from ..gguf_io.atomic import check_output, write_bytes_atomic
from ..quants.types import FLAVOURS


def _size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the recipe here (default: stdout).")
@click.option("--flavour", type=click.Choice([str(f) for f in FLAVOURS]), default=None,
              help="Whose type ids and rules the file and the recipe follow (default: the file's: ik_llama.cpp's when "
                   "it has a type only ik_llama.cpp defines, else mainline).")
@click.option("--base", default=None, metavar="FTYPE", help="Base ftype (default: the file's general.file_type).")
@click.option("--full", is_flag=True, help="A rule for every quantized tensor, not only where the base mix differs.")
def extract(model: str, output: str | None, flavour: str | None, base: str | None, full: bool) -> None:
    """Write a recipe (TOML) that reproduces MODEL's per-tensor types.

    The recipe keeps MODEL's ftype as its base and adds rules (layer ranges folded into regexes)
    where the file's types differ from that ftype's mix; it is checked with qtool's planner
    before it is written. Quantize the source model with `qtool quantize --recipe FILE`.
    """
    from ..mix.extract import extract_recipe

    if output:
        check_output(output, [model], what="recipe")  # before any work
    ex = extract_recipe(model, flavour=flavour, base=base, full=full)
    if output:
        write_bytes_atomic(output, ex.toml.encode(), [model])
    else:
        click.echo(ex.toml, nl=False)
    for n in ex.notes:
        click.echo(f"note: {n}", err=True)
    n_rules = len(ex.rules)
    if ex.verified:
        click.echo(f"{ex.base} + {n_rules} rule(s): the planner reproduces all {ex.n_tensors} tensor types",
                   err=True)
    else:
        click.echo(f"warning: the recipe does not reproduce {len(ex.mismatches)} tensor type(s): "
                   f"{', '.join(ex.mismatches[:5])}{' ...' if len(ex.mismatches) > 5 else ''}", err=True)


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--all", "show_all", is_flag=True, help="Also list the tensors whose types agree.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--flavour", type=click.Choice([str(f) for f in FLAVOURS]), default=None,
              help="Whose type ids the files use (ids 36 and 41 differ; default: each file's: ik_llama.cpp's when it "
                   "has a type only ik_llama.cpp defines, else mainline).")
def diff(models: tuple[str, ...], show_all: bool, as_json: bool, flavour: str | None) -> None:
    """Per-tensor types of several GGUF files side by side, grouped (embeddings, attention,
    dense layers, MoE layers), with sizes; tensors whose types agree are folded away."""
    from ..mix.diff import diff_models

    if len(models) < 2:
        raise click.UsageError("give at least two files to compare")
    rep = diff_models(list(models), show_all=show_all, flavour=flavour)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=1))
        return
    con = Console(width=None if sys.stdout.isatty() else 200)
    names = [os.path.basename(f.path) for f in rep.files]
    t = Table(title="Per-tensor types", title_justify="left", show_lines=False)
    t.add_column("group")
    t.add_column("tensors")
    for n in names:
        t.add_column(n)
        t.add_column("size", justify="right")
    for g in rep.groups:
        first = True
        for r in g.rows:
            cells = [g.name if first else "", r.label]
            for ty, b in zip(r.types, r.bytes, strict=True):
                cells += [ty or "-", _size(b) if ty else ""]
            t.add_row(*cells)
            first = False
        if g.n_identical:
            cells = [g.name if first else "", f"[dim]({g.n_identical} tensor(s) of the same type in every file)[/]"]
            cells += ["", ""] * len(names)
            t.add_row(*cells)
        cells = ["", f"[bold]{g.name} total[/]"]
        for b in g.bytes:
            cells += ["", _size(b)]
        t.add_row(*cells, end_section=True)
    cells = ["", "[bold]file[/]"]
    for f in rep.files:
        cells += [f"{f.bpw:.3f} bpw", _size(f.n_bytes)]
    t.add_row(*cells)
    con.print(t)
    con.print(f"{len(rep.differing)} tensor(s) differ")
