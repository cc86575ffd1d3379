"""Tokens/s of `qtool imatrix collect` and `qtool perplexity` against llama-imatrix and
llama-perplexity on the same model, text, context, chunks and thread count (one run each,
wall-clock including model load and tokenization).

    python benchmarks/bench_eval.py MODEL.gguf [--text FILE] [--chunks 8] [-c 512] [-t 2]

The reference tools are found through QTOOL_LLAMA_BIN (skipped when unset). The default text is
Python's pydoc topics (the topics joined in sorted key order with blank lines).
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    text = Path(a.text) if a.text else pydoc_text(work)
    model = str(Path(a.model).resolve())
    tokens = a.chunks * a.ctx_size
    common = ["-f", str(text), "-c", str(a.ctx_size), "--chunks", str(a.chunks), "-t", str(a.threads)]
    rows: list[tuple[str, float]] = []
    rows.append(("qtool perplexity", timed([*command("eval_cmd", "perplexity_cmd"), "-m", model, *common, "-q"], work)))
    rows.append(("qtool imatrix collect",
                 timed([*command("collect_cmd", "collect"), "-m", model, *common, "-o", "q.gguf", "-q"], work)))
    bindir = os.environ.get("QTOOL_LLAMA_BIN")
    if bindir:
        ppl, imat = str(Path(bindir) / "llama-perplexity"), str(Path(bindir) / "llama-imatrix")
        rows.append(("llama-perplexity", timed([ppl, "-m", model, *common], work)))
        rows.append(("llama-perplexity -fa off", timed([ppl, "-m", model, *common, "-fa", "off"], work)))
        rows.append(("llama-imatrix", timed([imat, "-m", model, *common, "-o", "r.gguf"], work)))
        rows.append(("llama-imatrix -fa off", timed([imat, "-m", model, *common, "-o", "r.gguf", "-fa", "off"], work)))
    print(f"{Path(a.model).name}: {a.chunks} chunks x {a.ctx_size} tokens, {a.threads} threads")
    for name, dt in rows:
        print(f"  {name:24s} {dt:8.1f} s  {tokens / dt:8.1f} tokens/s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
