"""Rebuild `llama_quantize_moe_sha256.json`: mainline llama-quantize (llama-cpp-python 0.3.36's
vendor tree) on moe_fixture.py's tiny MoE model with its per-expert imatrix, for the i-quant
ftypes whose expert tensors take a per-expert slice of the imatrix.

    python tests/data/quantize/make_moe_refs.py /path/to/llama.cpp/build/bin/llama-quantize

Manifest: {"model_sha256", "imatrix_sha256", "cases": {ftype: {"sha256", "size"} | {"error"}}}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_refs import sha256  # noqa: E402
from moe_fixture import make_imatrix, make_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, "llama_quantize_moe_sha256.json")
FTYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_S", "IQ3_M", "IQ1_S", "IQ1_M", "Q2_K",
          "Q3_K_M", "Q4_K_M", "IQ4_XS", "MXFP4_MOE"]


def main() -> None:
    exe = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        model, imat, out = (os.path.join(d, n) for n in ("tiny-moe.gguf", "tiny-moe.imatrix.gguf", "out.gguf"))
        make_model(model)
        make_imatrix(imat)
        cases: dict[str, dict[str, object]] = {}
        for ft in FTYPES:
            # relative names: the imatrix path is recorded in the output's quantize.imatrix.file
            r = subprocess.run([exe, "--imatrix", "tiny-moe.imatrix.gguf", "tiny-moe.gguf", "out.gguf", ft, "2"],
                               cwd=d, capture_output=True, text=True)
            if r.returncode != 0 or not os.path.exists(out):
                lines = [ln for ln in (r.stderr + r.stdout).strip().splitlines() if ln.strip()]
                cases[ft] = {"error": lines[-1] if lines else f"exit {r.returncode}"}
            else:
                cases[ft] = {"sha256": sha256(out), "size": os.path.getsize(out)}
                os.unlink(out)
            print(ft, cases[ft], flush=True)
        manifest = {"model_sha256": sha256(model), "imatrix_sha256": sha256(imat), "cases": cases}
    with open(MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
