"""`qtool imatrix check IMATRIX MODEL [FTYPE] [mix options]`: the imatrix pre-flight (attached to the
`imatrix` group by imatrix_cmd)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from ..errors import QtoolError
from ..imatrix.check import check_summary
from ..mix.ftypes import implied_flavour
from .common import mix_options, options_from_cli


class ImatrixCheckFailed(QtoolError):
    """The pre-flight found what would make quantize fail."""


@click.command("check")
@click.argument("imatrix_path", metavar="IMATRIX", type=click.Path(exists=True, dir_okay=False))
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("ftype", required=False)
@mix_options
@click.option("--include-weights", multiple=True, metavar="NAME",
              help="Use imatrix weights only for tensors whose name contains NAME (as quantize).")
@click.option("--exclude-weights", multiple=True, metavar="NAME",
              help="Don't use imatrix weights for tensors whose name contains NAME (as quantize).")
@click.option("--all", "show_all", is_flag=True, help="List every tensor, not only those with a finding.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def check(imatrix_path: str, model: str, ftype: str | None, include_weights: tuple[str, ...],
          exclude_weights: tuple[str, ...], show_all: bool, as_json: bool, **kw: Any) -> None:
    """Check that IMATRIX covers what quantizing MODEL to FTYPE needs, before any work.

    Lists tensors the plan quantizes that the imatrix lacks, experts of MoE tensors no token was
    routed to (with the per-expert token counts the GGUF format stores), size mismatches, the
    datasets and chunks. Types that require an imatrix (IQ1/IQ2/IQ3_XXS, ...) without an entry are
    errors (exit 1). FTYPE and the mix options are quantize's; without FTYPE every tensor that a
    quantized ftype converts is checked. `qtool quantize --imatrix` runs the same check.
    """
    from ..api import imatrix_check

    if click.get_current_context().get_parameter_source("flavour") == ParameterSource.DEFAULT:
        kw["flavour"] = implied_flavour([ftype]) or kw["flavour"]
    opts = options_from_cli(**kw)
    res = imatrix_check(imatrix_path, model, ftype, include_weights=include_weights,
                        exclude_weights=exclude_weights, options=opts)
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=1))
    else:
        con = Console(width=None if sys.stdout.isatty() else 160)
        con.print(check_summary(res), highlight=False)
        rows = [t for t in res.tensors if show_all or t.status != "ok"]
        if rows:
            table = Table(title=f"coverage of the tensors {res.ftype or 'a quantized ftype'} converts")
            for col in ("tensor", "type", "status", "experts", "tokens per expert", "note"):
                table.add_column(col, overflow="fold")
            for t in rows:
                counts = "-" if t.counts is None else (
                    ", ".join(map(str, t.counts)) if len(t.counts) <= 8 else
                    f"min {min(t.counts)}, max {max(t.counts)}, {len(t.unrouted)} zero")
                table.add_row(t.name, t.type.lower(), t.status, str(t.n_experts), counts,
                              t.message.split(": ", 1)[-1] if t.message else "")
            con.print(table)
        n_ok = sum(t.status == "ok" for t in res.tensors)
        con.print(f"{n_ok} of {len(res.tensors)} tensors fully covered; {len(res.missing)} without an entry; "
                  f"{len(res.unused)} imatrix entries unused", highlight=False)
        for w in res.warnings:
            click.echo(f"warning: {w}", err=True)
    if res.errors:
        raise ImatrixCheckFailed("imatrix check failed:\n  " + "\n  ".join(res.errors))


__all__ = ["ImatrixCheckFailed", "check"]
