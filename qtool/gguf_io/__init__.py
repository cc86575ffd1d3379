"""Streaming GGUF reading and writing (any type id, split sets, safe atomic outputs) on one
format layer (format.py: value types, cursor, key/value codec, header, tensor infos, padding)."""

from .atomic import (
    AtomicOutput,
    Terminated,
    check_output,
    remove_stale_parts,
    terminating_signals,
    write_bytes_atomic,
)
from .format import (
    KV,
    GGUFError,
    ValueType,
    first_kv_value,
    kv_f32,
    kv_i32,
    kv_str,
    kv_u16,
    kv_u32,
    make_kv,
)
from .reader import GGUFModel, TensorInfo, read_gguf_file, split_paths
from .writer import GGUFStreamWriter, OutTensor, header_bytes, remove_kv, set_kv

__all__ = ["KV", "AtomicOutput", "GGUFError", "GGUFModel", "GGUFStreamWriter", "OutTensor", "TensorInfo",
           "Terminated", "ValueType", "check_output", "first_kv_value", "header_bytes", "kv_f32", "kv_i32", "kv_str",
           "kv_u16", "kv_u32", "make_kv", "read_gguf_file", "remove_kv", "remove_stale_parts", "set_kv",
           "split_paths", "terminating_signals", "write_bytes_atomic"]
