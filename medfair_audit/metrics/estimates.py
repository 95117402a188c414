"""Subgroup shares with the classifier's own uncertainty, and what follows from them.

The audit reads generated images through a classifier with known held-out errors
(:class:`HeldOut`). From its outputs it estimates the true share of each group five ways
(:data:`READINGS`); the corrected readings resample both the generated images *and* the held-out
images behind the confusion matrix, so their intervals carry the classifier's error too.
Distances to the target get intervals from a confidence region of the shares (they can contain 0);
the goodness-of-fit test uses the null the classifier implies (predicted shares ``target · C``);
sample sizes include the floor set by the confusion matrix's own error.

All intervals here are checked by simulation with known truth in
``benchmarks/bench_calibration.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

from ..exceptions import ConfigError
from .functional import (
    MAX_CONDITION,
    adjusted_count,
    condition_number,
    em_prior_shift,
    jensen_shannon,
    kl_divergence,
    l2_fairness_discrepancy,
    mean_output_matrix,
    stationary_prior,
    total_variation,
    wilson_interval,
)

__all__ = [
    "CORRECTED_READINGS",
    "DEFAULT_READING",
    "DISTANCES",
    "READINGS",
    "HeldOut",
    "ProductHeldOut",
    "ShareEstimates",
    "distance_interval",
    "estimate_shares",
    "gof_test",
    "headline_reading",
    "region_from_intervals",
    "sample_size",
]

#: What each reading estimates and how (also written into audit.json).
READINGS: dict[str, str] = {
    "raw": "share of images the classifier assigns to each group (argmax); Wilson intervals. "
    "Estimates the classifier's view, target · C under a perfect generator, not the true share",
    "probabilistic": "mean calibrated probability; percentile bootstrap over images. Biased "
    "toward the classifier's training prior: a diagnostic, not an estimate of the true share",
    "acc": "adjusted classify-and-count: solves Cᵀ q = raw with C the held-out confusion rates",
    "pacc": "probabilistic adjusted classify-and-count: solves Sᵀ q = mean probability with "
    "S[y] = E[p | true y] on held-out images",
    "em": "Saerens et al. (2002) EM: maximum-likelihood shares under label shift, assuming "
    "calibrated probabilities; the prior they are calibrated under is estimated as the "
    "stationary distribution of S",
}
CORRECTED_READINGS = ("acc", "pacc", "em")
#: The reading used for headlines, sample sizes, tests across prompts and paired changes.
DEFAULT_READING = "pacc"


def headline_reading(readings: Any) -> str:
    """:data:`DEFAULT_READING` where available, else ``acc`` (held-out counts without outputs)."""
    return DEFAULT_READING if DEFAULT_READING in readings else "acc"


CENSORED_NOTE = (
    "the unconstrained estimate lies outside [0, 1]: the data sit beyond what the classifier's "
    "error rates explain, so only a one-sided bound is reported"
)


def _distance_functions(target: np.ndarray, eps: float) -> dict[str, Callable]:
    return {
        "kl_target_to_generated": lambda q: kl_divergence(target, q, eps=eps),
        "kl_generated_to_target": lambda q: kl_divergence(q, target, eps=eps),
        "js": lambda q: jensen_shannon(target, q),
        "tv": lambda q: total_variation(q, target),
        "l2_fairness_discrepancy": lambda q: l2_fairness_discrepancy(q, target),
        "max_abs_gap": lambda q: float(np.abs(np.asarray(q) - target).max()),
    }


DISTANCES = (
    "kl_target_to_generated",
    "kl_generated_to_target",
    "js",
    "tv",
    "l2_fairness_discrepancy",
    "max_abs_gap",
)


@dataclass(frozen=True)
class HeldOut:
    """The classifier's held-out images: true groups and calibrated probabilities.

    Args:
        labels: True group index per held-out image ``(m,)``.
        probs: Calibrated probabilities ``(m, K)``; ``None`` when only hard counts are known (an
            older ``evaluation.json``), in which case ``predicted`` must be given.
        predicted: Predicted group per image (default: argmax of ``probs``).
    """

    labels: np.ndarray
    probs: np.ndarray | None
    predicted: np.ndarray

    @classmethod
    def from_evaluation(cls, evaluation: dict[str, Any], groups: Sequence[str]) -> HeldOut:
        """From a classifier's ``evaluation.json`` (per-image outputs, else its confusion counts).

        Raises:
            ConfigError: No usable held-out data, NaN or negative entries, wrong shape.
        """
        groups = list(groups)
        k = len(groups)
        order = [list(evaluation.get("groups", groups)).index(g) for g in groups]
        held = evaluation.get("heldout")
        if held:
            probs = np.asarray(held["probs"], dtype=np.float64)
            labels = np.asarray(held["labels"], dtype=np.int64)
            if probs.ndim != 2 or probs.shape[1] != k or len(labels) != len(probs):
                raise ConfigError(
                    f"evaluation.json: heldout probs must be (m, {k}) with m labels",
                    param="classifier",
                )
            if not np.isfinite(probs).all() or (probs < 0).any():
                raise ConfigError(
                    "evaluation.json: heldout probabilities must be finite and non-negative",
                    param="classifier",
                )
            inverse = np.argsort(order)
            return cls(labels=inverse[labels], probs=probs[:, order], predicted=None)
        counts = np.asarray(evaluation.get("confusion_matrix", []), dtype=np.float64)
        if counts.shape != (k, k):
            raise ConfigError(
                f"evaluation.json has no {k}×{k} confusion_matrix or heldout outputs",
                param="classifier",
            )
        if not np.isfinite(counts).all() or (counts < 0).any() or (counts != counts.round()).any():
            raise ConfigError(
                "evaluation.json: confusion_matrix must hold non-negative whole counts",
                param="classifier",
            )
        counts = counts[np.ix_(order, order)].astype(int)
        labels = np.repeat(np.arange(k), counts.sum(1))
        predicted = np.concatenate([np.repeat(np.arange(k), row) for row in counts])
        return cls(labels=labels, probs=None, predicted=predicted)

    def __post_init__(self) -> None:
        if self.predicted is None:
            object.__setattr__(self, "predicted", np.asarray(self.probs).argmax(1))

    @property
    def k(self) -> int:
        """Number of groups."""
        if self.probs is not None:
            return self.probs.shape[1]
        return int(max(self.labels.max(), self.predicted.max())) + 1

    @property
    def has_soft(self) -> bool:
        """Whether per-image probabilities are known (the soft readings need them)."""
        return self.probs is not None

    def marginal(self, level_of: Sequence[int], k: int) -> HeldOut:
        """The held-out images of a joint classifier read for one attribute.

        Args:
            level_of: Attribute level of each joint cell (cell index → level index).
            k: Number of levels.

        Labels map to their level; probabilities are summed over the cells of each level (as the
        audit sums a generated image's), and the prediction is the most probable level.
        """
        level_of = np.asarray(level_of, dtype=np.int64)
        labels = level_of[self.labels]
        if self.probs is None:
            return HeldOut(labels=labels, probs=None, predicted=level_of[self.predicted])
        return HeldOut(labels=labels, probs=self.probs @ np.eye(k)[level_of], predicted=None)

    def simulate_hard(self, rng: np.random.Generator, n_sim: int) -> np.ndarray:
        """``(n_sim, K, K)`` confusion-rate matrices drawn as a new held-out set would give them.

        Each row is multinomial with the held-out count of its group.
        """
        c_hat, m = self.matrix(soft=False), self.counts_per_group()
        sim_c = np.empty((n_sim, self.k, self.k))
        for y in range(self.k):
            sim_c[:, y] = rng.multinomial(max(int(m[y]), 1), c_hat[y], size=n_sim) / max(m[y], 1)
        return sim_c

    def mean_covariances(self, soft: bool) -> np.ndarray:
        """``(K, K, K)``: per true group, the covariance of the estimated matrix row.

        The row is the mean output over that group's held-out images.
        """
        outputs = self.probs if soft else self.hard_outputs()
        out = np.zeros((self.k, self.k, self.k))
        for y in range(self.k):
            rows = outputs[self.labels == y]
            if len(rows) > 1:
                out[y] = np.cov(rows.T) / len(rows)
        return out

    def hard_outputs(self) -> np.ndarray:
        """One-hot predictions ``(m, K)``."""
        return np.eye(self.k)[self.predicted]

    def counts_per_group(self) -> np.ndarray:
        """Held-out images per true group."""
        return np.bincount(self.labels, minlength=self.k)

    def matrix(self, soft: bool) -> np.ndarray:
        """Hard confusion rates ``C`` or soft ``S = E[p | y]``."""
        out = self.probs if soft else self.hard_outputs()
        return mean_output_matrix(self.labels, out, self.k)

    def resample(
        self, rng: np.random.Generator | Sequence[np.random.Generator], b: int, soft: bool
    ) -> np.ndarray:
        """``(b, K, K)`` matrices from stratified bootstrap resamples of the held-out images.

        ``rng`` is one generator, or one per class (then drawing ``b`` in chunks gives the same
        matrices as drawing them at once).
        """
        outputs = self.probs if soft else self.hard_outputs()
        rngs = [rng] * self.k if isinstance(rng, np.random.Generator) else list(rng)
        mats = np.empty((b, self.k, self.k))
        for y in range(self.k):
            rows = outputs[self.labels == y]
            if not len(rows):
                mats[:, y] = np.nan
                continue
            w = rngs[y].multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=b)
            mats[:, y] = w @ rows / len(rows)
        return mats


def _kron(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kronecker product of the last two axes, batched over the leading ones."""
    *lead, i, j = a.shape
    k, m = b.shape[-2:]
    return np.einsum("...ij,...kl->...ikjl", a, b).reshape(*lead, i * k, j * m)


class ProductHeldOut:
    """Several per-attribute classifiers' held-out errors, read together over joint cells.

    **Assumption** (stated in every audit that uses it): given an image's true joint cell, each
    classifier's output depends only on its own attribute's true level, and the classifiers
    err independently. Then the joint confusion matrix is the Kronecker product of the
    per-attribute ones, ``C = C₁ ⊗ C₂ ⊗ …`` (cells ordered with the first attribute slowest), and
    so is the soft one. Its bootstrap resamples each classifier's held-out images on their own.

    Args:
        parts: One :class:`HeldOut` per attribute, in cell order.
    """

    def __init__(self, parts: Sequence[HeldOut]) -> None:
        if len(parts) < 2:
            raise ValueError("a product needs two or more classifiers")
        self.parts = tuple(parts)

    @property
    def k(self) -> int:
        """Number of joint cells."""
        return int(np.prod([p.k for p in self.parts]))

    @property
    def has_soft(self) -> bool:
        """Whether every classifier's per-image probabilities are known."""
        return all(p.has_soft for p in self.parts)

    def _fold(self, mats: Sequence[np.ndarray]) -> np.ndarray:
        out = mats[0]
        for m in mats[1:]:
            out = _kron(out, m)
        return out

    def matrix(self, soft: bool) -> np.ndarray:
        """``C₁ ⊗ C₂ ⊗ …`` (hard) or ``S₁ ⊗ S₂ ⊗ …`` (soft)."""
        return self._fold([p.matrix(soft) for p in self.parts])

    def resample(
        self, rng: np.random.Generator | Sequence[np.random.Generator], b: int, soft: bool
    ) -> np.ndarray:
        """``(b, K, K)``: each classifier's held-out images resampled on their own, multiplied."""
        if isinstance(rng, np.random.Generator):
            rngs: list = [rng] * sum(p.k for p in self.parts)
        else:
            rngs = list(rng)
        mats, used = [], 0
        for p in self.parts:
            mats.append(p.resample(rngs[used : used + p.k], b, soft))
            used += p.k
        return self._fold(mats)

    def simulate_hard(self, rng: np.random.Generator, n_sim: int) -> np.ndarray:
        """Each classifier's confusion rates drawn anew (``simulate_hard``), multiplied."""
        return self._fold([p.simulate_hard(rng, n_sim) for p in self.parts])

    def mean_covariances(self, soft: bool) -> np.ndarray:
        """Covariance of each cell's row, folded over the classifiers.

        For independent rows ``x ⊗ y``: ``V = Vx ⊗ Vy + Vx ⊗ μyμyᵀ + μxμxᵀ ⊗ Vy``.
        """
        mean, cov = self.parts[0].matrix(soft), self.parts[0].mean_covariances(soft)
        for p in self.parts[1:]:
            m2, v2 = p.matrix(soft), p.mean_covariances(soft)
            outer1 = np.einsum("yi,yj->yij", mean, mean)
            outer2 = np.einsum("yi,yj->yij", m2, m2)
            k1, k2 = len(mean), len(m2)
            new = np.empty((k1 * k2, k1 * k2, k1 * k2))
            for a in range(k1):
                for b in range(k2):
                    new[a * k2 + b] = (
                        np.kron(cov[a], v2[b])
                        + np.kron(cov[a], outer2[b])
                        + np.kron(outer1[a], v2[b])
                    )
            mean, cov = _kron(mean, m2), new
        return cov


@dataclass
class ShareEstimates:
    """Point estimates and bootstrap replicates of every reading for one set of images.

    Attributes:
        n: Images.
        counts: Images per predicted group.
        point: Reading → ``(K,)`` point estimate (unconstrained for ACC/PACC).
        samples: Reading → ``(B, K)`` bootstrap replicates (unconstrained), or absent.
        condition: Condition number of the hard and soft matrices.
        identifiable: Whether the corrected readings can be trusted (condition number ≤
            :data:`MAX_CONDITION`).
        probs: The generated images' probabilities (kept for tests and paired analysis).
    """

    n: int
    counts: np.ndarray
    point: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    condition: dict[str, float]
    identifiable: bool
    probs: np.ndarray


#: Elements of a ``(replicates, images)`` block the bootstrap holds at once: the statistics'
#: memory stays about 2 MB × a few whatever the number of images (replicates go in chunks).
BOOTSTRAP_BLOCK = 250_000


def _chunks(b: int, n: int) -> list[int]:
    size = max(1, BOOTSTRAP_BLOCK // max(n, 1))
    return [min(size, b - i) for i in range(0, b, size)]


def estimate_shares(
    probs: np.ndarray,
    heldout: HeldOut | None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    image_weights: np.ndarray | None = None,
    confusion_draws: dict[str, np.ndarray] | None = None,
) -> ShareEstimates:
    """Every reading's point estimate and ``n_boot`` joint bootstrap replicates.

    Each replicate resamples the generated images (multinomial weights) and, for the corrected
    readings, the held-out images within each true group (so ``C`` and ``S`` vary too).

    Args:
        probs: Calibrated probabilities of the generated images ``(N, K)``.
        heldout: The classifier's held-out images (``None``: raw and probabilistic only).
        n_boot: Bootstrap replicates (0: points only).
        seed: Seed of the replicates.
        image_weights: ``(n_boot, N)`` resampling counts to use instead of drawing them (paired
            designs pass the same weights to both sides).
        confusion_draws: ``{"hard": (n_boot, K, K), "soft": ...}`` to use instead of drawing
            (two audits with the same classifier share them).
    """
    p = np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    onehot = np.eye(k)[p.argmax(1)] if n else np.zeros((0, k))
    counts = onehot.sum(0).astype(int)
    raw = counts / max(n, 1)
    mean_p = p.mean(0) if n else np.full(k, 1 / k)
    point = {"raw": raw, "probabilistic": mean_p}
    condition: dict[str, float] = {}
    have_soft = heldout is not None and heldout.has_soft
    if heldout is not None:
        c_hat = heldout.matrix(soft=False)
        condition["hard"] = condition_number(c_hat)
        point["acc"] = adjusted_count(raw, c_hat) if n else np.full(k, np.nan)
        if have_soft:
            s_hat = heldout.matrix(soft=True)
            condition["soft"] = condition_number(s_hat)
            point["pacc"] = adjusted_count(mean_p, s_hat) if n else np.full(k, np.nan)
            point["em"] = em_prior_shift(p, stationary_prior(s_hat)) if n else np.full(k, np.nan)
    identifiable = bool(condition) and all(v <= MAX_CONDITION for v in condition.values())
    samples: dict[str, list[np.ndarray]] = {kind: [] for kind in point if kind != "raw"}
    if n_boot and n > 1:
        # One stream for the image resamples and one per (matrix, class) for the held-out ones:
        # the replicates do not depend on how they are chunked (i.e. on the memory budget).
        k_streams = heldout.k if heldout is not None else 0
        rng, *held = map(
            np.random.default_rng, np.random.SeedSequence(seed).spawn(1 + 2 * k_streams)
        )
        held_rngs = {"hard": held[:k_streams], "soft": held[k_streams:]}
        done = 0
        for b in _chunks(n_boot, n):
            if image_weights is not None:
                w = np.asarray(image_weights[done : done + b], dtype=np.float64)
            else:
                w = rng.multinomial(n, np.full(n, 1 / n), size=b).astype(np.float64)
            r_b, p_b = w @ onehot / n, w @ p / n
            samples["probabilistic"].append(p_b)
            if heldout is not None:
                draws = {
                    kind: confusion_draws[kind][done : done + b]
                    if confusion_draws is not None
                    else heldout.resample(held_rngs[kind], b, soft=kind == "soft")
                    for kind in (("hard", "soft") if have_soft else ("hard",))
                }
                samples["acc"].append(adjusted_count(r_b, draws["hard"]))
                if have_soft:
                    samples["pacc"].append(adjusted_count(p_b, draws["soft"]))
                    samples["em"].append(em_prior_shift(p, stationary_prior(draws["soft"]), w))
            done += b
    return ShareEstimates(
        n=n,
        counts=counts,
        point=point,
        samples={kind: np.concatenate(v) for kind, v in samples.items() if v},
        condition=condition,
        identifiable=identifiable,
        probs=p,
    )


def mixture_estimates(
    parts: Sequence[np.ndarray],
    weights: Sequence[float],
    heldout: HeldOut,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> ShareEstimates:
    """Shares of a generator asked for condition ``i`` with probability ``weights[i]``.

    ``parts[i]`` are the probabilities of the images drawn for condition ``i`` (a conditioned
    model asked for each group in turn). The marginal share under the declared mixture is
    ``Σ_i w_i q_i``; ACC and PACC are linear in the observed shares, so it is the adjusted count
    of the weighted mean labels (ACC) or probabilities (PACC). Each bootstrap replicate
    resamples every condition's images and, once for all conditions, the held-out images (the
    classifier's error is shared by every condition, so drawing it per condition would
    understate it). EM is not linear and is not given.

    Returns:
        A :class:`ShareEstimates` with the readings ``raw`` (weighted labels; its interval is
        the bootstrap's), ``probabilistic``, ``acc`` and ``pacc``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(parts) != len(w) or not len(w) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError("expected one non-negative weight per condition", param="weights")
    w = w / w.sum()
    ps = [np.asarray(p, dtype=np.float64) for p in parts]
    k = heldout.k
    if any(len(p) < 1 or p.shape[1] != k for p in ps):
        raise ConfigError(f"expected (n ≥ 1, {k}) probabilities per condition", param="parts")
    hots = [np.eye(k)[p.argmax(1)] for p in ps]
    raw = sum(wi * h.mean(0) for wi, h in zip(w, hots, strict=True))
    mean_p = sum(wi * p.mean(0) for wi, p in zip(w, ps, strict=True))
    c_hat, s_hat = heldout.matrix(soft=False), heldout.matrix(soft=True)
    point = {
        "raw": raw,
        "probabilistic": mean_p,
        "acc": adjusted_count(raw, c_hat),
        "pacc": adjusted_count(mean_p, s_hat),
    }
    condition = {"hard": condition_number(c_hat), "soft": condition_number(s_hat)}
    samples: dict[str, np.ndarray] = {}
    if n_boot:
        rng, *held = map(
            np.random.default_rng, np.random.SeedSequence(seed).spawn(1 + 2 * heldout.k)
        )
        r_b = np.zeros((n_boot, k))
        p_b = np.zeros((n_boot, k))
        for wi, p, h in zip(w, ps, hots, strict=True):
            draw = rng.multinomial(len(p), np.full(len(p), 1 / len(p)), size=n_boot) / len(p)
            r_b += wi * draw @ h
            p_b += wi * draw @ p
        hard = heldout.resample(held[: heldout.k], n_boot, soft=False)
        soft = heldout.resample(held[heldout.k :], n_boot, soft=True)
        samples = {
            "raw": r_b,
            "probabilistic": p_b,
            "acc": adjusted_count(r_b, hard),
            "pacc": adjusted_count(p_b, soft),
        }
    return ShareEstimates(
        n=int(sum(len(p) for p in ps)),
        counts=sum(h.sum(0) for h in hots).astype(int),
        point=point,
        samples=samples,
        condition=condition,
        identifiable=all(v <= MAX_CONDITION for v in condition.values()),
        probs=np.concatenate(ps),
    )


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates dropped), clipped to [0, 1]."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    a = (1 - confidence) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))


def share_intervals(
    est: ShareEstimates, reading: str, confidence: float
) -> list[tuple[float, float]]:
    """Per-group intervals of one reading at ``confidence``."""
    k = len(est.counts)
    if reading == "raw":
        return [wilson_interval(int(c), est.n, confidence=confidence) for c in est.counts]
    if reading in CORRECTED_READINGS and not est.identifiable:
        return [(0.0, 1.0)] * k
    s = est.samples.get(reading)
    if s is None:
        return [(0.0, 1.0)] * k
    return [percentile_interval(s[:, i], confidence) for i in range(k)]


def region_from_intervals(intervals: Sequence[tuple[float, float]]) -> np.ndarray:
    """Vertices of the box of per-group intervals intersected with the probability simplex.

    The box of simultaneous intervals is a confidence region for the share vector; a convex
    function of the shares (every distance here) reaches its maximum over it at a vertex.
    """
    lo = np.array([a for a, _ in intervals])
    hi = np.array([b for _, b in intervals])
    k = len(lo)
    vertices = []
    for j in range(k):
        others = [i for i in range(k) if i != j]
        for corner in itertools.product((0, 1), repeat=k - 1):
            q = np.empty(k)
            q[others] = np.where(np.array(corner) == 0, lo[others], hi[others])
            q[j] = 1 - q[others].sum()
            if lo[j] - 1e-12 <= q[j] <= hi[j] + 1e-12:
                vertices.append(np.clip(q, 0, 1))
    if not vertices:  # rounding left the box just outside the simplex: use its centre
        c = (lo + hi) / 2
        vertices.append(c / c.sum())
    return np.unique(np.round(np.array(vertices), 12), axis=0)


def distance_interval(
    fn: Callable[[np.ndarray], float], vertices: np.ndarray, target: np.ndarray
) -> tuple[float, float]:
    """Range of a convex distance ``fn`` (zero at ``target``) over a box ∩ simplex region.

    The lower end is 0 when the target lies in the region, so the interval can contain 0.
    """
    values = [fn(v) for v in vertices]
    hi = max(values)
    lo_box, hi_box = vertices.min(0), vertices.max(0)
    if np.all(lo_box - 1e-12 <= target) and np.all(target <= hi_box + 1e-12):
        return 0.0, hi
    if len(target) == 2:
        return min(values), hi
    res = optimize.minimize(
        lambda q: fn(q),
        x0=vertices[int(np.argmin(values))],
        bounds=list(zip(lo_box, hi_box, strict=True)),
        constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1.0}],
        method="SLSQP",
    )
    return float(min(res.fun, min(values))) if res.success else float(min(values)), hi


def simultaneous_level(confidence: float, k: int, m: int = 1) -> float:
    """Per-interval level for ``m`` sets of ``k`` groups to hold jointly (Bonferroni).

    Two groups' intervals are one event (``q₀ = 1 - q₁``), so ``k = 2`` counts once.
    """
    per = 1 if k == 2 else k
    return 1 - (1 - confidence) / (per * m)


def distances_with_intervals(
    est: ShareEstimates,
    reading: str,
    target: np.ndarray,
    *,
    confidence: float,
    smoothing: float,
    censored: bool,
) -> dict[str, Any]:
    """Distances of one reading to the target, with region-derived intervals.

    A censored share gives no point value: the distance is then at least the interval's lower
    end. KL whose point value sits at the ε ceiling (a share of exactly 0) is censored likewise.
    """
    fns = _distance_functions(target, smoothing)
    level = simultaneous_level(confidence, len(target))
    vertices = region_from_intervals(share_intervals(est, reading, level))
    q = est.point[reading]
    at_zero = bool((q <= 0).any())
    out: dict[str, Any] = {}
    for name in DISTANCES:
        lo, hi = distance_interval(fns[name], vertices, target)
        entry: dict[str, Any] = {"value": None, "ci": [lo, hi]}
        kl_capped = name.startswith("kl_") and at_zero
        if censored or kl_capped:
            entry["censored"] = True
            entry["bound"] = {"at_least": lo}
            entry["note"] = (
                "a share is censored at the simplex boundary"
                if censored
                else f"a share is 0: KL sits at the ε = {smoothing:g} smoothing ceiling"
            )
        else:
            entry["value"] = fns[name](np.clip(q, 0, 1))
        out[name] = entry
    return out


def gof_test(
    counts: np.ndarray,
    target: np.ndarray,
    heldout: HeldOut | None,
    *,
    n_sim: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Is the generator on target? Pearson's statistic against the *predicted* shares it implies.

    Under "the true shares equal the target" the classifier's labels follow ``target · C``, not
    the target. The statistic compares the observed label counts with ``n · target · Ĉ``; its
    null distribution is simulated (parametric bootstrap) drawing both the generated labels and
    a new held-out confusion matrix, so ``Ĉ``'s own error is part of the null.
    """
    counts = np.asarray(counts, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n, k = int(counts.sum()), len(counts)
    if n == 0:
        return {"statistic": None, "p_value": None, "df": k - 1, "note": "no images"}
    c_hat = np.eye(k) if heldout is None else heldout.matrix(soft=False)
    expected = target @ c_hat
    if not np.isfinite(expected).all():
        return {
            "statistic": None,
            "p_value": None,
            "df": k - 1,
            "note": "the held-out set has no image of some group: its confusion row is unknown",
        }

    def statistic(obs: np.ndarray, exp: np.ndarray) -> np.ndarray:
        keep = exp > 0
        return (((obs - n * exp) ** 2) / np.where(keep, n * exp, 1.0) * keep).sum(-1)

    stat = float(statistic(counts, expected))
    rng = np.random.default_rng(seed)
    sim_obs = rng.multinomial(n, expected / expected.sum(), size=n_sim)
    if heldout is None:
        sim_exp = np.broadcast_to(expected, (n_sim, k))
    else:
        sim_exp = np.einsum("k,bkj->bj", target, heldout.simulate_hard(rng, n_sim))
    sims = statistic(sim_obs, sim_exp)
    exceed = int((sims >= stat - 1e-12).sum())
    return {
        "statistic": stat,
        "p_value": (1 + exceed) / (n_sim + 1),
        "p_value_is_bound": exceed == 0,
        "df": int((expected > 0).sum() - 1),
        "null": "predicted label shares = target · C (true shares on target)",
        "method": f"parametric bootstrap, {n_sim} draws of the labels and of C",
    }


def sample_size(
    probs: np.ndarray,
    heldout: HeldOut,
    q: np.ndarray,
    *,
    half_width: float,
    confidence: float,
    soft: bool,
) -> dict[str, Any]:
    """Images needed for a ``± half_width`` interval on the corrected share (delta method).

    ``Var(q̂ₖ) ≈ Aₖ / n + Vₖ``: ``A`` from the spread of the images' outputs through ``M⁻ᵀ``,
    ``V`` from the held-out matrix's own error, which does not shrink with more generated images
    and sets a floor under the attainable half-width.
    """
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1]
    x = p if soft else np.eye(k)[p.argmax(1)]
    m = heldout.matrix(soft=soft)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    if not np.isfinite(m).all():
        return {
            "needed": None,
            "floor_half_width": None,
            "note": "confusion matrix has an unknown row (no held-out image of some group)",
        }
    try:
        inv_t = np.linalg.inv(m.T)
    except np.linalg.LinAlgError:
        return {"needed": None, "floor_half_width": None, "note": "confusion matrix singular"}
    cov_x = np.cov(x.T) if len(x) > 1 else np.zeros((k, k))
    a = np.diag(inv_t @ cov_x @ inv_t.T)
    qc = np.clip(np.nan_to_num(q), 0, 1)
    qc = qc / qc.sum() if qc.sum() > 0 else np.full(k, 1 / k)
    v_rows = np.einsum("y,yij->ij", qc**2, heldout.mean_covariances(soft))
    v = np.diag(inv_t @ v_rows @ inv_t.T)
    floor = z * math.sqrt(max(v.max(), 0.0))
    room = (half_width / z) ** 2 - v
    needed = None if (room <= 0).any() else math.ceil((a / room).max())
    return {"needed": needed, "floor_half_width": floor}
