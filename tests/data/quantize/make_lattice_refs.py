"""Rebuild `llama_quantize_lattice_sha256.json`: mainline llama-quantize (llama-cpp-python 0.3.36's
vendor tree, as make_refs.py) on this folder's tiny fixture models for the ftypes of the lattice
i-quants and the small mainline types, without and with the GGUF imatrix.

    python tests/data/quantize/make_lattice_refs.py /path/to/llama.cpp/build/bin/llama-quantize

Manifest: case name -> {"model", "args", "sha256", "size"} or {"model", "args", "error"} (the
last line llama-quantize printed when it refused: these ftypes need an imatrix), as in
llama_quantize_sha256.json; every case runs as `llama-quantize ARGS[:-1] MODEL OUT ARGS[-1] 2`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, "llama_quantize_lattice_sha256.json")
MODELS = ("tiny-256", "tiny-320")
FTYPES = ["TQ1_0", "TQ2_0", "Q1_0", "Q2_0", "MXFP4_MOE", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS",
          "IQ3_XS", "IQ3_S", "IQ3_M", "IQ1_S", "IQ1_M"]


def cases() -> dict[str, tuple[str, list[str]]]:
    out = {}
    for m in MODELS:
        for ft in FTYPES:
            out[f"{m}-{ft}"] = (m, [ft])
            out[f"{m}-{ft}-im"] = (m, ["--imatrix", f"{m}.imatrix.gguf", ft])
    return out


def main() -> None:
    exe = sys.argv[1]
    manifest = {}
    with tempfile.TemporaryDirectory() as d:
        for m in MODELS:
            with lzma.open(os.path.join(HERE, f"{m}.gguf.xz")) as f, open(os.path.join(d, f"{m}.gguf"), "wb") as g:
                g.write(f.read())
        for name, (m, args) in cases().items():
            out = os.path.join(d, "out.gguf")
            r = subprocess.run([exe, *args[:-1], os.path.join(d, f"{m}.gguf"), out, args[-1], "2"], cwd=HERE,
                               capture_output=True, text=True)
            entry: dict = {"model": m, "args": args}
            if r.returncode != 0 or not os.path.exists(out):
                lines = [ln for ln in (r.stderr + r.stdout).strip().splitlines() if ln.strip()]
                entry["error"] = lines[-1] if lines else f"exit {r.returncode}"
            else:
                data = open(out, "rb").read()
                entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                os.unlink(out)
            manifest[name] = entry
            print(name, entry.get("sha256", entry.get("error")), flush=True)
    with open(MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
