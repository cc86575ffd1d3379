"""`qtool imatrix`: convert, merge and inspect importance matrices (llama-imatrix files, .dat or .gguf)."""

from __future__ import annotations

import json
import shutil
import sys

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from ..errors import OutputError
from ..gguf_io.atomic import check_output
from ..imatrix import (
    DEFAULT_CHUNK_SIZE,
    FORMATS,
    ImatrixData,
    ImatrixError,
    combine,
    compute_statistics,
    default_chunk_size,
    format_for_path,
    layer_statistics,
    legacy_loss_warnings,
    legacy_losses,
    read_imatrix,
    write_dat,
    write_gguf,
)
from ..imatrix.data import name_bytes
from ..imatrix.stats import TensorStats, format_llama, to_json


def _warn(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def _info(msg: str) -> None:
    click.echo(msg, err=True)


def _out_format(out: str, to: str | None) -> str:
    fmt = to or format_for_path(out)
    if fmt is None:
        raise click.BadParameter(f"cannot tell the format of {out!r} from its extension; name it .dat or .gguf, "
                                 "or give --to dat|gguf", param_hint="OUT")
    return fmt


def _write(inputs: list[ImatrixData], paths: list[str], out: str, to: str | None, chunk_size: int | None) -> None:
    fmt = _out_format(out, to)
    check_output(out, paths)  # before any work: never an input, a directory or a device
    if chunk_size is None:
        chunk_size, notes = default_chunk_size(inputs)
        for note in notes:
            _warn(note)
    c = combine(inputs, chunk_size)
    if fmt == "dat" and any(not d.legacy for d in inputs):
        for line in legacy_loss_warnings(c):
            _warn(line)
    try:
        (write_dat if fmt == "dat" else write_gguf)(c, out, _warn, paths)
    except OSError as e:  # one without a file name, which the click group would not report as a user error
        raise OutputError(f"cannot write {out}: {e.strerror or e}", path=out) from e
    datasets: list[str]
    if fmt == "gguf":
        n, datasets = len(c.entries), list(c.datasets)
    else:  # what the .dat file holds: entries with data, the last dataset name
        n, datasets = sum(1 for e in c.entries.values() if e.counts.any()), [d for d in c.datasets[-1:] if d]
    _info(f"wrote {out} ({fmt}: {n} entries, {c.chunk_count} chunks of {c.chunk_size} tokens, "
          f"datasets {datasets})")


_CHUNK = click.option("--chunk-size", "-c", type=click.IntRange(1, 2**31 - 1), default=None,
                      help="Tokens per chunk (llama-imatrix's -c) used to scale .dat input and compute chunk "
                           "counts. Default: the first GGUF input's imatrix.chunk_size, else 512.")
_SHOW_CHUNK = click.option("--chunk-size", "-c", type=click.IntRange(1, 2**31 - 1), default=None,
                           help="Tokens per chunk (llama-imatrix's -c) a legacy .dat file was collected with "
                                "(it stores no token counts); default 512. A GGUF file's figures do not depend "
                                "on it.")
_TO = click.option("--to", type=click.Choice(FORMATS), default=None,
                   help="Output format (default: from the extension, .dat or .gguf).")


@click.group()
def imatrix() -> None:
    """Importance matrices: convert between .dat and .gguf, merge, show statistics (llama-imatrix)."""


def _attach_collect() -> None:
    """`qtool imatrix collect` lives in collect_cmd (the forward pass is imported only when used)."""
    from .collect_cmd import collect
    from .imatrix_check_cmd import check

    imatrix.add_command(collect)
    imatrix.add_command(check)


_attach_collect()


@imatrix.command()
@click.argument("in_file", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("out", metavar="OUT")
@_TO
@_CHUNK
def convert(in_file: str, out: str, to: str | None, chunk_size: int | None) -> None:
    """Convert IN to OUT: the bytes `llama-imatrix --in-file IN -o OUT` writes.

    GGUF -> .dat warns about what the legacy format loses (per-expert counts, exact token counts,
    all but the last dataset name).
    """
    _write([read_imatrix(in_file)], [in_file], out, to, chunk_size)


@imatrix.command()
@click.argument("inputs", metavar="A B ...", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, help="Output file.")
@_TO
@_CHUNK
def merge(inputs: tuple[str, ...], out: str, to: str | None, chunk_size: int | None) -> None:
    """Merge imatrix files (either format, mixed): `llama-imatrix --in-file A --in-file B ... -o OUT`.

    Sums and token counts add up per matrix (per expert for MoE tensors); .dat inputs count as
    their chunks x chunk size tokens. Different shapes or expert counts are errors naming the tensor.
    """
    _write([read_imatrix(p) for p in inputs], list(inputs), out, to, chunk_size)


_SORT_KEYS = {
    "sum": lambda s: s.total, "min": lambda s: s.min, "max": lambda s: s.max, "mean": lambda s: s.mean,
    "std": lambda s: s.stddev, "active": lambda s: s.active, "n": lambda s: s.elements,
    "entropy": lambda s: s.entropy, "enorm": lambda s: s.entropy_norm, "zd": lambda s: s.zd,
    "cossim": lambda s: s.cossim,
}
SORTS = ("default", "name", "layer", *_SORT_KEYS)


def sort_stats(stats: list[TensorStats], key: str, reverse: bool) -> list[TensorStats]:
    """default: llama-imatrix's order; name/layer ascending; figures descending (NaN last)."""
    if key == "default":
        out = list(stats)
    elif key == "name":
        out = sorted(stats, key=lambda s: name_bytes(s.name))
    elif key == "layer":
        out = sorted(stats, key=lambda s: (s.block < 0, s.block, name_bytes(s.tensor), name_bytes(s.name)))
    else:
        f = _SORT_KEYS[key]
        out = sorted(stats, key=lambda s: (np.isnan(f(s)), -f(s) if not np.isnan(f(s)) else 0.0))
    return out[::-1] if reverse else out


def _shown(s: str) -> str:
    """A name for the terminal: bytes that are not UTF-8 (kept as surrogate escapes) shown as \\xNN."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _write_stdout(b: bytes) -> None:
    """Bytes to stdout as they are (names stay as stored whatever the terminal's encoding)."""
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:  # a text-only stream
        sys.stdout.write(b.decode("utf-8", "replace"))
    else:
        out.write(b)
        out.flush()


def _table(stats: list[TensorStats], title: str) -> Table:
    from ..imatrix.stats import cfmt

    t = Table(title=title)
    for col in ("Layer", "Tensor", "Σ(Act²)", "Min", "Max", "μ", "σ", "% Active", "N", "Entropy", "E (norm)",
                "ZD", "CosSim"):
        t.add_column(col, justify="left" if col == "Tensor" else "right")
    for s in stats:
        t.add_row(_shown(s.layer), _shown(s.tensor), cfmt(s.total, 0, 2), cfmt(s.min, 0, 4), cfmt(s.max, 0, 4),
                  cfmt(s.mean, 0, 2),
                  cfmt(s.stddev, 0, 2), cfmt(float(np.float32(s.active) * np.float32(100)), 0, 2) + "%",
                  str(s.elements), cfmt(s.entropy, 0, 4), cfmt(s.entropy_norm, 0, 2) + "%",
                  cfmt(float(np.float32(100) * np.float32(s.zd)), 0, 2) + "%", cfmt(s.cossim, 0, 4))
    return t


def _layer_table(stats: list[TensorStats]) -> Table:
    from ..imatrix.stats import cfmt

    t = Table(title="Weighted averages per layer (weights: N)")
    for col in ("Layer", "μΣ(Act²)", "μZD", "μCosSim"):
        t.add_column(col, justify="right")
    for ls in layer_statistics(stats):
        t.add_row(str(ls.layer), cfmt(ls.sum_act2, 0, 2), cfmt(float(np.float32(100) * np.float32(ls.zd)), 0, 4) + "%",
                  cfmt(ls.cossim, 0, 4))
    return t


@imatrix.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--sort", "sort_key", type=click.Choice(SORTS), default="default",
              help="Row order: default is llama-imatrix's (tensor kind, then Σ(Act²) descending); name and layer "
                   "ascending; a figure descending.")
@click.option("--reverse", is_flag=True, help="Reverse the order.")
@click.option("--per-layer", is_flag=True, help="Only the per-layer summary.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout (fractions, not percent).")
@click.option("--plain", is_flag=True, help="llama-imatrix --show-statistics text (tab-separated, same formats).")
@_SHOW_CHUNK
def show(file: str, sort_key: str, reverse: bool, per_layer: bool, as_json: bool, plain: bool,
         chunk_size: int | None) -> None:
    """Per-tensor statistics of FILE, as `llama-imatrix --in-file FILE --show-statistics`.

    Σ(Act²) (sum of per-column mean squared activations), min, max, μ, σ, % active (> 1e-5),
    N, entropy (bits, and % of log2 N), ZD (share more than 1σ above μ), cosine similarity with the
    same tensor of the previous layer, and a per-layer summary weighted by N.
    """
    data = read_imatrix(file)
    stats = compute_statistics(data, chunk_size or DEFAULT_CHUNK_SIZE, _warn)
    if not stats:
        raise ImatrixError(f"cannot compute statistics for {file}: no tensor has data", path=file)
    stats = sort_stats(stats, sort_key, reverse)
    if as_json:
        doc = to_json(file, [] if per_layer else stats, layer_statistics(stats))
        doc["summary"] = data.summary()
        # names that are not UTF-8 are kept as surrogate escapes: written as JSON \udcXX escapes
        _write_stdout((json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace"))
        return
    if plain:  # the bytes llama-imatrix prints, names as stored
        _write_stdout(format_llama(file, stats, tensors=not per_layer, layers=True).encode("utf-8", "surrogateescape"))
        return
    width = shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 200
    con = Console(width=max(width, 120))
    if not per_layer:
        con.print(_table(stats, f"{_shown(file)}: {len(stats)} tensors"))
    con.print(_layer_table(stats))


__all__ = ["imatrix", "legacy_losses", "sort_stats"]
