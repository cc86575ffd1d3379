"""`qtool dequantize` vs reading the input (`cat IN > /dev/null`) vs `llama-quantize --allow-requantize IN OUT F16`.

    python benchmarks/bench_dequantize.py MODEL.gguf [--to F16] [--threads 2] [--repeat 3] \
        [--llama-quantize PATH] [--out-dir DIR] [--qtool "python -m qtool"] [--device cuda] [--json]

The issue's target (16): qtool reads the input at >= 0.5x the bytes/s of `cat` in one run. Every
tool runs as a fresh process, alternately, `--repeat` times; the best and the median wall time of
each are printed with the CPU time (user + sys) of the children. What is measured:

- cat: `cat IN > /dev/null` after one untimed read, so the page cache is warm (said in the output);
- write floor: writing as many bytes as the output has (zeros, 4 MiB writes, no fsync) into a new
  file in --out-dir: what any tool pays to put the output in the page cache on this machine;
- qtool: `qtool dequantize -q -t N IN OUT` (start-up, header parse, fsync of the atomic output
  included), and the same in-process (`dequantize_file`, no interpreter start-up);
- llama-quantize (from --llama-quantize, $LLAMA_QUANTIZE, $QTOOL_LLAMA_BIN/llama-quantize or PATH):
  its F16 / BF16 / F32 output, compared byte for byte with qtool's;
- with --device cuda: `qtool dequantize --device cuda` too, as a command and in-process (the
  in-process runs after the first reuse its CUDA context and loaded kernels), its output compared
  byte for byte with the CPU run's; one untimed run first compiles the kernels (NVRTC, cached).

The ratio printed is input bytes/s of qtool over input bytes/s of cat (= cat's time over qtool's).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def find_llama_quantize(arg: str | None) -> str | None:
    llama_bin = os.environ.get("QTOOL_LLAMA_BIN")
    for cand in (arg, os.environ.get("LLAMA_QUANTIZE"), llama_bin and os.path.join(llama_bin, "llama-quantize"),
                 shutil.which("llama-quantize")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def run_timed(cmd: list[str] | str, shell: bool = False) -> tuple[float, float]:
    """(wall seconds, children's user + sys seconds) of one command."""
    before = os.times()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {cmd}\n{r.stderr[-2000:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def write_floor(path: Path, size: int) -> tuple[float, float]:
    """Write `size` zero bytes to a new file (4 MiB writes, no fsync): wall and own CPU seconds."""
    buf = bytes(4 << 20)
    c0, t0 = time.process_time(), time.perf_counter()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            left -= f.write(memoryview(buf)[:min(left, len(buf))])
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    path.unlink()
    return wall, cpu


def in_process(model: str, out: Path, to: str, threads: int,
               device: str = "cpu") -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        from qtool.dequantize import dequantize_file

        before = os.times()
        t0 = time.perf_counter()
        dequantize_file(model, out, to, nthreads=threads, device=device)
        wall = time.perf_counter() - t0
        after = os.times()
        cpu = sum(after[:4]) - sum(before[:4])  # own and the workers' user + sys
        return wall, cpu
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--to", default="F16", choices=["F16", "BF16", "F32"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--llama-quantize", default=None)
    ap.add_argument("--out-dir", default=None, help="where outputs go (default: a temporary directory)")
    ap.add_argument("--qtool", default=f"{shlex.quote(sys.executable)} -m qtool",
                    help="the qtool command line (default: this interpreter's -m qtool)")
    ap.add_argument("--no-in-process", action="store_true",
                    help="skip the in-process run (when --qtool is another tree, e.g. a baseline)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: time `qtool dequantize --device cuda` as well (CuPy and a GPU needed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    size_in = os.path.getsize(a.model)
    llq = find_llama_quantize(a.llama_quantize)
    work = Path(tempfile.mkdtemp(prefix="bench-deq-", dir=a.out_dir))
    out_q, out_l = work / "qtool.gguf", work / "llama.gguf"
    qtool_cmd = shlex.split(a.qtool) + ["dequantize", "-q", "--to", a.to, "-t", str(a.threads), a.model, str(out_q)]
    cat_cmd = f"cat {shlex.quote(a.model)} > /dev/null"
    tools: dict[str, Callable[[], tuple[float, float]]] = {
        "cat (warm)": lambda: run_timed(cat_cmd, shell=True),
        "qtool": lambda: run_timed(qtool_cmd),
    }
    if not a.no_in_process:
        tools["qtool in-process"] = in_process(a.model, work / "qtool-ip.gguf", a.to, a.threads)
    out_c = work / "qtool-cuda.gguf"
    cuda_cmd = qtool_cmd[:-1] + ["--device", "cuda", str(out_c)]
    if a.device == "cuda":
        tools["qtool cuda"] = lambda: run_timed(cuda_cmd)
        if not a.no_in_process:
            tools["qtool cuda in-proc"] = in_process(a.model, work / "qtool-cuda-ip.gguf", a.to, a.threads, "cuda")
    if llq:
        tools["llama-quantize"] = lambda: run_timed([llq, "--allow-requantize", a.model, str(out_l), a.to])
    try:
        run_timed(cat_cmd, shell=True)  # warm the page cache: every tool reads a cached input
        run_timed(qtool_cmd)  # and the output's size is known
        if a.device == "cuda":
            run_timed(cuda_cmd)  # compiles the kernels once (NVRTC; CuPy caches them)
        size_out = out_q.stat().st_size
        tools["write floor"] = lambda: write_floor(work / "zeros.bin", size_out)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in tools}
        for _ in range(a.repeat):
            for k, f in tools.items():
                times[k].append(f())
        same = filecmp.cmp(out_q, out_l, shallow=False) if llq else None
        same_cuda = filecmp.cmp(out_q, out_c, shallow=False) if a.device == "cuda" else None
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {k: min(w for w, _ in v) for k, v in times.items()}
    rows = {k: {"best_s": round(best[k], 3), "median_s": round(statistics.median(w for w, _ in v), 3),
                "cpu_s": round(min(c for _, c in v), 3),
                "in_MB_per_s": round(size_in / 1e6 / best[k], 1) if k != "write floor" else None}
            for k, v in times.items()}
    ratio = best["cat (warm)"] / best["qtool"]
    ratio_ip = best["cat (warm)"] / best["qtool in-process"] if "qtool in-process" in best else None
    summary = {"model": a.model, "to": a.to, "threads": a.threads, "repeat": a.repeat, "bytes_in": size_in,
               "bytes_out": size_out, "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "tools": rows,
               "ratio_to_cat": round(ratio, 3),
               "ratio_to_cat_in_process": round(ratio_ip, 3) if ratio_ip is not None else None,
               "identical_to_llama_quantize": same, "cuda_identical_to_cpu": same_cuda}
    if a.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"{os.path.basename(a.model)} -> {a.to}: {size_in / 1e6:.1f} MB in, {size_out / 1e6:.1f} MB out, "
          f"-t {a.threads}, best of {a.repeat}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"{'':18} {'best s':>8} {'median s':>9} {'cpu s':>7} {'MB/s in':>8}")
    for k, r in rows.items():
        mbs = f"{r['in_MB_per_s']:8.0f}" if r["in_MB_per_s"] is not None else f"{'':>8}"
        print(f"{k:18} {r['best_s']:8.3f} {r['median_s']:9.3f} {r['cpu_s']:7.2f} {mbs}")
    ip = f", in-process {ratio_ip:.3f}" if ratio_ip is not None else ""
    print(f"qtool / cat bytes/s: {ratio:.3f} (target >= 0.5{ip})")
    if "llama-quantize" in best:
        print(f"qtool / llama-quantize time: {best['qtool'] / best['llama-quantize']:.2f}; "
              f"outputs {'identical' if same else 'DIFFER'}")
    if "qtool cuda" in best:
        print(f"qtool cuda / qtool cpu time: {best['qtool cuda'] / best['qtool']:.2f}; "
              f"outputs {'identical' if same_cuda else 'DIFFER'}")


if __name__ == "__main__":
    main()
