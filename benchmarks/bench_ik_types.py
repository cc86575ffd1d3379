"""Throughput of qtool's engine (flavour "ik") against ik_llama.cpp's single-thread `ggml_quantize_chunk`
for ik_llama.cpp's own IQK types, same rows, same run.

    QTOOL_IK_LIB=/path/to/ik_llama.cpp/build/bin/libggml.so \\
        python benchmarks/bench_ik_types.py [--types IQ4_K IQ2_KS ...] [--rows 256] [--n-per-row 4096]
                                            [--repeat 3] [--seed 0] [--no-imatrix | --only-imatrix]
                                            [--clock wall|thread] [--ik-all] [--json]

For each type, with and without an importance matrix (a synthetic one, as bench_engine.py makes),
both quantizers run on identical float32 rows (random normal, seeded); the best of `--repeat`
timings is reported in M weights/s with the ratio qtool / ik, and the bytes are compared: a case
whose bytes differ is flagged MISMATCH and the script exits 1. Types the engine has not registered
for flavour "ik" yet are skipped with a note (`--ik-all` still times ik_llama.cpp for them).

The library is ik_llama.cpp's libggml.so (ik keeps the quantizers in libggml, not libggml-base); its
path comes only from the environment variable QTOOL_IK_LIB. Without it, or when it cannot be loaded,
the script says so on stderr and reports qtool's figures only. ik's `ggml_quantize_chunk` takes one
more argument than mainline's, a trailing `const struct quantize_user_data *` (NULL here: the
defaults llama-quantize uses), and runs single-threaded. The byte reference is a build with
`-ffp-contract=off`; a build that contracts multiply-adds (e.g. -march=native) can differ from qtool
in some blocks of some types.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

try:
    from benchmarks.bench_engine import CLOCKS, best_time, render_results, synthetic_imatrix
except ImportError:  # run as a script: benchmarks/ is not a package on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_engine import CLOCKS, best_time, render_results, synthetic_imatrix  # type: ignore[no-redef]

from qtool.malloc_tuning import tune_malloc
from qtool.quants import can_quantize, get_type, quantize

ENV_VAR = "QTOOL_IK_LIB"

# enum ggml_type ids in ik_llama.cpp's ggml/include/ggml.h (they differ from mainline's above 40).
IK_IDS: dict[str, int] = {
    "IQ1_BN": 134, "IQ2_BN": 135, "IQ2_K": 137, "IQ3_K": 138, "IQ4_K": 139, "IQ5_K": 140, "IQ6_K": 141,
    "IQ4_KS": 144, "IQ2_KS": 145, "IQ4_KSS": 146, "IQ5_KS": 152, "IQ3_KS": 156, "IQ2_KL": 157,
    "IQ2_KT": 153, "IQ3_KT": 154, "IQ4_KT": 155, "IQ1_KT": 158,
    # mainline types ik quantizes with its own algorithms (same ids in both trees below 40)
    "Q4_1": 3, "Q5_1": 7, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "IQ2_XXS": 16, "IQ2_XS": 17,
    "IQ3_XXS": 18, "IQ1_S": 19, "IQ3_S": 21, "IQ2_S": 22, "IQ1_M": 29,
}
DEFAULT_TYPES = ["IQ2_K", "IQ3_K", "IQ4_K", "IQ5_K", "IQ6_K", "IQ2_KS", "IQ3_KS", "IQ4_KS", "IQ5_KS",
                 "IQ4_KSS", "IQ2_KL", "IQ1_BN", "IQ2_BN"]
TRELLIS_TYPES = ["IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT"]
IK_MAINLINE_TYPES = ["Q4_1", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
                     "IQ3_S", "IQ2_S", "IQ1_M"]


class IkLib:
    """ctypes access to ik_llama.cpp's ggml_quantize_chunk in libggml.so."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)

        class InitParams(ctypes.Structure):
            _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

        lib.ggml_init.restype = ctypes.c_void_p
        lib.ggml_init.argtypes = [InitParams]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
            ctypes.c_void_p, ctypes.c_void_p,  # imatrix, ik's quantize_user_data
        ]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_quantize_init.restype = None
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        self._ctx = lib.ggml_init(InitParams(1 << 20, None, False))  # fills the fp16 tables
        self.lib = lib
        self.path = path

    def requires_imatrix(self, tid: int) -> bool:
        return bool(self.lib.ggml_quantize_requires_imatrix(tid))

    def quantize_chunk(self, tid: int, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        """ggml_quantize_chunk(tid, rows, ..., imatrix, NULL) -> uint8[nrows, row_bytes]."""
        x = np.ascontiguousarray(rows, dtype=np.float32)
        nrows, n = x.shape
        qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        rb = int(self.lib.ggml_row_size(tid, n))
        out = np.empty((nrows, rb), dtype=np.uint8)
        got = self.lib.ggml_quantize_chunk(tid, x.ctypes.data, out.ctypes.data, 0, nrows, n,
                                           None if qw is None else qw.ctypes.data, None)
        if got != nrows * rb:
            raise RuntimeError(f"ggml_quantize_chunk wrote {got} bytes, expected {nrows * rb}")
        return out


def load_ik() -> tuple[IkLib | None, str | None]:
    """The library named by $QTOOL_IK_LIB, or (None, why not)."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return None, (f"{ENV_VAR} is not set: point it at ik_llama.cpp's libggml.so "
                      f"(e.g. {ENV_VAR}=.../build/bin/libggml.so) to compare with ik_llama.cpp")
    try:
        return IkLib(path), None
    except (OSError, AttributeError) as e:
        return None, f"cannot load ik_llama.cpp library {path} ({ENV_VAR}): {e}"


def run_case(name: str, rows: np.ndarray, imat: np.ndarray | None, repeat: int, ik: IkLib | None,
             ik_all: bool, clock: str = "wall") -> dict:
    """Time one (type, imatrix) case in both quantizers and compare bytes."""
    nw = rows.size
    res: dict = {"type": name, "imatrix": imat is not None, "weights": nw, "qtool_mws": None, "ik_mws": None,
                 "ratio": None, "status": "ok", "mismatched_rows": None}
    q_out = None
    if can_quantize(name, "ik", imat is not None):
        try:
            t, q_out = best_time(lambda: quantize(rows, name, imat, flavour="ik"), repeat, clock)
            res["qtool_mws"] = nw / t / 1e6
        except Exception as e:  # an unfinished kernel must not stop the other cases
            res["status"] = f"qtool error: {type(e).__name__}: {e}"
    else:
        if ik is None or not ik_all:
            res["status"] = "skipped: not registered in qtool (flavour ik)"
            return res
        res["status"] = "ik only: not registered in qtool"
    if ik is not None:
        tid = IK_IDS[name]
        ik.lib.ggml_quantize_init(tid)
        t, i_out = best_time(lambda: ik.quantize_chunk(tid, rows, imat), repeat, clock)
        res["ik_mws"] = nw / t / 1e6
        if res["qtool_mws"]:
            res["ratio"] = res["qtool_mws"] / res["ik_mws"]
        if q_out is not None:
            bad = int(np.count_nonzero(np.any(q_out != i_out, axis=1)))
            res["mismatched_rows"] = bad
            if bad:
                res["status"] = f"MISMATCH: {bad}/{rows.shape[0]} rows differ"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=DEFAULT_TYPES,
                    help="type names (default: the IQK types); 'trellis' and 'ik-mainline' name the *_KT types "
                         "and the mainline types ik quantizes its own way")
    ap.add_argument("--rows", type=int, default=256, help="number of rows (default 256)")
    ap.add_argument("--n-per-row", type=int, default=4096, help="row length (default 4096)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per case; best is reported (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-imatrix", action="store_true", help="only the cases without imatrix")
    ap.add_argument("--only-imatrix", action="store_true", help="only the cases with imatrix")
    ap.add_argument("--ik-all", action="store_true", help="also time ik_llama.cpp for types qtool lacks")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time (default) or the calling thread's CPU time (steadier on a busy machine)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="leave glibc malloc thresholds alone (qtool sets them: qtool/malloc_tuning.py)")
    args = ap.parse_args(argv)
    tuned = False if args.no_malloc_tuning else tune_malloc()

    rng = np.random.default_rng(args.seed)
    rows = rng.standard_normal((args.rows, args.n_per_row), dtype=np.float32)
    imat = synthetic_imatrix(args.n_per_row, args.seed)
    ik, why = load_ik()
    if ik is None:
        print(f"note: {why}; reporting qtool figures only", file=sys.stderr)

    results = []
    groups = {"TRELLIS": TRELLIS_TYPES, "IK-MAINLINE": IK_MAINLINE_TYPES}
    for raw in [t for g in args.types for t in groups.get(g.upper(), [g])]:
        name = raw.upper()
        if name not in IK_IDS:
            results.append({"type": name, "imatrix": None,
                            "status": f"skipped: not an IQK type here (known: {' '.join(IK_IDS)})"})
            continue
        qt = get_type(name)
        if rows.shape[1] % qt.block_size:
            results.append({"type": name, "imatrix": None,
                            "status": f"skipped: row length {rows.shape[1]} not a multiple of {qt.block_size}"})
            continue
        if not any(can_quantize(name, "ik", v) for v in (False, True)) and not (ik is not None and args.ik_all):
            results.append({"type": name, "imatrix": None, "status": "skipped: not registered in qtool (flavour ik)"})
            continue
        needs = qt.needs_imatrix or (ik is not None and ik.requires_imatrix(IK_IDS[name]))
        for with_im in (False, True):
            if (with_im and args.no_imatrix) or (not with_im and (args.only_imatrix or needs)):
                continue
            r = run_case(name, rows, imat if with_im else None, args.repeat, ik, args.ik_all, args.clock)
            results.append(r)
            if not args.json and sys.stderr.isatty():
                print(f"  {name:<8} im={'y' if with_im else 'n'}  {r['status']}", file=sys.stderr)

    mismatches = [r for r in results if str(r.get("status", "")).startswith("MISMATCH")]
    doc = {
        "rows": int(rows.shape[0]), "n_per_row": int(rows.shape[1]), "source": f"random normal, seed {args.seed}",
        "imatrix_source": "synthetic", "repeat": args.repeat, "clock": args.clock, "ik_lib": ik.path if ik else None,
        "ik_available": ik is not None, "machine": platform.machine(), "python": platform.python_version(),
        "numpy": np.__version__, "malloc_tuned": tuned, "results": results, "mismatches": len(mismatches),
    }
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print_table(doc)
    if mismatches:
        print(f"ERROR: {len(mismatches)} case(s) where qtool's bytes differ from ik_llama.cpp's", file=sys.stderr)
        return 1
    return 0


def print_table(doc: dict) -> None:
    """Render the results with rich (bench_engine's table, ik_llama.cpp as the reference)."""
    render_results(doc, "ik", "ik_mws", f", single thread, {doc['clock']} clock", doc["ik_available"],
                   f"ik_llama.cpp reference not available ({ENV_VAR} unset or unusable)")


if __name__ == "__main__":
    sys.exit(main())
