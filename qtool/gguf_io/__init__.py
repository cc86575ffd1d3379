"""Streaming GGUF reading and writing (any type id, split sets, atomic outputs)."""

from .reader import KV, GGUFError, GGUFModel, TensorInfo, read_gguf_file, split_paths
from .writer import (
    AtomicOutput,
    GGUFStreamWriter,
    OutTensor,
    header_bytes,
    kv_f32,
    kv_i32,
    kv_str,
    kv_u16,
    kv_u32,
    make_kv,
    remove_kv,
    set_kv,
)

__all__ = ["KV", "AtomicOutput", "GGUFError", "GGUFModel", "GGUFStreamWriter", "OutTensor", "TensorInfo",
           "header_bytes", "kv_f32", "kv_i32", "kv_str", "kv_u16", "kv_u32", "make_kv", "read_gguf_file",
           "remove_kv", "set_kv", "split_paths"]
