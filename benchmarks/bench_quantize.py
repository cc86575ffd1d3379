"""Wall time of `qtool quantize` vs `llama-quantize` on the same model, ftype, imatrix and thread count.

    python benchmarks/bench_quantize.py MODEL-F16.gguf --ftype Q4_K_M --ftype Q8_0 \
        [--imatrix IM.gguf] [--threads 2] [--repeat 3] [--llama-quantize PATH] [--json]

Both tools run as fresh processes (start-up and model load included), alternately, `--repeat`
times; the best wall time of each is reported with the ratio qtool / llama-quantize (lower is
better for qtool) and whether the two outputs are byte-identical. llama-quantize is looked for in
--llama-quantize, $LLAMA_QUANTIZE, then PATH; without it only qtool's times are reported.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time


def find_llama_quantize(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("LLAMA_QUANTIZE"), shutil.which("llama-quantize")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--ftype", action="append", required=True)
    ap.add_argument("--imatrix", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--llama-quantize", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    lq = find_llama_quantize(a.llama_quantize)
    im = ["--imatrix", a.imatrix] if a.imatrix else []
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for ft in a.ftype:
            out_q, out_l = os.path.join(d, "qtool.gguf"), os.path.join(d, "llama.gguf")
            q_cmd = [sys.executable, "-m", "qtool", "quantize", "-q", *im, a.model, out_q, ft, str(a.threads)]
            l_cmd = [lq, *im, a.model, out_l, ft, str(a.threads)] if lq else None
            tq, tl = [], []
            for _ in range(a.repeat):
                tq.append(timed(q_cmd))
                if l_cmd:
                    tl.append(timed(l_cmd))
            same = filecmp.cmp(out_q, out_l, shallow=False) if l_cmd else None
            row = {"ftype": ft, "imatrix": bool(a.imatrix), "threads": a.threads, "qtool_s": min(tq),
                   "llama_quantize_s": min(tl) if tl else None,
                   "ratio": min(tq) / min(tl) if tl else None, "identical": same,
                   "size": os.path.getsize(out_q)}
            rows.append(row)
            if not a.json:
                lt = f"{row['llama_quantize_s']:.2f}" if tl else "-"
                ratio = f"{row['ratio']:.2f}x" if tl else "-"
                print(f"{ft:<10} imatrix={'yes' if a.imatrix else 'no ':<3} threads={a.threads} "
                      f"qtool {row['qtool_s']:.2f} s  llama-quantize {lt} s  ratio {ratio}  identical={same}",
                      flush=True)
    if a.json:
        print(json.dumps({"model": a.model, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                          "llama_quantize": lq, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
