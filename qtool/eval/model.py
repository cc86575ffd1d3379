"""A numpy forward pass over GGUF models, as llama.cpp's CPU backend computes it.

Architectures (llama.cpp src/models/*.cpp): `llama` (dense, and Mixtral-style MoE with
`ffn_gate_inp` + `ffn_{gate,up,down}_exps`, softmax gating, top-k, normalized weights), `qwen2`
(q/k/v biases), `qwen3` (per-head Q/K RMS norms), `gemma3` (embedding scale sqrt(n_embd), Q/K
norms, post-attention and post-FFN norms, GELU gate, sliding-window layers with their own RoPE
base, query scale 1/sqrt(head_dim)).

One batch of sequences (each its own causal context, positions from 0) runs through the model
one layer at a time; every weight is dequantized by the engine when its layer needs it and kept
in a bounded cache (`cache_bytes`), so memory stays bounded by the activations plus the cache;
F16 matrices are instead converted to float32 at each matmul (`Weights.matrix`, the output matrix
a block of rows at a time in `logit_blocks`) and never held as float32.

Numerics (`exact=True`, the default): the activations entering each weight matmul are rounded
to the weight type's vec_dot_type (numerics.round_for_dot), K and V are stored as F16 as in
llama.cpp's KV cache, attention is computed in float32 from F32 Q as ggml's tiled flash-attention
path does. `exact=False` keeps float32 activations everywhere (the model's "true" value).

An `observer` sees the input of every weight matmul before rounding, as llama-imatrix's
collect_imatrix sees src1: `dense(name, x)` with x float32[n_tokens, n_in] and
`experts(name, x, ids, n_expert)` for MUL_MAT_ID with x float32[n_tokens, n_slots, n_in]
(n_slots 1 when the input is broadcast over the selected experts) and ids int[n_tokens, n_used].

`device="cuda"` runs the pass on the first CUDA GPU through CuPy (`xp`, the array module, is
cupy instead of numpy; the same code): weights are dequantized on the host and uploaded into the
cache as float32 (F16 matrices uploaded as float16 and converted on the device at each matmul),
the matmuls are cuBLAS's, attention, norms, RoPE and the `exact` roundings run on the device;
token ids go in and the hidden states stay there (the observer gets device arrays; MoE routing
is chosen on the host from the fetched gate probabilities, small). The figures are close to the
CPU's, not bit-identical (cuBLAS and CuPy sum in other orders; exp and log are CUDA's), as
llama.cpp's CUDA backend differs from its CPU backend.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import QtoolError
from ..gguf_io import GGUFModel, TensorInfo
from ..quants import dequantize
from ..quants.types import QType
from .numerics import (
    MMAP_THRESHOLD,
    array_module,
    device_module,
    dot_type,
    gelu_f16,
    keep_heap,
    rms_norm,
    rope,
    rope_cache,
    round_f16,
    round_for_dot,
    silu,
    to_device,
    to_host,
)

F32 = np.float32
ARCHES = ("llama", "qwen2", "qwen3", "gemma3")
DEFAULT_CACHE_BYTES = 4 << 30
CAUSAL_TILE_MULTIPLE = 256  # attention splits the queries in two halves when n_ctx is a multiple


class ModelError(QtoolError):
    """A model qtool's forward pass cannot run (architecture, missing tensor, bad shape)."""


class Observer(Protocol):
    def dense(self, name: str, x: np.ndarray) -> None: ...

    def experts(self, name: str, x: np.ndarray, ids: np.ndarray, n_expert: int) -> None: ...


