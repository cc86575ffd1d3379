"""KL divergence of a model against a base model, as llama-perplexity --kl-divergence computes it
(tools/perplexity/perplexity.cpp kl_divergence and its log_softmax / process_logits).

The base's log-probabilities are the packed uint16 rows of the --kl-divergence-base file (read
from one, or computed from the base model on the fly and optionally saved); per scored token:
KLD = sum over tokens with base log-prob > -16 of p_base * (log p_base - log p), the NLL of both,
whether their top tokens agree, and Δp = p(target) - p_base(target). The summary has llama.cpp's
mean ± uncertainty, percentiles (its interpolation), median, and the PPL figures.

With forward passes on a device the per-token figures (`kld_figures`) are computed there and
fetched as small arrays; the sums and the summary are made on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from .model import Forward
from .numerics import array_module, to_device, to_host
from .perplexity import (
    SLICE_ROWS,
    EvalError,
    LogitsHeader,
    LogitsWriter,
    chunk_batches,
    n_packed,
    n_seq_for,
    pack_log_probs,
)

F32 = np.float32


@dataclass
class KldSums:
    """kl_divergence_result."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)


def kld_figures(logits: Any, base: Any, targets: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """perplexity.cpp log_softmax(n_vocab, logits, base_log_prob, tok, kld)'s per-row figures,
    computed on the logits' device (base rows and targets are moved there), fetched to the host:
    (nll float32[n], nll_base float32[n], kld float64[n], whether the top tokens agree bool[n])."""
    xp = array_module(logits)
    base, targets = to_device(xp, base), to_device(xp, targets)
    n, n_vocab = logits.shape
    rows = xp.arange(n)
    imax = xp.argmax(logits, axis=1)
    mx = logits[rows, imax]
    s = xp.exp(logits - mx[:, None]).sum(axis=1, dtype=np.float64)
    lse = xp.log(s).astype(F32)
    hdr = xp.ascontiguousarray(base[:, :4]).view(F32)
    scale, min_lp = hdr[:, 0], hdr[:, 1]
    q = base[:, 4:4 + n_vocab].astype(F32)
    nll = ((mx + lse) - logits[rows, targets]).astype(F32)
    nll_base = (-(scale * q[rows, targets] + min_lp)).astype(F32)
    mxl = (mx + lse).astype(F32)
    p_log_base = (scale[:, None] * q + min_lp[:, None]).astype(F32)
    imax_base = xp.argmax(p_log_base, axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        term = xp.exp(p_log_base) * (p_log_base - logits + mxl[:, None])
    kld = xp.where(p_log_base > F32(-16), term, F32(0)).sum(axis=1, dtype=np.float64)
    return to_host(nll), to_host(nll_base), to_host(kld), to_host(imax == imax_base)


def kld_rows(logits: Any, base: Any, targets: Any, acc: KldSums) -> None:
    """perplexity.cpp log_softmax(n_vocab, logits, base_log_prob, tok, kld) for each row, added
    to acc."""
    nll, nll_base, kld, same = kld_figures(logits, base, targets)
    n = len(nll)
    acc.sum_nll += float(nll.astype(np.float64).sum())
    acc.sum_nll2 += float((nll * nll).astype(np.float64).sum())
    acc.sum_nll_base += float(nll_base.astype(np.float64).sum())
    acc.sum_nll_base2 += float((nll_base * nll_base).astype(np.float64).sum())
    acc.sum_nll_nll_base += float((nll * nll_base).astype(np.float64).sum())
    acc.sum_kld += float(kld.sum())
    acc.sum_kld2 += float((kld * kld).sum())
    acc.count += n
    acc.n_same_top += int(same.sum())
    p_diff = (np.exp(-nll) - np.exp(-nll_base)).astype(F32)
    pd2 = p_diff.astype(np.float64) ** 2
    acc.sum_p_diff += float(p_diff.astype(np.float64).sum())
    acc.sum_p_diff2 += float(pd2.sum())
    acc.sum_p_diff4 += float((pd2 * pd2).sum())
    acc.max_p_diff = max(acc.max_p_diff, float(np.abs(p_diff).max()) if n else 0.0)
    acc.kld_values.append(kld.astype(F32))
    acc.p_diff_values.append(p_diff)


def mean_and_uncertainty(s: float, s2: float, count: int) -> tuple[float, float]:
    if count < 1:
        return 0.0, 0.0
    f = s / count
    df = s2 / count - f * f
    return f, (math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0)


def covariance(a: float, b: float, ab: float, count: int) -> float:
    if count < 10:
        return 0.0
    return (ab / count - (a / count) * (b / count)) / (count - 1)


def percentile(v: np.ndarray, fraction: float) -> float:
    """perplexity.cpp's percentile lambda on sorted float values."""
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    p = F32(fraction) * F32(len(v) - 1)
    ip = int(p)
    p = F32(p - ip)
    return float((F32(1) - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)])


def median(v: np.ndarray) -> float:
    n = len(v)
    return float(F32(0.5) * (v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])


def summary(acc: KldSums, chunks: int, n_ctx: int) -> dict[str, object]:
    """The figures llama-perplexity prints after a KL-divergence run, as one JSON-able dict."""
    kv = np.sort(np.concatenate(acc.kld_values)) if acc.kld_values else np.zeros(1, F32)
    pv = np.sort(np.concatenate(acc.p_diff_values)) if acc.p_diff_values else np.zeros(1, F32)
    lp, lp_unc = mean_and_uncertainty(acc.sum_nll, acc.sum_nll2, acc.count)
    lb, lb_unc = mean_and_uncertainty(acc.sum_nll_base, acc.sum_nll_base2, acc.count)
    cov = covariance(acc.sum_nll, acc.sum_nll_base, acc.sum_nll_nll_base, acc.count)
    ppl, ppl_base = math.exp(lp), math.exp(lb)
    ratio_unc = math.sqrt(max(lp_unc ** 2 + lb_unc ** 2 - 2 * cov, 0.0))
    kl, kl_unc = mean_and_uncertainty(acc.sum_kld, acc.sum_kld2, acc.count)
    pd, pd_unc = mean_and_uncertainty(acc.sum_p_diff, acc.sum_p_diff2, acc.count)
    mse, mse_unc = mean_and_uncertainty(acc.sum_p_diff2, acc.sum_p_diff4, acc.count)
    rms = math.sqrt(mse)
    same = acc.n_same_top / acc.count if acc.count else 0.0
    return {
        "ppl": ppl, "ppl_error": ppl * lp_unc, "ppl_base": ppl_base, "ppl_base_error": ppl_base * lb_unc,
        "ln_ppl_ratio": lp - lb, "ln_ppl_ratio_error": ratio_unc,
        "cor_ln_ppl": cov / (lp_unc * lb_unc) if lp_unc and lb_unc else 0.0,
        "tokens": acc.count, "chunks": chunks, "n_ctx": n_ctx,
        "kld_mean": kl, "kld_error": kl_unc, "kld_max": float(kv[-1]), "kld_p99_9": percentile(kv, 0.999),
        "kld_p99": percentile(kv, 0.99), "kld_p95": percentile(kv, 0.95), "kld_p90": percentile(kv, 0.90),
        "kld_median": median(kv), "kld_p10": percentile(kv, 0.10), "kld_p5": percentile(kv, 0.05),
        "kld_p1": percentile(kv, 0.01), "kld_p0_1": percentile(kv, 0.001), "kld_min": float(kv[0]),
        "dp_mean": pd, "dp_error": pd_unc, "dp_max": float(pv[-1]), "dp_p99_9": percentile(pv, 0.999),
        "dp_p99": percentile(pv, 0.99), "dp_p95": percentile(pv, 0.95), "dp_p90": percentile(pv, 0.90),
        "dp_p75": percentile(pv, 0.75), "dp_median": median(pv), "dp_p25": percentile(pv, 0.25),
        "dp_p10": percentile(pv, 0.10), "dp_p5": percentile(pv, 0.05), "dp_p1": percentile(pv, 0.01),
        "dp_p0_1": percentile(pv, 0.001), "dp_min": float(pv[0]),
        "dp_rms": rms, "dp_rms_error": 0.5 / rms * mse_unc if rms else 0.0,
        "same_top_p": same,
        "same_top_p_error": math.sqrt(same * (1 - same) / (acc.count - 1)) if acc.count > 1 else 0.0,
    }


def base_from_file(f: BinaryIO, hdr: LogitsHeader, path: str) -> Iterator[np.ndarray]:
    """The packed base rows of each chunk, in order, from a --kl-divergence-base file."""
    first = hdr.n_ctx // 2
    nv = n_packed(hdr.n_vocab)
    n = (hdr.n_ctx - 1 - first) * nv
    for i in range(hdr.n_chunk):
        raw = f.read(2 * n)
        if len(raw) != 2 * n:
            raise EvalError(f"{path}: failed reading log-probs for chunk {i}", path=path)
        yield np.frombuffer(raw, dtype="<u2").reshape(-1, nv)


def kl_divergence(fwd: Forward, tokens: np.ndarray, n_ctx: int, n_chunk: int,
                  base: Forward | Iterator[np.ndarray], n_batch: int = 2048, bos: int | None = None,
                  writer: LogitsWriter | None = None,
                  on_chunk: Callable[[int, int, KldSums], None] | None = None,
                  on_layer: Callable[[], None] | None = None) -> KldSums:
    """Compare fwd's predictions with the base (a model run on the same chunks, or the packed rows of
    a base file) over n_chunk chunks of `tokens`. A base model's packed rows stay on its device
    (fetched only for the writer)."""
    n_vocab = fwd.hp.n_vocab
    first = n_ctx // 2
    nv = n_packed(n_vocab)
    n_seq = n_seq_for(n_ctx, n_batch)
    acc = KldSums()
    for i, batch in chunk_batches(tokens, n_ctx, n_chunk, n_seq, bos):
        hb = base.hidden(batch, first, progress=on_layer) if isinstance(base, Forward) else None
        h = fwd.hidden(batch, first, progress=on_layer)
        for s in range(batch.shape[0]):
            start = (i + s) * n_ctx
            targets = tokens[start + first + 1:start + n_ctx].astype(np.int64)
            if hb is None:
                assert not isinstance(base, Forward)
                rows = next(base)
            else:
                rows = base.xp.empty((len(targets), nv), np.uint16)  # type: ignore[union-attr]
                for a in range(0, len(targets), SLICE_ROWS):
                    b = min(a + SLICE_ROWS, len(targets))
                    rows[a:b] = pack_log_probs(base.logits(hb[s, a:b], observe=False), nv)  # type: ignore[union-attr]
            if writer is not None:
                writer.f.write(to_host(rows).tobytes())
            for a in range(0, len(targets), SLICE_ROWS):
                b = min(a + SLICE_ROWS, len(targets))
                kld_rows(fwd.logits(h[s, a:b], observe=False), rows[a:b], targets[a:b], acc)
            if on_chunk is not None:
                on_chunk(i + s, n_chunk, acc)
    return acc
