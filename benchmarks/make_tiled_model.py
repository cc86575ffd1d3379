"""Make a larger llama-architecture GGUF from a small one by repeating its layers (real weights,
tiled): for GPU and whole-model benchmarks that need a model of a given size on a machine that
cannot download one.

    python benchmarks/make_tiled_model.py IN.gguf OUT.gguf --keep-layers 2        # a small source to carry
    python benchmarks/make_tiled_model.py IN.gguf OUT.gguf --layers 174           # blk.i = IN's blk.(i % n)
    python benchmarks/make_tiled_model.py IN.gguf OUT.gguf --layers 174 --imatrix IM.gguf --imatrix-out OUT-im.gguf
    python benchmarks/make_tiled_model.py IN.gguf OUT.gguf --layers 20 --scale 4     # F16, every matrix 4x4 tiled
    python benchmarks/make_tiled_model.py IN.gguf OUT.gguf --keep-layers 2 --vocab 4096  # and the first 4096 tokens

Tensors outside blk.* are copied once; `<arch>.block_count` is set to the new layer count. The
tensor bytes are copied as stored (any type): dequantize the result (`qtool dequantize`) for an
F16 model. --scale N makes a wider model instead: every tensor's values dequantized and tiled N
times along each of its two dimensions (token_embd along its rows only), written as F16, with
the widths in the metadata scaled to match: the shapes of a larger model (tensors
of millions of rows rather than SmolLM2's small ones) from the same real weights. --imatrix tiles
an imatrix of the input's model the same way (its blk.N entries repeated), so the tiled model can
be quantized with one. --vocab N keeps the first N tokens (token_embd / output rows and the
tokenizer's per-token arrays; merges are dropped): a small source of a large-vocabulary model
(Gemma3's 262,144 tokens) for quantize benchmarks; such a model quantizes but is no language model.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qtool.gguf_io import GGUFModel, GGUFStreamWriter, OutTensor, kv_u32, set_kv  # noqa: E402
from qtool.gguf_io.format import make_kv  # noqa: E402

_BLK = re.compile(r"^blk\.(\d+)\.(.*)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--keep-layers", type=int, help="keep the first N layers only")
    g.add_argument("--layers", type=int, help="repeat the input's layers to this many")
    ap.add_argument("--scale", type=int, default=1, help="tile every matrix N x N (output F16)")
    ap.add_argument("--vocab", type=int, help="keep the first N tokens only")
    ap.add_argument("--imatrix", help="an imatrix of the input model to tile the same way")
    ap.add_argument("--imatrix-out", help="where the tiled imatrix goes")
    a = ap.parse_args()
    m = GGUFModel(a.input)
    src_layers = sorted({int(mt.group(1)) for t in m.tensors if (mt := _BLK.match(t.name))})
    n_src = len(src_layers)
    n_out = a.keep_layers if a.keep_layers is not None else a.layers
    if n_out < 1 or (a.keep_layers is not None and n_out > n_src):
        sys.exit(f"cannot make {n_out} layers from {n_src}")
    by_layer: dict[int, list] = {}
    other = []
    for t in m.tensors:
        mt = _BLK.match(t.name)
        if mt:
            by_layer.setdefault(int(mt.group(1)), []).append((mt.group(2), t))
        else:
            other.append(t)
    plan = [(t.name, t) for t in other]
    for i in range(n_out):
        plan += [(f"blk.{i}.{rest}", t) for rest, t in by_layer[src_layers[i % n_src]]]
    kvs = set_kv(list(m.kvs), kv_u32(f"{m.arch}.block_count", n_out))
    if a.vocab:
        kvs = truncate_vocab(kvs, a.vocab)
    if a.scale == 1:
        rows = {name: _vocab_rows(name, t, a.vocab) for name, t in plan}
        outs = [OutTensor(name, (*t.shape[:-1], rows[name]) if rows[name] != t.n_rows else t.shape, t.qtype)
                for name, t in plan]
        with GGUFStreamWriter(a.output, kvs, outs, m.alignment) as w:
            for name, t in plan:
                w.write_tensor_chunk(m.tensor_rows(t, 0, rows[name]))
    else:
        write_scaled(m, plan, kvs, a.output, a.scale)
    size = Path(a.output).stat().st_size
    print(f"{a.output}: {n_out} layers, {len(plan)} tensors, {size / 2**20:.1f} MiB")
    if a.imatrix:
        tile_imatrix(a.imatrix, a.imatrix_out or a.output + ".imatrix.gguf", src_layers, n_out, a.scale)


def _vocab_rows(name: str, t: Any, vocab: int | None) -> int:
    """Rows of a tensor to keep: the first `vocab` of the token embedding and output matrices."""
    if vocab and len(t.shape) == 2 and (name.startswith("token_embd") or name.startswith("output.")):
        return min(vocab, t.n_rows)
    return int(t.n_rows)


def truncate_vocab(kvs: list, n: int) -> list:
    """The tokenizer's per-token arrays cut to n entries (merges dropped: they name cut tokens)."""
    out = []
    for kv in kvs:
        if kv.key.startswith("tokenizer.ggml.") and kv.atype is not None:
            if kv.key == "tokenizer.ggml.merges":
                continue
            if kv.key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
                kv = make_kv(kv.key, kv.vtype, list(kv.value)[:n], kv.atype)
        out.append(kv)
    return out


