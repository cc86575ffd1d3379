"""Make a larger llama-architecture GGUF from a small one by repeating its layers (real weights,
tiled): for GPU and whole-model benchmarks that need a model of a given size on a machine that
cannot download one.

    python benchmarks/make_tiled_model.py IN.gguf OUT.gguf --keep-layers 2        # a small source to carry
    python benchmarks/make_tiled_model.py IN.gguf OUT.gguf --layers 174           # blk.i = IN's blk.(i % n)
    python benchmarks/make_tiled_model.py IN.gguf OUT.gguf --layers 174 --imatrix IM.gguf --imatrix-out OUT-im.gguf

Tensors outside blk.* are copied once; `<arch>.block_count` is set to the new layer count. The
tensor bytes are copied as stored (any type): dequantize the result (`qtool dequantize`) for an
F16 model. --imatrix tiles an imatrix of the input's model the same way (its blk.N entries
repeated), so the tiled model can be quantized with one.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qtool.gguf_io import GGUFModel, GGUFStreamWriter, OutTensor, kv_u32, set_kv  # noqa: E402

_BLK = re.compile(r"^blk\.(\d+)\.(.*)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--keep-layers", type=int, help="keep the first N layers only")
    g.add_argument("--layers", type=int, help="repeat the input's layers to this many")
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
    outs = [OutTensor(name, t.shape, t.qtype) for name, t in plan]
    with GGUFStreamWriter(a.output, kvs, outs, m.alignment) as w:
        for _, t in plan:
            w.write_tensor_chunk(m.tensor_data(t))
    size = Path(a.output).stat().st_size
    print(f"{a.output}: {n_out} layers, {len(outs)} tensors, {size / 2**20:.1f} MiB")
    if a.imatrix:
        tile_imatrix(a.imatrix, a.imatrix_out or a.output + ".imatrix.gguf", src_layers, n_out)


def tile_imatrix(path: str, out: str, src_layers: list[int], n_out: int) -> None:
    """blk.i.* entries of the tiled model = the source's blk.(src_layers[i % n]).* entries."""
    from qtool.imatrix import read_imatrix, write_imatrix

    d = read_imatrix(path)
    entries = {}
    for name, e in d.entries.items():
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
