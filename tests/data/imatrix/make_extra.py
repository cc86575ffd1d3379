"""Rebuild the synthetic imatrix reference files of this folder with a mainline llama-imatrix build.

    python tests/data/imatrix/make_extra.py /path/to/llama.cpp/build/bin/llama-imatrix

The inputs are fabricated independently of qtool: moe-a.gguf / moe-b.gguf with gguf-py's
GGUFWriter (which adds a general.architecture key llama-imatrix ignores), odd.dat with struct.
Every other file is written by llama-imatrix itself (commands in README.md). Needs no model:
llama-imatrix only combines --in-file inputs when no text is given (-m is required but unused).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _sums(rng: np.random.Generator, counts: list[float], n: int) -> np.ndarray:
    c = np.asarray(counts, np.float64)
    s = rng.gamma(0.5, 2.0, (len(counts), n)) * np.maximum(c, 0)[:, None]
    return s.astype(np.float32)


def make_gguf(path: str, entries: dict[str, tuple[np.ndarray, list[float]]], datasets: list[str],
              chunk_count: int, chunk_size: int) -> None:
    import gguf

    w = gguf.GGUFWriter(path, "imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", datasets)
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name, (sums, counts) in entries.items():
        w.add_tensor(name + ".in_sum2", sums)
        w.add_tensor(name + ".counts", np.asarray(counts, np.float32).reshape(len(counts), 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_inputs() -> None:
    rng = np.random.default_rng(20240607)
    a = {
        "blk.0.ffn_down_exps.weight": [100, 0, 37, 2048],
        "blk.0.ffn_up_exps.weight": [0, 0, 0, 0],
        "blk.0.attn_q.weight": [1500],
        "blk.1.attn_q.weight": [1536],
        "blk.1.ffn_down_exps.weight": [512, 600, 0, 1],
        "blk.1.ffn_gate.weight": [512, 512],
        "blk.2.attn_q.weight": [10.5],  # lround -> 11
        "blk.2.attn_k.weight": [2.5],  # lround -> 3
        "output.weight": [700],
    }
    widths = {"exps": 64, "attn_q": 64, "attn_k": 16, "ffn_gate": 32, "output": 48}

    def width(name: str) -> int:
        return next(v for k, v in widths.items() if k in name)

    make_gguf(os.path.join(HERE, "moe-a.gguf"), {n: (_sums(rng, c, width(n)), c) for n, c in a.items()},
              ["a.txt", "b.txt"], 5, 512)
    b = {
        "blk.0.ffn_down_exps.weight": [300],  # one count for 4 experts: broadcast when merged first
        "blk.0.attn_q.weight": [512],
        "blk.1.ffn_down_exps.weight": [20, 0, 5, 7],
        "output.weight": [1024],
    }
    ents = {}
    for n, c in b.items():
        s = _sums(rng, c, width(n))
        if n == "blk.0.ffn_down_exps.weight":
            s = _sums(rng, [300] * 4, width(n)).reshape(1, -1)
        ents[n] = (s, c)
    make_gguf(os.path.join(HERE, "moe-b.gguf"), ents, ["c.txt"], 1, 512)

    # legacy file, entries deliberately unsorted (ik_llama.cpp writes map order)
    odd = [("output.weight", 7, 48), ("blk.0.attn_q.weight", 5, 64), ("blk.0.ffn_down_exps.weight", 3, 256),
           ("blk.1.attn_q.weight", 3, 64), ("blk.3.attn_k.weight", 0, 16)]
    out = struct.pack("<i", len(odd))
    for name, ncall, nval in odd:
        vals = (rng.gamma(0.5, 2.0, nval) * max(ncall, 1)).astype("<f4")
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, nval) + vals.tobytes()
    out += struct.pack("<i", 9) + struct.pack("<i", 7) + b"odd.txt"
    with open(os.path.join(HERE, "odd.dat"), "wb") as f:
        f.write(out)


RUNS = [
    ("moe-a-resave.gguf", ["--in-file", "moe-a.gguf"]),
    ("moe-a-conv.dat", ["--in-file", "moe-a.gguf", "--output-format", "dat"]),
    ("moe-a-rt.gguf", ["--in-file", "moe-a-conv.dat"]),
    ("moe-ba.gguf", ["--in-file", "moe-b.gguf", "--in-file", "moe-a.gguf"]),
    ("odd-rt.gguf", ["--in-file", "odd.dat"]),
    ("odd-rt.dat", ["--in-file", "odd-rt.gguf", "--output-format", "dat"]),
    ("odd-resave.dat", ["--in-file", "odd.dat", "--output-format", "dat"]),
    ("odd-moe.gguf", ["--in-file", "odd.dat", "--in-file", "moe-a.gguf"]),
    ("moe-a-c256.dat", ["--in-file", "moe-a.gguf", "--output-format", "dat", "-c", "256"]),
    ("odd-c1000.gguf", ["--in-file", "odd.dat", "-c", "1000"]),
]
STATS = [("moe-a-stats.txt", "moe-a.gguf"), ("odd-stats.txt", "odd.dat"), ("moe-ba-stats.txt", "moe-ba.gguf")]


def main() -> None:
    exe = sys.argv[1]
    make_inputs()
    os.chdir(HERE)
    for out, args in RUNS:
        subprocess.run([exe, "-m", "unused.gguf", *args, "-o", out], check=True, capture_output=True)
    r = subprocess.run([exe, "-m", "unused.gguf", "--in-file", "moe-a.gguf", "--in-file", "moe-b.gguf",
                        "-o", "fail.gguf"], capture_output=True)
    assert r.returncode != 0 and not os.path.exists("fail.gguf"), "moe-a then moe-b must fail (counts 4 vs 1)"
    for out, inp in STATS:
        r = subprocess.run([exe, "-m", "unused.gguf", "--in-file", inp, "--show-statistics"], capture_output=True,
                           check=True)
        with open(out, "wb") as f:
            f.write(r.stdout + r.stderr)


if __name__ == "__main__":
    main()
