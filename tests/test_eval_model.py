"""The forward pass (qtool.eval.model) against a plain float64 transliteration of llama.cpp's
llama / gemma3 graphs (weights read with the `gguf` package, one token at a time), the fused
dot-type roundings against the engine's kernels, and properties: causality, MoE routing."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from qtool.eval.model import Forward, HParams
from qtool.eval.numerics import gelu_f16, rope_cache, round_bf16, round_q8_0, round_q8_0_x86, round_q8_k
from qtool.gguf_io import GGUFModel
from qtool.quants import dequantize, quantize
from tests.eval_fixtures import make_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {"llama": make_model(d / "llama.gguf"), "moe": make_model(d / "moe.gguf", moe=True),
            "gemma3": make_model(d / "gemma3.gguf", arch="gemma3", n_layer=6),
            "qwen2": make_model(d / "qwen2.gguf", arch="qwen2")}


def test_round_trips_equal_engine() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 512)) * rng.lognormal(0, 3, (16, 1))).astype(np.float32)
    x[2] = 0
    x[3, :256] = 0
    x[4, 7] = x[4].max() * 4
    x[4, 8] = -x[4, 7]
    x[5] = np.round(x[5] * 4) / 4
    for f, t in ((round_q8_0, "Q8_0"), (round_q8_k, "Q8_K"), (round_bf16, "BF16")):
        ref = dequantize(quantize(x, t), t, 512) if t != "BF16" else gguf.quants.dequantize(
            gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16)
        np.testing.assert_array_equal(f(x), ref, err_msg=t)
    # x86 SIMD Q8_0: same scales, values differ from the reference in at most one step, rarely
    a, b = round_q8_0_x86(x), round_q8_0(x)
    step = np.repeat(np.abs(x).reshape(-1, 32).max(1) / 127, 32).reshape(x.shape)
    assert np.all(np.abs(a - b) <= step * 1.01) and np.mean(a != b) < 1e-3


def test_gelu_table_and_rope() -> None:
    x = np.linspace(-12, 12, 10001, dtype=np.float32)
    g = 0.5 * x * (1 + np.tanh(0.7978845608 * x * (1 + 0.044715 * x * x)))
    np.testing.assert_allclose(gelu_f16(x), g, atol=2e-2, rtol=2e-3)
    assert gelu_f16(np.float32([-11, 11])).tolist() == [0.0, 11.0]
    cos, sin = rope_cache(np.arange(4), 8, 10000.0)
    th = np.arange(4)[:, None] * 10000.0 ** (-np.arange(4) * 2 / 8)
    np.testing.assert_allclose(cos, np.cos(th), atol=1e-6)
    np.testing.assert_allclose(sin, np.sin(th), atol=1e-6)


def _tensors(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        shape = tuple(int(v) for v in reversed(t.shape))
        a = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type > 1 else np.asarray(t.data)
        out[t.name] = np.asarray(a, np.float64).reshape(shape)
    return out


def naive_forward(path: Path, tokens: np.ndarray) -> np.ndarray:
    """Final normed hidden states of one sequence, float64, textbook formulas (per token)."""
    hp = HParams.from_model(GGUFModel(path))
    w = _tensors(path)

    def rms(v: np.ndarray, g: np.ndarray) -> np.ndarray:
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + hp.eps) * g

    def rot(v: np.ndarray, p: int, base: float) -> np.ndarray:
        n = hp.n_rot
        th = p * base ** (-np.arange(n // 2) * 2.0 / n)
        c, s = np.cos(th), np.sin(th)
        y = v.copy()
        if hp.neox:
            a, b = v[..., : n // 2], v[..., n // 2: n]
            y[..., : n // 2], y[..., n // 2: n] = a * c - b * s, a * s + b * c
        else:
            a, b = v[..., 0:n:2], v[..., 1:n:2]
            y[..., 0:n:2], y[..., 1:n:2] = a * c - b * s, a * s + b * c
        return y

    T = len(tokens)
    x = w["token_embd.weight"][tokens] * (np.sqrt(hp.n_embd) if hp.arch == "gemma3" else 1.0)
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn_q.weight"].T + w.get(p + "attn_q.bias", 0)).reshape(T, hp.n_head, hp.head_k)
        k = (h @ w[p + "attn_k.weight"].T + w.get(p + "attn_k.bias", 0)).reshape(T, hp.n_head_kv, hp.head_k)
        v = (h @ w[p + "attn_v.weight"].T + w.get(p + "attn_v.bias", 0)).reshape(T, hp.n_head_kv, hp.head_v)
        if hp.arch == "gemma3":
            q, k = rms(q, w[p + "attn_q_norm.weight"]), rms(k, w[p + "attn_k_norm.weight"])
        swa = hp.swa_layers[il]
        base = hp.rope_base_swa if swa else hp.rope_base
        q = np.stack([rot(q[t], t, base) for t in range(T)])
        k = np.stack([rot(k[t], t, base) for t in range(T)])
        att = np.zeros((T, hp.n_head, hp.head_v))
        for t in range(T):
            for hh in range(hp.n_head):
                kv = hh // (hp.n_head // hp.n_head_kv)
                lo = max(0, t - hp.n_swa + 1) if swa and hp.n_swa else 0
                s = k[lo:t + 1, kv] @ q[t, hh] * hp.kq_scale * hp.q_scale
                e = np.exp(s - s.max())
                att[t, hh] = (e / e.sum()) @ v[lo:t + 1, kv]
        o = att.reshape(T, -1) @ w[p + "attn_output.weight"].T
        if hp.arch == "gemma3":
            sa = rms(o, w[p + "post_attention_norm.weight"]) + x
            h = rms(sa, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            g = g.astype(np.float16).astype(np.float64)  # GGML_GELU_FP16: a table indexed by fp16
            g = (0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))).astype(np.float16)
            f = (g * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
            x = rms(f, w[p + "post_ffw_norm.weight"]) + sa
            continue
        x = x + o
        h = rms(x, w[p + "ffn_norm.weight"])
        if p + "ffn_gate_inp.weight" in w:
            lg = h @ w[p + "ffn_gate_inp.weight"].T
            pr = np.exp(lg - lg.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            f = np.zeros_like(x)
            for t in range(T):
                sel = np.argsort(-pr[t])[: hp.n_expert_used]
                ws = pr[t, sel] / pr[t, sel].sum()
                for e, we in zip(sel, ws, strict=False):
                    g = h[t] @ w[p + "ffn_gate_exps.weight"][e].T
                    u = h[t] @ w[p + "ffn_up_exps.weight"][e].T
                    f[t] += we * ((g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down_exps.weight"][e].T)
        else:
            g = h @ w[p + "ffn_gate.weight"].T
            f = (g / (1 + np.exp(-g)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + f
    return rms(x, w["output_norm.weight"])


@pytest.mark.parametrize("name", ["llama", "moe", "gemma3", "qwen2"])
def test_forward_matches_naive_reference(models: dict[str, Path], name: str) -> None:
    m = GGUFModel(models[name])
    rng = np.random.default_rng(3)
    n_ctx = 24 if name != "gemma3" else 20  # gemma3: longer than its sliding window (8)
    toks = rng.integers(0, HParams.from_model(m).n_vocab, size=(2, n_ctx))
    fwd = Forward(m, exact=False)
    h = fwd.hidden(toks)
    for s in range(2):
        np.testing.assert_allclose(h[s], naive_forward(models[name], toks[s]), rtol=2e-4, atol=2e-4)
    # exact mode rounds activations: close, not equal
    he = Forward(m, exact=True).hidden(toks)
    assert not np.array_equal(he, h)
    assert float(np.abs(he - h).mean()) < 1e-2


def test_causal_and_trimmed_last_layer(models: dict[str, Path]) -> None:
    m = GGUFModel(models["llama"])
    rng = np.random.default_rng(5)
    toks = rng.integers(0, 200, size=(1, 32))
    fwd = Forward(m)
    full = fwd.hidden(toks)
    prefix = fwd.hidden(toks[:, :20])
    np.testing.assert_allclose(full[:, :20], prefix, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fwd.hidden(toks, first=16), full[:, 16:], rtol=1e-5, atol=1e-5)


def test_weight_cache_is_bounded(models: dict[str, Path]) -> None:
    m = GGUFModel(models["llama"])
    fwd = Forward(m, cache_bytes=40_000)
    toks = np.arange(32).reshape(1, 32)
    h1 = fwd.hidden(toks)
    assert fwd.w.held_bytes <= 40_000
    np.testing.assert_array_equal(h1, Forward(m).hidden(toks))
