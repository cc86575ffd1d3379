"""`qtool mix convert IN OUT`: rules between recipe TOML, --tensor-type-file and --custom-q (attached to
the `mix` group by mix_cmd)."""

from __future__ import annotations

import click

from ..gguf_io.atomic import check_output, write_bytes_atomic
from ..mix.convert import FORMATS, convert, format_for_path, read_rules
from ..quants.types import FLAVOURS


@click.command("convert")
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", metavar="OUT")
@click.option("--from", "from_fmt", type=click.Choice(FORMATS), default=None,
              help="Format of IN (default from its extension: .toml recipe, .txt tensor-type file, .cq/.sh custom-q).")
@click.option("--to", "to_fmt", type=click.Choice(FORMATS), default=None,
              help="Format of OUT (default from its extension; required when OUT is '-').")
@click.option("--flavour", type=click.Choice([str(f) for f in FLAVOURS]), default=None,
              help="Whose type names the rules use (default: the recipe's; mainline for a tensor-type file, ik for "
                   "a custom-q string).")
def convert_cmd(src: str, dst: str, from_fmt: str | None, to_fmt: str | None, flavour: str | None) -> None:
    """Convert REGEX=TYPE rules between qtool's recipe TOML, llama-quantize's --tensor-type-file and
    ik_llama.cpp's --custom-q string. OUT '-' writes to stdout.

    Both tools take the first matching rule, so the order is kept; patterns are rewritten where
    llama-quantize's lower-casing would change them (\\D -> [^\\d]) and refused where a format
    cannot hold them. Notes (options a text format cannot hold, flavour differences) go to stderr.
    """
    to = to_fmt or (None if dst == "-" else format_for_path(dst))
    if to is None:
        raise click.UsageError("cannot tell OUT's format from its extension: give --to "
                               f"({', '.join(FORMATS)})")
    if dst != "-":
        check_output(dst, [src], what="rules")  # before any work: never the input
    rs = read_rules(src, from_fmt, flavour)
    res = convert(rs, to, source=src)
    if dst == "-":
        click.echo(res.text, nl=False)
    else:
        write_bytes_atomic(dst, res.text.encode(), [src])
    for n in res.notes:
        click.echo(f"note: {n}", err=True)
    click.echo(f"{len(res.rules)} rule(s) converted to {to} (first match wins in both tools: order kept)", err=True)


__all__ = ["convert_cmd"]
