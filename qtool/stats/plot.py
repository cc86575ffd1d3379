"""Error-vs-size charts: relative RMSE against bits per weight, one point per type (log y-axis),
like the charts in ik_llama.cpp's IQK discussions; low-rank corrected variants (--svd-rank) as a
second series at bpw + the correction's extra bits.

`plot_png` needs matplotlib (the optional extra `plot`); `plot_text` draws the same chart with
characters for a terminal. Both take the list of `Point`s that `report_points` makes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from ..errors import QtoolError
from ..gguf_io.atomic import check_output, write_bytes_atomic
from .report import StatsReport

POINTS_KEY = "qtool:points"  # PNG text chunk holding the number of points drawn


class PlotUnavailable(QtoolError):
    """matplotlib is not installed."""


@dataclass(frozen=True)
class Point:
    label: str
    bpw: float
    rel_error: float
    series: str  # "type" or "low-rank"


def report_points(report: StatsReport) -> list[Point]:
    """One point per type (relative RMSE of the type's total), plus one per type and rank of the
    low-rank study (relative RMSE after the correction, at the bpw including its cost)."""
    pts: list[Point] = []
    for tr in report.types:
        if not tr.total.n:
            continue
        pts.append(Point(tr.name, tr.bpw, tr.total.rel_rmse, "type"))
    for tr in report.types:
        if not tr.total.n or not tr.svd:
            continue
        rms = tr.total.rms_x
        for r in tr.svd:
            f = r.figures()
            if not r.n or not rms:
                continue
            pts.append(Point(f"{tr.name}+r{r.rank}", tr.bpw + float(f["extra_bpw"] or 0.0),
                             float(f["rmse"] or 0.0) / rms, "low-rank"))
    return pts


def plot_png(points: list[Point], path: str, title: str = "") -> int:
    """Write the chart to a PNG file; returns the number of points drawn (also stored in the
    PNG's text chunk `qtool:points`)."""
    plt = _pyplot()
    drawable = [p for p in points if p.rel_error > 0 and math.isfinite(p.rel_error)]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    n = 0
    for series, marker, color in (("type", "o", "tab:blue"), ("low-rank", "^", "tab:orange")):
        ps = [p for p in drawable if p.series == series]
        if not ps:
            continue
        ax.scatter([p.bpw for p in ps], [p.rel_error for p in ps], marker=marker, color=color,
                   label="quantization types" if series == "type" else "with low-rank correction", zorder=3)
        n += len(ps)
        for p in ps:
            ax.annotate(p.label, (p.bpw, p.rel_error), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if drawable:
        ax.set_yscale("log")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("relative RMSE (RMSE / RMS of weights)")
    ax.set_title(title or "Quantization error vs size")
    ax.grid(True, which="both", alpha=0.3)
    if n:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={POINTS_KEY: str(n)})
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return n


def _pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend, or PlotUnavailable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'qtool[plot]' (or pip install matplotlib), "
                              "or use --plot - for a text chart") from None
    return plt


def check_png_target(path: str, inputs: list[str]) -> None:
    """Before any work: matplotlib is there and the PNG can be written (not an input, a folder
    that exists and is writable, not a directory or device)."""
    _pyplot()
    check_output(path, inputs, what="plot")


def plot_text(points: list[Point], width: int = 64, height: int = 18) -> str:
    """The chart as plain text: x = bits per weight, y = relative RMSE on a log scale. Each
    point is drawn as a letter (a, b, ...; capitals for low-rank corrected points) with a legend."""
    pts = [p for p in points if p.rel_error > 0 and math.isfinite(p.rel_error)]
    if not pts:
        return "(nothing to plot: no type has a non-zero error)\n"
    xs = [p.bpw for p in pts]
    ys = [math.log10(p.rel_error) for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)  # the axes span the data: the extreme points sit on the edges
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 < 1e-6:  # one error value: a tenth of a decade around it
        y0, y1 = y0 - 0.05, y1 + 0.05
    grid = [[" "] * width for _ in range(height)]
    legend = []
    n_type = n_lr = 0
    for p, y in zip(pts, ys, strict=True):
        if p.series == "type":
            mark = _mark(n_type, lower=True)
            n_type += 1
        else:
            mark = _mark(n_lr, lower=False)
            n_lr += 1
        col = round((p.bpw - x0) / (x1 - x0) * (width - 1))
        row = height - 1 - round((y - y0) / (y1 - y0) * (height - 1))
        grid[row][col] = mark if grid[row][col] == " " else "*"
        legend.append(f"  {mark} {p.label:<14} {p.bpw:7.3f} bpw  rel. RMSE {p.rel_error:.3e}")
    lines = []
    label_w = 8
    for r in range(height):
        frac = (height - 1 - r) / (height - 1)
        yv = y0 + frac * (y1 - y0)
        label = f"{10 ** yv:.2e}" if r % 3 == 0 or r == height - 1 else ""
        lines.append(f"{label:>{label_w}} |" + "".join(grid[r]))
    lines.append(" " * label_w + " +" + "-" * width)
    lo, hi = f"{x0:.2f}", f"{x1:.2f}"
    lines.append(" " * (label_w + 2) + lo + " " * max(1, width - len(lo) - len(hi)) + hi)
    lines.append(" " * (label_w + 2) + "bits per weight  (y: relative RMSE, log scale; * = overlap)")
    return "\n".join(lines + legend) + "\n"


def _mark(i: int, lower: bool) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    s = letters[i % 26] if i < 26 else str(i % 10)
    return s if lower else s.upper()
