"""Small synthetic GGUF models for the stats and mix extract/diff tests (no tests here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qtool.gguf_io import GGUFStreamWriter, OutTensor, kv_str, kv_u32
from qtool.quants import can_quantize, get_type, quantize


def write_gguf(path: Path, tensors: dict[str, tuple[tuple[int, ...], str, np.ndarray]], arch: str = "llama",
               n_layer: int = 2, extra_kvs: list | None = None) -> Path:
    """tensors: name -> (ggml shape (ne0 first), type name, data). Float data is converted to the
    type (F32/F16/BF16 or any type qtool can quantize); uint8 data is written as is."""
    kvs = [kv_str("general.architecture", arch), kv_u32(f"{arch}.block_count", n_layer)] + (extra_kvs or [])
    outs = [OutTensor(n, s, get_type(t)) for n, (s, t, _) in tensors.items()]
    with GGUFStreamWriter(path, kvs, outs) as w:
        for _name, (shape, tname, data) in tensors.items():
            if data.dtype == np.uint8:
                w.write_tensor_chunk(np.ascontiguousarray(data))
                continue
            rows = np.asarray(data, dtype=np.float32).reshape(-1, shape[0])
            w.write_tensor_chunk(quantize(rows, tname))
    return path


def small_model(path: Path, seed: int = 0, embd_type: str = "F16") -> Path:
    """A two-layer llama-like model: embeddings, norms (1-D, never tested), attention and FFN
    matrices in F16, F32 and BF16, row lengths 64 and 128."""
    rng = np.random.default_rng(seed)

    def m(rows: int, cols: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    t: dict[str, tuple[tuple[int, ...], str, np.ndarray]] = {
        "token_embd.weight": ((64, 100), embd_type, m(100, 64, 0.02)),
        "output_norm.weight": ((64,), "F32", np.ones(64, np.float32)),
    }
    for i in range(2):
        t[f"blk.{i}.attn_norm.weight"] = ((64,), "F32", np.ones(64, np.float32))
        t[f"blk.{i}.attn_q.weight"] = ((64, 64), "F16", m(64, 64))
        t[f"blk.{i}.attn_k.weight"] = ((64, 32), "BF16", m(32, 64))
        t[f"blk.{i}.ffn_up.weight"] = ((64, 128), "F32", m(128, 64))
        t[f"blk.{i}.ffn_down.weight"] = ((128, 64), "F16", m(64, 128))
    return write_gguf(path, t)


def quantizable(*names: str) -> list[str]:
    """The names among `names` the engine can quantize right now."""
    return [n for n in names if can_quantize(n)]
