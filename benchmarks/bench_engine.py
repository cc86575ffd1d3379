"""Throughput of qtool's engine against ggml's single-thread `ggml_quantize_chunk`, same rows, same run.

    python benchmarks/bench_engine.py [--types Q4_0 Q4_K ...] [--rows 64] [--n-per-row 4096]
                                      [--repeat 3] [--gguf model-f16.gguf --tensor blk.0.ffn_up.weight]
                                      [--imatrix-gguf model.imatrix.gguf] [--json]

For each type, with and without an importance matrix, both quantizers run on identical float32
rows; the best of `--repeat` timings is reported in M weights/s, and the bytes are compared: any
case whose bytes differ is flagged MISMATCH (with the number of differing rows) and the script
exits 1. Types the engine does not implement yet are skipped (`--ggml-all` still times ggml for
them). When libggml-base.so cannot be loaded (see benchmarks/ggml_ref.py, env QTOOL_GGML_LIB) the
script says so on stderr and reports qtool's figures only, exiting 0.
Rows are random normal by default (seeded), or the first `--rows` rows of a tensor of a GGUF file.
glibc's malloc thresholds are set first, as the `qtool` command sets them (qtool/malloc_tuning.py);
`--no-malloc-tuning` leaves them alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    from benchmarks import ggml_ref
except ImportError:  # run as a script: benchmarks/ is not a package on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ggml_ref  # type: ignore[no-redef]

from qtool.malloc_tuning import tune_malloc
from qtool.quants import engine
from qtool.quants.types import get_type

DEFAULT_TYPES = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M",
    "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0",
]


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def best_time(fn: Callable[[], np.ndarray], repeat: int, clock: str = "wall") -> tuple[float, np.ndarray]:
    """Run fn once untimed (table init, caches), then `repeat` times; best time on `clock` and last
    result. "thread" counts the calling thread's CPU time only: steadier on a loaded machine, and
    fair because ik's ggml_quantize_chunk is single-threaded C run in the calling thread (ctypes);
    it would undercount a qtool kernel that hands work to BLAS threads (OPENBLAS_NUM_THREADS=1 rules
    that out)."""
    now = CLOCKS[clock]
    out = fn()
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = now()
        out = fn()
        best = min(best, now() - t0)
    return best, out


class IkLib:
    """ctypes access to ik_llama.cpp's ggml_quantize_chunk in libggml.so."""


def make_rows(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None, str]:
    """float32[rows, n_per_row] test rows, an optional real imatrix float32[n_per_row], and a label."""
    if args.gguf:
        import gguf

        reader = gguf.GGUFReader(args.gguf)
        t = next((t for t in reader.tensors if t.name == args.tensor), None)
        if t is None:
            raise SystemExit(f"tensor {args.tensor!r} not found in {args.gguf}")
        n = int(t.shape[0])
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        rows = np.ascontiguousarray(np.asarray(data, dtype=np.float32).reshape(-1, n)[: args.rows])
        label = f"{Path(args.gguf).name}:{args.tensor}"
    else:
        rng = np.random.default_rng(args.seed)
        rows = rng.standard_normal((args.rows, args.n_per_row), dtype=np.float32)
        label = f"random normal, seed {args.seed}"
    imat = None
    if args.imatrix_gguf:
        import gguf

        reader = gguf.GGUFReader(args.imatrix_gguf)
        by = {t.name: t for t in reader.tensors}
        s, c = by.get(f"{args.tensor}.in_sum2"), by.get(f"{args.tensor}.counts")
        if s is None or c is None:
            raise SystemExit(f"no imatrix entry for {args.tensor!r} in {args.imatrix_gguf}")
        imat = (np.asarray(s.data, dtype=np.float32).reshape(-1)[: rows.shape[1]]
                / np.float32(np.asarray(c.data, dtype=np.float32).reshape(-1)[0]))
    return rows, imat, label


def synthetic_imatrix(n: int, seed: int) -> np.ndarray:
    """Positive weights with an imatrix-like spread (squared normals plus a floor): float32[n]."""
    rng = np.random.default_rng(seed + 1)
    return (rng.standard_normal(n, dtype=np.float32) ** 2 + np.float32(0.05)).astype(np.float32)


