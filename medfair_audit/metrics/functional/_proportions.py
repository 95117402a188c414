"""Subgroup proportions: Wilson intervals and the simplex-constrained error correction."""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

__all__ = ["corrected_proportions", "wilson_interval"]


def wilson_interval(count: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    Unlike the normal (Wald) interval it stays inside [0, 1] and behaves at counts of 0 and n.
    With ``n == 0`` the interval is the whole of [0, 1].
    """
    if n < 0 or not 0 <= count <= n:
        raise ValueError(f"expected 0 ≤ count ≤ n, got count={count}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = count / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if count == 0 else max(0.0, centre - half)  # exact at the edges, not 1e-17
    hi = 1.0 if count == n else min(1.0, centre + half)
    return lo, hi


def corrected_proportions(observed: np.ndarray, confusion_rates: np.ndarray) -> np.ndarray:
    """Adjusted classify-and-count: the true proportions that explain the observed ones.

    With ``C[i, j] = P(predicted j | true i)`` measured on held-out real images, the expected
    observed proportions are ``Cᵀ q`` for true proportions ``q``. The estimate solves
    ``min ‖Cᵀ q - observed‖²`` over the probability simplex (Forman 2008; constrained as in
    Saerens et al. 2002), so it is always a distribution, even when sampling noise pushes the
    unconstrained solution outside [0, 1].
    """
    obs = np.asarray(observed, dtype=np.float64)
    c = np.asarray(confusion_rates, dtype=np.float64)
    k = len(obs)
    if c.shape != (k, k):
        raise ValueError(f"confusion rates must be {k}×{k}, got {c.shape}")
    a = c.T
    res = optimize.minimize(
        lambda q: float(((a @ q - obs) ** 2).sum()),
        x0=np.full(k, 1.0 / k),
        jac=lambda q: 2 * a.T @ (a @ q - obs),
        bounds=[(0.0, 1.0)] * k,
        constraints=[
            {"type": "eq", "fun": lambda q: q.sum() - 1.0, "jac": lambda q: np.ones_like(q)}
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    q = np.clip(res.x, 0.0, 1.0)
    return q / q.sum()
