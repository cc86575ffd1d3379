"""`qtool mix solve MODEL --target-bpw 4.0 | --target-size 2.5GiB -o recipe.toml`: a budgeted mix.

The library is qtool/mix/solve.py (docs/target-bpw.md); `qtool quantize --target-bpw` uses the same
`run_solve` and `render_solution` before it quantizes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..gguf_io.atomic import check_output, write_bytes_atomic
from ..mix.options import OPTION_BY_NAME, MixOptions
from ..mix.solve import DEFAULT_SAMPLE_ROWS, SolveResult, solve_model
from .common import ProgressBar, mix_options, options_from_cli, table_options, threads_option


def run_solve(model: str, opts: MixOptions, *, target_bpw: float | None, target_size: str | None,
              types: Sequence[str] | str | None, imatrix: str | None, include_weights: Sequence[str] = (),
              exclude_weights: Sequence[str] = (), sensitivity: str = "role",
              sample_rows: int = DEFAULT_SAMPLE_ROWS, threads: int | None = None, quiet: bool = False) -> SolveResult:
    """solve_model with a progress bar on stderr (when it is a terminal and not quiet)."""
    err = Console(stderr=True)
    bar = ProgressBar(err, "measuring", not quiet and sys.stderr.isatty(), prefix="measuring ")

    def on_note(msg: str) -> None:
        err.print(f"[yellow]warning:[/] {msg}")

    try:
        return solve_model(model, target_bpw=target_bpw, target_size=target_size,
                           types=[types] if isinstance(types, str) else types, imatrix=imatrix,
                           include_weights=include_weights, exclude_weights=exclude_weights, options=opts,
                           sensitivity_mode=sensitivity, sample_rows=sample_rows, threads=threads,
                           on_start=bar.start, on_progress=bar.advance, on_note=on_note)
    finally:
        bar.stop()


def _mib(n: int) -> str:
    return f"{n / 1048576:.3f}"


def render_solution(r: SolveResult, con: Console, show_fixed: bool = True) -> None:
    """The plan with the predicted error and loss per tensor, and the totals."""
    t = Table(title=f"solved mix: {r.bpw:.4f} bpw ({_mib(r.bytes)} MiB) for a budget of {r.target_bpw:.4f} bpw "
                    f"({_mib(r.budget)} MiB)")
    for col, just in (("#", "right"), ("tensor", "left"), ("type", "left"), ("MiB", "right"),
                      ("sens.", "right"), ("pred. error", "right"), ("pred. loss", "right"), ("note", "left")):
        wrap = col in ("tensor", "note")
        t.add_column(col, justify=just, overflow="fold" if wrap else "ellipsis",  # type: ignore[arg-type]
                     no_wrap=not wrap, min_width=28 if col == "tensor" else None)
    for i, it in enumerate(r.items, 1):
        p = it.chosen
        if it.fixed:
            if show_fixed:
                t.add_row(str(i), it.name, p.type.lower(), _mib(p.bytes), "", "", "",
                          f"fixed: {it.fixed_reason.split(':')[0]}")
            continue
        note = f"{p.requested.lower()} falls back to {p.type.lower()}" if p.requested != p.type else ""
        t.add_row(str(i), it.name, p.type.lower(), _mib(p.bytes), f"{it.sensitivity:g}", f"{p.error:.4g}",
                  f"{p.loss:.4g}", note)
    con.print(t)
    n_free = sum(not it.fixed for it in r.items)
    con.print(f"{len(r.items)} tensors ({n_free} solved, {len(r.items) - n_free} fixed); {r.bytes} of {r.budget} "
              f"bytes ({r.budget - r.bytes} left); predicted weighted error {r.error:.6g}, loss {r.loss:.6g}; "
              f"measured in {r.seconds_measure:.1f} s, solved in {r.seconds_solve * 1000:.1f} ms")
    for n in r.notes:
        con.print(f"note: {n}")


SOLVE_OPTIONS = ("target_bpw", "target_size", "types", "sensitivity", "sample_rows")
solve_options = table_options(OPTION_BY_NAME[n] for n in SOLVE_OPTIONS)
"""--target-bpw / --target-size / --types / --sensitivity / --sample-rows: rows of the option table."""


def target_values(target_bpw: str | None, target_size: str | None, sample_rows: str | int | None
                  ) -> tuple[float | None, int]:
    """The option values as solve_model takes them (usage errors for what is not a number)."""
    bpw = None
    if target_bpw is not None:
        try:
            bpw = float(target_bpw)
        except ValueError:
            raise click.BadParameter(f"{target_bpw!r} is not a number", param_hint="--target-bpw") from None
    try:
        rows = DEFAULT_SAMPLE_ROWS if sample_rows is None else int(sample_rows)
    except ValueError:
        raise click.BadParameter(f"{sample_rows!r} is not an integer", param_hint="--sample-rows") from None
    return bpw, rows


@click.command("solve")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@mix_options
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Importance matrix: the errors are weighted by it and measured with it.")
@click.option("--include-weights", multiple=True, metavar="NAME", help="As quantize's --include-weights.")
@click.option("--exclude-weights", multiple=True, metavar="NAME", help="As quantize's --exclude-weights.")
@solve_options
@threads_option()
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the recipe here (default: stdout, after the plan on stderr).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout (the plan and the recipe).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no plan table.")
def solve(model: str, imatrix: str | None, include_weights: tuple[str, ...], exclude_weights: tuple[str, ...],
          target_bpw: str | None, target_size: str | None, types: tuple[str, ...], sensitivity: str,
          sample_rows: str, threads: int | None, output: str | None, as_json: bool, quiet: bool,
          **kw: Any) -> None:
    """Choose a type per tensor of MODEL that minimizes the predicted error under a size budget.

    The errors are measured with qtool's engine on a sample of each tensor's rows; the result is a
    recipe (TOML) that `qtool quantize --recipe` and `qtool mix show --recipe` reproduce.
    """
    if (target_bpw is None) == (target_size is None):
        raise click.UsageError("give one of --target-bpw and --target-size")
    bpw, rows = target_values(target_bpw, target_size, sample_rows)
    opts = options_from_cli(**kw)
    if output:
        check_output(output, [model] + ([imatrix] if imatrix else []), what="recipe")
    r = run_solve(model, opts, target_bpw=bpw, target_size=target_size, types=types or None,
                  imatrix=imatrix, include_weights=include_weights, exclude_weights=exclude_weights,
                  sensitivity=sensitivity, sample_rows=rows, threads=threads, quiet=quiet or as_json)
    if output:
        write_bytes_atomic(output, r.recipe_toml.encode(), [model])
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=1))
        return
    if not quiet:
        render_solution(r, Console(stderr=True))
    if not output:
        click.echo(r.recipe_toml, nl=False)
    elif not quiet:
        click.echo(f"wrote {output}", err=True)


__all__ = ["SOLVE_OPTIONS", "render_solution", "run_solve", "solve", "solve_options", "target_values"]
