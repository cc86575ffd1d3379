"""Rebuild `llama_quantize_lattice_sha256.json`: mainline llama-quantize (llama-cpp-python 0.3.36's
vendor tree, as make_refs.py) on this folder's tiny fixture models for the ftypes of the lattice
i-quants and the small mainline types, without and with the GGUF imatrix.

    python tests/data/quantize/make_lattice_refs.py /path/to/llama.cpp/build/bin/llama-quantize

Manifest: case name -> {"model", "args", "sha256", "size"} or {"model", "args", "error"} (the
last line llama-quantize printed when it refused: these ftypes need an imatrix), as in
llama_quantize_sha256.json; every case runs as `llama-quantize ARGS[:-1] MODEL OUT ARGS[-1] 2`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_refs import run_cases  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, "llama_quantize_lattice_sha256.json")
MODELS = ("tiny-256", "tiny-320")  # make_refs.MODELS
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
    run_cases(sys.argv[1], cases(), MANIFEST)


if __name__ == "__main__":
    main()
