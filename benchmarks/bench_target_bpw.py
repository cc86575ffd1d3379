"""The table of docs/target-bpw.md: llama.cpp's ftype mixes against solved mixes of no more bytes.

For each model (with its importance matrix) and each ftype (Q3_K_M, Q4_K_M, IQ4_XS by default):
1. the ftype's mix as qtool plans it (identical to llama-quantize's, tests/test_mix_reference.py)
   gives the budget: its tensor data bytes;
2. `qtool mix solve` (the library: qtool/mix/solve.py) chooses a mix for that budget, once with
   the default sensitivity ("role") and once "flat"; the errors are measured once per model
   and shared by every budget;
3. every mix is quantized to a real file (llama-quantize when --llama-quantize is given: it
   writes the same bytes as qtool, faster; else qtool's own quantize_file), and its real error
   is measured on the whole file: sum over all tensors and weights of w_j (x_ij - q_ij)^2, w the
   tensor's imatrix column weights scaled to mean 1 (1 for tensors without an entry), x the F16
   weights, q the file's weights dequantized; plus that error times the role sensitivity.

    python benchmarks/bench_target_bpw.py \\
        --model smol=/work/ref/models/smol-f16.gguf:/work/shared/vectors/imatrix/smol-imatrix.gguf \\
        --model gemma=/work/ref/models/gemma-f16.gguf:gemma-imatrix.gguf \\
        --llama-quantize /work/ref/llama-build/bin/llama-quantize [--work DIR] [--json out.json]

It prints the Markdown table; --json writes every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtool.api import plan as plan_file  # noqa: E402
from qtool.api import quantize_file  # noqa: E402
from qtool.gguf_io import GGUFModel, TensorInfo  # noqa: E402
from qtool.imatrix import QuantizeImatrix, prepare_imatrix, read_imatrix  # noqa: E402
from qtool.mix import MixOptions, specs_from_gguf  # noqa: E402
from qtool.mix.mainline import OUTPUT, tensor_get_category  # noqa: E402
from qtool.mix.sensitivity import sensitivity  # noqa: E402
from qtool.mix.solve import (  # noqa: E402
    SolveItem,
    build_items,
    build_recipe,
    candidate_types,
    measure,
    solve_items,
    tensor_nbytes,
)
from qtool.stats.metrics import normalized_weights  # noqa: E402
from qtool.stats.report import slab_to_float  # noqa: E402

SLAB = 1 << 20


def load_qi(path: str) -> QuantizeImatrix:
    return prepare_imatrix(read_imatrix(path), path)


def weights_for(qi: QuantizeImatrix, name: str, t: TensorInfo) -> np.ndarray | None:
    n_exp = t.shape[2] if len(t.shape) > 2 else 1
    return qi.lookup(name, t.n_per_row, n_exp)


def measure_model(path: str, qi: QuantizeImatrix, sample_rows: int, threads: int | None
                  ) -> tuple[list[SolveItem], MixOptions, float]:
    """Items of the model with every default candidate measured (errors), sensitivities "role"."""
    opts = MixOptions(has_imatrix=True, imatrix_names=frozenset(qi.weights), dry_run=True)
    with GGUFModel(path) as m:
        tensors, info = specs_from_gguf(m)
        items = build_items(tensors, info, opts, candidate_types(with_imatrix=True), lambda n: n in qi.weights)
        t0 = time.perf_counter()
        measure(m, items, lambda it, t: weights_for(qi, it.imatrix_name, t), sample_rows, threads)
    return items, opts, time.perf_counter() - t0


def solve_for(items: list[SolveItem], opts: MixOptions, budget: int, mode: str) -> tuple[list[SolveItem], str, str]:
    """(items with choices, recipe TOML, base ftype) for a budget and a sensitivity mode."""
    its = copy.deepcopy(items)
    for it in its:
        s = 1.0 if mode == "flat" else it.sensitivity
        for p in it.points:
            p.loss = 0.0 if it.fixed else s * p.error
    solve_items(its, budget)
    toml, base = build_recipe(its, opts, [f"budget {budget} bytes, sensitivity {mode}"])
    return its, toml, base.name


def quantize(src: str, dst: str, imatrix: str, ftype: str, rules: list[tuple[str, str]], llama_quantize: str | None,
             threads: int | None) -> None:
    if llama_quantize:
        args = [llama_quantize, "--imatrix", imatrix]
        for pat, typ in rules:
            args += ["--tensor-type", f"{pat}={typ}"]
        args += [src, dst, ftype, str(threads or os.cpu_count() or 1)]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return
    quantize_file(src, dst, ftype, imatrix=imatrix, nthreads=threads,
                  tensor_type=[f"{p}={t}" for p, t in rules])


def file_error(orig: str, quant: str, qi: QuantizeImatrix) -> dict[str, Any]:
    """Real figures of a quantized file against its F16 source (see the module docstring)."""
    out: dict[str, Any] = {"bytes": 0, "weights": 0, "error": 0.0, "loss": 0.0, "types": {}, "tensors": {}}
    with GGUFModel(orig) as a, GGUFModel(quant) as b:
        src = {t.name: t for t in a.tensors}
        has_output = any(tensor_get_category(t.name) == OUTPUT for t in b.tensors)
        n_layer = int(b.kv(f"{b.arch}.block_count") or 0)
        for t in b.tensors:
            out["bytes"] += t.n_bytes
            out["weights"] += t.n_elements
            out["types"][t.qtype.name] = out["types"].get(t.qtype.name, 0) + t.n_elements
            if t.qtype.name == src[t.name].qtype.name:
                continue
            s = src[t.name]
            w = weights_for(qi, t.name, s)
            nw = normalized_weights(w) if w is not None else None
            per = t.shape[1] if len(t.shape) > 1 else 1
            rows = max(1, SLAB // t.n_per_row)
            err = 0.0
            for start in range(0, t.n_rows, rows):
                stop = min(t.n_rows, start + rows)
                d = slab_to_float(a, s, start, stop).astype(np.float64) - slab_to_float(b, t, start, stop)
                d2 = d * d
                if nw is None:
                    err += float(d2.sum())
                    continue
                r = np.arange(start, stop) // per
                err += float((d2 * nw[np.minimum(r, nw.shape[0] - 1)]).sum())
            out["error"] += err
            out["tensors"][t.name] = [t.qtype.name, err]
            out["loss"] += err * sensitivity(t.name, n_layer, has_output, "role")
    out["bpw"] = 8.0 * out["bytes"] / out["weights"]
    out["file_bytes"] = os.path.getsize(quant)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=F16.gguf:IMATRIX")
    ap.add_argument("--ftype", action="append", default=None)
    ap.add_argument("--llama-quantize", default=None)
    ap.add_argument("--sample-rows", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    ftypes = a.ftype or ["Q3_K_M", "Q4_K_M", "IQ4_XS"]
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-target-bpw-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for spec in a.model:
        name, rest = spec.split("=", 1)
        path, imatrix = rest.rsplit(":", 1)
        qi = load_qi(imatrix)
        items, opts, t_meas = measure_model(path, qi, a.sample_rows, a.threads)
        print(f"{name}: measured {sum(len(it.points) for it in items if not it.fixed)} (tensor, type) points "
              f"in {t_meas:.1f} s", file=sys.stderr)
        for ft in ftypes:
            p = plan_file(path, ft, imatrix=imatrix)
            budget = sum(tensor_nbytes(d.shape, d.type) for d in p)
            f_ft = str(work / f"{name}-{ft}.gguf")
            quantize(path, f_ft, imatrix, ft, [], a.llama_quantize, a.threads)
            row: dict[str, Any] = {"model": name, "ftype": ft, "budget": budget,
                                   "ftype_mix": file_error(path, f_ft, qi)}
            # the ftype mix's predicted error (the same measurements) for comparison
            chosen = {d.name: d.type for d in p}
            row["ftype_mix"]["predicted_error"] = sum(
                next((pt.error for pt in it.points if pt.type == chosen[it.name]), float("nan"))
                for it in items if not it.fixed)
            for mode in ("role", "flat"):
                t0 = time.perf_counter()
                its, toml, base = solve_for(items, opts, budget, mode)
                t_solve = time.perf_counter() - t0
                rules = [(it.name, it.chosen.type.lower()) for it in its if not it.fixed]
                rules = [("^" + n.replace(".", "\\.") + "$", ty) for n, ty in rules]
                f_s = str(work / f"{name}-{ft}-solved-{mode}.gguf")
                (work / f"{name}-{ft}-solved-{mode}.toml").write_text(toml)
                quantize(path, f_s, imatrix, base, rules, a.llama_quantize, a.threads)
                fe = file_error(path, f_s, qi)
                fe["predicted_error"] = sum(it.chosen.error for it in its if not it.fixed)
                for it in its:
                    if not it.fixed and it.name in fe["tensors"]:
                        fe["tensors"][it.name].append(it.chosen.error)
                fe["seconds_solve"] = t_solve
                row[f"solved_{mode}"] = fe
            results.append(row)
            print(f"{name} {ft}: " + ", ".join(f"{k} {row[k]['bytes']} B err {row[k]['error']:.5g}"
                                               for k in ("ftype_mix", "solved_role", "solved_flat")), file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | target | mix | tensor bytes | bpw | weighted error (real) | predicted | "
             "error x role sensitivity | error vs ftype |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        base = r["ftype_mix"]["error"]
        for key, label in (("ftype_mix", f"{r['ftype']} (llama.cpp's mix)"), ("solved_role", "solved, role"),
                           ("solved_flat", "solved, flat")):
            f = r[key]
            lines.append(f"| {r['model']} | {r['ftype']} | {label} | {f['bytes']} | {f['bpw']:.4f} | "
                         f"{f['error']:.5g} | {f['predicted_error']:.5g} | {f['loss']:.5g} | "
                         f"{100.0 * (f['error'] / base - 1.0):+.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