@dataclass
class HParams:
    """The hyper-parameters the forward pass needs (llama_model::load_hparams)."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_k: int
    head_v: int
    n_ff: int
    eps: float
    n_vocab: int
    rope_base: float
    rope_scale: float
    n_rot: int
    neox: bool
    n_expert: int = 0
    n_expert_used: int = 0
    n_swa: int = 0
    swa_layers: list[bool] = field(default_factory=list)
    rope_base_swa: float = 10000.0
    rope_scale_swa: float = 1.0
    kq_scale: float = 1.0
    q_scale: float = 1.0
    embd_scale: float = 1.0
    n_ctx_train: int = 0

    @classmethod
    def from_model(cls, m: GGUFModel) -> HParams:
        arch = m.arch
        if arch not in ARCHES:
            raise ModelError(f"{m.path}: architecture {arch!r} is not supported by the forward pass "
                             f"(supported: {', '.join(ARCHES)})", path=m.path)

        def k(key: str, default: object = None) -> object:
            v = m.kv(f"{arch}.{key}", default)
            if v is None:
                raise ModelError(f"{m.path}: missing key {arch}.{key}", path=m.path)
            return v

        def ki(key: str, default: int | None = None) -> int:
            return int(k(key, default))  # type: ignore[call-overload]

        def kf(key: str, default: float | None = None) -> float:
            return float(k(key, default))  # type: ignore[arg-type]

        n_embd = ki("embedding_length")
        n_head = ki("attention.head_count")
        n_head_kv = ki("attention.head_count_kv", n_head)
        head_k = ki("attention.key_length", n_embd // n_head)
        head_v = ki("attention.value_length", n_embd // n_head)
        toks = m.kv("tokenizer.ggml.tokens")
        emb = next((t for t in m.tensors if t.name == "token_embd.weight"), None)
        n_vocab = len(toks) if toks is not None else (emb.shape[1] if emb is not None else 0)
        scale_type = str(m.kv(f"{arch}.rope.scaling.type", "none"))
        factor = float(m.kv(f"{arch}.rope.scaling.factor", 0.0) or 0.0)
        rope_scale = 1.0 / factor if scale_type == "linear" and factor > 0 else 1.0
        hp = cls(arch=arch, n_layer=ki("block_count"), n_embd=n_embd, n_head=n_head,
                 n_head_kv=n_head_kv, head_k=head_k, head_v=head_v, n_ff=ki("feed_forward_length", 0),
                 eps=kf("attention.layer_norm_rms_epsilon"), n_vocab=n_vocab,
                 rope_base=kf("rope.freq_base", 10000.0), rope_scale=rope_scale,
                 n_rot=ki("rope.dimension_count", head_k), neox=arch != "llama",
                 n_expert=ki("expert_count", 0), n_expert_used=ki("expert_used_count", 0),
                 n_ctx_train=ki("context_length", 0))
        hp.kq_scale = 1.0 / float(np.sqrt(F32(head_k)))
        hp.swa_layers = [False] * hp.n_layer
        if arch == "gemma3":
            hp.embd_scale = float(np.sqrt(F32(n_embd)))
            # llama_model_gemma3::load_arch_hparams: 27B scales by n_embd/n_head, the rest by head_k
            hp.q_scale = float(F32(1) / np.sqrt(F32(n_embd // n_head if hp.n_layer == 62 else head_k)))
            hp.kq_scale = 1.0
            hp.n_swa = int(m.kv("gemma3.attention.sliding_window", 0) or 0)
            if hp.n_swa > 0:
                pattern = m.kv("gemma3.attention.sliding_window_pattern", 6)
                if isinstance(pattern, (list, np.ndarray)):
                    hp.swa_layers = [bool(v) for v in pattern][: hp.n_layer]
                else:
                    p = int(pattern)
                    hp.swa_layers = [p == 0 or (il % p < p - 1) for il in range(hp.n_layer)]
                hp.rope_base_swa = float(m.kv("gemma3.rope.freq_base_swa", 10000.0))
        return hp


class Weights:
    """Dequantized weights on demand, float32[rows, n_per_row] (3-D: [n_mat, rows, n_per_row]),
    kept in an LRU cache of at most `cache_bytes`; on xp's device (numpy: the host) where xp is
    CuPy (dequantized on the host, then uploaded; the device copy is what the cache holds)."""

    def __init__(self, model: GGUFModel, cache_bytes: int = DEFAULT_CACHE_BYTES, xp: Any = np) -> None:
        self.model = model
        self.infos: dict[str, TensorInfo] = {t.name: t for t in model.tensors}
        self.cache_bytes = cache_bytes
        self.xp = xp
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._held = 0

    def has(self, name: str) -> bool:
        return name in self.infos

    @property
    def held_bytes(self) -> int:
        """Bytes of dequantized weights the cache holds."""
        return self._held

    def info(self, name: str) -> TensorInfo:
        t = self.infos.get(name)
        if t is None:
            raise ModelError(f"{self.model.path}: tensor {name!r} is missing", path=self.model.path)
        return t

    def qtype(self, name: str) -> QType:
        return self.info(name).qtype

    def _recall(self, key: str) -> Any:
        a = self._cache.get(key)
        if a is not None:
            self._cache.move_to_end(key)
        return a

    def _keep(self, key: str, a: Any) -> None:
        if a.nbytes <= self.cache_bytes:
            self._cache[key] = a
            self._held += a.nbytes
            while self._held > self.cache_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._held -= old.nbytes

    def get(self, name: str) -> Any:
        a = self._recall(name)
        if a is not None:
            return a
        t = self.info(name)
        self.model.check_size(t)
        data = np.asarray(self.model.tensor_data(t)).reshape(t.n_rows, -1)
        if t.qtype.name == "F32":
            a = data.view(F32).reshape(t.n_rows, t.n_per_row).copy()
        elif t.qtype.name == "F16":
            a = data.view(np.float16).astype(F32).reshape(t.n_rows, t.n_per_row)
        else:
            a = dequantize(data, t.qtype, t.n_per_row)
        if len(t.shape) == 1:
            a = a.reshape(-1)
        elif len(t.shape) == 3:
            a = a.reshape(t.shape[2], t.shape[1], t.shape[0])
        a = to_device(self.xp, a)
        self._keep(name, a)
        return a

    def raw_f16(self, name: str) -> Any:
        """The F16 tensor `name` as float16[rows, n_per_row] when it is F16, 2-D and not in the
        cache as float32; else None. On the host a view of the file; on a device its copy there,
        kept in the cache (half the bytes of float32)."""
        t = self.info(name)
        if t.qtype.name != "F16" or len(t.shape) != 2 or name in self._cache:
            return None
        if self.xp is not np:
            a = self._recall(name + "#f16")
            if a is not None:
                return a
        self.model.check_size(t)
        h = np.asarray(self.model.tensor_data(t)).reshape(t.n_rows, -1).view(np.float16)
        if self.xp is np:
            return h
        a = self.xp.asarray(h)
        self._keep(name + "#f16", a)
        return a

    def matrix(self, name: str) -> Any:
        """The 2-D weight as float32 for a matmul. An F16 matrix of at most MMAP_THRESHOLD bytes as
        float32 is converted anew on every call and not cached: the conversion costs ~1% of its
        matmul, and the temporary reuses heap pages (numerics.keep_heap) where a cached copy costs
        fresh pages (page faults as slow as converting it dozens of times) and memory. On a
        device every F16 matrix is converted there at each call (from its cached float16 copy)."""
        h = self.raw_f16(name)
        if h is not None and (self.xp is not np or 4 * h.size <= MMAP_THRESHOLD):
            return h.astype(F32)
        return self.get(name)

    def rows(self, name: str, ids: np.ndarray) -> Any:
        """get_rows: the rows `ids` (host ints) of a 2-D tensor, dequantizing only those; on xp's
        device."""
        if name in self._cache:
            return self._cache[name][to_device(self.xp, ids)]
        t = self.info(name)
        self.model.check_size(t)
        data = np.asarray(self.model.tensor_data(t)).reshape(t.n_rows, -1)
        uniq, inv = np.unique(ids.reshape(-1), return_inverse=True)
        sel = data[uniq]
        if t.qtype.name == "F32":
            r = sel.view(F32).reshape(len(uniq), t.n_per_row)
        elif t.qtype.name == "F16":
            r = sel.view(np.float16).astype(F32).reshape(len(uniq), t.n_per_row)
        else:
            r = dequantize(sel, t.qtype, t.n_per_row)
        return to_device(self.xp, r[inv].reshape(*ids.shape, t.n_per_row))


def _softmax_rows(s: Any) -> Any:
    """Softmax over the last axis, in place (rows of -inf only give NaN-free zeros)."""
    xp = array_module(s)
    m = s.max(axis=-1, keepdims=True)
    m[~xp.isfinite(m)] = 0
    xp.subtract(s, m, out=s)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


class Forward:
    """Run token batches through a GGUF model (see the module docstring)."""

    def __init__(self, model: GGUFModel, *, exact: bool = True, cache_bytes: int | None = None,
                 observer: Observer | None = None, device: str = "cpu") -> None:
        self.model = model
        self.hp = HParams.from_model(model)
        self.device = device
        self.xp = device_module(device)
        if cache_bytes is None:
            cache_bytes = int(os.environ.get("QTOOL_EVAL_CACHE_BYTES", DEFAULT_CACHE_BYTES))
        self.w = Weights(model, cache_bytes, self.xp)
        self.exact = exact
        self.observer = observer
        keep_heap()
        self.output_name = "output.weight" if self.w.has("output.weight") else "token_embd.weight"
        self._rounded: tuple[Any, str, Any] | None = None
        self._rope: dict[tuple[int, float, float], tuple[Any, Any]] = {}
        self._check()

    def _check(self) -> None:
        hp = self.hp
        for name in ("token_embd.weight", "output_norm.weight"):
            self.w.info(name)
        if hp.n_head % hp.n_head_kv:
            raise ModelError(f"{self.model.path}: {hp.n_head} heads do not split into {hp.n_head_kv} KV heads")
        if hp.n_rot > hp.head_k or hp.n_rot % 2:
            raise ModelError(f"{self.model.path}: rope dimension {hp.n_rot} does not fit head size {hp.head_k}")

    # -- pieces -----------------------------------------------------------------------------------

    def mm(self, name: str, x: Any, observe: bool = True) -> Any:
        """x float32[n, n_in] @ W^T (+ bias), activations rounded to W's dot type."""
        if observe and self.observer is not None:
            self.observer.dense(name, x)
        w = self.w.matrix(name)
        if w.ndim != 2 or w.shape[1] != x.shape[1]:
            raise ModelError(f"{name}: shape {w.shape} does not take inputs of {x.shape[1]}")
        xr = x
        if self.exact:
            kind = dot_type(self.w.qtype(name))
            last = self._rounded
            if last is not None and last[0] is x and last[1] == kind:  # Q, K, V (up, gate) share an input
                xr = last[2]
            else:
                xr = round_for_dot(x, kind)
                self._rounded = (x, kind, xr)
        y = xr @ w.T
        bias = name.replace(".weight", ".bias")
        if self.w.has(bias):
            y += self.w.get(bias)
        return y

    def norm(self, x: Any, name: str) -> Any:
        return (rms_norm(x, self.hp.eps) * self.w.get(name)).astype(F32, copy=False)

    def rope_tables(self, n_ctx: int, base: float, scale: float) -> tuple[Any, Any]:
        """rope_cache of positions 0..n_ctx-1 on the pass's device, made once per shape."""
        key = (n_ctx, base, scale)
        t = self._rope.get(key)
        if t is None:
            cos, sin = rope_cache(np.arange(n_ctx), self.hp.n_rot, base, scale)
            t = self._rope[key] = (to_device(self.xp, cos), to_device(self.xp, sin))
        return t

    def embed(self, tokens: np.ndarray) -> Any:
        x = self.w.rows("token_embd.weight", tokens.reshape(-1)).astype(F32)
        if self.hp.embd_scale != 1.0:
            x *= F32(self.hp.embd_scale)
        return x

    def attention(self, il: int, cur: Any, n_seq: int, n_ctx: int) -> Any:
        hp = self.hp
        xp = self.xp
        p = f"blk.{il}."
        q = self.mm(p + "attn_q.weight", cur).reshape(n_seq, n_ctx, hp.n_head, hp.head_k)
        k = self.mm(p + "attn_k.weight", cur).reshape(n_seq, n_ctx, hp.n_head_kv, hp.head_k)
        v = self.mm(p + "attn_v.weight", cur).reshape(n_seq, n_ctx, hp.n_head_kv, hp.head_v)
        if self.w.has(p + "attn_q_norm.weight"):
            q = self.norm(q, p + "attn_q_norm.weight")
            k = self.norm(k, p + "attn_k_norm.weight")
        swa = hp.swa_layers[il] if hp.swa_layers else False
        base, scale = (hp.rope_base_swa, hp.rope_scale_swa) if swa else (hp.rope_base, hp.rope_scale)
        cos, sin = self.rope_tables(n_ctx, base, scale)
        cos, sin = cos[:, None, :], sin[:, None, :]
        q = rope(q, cos, sin, hp.neox)
        k = rope(k, cos, sin, hp.neox)
        if hp.q_scale != 1.0:
            q = q * F32(hp.q_scale)
        if self.exact:  # the KV cache is F16
            k = round_f16(k)
            v = round_f16(v)
        pos = xp.arange(n_ctx)
        masked = pos[None, :] > pos[:, None]
        if swa and hp.n_swa > 0:
            masked |= (pos[:, None] - pos[None, :]) >= hp.n_swa
        mask = xp.where(masked, F32(-np.inf), F32(0))
        group = hp.n_head // hp.n_head_kv
        out = xp.empty((n_seq, n_ctx, hp.n_head, hp.head_v), F32)
        # causal tiles: the first half of the queries sees only the first half of the keys (the
        # rest of its row is masked: exp gives exact zeros), so a quarter of the scores is skipped.
        # n_ctx a multiple of 256 keeps numpy's pairwise row sums (blocks of 128) and BLAS's
        # in-order dot products over keys identical to the whole-row computation.
        half = n_ctx // 2 if n_ctx % CAUSAL_TILE_MULTIPLE == 0 else 0
        tiles = [(0, half, half), (half, n_ctx, n_ctx)] if half else [(0, n_ctx, n_ctx)]
        for s in range(n_seq):
            q4 = q[s].transpose(1, 0, 2).reshape(hp.n_head_kv, group, n_ctx, hp.head_k)
            ks = k[s].transpose(1, 2, 0)  # (kv, head_k, T)
            vs = v[s].transpose(1, 0, 2)  # (kv, T, head_v)
            for t0, t1, nk in tiles:
                nq = t1 - t0
                qs = q4[:, :, t0:t1].reshape(hp.n_head_kv, group * nq, hp.head_k)
                sc = xp.matmul(qs, ks[:, :, :nk]).reshape(hp.n_head_kv, group, nq, nk)
                if hp.kq_scale != 1.0:
                    sc *= F32(hp.kq_scale)
                sc += mask[t0:t1, :nk]
                pr = _softmax_rows(sc).reshape(hp.n_head_kv, group * nq, nk)
                o = xp.matmul(pr, vs[:, :nk])  # (kv, group*nq, head_v)
                out[s, t0:t1] = o.reshape(hp.n_head, nq, hp.head_v).transpose(1, 0, 2)
        return self.mm(p + "attn_output.weight", out.reshape(n_seq * n_ctx, hp.n_head * hp.head_v))

    def ffn(self, il: int, cur: Any) -> Any:
        p = f"blk.{il}."
        if self.w.has(p + "ffn_gate_inp.weight"):
            return self.moe(il, cur)
        up = self.mm(p + "ffn_up.weight", cur)
        gate = self.mm(p + "ffn_gate.weight", cur)
        act = gelu_f16(gate) if self.hp.arch == "gemma3" else silu(gate)
        act *= up  # act is a new array (gelu_f16 / silu)
        return self.mm(p + "ffn_down.weight", act)

    def moe(self, il: int, cur: Any) -> Any:
        """llm_graph_context::build_moe_ffn with softmax gating, top-k, normalized weights. The
        routing (top-k and weights) is chosen on the host; on a device from the fetched gate
        probabilities (n_tok x n_expert), the experts' matmuls stay there."""
        hp = self.hp
        xp = self.xp
        p = f"blk.{il}."
        n_tok = cur.shape[0]
        logits = self.mm(p + "ffn_gate_inp.weight", cur)
        probs = to_host(_softmax_rows(logits))
        k = hp.n_expert_used
        sel = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        wts = np.take_along_axis(probs, sel, axis=1)
        wts = (wts / np.maximum(wts.sum(axis=1, keepdims=True), F32(6.103515625e-5))).astype(F32)
        names = {t: p + f"ffn_{t}_exps.weight" for t in ("up", "gate", "down")}
        if self.observer is not None:
            self.observer.experts(names["up"], cur[:, None, :], sel, hp.n_expert)
            self.observer.experts(names["gate"], cur[:, None, :], sel, hp.n_expert)
        w_up, w_gate, w_down = (self.w.get(names[t]) for t in ("up", "gate", "down"))
        dt_up, dt_gate, dt_down = (dot_type(self.w.qtype(names[t])) for t in ("up", "gate", "down"))
        n_ff = w_up.shape[1]
        par = xp.zeros((n_tok, k, n_ff), F32)
        for e in np.unique(sel):
            tok, slot = (to_device(xp, i) for i in np.nonzero(sel == e))
            xe = cur[tok]
            up = (round_for_dot(xe, dt_up) if self.exact else xe) @ w_up[e].T
            gate = (round_for_dot(xe, dt_gate) if self.exact else xe) @ w_gate[e].T
            par[tok, slot] = silu(gate) * up
        if self.observer is not None:
            self.observer.experts(names["down"], par, sel, hp.n_expert)
        # as build_moe_ffn: each slot's expert output times its weight, then the slots summed in
        # slot order, ((s0 + s1) + s2) + ..., not in expert order (float addition is not associative)
        ys = xp.empty((n_tok, k, hp.n_embd), F32)
        wts = to_device(xp, wts)
        for e in np.unique(sel):
            tok, slot = (to_device(xp, i) for i in np.nonzero(sel == e))
            xe = par[tok, slot]
            y = (round_for_dot(xe, dt_down) if self.exact else xe) @ w_down[e].T
            ys[tok, slot] = y * wts[tok, slot][:, None]
        out = ys[:, 0].copy()
        for s in range(1, k):
            out += ys[:, s]
        return out

    def layer(self, il: int, x: Any, n_seq: int, n_ctx: int, keep: Any = None) -> Any:
        """One transformer block; `keep` (row indices, on the pass's device) trims the rows after
        attention, as llama.cpp's inp_out_ids does in the last layer."""
        p = f"blk.{il}."
        cur = self.norm(x, p + "attn_norm.weight")
        cur = self.attention(il, cur, n_seq, n_ctx)
        if keep is not None:
            cur, x = cur[keep], x[keep]
        if self.hp.arch == "gemma3":
            cur = self.norm(cur, p + "post_attention_norm.weight")
            sa = cur + x
            cur = self.ffn(il, self.norm(sa, p + "ffn_norm.weight"))
            cur = self.norm(cur, p + "post_ffw_norm.weight")
            return (cur + sa).astype(F32)
        ffn_inp = cur + x
        cur = self.ffn(il, self.norm(ffn_inp, p + "ffn_norm.weight"))
        return (cur + ffn_inp).astype(F32)

    # -- whole passes -------------------------------------------------------------------------------

    def hidden(self, tokens: np.ndarray, first: int = 0, progress: object = None) -> Any:
        """The output-normalized hidden states of positions >= first, float32[n_seq, n_ctx-first, n_embd]
        (on the pass's device), for tokens int[n_seq, n_ctx] (host; one causal sequence per row)."""
        n_seq, n_ctx = tokens.shape
        x = self.embed(tokens)
        keep = None
        if first > 0:
            keep = to_device(self.xp, (np.arange(n_seq)[:, None] * n_ctx
                                       + np.arange(first, n_ctx)[None, :]).reshape(-1))
        for il in range(self.hp.n_layer):
            x = self.layer(il, x, n_seq, n_ctx, keep if il == self.hp.n_layer - 1 else None)
            self._rounded = None
            if callable(progress):
                progress()
        x = self.norm(x, "output_norm.weight")
        return x.reshape(n_seq, -1, self.hp.n_embd)

    def logits(self, h: Any, observe: bool = True) -> Any:
        """Logits float32[n, n_vocab] of hidden rows h float32[n, n_embd] (the output matmul)."""
        obs = observe and self.output_name == "output.weight"
        return self.mm(self.output_name, h, observe=obs)

    def logit_blocks(self, h: Any, block: int) -> Iterator[tuple[int, Any]]:
        """The logits of hidden rows h float32[n, n_embd] as `logits(h, observe=False)` computes
        them, `block` vocabulary entries at a time: (first id, float32[n, <= block]), the array
        reused between blocks. An F16 output matrix is converted block by block (no float32 copy
        of the whole vocabulary is made or kept); others come from the weight cache."""
        xp = self.xp
        name = self.output_name
        xr = round_for_dot(h, dot_type(self.w.qtype(name))) if self.exact else h
        xr = xp.ascontiguousarray(xr, dtype=F32)
        raw = self.w.raw_f16(name)
        w = self.w.get(name) if raw is None else raw
        if w.ndim != 2 or w.shape[1] != xr.shape[1]:
            raise ModelError(f"{name}: shape {w.shape} does not take inputs of {xr.shape[1]}")
        bias_name = name.replace(".weight", ".bias")
        bias = self.w.get(bias_name) if self.w.has(bias_name) else None
        n_vocab = w.shape[0]
        out = xp.empty((xr.shape[0], min(block, n_vocab)), F32)
        wbuf = xp.empty((min(block, n_vocab), w.shape[1]), F32) if raw is not None else None
        for v0 in range(0, n_vocab, block):
            k = min(block, n_vocab - v0)
            if wbuf is not None:
                wb = wbuf[:k]
                xp.copyto(wb, w[v0:v0 + k])
            else:
                wb = w[v0:v0 + k]
            y = out if k == out.shape[1] else xp.empty((xr.shape[0], k), F32)
            xp.matmul(xr, wb.T, out=y)
            if bias is not None:
                y += bias[v0:v0 + k]
            yield v0, y
