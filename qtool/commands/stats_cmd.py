"""`qtool stats`: quantization error report (ik_llama.cpp's quantize-stats), plots, low-rank study."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from ..mix.options import OPTION_BY_NAME
from ..quants import can_quantize, get_type, quantizable_types
from ..quants.types import IK, QType
from ..stats.metrics import ErrorStats
from ..stats.report import StatsError, StatsReport, TypeResult, run_stats
from .common import THREADS_HELP, click_option, flavour_option, threads_option


def _parse_ranks(value: str | None) -> list[int]:
    if not value:
        return []
    out = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            r = int(part)
        except ValueError:
            raise click.BadParameter(f"{part!r} is not an integer (expected e.g. 8,32,128)",
                                     param_hint="--svd-rank") from None
        if r < 1:
            raise click.BadParameter(f"rank {r} must be at least 1", param_hint="--svd-rank")
        out.append(r)
    return sorted(set(out))


def _names_ik_only_type(names: tuple[str, ...]) -> bool:
    """Whether a -t / --type list names a type only ik_llama.cpp defines (IQ4_K, IQ2_KS, Q6_0, ...)."""
    for n in names:
        for piece in n.split(","):
            try:
                if get_type(piece.strip()).flavour == IK:
                    return True
            except KeyError:
                pass
    return False


def _types(names: tuple[str, ...], flavour: str, have_imatrix: bool) -> list[QType]:
    if not names:  # like quantize-stats: every type we can round-trip (F32 is exact, left out)
        every = [get_type(n) for n in quantizable_types(flavour, have_imatrix) if n != "F32"]
        every = [t for t in every if have_imatrix or not t.needs_imatrix]
        return sorted(every, key=lambda t: (t.id, t.name))
    out: list[QType] = []
    valid = ", ".join(n.lower() for n in quantizable_types(flavour, have_imatrix))
    for n in names:
        for piece in n.split(","):
            piece = piece.strip()
            if not piece:
                continue
            try:
                qt = get_type(piece)
            except KeyError:
                raise click.BadParameter(f"unknown type {piece!r}; qtool can quantize: {valid}",
                                         param_hint="--type") from None
            if not can_quantize(qt, flavour, have_imatrix):
                how = f"{flavour}, with an imatrix" if have_imatrix else flavour
                raise click.BadParameter(f"qtool cannot quantize to {qt.name} ({how}) yet; it can: {valid}",
                                         param_hint="--type")
            if qt.needs_imatrix and not have_imatrix:
                raise click.BadParameter(f"{qt.name} needs an importance matrix (--imatrix)", param_hint="--type")
            if qt not in out:
                out.append(qt)
    return out


def _imatrix_weights(path: str):  # -> WeightsFn
    """Per-tensor imatrix rows (float32[n_mats, n_per_row]) from an imatrix file (.dat or .gguf)."""
    from ..gguf_io import GGUFError
    from ..stats.imatrix_weights import ImatrixError, load_weights

    try:
        return load_weights(path)
    except (GGUFError, ImatrixError) as e:
        raise StatsError(f"--imatrix {e.message}", option="--imatrix", path=path) from e


def _progress(enabled: bool):
    """A rich progress bar on stderr (only on a terminal); returns (on_start, on_progress, stop)."""
    if not enabled:
        return None, None, lambda: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = {}

    def on_start(total: int) -> None:
        prog.start()
        task["id"] = prog.add_task("stats", total=total)

    def on_progress(name: str, n: int) -> None:
        prog.update(task["id"], advance=n, description=name[:40])

    return on_start, on_progress, prog.stop


FORMATS = ("table", "json", "csv", "ik", "rmse")


def _threads_or_types(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> int | None:
    """-t N / --threads N (the last one counts), as in every qtool command; a -t value that is not
    a number is a type (`qtool stats model.gguf --rmse -t q4_k -t iq4_k`, how stats users write it),
    collected in ctx.meta for the command."""
    n: int | None = None
    for v in values:
        try:
            n = int(v)
        except ValueError:
            ctx.meta.setdefault("stats_types", []).append(v)
    return n


def _format(fmt: str | None, shortcuts: dict[str, bool]) -> str:
    chosen = {f for f, on in shortcuts.items() if on} | ({fmt} if fmt else set())
    if len(chosen) > 1:
        raise click.UsageError(f"choose one output format, not {' and '.join(sorted(chosen))} "
                               "(--format, or one of --json, --csv, --ik, --rmse)")
    return chosen.pop() if chosen else "table"


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--type", "-T", "type_names", multiple=True, metavar="TYPE",
              help="Type to test (repeatable or comma separated; default: every type qtool can quantize).")
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Importance matrix: quantize with it and report the imatrix-weighted RMSE.")
@click.option("--include", "include", multiple=True, metavar="REGEX", help="Only tensors matching (repeatable).")
@click.option("--exclude", "exclude", multiple=True, metavar="REGEX", help="Skip tensors matching (repeatable).")
@click.option("--per-layer", is_flag=True, help="Also report per layer (blk.N).")
@click.option("--per-tensor", is_flag=True, help="Also report per tensor (quantize-stats -p).")
@click.option("--histogram", is_flag=True, help="Also show the |error| histogram of each type.")
@threads_option("-n", multiple=True, type=str, callback=_threads_or_types,
                help=THREADS_HELP[:-1] + " (-n: quantize-stats' spelling); a -t value that is not a number is a "
                     "type, as in `-t q4_k -t iq4_k`.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="table (default, rich tables), json (one document, see docs/stats.md), csv (one row per type "
                   "and tensor), ik (quantize-stats' own lines), rmse (one `TYPE BPW RMSE` line per type).")
@click.option("--json", "as_json", is_flag=True, help="Shortcut for --format json.")
@click.option("--csv", "as_csv", is_flag=True, help="Shortcut for --format csv.")
@click.option("--ik", "as_ik", is_flag=True,
              help="Shortcut for --format ik: quantize-stats' lines and totals (a tied token_embd counted twice, "
                   "as it does).")
@click.option("--rmse", "as_rmse", is_flag=True,
              help="Shortcut for --format rmse: one `TYPE BPW RMSE` line per type, for pipelines.")
@click.option("--plot", "plot", default=None, metavar="FILE.png|-",
              help="Relative error vs bpw chart: a PNG (needs matplotlib) or '-' for a text chart.")
@click.option("--svd-rank", "svd_rank", default=None, metavar="R1,R2,...",
              help="Low-rank (LQER, and L²QER with --imatrix) correction study at these ranks.")
@flavour_option()
@click_option(OPTION_BY_NAME["device"], help="Where to quantize the rows: the CPU engine, or the first CUDA GPU "
              "through CuPy (pip install 'qtool[cuda]'; the same bytes, so the same figures; types without a GPU "
              "kernel and quantize-stats' own cuts stay on the CPU).")
@click.option("--ik-chunks", is_flag=True,
              help="Cut and quantize exactly as quantize-stats does (16384-value rows, its row quantizer "
                   "for IQ4_NL); with --flavour ik --ik it prints llama-quantize-stats -r's lines.")
@click.pass_context
def stats(ctx: click.Context, model: str, type_names: tuple[str, ...], imatrix: str | None,
          include: tuple[str, ...], exclude: tuple[str, ...], per_layer: bool, per_tensor: bool, histogram: bool,
          threads: int | None, fmt: str | None, as_json: bool, as_csv: bool, as_ik: bool, as_rmse: bool,
          plot: str | None, svd_rank: str | None, flavour: str, device: str, ik_chunks: bool) -> None:
    """Quantization error of MODEL's tensors for each type (ik_llama.cpp's quantize-stats).

    Every selected 2-D tensor is quantized and dequantized with qtool's engine and compared with
    the original (or, for a quantized MODEL, with its dequantized weights): RMSE, relative RMSE,
    max error, 95th percentile and median of |error|, cosine similarity, imatrix-weighted RMSE.
    """
    out_format = _format(fmt, {"json": as_json, "csv": as_csv, "ik": as_ik, "rmse": as_rmse})
    if not os.path.exists(model):
        raise click.BadParameter(f"{model}: no such file", param_hint="MODEL")
    ranks = _parse_ranks(svd_rank)
    names = type_names + tuple(ctx.meta.get("stats_types", ()))
    if ctx.get_parameter_source("flavour") == ParameterSource.DEFAULT and _names_ik_only_type(names):
        flavour = IK  # an ik_llama.cpp type (-t iq4_k) implies --flavour ik, as for quantize
    types = _types(names, flavour, imatrix is not None)
    if not types:
        raise StatsError("no type to test")
    if plot and plot != "-":  # before any work: matplotlib there, the file writable, never an input
        from ..stats.plot import check_png_target

        check_png_target(plot, [model] + ([imatrix] if imatrix else []))
    weights_fn = _imatrix_weights(imatrix) if imatrix else None
    on_start, on_progress, stop = _progress(sys.stderr.isatty())
    try:  # errors, Ctrl-C and signals: the click group reports them
        report = run_stats(model, types, weights_fn=weights_fn, imatrix_path=imatrix, include=list(include),
                           exclude=list(exclude), threads=threads, svd_ranks=ranks, flavour=flavour,
                           ik_chunks=ik_chunks, device=device, on_start=on_start, on_progress=on_progress,
                           on_note=lambda msg: click.echo(f"warning: {msg}", err=True))
    finally:
        stop()
    if out_format == "json":
        click.echo(json.dumps(report.to_json(per_layer=per_layer, histogram=histogram), indent=1))
    elif out_format == "csv":
        click.echo(report_csv(report), nl=False)
    elif out_format == "ik":
        click.echo(report_ik(report, per_tensor, histogram), nl=False)
    elif out_format == "rmse":
        click.echo(report_rmse(report), nl=False)
    else:
        render_tables(report, per_layer, per_tensor, histogram)
    if plot:
        _plot(report, plot, to_stderr=out_format in ("json", "csv", "rmse"))
    from ..dequantize import grid_note

    note = grid_note(model, flavour=flavour)  # a dequantized quant as reference biases every figure
    if note:
        click.echo(f"note: {note}", err=True)


def _plot(report: StatsReport, target: str, to_stderr: bool) -> None:
    from ..stats.plot import plot_png, plot_text, report_points

    pts = report_points(report)
    if target == "-":
        click.echo(plot_text(pts), nl=False, err=to_stderr)
        return
    n = plot_png(pts, target, title=os.path.basename(report.model))
    click.echo(f"plot: {n} points written to {target}", err=True)


# --- renderers -----------------------------------------------------------------------------------

CSV_FIELDS = ["type", "tensor", "n", "bpw", "layout", "rmse", "rel_rmse", "max_error", "rel_max_error", "p95",
              "median", "cosine", "weighted_rmse"]
TOTAL_ROW = "*total*"


def report_csv(report: StatsReport) -> str:
    """One row per (type, tensor) and one `*total*` row per type; the low-rank study adds
    svd_rR_* columns (extra_bpw, rmse, l2qer_rmse) per rank."""
    ranks = report.svd_ranks
    fields = list(CSV_FIELDS)
    for r in ranks:
        fields += [f"svd_r{r}_extra_bpw", f"svd_r{r}_rmse", f"svd_r{r}_weighted_rmse", f"svd_r{r}_l2qer_rmse",
                   f"svd_r{r}_l2qer_weighted_rmse"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for tr in report.types:
        for t in tr.tensors:
            row = {"type": tr.name, "tensor": t.name, "bpw": t.bpw, "layout": t.layout, **t.stats.figures()}
            _svd_cols(row, t.svd)
            w.writerow({k: _csv_val(v) for k, v in row.items() if k in fields})
        row = {"type": tr.name, "tensor": TOTAL_ROW, "bpw": tr.bpw, "layout": "", **tr.total.figures()}
        _svd_cols(row, tr.svd)
        w.writerow({k: _csv_val(v) for k, v in row.items() if k in fields})
    return buf.getvalue()


def _svd_cols(row: dict, svd) -> None:
    for r in svd or []:
        f = r.figures()
        for k in ("extra_bpw", "rmse", "weighted_rmse", "l2qer_rmse", "l2qer_weighted_rmse"):
            row[f"svd_r{r.rank}_{k}"] = f[k]


def _csv_val(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def report_rmse(report: StatsReport) -> str:
    """One `TYPE BPW RMSE` line per type (space-separated, no header): `qtool stats --rmse | sort -gk3`.
    A type for which no tensor could be tested has no line (a note on stderr says so)."""
    out = []
    for tr in report.types:
        if not tr.total.n:
            click.echo(f"note: {tr.name}: no tensor tested ({len(tr.skipped)} skipped)", err=True)
            continue
        out.append(f"{tr.name} {tr.bpw:.4f} {tr.total.rmse:.6e}")
    return "".join(line + "\n" for line in out)


def ggml_type_name(qt: QType) -> str:
    """The name ggml prints for a type (q4_K, iq4_xs, q8_K64)."""
    return re.sub(r"^(q\d)_k(\d*)$", r"\1_K\2", qt.name.lower())


def report_ik(report: StatsReport, per_tensor: bool, histogram: bool) -> str:
    """quantize-stats' output lines: per tensor `type::name` lines with --per-tensor, one line per
    type, and its histogram table with --histogram. Like quantize-stats, a model without
    output.weight has token_embd.weight counted twice (llama.cpp's tensor map holds it again as
    the output); tensors come in file order."""
    out = []
    for tr in report.types:
        name = ggml_type_name(tr.qtype)
        total = ErrorStats()
        total.merge(tr.total)
        for t in tr.tensors:
            twice = report.tied_embeddings and t.name == "token_embd.weight"
            if twice:
                total.merge(t.stats)
            if per_tensor:
                out += [t.stats.ik_line(f"{name}::{t.name}")] * (2 if twice else 1)
        out.append(total.ik_line(name))
        if histogram:
            out.append("Error distribution:")
            for lo, hi, c in total.histogram_rows():
                out.append(f"[{lo:3.4f}, {hi:3.4f}): {c:11d}")
    return "\n".join(out) + "\n"


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _fig_cells(s, weighted: bool) -> list[str]:
    cells = [f"{s.rmse:.8f}", f"{s.rel_rmse:.6f}", f"{s.max_error:.8f}", f"{s.rel_max_error:.4f}",
             f"{s.p95:.4f}", f"{s.median:.4f}", f"{s.cosine:.6f}"]
    if weighted:
        cells.append(_f(s.weighted_rmse, ".8f"))
    return cells


FIG_COLS = ["rmse", "rel rmse", "max err", "rel max", "p95 <", "median <", "cosine"]


def _table(title: str, first: list[str], weighted: bool) -> Table:
    t = Table(title=title, title_justify="left")
    for c in first:
        t.add_column(c)
    for c in FIG_COLS + (["weighted rmse"] if weighted else []):
        t.add_column(c, justify="right")
    return t


def render_tables(report: StatsReport, per_layer: bool, per_tensor: bool, histogram: bool) -> None:
    con = Console(width=None if sys.stdout.isatty() else 200)
    weighted = report.imatrix is not None
    ref = "original weights" if report.reference == "original" else "dequantized weights (the model is quantized)"
    con.print(f"[bold]{report.model}[/]  reference: {ref}  flavour: {report.flavour}"
              + (f"  imatrix: {report.imatrix}" if weighted else ""))
    t = _table("Totals per type (weighted by element count)", ["type", "bpw", "tensors"], weighted)
    for tr in report.types:
        t.add_row(tr.name, f"{tr.bpw:.4f}", str(len(tr.tensors)), *_fig_cells(tr.total, weighted))
    con.print(t)
    for tr in report.types:
        if tr.skipped:
            reasons = sorted({r for _, r in tr.skipped})
            con.print(f"[dim]{tr.name}: {len(tr.skipped)} tensor(s) skipped: {'; '.join(reasons[:3])}"
                      f"{' ...' if len(reasons) > 3 else ''}[/]")
    if per_layer:
        for tr in report.types:
            lt = _table(f"{tr.name}: per layer", ["layer", "bpw"], weighted)
            for key, s, bits in tr.layers():
                lt.add_row(key, f"{bits / s.n:.4f}" if s.n else "-", *_fig_cells(s, weighted))
            con.print(lt)
    if per_tensor:
        for tr in report.types:
            tt = _table(f"{tr.name}: per tensor", ["tensor", "bpw", "layout"], weighted)
            for x in tr.tensors:
                tt.add_row(x.name, f"{x.bpw:.4f}", x.layout, *_fig_cells(x.stats, weighted))
            con.print(tt)
    if report.svd_ranks:
        _render_svd(con, report.types, per_tensor, weighted)
    if histogram:
        for tr in report.types:
            ht = Table(title=f"{tr.name}: |error| histogram", title_justify="left")
            ht.add_column("range")
            ht.add_column("count", justify="right")
            ht.add_column("share", justify="right")
            n = max(1, tr.total.n)
            for lo, hi, c in tr.total.histogram_rows():
                if c:
                    ht.add_row(f"[{lo:.4f}, {hi:.4f})", str(c), f"{100.0 * c / n:.3f}%")
            con.print(ht)


def _render_svd(con: Console, types: list[TypeResult], per_tensor: bool, weighted: bool) -> None:
    t = Table(title="Low-rank correction of the quantization error (fp16 factors)", title_justify="left")
    cols = ["type", "tensor", "rank", "bpw", "+bpw", "total bpw", "rmse", "corrected rmse"]
    if weighted:
        cols += ["weighted rmse", "corrected w-rmse", "L²QER rmse", "L²QER w-rmse"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("type", "tensor") else "right")

    def rows(name: str, tensor: str, bpw: float, st, svd) -> None:
        for r in svd or []:
            f = r.figures()
            cells = [name, tensor, str(r.rank), f"{bpw:.4f}", f"{f['extra_bpw']:.4f}",
                     f"{bpw + f['extra_bpw']:.4f}", f"{st.rmse:.8f}", f"{f['rmse']:.8f}"]
            if weighted:
                cells += [_f(st.weighted_rmse, ".8f"), _f(f["weighted_rmse"], ".8f"), _f(f["l2qer_rmse"], ".8f"),
                          _f(f["l2qer_weighted_rmse"], ".8f")]
            t.add_row(*cells)

    for tr in types:
        rows(tr.name, "(all)", tr.bpw, tr.total, tr.svd)
        if per_tensor:
            for x in tr.tensors:
                rows(tr.name, x.name, x.bpw, x.stats, x.svd)
    con.print(t)
