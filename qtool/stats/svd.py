"""Low-rank correction study (the LQER / L²QER question, ik_llama.cpp discussion #15).

For a weight matrix W (m rows x n columns) and its round trip Q, the quantization error is
E = W - Q. LQER adds the best rank-R approximation of E (two fp16 factors, m x R and R x n)
back to Q; L²QER does the same for E scaled column-wise by s_j = sqrt(imatrix_j) (the
activation scale) and unscales the correction, so it minimises the activation-weighted error
instead of the plain one. The correction costs R (m + n) 16 bits, i.e. R (m + n) 16 / (m n)
extra bits per weight.

Nothing here needs E itself: everything follows from the column Gram matrix G = E^T E (n x n),
which is accumulated row chunk by row chunk, so the study streams like the rest of `stats`.
With G = V diag(l) V^T (eigenvalues l descending), the best rank-R approximation leaves the
residual energy sum_{k>R} l_k (Eckart-Young), spread over the columns as
diag(V_rest diag(l_rest) V_rest^T); the activation-scaled variant works on S G S
(S = diag(s)): with S G S = V diag(mu) V^T, the unscaled correction is the projection of E on
the top left singular vectors U_R of E S, whose energy per column follows from V_R^T S G
(no division by s_j, so columns the imatrix never saw, s_j = 0, are handled).
The factors are taken as exact: rounding them to fp16 adds about 2^-11 of the correction.
Memory is O(n^2) float64 per matrix and type being studied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def extra_bits(rank: int, m: int, n: int) -> int:
    """Bits of fp16 rank-`rank` factors for an m x n matrix."""
    return 16 * rank * (m + n)


@dataclass
class LowRankResidual:
    """Residual error energies after a rank-R correction, summed over matrices."""

    rank: int
    n: int = 0  # weights covered
    bits: int = 0  # extra bits of the factors
    energy: float = 0.0  # sum (E - C)^2 with C the plain (LQER) correction
    w_energy: float = 0.0  # sum w_j (E - C)^2 for the same correction
    l2_energy: float = 0.0  # sum (E - C')^2 with C' the activation-scaled (L²QER) correction
    l2_w_energy: float = 0.0  # sum w_j (E - C')^2
    w_sum: float = 0.0  # sum over weights of w_j (0 without an imatrix)

    def merge(self, o: LowRankResidual) -> None:
        self.n += o.n
        self.bits += o.bits
        self.energy += o.energy
        self.w_energy += o.w_energy
        self.l2_energy += o.l2_energy
        self.l2_w_energy += o.l2_w_energy
        self.w_sum += o.w_sum

    def figures(self) -> dict[str, float | int | None]:
        weighted = self.w_sum > 0
        return {
            "rank": self.rank,
            "extra_bpw": self.bits / self.n if self.n else 0.0,
            "rmse": math.sqrt(self.energy / self.n) if self.n else 0.0,
            "weighted_rmse": math.sqrt(self.w_energy / self.w_sum) if weighted else None,
            "l2qer_rmse": math.sqrt(self.l2_energy / self.n) if weighted and self.n else None,
            "l2qer_weighted_rmse": math.sqrt(self.l2_w_energy / self.w_sum) if weighted else None,
        }


def _residual_diag(vals: np.ndarray, vecs: np.ndarray, r: int) -> np.ndarray:
    """Per-column diagonal of the part of V diag(vals) V^T outside the top-r eigenpairs.
    vals ascending (numpy's eigh order), vecs[:, k] the eigenvectors: float64[n]."""
    keep = vals.shape[0] - r
    rest_vals = np.clip(vals[:keep], 0.0, None)
    rest = vecs[:, :keep]
    return (rest * rest) @ rest_vals


def lowrank_residuals(gram: np.ndarray, m: int, ranks: list[int],
                      weights: np.ndarray | None) -> list[LowRankResidual]:
    """Residual energies of the best rank-R corrections of one m x n error matrix.

    gram: float64[n, n] = E^T E; weights: mean-normalised column weights float64[n] or None.
    """
    n = gram.shape[0]
    g = (gram + gram.T) * 0.5
    total = float(np.trace(g))
    out: list[LowRankResidual] = []
    if weights is None:
        vals = np.linalg.eigvalsh(g)
        vals = np.clip(vals, 0.0, None)
        for R in ranks:
            r = min(R, m, n)
            kept = float(vals[n - r:].sum()) if r else 0.0
            out.append(LowRankResidual(R, n=m * n, bits=extra_bits(r, m, n),
                                       energy=max(total - kept, 0.0)))
        return out
    w = np.asarray(weights, dtype=np.float64)
    s = np.sqrt(np.maximum(w, 0.0))
    vals, vecs = np.linalg.eigh(g)
    gs = g * s[:, None] * s[None, :]
    svals, svecs = np.linalg.eigh(gs)
    tiny = 1e-12 * max(float(svals[-1]), 0.0)
    diag = np.clip(np.diag(g), 0.0, None)
    w_sum = m * float(w.sum())
    for R in ranks:
        r = min(R, m, n)
        d_plain = _residual_diag(vals, vecs, r)  # plain correction, per-column residual energy
        # Scaled correction: with E_s = E S = U diag(sigma) V^T, the unscaled correction is U_r U_r^T E,
        # and ||U_r^T E_j||^2 = sum_k (V^T S G)_kj^2 / mu_k (mu = sigma^2, eigenvalues of S G S).
        mu = svals[n - r:] if r else svals[:0]
        v = svecs[:, n - r:] if r else svecs[:, :0]
        keep = mu > tiny  # directions without energy correct nothing
        a = (v[:, keep] * s[:, None]).T @ g
        d_scaled = np.clip(diag - (a * a / mu[keep][:, None]).sum(axis=0), 0.0, None)
        out.append(LowRankResidual(
            R, n=m * n, bits=extra_bits(r, m, n),
            energy=float(d_plain.sum()), w_energy=float((w * d_plain).sum()),
            l2_energy=float(d_scaled.sum()), l2_w_energy=float((w * d_scaled).sum()), w_sum=w_sum))
    return out


@dataclass
class GramAccumulator:
    """E^T E of one matrix, accumulated over row chunks (float64[n, n])."""

    n: int
    m: int = 0
    gram: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.gram = np.zeros((self.n, self.n), dtype=np.float64)

    def add(self, err: np.ndarray) -> None:
        """err: float[rows, n] error rows of this matrix."""
        e = np.asarray(err, dtype=np.float64)
        self.gram += e.T @ e
        self.m += e.shape[0]

    def merge(self, other: GramAccumulator) -> None:
        self.gram += other.gram
        self.m += other.m
