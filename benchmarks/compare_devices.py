"""CPU against `--device cuda` for the forward-pass commands on one model: perplexity (and kld with
--kld-model), imatrix collect; prints wall-clock times, the PPL relative difference and the
imatrix comparison (tensors, counts equal, worst cosine, median and max relative difference of the
per-column means). Exit 1 when the two devices disagree grossly (PPL by more than 1e-2 relative,
a cosine under 0.999, other tensors or chunk counts), else 0.

    python benchmarks/compare_devices.py model-f16.gguf text.txt -c 128 --chunks 8
    python benchmarks/compare_devices.py model-f16.gguf text.txt --kld-model model-Q4_K_M.gguf
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qtool.imatrix import read_imatrix  # noqa: E402


def run(args: list[str]) -> tuple[dict[str, Any], float]:
    """qtool ARGS --json -q: (its JSON, wall seconds)."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "qtool", *args, "--json", "-q"], capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode:
        sys.exit(f"qtool {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1]), dt


def compare_imatrix(a: str, b: str) -> tuple[bool, str]:
    ia, ib = read_imatrix(a), read_imatrix(b)
    same_names = list(ia.entries) == list(ib.entries)
    counts_eq, cos_min, rels, rel_max = 0, 1.0, [], 0.0
    for name, ea in ia.entries.items():
        eb = ib.entries.get(name)
        if eb is None:
            continue
        counts_eq += int(np.array_equal(ea.counts, eb.counts))
        ma = ea.sums.astype(np.float64) / np.maximum(ea.counts.reshape(-1, 1), 1)
        mb = eb.sums.astype(np.float64) / np.maximum(eb.counts.reshape(-1, 1), 1)
        for ra, rb in zip(ma, mb, strict=True):
            na, nb = np.linalg.norm(ra), np.linalg.norm(rb)
            if na > 0 and nb > 0:
                cos_min = min(cos_min, float(ra @ rb / (na * nb)))
            big = np.abs(ra) > 1e-6 * np.abs(ra).max() if ra.size and np.abs(ra).max() > 0 else np.zeros(0, bool)
            if big.any():
                r = np.abs(rb[big] - ra[big]) / np.abs(ra[big])
                rels.append(float(np.median(r)))
                rel_max = max(rel_max, float(r.max()))
    ok = same_names and ia.chunk_count == ib.chunk_count and cos_min >= 0.999
    text = (f"tensors {len(ib.entries)}/{len(ia.entries)}{'' if same_names else ' (names differ)'}, "
            f"counts equal {counts_eq}/{len(ia.entries)}, chunks {ia.chunk_count}/{ib.chunk_count}, "
            f"worst cosine {cos_min:.7f}, median rel diff {np.median(rels) if rels else 0:.2e}, "
            f"max rel diff {rel_max:.2e}")
    return ok, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("-c", "--ctx-size", default="128")
    ap.add_argument("--chunks", default="2")
    ap.add_argument("-b", "--batch-size", default="2048")
    ap.add_argument("--kld-model", help="Also run kld with this model against MODEL as the base.")
    ap.add_argument("--out", help="Folder for the imatrix files (default: a temporary one).")
    a = ap.parse_args()
    common = ["-f", a.text, "-c", a.ctx_size, "--chunks", a.chunks, "-b", a.batch_size]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        res: dict[str, dict[str, Any]] = {}
        for dev in ("cpu", "cuda"):
            res[f"ppl_{dev}"], t_ppl = run(["perplexity", "-m", a.model, *common, "--device", dev])
            res[f"col_{dev}"], t_col = run(["imatrix", "collect", "-m", a.model, *common, "-o",
                                            str(out / f"imatrix_{dev}.gguf"), "--device", dev])
            line = f"{dev:5s} perplexity {res[f'ppl_{dev}']['ppl']:.6f} in {t_ppl:.1f} s, collect {t_col:.1f} s"
            if a.kld_model:
                res[f"kld_{dev}"], t_kld = run(["kld", "-m", a.kld_model, "--base", a.model, *common,
                                                "--device", dev])
                line += f", kld {res[f'kld_{dev}']['kld_mean']:.6f} in {t_kld:.1f} s"
            print(line)
        rel = abs(res["ppl_cuda"]["ppl"] / res["ppl_cpu"]["ppl"] - 1)
        run_rel = max(abs(g / c - 1) for c, g in zip(res["ppl_cpu"]["running"], res["ppl_cuda"]["running"],
                                                      strict=True))
        print(f"PPL relative difference {rel:.2e} (worst running value {run_rel:.2e}); collect's PPL "
              f"{res['col_cpu']['ppl']:.6f} vs {res['col_cuda']['ppl']:.6f}")
        ok &= rel < 1e-2
        if a.kld_model:
            kc, kg = res["kld_cpu"], res["kld_cuda"]
            print(f"KLD mean {kc['kld_mean']:.6f} vs {kg['kld_mean']:.6f}, same top {kc['same_top_p']:.5f} vs "
                  f"{kg['same_top_p']:.5f}, PPL(Q) rel diff {abs(kg['ppl'] / kc['ppl'] - 1):.2e}")
        im_ok, text = compare_imatrix(str(out / "imatrix_cpu.gguf"), str(out / "imatrix_cuda.gguf"))
        print("imatrix:", text)
        ok &= im_ok
    print("OK" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
