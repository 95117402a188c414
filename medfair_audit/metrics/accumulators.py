"""Streaming accumulators: constant memory in the number of images.

The audit feeds features shard by shard; FID needs only the first two moments, so each group keeps
``n``, ``Σx`` and ``Σxxᵀ`` in float64 (as torchmetrics' FID does), never the features
themselves. Accumulators merge exactly, so results do not depend on how work was split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FeatureMoments"]


@dataclass
class FeatureMoments:
    """Running ``n``, ``Σx`` and ``Σxxᵀ`` of ``d``-dimensional features, in float64.

    Args:
        dim: Feature dimension.
    """

    dim: int
    n: int = 0
    total: np.ndarray = field(init=False)
    outer: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.total = np.zeros(self.dim, dtype=np.float64)
        self.outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, features: np.ndarray) -> FeatureMoments:
        """Add a batch ``(m, dim)`` of features."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (m, {self.dim}), got {x.shape}")
        self.n += len(x)
        self.total += x.sum(axis=0)
        self.outer += x.T @ x
        return self

    def merge(self, other: FeatureMoments) -> FeatureMoments:
        """Add another accumulator's sums (exact, order-independent up to float rounding)."""
        if other.dim != self.dim:
            raise ValueError(f"dimension mismatch: {self.dim} vs {other.dim}")
        self.n += other.n
        self.total += other.total
        self.outer += other.outer
        return self

    @property
    def mean(self) -> np.ndarray:
        """Feature mean."""
        if self.n == 0:
            raise ValueError("no features accumulated")
        return self.total / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by ``n - 1``), as ``numpy.cov``."""
        if self.n < 2:
            raise ValueError("the covariance needs at least 2 samples")
        mu = self.mean
        return (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
