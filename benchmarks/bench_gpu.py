"""GPU backend throughput (issue 17): per type and variant, the CUDA kernels vs qtool's numpy
engine and ggml's single-thread C on the same rows; and whole-model wall times.

    python benchmarks/bench_gpu.py kernels [--rows 4096] [--n-per-row 4096] [--types Q4_K IQ4_XS] [--flavour ik]
    python benchmarks/bench_gpu.py model F16.gguf --ftype Q8_0 --ftype Q4_K_M [--imatrix I.gguf]
        [--llama-quantize PATH] [--threads N]

`kernels`: G weights/s of the kernel alone (CUDA events around the launches, rows already on the
device, best of 5) and end to end from host float32 rows to host bytes (copies included); the
numpy engine and ggml (QTOOL_GGML_LIB, through benchmarks/ggml_ref.py; ik_llama.cpp's library for
flavour ik with QTOOL_IK_LIB, through benchmarks/bench_ik_types.py) on the first 64 rows; every
GPU result is compared with the numpy engine's bytes on those rows (MISMATCH fails the run).
`model`: wall time of `qtool quantize --device cuda` (a fresh process), of reading the input once
(`cat FILE > /dev/null`, page-cache state reported: it is timed cold after a drop where allowed,
else warm), of llama-quantize with all cores, and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import ggml_ref  # noqa: E402
from qtool.gpu import GPU_KERNELS  # noqa: E402
from qtool.quants import engine  # noqa: E402


def _rows(nrows: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nrows, n)).astype(np.float32)
    im = rng.chisquare(2, n).astype(np.float32)
    return x, im


def bench_kernels(a: argparse.Namespace) -> list[dict]:
    import cupy as cp

    from qtool.gpu.cuda import CudaKernels

    g = CudaKernels(0)
    x, im = _rows(a.rows, a.n_per_row)
    xd = cp.asarray(x)
    imd = cp.asarray(im)
    small = x[:64]
    out = []
    wanted = {t.upper() for t in a.types} if a.types else None
    from benchmarks.bench_ik_types import IK_IDS, load_ik

    ik, _ = load_ik()
    for k in GPU_KERNELS.values():
        name = k.type_name
        if (wanted is not None and name not in wanted) or (a.flavour and k.flavour != a.flavour):
            continue
        if a.n_per_row % k.qtype.block_size:
            continue
        for v in k.variants:
            w, wd = (im, imd) if v else (None, None)
            dst = cp.empty((a.rows, k.qtype.row_bytes(a.n_per_row)), dtype=cp.uint8)
            g.quantize_device(xd, k, wd, dst)  # warm-up (and compile)
            cp.cuda.Device(0).synchronize()
            best = float("inf")
            for _ in range(5):
                e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                e0.record()
                g.quantize_device(xd, k, wd, dst)
                e1.record()
                e1.synchronize()
                best = min(best, cp.cuda.get_elapsed_time(e0, e1) / 1e3)
            t0 = time.perf_counter()
            got = g.quantize(x, name, w, flavour=k.flavour)
            e2e = time.perf_counter() - t0
            t0 = time.perf_counter()
            want = engine.quantize(small, name, w, flavour=k.flavour)
            t_np = time.perf_counter() - t0
            ok = bool(np.array_equal(got[:64], want))
            t_c = None
            if ggml_ref.available() and k.flavour == "mainline" and name in ggml_ref.MAINLINE_IDS:
                t0 = time.perf_counter()
                ggml_ref.quantize_chunk(ggml_ref.type_id(name), small, w)
                t_c = time.perf_counter() - t0
            elif ik is not None and k.flavour == "ik" and name in IK_IDS:  # ggml_Mws is then ik's C
                ik.lib.ggml_quantize_init(IK_IDS[name])
                ik.quantize_chunk(IK_IDS[name], small[:1], w)  # untimed: ik builds some tables lazily
                t0 = time.perf_counter()
                ik.quantize_chunk(IK_IDS[name], small, w)
                t_c = time.perf_counter() - t0
            nw = x.size
            row = {"type": name, "flavour": k.flavour, "imatrix": v, "gpu_kernel_Gws": nw / best / 1e9,
                   "gpu_e2e_Gws": nw / e2e / 1e9,
                   "numpy_Mws": small.size / t_np / 1e6, "ggml_Mws": None if t_c is None else small.size / t_c / 1e6,
                   "identical": ok}
            row["gpu_vs_ggml"] = None if t_c is None else row["gpu_kernel_Gws"] * 1e3 / row["ggml_Mws"]
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def _timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def _drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def bench_model(a: argparse.Namespace) -> list[dict]:
    out = []
    size = Path(a.model).stat().st_size
    cold = _drop_caches()
    t_cat_cold = _timed(["sh", "-c", f"cat '{a.model}' > /dev/null"])
    t_cat = _timed(["sh", "-c", f"cat '{a.model}' > /dev/null"])
    print(json.dumps({"model": a.model, "bytes": size, "cat_first_s": t_cat_cold, "cat_first_was_cold": cold,
                      "cat_warm_s": t_cat}), flush=True)
    for ft in a.ftype:
        q_out = f"{a.workdir}/qtool-{ft}.gguf"
        l_out = f"{a.workdir}/llama-{ft}.gguf"
        im = ["--imatrix", a.imatrix] if a.imatrix else []
        t_q = min(_timed([sys.executable, "-m", "qtool", "quantize", "-q", *im, "--device", "cuda", a.model, q_out, ft])
                  for _ in range(a.repeat))
        row = {"ftype": ft, "imatrix": bool(a.imatrix), "qtool_cuda_s": t_q, "cat_warm_s": t_cat,
               "qtool_over_cat": t_q / t_cat, "GBps": size / t_q / 1e9}
        if a.llama_quantize:
            threads = str(a.threads or os.cpu_count())
            t_l = min(_timed([a.llama_quantize, *im, a.model, l_out, ft, threads]) for _ in range(a.llama_repeat))
            row.update(llama_quantize_s=t_l, speedup_vs_llama=t_l / t_q,
                       identical=Path(q_out).read_bytes() == Path(l_out).read_bytes())
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--rows", type=int, default=4096)
    k.add_argument("--n-per-row", type=int, default=4096)
    k.add_argument("--types", nargs="*")
    k.add_argument("--flavour", choices=["mainline", "ik"], help="only this flavour's kernels")
    m = sub.add_parser("model")
    m.add_argument("model")
    m.add_argument("--ftype", action="append", required=True)
    m.add_argument("--imatrix")
    m.add_argument("--llama-quantize")
    m.add_argument("--threads", type=int)
    m.add_argument("--repeat", type=int, default=2, help="qtool runs (best of)")
    m.add_argument("--llama-repeat", type=int, default=1, help="llama-quantize runs (best of)")
    m.add_argument("--workdir", default="/tmp")
    ap.add_argument("--json", help="write the rows to this file")
    a = ap.parse_args()
    rows = bench_kernels(a) if a.cmd == "kernels" else bench_model(a)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if any(r.get("identical") is False for r in rows):
        sys.exit("MISMATCH")


if __name__ == "__main__":
    main()
