"""Streaming accumulators: constant memory in the number of images.

The audit feeds features shard by shard; FID needs only the first two moments, so each group keeps
``n``, ``Σx`` and ``Σxxᵀ`` in float64 (as torchmetrics' FID does), never the features
themselves. Accumulators merge exactly, so results do not depend on how work was split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FeatureMoments", "ShardAggregate"]


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


class ShardAggregate:
    """Streams an audit's shards into what it needs, in memory independent of the image count.

    Kept per image: prompt index, image index, seed, probabilities (the per-image table).
    Kept per predicted group: feature moments (FID), up to ``cap`` feature vectors in plan order
    (KID and equal-n subsamples), up to ``grid`` images (the sample grid).

    Args:
        n_groups: Number of groups.
        cap: Feature vectors kept per group.
        grid: Images kept per group.
        to_groups: Maps a shard's stored probabilities to ``(m, n_groups)`` group
            probabilities whose argmax is an image's group (default: they are already).
    """

    def __init__(
        self, n_groups: int, cap: int = 2000, grid: int = 32, to_groups: Any = None
    ) -> None:
        self.n_groups, self.cap, self.grid = n_groups, cap, grid
        self.to_groups = to_groups
        self.rows: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []
        self.moments: list[FeatureMoments] | None = None
        self.samples: list[list[np.ndarray]] = [[] for _ in range(n_groups)]
        self.images: list[list] = [[] for _ in range(n_groups)]

    def add(self, shard: dict) -> None:
        """Add one shard (``meta``, ``seeds``, ``probs``, ``features``, ``images``)."""
        import torch

        meta, probs, feats = shard["meta"], shard["probs"].numpy(), shard["features"].numpy()
        n = len(probs)
        self.rows.append(
            np.stack(
                [
                    np.full(n, meta["prompt_index"]),
                    np.arange(meta["start"], meta["stop"]),
                    shard["seeds"].numpy(),
                ],
                1,
            )
        )
        self.probs.append(probs)
        if self.moments is None:
            self.moments = [FeatureMoments(feats.shape[1]) for _ in range(self.n_groups)]
        pred = (probs if self.to_groups is None else self.to_groups(probs)).argmax(1)
        for g in range(self.n_groups):
            sel = pred == g
            if not sel.any():
                continue
            self.moments[g].update(feats[sel])
            room = self.cap - sum(len(x) for x in self.samples[g])
            if room > 0:
                self.samples[g].append(feats[sel][:room])
            room = self.grid - sum(len(x) for x in self.images[g])
            if room > 0:
                self.images[g].append(shard["images"][torch.from_numpy(sel)][:room])

    def finish(self) -> dict:
        """Per-image arrays, per-group moments, feature samples and grid images."""
        import torch

        rows = np.concatenate(self.rows)
        dim = self.moments[0].dim
        return {
            "prompt_index": rows[:, 0],
            "image_index": rows[:, 1],
            "seeds": rows[:, 2],
            "probs": np.concatenate(self.probs),
            "moments": self.moments,
            "samples": [np.concatenate(x) if x else np.zeros((0, dim)) for x in self.samples],
            "images": [
                torch.cat(x) if x else torch.zeros((0, 1, 1, 1), dtype=torch.uint8)
                for x in self.images
            ],
        }
