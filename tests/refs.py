"""Where the tests find local reference builds: one environment variable each, no fixed paths.
Tests that need one skip when it is unset or missing.

- QTOOL_GGML_LIB: mainline llama.cpp's libggml-base.so (llama-cpp-python 0.3.36's vendor tree).
- QTOOL_LLAMA_BIN: the folder with mainline's llama-quantize, llama-imatrix, llama-perplexity.
- QTOOL_GGML_SRC: mainline's ggml/src folder (tables read from its C source), or the llama.cpp
  source tree above it (either works: ggml_source() finds ggml/src, llama_cpp_root() the tree).
- QTOOL_IK_LIB: ik_llama.cpp's libggml.so built with -ffp-contract=off.
- QTOOL_IK_BIN: the folder with ik_llama.cpp's llama-quantize.
- QTOOL_IK_SRC: an ik_llama.cpp source checkout (for tables read from its C source).
- QTOOL_REF_OUT: a folder of reference outputs (models and files the reference tools wrote).
"""

from __future__ import annotations

import os
from pathlib import Path


def _path(var: str, *parts: str) -> Path | None:
    v = os.environ.get(var)
    if not v:
        return None
    p = Path(v).joinpath(*parts)
    return p if p.exists() else None


def ggml_lib() -> Path | None:
    return _path("QTOOL_GGML_LIB")


def _ggml_src_dir() -> Path | None:
    p = _path("QTOOL_GGML_SRC")
    if p is not None and (p / "ggml" / "src").is_dir():
        p = p / "ggml" / "src"  # the llama.cpp tree was named
    return p


def ggml_source(*parts: str) -> Path | None:
    """A path under mainline's ggml/src folder (QTOOL_GGML_SRC), or None."""
    d = _ggml_src_dir()
    if d is None:
        return None
    p = d.joinpath(*parts)
    return p if p.exists() else None


def llama_cpp_root() -> Path | None:
    """The llama.cpp source tree around QTOOL_GGML_SRC's ggml/src (src/, models/), or None."""
    d = _ggml_src_dir()
    if d is None:
        return None
    root = d.parent.parent
    return root if (root / "src" / "llama-vocab.cpp").exists() and (root / "models").is_dir() else None


def llama_bin(tool: str) -> Path | None:
    return _path("QTOOL_LLAMA_BIN", tool)


def ik_lib() -> Path | None:
    return _path("QTOOL_IK_LIB")


def ik_bin(tool: str) -> Path | None:
    return _path("QTOOL_IK_BIN", tool)


def ik_source(*parts: str) -> Path | None:
    return _path("QTOOL_IK_SRC", *parts)


def ref_out(*parts: str) -> Path | None:
    return _path("QTOOL_REF_OUT", *parts)


def why(var: str) -> str:
    """A skip reason naming the variable."""
    return f"set {var} to a local reference build to run this comparison"