def _scaled_shape(name: str, shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    if name.startswith("token_embd") or name.startswith("output."):
        return (shape[0] * k, *shape[1:])  # the vocabulary stays
    return (shape[0] * k,) + tuple(d * k for d in shape[1:2]) + tuple(shape[2:])


def write_scaled(m: GGUFModel, plan: list, kvs: list, output: str, k: int) -> None:
    """Every tensor dequantized, tiled k x k (see _scaled_shape) and written as F16 (F32 kept for
    1-D tensors, as llama.cpp's converters store norms)."""
    from qtool.quants import dequantize, get_type

    for key in ("embedding_length", "feed_forward_length", "rope.dimension_count", "attention.key_length",
                "attention.value_length"):
        kv = next((x for x in kvs if x.key == f"{m.arch}.{key}"), None)
        if kv is not None:
            kvs = set_kv(kvs, kv_u32(kv.key, int(kv.value) * k))
    f16, f32 = get_type("F16"), get_type("F32")
    outs = [OutTensor(name, _scaled_shape(name, t.shape, k), f16 if len(t.shape) > 1 else f32) for name, t in plan]
    with GGUFStreamWriter(output, kvs, outs, m.alignment) as w:
        for (_name, t), o in zip(plan, outs, strict=True):
            x = dequantize(m.tensor_rows(t, 0, t.n_rows), t.qtype, t.n_per_row)
            x = x.reshape(t.n_rows, t.n_per_row)
            reps = (o.shape[1] // t.shape[1] if len(t.shape) > 1 else 1, o.shape[0] // t.shape[0])
            w.write_tensor_chunk(np.tile(x, reps).astype(np.float16 if o.qtype.name == "F16" else np.float32))

def tile_imatrix(path: str, out: str, src_layers: list[int], n_out: int, scale: int = 1) -> None:
    """blk.i.* entries of the tiled model = the source's blk.(src_layers[i % n]).* entries (their
    columns tiled `scale` times for a --scale model)."""
    from qtool.imatrix import read_imatrix, write_imatrix
    from qtool.imatrix.data import ImatrixEntry

    d = read_imatrix(path)
    entries = {}
    for name, e in d.entries.items():
        if scale > 1:
            e = ImatrixEntry(np.tile(e.sums, (1, scale)), e.counts)
        mt = _BLK.match(name)
        if not mt:
            entries[name] = e
            continue
        layer, rest = int(mt.group(1)), mt.group(2)
        for i in range(n_out):
            if src_layers[i % len(src_layers)] == layer:
                entries[f"blk.{i}.{rest}"] = e
    d.entries = entries
    write_imatrix(d, out)
    print(f"{out}: {len(entries)} entries")


if __name__ == "__main__":
    main()
