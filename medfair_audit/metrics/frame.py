"""Subgroup distribution statistics of a set of generated images, with uncertainty.

:func:`summarise` turns per-image classifier probabilities into the numbers an audit reports, for
three readings of "the share of each group":

* ``raw``: classify and count (argmax), with Wilson intervals;
* ``probabilistic``: the mean of the calibrated probabilities;
* ``corrected``: adjusted classify-and-count, which inverts the classifier's held-out confusion
  matrix (:func:`~medfair_audit.metrics.functional.corrected_proportions`).

Each reading gets its distances to the target (KL both ways, Jensen-Shannon, total variation, the
L2 fairness discrepancy of Choi et al. 2020) and per-group gaps, with percentile bootstrap
intervals over images (``n_boot`` resamples, seeded, so results are reproducible). Every group
appears in every table, empty ones too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .functional import (
    DEFAULT_SMOOTHING,
    chi_square_gof,
    corrected_proportions,
    jensen_shannon,
    kl_divergence,
    l2_fairness_discrepancy,
    required_sample_size,
    total_variation,
    wilson_interval,
)

__all__ = ["summarise"]


def _distributions(probs: np.ndarray, confusion: np.ndarray | None) -> dict[str, np.ndarray]:
    k = probs.shape[1]
    raw = np.bincount(probs.argmax(1), minlength=k) / max(len(probs), 1)
    out = {"raw": raw, "probabilistic": probs.mean(0) if len(probs) else np.full(k, 1 / k)}
    if confusion is not None:
        out["corrected"] = corrected_proportions(raw, confusion)
    return out


def _distances(p: np.ndarray, target: np.ndarray, eps: float) -> dict[str, float]:
    gaps = p - target
    return {
        "kl_target_to_generated": kl_divergence(target, p, eps=eps),
        "kl_generated_to_target": kl_divergence(p, target, eps=eps),
        "js": jensen_shannon(target, p),
        "tv": total_variation(p, target),
        "l2_fairness_discrepancy": l2_fairness_discrepancy(p, target),
        "max_abs_gap": float(np.abs(gaps).max()),
        **{f"gap[{i}]": float(g) for i, g in enumerate(gaps)},
    }


def _interval(values: np.ndarray, confidence: float) -> list[float]:
    a = (1 - confidence) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]


def summarise(
    probs: np.ndarray,
    groups: Sequence[str],
    target: np.ndarray,
    *,
    confusion: np.ndarray | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    smoothing: float = DEFAULT_SMOOTHING,
    half_width: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Proportions, distances to the target and their intervals for one set of images.

    Args:
        probs: Calibrated probabilities ``(N, K)``, columns in ``groups`` order.
        groups: Group names.
        target: Target proportions ``(K,)``.
        confusion: Row-normalised held-out confusion matrix ``P(pred j | true i)`` for the
            corrected reading (omitted when ``None``).
        n_boot: Bootstrap resamples (0 disables bootstrap intervals).
        confidence: Interval level.
        smoothing: ε of the KL/JS smoothing toward uniform.
        half_width: Target interval half-width for the sample-size estimate.
        seed: Seed of the bootstrap.

    Returns:
        A JSON-ready dictionary (see the README's audit.json section).
    """
    probs = np.asarray(probs, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n, k = probs.shape
    groups = list(groups)
    point = _distributions(probs, confusion)
    counts = np.bincount(probs.argmax(1), minlength=k) if n else np.zeros(k, int)
    boots: dict[str, list[np.ndarray]] = {kind: [] for kind in point}
    if n_boot and n > 1:
        rng = np.random.default_rng(seed)
        for _ in range(n_boot):
            sample = probs[rng.integers(0, n, n)]
            for kind, p in _distributions(sample, confusion).items():
                boots[kind].append(p)
    result: dict[str, Any] = {
        "n": int(n),
        "counts": dict(zip(groups, map(int, counts), strict=True)),
    }
    proportions: dict[str, Any] = {}
    distances: dict[str, Any] = {}
    for kind, p in point.items():
        per_group = {}
        dist = _distances(p, target, smoothing)
        samples = np.array(boots[kind]) if boots[kind] else None
        for i, g in enumerate(groups):
            if kind == "raw":
                ci = list(wilson_interval(int(counts[i]), n, confidence=confidence))
                method = "wilson"
            elif samples is not None:
                ci, method = _interval(samples[:, i], confidence), "bootstrap"
            else:
                ci, method = [float("nan"), float("nan")], "none"
            per_group[g] = {"value": float(p[i]), "ci": ci, "method": method}
        proportions[kind] = per_group
        boot_dist = (
            [_distances(s, target, smoothing) for s in samples] if samples is not None else None
        )
        entry = {}
        for name, value in dist.items():
            ci = (
                _interval(np.array([b[name] for b in boot_dist]), confidence)
                if boot_dist
                else [float("nan"), float("nan")]
            )
            entry[name] = {"value": value, "ci": ci}
        gaps = {g: entry.pop(f"gap[{i}]") for i, g in enumerate(groups)}
        distances[kind] = {"gaps": gaps, **entry}
    stat, pval = chi_square_gof(counts, target)
    result.update(
        proportions=proportions,
        distances=distances,
        chi_square={"statistic": stat, "p_value": pval, "df": int((target > 0).sum() - 1)},
        sample_size={
            "half_width": half_width,
            "confidence": confidence,
            "needed": max(
                required_sample_size(float(p), half_width, confidence=confidence)
                for p in point["raw"]
            )
            if n
            else None,
        },
    )
    return result
