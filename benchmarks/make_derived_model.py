"""Derive Mixtral-style MoE, qwen2 and qwen3 GGUF models from a real llama F16 model (its real
weights and tokenizer), to check qtool's forward pass against llama.cpp on architectures for
which no real model can be downloaded here.

    python benchmarks/make_derived_model.py IN.gguf OUT.gguf --moe 4 --top-k 2 [--layers 8]
    python benchmarks/make_derived_model.py IN.gguf OUT.gguf --arch qwen2 [--layers 8]
    python benchmarks/make_derived_model.py IN.gguf OUT.gguf --arch qwen3 [--layers 8]

- `--moe N --top-k K` (llama arch): every layer's FFN becomes N experts, each a copy of the dense
  FFN with small deterministic multiplicative noise (`--perturb`, relative); with softmax gating
  and normalized top-k weights the layer's output stays close to the dense FFN's, so the model
  keeps its perplexity. A router `ffn_gate_inp` [n_embd, N] (F32, as convert_hf_to_gguf keeps it)
  is drawn from the seed, scaled so its logits have a spread of about `--router-scale`.
  Expert tensors are stacked as convert writes Mixtral's: `ffn_{gate,up}_exps` [n_embd, n_ff, N],
  `ffn_down_exps` [n_ff, n_embd, N]; keys `llama.expert_count` / `llama.expert_used_count`.
- `--arch qwen2` / `--arch qwen3`: the `llama.*` keys renamed; Q and K rows un-permuted (the
  inverse of convert's llama `permute`), so NEOX RoPE (qwen's) on them equals llama's normal RoPE
  on the input's; qwen2 gets small deterministic q/k/v biases (F32), qwen3 per-head
  `attn_q_norm` / `attn_k_norm` weights (F32): `--qk-norm` times (1 + small noise). Normalizing
  Q and K changes what SmolLM2's attention sees, so the qwen3 model is a degraded LM: 8 x 512
  chunks of pydoc text give PPL ~150 with --qk-norm 1.6 (~380 with plain ones, 12 for the
  source), far below the vocabulary's 49152, enough for comparing perplexities.

Tokenizer metadata is kept as is. `--layers` keeps some layers only (SmolLM2 loses its quality
without all of them, but the numerics can be compared on any). `--f32` writes the layers' matrices
as F32: llama.cpp then multiplies float32 activations (F16 weights: activations rounded to F16),
which takes away the main source of last-bit chaos between two implementations, so that MoE
routing decisions agree token for token (with F16 weights a token whose top-k logits are within
~1e-3 of each other may be routed differently).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qtool.gguf_io import KV, GGUFModel, GGUFStreamWriter, OutTensor, TensorInfo, kv_u32, make_kv, set_kv  # noqa: E402
from qtool.quants import dequantize  # noqa: E402
from qtool.quants.types import QType, get_type  # noqa: E402

_BLK = re.compile(r"^blk\.(\d+)\.(.*)$")
F16, F32 = get_type("F16"), get_type("F32")
# distinct streams of the seeded generator
_ROUTER, _EXPERT, _BIAS, _NORM = 1, 2, 3, 4
# one output tensor: name, ggml shape, type, and its source: a tensor copied as stored or a
# function giving its values (numpy order)
Entry = tuple[str, tuple[int, ...], QType, "TensorInfo | Callable[[], np.ndarray]"]


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of convert_hf_to_gguf's llama `permute` (rows [n_head * d, ...])."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


class Deriver:
    """Plans and writes the derived model's tensors (name, ggml shape, type, data function)."""

    def __init__(self, m: GGUFModel, args: argparse.Namespace) -> None:
        self.m = m
        self.a = args
        self.infos = {t.name: t for t in m.tensors}
        self.n_head = int(m.kv("llama.attention.head_count"))
        self.n_head_kv = int(m.kv("llama.attention.head_count_kv", self.n_head))
        self.n_embd = int(m.kv("llama.embedding_length"))
        self.head_dim = self.n_embd // self.n_head

    def data(self, t: TensorInfo) -> np.ndarray:
        """float32 array of the tensor in numpy order ([ne1, ne0] for matrices)."""
        x = dequantize(self.m.tensor_rows(t, 0, t.n_rows), t.qtype, t.n_per_row)
        return np.asarray(x, np.float32).reshape(tuple(reversed(t.shape)))

    def plan(self) -> list[Entry]:
        """(name, ggml shape, qtype, source): source a TensorInfo (copied as stored) or a callable
        giving the numpy array."""
        a = self.a
        out: list[Entry] = []
        for t in self.m.tensors:
            mt = _BLK.match(t.name)
            if not mt:
                out.append((t.name, t.shape, t.qtype, t))
                continue
            src, rest = int(mt.group(1)), mt.group(2)
            if src not in a.keep:
                continue
            il = a.keep.index(src)
            name = f"blk.{il}.{rest}"
            if a.arch in ("qwen2", "qwen3") and rest in ("attn_q.weight", "attn_k.weight"):
                nh = self.n_head if rest == "attn_q.weight" else self.n_head_kv
                out.append((name, t.shape, F16, partial(self._unpermuted, t, nh)))
                if a.arch == "qwen2":
                    out.append(self._bias(il, rest[5], t.shape[1]))
                continue
            if a.arch == "qwen2" and rest == "attn_v.weight":
                out.append((name, t.shape, t.qtype, t))
                out.append(self._bias(il, "v", t.shape[1]))
                continue
            if a.arch == "qwen3" and rest == "attn_norm.weight":
                out.append((name, t.shape, t.qtype, t))
                for key, k in enumerate("qk"):
                    out.append((f"blk.{il}.attn_{k}_norm.weight", (self.head_dim,), F32,
                                partial(self._qk_norm, il, key)))
                continue
            if a.moe and rest in ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"):
                if rest == "ffn_gate.weight":
                    out.append(self._router(il, src))
                kind = rest.split(".")[0][4:]
                shape = (*t.shape, a.moe)
                out.append((f"blk.{il}.ffn_{kind}_exps.weight", shape, F16,
                            partial(self._experts, t, il, kind)))
                continue
            out.append((name, t.shape, t.qtype, t))
        if a.f32:  # the layers' matrices as F32: no F16 rounding of activations in either tool
            mats = [n.startswith("blk.") and len(sh) > 1 for n, sh, _, _ in out]
            out = [(n, sh, F32, partial(self.data, src) if isinstance(src, TensorInfo) else src) if mat
                   else (n, sh, qt, src) for (n, sh, qt, src), mat in zip(out, mats, strict=True)]
        return out

    def _bias(self, il: int, k: str, n: int) -> Entry:
        return (f"blk.{il}.attn_{k}.bias", (n,), F32, partial(self._noise, self.a.bias, (n,), _BIAS, il, ord(k)))

    def _unpermuted(self, t: TensorInfo, n_head: int) -> np.ndarray:
        return unpermute(self.data(t), n_head)

    def _noise(self, scale: float, shape: tuple[int, ...], *key: int) -> np.ndarray:
        """scale * standard normal values from the seed and `key`."""
        return (scale * _rng(self.a.seed, *key).standard_normal(shape)).astype(np.float32)

    def _qk_norm(self, il: int, key: int) -> np.ndarray:
        """attn_{q,k}_norm [head_dim]: qk_norm * (1 + perturb * noise)."""
        noise = self.a.perturb * _rng(self.a.seed, _NORM, il, key).standard_normal(self.head_dim)
        return (self.a.qk_norm * (1 + noise)).astype(np.float32)

    def _router(self, il: int, src: int) -> Entry:
        """ffn_gate_inp: logits of spread ~router_scale for inputs rms_norm(x) * ffn_norm."""
        norm = self.data(self.infos[f"blk.{src}.ffn_norm.weight"])
        scale = self.a.router_scale / float(np.sqrt((norm.astype(np.float64) ** 2).sum()))
        n = self.a.moe
        return (f"blk.{il}.ffn_gate_inp.weight", (self.n_embd, n), F32,
                partial(self._noise, scale, (n, self.n_embd), _ROUTER, il))

    def _experts(self, t: TensorInfo, il: int, kind: str) -> np.ndarray:
        w = self.data(t)
        kid = ("gate", "up", "down").index(kind)
        stack = [w * (1 + self.a.perturb * _rng(self.a.seed, _EXPERT, il, kid, e).standard_normal(w.shape))
                 for e in range(self.a.moe)]
        return np.stack(stack).astype(np.float32)

    def kvs(self) -> list[KV]:
        a = self.a
        kvs = list(self.m.kvs)
        kvs = set_kv(kvs, kv_u32("llama.block_count", len(a.keep)))
        if a.moe:
            kvs = set_kv(kvs, kv_u32("llama.expert_count", a.moe))
            kvs = set_kv(kvs, kv_u32("llama.expert_used_count", a.top_k))
        if a.arch != "llama":
            renamed = []
            for kv in kvs:
                if kv.key == "general.architecture":
                    kv = make_kv(kv.key, kv.vtype, a.arch)
                elif kv.key.startswith("llama."):
                    kv = KV(a.arch + kv.key[5:], kv.vtype, kv.value,
                            _rename_raw(kv.raw, kv.key, a.arch + kv.key[5:]), kv.atype)
                renamed.append(kv)
            kvs = renamed
        return kvs