def run_case(name: str, rows: np.ndarray, imat: np.ndarray | None, repeat: int, use_ggml: bool,
             ggml_all: bool) -> dict:
    """Time one (type, imatrix) case in both quantizers and compare bytes."""
    nw = rows.size
    res: dict = {"type": name, "imatrix": imat is not None, "weights": nw,
                 "qtool_mws": None, "ggml_mws": None, "ratio": None, "status": "ok", "mismatched_rows": None}
    q_out = g_out = None
    if engine.can_quantize(name, imatrix=imat is not None):
        try:
            t, q_out = best_time(lambda: engine.quantize(rows, name, imat), repeat)
            res["qtool_mws"] = nw / t / 1e6
        except Exception as e:  # an unfinished kernel must not stop the other cases
            res["status"] = f"qtool error: {type(e).__name__}: {e}"
            q_out = None
    else:
        res["status"] = "skipped: not implemented in qtool"
        if not (use_ggml and ggml_all):
            return res
    if use_ggml:
        tid = ggml_ref.type_id(name)
        ggml_ref.init(tid)
        t, g_out = best_time(lambda: ggml_ref.quantize_chunk(tid, rows, imat), repeat)
        res["ggml_mws"] = nw / t / 1e6
        if res["qtool_mws"]:
            res["ratio"] = res["qtool_mws"] / res["ggml_mws"]
        if q_out is not None:
            bad = int(np.count_nonzero(np.any(q_out != g_out, axis=1)))
            res["mismatched_rows"] = bad
            if bad:
                res["status"] = f"MISMATCH: {bad}/{rows.shape[0]} rows differ"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=DEFAULT_TYPES, help="type names (default: all mainline types)")
    ap.add_argument("--rows", type=int, default=64, help="number of rows (default 64)")
    ap.add_argument("--n-per-row", type=int, default=4096, help="row length for random rows (default 4096)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per case; best is reported (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf", help="take rows from this GGUF file (with --tensor)")
    ap.add_argument("--tensor", default="blk.0.ffn_up.weight", help="tensor name for --gguf / --imatrix-gguf")
    ap.add_argument("--imatrix-gguf", help="use this GGUF imatrix's entry for --tensor instead of a synthetic one")
    ap.add_argument("--no-imatrix", action="store_true", help="only the cases without imatrix")
    ap.add_argument("--only-imatrix", action="store_true", help="only the cases with imatrix")
    ap.add_argument("--ggml-all", action="store_true", help="also time ggml for types qtool lacks")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="leave glibc malloc thresholds alone (qtool sets them: qtool/malloc_tuning.py)")
    args = ap.parse_args(argv)
    tuned = False if args.no_malloc_tuning else tune_malloc()  # as `qtool` does at start-up

    rows, real_imat, label = make_rows(args)
    imat = real_imat if real_imat is not None else synthetic_imatrix(rows.shape[1], args.seed)
    use_ggml = ggml_ref.available()
    if not use_ggml:
        print(f"note: {ggml_ref.load_error()}; reporting qtool figures only (set {ggml_ref.ENV_VAR})",
              file=sys.stderr)

    results = []
    for raw in args.types:
        try:
            qt = get_type(raw)
            if use_ggml:
                ggml_ref.type_id(qt.name)
        except KeyError:
            why = "unknown type" if raw.upper() not in engine.quantizable_types() else "not in ggml_quantize_chunk"
            results.append({"type": raw.upper(), "imatrix": None, "status": f"skipped: {why}"})
            continue
        if rows.shape[1] % qt.block_size:
            results.append({"type": qt.name, "imatrix": None,
                            "status": f"skipped: row length {rows.shape[1]} not a multiple of {qt.block_size}"})
            continue
        if not engine.can_quantize(qt.name, imatrix=True) and not (use_ggml and args.ggml_all):
            results.append({"type": qt.name, "imatrix": None, "status": "skipped: not implemented in qtool"})
            continue
        needs = qt.needs_imatrix or (use_ggml and ggml_ref.requires_imatrix(ggml_ref.type_id(qt.name)))
        for with_im in (False, True):
            if (with_im and args.no_imatrix) or (not with_im and args.only_imatrix):
                continue
            if not with_im and needs:
                continue
            r = run_case(qt.name, rows, imat if with_im else None, args.repeat, use_ggml, args.ggml_all)
            results.append(r)
            if not args.json and sys.stderr.isatty():
                print(f"  {r['type']:<8} im={'y' if with_im else 'n'}  {r['status']}", file=sys.stderr)

    mismatches = [r for r in results if str(r.get("status", "")).startswith("MISMATCH")]
    doc = {
        "rows": int(rows.shape[0]), "n_per_row": int(rows.shape[1]), "source": label,
        "imatrix_source": "gguf imatrix" if real_imat is not None else "synthetic",
        "repeat": args.repeat, "ggml_lib": str(ggml_ref.lib_path()) if use_ggml else None,
        "ggml_available": use_ggml, "machine": platform.machine(), "python": platform.python_version(),
        "numpy": np.__version__, "malloc_tuned": tuned, "results": results, "mismatches": len(mismatches),
    }
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print_table(doc)
    if mismatches:
        print(f"ERROR: {len(mismatches)} case(s) where qtool's bytes differ from ggml's", file=sys.stderr)
        return 1
    return 0


def print_table(doc: dict) -> None:
    """Render the results with rich (a qtool dependency)."""
    render_results(doc, "ggml", "ggml_mws", "", doc["ggml_available"], "ggml reference not available")


def render_results(doc: dict, ref: str, ref_key: str, title_extra: str, ref_available: bool, unavailable: str) -> None:
    """The results table of bench_engine.py and bench_ik_types.py: one row per (type, imatrix) case,
    then the skipped types grouped by reason; `ref` names the reference column."""
    from rich.console import Console
    from rich.table import Table

    def f(v: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    tab = Table(title=f"{doc['rows']} x {doc['n_per_row']} rows ({doc['source']}), best of {doc['repeat']}"
                      + title_extra)
    for col in ("type", "imatrix", "qtool M w/s", f"{ref} M w/s", "ratio", "status"):
        tab.add_column(col, justify="right" if "w/s" in col or col == "ratio" else "left")
    for r in doc["results"]:
        if r.get("imatrix") is None:
            continue
        st = r.get("status", "")
        tab.add_row(r["type"], "yes" if r["imatrix"] else "no", f(r.get("qtool_mws")), f(r.get(ref_key)),
                    f(r.get("ratio"), "{:.3f}"), f"[bold red]{st}[/]" if st.startswith("MISMATCH") else st)
    con = Console(width=None if sys.stdout.isatty() else 120)
    con.print(tab)
    reasons: dict[str, list[str]] = {}
    for r in doc["results"]:
        if r.get("imatrix") is None:
            reasons.setdefault(r["status"], []).append(r["type"])
    for why, names in reasons.items():
        con.print(f"{why}: {' '.join(names)}", soft_wrap=True)
    if not ref_available:
        con.print(f"{unavailable}: qtool figures only")


if __name__ == "__main__":
    sys.exit(main())
