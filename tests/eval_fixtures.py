"""Tiny synthetic GGUF models for the evaluation tests (tokenizer, forward pass, imatrix collect):
a llama with a byte-level BPE vocabulary (optionally Mixtral-style MoE), and a gemma3 with a
SentencePiece-style vocabulary. Written with the `gguf` package's writer."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from qtool.eval.tokenizer import BYTE_ENCODER

TEXT = ("The theory of the thing: in the end, a rather odd tale of 12345 numbers and\n\n"
        "another  line\twith tabs, 'quotes' and don't-stop punctuation!? Then the\n" * 40)

BPE_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "r e", "Ġ o", "Ġo f", "t h", "Ġ n", "a n", "Ġa n"]
SPM_PIECES = [("▁the", -1.0), ("▁t", -2.0), ("th", -2.5), ("he", -3.0), ("in", -3.5), ("er", -4.0),
              ("▁a", -4.5), ("on", -5.0), ("▁of", -5.5), ("re", -6.0), ("an", -6.5), ("▁", -7.0)]


def _bpe_vocab(w: gguf.GGUFWriter, pre: str = "smollm") -> int:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    toks = specials + [BYTE_ENCODER[b] for b in range(256)]
    for m in BPE_MERGES:
        a, b = m.split(" ")
        if a + b not in toks:
            toks.append(a + b)
    types = [3] * len(specials) + [1] * (len(toks) - len(specials))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(BPE_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    return len(toks)


def _spm_vocab(w: gguf.GGUFWriter) -> int:
    toks = ["<pad>", "<eos>", "<bos>", "<unk>"]
    types = [3, 3, 3, 2]
    scores = [-1000.0] * 4
    for b in range(256):
        toks.append(f"<0x{b:02X}>")
        types.append(6)
        scores.append(0.0)
    for p, s in SPM_PIECES:
        toks.append(p)
        types.append(1)
        scores.append(s)
    for c in "abcdefghijklmnopqrstuvwxyzT,.!?'":
        toks.append(c)
        types.append(1)
        scores.append(-20.0)
    for u in ["\n", "\n\n", "  ", "\t"]:  # user-defined, split off before the SPM merges
        toks.append(u)
        types.append(4)
        scores.append(0.0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    return len(toks)


def make_model(path: Path, arch: str = "llama", moe: bool = False, n_layer: int = 2, seed: int = 0,
               q8_attn_output: bool = True) -> Path:
    """Write a tiny model (llama, qwen2 with q/k/v biases, gemma3): n_embd 64, 4 heads (2 KV heads)
    of 16, n_ff 96; MoE: 4 experts, 2 used,
    routed so that expert 0 takes every token, experts 1 and 2 share the second slot and expert 3
    gets none (embedding column 0 is a constant that no layer writes to)."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff = 64, 4, 2, 16, 96
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6 if arch == "gemma3" else 1e-5)
    w.add_rope_freq_base(10000.0 if arch == "llama" else 1e6)
    if arch == "gemma3":
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_sliding_window(8)
    else:
        w.add_rope_dimension_count(hd)
    if moe:
        w.add_expert_count(4)
        w.add_expert_used_count(2)
    n_vocab = _spm_vocab(w) if arch == "gemma3" else _bpe_vocab(w, "qwen2" if arch == "qwen2" else "smollm")

    def f16(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    emb = f16(n_vocab, n_embd, scale=0.5)
    if moe:
        emb[:, 0] = 4.0
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", norm(n_embd))
    if arch in ("llama", "qwen2"):
        w.add_tensor("output.weight", f16(n_vocab, n_embd))
    for il in range(n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", norm(n_embd))
        w.add_tensor(p + "attn_q.weight", f16(n_head * hd, n_embd))
        w.add_tensor(p + "attn_k.weight", f16(n_head_kv * hd, n_embd))
        w.add_tensor(p + "attn_v.weight", f16(n_head_kv * hd, n_embd))
        if arch == "qwen2":
            for t, n in (("q", n_head), ("k", n_head_kv), ("v", n_head_kv)):
                w.add_tensor(p + f"attn_{t}.bias", (rng.standard_normal(n * hd) * 0.1).astype(np.float32))
        wo = (rng.standard_normal((n_embd, n_head * hd)) * 0.2).astype(np.float32)
        if moe:
            wo[0] = 0
        if q8_attn_output and arch == "llama":
            q = gguf.quants.quantize(wo, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(p + "attn_output.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(p + "attn_output.weight", wo.astype(np.float16))
        w.add_tensor(p + "ffn_norm.weight", norm(n_embd))
        if arch == "gemma3":
            w.add_tensor(p + "attn_q_norm.weight", norm(hd))
            w.add_tensor(p + "attn_k_norm.weight", norm(hd))
            w.add_tensor(p + "post_attention_norm.weight", norm(n_embd))
            w.add_tensor(p + "post_ffw_norm.weight", norm(n_embd))
        if moe:
            gate = (rng.standard_normal((4, n_embd)) * 0.05).astype(np.float32)
            gate[0, 0], gate[1, 0], gate[2, 0], gate[3, 0] = 3.0, 0.0, 0.0, -3.0
            w.add_tensor(p + "ffn_gate_inp.weight", gate)
            w.add_tensor(p + "ffn_up_exps.weight", f16(4, n_ff, n_embd))
            w.add_tensor(p + "ffn_gate_exps.weight", f16(4, n_ff, n_embd))
            down = f16(4, n_embd, n_ff)
            down[:, 0, :] = 0
            w.add_tensor(p + "ffn_down_exps.weight", down)
        else:
            w.add_tensor(p + "ffn_up.weight", f16(n_ff, n_embd))
            w.add_tensor(p + "ffn_gate.weight", f16(n_ff, n_embd))
            w.add_tensor(p + "ffn_down.weight", f16(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
