"""The per-column weights llama-quantize passes to ggml_quantize_chunk, and its `quantize.imatrix.*` keys.

This is the part of tools/quantize/quantize.cpp (`load_imatrix`, `prepare_imatrix`, the kv
overrides in `main`) and src/llama-quant.cpp (`remap_imatrix`, the non-finite check, the per-tensor
lookup and size check in `llama_model_quantize_impl`) that `qtool quantize --imatrix` needs.

How quantize uses it (pure functions, nothing is read or written here):

    data = qtool.imatrix.read_imatrix(path)          # either format, as read (not combined)
    qi = prepare_imatrix(data, path, include=[...], exclude=[...])   # --include/--exclude-weights
    ...
    w = qi.lookup(tensor_name, n_per_row, n_experts, mapped)  # float32[n_experts, n_per_row] or None
    rows of expert e are quantized with imatrix w[e]            # (row // nrows_per_expert in llama-quant)
    kvs = qi.kv()   # [(key, "str" | "u32", value), ...] to set (gguf_set_val_*) in this order,
                    # after the user's --override-kv keys, when qi.weights is not empty

Weights, exactly as quantize.cpp's load_imatrix computes them in float32:
- GGUF file (raw sums and per-matrix counts): sums[j] / (float) count[j] for each matrix j; a
  matrix whose count is 0 (an expert no token was routed to) gets weight 1 for every column.
  Counts were rounded with lround when read.
- legacy .dat file (values stored as mean * ncall): values / (float) ncall, or the values
  unchanged when ncall is 0.
`tensor_weights` / `entry_weights` expect the data as read (legacy or GGUF form); a combined
(merged / converted) ImatrixData is in GGUF form and gives the weights its GGUF file would give.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .data import ImatrixData, ImatrixError, Warn, default_warn, name_bytes

KEY_FILE = "quantize.imatrix.file"
KEY_DATASET = "quantize.imatrix.dataset"
KEY_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_N_CHUNKS = "quantize.imatrix.chunks_count"
# the layer number in a tensor name, as llama-quant.cpp's std::regex "blk\\.(\\d+)\\." finds it
BLK_LAYER = re.compile(r"blk\.([0-9]+)\.")
_TOKEN_EMBD = ("token_embd.weight", "per_layer_token_embd.weight")


def entry_weights(data: ImatrixData, name: str) -> np.ndarray:
    """Weights of one entry as llama-quantize computes them: float32[n_mat, n_per_row]."""
    e = data.entries[name]
    if data.legacy:
        ncall = int(e.counts[0]) if e.counts.size else 0
        if ncall > 0:
            return (e.sums.reshape(1, -1) / np.float32(ncall)).astype(np.float32)
        return e.sums.reshape(1, -1).copy()
    cnt = e.counts.astype(np.float32)
    pos = cnt > np.float32(0)
    out = np.ones_like(e.sums)
    out[pos] = e.sums[pos] / cnt[pos, None]
    return out


def remap_imatrix(name: str, mapped: dict[int, str] | None) -> str:
    """llama-quant.cpp remap_imatrix: a tensor renamed by --prune-layers looks up its original layer.

    mapped: original layer -> new layer number as a string ("" for a pruned layer), as built by
    remap_layer. Empty or None: the name itself.
    """
    if not mapped:
        return name
    m = BLK_LAYER.search(name)
    if not m:
        return name
    blk = m.group(1)
    for orig in sorted(mapped):
        if mapped[orig] == blk:
            return name[:m.start(1)] + str(orig) + name[m.end(1):]
    raise ImatrixError(f"imatrix mapping error for {name}")


def tensor_weights(data: ImatrixData, name: str, n_experts: int = 1, n_per_row: int | None = None, *,
                   mapped: dict[int, str] | None = None, warn: Warn | None = None) -> np.ndarray | None:
    """The imatrix of one model tensor as llama-quantize passes it to ggml_quantize_chunk.

    name: the tensor's name in the output model; mapped: layer remapping of --prune-layers (see
    remap_imatrix). n_experts: ne[2] of the tensor (1 for a 2-D tensor). n_per_row: ne[0]; when
    given, the entry must have n_experts * n_per_row values, as llama-quant.cpp checks: otherwise
    it is an error, except for token_embd.weight / per_layer_token_embd.weight, which are then
    quantized without an imatrix (None, with a warning).
    Returns float32[n_experts, n_per_row] (expert e's rows use row e), or None when the imatrix
    has no entry for the tensor.
    """
    key = remap_imatrix(name, mapped)
    if key not in data.entries:
        return None
    w = entry_weights(data, key).reshape(-1)
    if n_per_row is not None and w.size != n_per_row * n_experts:
        msg = f"imatrix size {w.size} is different from tensor size {n_per_row * n_experts} for {name}"
        if name in _TOKEN_EMBD:
            (default_warn if warn is None else warn)(msg)
            return None
        raise ImatrixError(msg)
    if w.size % n_experts:
        raise ImatrixError(f"imatrix entry {key} has {w.size} values, not a multiple of {n_experts} experts")
    return w.reshape(n_experts, -1)


def filter_names(names: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """prepare_imatrix: drop names containing an --exclude-weights substring, then keep only
    names containing an --include-weights substring (llama-quantize refuses both together)."""
    if include and exclude:
        raise ImatrixError("--include-weights and --exclude-weights cannot be used together")
    kept = [n for n in names if not any(s in n for s in exclude)]
    if include:
        kept = [n for n in kept if any(s in n for s in include)]
    return kept


def _c_str127(s: str) -> str:
    """strncpy(val_str, s, 127): at most 127 bytes (a cut UTF-8 character stays as surrogate escapes)."""
    b = name_bytes(s)[:127]
    if b"\0" in b:
        b = b[:b.index(b"\0")]
    return b.decode("utf-8", "surrogateescape")


def quantize_kv(path: str, datasets: Sequence[str], entries_count: int,
                chunk_count: int) -> list[tuple[str, str, object]]:
    """The keys llama-quantize adds when it uses an imatrix, in its order: (key, "str" | "u32", value).

    path: the --imatrix argument as given (127 bytes at most, like llama-quantize's fixed buffer);
    the dataset is the first one; chunks_count only when positive. Only when entries remain
    after filtering (llama-quantize writes nothing otherwise).
    """
    if entries_count <= 0:
        return []
    out: list[tuple[str, str, object]] = [(KEY_FILE, "str", _c_str127(path))]
    if datasets:
        out.append((KEY_DATASET, "str", _c_str127(datasets[0])))
    out.append((KEY_N_ENTRIES, "u32", abs(int(entries_count)) & 0xFFFFFFFF))
    if chunk_count > 0:
        out.append((KEY_N_CHUNKS, "u32", abs(int(chunk_count)) & 0xFFFFFFFF))
    return out


@dataclass
class QuantizeImatrix:
    """llama-quantize's imatrix after loading and --include/--exclude-weights filtering.

    weights: entry name -> float32[n_mat * n_per_row] (flat, as llama keeps it).
    chunk_count: loaded.chunk_count (the GGUF key or the legacy trailer), llama's m_last_call.
    """

    path: str
    weights: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0

    @property
    def has_imatrix(self) -> bool:
        """At least one entry is left (llama's qs.has_imatrix; it changes some ftype mixes)."""
        return bool(self.weights)

    def lookup(self, name: str, n_per_row: int, n_experts: int = 1, mapped: dict[int, str] | None = None,
               warn: Warn | None = None) -> np.ndarray | None:
        """float32[n_experts, n_per_row] for a tensor, None when absent (see tensor_weights)."""
        key = remap_imatrix(name, mapped)
        w = self.weights.get(key)
        if w is None:
            return None
        if w.size != n_per_row * n_experts:
            msg = f"imatrix size {w.size} is different from tensor size {n_per_row * n_experts} for {name}"
            if name in _TOKEN_EMBD:
                (default_warn if warn is None else warn)(msg)
                return None
            raise ImatrixError(msg)
        return w.reshape(n_experts, n_per_row)

    def kv(self) -> list[tuple[str, str, object]]:
        return quantize_kv(self.path, self.datasets, len(self.weights), self.chunk_count)


def prepare_imatrix(data: ImatrixData, path: str, include: Sequence[str] = (),
                    exclude: Sequence[str] = ()) -> QuantizeImatrix:
    """quantize.cpp load_imatrix + prepare_imatrix + llama-quant's non-finite check.

    A GGUF imatrix without its metadata keys (imatrix.datasets, chunk_count, chunk_size) is an
    error, as in llama-quantize.
    """
    if not data.legacy and not data.has_metadata:
        raise ImatrixError(f"{path}: missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, "
                           "imatrix.chunk_size)")
    names = filter_names(list(data.entries), include, exclude)
    weights: dict[str, np.ndarray] = {}
    for n in names:
        w = entry_weights(data, n).reshape(-1)
        if not np.isfinite(w).all():
            raise ImatrixError(f"{path}: imatrix contains a non-finite value for {n}")
        weights[n] = w
    return QuantizeImatrix(path, weights, list(data.datasets), int(data.chunk_count))
