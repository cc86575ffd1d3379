"""The fast paths of the forward pass and of perplexity scoring (qtool.eval.numerics /
model / perplexity) against their plain definitions: round_f16 and gelu_f16 bit for bit against
numpy's float16 casts (whole binades and random bit patterns, inf / NaN / subnormals included),
the vocabulary-blocked logits and online log-sum-exp against the whole-row computation, and the
weight cache not holding float32 copies of F16 matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qtool.eval import model as model_mod
from qtool.eval.model import Forward
from qtool.eval.numerics import _gelu_f16_cast, _round_f16_bits, gelu_f16, keep_heap, round_f16
from qtool.eval.perplexity import log_softmax_rows, score_rows, score_sequence
from qtool.gguf_io import GGUFModel
from tests.eval_fixtures import make_model

U32 = np.uint32
F32 = np.float32


def _binades() -> list[np.ndarray]:
    """The float32 of a few binades (both signs): every one of [1, 2); every 5th of the float16
    subnormal edge 2^-14, float16 subnormals 2^-25 and below, 8 and the overflow edge 32768..65536
    (ties, at a multiple of 2^12, are 1 in 5 of those too)."""
    out = []
    for base in (0x3F800000, 0x38800000, 0x33000000, 0x30000000, 0x41000000, 0x47000000):
        u = np.arange(base, base + 0x800000, 1 if base == 0x3F800000 else 5, dtype=U32)
        out += [u.view(F32), (u | U32(0x80000000)).view(F32)]
    return out


def _random_bits(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(U32).view(F32)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(np.isnan(a), np.isnan(b))
                and np.array_equal(a.view(U32)[~np.isnan(a)], b.view(U32)[~np.isnan(b)]))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_round_f16_is_the_float16_cast() -> None:
    for v in _binades():
        assert _same(round_f16(v), v.astype(np.float16).astype(F32))
    v = _random_bits(1_000_003, 1)
    assert _same(round_f16(v), _round_f16_bits(v))
    assert _same(round_f16(v), v.astype(np.float16).astype(F32))
    z = np.array([0, -0.0, 65504, 65519.99, 65520, -1e6, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 2.0**-25], dtype=F32)
    assert _same(round_f16(z), z.astype(np.float16).astype(F32))
    assert round_f16(z[None, :]).shape == (1, z.size)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_gelu_f16_equals_table_through_the_cast() -> None:
    for v in _binades():
        assert _same(gelu_f16(v), _gelu_f16_cast(v))
    v = _random_bits(1_000_003, 2)
    assert _same(gelu_f16(v), _gelu_f16_cast(v))
    z = np.array([-10, 10, -9.999, 9.999, -11, 11, np.nan, np.inf, -np.inf, 0, -0.0, 3e-7, -3e-7], dtype=F32)
    assert _same(gelu_f16(z.reshape(1, -1)).reshape(-1), _gelu_f16_cast(z))


@pytest.fixture(scope="module")
def fwd(tmp_path_factory: pytest.TempPathFactory) -> Forward:
    return Forward(GGUFModel(make_model(tmp_path_factory.mktemp("fast") / "llama.gguf")))


def test_blocked_logits_and_online_lse(fwd: Forward) -> None:
    rng = np.random.default_rng(3)
    h = fwd.hidden(rng.integers(0, fwd.hp.n_vocab, (2, 24)), first=12).reshape(-1, fwd.hp.n_embd)
    full = fwd.logits(h, observe=False)
    n_vocab = full.shape[1]
    block = max(8, n_vocab // 5 + 3)  # several blocks, the last one partial
    parts = [lg.copy() for _, lg in fwd.logit_blocks(h, block)]
    assert len(parts) > 2 and parts[-1].shape[1] < block
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-6, atol=1e-6)
    targets = rng.integers(0, n_vocab, len(h))
    targets[:3] = [0, n_vocab - 1, block]  # first, last, a block boundary
    ref = log_softmax_rows(full.copy(), targets)[0]
    got = score_rows(fwd, h, targets, block=block)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(score_rows(fwd, h, targets, block=n_vocab + 7), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(score_sequence(fwd, h, targets), ref, rtol=0, atol=1e-5)
    seen: list[int] = []
    np.testing.assert_allclose(score_sequence(fwd, h, targets, lambda lg, rows: seen.extend(rows)), ref,
                               rtol=0, atol=1e-5)
    assert seen == list(range(len(h)))


def test_f16_matrices_are_not_cached(fwd: Forward) -> None:
    fwd.hidden(np.arange(16).reshape(1, 16))
    cached = [n for n in fwd.w._cache if fwd.w.qtype(n).name == "F16" and fwd.w._cache[n].ndim == 2]
    assert cached == []
    name = "blk.0.ffn_up.weight"
    np.testing.assert_array_equal(fwd.w.matrix(name), fwd.w.get(name))
    assert fwd.w.raw_f16(name) is None  # now cached: the cached copy is used
    assert keep_heap() or not Path("/lib/x86_64-linux-gnu/libc.so.6").exists()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_causal_tiles_equal_whole_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    """Attention in two causal tiles (n_ctx a multiple of 256) gives the whole-row result bit for
    bit (gemma3: sliding-window layers of 8 too)."""
    m = GGUFModel(make_model(tmp_path / f"{arch}.gguf", arch=arch))
    toks = np.random.default_rng(4).integers(0, 200, size=(2, 256))
    tiled = Forward(m).hidden(toks)
    monkeypatch.setattr(model_mod, "CAUSAL_TILE_MULTIPLE", 1 << 30)
    whole = Forward(m).hidden(toks)
    np.testing.assert_array_equal(tiled, whole)
