"""Perplexity as llama-perplexity computes it (tools/perplexity/perplexity.cpp `perplexity`).

The tokens are cut into chunks of n_ctx; each chunk is one causal sequence whose first token is
replaced by BOS when the vocabulary adds one; the second half of each chunk is scored: the
negative log-likelihood of token j+1 from the logits at j, for j in [n_ctx/2, n_ctx-2]. Chunks
run n_batch/n_ctx at a time (llama.cpp's n_seq). PPL = exp(mean nll), with llama.cpp's ± estimate
sqrt(var(nll)/(count-1)) * PPL.

Also here: llama-perplexity's `--kl-divergence-base` file ("_logits_", n_ctx, n_vocab, n_chunk,
the tokens, then per scored token the log-probabilities packed as uint16 with a float scale and
minimum), written by `LogitsWriter` and read by `read_logits_header` / `LogitsReader`.

With a forward pass on a device (`Forward(device="cuda")`) the logits, their log-sum-exp and the
packed log-probabilities are computed there (the same code on CuPy arrays); only per-token
figures (float64[n]) and packed rows come back.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from ..errors import QtoolError
from .model import Forward
from .numerics import array_module, to_device, to_host

F32 = np.float32
LOGITS_MAGIC = b"_logits_"
SLICE_ROWS = 64
LOGIT_BLOCK = 2048  # vocabulary entries per block of logits when only the nll is needed
DEVICE_LOGIT_BLOCK = 16384  # the same on a GPU: fewer, larger matmuls (rows x block floats of memory)


class EvalError(QtoolError):
    """Bad evaluation input: too little text, a bad logits file, mismatched models."""


def n_seq_for(n_ctx: int, n_batch: int) -> int:
    """Sequences per batch (llama.cpp: max(1, n_batch / n_ctx), n_batch a multiple of n_ctx or smaller)."""
    if n_batch >= n_ctx and n_batch % n_ctx:
        raise EvalError(f"the batch size {n_batch} must be smaller than or a multiple of the context {n_ctx}",
                        option="--batch-size")
    return max(1, n_batch // n_ctx)


def chunk_count(n_tokens: int, n_ctx: int, n_chunks: int | None, what: str = "evaluate perplexity") -> int:
    """llama.cpp's chunk count: tokens // n_ctx, capped by --chunks; at least 2*n_ctx tokens needed."""
    if n_ctx < 4:
        raise EvalError(f"context size {n_ctx} is too small", option="-c")
    if n_tokens < 2 * n_ctx:
        raise EvalError(f"you need at least {2 * n_ctx} tokens to {what} with a context of {n_ctx}; "
                        f"the text tokenizes to only {n_tokens}", option="-f")
    n_max = n_tokens // n_ctx
    return n_max if n_chunks is None or n_chunks < 0 else min(n_chunks, n_max)


