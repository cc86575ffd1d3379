"""ik_llama.cpp reference plans: its llama-quantize --dry-run (commit 8337e4cd), run by hand.

How ik_runs.json.gz was made: ik_llama.cpp's llama-quantize was built (CPU only, target
llama-quantize) from the bare mirror's source. The models (SmolLM2-135M, Gemma3-270M and the
synthetic ones of make_synthetic.py) were recreated from their GGUF headers with all-zero data
(the type choice never looks at the data), next to legacy imatrix files holding an entry of the
right size for every 2-D / 3-D tensor (`write_imatrix`). `run` ran every ik ftype on every model
without and with --imatrix, plus option runs (--pure, --output-tensor-type,
--token-embedding-type, --leave-output-tensor, --custom-q, ik's --attn-*-type / --ffn-*-type,
--ignore-imatrix-rules); `convert` keeps, per run, the arguments, the types in order (ik keeps
the file order) and the fallback count, or the failure.

    python ik_dryrun.py run IK_LLAMA_QUANTIZE IK_SOURCE_DIR MODEL_DIR OUT.json
    python ik_dryrun.py convert OUT.json          # writes ik_runs.json.gz here
"""

import gzip
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SEG = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+) - \[([^\]]*)\], type =\s*(\S+), (.*?)(?=\n\[\s*\d+/\s*\d+\]|\Z)", re.S)
MODELS = ("smollm2-f16.gguf", "gemma3-270m-f16.gguf", "llama-untied.gguf", "qwen3moe.gguf", "falcon.gguf",
          "llama-70b.gguf")
OPTION_SETS = (
    ["--pure"], ["--output-tensor-type", "q8_0", "--token-embedding-type", "q4_0"],
    ["--token-embedding-type", "iq4_k_r4"], ["--leave-output-tensor"],
    ["--custom-q", r"attn_v=q8_0,blk\.[0-3]\.ffn_down=iq4_k"],
    ["--custom-q", r"blk\.0\.attn_v=iq6_k", "--pure"],
    ["--attn-v-type", "q6_K", "--ffn-down-type", "iq5_k", "--attn-output-type", "q4_K", "--ffn-gate-type", "iq4_ks"],
    ["--ffn-gate-inp-type", "q8_0", "--attn-q-type", "iq4_nl", "--attn-k-type", "q5_0", "--ffn-up-type", "iq3_k"],
    ["--ignore-imatrix-rules"],
)
OPTION_FTYPES = ("Q4_K_M", "IQ4_KS", "IQ2_KS", "Q8_0", "F16", "IQ3_KL", "Q4_0_R8", "IQ4_K_R4", "IQ2_KT", "IQ1_S_R4")


def ftypes(source: Path) -> list[str]:
    src = (source / "examples/quantize/quantize.cpp").read_text()
    block = src[src.index("QUANT_OPTIONS = {"):]
    return re.findall(r'\{\s*"([A-Z0-9_]+)",', block[:block.index("};")])


def _one(binary: Path, models: Path, job: tuple[str, str, list[str]]) -> dict:
    model, ft, args = job
    cmd = [str(binary), "--dry-run", *[a.replace("@", str(models) + "/") for a in args], str(models / model), ft, "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    text = p.stdout + p.stderr
    names, types = [], []
    for m in SEG.finditer(text):
        names.append(m.group(1))
        c = re.search(r"converting to (\S+) \.\.", m.group(4))
        types.append((c.group(1) if c else m.group(3)).upper())
    fb = re.search(r"WARNING: (\d+) of (\d+) tensor\(s\) required fallback", text)
    r = {"model": model, "ftype": ft, "args": args, "rc": p.returncode, "names": names, "types": " ".join(types),
         "n_fallback": int(fb.group(1)) if fb else 0}
    if p.returncode or not names:
        r["tail"] = text.strip().splitlines()[-6:]
    return r


def run(binary: Path, source: Path, models: Path, out: Path) -> None:
    jobs = []
    for model in MODELS:
        for ft in ftypes(source):
            jobs.append((model, ft, []))
            jobs.append((model, ft, ["--imatrix", f"@{model}.imatrix.dat"]))
    for model in ("llama-untied.gguf", "qwen3moe.gguf", "falcon.gguf", "gemma3-270m-f16.gguf"):
        for ft in OPTION_FTYPES:
            for a in OPTION_SETS:
                jobs.append((model, ft, [*a, "--imatrix", f"@{model}.imatrix.dat"]))
    with ThreadPoolExecutor(16) as ex:
        res = list(ex.map(lambda j: _one(binary, models, j), jobs))
    out.write_text(json.dumps({"ftypes": ftypes(source), "runs": res}))


_ALIASES = {"Q4_0_4X4": "Q4_0_4_4", "Q4_0_4X8": "Q4_0_4_8", "Q4_0_8X8": "Q4_0_8_8"}


def _file_orders() -> dict[str, list[str]]:
    here = Path(__file__).parent
    orders = {m: [t[0] for t in json.loads((here / f"{m}.json").read_text())["tensors"]]
              for m in ("smollm2", "gemma3-270m")}
    syn = json.loads(gzip.open(here / "synthetic.json.gz", "rt").read())
    orders.update({m: [t[0] for t in v["tensors"]] for m, v in syn["models"].items()})
    return orders


def convert(raw: Path) -> None:
    d = json.loads(raw.read_text())
    orders = _file_orders()
    runs = []
    for r in d["runs"]:
        e = {"model": r["model"].removesuffix(".gguf").removesuffix("-f16"), "ftype": r["ftype"],
             "args": ["<imatrix>" if a.startswith("@") else a for a in r["args"]]}
        if r["rc"] or not r["names"]:
            tail = " ".join(r.get("tail", []))
            e["error"] = ("imatrix" if ("Missing importance" in tail or "=====" in tail)
                          else "size" if "Unsupported tensor size" in tail else tail[-200:])
        else:
            assert r["names"] == orders[e["model"]], (e, "ik writes in file order")
            e["types"] = " ".join(_ALIASES.get(t, t) for t in r["types"].split())
            e["n_fallback"] = r["n_fallback"]
        runs.append(e)
    out = Path(__file__).parent / "ik_runs.json.gz"
    with gzip.open(out, "wt") as f:
        f.write(json.dumps({"source": "ik_llama.cpp 8337e4cd llama-quantize --dry-run", "ftypes": d["ftypes"],
                            "runs": runs}, separators=(",", ":")) + "\n")
    print(len(runs), "runs ->", out)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        convert(Path(sys.argv[2]))
