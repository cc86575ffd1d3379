"""Evaluate combining several quants of one model (qtool.combine, docs/dequantize-combine.md).

Takes a float model as the truth, makes Q5_K_M, Q4_K_M, Q3_K_M and Q2_K from it with
`qtool quantize` (kept in --workdir, reused when present), and compares to the truth, per tensor
class, the RMSE (and with --imatrix the imatrix-weighted RMSE: sqrt(sum_j w_j e_j^2 / sum_j w_j)
over each row's columns j) of: each single dequant, and the combinations {Q5_K_M, Q4_K_M},
{Q5_K_M, Q4_K_M, Q2_K} and all four, for each estimator (`--methods`), plus the naive
weighted average of the dequants (no intervals) as a baseline. Prints a markdown table.

    python benchmarks/bench_combine.py --truth /work/ref/models/smol-f16.gguf --workdir /tmp/cmb \\
        --name smol --imatrix /work/shared/vectors/imatrix/smol-imatrix.gguf
    python benchmarks/bench_combine.py --truth /work/ref/models/gemma-f16.gguf --workdir /tmp/cmb \\
        --name gemma --max-rows 256
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np

from qtool.combine import (
    MAX_EMPTY,
    CombineStats,
    can_combine,
    distinct_sources,
    estimate,
    intervals,
    requantize_rule,
)
from qtool.gguf_io import GGUFModel
from qtool.quants import dequantize

FTYPES = ("Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
COMBOS = (("Q5_K_M", "Q4_K_M"), ("Q5_K_M", "Q4_K_M", "Q2_K"), FTYPES)
CLASSES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "token_embd", "output")


def tensor_class(name: str) -> str:
    base = name.rsplit(".", 1)[0]
    last = base.split(".")[-1]
    return last if last in CLASSES else "other"


def f16(x: np.ndarray) -> np.ndarray:
    """What an F16 output file holds."""
    return x.astype(np.float32).astype(np.float16).astype(np.float64)


def make_quants(truth: str, workdir: str, name: str, threads: int) -> dict[str, str]:
    paths = {}
    for ft in FTYPES:
        p = os.path.join(workdir, f"{name}-{ft}.gguf")
        if not os.path.exists(p):
            print(f"making {p}", file=sys.stderr)
            subprocess.run(["qtool", "quantize", truth, p, ft, str(threads)], check=True,
                           stdout=subprocess.DEVNULL)
        paths[ft] = p
    return paths


class Acc:
    """Sums of squared errors (plain and imatrix-weighted) per tensor class."""

    def __init__(self) -> None:
        self.se: dict[str, float] = defaultdict(float)
        self.n: dict[str, float] = defaultdict(float)
        self.wse: dict[str, float] = defaultdict(float)
        self.wn: dict[str, float] = defaultdict(float)

    def add(self, cls: str, err: np.ndarray, w: np.ndarray | None) -> None:
        e2 = err * err
        for c in (cls, "all"):
            self.se[c] += float(e2.sum())
            self.n[c] += e2.size
            if w is not None:
                self.wse[c] += float((e2 * w[None, :]).sum())
                self.wn[c] += float(w.sum()) * e2.shape[0]

    def rmse(self, c: str) -> float:
        return (self.se[c] / self.n[c]) ** 0.5 if self.n[c] else float("nan")

    def wrmse(self, c: str) -> float:
        return (self.wse[c] / self.wn[c]) ** 0.5 if self.wn[c] else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--name", default="model")
    ap.add_argument("--imatrix", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-rows", type=int, default=0, help="rows per tensor (0: all)")
    ap.add_argument("--methods", default="mid,nearest,laplace")
    ap.add_argument("--only", default=None, help="regex: only tensors whose name matches")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    paths = make_quants(args.truth, args.workdir, args.name, args.threads)
    imx = None
    if args.imatrix:
        from qtool.imatrix import read_imatrix

        imx = read_imatrix(args.imatrix)
    methods = args.methods.split(",")
    variants = [(m, True, MAX_EMPTY) for m in methods] + [("mid", False, 1.0)]  # last: no block rules

    t0 = time.perf_counter()
    truth = GGUFModel(args.truth)
    models = {ft: GGUFModel(p) for ft, p in paths.items()}
    single = {ft: Acc() for ft in FTYPES}
    comb = {(c, v): Acc() for c in COMBOS for v in variants}
    naive = {c: Acc() for c in COMBOS}
    stats = {c: CombineStats() for c in COMBOS}
    types_seen: dict[str, set[str]] = defaultdict(set)
    for t in truth.tensors:
        if len(t.shape) < 2 or (args.only and not re.search(args.only, t.name)):
            continue
        cls = tensor_class(t.name)
        infos = {ft: next(x for x in m.tensors if x.name == t.name) for ft, m in models.items()}
        if not all(can_combine(i.qtype) for i in infos.values()):
            print(f"skip {t.name}: types {[i.qtype.name for i in infos.values()]}", file=sys.stderr)
            continue
        for ft, i in infos.items():
            types_seen[ft].add(i.qtype.name)
        w = None
        if imx is not None:
            wf = imx.weights_for(t.name)
            if wf is not None:
                w = np.asarray(wf, dtype=np.float64).reshape(-1)[:t.n_per_row]
        n = t.n_per_row
        nrows = t.n_rows if args.max_rows <= 0 else min(t.n_rows, args.max_rows)
        step = max(1, (1 << 19) // n)
        for s in range(0, nrows, step):
            e = min(nrows, s + step)
            x = dequantize(truth.tensor_rows(t, s, e), t.qtype, n).astype(np.float64)
            raws = {ft: models[ft].tensor_rows(i, s, e) for ft, i in infos.items()}
            iv = {ft: intervals(raws[ft], i.qtype, n) for ft, i in infos.items()}
            for ft in FTYPES:
                single[ft].add(cls, f16(iv[ft].v) - x, w)
            for c in COMBOS:
                order = distinct_sources([raws[ft] for ft in c], [infos[ft].qtype for ft in c])
                ivs = [iv[c[k]] for k in order]
                for v in variants:
                    est, st = estimate(ivs, method=v[0], grid=v[1], max_empty=v[2])
                    if v[1]:  # with the block rules: the requantize rule last (combine_rows' order)
                        est, st.requantized_blocks = requantize_rule(
                            [raws[c[k]] for k in order], [infos[c[k]].qtype for k in order], n, est, "F16")
                    comb[(c, v)].add(cls, f16(est) - x, w)
                    if v == variants[0]:
                        stats[c].add(st)
                ws = [1.0 / np.where(np.isinf(q.step), np.inf, q.step) ** 2 for q in ivs]
                num = sum(wi * q.v for wi, q in zip(ws, ivs, strict=True))
                den = sum(ws)
                naive[c].add(cls, f16(np.where(den > 0, num / np.where(den > 0, den, 1), ivs[0].v)) - x, w)
    secs = time.perf_counter() - t0

    classes = [c for c in (*CLASSES, "other", "all") if single[FTYPES[0]].n[c]]
    res: dict = {"truth": args.truth, "max_rows": args.max_rows, "seconds": secs,
                 "types": {k: sorted(v) for k, v in types_seen.items()}, "rows": {}}
    print(f"\n### {args.name}: RMSE x 1e4 vs the truth ({args.truth}"
          f"{f', first {args.max_rows} rows per tensor' if args.max_rows else ''})\n")
    print("types: " + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in types_seen.items()) + "\n")
    hdr = ["class", *FTYPES]
    for c in COMBOS:
        tag = "+".join(ft.replace("_K_M", "").replace("_K", "") for ft in c)
        hdr += [f"{{{tag}}} {v[0]}{'' if v[1] else ' raw'}" for v in variants] + [f"{{{tag}}} naive"]
    for metric in ("rmse", "wrmse") if imx is not None else ("rmse",):
        print(f"\n{metric}:\n")
        print("| " + " | ".join(hdr) + " |")
        print("|" + "---|" * len(hdr))
        for cl in classes:
            row = [getattr(single[ft], metric)(cl) for ft in FTYPES]
            for c in COMBOS:
                best = min(getattr(single[ft], metric)(cl) for ft in c)
                for v in variants:
                    row.append(getattr(comb[(c, v)], metric)(cl))
                row.append(getattr(naive[c], metric)(cl))
                del best
            res["rows"].setdefault(metric, {})[cl] = row
            cells = [f"{r * 1e4:.3f}" for r in row[:len(FTYPES)]]
            i = len(FTYPES)
            for c in COMBOS:
                best = min(getattr(single[ft], metric)(cl) for ft in c)
                for _ in range(len(variants) + 1):
                    rel = f"{100 * (row[i] / best - 1):+.1f}%" if best > 0 else ("=" if row[i] == 0 else "+inf")
                    cells.append(f"{row[i] * 1e4:.3f} ({rel})")
                    i += 1
            print(f"| {cl} | " + " | ".join(cells) + " |")
    print("\nblock rules of the first estimator (grid: a source's dequant fits every interval; fallback: "
          "too many disjoint intervals):\n")
    for c in COMBOS:
        st = stats[c]
        res.setdefault("stats", {})["+".join(c)] = st.as_dict()
        print(f"- {{{', '.join(c)}}}: {st.weights} weights, {st.empty} ({100 * st.empty / max(1, st.weights):.3f}%) "
              f"with disjoint intervals; {st.blocks} blocks, {st.grid_blocks} "
              f"({100 * st.grid_blocks / max(1, st.blocks):.2f}%) grid, {st.fallback_blocks} "
              f"({100 * st.fallback_blocks / max(1, st.blocks):.3f}%) fallback, {st.requantized_blocks} "
              f"({100 * st.requantized_blocks / max(1, st.blocks):.2f}%) requantize rule")
    print(f"\n{secs:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