def chunk_batches(tokens: np.ndarray, n_ctx: int, n_chunk: int, n_seq: int,
                  bos: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(first chunk index, tokens int32[n_seq_batch, n_ctx]) with BOS in front of every chunk."""
    for i in range(0, n_chunk, n_seq):
        k = min(n_seq, n_chunk - i)
        b = tokens[i * n_ctx:(i + k) * n_ctx].reshape(k, n_ctx).astype(np.int32)
        if bos is not None:
            b[:, 0] = bos
        yield i, b


@dataclass
class TokenScores:
    """Per scored token: nll (float64), logit and probability of the target, and the arg max."""

    nll: np.ndarray
    logit: np.ndarray
    prob: np.ndarray
    top: np.ndarray


def log_softmax_rows(logits: Any, targets: Any, inplace: bool = False) -> tuple[Any, Any]:
    """(nll float64[n], logsumexp float64[n]) as perplexity.cpp log_softmax: max, then
    sum of expf(l - max) in double. inplace: logits is overwritten (no temporary of its size).
    On the logits' device (targets are moved there)."""
    xp = array_module(logits)
    targets = to_device(xp, targets)
    mx = logits.max(axis=1)
    tl = logits[xp.arange(logits.shape[0]), targets].astype(np.float64)
    e = logits if inplace else xp.empty_like(logits)
    xp.subtract(logits, mx[:, None], out=e)
    xp.exp(e, out=e)
    s = e.sum(axis=1, dtype=np.float64)
    lse = mx.astype(np.float64) + xp.log(s)
    return lse - tl, lse


def pack_log_probs(logits: Any, nv: int) -> Any:
    """perplexity.cpp log_softmax(..., uint16_t * log_prob, ...): rows of nv uint16, the first four
    holding float scale and min_log_prob, then nearest_int((l - min_logit)/scale) per token.
    On the logits' device."""
    xp = array_module(logits)
    n, n_vocab = logits.shape
    mx = logits.max(axis=1)
    mn = xp.maximum(logits.min(axis=1), (mx - F32(16)).astype(F32))
    s = xp.exp(logits - mx[:, None]).sum(axis=1, dtype=np.float64)
    lse = xp.log(s).astype(F32)
    min_log_prob = ((mn - mx).astype(F32) - lse).astype(F32)
    scale = ((mx - mn).astype(F32) / F32(65535)).astype(F32)
    out = xp.zeros((n, nv), np.uint16)
    hdr = xp.stack([scale, min_log_prob], axis=1).astype(F32)
    out[:, :4] = hdr.view(np.uint16)
    with np.errstate(divide="ignore"):
        inv = xp.where(scale != 0, F32(1) / scale, F32(0)).astype(F32)
    q = xp.rint((inv[:, None] * (logits - mn[:, None])).astype(F32))
    q = xp.where(logits > mn[:, None], q, F32(0))
    out[:, 4:4 + n_vocab] = xp.where(scale[:, None] != 0, q, F32(0)).astype(np.uint16)
    return out


def n_packed(n_vocab: int) -> int:
    return 2 * ((n_vocab + 1) // 2) + 4


class LogitsWriter:
    """Writes llama-perplexity's --kl-divergence-base file as chunks are scored."""

    def __init__(self, f: BinaryIO, n_ctx: int, n_vocab: int, n_chunk: int, tokens: np.ndarray) -> None:
        self.f = f
        self.nv = n_packed(n_vocab)
        f.write(LOGITS_MAGIC)
        f.write(struct.pack("<iii", n_ctx, n_vocab, n_chunk))
        f.write(np.ascontiguousarray(tokens[:n_chunk * n_ctx], dtype="<i4").tobytes())

    def add(self, logits: Any) -> None:
        self.f.write(to_host(pack_log_probs(logits, self.nv)).tobytes())


@dataclass
class LogitsHeader:
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray
    data_offset: int


def read_logits_header(f: BinaryIO, path: str) -> LogitsHeader:
    magic = f.read(8)
    if magic != LOGITS_MAGIC:
        raise EvalError(f"{path} does not look like a file containing log-probabilities", path=path)
    hdr = f.read(12)
    if len(hdr) != 12:
        raise EvalError(f"{path}: truncated header", path=path)
    n_ctx, n_vocab, n_chunk = struct.unpack("<iii", hdr)
    if n_ctx < 4 or n_vocab < 1 or n_chunk < 1:
        raise EvalError(f"{path}: bad header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk})", path=path)
    raw = f.read(4 * n_ctx * n_chunk)
    if len(raw) != 4 * n_ctx * n_chunk:
        raise EvalError(f"{path}: failed reading evaluation tokens", path=path)
    toks = np.frombuffer(raw, dtype="<i4").astype(np.int32)
    return LogitsHeader(n_ctx, n_vocab, n_chunk, toks, 20 + len(raw))


@dataclass
class PerplexityResult:
    ppl: float
    ppl_error: float
    tokens: int
    chunks: int
    n_ctx: int
    running: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"ppl": self.ppl, "ppl_error": self.ppl_error, "tokens": self.tokens, "chunks": self.chunks,
                "n_ctx": self.n_ctx, "running": self.running}


class NllAccumulator:
    """nll / nll2 / count and the final estimate, as perplexity.cpp sums them."""

    def __init__(self) -> None:
        self.nll = 0.0
        self.nll2 = 0.0
        self.count = 0

    def add(self, v: np.ndarray) -> None:
        self.nll += float(v.sum())
        self.nll2 += float((v * v).sum())
        self.count += int(v.size)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count) if self.count else float("nan")

    def estimate(self) -> tuple[float, float]:
        nll = self.nll / self.count
        nll2 = self.nll2 / self.count - nll * nll
        ppl = math.exp(nll)
        err = math.sqrt(nll2 / (self.count - 1)) * ppl if nll2 > 0 and self.count > 1 else float("nan")
        return ppl, err


