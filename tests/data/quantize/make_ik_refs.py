"""Rebuild `ik_llama_quantize_sha256.json`: ik_llama.cpp's llama-quantize on this folder's tiny
fixture models for each of its own (IQK) ftypes, without and with the .dat importance matrix.

    python tests/data/quantize/make_ik_refs.py /path/to/ik_llama.cpp/build/bin/llama-quantize

The binary is ik_llama.cpp commit 8337e4cd built with -ffp-contract=off (see
../vectors/README.md). ik's llama-quantize reads only the legacy .dat imatrix. For IQ2_KS it is
given `--slow-iq2ks`: its default on AVX2 machines is a different, FMA-based search (`_fast_impl`),
while ggml_quantize_chunk (the golden vectors, qtool) is the reference `_impl`.
Manifest: case name -> {"model", "args", "sha256", "size"} as in llama_quantize_sha256.json;
every case runs as `llama-quantize ARGS[:-1] MODEL OUT ARGS[-1] 2` in this folder.
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
MANIFEST = os.path.join(HERE, "ik_llama_quantize_sha256.json")
MODELS = ("tiny-256", "tiny-320")
FTYPES = ["IQ4_K", "IQ4_KS", "IQ3_K", "IQ2_K", "IQ2_KS", "IQ5_K", "IQ6_K", "IQ4_KSS", "IQ2_KL", "IQ3_KS", "IQ3_KL",
          "IQ5_KS", "IQ1_BN", "IQ2_BN"]
IK_ONLY_OPTIONS = ("--slow-iq2ks",)  # options of ik's llama-quantize that qtool's default already is


def cases() -> dict[str, tuple[str, list[str]]]:
    out = {}
    for m in MODELS:
        for ft in FTYPES:
            slow = ["--slow-iq2ks"] if ft == "IQ2_KS" else []
            out[f"{m}-{ft}"] = (m, [*slow, ft])
            out[f"{m}-{ft}-imdat"] = (m, [*slow, "--imatrix", f"{m}.imatrix.dat", ft])
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
            if r.returncode != 0:
                entry["error"] = (r.stderr.strip().splitlines() or ["?"])[-1]
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
