"""A tiny Mixtral-style MoE model and a per-expert imatrix, made deterministically from a seed
(no binary fixture to commit): llama architecture, one layer, n_embd 256, 4 experts of 256 (2
used), 3-D ffn_{up,gate,down}_exps tensors; the imatrix (GGUF format) has per-expert sums and
counts with one expert never routed (count 0), which llama-quantize replaces by ones.

Used by make_moe_refs.py (llama-quantize's manifest) and tests/test_quantize_moe_refs.py; the
manifest records the model's and imatrix's sha256 so a change in the generator is caught.
"""

from __future__ import annotations

import os

import gguf
import numpy as np

N_EMBD, N_EXPERT, N_FF, N_VOCAB = 256, 4, 256, 32
COUNTS = [100.0, 37.0, 0.0, 2048.0]  # per expert: expert 2 never routed


def _write(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_model(path: str | os.PathLike[str], seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-moe")
    w.add_block_count(1)
    w.add_context_length(512)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(64)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(2)
    w.add_vocab_size(N_VOCAB)
    w.add_file_type(1)

    def f16(*shape: int) -> np.ndarray:
        # Student-t rows of varied scale: outliers and decades of magnitude, as real weights have
        scale = np.exp(rng.uniform(-4.0, -1.0, shape[:-1] + (1,)))
        return (rng.standard_t(5, shape) * scale).astype(np.float16)

    w.add_tensor("token_embd.weight", f16(N_VOCAB, N_EMBD))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output.weight", f16(N_VOCAB, N_EMBD))
    p = "blk.0."
    w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, np.float32))
    for t in ("q", "k", "v", "output"):
        w.add_tensor(p + f"attn_{t}.weight", f16(N_EMBD, N_EMBD))
    w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor(p + "ffn_gate_inp.weight", rng.standard_normal((N_EXPERT, N_EMBD)).astype(np.float32))
    w.add_tensor(p + "ffn_up_exps.weight", f16(N_EXPERT, N_FF, N_EMBD))
    w.add_tensor(p + "ffn_gate_exps.weight", f16(N_EXPERT, N_FF, N_EMBD))
    w.add_tensor(p + "ffn_down_exps.weight", f16(N_EXPERT, N_EMBD, N_FF))
    _write(w)


def make_imatrix(path: str | os.PathLike[str], seed: int = 8) -> None:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["tiny-moe.txt"])
    w.add_uint32("imatrix.chunk_count", 4)
    w.add_uint32("imatrix.chunk_size", 512)

    def entry(name: str, n: int, counts: list[float]) -> None:
        c = np.asarray(counts, np.float32)
        sums = (rng.gamma(0.5, 2.0, (len(counts), n)) * c[:, None]).astype(np.float32)
        w.add_tensor(name + ".in_sum2", sums)
        w.add_tensor(name + ".counts", c.reshape(len(counts), 1))

    for t in ("q", "k", "v", "output"):
        entry(f"blk.0.attn_{t}.weight", N_EMBD, [2048.0])
    entry("blk.0.ffn_up_exps.weight", N_EMBD, COUNTS)
    entry("blk.0.ffn_gate_exps.weight", N_EMBD, COUNTS)
    entry("blk.0.ffn_down_exps.weight", N_FF, COUNTS)
    entry("output.weight", N_EMBD, [2048.0])
    _write(w)