def score_rows(fwd: Forward, h: Any, targets: np.ndarray, block: int | None = None) -> np.ndarray:
    """nll float64[n] of targets[n] from hidden rows h[n, n_embd] (the rows of any number of
    sequences at once): the logits are computed `block` vocabulary entries at a time for all rows
    (one large matmul per block instead of a pass over the whole output matrix per few rows) and
    the log-sum-exp is combined across blocks online, in double: per block its max m_b and
    s_b = sum of expf(l - m_b) in double, then lse = M + log(sum_b s_b * exp(m_b - M)). This
    equals log_softmax_rows' max-then-sum up to float32 rounding of the shifted exponents.
    Memory: n x block floats whatever the vocabulary size (block: LOGIT_BLOCK on the host,
    DEVICE_LOGIT_BLOCK on a GPU, unless given). On h's device; the result is fetched."""
    n = len(targets)
    if n == 0:
        return np.empty(n, np.float64)
    xp = array_module(h)
    if block is None:
        block = LOGIT_BLOCK if xp is np else DEVICE_LOGIT_BLOCK
    t = to_device(xp, targets)
    mx = xp.full(n, -np.inf, dtype=np.float64)
    s = xp.zeros(n, dtype=np.float64)
    tl = xp.zeros(n, dtype=np.float64)
    rows = xp.arange(n)
    for v0, lg in fwd.logit_blocks(h, block):
        k = lg.shape[1]
        # the target's logit where it falls in this block (a gather of fixed size: no sync)
        tl = xp.where((t >= v0) & (t < v0 + k), lg[rows, xp.clip(t - v0, 0, k - 1)], tl)
        m = lg.max(axis=1)
        xp.subtract(lg, m[:, None], out=lg)
        xp.exp(lg, out=lg)
        sb = lg.sum(axis=1, dtype=np.float64)
        m64 = m.astype(np.float64)
        new = xp.maximum(mx, m64)
        with np.errstate(invalid="ignore"):  # -inf - -inf before the first block
            s = xp.where(xp.isfinite(mx), s * xp.exp(mx - new), 0.0) + sb * xp.exp(m64 - new)
        mx = new
    return to_host(mx + xp.log(s) - tl)


def batch_targets(tokens: np.ndarray, i: int, k: int, n_ctx: int, first: int) -> np.ndarray:
    """int64[k, n_ctx - 1 - first]: the tokens each scored row of chunks i..i+k-1 predicts."""
    return np.stack([tokens[(i + s) * n_ctx + first + 1:(i + s + 1) * n_ctx] for s in range(k)]).astype(np.int64)


def score_batch(fwd: Forward, h: Any, targets: np.ndarray) -> np.ndarray:
    """nll float64[k, n] of targets[k, n] from the scored hidden rows h[k, n, n_embd] of a batch of
    k sequences, all rows at once (score_rows)."""
    k, n = targets.shape
    return score_rows(fwd, h.reshape(k * n, -1), targets.reshape(-1)).reshape(k, n)


def score_sequence(fwd: Forward, h: Any, targets: np.ndarray,
                   each: Callable[[Any, np.ndarray], None] | None = None) -> np.ndarray:
    """nll float64[n] of targets[n] from hidden rows h[n, n_embd]. With `each(logits, rows)`, which
    needs whole rows of logits, they are computed SLICE_ROWS rows at a time (bounded memory for
    large vocabularies); without, by score_rows."""
    if each is None:
        return score_rows(fwd, h, targets)
    out = np.empty(len(targets), np.float64)
    for a in range(0, len(targets), SLICE_ROWS):
        b = min(a + SLICE_ROWS, len(targets))
        lg = fwd.logits(h[a:b], observe=False)
        each(lg, np.arange(a, b))
        out[a:b] = to_host(log_softmax_rows(lg, targets[a:b], inplace=True)[0])
    return out


def perplexity(fwd: Forward, tokens: np.ndarray, n_ctx: int, n_chunks: int | None = None, n_batch: int = 2048,
               bos: int | None = None, on_chunk: Callable[[int, int, float], None] | None = None,
               on_layer: Callable[[], None] | None = None, writer: LogitsWriter | None = None) -> PerplexityResult:
    """llama-perplexity's perplexity() over `tokens` (bos: the id put first in every chunk, None
    when the vocabulary adds none). on_chunk(chunk_index, n_chunk, running_ppl) after each chunk."""
    n_chunk = chunk_count(len(tokens), n_ctx, n_chunks)
    n_seq = n_seq_for(n_ctx, n_batch)
    first = n_ctx // 2
    acc = NllAccumulator()
    running: list[float] = []
    n_score = n_ctx - 1 - first
    for i, batch in chunk_batches(tokens, n_ctx, n_chunk, n_seq, bos):
        h = fwd.hidden(batch, first, progress=on_layer)
        k = batch.shape[0]
        targets = batch_targets(tokens, i, k, n_ctx, first)
        if writer is None:  # all the batch's rows at once
            nll = score_batch(fwd, h[:, :n_score], targets)
        else:
            def each(lg: Any, rows: np.ndarray, w: LogitsWriter = writer) -> None:
                w.add(lg)
            nll = np.stack([score_sequence(fwd, h[s, :n_score], targets[s], each) for s in range(k)])
        for s in range(k):
            acc.add(nll[s])
            running.append(acc.ppl)
            if on_chunk is not None:
                on_chunk(i + s, n_chunk, acc.ppl)
    ppl, err = acc.estimate()
    return PerplexityResult(ppl, err, acc.count, n_chunk, n_ctx, running)
