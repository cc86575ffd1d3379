"""Tokens/s of `qtool imatrix collect` and `qtool perplexity` against llama-imatrix and
llama-perplexity on the same model, text, context, chunks and thread count (wall-clock
including model load and tokenization).

    python benchmarks/bench_eval.py MODEL.gguf [--text FILE] [--chunks 8] [-c 512] [-t 2]
                                    [--repeat 3] [--only perplexity|collect]

With --repeat N the tools run N rounds, back to back within a round (qtool, then llama.cpp's
tool), so that load from other processes hits both alike; each row gives the median tok/s and
the range, and the ratio row the median of the per-round ratios qtool / llama.cpp.

The reference tools are found through QTOOL_LLAMA_BIN (skipped when unset). The default text is
Python's pydoc topics (the topics joined in sorted key order with blank lines).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pydoc_text(folder: Path) -> Path:
    from pydoc_data.topics import topics

    p = folder / "pydoc.txt"
    p.write_text("\n\n".join(topics[k] for k in sorted(topics)))
    return p


def command(module: str, attr: str) -> list[str]:
    """The qtool command as a subprocess (through the click command itself, registered or not)."""
    code = f"import sys; from qtool.commands.{module} import {attr}; sys.argv[0] = 'qtool'; {attr}()"
    return [sys.executable, "-c", code]


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--text")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1, help="rounds (median and range reported)")
    ap.add_argument("--only", choices=("perplexity", "collect"), help="one of the two tools")
    ap.add_argument("--no-fa-off", action="store_true", help="skip llama.cpp's -fa off runs")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    text = Path(a.text) if a.text else pydoc_text(work)
    model = str(Path(a.model).resolve())
    tokens = a.chunks * a.ctx_size
    common = ["-f", str(text), "-c", str(a.ctx_size), "--chunks", str(a.chunks), "-t", str(a.threads)]
    bindir = os.environ.get("QTOOL_LLAMA_BIN")
    runs: list[tuple[str, list[str]]] = []
    if a.only != "collect":
        runs.append(("qtool perplexity", [*command("eval_cmd", "perplexity_cmd"), "-m", model, *common, "-q"]))
        if bindir:
            ppl = str(Path(bindir) / "llama-perplexity")
            runs.append(("llama-perplexity", [ppl, "-m", model, *common]))
            if not a.no_fa_off:
                runs.append(("llama-perplexity -fa off", [ppl, "-m", model, *common, "-fa", "off"]))
    if a.only != "perplexity":
        runs.append(("qtool imatrix collect",
                     [*command("collect_cmd", "collect"), "-m", model, *common, "-o", "q.gguf", "-q"]))
        if bindir:
            imat = str(Path(bindir) / "llama-imatrix")
            runs.append(("llama-imatrix", [imat, "-m", model, *common, "-o", "r.gguf"]))
            if not a.no_fa_off:
                runs.append(("llama-imatrix -fa off", [imat, "-m", model, *common, "-o", "r.gguf", "-fa", "off"]))
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _ in range(max(1, a.repeat)):
        for name, cmd in runs:
            times[name].append(timed(cmd, work))
    print(f"{Path(a.model).name}: {a.chunks} chunks x {a.ctx_size} tokens, {a.threads} threads, {a.repeat} round(s)")
    for name, ts in times.items():
        rates = sorted(tokens / t for t in ts)
        spread = f"  ({rates[0]:.1f} .. {rates[-1]:.1f})" if len(rates) > 1 else ""
        print(f"  {name:26s} {statistics.median(ts):8.1f} s  {statistics.median(rates):8.1f} tokens/s{spread}")
    for ours, ref in (("qtool perplexity", "llama-perplexity"), ("qtool imatrix collect", "llama-imatrix")):
        if ours in times and ref in times:
            ratios = sorted(r / q for q, r in zip(times[ours], times[ref], strict=True))
            each = ", ".join(f"{v:.2f}" for v in ratios)
            print(f"  {ours} / {ref}: {statistics.median(ratios):.2f}x (rounds {each})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
