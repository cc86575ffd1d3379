"""Streaming GGUF reading and writing (any type id, split sets, safe atomic outputs)."""

from .atomic import (
    AtomicOutput,
    Terminated,
    check_output,
    remove_stale_parts,
    terminating_signals,
    write_bytes_atomic,
)
from .reader import KV, GGUFError, GGUFModel, TensorInfo, read_gguf_file, split_paths
from .writer import (
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
           "Terminated", "check_output", "header_bytes", "kv_f32", "kv_i32", "kv_str", "kv_u16", "kv_u32",
           "make_kv", "read_gguf_file", "remove_kv", "remove_stale_parts", "set_kv", "split_paths",
           "terminating_signals", "write_bytes_atomic"]
