"""Rebuild `ik_llama_quantize_sha256.json`: ik_llama.cpp's llama-quantize on this folder's tiny
fixture models for each of its ftypes that qtool writes (its own IQK and trellis types, and the
mainline types it quantizes with its own algorithms), without and with the .dat importance matrix.

    python tests/data/quantize/make_ik_refs.py /path/to/ik_llama.cpp/build/bin/llama-quantize

The binary is ik_llama.cpp commit 8337e4cd built with -ffp-contract=off (see
../vectors/README.md). ik's llama-quantize reads only the legacy .dat imatrix. For IQ2_KS it is
given `--slow-iq2ks`: its default on AVX2 machines is a different, FMA-based search (`_fast_impl`),
while ggml_quantize_chunk (the golden vectors, qtool) is the reference `_impl`.
Manifest: case name -> {"model", "args", "sha256", "size"} as in llama_quantize_sha256.json;
every case runs as `llama-quantize ARGS[:-1] MODEL OUT ARGS[-1] 2` in this folder.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_refs import run_cases  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, "ik_llama_quantize_sha256.json")
MODELS = ("tiny-256", "tiny-320")  # make_refs.MODELS
FTYPES = ["IQ4_K", "IQ4_KS", "IQ3_K", "IQ2_K", "IQ2_KS", "IQ5_K", "IQ6_K", "IQ4_KSS", "IQ2_KL", "IQ3_KS", "IQ3_KL",
          "IQ5_KS", "IQ1_BN", "IQ2_BN",
          # the trellis types, and ik's ftypes of mainline types (its own algorithms for several)
          "IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT",
          "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q6_0", "Q8_0", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
          "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S",
          "IQ1_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "MXFP4",
          # row-interleaved and 8-bit row ftypes ik's llama-quantize writes (with an imatrix it
          # aborts for Q4_0_4_4 / Q4_0_4_8 / Q4_0_8_8: recorded as errors)
          "Q4_0_R8", "Q5_0_R4", "Q6_0_R4", "Q8_0_R8", "Q2_K_R4", "Q3_K_R4", "Q4_K_R4", "Q5_K_R4", "Q6_K_R4",
          "IQ4_NL_R4", "IQ4_XS_R8", "IQ4_K_R4", "IQ5_K_R4", "IQ2_K_R4", "IQ3_K_R4", "IQ4_KS_R4", "IQ5_KS_R4",
          "IQ2_BN_R4", "MXFP4_R8", "IQ2_XXS_R4", "IQ2_XS_R4", "IQ2_M_R4", "IQ3_XXS_R4", "IQ3_S_R4",
          "IQ1_S_R4", "IQ1_M_R4", "Q8_KV", "Q8_KV_R8", "Q8_K_R8", "BF16_R16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8"]
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
    run_cases(sys.argv[1], cases(), MANIFEST)


if __name__ == "__main__":
    main()
