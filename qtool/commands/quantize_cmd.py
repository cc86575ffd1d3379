"""`qtool quantize [OPTIONS] INPUT [OUTPUT] TYPE [NTHREADS]`: llama-quantize's command line over qtool.api."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..api import QuantizeResult, quantize_file
from ..mix import Plan
from ..mix.ftypes import FTypeError, implied_flavour, parse_ftype
from .common import (
    ProgressBar,
    debug_enabled,
    mix_options,
    options_from_cli,
    plan_values,
    run_options,
    threads_option,
    usage_error,
)
from .mix_cmd import render_plan


def split_positionals(args: tuple[str, ...], flavour: str, has_recipe: bool
                      ) -> tuple[str, str | None, str | None, int | None]:
    """INPUT [OUTPUT] TYPE [NTHREADS] as llama-quantize reads them: the second word is TYPE when it
    parses as an ftype (name or id), otherwise OUTPUT. With --recipe, TYPE may be left out."""
    if not args:
        raise click.UsageError("missing INPUT")
    if len(args) > 4:
        raise click.UsageError(f"too many arguments: {' '.join(args[4:])}")
    inp, rest = args[0], list(args[1:])
    out: str | None = None
    ftype: str | None = None

    def is_ftype(s: str) -> bool:
        try:
            parse_ftype(s, flavour)
            return True
        except FTypeError:
            return False

    if rest and is_ftype(rest[0]):
        ftype = rest.pop(0)
    elif rest:
        out = rest.pop(0)
        if rest and is_ftype(rest[0]):
            ftype = rest.pop(0)
        elif rest:
            parse_ftype_or_fail(rest[0], flavour)
        elif not has_recipe:
            try:
                parse_ftype(out, flavour)
            except FTypeError as e:  # INPUT WORD: WORD is not an ftype, so llama-quantize reads it as OUTPUT
                if debug_enabled():
                    raise
                raise click.UsageError(f"missing TYPE ({out!r} was read as OUTPUT: {e})") from None
    elif not has_recipe:
        raise click.UsageError("missing TYPE (run `qtool mix ftypes` for the list)")
    nthreads = None
    if rest:
        try:
            nthreads = int(rest.pop(0))
        except ValueError:
            raise click.BadParameter("not an integer", param_hint="NTHREADS") from None
    if rest:
        raise click.UsageError(f"unexpected argument {rest[0]!r}")
    return inp, out, ftype, nthreads


def parse_ftype_or_fail(s: str, flavour: str) -> None:
    try:
        parse_ftype(s, flavour)
    except FTypeError as e:
        raise usage_error(e) from None


def _summary(r: QuantizeResult, con: Console) -> None:
    run = r.run
    assert run is not None
    t = Table(title=f"{os.path.basename(r.input)} → {os.path.basename(r.output)} ({r.ftype})", show_header=False)
    t.add_column(justify="right")
    t.add_column()
    t.add_row("tensors", f"{len(r.plan)} ({sum(d.quantize for d in r.plan)} converted, "
                         f"{r.plan.n_fallback} fallback)")
    t.add_row("size in", f"{run.size_in / 1048576:.2f} MiB ({run.bpw_in:.2f} bpw)")
    t.add_row("size out", f"{run.size_out / 1048576:.2f} MiB ({run.bpw_out:.2f} bpw)")
    from ..mix.diagnostics import fallbacks, total_weights

    fb = fallbacks(r.plan)
    if fb:  # what the row-length fallbacks cost (--no-fallback refuses them)
        extra, n_w = sum(f.extra_bytes for f in fb), total_weights(r.plan)
        t.add_row("fallbacks", f"{len(fb)} tensor(s): +{extra / 1048576:.2f} MiB "
                               f"(+{8.0 * extra / n_w if n_w else 0.0:.3f} bpw) over their chosen types")
    t.add_row("time", f"{run.seconds:.2f} s with {r.nthreads} process(es)")
    if r.imatrix:
        t.add_row("imatrix", f"{r.imatrix} ({r.imatrix_entries} entries)")
    con.print(t)


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", metavar="INPUT [OUTPUT] TYPE [NTHREADS]", nargs=-1)
@mix_options
@run_options
@threads_option()
@click.option("--dry-run", is_flag=True, help="Print the plan (type, size, reason per tensor) and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout (summary, or the plan).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary table.")
@click.option("--recover-grid", is_flag=True, help="Where a float tensor's blocks lie on the output type's grid "
              "(a dequantized quant), write the exact blocks they came from (docs/dequantize.md).")
def quantize(args: tuple[str, ...], imatrix: str | None, include_weights: tuple[str, ...],
             exclude_weights: tuple[str, ...], override_kv: tuple[str, ...], threads: int | None, dry_run: bool,
             as_json: bool, quiet: bool, **kw: Any) -> None:
    """Quantize a GGUF model like llama-quantize: INPUT [OUTPUT] TYPE [NTHREADS].

    TYPE is an ftype as llama-quantize takes it (Q4_K_M, q8_0, 15, ...; `qtool mix ftypes` lists
    them). Without OUTPUT the file is `ggml-model-TYPE.gguf` beside INPUT. NTHREADS (or
    -t/--threads): worker processes (default: all cores); the output is the same for every count.
    With --target-bpw / --target-size, leave TYPE out: a type per tensor is solved for the budget
    (docs/target-bpw.md) and the plan printed before quantizing (give the workers as -t then).
    """
    implied = None
    if click.get_current_context().get_parameter_source("flavour") == ParameterSource.DEFAULT:
        implied = implied_flavour(args[1:3])  # an ik-only ftype (IQ4_K, ...) implies --flavour ik
        if implied:
            kw["flavour"] = implied
    opts = options_from_cli(**kw)
    targeted = kw.get("target_bpw") is not None or kw.get("target_size") is not None
    inp, out, ftype, nthreads = split_positionals(args, opts.flavour, opts.recipe is not None or targeted)
    if nthreads is None:
        nthreads = threads
    elif threads is not None and threads != nthreads:
        raise click.UsageError(f"NTHREADS {nthreads} and --threads {threads} disagree: give one of them")
    if targeted:  # a budgeted mix (qtool/mix/solve.py): solve, show the plan, quantize with its recipe
        opts = _solved_options(inp, out, ftype, opts, imatrix, include_weights, exclude_weights, nthreads,
                               quiet or as_json, kw)
    err = Console(stderr=True)
    bar = ProgressBar(err, "quantizing", not quiet and not dry_run and sys.stderr.isatty())

    def on_plan(p: Plan, warnings: list[str]) -> None:
        if dry_run:
            render_plan(p, as_json, warnings)
            from ..dequantize import grid_note

            note = grid_note(inp, flavour=opts.flavour)
            if note:
                err.print(f"note: {note}")
            return
        for w in warnings:
            err.print(f"[yellow]warning:[/] {escape(w)}")  # rule warnings hold [a-z]-like text
        bar.start(plan_values(p))

    def warn(msg: str) -> None:
        err.print(f"[yellow]warning:[/] {msg}")

    try:  # errors, Ctrl-C and terminating signals: the click group reports them (no output is left)
        r = quantize_file(inp, out, ftype, nthreads=nthreads, imatrix=imatrix, include_weights=include_weights,
                          exclude_weights=exclude_weights, override_kv=override_kv, options=opts,
                          dry_run=dry_run, on_plan=on_plan, on_progress=bar.advance, warn=warn,
                          recover_grid=bool(kw.get("recover_grid")), device=kw.get("device") or "cpu")
    finally:
        bar.stop()
    if dry_run:
        return
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=1))
    elif not quiet:
        _summary(r, err)


def _solved_options(inp: str, out: str | None, ftype: str | None, opts: Any, imatrix: str | None,
                    include_weights: tuple[str, ...], exclude_weights: tuple[str, ...], nthreads: int | None,
                    quiet: bool, kw: dict[str, Any]) -> Any:
    """--target-bpw / --target-size: the options with the solved recipe (the plan printed on stderr)."""
    import dataclasses

    from ..gguf_io.atomic import check_output
    from .solve_cmd import render_solution, run_solve, target_values

    if ftype is not None:
        raise click.UsageError(f"give TYPE ({ftype}) or --target-bpw / --target-size, not both")
    if kw.get("target_bpw") is not None and kw.get("target_size") is not None:
        raise click.UsageError("give one of --target-bpw and --target-size")
    if out is not None:  # before the measurements: never an input, a directory or a device
        check_output(out, [inp] + ([imatrix] if imatrix else []))
    bpw, rows = target_values(kw.get("target_bpw"), kw.get("target_size"), kw.get("sample_rows"))
    r = run_solve(inp, opts, target_bpw=bpw, target_size=kw.get("target_size"), types=kw.get("types") or None,
                  imatrix=imatrix, include_weights=include_weights, exclude_weights=exclude_weights,
                  sensitivity=kw.get("sensitivity") or "role", sample_rows=rows, threads=nthreads, quiet=quiet)
    if not quiet:
        render_solution(r, Console(stderr=True), show_fixed=False)
    return dataclasses.replace(opts, recipe=r.recipe, tensor_types=[], custom_q=[])

