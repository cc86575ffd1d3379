"""`qtool types`: list every GGML type with its block layout and bits per weight."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..quants import can_quantize
from ..quants.types import FLAVOURS, all_types


@click.command()
@click.option("--flavour", type=click.Choice(FLAVOURS), default=None, help="Only types of one tree.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def types(flavour: str | None, as_json: bool) -> None:
    """List GGML types: id, block size, bytes per block, bits per weight."""
    rows = []
    for t in all_types(flavour):
        rows.append({
            "name": t.name, "id": t.id, "block_size": t.block_size, "type_size": t.type_size,
            "row_meta": t.row_meta, "bpw": round(t.bpw, 4), "flavour": t.flavour,
            "needs_imatrix": t.needs_imatrix,
            "quantize": can_quantize(t, "ik" if t.flavour == "ik" else "mainline"),
        })
    if as_json:
        click.echo(json.dumps({"types": rows}, indent=1))
        return
    table = Table(title="GGML types")
    for col in ("name", "id", "block", "bytes", "bpw", "flavour", "imatrix", "quantize"):
        table.add_column(col, justify="right" if col in ("id", "block", "bytes", "bpw") else "left")
    for r in rows:
        table.add_row(r["name"], str(r["id"]), str(r["block_size"]), str(r["type_size"]),
                      f"{r['bpw']:.4g}", r["flavour"], "required" if r["needs_imatrix"] else "",
                      "yes" if r["quantize"] else "")
    Console().print(table)
