"""`qtool types`: list every GGML type with its block layout and what the engine does with it."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..gpu.kernels import gpu_kernel
from ..quants import can_dequantize
from ..quants.registry import support
from ..quants.types import BOTH, FLAVOURS, MAINLINE, QType, all_types


def _flavour_for(t: QType, flavour: str | None) -> str:
    """The flavour a type is judged in: the one asked for, else the tree that defines it."""
    return flavour or (t.flavour if t.flavour != BOTH else MAINLINE)


def type_rows(flavour: str | None) -> list[dict]:
    """One dict per type: layout, and whether qtool quantizes it (without / with an imatrix) as
    the flavour's reference does; repacks and activation types are read, never written."""
    rows = []
    for t in all_types(flavour):
        fl = _flavour_for(t, flavour)
        noim, im = support(t, fl)
        g_noim, g_im = (gpu_kernel(t, v, fl) is not None if t.name != "F32" else False for v in (False, True))
        kind = "repack of " + t.repack_of if t.repack_of else ("activations" if t.internal else "")
        rows.append({
            "name": t.name, "id": t.id, "block_size": t.block_size, "type_size": t.type_size,
            "row_meta": t.row_meta, "bpw": round(t.bpw, 4), "flavour": t.flavour, "judged_as": str(fl),
            "needs_imatrix": t.needs_imatrix, "kind": kind,
            "quantize": noim and im if not t.needs_imatrix else im,
            "quantize_without_imatrix": noim, "quantize_with_imatrix": im,
            "dequantize": can_dequantize(t),
            "gpu_without_imatrix": g_noim, "gpu_with_imatrix": g_im,
        })
    return rows


@click.command()
@click.option("--flavour", type=click.Choice(FLAVOURS), default=None,
              help="Only the types of one tree, judged as that tree quantizes them (default: every type, "
                   "each as the tree that defines it; mainline for shared types).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def types(flavour: str | None, as_json: bool) -> None:
    """List GGML types: id, block size, bytes per block, bits per weight, engine support.

    "quantize" is the engine's support for the flavour: `yes` (with and without an imatrix),
    `no imatrix` / `imatrix only` where one variant is ported, empty where refused; "gpu" the
    same for the CUDA kernels of `quantize --device cuda`.
    """
    rows = type_rows(flavour)
    if as_json:
        click.echo(json.dumps({"flavour": flavour, "types": rows}, indent=1))
        return
    table = Table(title=f"GGML types ({flavour or 'all'})")
    for col in ("name", "id", "block", "bytes", "bpw", "flavour", "imatrix", "quantize", "gpu", "dequantize", "note"):
        table.add_column(col, justify="right" if col in ("id", "block", "bytes", "bpw") else "left")
    for r in rows:
        table.add_row(r["name"], str(r["id"]), str(r["block_size"]), str(r["type_size"]),
                      f"{r['bpw']:.4g}", r["flavour"], "required" if r["needs_imatrix"] else "",
                      _variants(r["quantize_without_imatrix"], r["quantize_with_imatrix"]),
                      _variants(r["gpu_without_imatrix"], r["gpu_with_imatrix"]),
                      "yes" if r["dequantize"] else "", r["kind"])
    Console().print(table)


def _variants(noim: bool, im: bool) -> str:
    return "yes" if noim and im else "imatrix only" if im else "no imatrix" if noim else ""