def _rename_raw(raw: bytes, old: str, new: str) -> bytes:
    """A key/value entry's bytes with its key replaced (length-prefixed key, then the value)."""
    n = len(old.encode())
    assert int.from_bytes(raw[:8], "little") == n and raw[8:8 + n] == old.encode()
    return len(new.encode()).to_bytes(8, "little") + new.encode() + raw[8 + n:]


def parse_layers(spec: str | None, n_layer: int) -> list[int]:
    """`--layers`: None (all), N (the first N) or a comma list of layers and ranges a-b."""
    if spec is None:
        return list(range(n_layer))
    if spec.isdigit():
        keep = list(range(int(spec)))
    else:
        keep = []
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            keep += list(range(int(lo), int(hi or lo) + 1))
    if not keep or len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= n_layer:
        sys.exit(f"--layers {spec}: not distinct layers of 0..{n_layer - 1}")
    return keep


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="a llama-architecture GGUF (F16)")
    ap.add_argument("output")
    ap.add_argument("--arch", choices=("llama", "qwen2", "qwen3"), default="llama")
    ap.add_argument("--moe", type=int, default=0, help="experts per layer (llama arch only)")
    ap.add_argument("--top-k", type=int, default=2, help="experts used per token")
    ap.add_argument("--layers", help="the layers to keep: N (the first N) or a list like 0-3,26-29 (default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--f32", action="store_true", help="write the layers' matrices as F32")
    ap.add_argument("--perturb", type=float, default=0.05, help="relative noise of expert copies, q/k norms")
    ap.add_argument("--router-scale", type=float, default=2.0, help="spread of the router logits")
    ap.add_argument("--qk-norm", type=float, default=1.6, help="size of the qwen3 q/k norm weights")
    ap.add_argument("--bias", type=float, default=0.05, help="std of the qwen2 q/k/v biases")
    a = ap.parse_args(argv)
    m = GGUFModel(a.input)
    if m.arch != "llama":
        sys.exit(f"{a.input}: architecture {m.arch}, expected llama")
    n_layer = int(m.kv("llama.block_count"))
    a.keep = parse_layers(a.layers, n_layer)
    if a.moe and (a.arch != "llama" or not 1 <= a.top_k <= a.moe):
        sys.exit("--moe needs --arch llama and 1 <= --top-k <= --moe")
    d = Deriver(m, a)
    plan = d.plan()
    outs = [OutTensor(name, shape, qt) for name, shape, qt, _ in plan]
    with GGUFStreamWriter(a.output, d.kvs(), outs, m.alignment) as w:
        for (_name, _shape, qt, src), o in zip(plan, outs, strict=True):
            if isinstance(src, TensorInfo):
                w.write_tensor_chunk(m.tensor_data(src))
            else:
                x = src()
                assert x.size == int(np.prod(o.shape)), o.name
                w.write_tensor_chunk(x.astype(np.float16 if qt.name == "F16" else np.float32))
    size = Path(a.output).stat().st_size
    print(f"{a.output}: {a.arch}{f' MoE {a.moe}x top-{a.top_k}' if a.moe else ''}, {len(a.keep)} layers, "
          f"{len(plan)} tensors, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
