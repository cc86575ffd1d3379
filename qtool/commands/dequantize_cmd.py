"""`qtool dequantize IN.gguf OUT.gguf [--to F16|BF16|F32]`: a quantized model back to floats, with the
bytes of `llama-quantize --allow-requantize IN OUT F16` (qtool.dequantize); `--from A --from B OUT`:
the estimate several quants of one model give together (qtool.combine)."""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from ..combine import METHODS, combine_files
from ..dequantize import TARGETS, dequantize_file
from ..mix import Plan
from ..mix.options import OPTION_BY_NAME
from .common import ProgressBar, click_option, flavour_option, plan_values, threads_option
from .mix_cmd import render_plan


@click.command()
@click.argument("paths", metavar="[IN.gguf] OUT.gguf", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--from", "sources", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A quant of the model (repeatable): write the estimate they give together "
                   "(docs/dequantize-combine.md) instead of dequantizing IN.")
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True,
              help="With --from: the point taken inside each weight's interval.")
@click.option("--to", "to", type=click.Choice(TARGETS, case_sensitive=False), default="F16", show_default=True,
              help="Float type of the converted tensors (llama-quantize's F16, BF16 or F32 ftype).")
@flavour_option()
@threads_option()
@click_option(OPTION_BY_NAME["device"],
              help="Where to dequantize: the CPU engine, or CUDA GPUs through CuPy (pip install 'qtool[cuda]'; "
                   "same bytes; stored types without a GPU kernel are dequantized on the CPU, listed once).")
@click.option("--dry-run", is_flag=True, help="Print the plan (type per tensor) and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout (summary, or the plan).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary table.")
def dequantize(paths: tuple[str, ...], sources: tuple[str, ...], method: str, to: str, flavour: str,
               threads: int | None, device: str, dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Dequantize IN.gguf to OUT.gguf: every tensor llama-quantize would convert (2-D and larger)
    becomes F16 (or --to BF16 / F32); the file is byte-identical to
    `llama-quantize --allow-requantize IN OUT F16`. With --from A.gguf --from B.gguf ... OUT.gguf:
    combine several quants of the same model into one estimate of the original."""
    err = Console(stderr=True)
    if sources:
        if len(paths) != 1:
            raise click.UsageError("with --from, give only OUT.gguf")
        if dry_run:
            raise click.UsageError("--dry-run plans a single input: leave out --from")
        if device != "cpu":
            raise click.UsageError("--device cuda dequantizes a single input: leave out --from")
        _combine(list(sources), paths[0], to, method, as_json, quiet, err)
        return
    if len(paths) != 2:
        raise click.UsageError("give IN.gguf OUT.gguf (or --from A.gguf --from B.gguf OUT.gguf)")
    input, output = paths
    if not os.path.isfile(input):
        raise click.BadParameter(f"'{input}' is not a file", param_hint="'IN.gguf'")
    bar = ProgressBar(err, "dequantizing", not quiet and not dry_run and sys.stderr.isatty())

    def on_plan(p: Plan, warnings: list[str]) -> None:
        if dry_run:
            render_plan(p, as_json, warnings)
            return
        for w in warnings:
            err.print(f"[yellow]warning:[/] {w}")
        bar.start(plan_values(p))

    def warn(msg: str) -> None:
        err.print(f"[yellow]warning:[/] {msg}")

    try:  # errors and signals: the click group reports them (no output is left)
        r = dequantize_file(input, output, to, nthreads=threads, flavour=flavour, dry_run=dry_run,
                            on_plan=on_plan, on_progress=bar.advance, warn=warn, device=device or "cpu")
    finally:
        bar.stop()
    if dry_run:
        return
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=1))
    elif not quiet:
        run = r.run
        assert run is not None
        t = Table(title=f"{os.path.basename(r.input)} → {os.path.basename(r.output)} ({r.ftype})", show_header=False)
        t.add_column(justify="right")
        t.add_column()
        t.add_row("tensors", f"{len(r.plan)} ({sum(d.quantize for d in r.plan)} converted)")
        t.add_row("size in", f"{run.size_in / 1048576:.2f} MiB ({run.bpw_in:.2f} bpw)")
        t.add_row("size out", f"{run.size_out / 1048576:.2f} MiB ({run.bpw_out:.2f} bpw)")
        mbps = run.size_in / 1048576 / max(run.seconds, 1e-9)
        t.add_row("time", f"{run.seconds:.2f} s with {r.nthreads} process(es), {mbps:.0f} MiB/s read")
        err.print(t)


def _combine(sources: list[str], output: str, to: str, method: str, as_json: bool, quiet: bool,
             err: Console) -> None:
    """`dequantize --from ... OUT`: qtool.combine.combine_files with a progress bar and a summary."""
    bar = ProgressBar(err, "combining", not quiet and sys.stderr.isatty())
    bar.start(None)
    try:
        r = combine_files(sources, output, to, method=method, on_progress=bar.advance)
    finally:
        bar.stop()
    if as_json:
        click.echo(json.dumps({"output": r.output, "tensors": r.tensors, **r.stats.as_dict()}, indent=1))
    elif not quiet:
        err.print(f"{r.output}: {r.n_tensors} tensors, {r.n_elements} weights from {len(sources)} quants; "
                  + ", ".join(f"{k} {v}" for k, v in r.stats.as_dict().items()))

