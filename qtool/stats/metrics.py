"""Quantization error statistics, computed the way ik_llama.cpp's quantize-stats computes them.

quantize-stats (examples/quantize-stats/quantize-stats.cpp, `update_error_stats`) accumulates,
for every weight x and its round-tripped value q (both float32):

    diff = x - q                      (a float32 subtraction, widened to double)
    total_error += diff * diff        (double)
    max_error = max(max_error, |diff|)
    sum_x2 += x * x                   (a float32 product, added to a double)
    histogram[min(floor(|diff| / 0.03 * 150), 149)] += 1

and reports rmse = sqrt(total_error / n), rmse / sqrt(sum_x2 / n), the max error, and the 95th
percentile and median of |diff| read off the histogram: the upper edge of the first bucket where
the running count reaches the quantile (`find_quantile`), so they are multiples of 0.0002 and
saturate at 0.03. `ErrorStats` reproduces each of these figures and adds the cosine similarity
and an importance-weighted RMSE. Sums are float64 (numpy's pairwise sums instead of C's
sequential ones: the figures agree to far more digits than quantize-stats prints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

HISTOGRAM_BUCKETS = 150
HISTOGRAM_RANGE = 0.03


def _zeros_hist() -> np.ndarray:
    return np.zeros(HISTOGRAM_BUCKETS, dtype=np.int64)


@dataclass
class ErrorStats:
    """Running error statistics of a round trip x -> quantize -> dequantize -> q.

    `w_err2` / `w_sum` accumulate sum_ij w_j (x_ij - q_ij)^2 and sum_ij w_j over the elements that
    had column weights (an importance matrix); weighted_rmse is None when none had.
    """

    n: int = 0
    sum_err2: float = 0.0
    sum_x2: float = 0.0
    sum_q2: float = 0.0
    sum_xq: float = 0.0
    max_error: float = 0.0
    hist: np.ndarray = field(default_factory=_zeros_hist)
    w_err2: float = 0.0
    w_sum: float = 0.0
    n_weighted: int = 0

    def update(self, x: np.ndarray, q: np.ndarray, w: np.ndarray | None = None) -> None:
        """Add a block of weights. x, q: float32[rows, n] (or any equal shapes);
        w: float32[n] column weights broadcast over rows, or float32[rows, n], or None."""
        x = np.asarray(x, dtype=np.float32)
        q = np.asarray(q, dtype=np.float32)
        if x.shape != q.shape:
            raise ValueError(f"shapes differ: {x.shape} vs {q.shape}")
        if x.size == 0:
            return
        diff = (x - q).astype(np.float64)  # float32 subtraction, then widened (as C does)
        err2 = diff * diff
        self.sum_err2 += float(err2.sum())
        adiff = np.abs(diff)
        self.max_error = max(self.max_error, float(adiff.max()))
        self.sum_x2 += float((x * x).astype(np.float64).sum())  # float32 product, double sum
        xd = x.astype(np.float64)
        qd = q.astype(np.float64)
        self.sum_q2 += float((qd * qd).sum())
        self.sum_xq += float((xd * qd).sum())
        idx = np.floor(adiff / HISTOGRAM_RANGE * HISTOGRAM_BUCKETS)
        idx = np.fmin(idx, HISTOGRAM_BUCKETS - 1)  # inf goes to the last bucket
        idx[np.isnan(idx)] = HISTOGRAM_BUCKETS - 1  # so does NaN (non-finite weights in the model)
        idx = idx.astype(np.int64)
        self.hist += np.bincount(idx.reshape(-1), minlength=HISTOGRAM_BUCKETS)
        self.n += x.size
        if w is not None:
            wb = np.broadcast_to(np.asarray(w, dtype=np.float64), x.shape)
            self.w_err2 += float((wb * err2).sum())
            self.w_sum += float(wb.sum())
            self.n_weighted += x.size

    def merge(self, other: ErrorStats) -> None:
        """Add another accumulator's counts (ik's combine_error_stats, plus our extra sums)."""
        self.n += other.n
        self.sum_err2 += other.sum_err2
        self.sum_x2 += other.sum_x2
        self.sum_q2 += other.sum_q2
        self.sum_xq += other.sum_xq
        self.max_error = max(self.max_error, other.max_error)
        self.hist += other.hist
        self.w_err2 += other.w_err2
        self.w_sum += other.w_sum
        self.n_weighted += other.n_weighted

    # ---- figures -------------------------------------------------------------------------

    @property
    def rmse(self) -> float:
        return math.sqrt(self.sum_err2 / self.n) if self.n else 0.0

    @property
    def rms_x(self) -> float:
        """Root mean square of the reference weights (quantize-stats' av_x)."""
        return math.sqrt(self.sum_x2 / self.n) if self.n else 0.0

    @property
    def rel_rmse(self) -> float:
        return _ratio(self.rmse, self.rms_x)

    @property
    def rel_max_error(self) -> float:
        return _ratio(self.max_error, self.rms_x)

    def quantile(self, quantile: float) -> float:
        """ik's find_quantile: upper edge of the first histogram bucket reaching the quantile."""
        total = float(self.hist.sum())
        accum = np.cumsum(self.hist).astype(np.float64)
        hit = np.nonzero(accum >= total * quantile)[0]
        if hit.size == 0:
            return math.inf
        return (int(hit[0]) + 1) * HISTOGRAM_RANGE / HISTOGRAM_BUCKETS

    @property
    def p95(self) -> float:
        return self.quantile(0.95)

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def cosine(self) -> float:
        """Cosine similarity of the flattened reference and round-tripped weights."""
        den = math.sqrt(self.sum_x2) * math.sqrt(self.sum_q2)
        if den == 0.0:
            return 1.0 if self.sum_x2 == 0.0 and self.sum_q2 == 0.0 else 0.0
        return self.sum_xq / den

    @property
    def weighted_rmse(self) -> float | None:
        if not self.n_weighted or self.w_sum <= 0.0:
            return None
        return math.sqrt(self.w_err2 / self.w_sum)

    def figures(self) -> dict[str, float | int | None]:
        """The reported numbers, keyed as in the JSON report."""
        return {
            "n": self.n, "rmse": self.rmse, "rel_rmse": self.rel_rmse, "max_error": self.max_error,
            "rel_max_error": self.rel_max_error, "p95": self.p95, "median": self.median,
            "cosine": self.cosine, "weighted_rmse": self.weighted_rmse,
        }

    def ik_line(self, name: str) -> str:
        """One line exactly as quantize-stats' print_error_stats formats it."""
        return (f"{name:<40}: rmse {self.rmse:.8f}, {self.rel_rmse:.6f}  maxerr {self.max_error:.8f}, "
                f"{self.rel_max_error:.6f}  95pct<{self.p95:.4f},  median<{self.median:.4f}")

    def histogram_rows(self) -> list[tuple[float, float, int]]:
        """(lower, upper, count) per bucket; the last bucket is open-ended (upper = inf)."""
        rows = []
        for i in range(HISTOGRAM_BUCKETS):
            lo = i * HISTOGRAM_RANGE / HISTOGRAM_BUCKETS
            hi = (i + 1) * HISTOGRAM_RANGE / HISTOGRAM_BUCKETS if i < HISTOGRAM_BUCKETS - 1 else math.inf
            rows.append((lo, hi, int(self.hist[i])))
        return rows


def _ratio(a: float, b: float) -> float:
    if b == 0.0:
        return 0.0 if a == 0.0 else math.inf
    return a / b


def normalized_weights(w: np.ndarray) -> np.ndarray:
    """Column weights scaled to mean 1 (float64), so weighted RMSEs of tensors whose activations
    differ in scale can be summed into one total; a tensor's own weighted RMSE is unchanged."""
    w = np.asarray(w, dtype=np.float64)
    m = w.mean(axis=-1, keepdims=True) if w.size else 1.0
    m = np.where(m > 0, m, 1.0)
    return w / m
