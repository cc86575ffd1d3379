"""Regenerate the reference plans in this folder from llama-quantize --dry-run logs.

Run by hand (not by pytest) where the reference outputs exist:
    python tests/data/plans/make_plans.py /work/ref/out /work/ref/models
Reads <out>/logs/dry-<model>-<FTYPE>[-im].log (llama-quantize --dry-run, without / with
--imatrix) and the F16 models' tensor lists, and writes <model>.json here: the tensors (name,
ne, type) in file order, the hyperparameter keys the mix reads, llama-quantize's processing
order, and per run the type of every tensor (in that order), the fallback count, or the error.
Cross-checks the types against <out>/plans/<model>-<FTYPE>[-im].json when present.
"""

import json
import re
import sys
from pathlib import Path

import gguf

LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =\s*[\d.]+ MiB"
                  r"(?: ->\s*[\d.]+ MiB \((\S+)\))?")
MODELS = {"smollm2": "smollm2-f16.gguf", "gemma3-270m": "gemma3-270m-f16.gguf"}
KV_SUFFIXES = ("block_count", "attention.head_count", "attention.head_count_kv", "vocab_size",
               "embedding_length", "expert_count", "nextn_predict_layers")


def main(out: Path, models: Path) -> None:
    here = Path(__file__).parent
    for model, fname in MODELS.items():
        r = gguf.GGUFReader(models / fname)
        arch = r.fields["general.architecture"].contents()
        kv = {"general.architecture": arch, "general.file_type": r.fields["general.file_type"].contents()}
        for s in KV_SUFFIXES:
            f = r.fields.get(f"{arch}.{s}")
            if f is not None:
                kv[f"{arch}.{s}"] = f.contents()
        tensors = [[t.name, [int(x) for x in t.shape], t.tensor_type.name] for t in r.tensors]
        index = {t[0]: i for i, t in enumerate(tensors)}
        order = None
        runs = {}
        for log in sorted((out / "logs").glob(f"dry-{model}-*.log")):
            run = log.stem[len(f"dry-{model}-"):]
            text = log.read_text()
            rows = [m for m in map(LINE.match, text.splitlines()) if m]
            if "failed to quantize:" in text:
                err = next(ln for ln in text.splitlines() if "failed to quantize:" in ln)
                runs[run] = {"error": err.split("failed to quantize:", 1)[1].strip()}
                continue
            names = [m.group(1) for m in rows]
            if order is None:
                order = [index[n] for n in names]
            assert [index[n] for n in names] == order, (run, "order differs between runs")
            types = [(m.group(3) or m.group(2)).upper() for m in rows]
            nfb = re.search(r"WARNING: (\d+) of \d+ tensor\(s\) required fallback", text)
            runs[run] = {"types": " ".join(types), "n_fallback": int(nfb.group(1)) if nfb else 0}
            ref = out / "plans" / f"{model}-{run}.json"
            if ref.exists():
                plan = json.loads(ref.read_text())
                assert {k: v.upper() for k, v in plan.items()} == dict(zip(names, types, strict=True)), run
        data = {"source": f"llama-quantize --dry-run (mainline, llama-cpp-python 0.3.36 sdist) on {fname}",
                "kv": kv, "tensors": tensors, "order": order, "runs": runs}
        (here / f"{model}.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")
        print(model, len(runs), "runs")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
