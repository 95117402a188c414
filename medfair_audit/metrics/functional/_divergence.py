"""Distances between a generated subgroup distribution and the target.

Zero proportions are handled explicitly: KL and Jensen-Shannon first mix each distribution with
the uniform one, ``p' = (1 - ε) p + ε / K`` (``ε = DEFAULT_SMOOTHING`` unless stated), so that an
empty group gives a large but finite number, never NaN or inf. The smoothing used is part of every
report. Logarithms are natural (nats).
"""

from __future__ import annotations

import numpy as np

from ...config import DEFAULT_SMOOTHING

__all__ = [
    "DEFAULT_SMOOTHING",
    "jensen_shannon",
    "kl_divergence",
    "l2_fairness_discrepancy",
    "proportion_gaps",
    "smooth",
    "total_variation",
]


def _check(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1 or len(p) < 2:
        raise ValueError(
            f"expected two distributions over the same ≥2 groups, got {p.shape} and {q.shape}"
        )
    return p, q


def smooth(p: np.ndarray, eps: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """Mix a distribution with the uniform one: ``(1 - eps) p + eps / K`` (then renormalise)."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    return (1.0 - eps) * p + eps / len(p)


def kl_divergence(p: np.ndarray, q: np.ndarray, *, eps: float = DEFAULT_SMOOTHING) -> float:
    """KL(p ‖ q) in nats, both smoothed by ``eps`` (``eps=0`` gives the raw value, possibly inf).

    The audit reports KL(target ‖ generated), the paper's alignment objective, and its reverse.
    """
    p, q = _check(p, q)
    if eps > 0:
        p, q = smooth(p, eps), smooth(q, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return float(terms.sum())


def jensen_shannon(p: np.ndarray, q: np.ndarray, *, eps: float = 0.0) -> float:
    """Jensen-Shannon divergence in nats (finite for any inputs; ``eps`` optional)."""
    p, q = _check(p, q)
    if eps > 0:
        p, q = smooth(p, eps), smooth(q, eps)
    m = 0.5 * (p + q)
    js = 0.5 * kl_divergence(p, m, eps=0.0) + 0.5 * kl_divergence(q, m, eps=0.0)
    return max(js, 0.0)  # equal inputs can round to -1e-17


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance ``½ Σ |p - q|``."""
    p, q = _check(p, q)
    return float(0.5 * np.abs(p - q).sum())


def l2_fairness_discrepancy(p: np.ndarray, q: np.ndarray) -> float:
    """Fairness discrepancy of Choi et al. 2020: ``‖p - q‖₂`` (q usually the target)."""
    p, q = _check(p, q)
    return float(np.sqrt(((p - q) ** 2).sum()))


def proportion_gaps(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-group gaps ``p - q`` (generated minus target)."""
    p, q = _check(p, q)
    return p - q
