"""Audits with known truth: do the intervals medfair prints cover what they claim?

A two-group classifier is simulated as a unit-variance score whose mean is ``±separation`` by
true group, turned into probabilities calibrated under ``calibration_prior`` (as a temperature-
scaled classifier would be). Each replication draws a held-out set (``per_group`` images per
true group, from which ``C`` and ``S`` are estimated) and ``n`` generated images with a known
true share, runs :func:`~medfair_audit.metrics.frame.summarise`, and records whether each
interval contains its estimand: the true share for the corrected readings, ``q·C`` for the
classifier's labels, ``q·S`` for the mean probability, and the true distance to the target for
the distances. ``benchmarks/bench_calibration.py`` runs it at scale; the fast tests run it small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .estimates import DEFAULT_READING, DISTANCES, HeldOut, _distance_functions, estimate_shares
from .frame import dispersion, summarise
from .functional import DEFAULT_SMOOTHING
from .paired import paired_change

__all__ = [
    "SimulatedCategorical",
    "SimulatedClassifier",
    "coverage_study",
    "dispersion_study",
    "joint_coverage_study",
    "paired_study",
]


@dataclass(frozen=True, kw_only=True)
class SimulatedClassifier:
    """A calibrated two-group classifier with known error rates.

    Args:
        separation: Score mean ``±separation`` for group 1/0 (1.175: about 12% errors).
        calibration_prior: Group-1 share under which the probabilities are calibrated.
    """

    separation: float = 1.175
    calibration_prior: float = 0.58

    def probs(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(n, 2)`` of images with true ``labels``."""
        mu = self.separation
        score = rng.normal(np.where(labels == 1, mu, -mu), 1.0)
        logit = 2 * mu * score + np.log(self.calibration_prior / (1 - self.calibration_prior))
        p1 = 1 / (1 + np.exp(-logit))
        return np.stack([1 - p1, p1], 1)

    def heldout(self, rng: np.random.Generator, per_group: int) -> HeldOut:
        """A held-out set with ``per_group`` images of each true group."""
        labels = np.repeat([0, 1], per_group)
        return HeldOut(labels=labels, probs=self.probs(rng, labels), predicted=None)

    def matrices(self, m: int = 400_000, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
        """The true ``C`` and ``S`` (Monte Carlo with ``m`` images per group)."""
        held = self.heldout(np.random.default_rng(seed), m)
        return held.matrix(soft=False), held.matrix(soft=True)


def _draw(rng: np.random.Generator, clf: SimulatedClassifier, q1: float, n: int) -> np.ndarray:
    return clf.probs(rng, (rng.random(n) < q1).astype(int))


def _covers(entry: dict[str, Any], truth: float, tol: float = 1e-12) -> bool:
    lo, hi = entry["ci"]
    return bool(lo - tol <= truth <= hi + tol)


def coverage_study(
    *,
    male_share: float,
    n: int,
    reps: int,
    target: Sequence[float] = (0.42, 0.58),
    per_group: int = 200,
    n_boot: int = 1000,
    confidence: float = 0.95,
    classifier: SimulatedClassifier | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Coverage of every share and distance interval, and the test's rejection rate.

    Args:
        male_share: True share of group 1 ("male"); group 0 is "female".
        n: Generated images per audit.
        reps: Simulated audits.
        target: Target shares (female, male).
        per_group: Held-out images per true group.
        n_boot: Bootstrap replicates per audit.
        confidence: Interval level.
        classifier: The simulated classifier.
        seed: Seed of the study.

    Returns:
        Per reading: coverage (fraction of audits whose interval holds the estimand), mean
        width, censored fraction; per distance: coverage and the fraction of intervals holding
        0; ``chi_square_rejection`` at α = 0.05; the settings.
    """
    clf = classifier or SimulatedClassifier()
    rng = np.random.default_rng(seed)
    target = np.asarray(target, dtype=np.float64)
    q = np.array([1 - male_share, male_share])
    c_true, s_true = clf.matrices()
    estimands = {"raw": q @ c_true, "probabilistic": q @ s_true, "acc": q, "pacc": q, "em": q}
    fns = _distance_functions(target, DEFAULT_SMOOTHING)
    true_dist = {name: fns[name](q) for name in DISTANCES}
    hits: dict[str, list[bool]] = {r: [] for r in estimands}
    widths: dict[str, list[float]] = {r: [] for r in estimands}
    censored: dict[str, list[bool]] = {r: [] for r in estimands}
    dist_hits: dict[str, dict[str, list[bool]]] = {}
    zero: dict[str, dict[str, list[bool]]] = {}
    rejected = []
    for rep in range(reps):
        held = clf.heldout(rng, per_group)
        s = summarise(
            _draw(rng, clf, male_share, n),
            ["female", "male"],
            target,
            heldout=held,
            n_boot=n_boot,
            confidence=confidence,
            seed=seed * 100_003 + rep,
        )
        for r, truth in estimands.items():
            e = s["proportions"][r]["male"]
            hits[r].append(_covers(e, truth[1]))
            widths[r].append(e["ci"][1] - e["ci"][0])
            censored[r].append(bool(e.get("censored")))
        for r, d in s["distances"].items():
            for name in DISTANCES:
                dist_hits.setdefault(r, {}).setdefault(name, []).append(
                    _covers(d[name], true_dist[name])
                )
                zero.setdefault(r, {}).setdefault(name, []).append(d[name]["ci"][0] <= 0)
        rejected.append(s["chi_square"]["p_value"] <= 0.05)
    return {
        "male_share": male_share,
        "n": n,
        "reps": reps,
        "per_group": per_group,
        "n_boot": n_boot,
        "confidence": confidence,
        "target": target.tolist(),
        "separation": clf.separation,
        "true_error_rates": {"female_as_male": c_true[0, 1], "male_as_female": c_true[1, 0]},
        "shares": {
            r: {
                "coverage": float(np.mean(hits[r])),
                "mean_width": float(np.mean(widths[r])),
                "censored": float(np.mean(censored[r])),
                "estimand": "true share"
                if r in ("acc", "pacc", "em")
                else f"male share of q·{'C' if r == 'raw' else 'S'}",
            }
            for r in estimands
        },
        "distances": {
            r: {
                name: {
                    "coverage": float(np.mean(v)),
                    "contains_zero": float(np.mean(zero[r][name])),
                }
                for name, v in per.items()
            }
            for r, per in dist_hits.items()
        },
        "chi_square_rejection": float(np.mean(rejected)),
    }


def dispersion_study(
    *,
    male_share: float,
    n_per_prompt: int,
    prompts: int,
    reps: int,
    target: Sequence[float] = (0.42, 0.58),
    per_group: int = 200,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Coverage of the across-prompt intervals (mean and worst-prompt |gap|); size of the test.

    Every prompt has the same true share, so the true mean and worst |gap| are both
    ``|male_share - target|`` and the homogeneity test's null holds.
    """
    clf = SimulatedClassifier()
    rng = np.random.default_rng(seed)
    target = np.asarray(target, dtype=np.float64)
    truth = abs(male_share - target[1])
    mean_hits, worst_hits, rejected = [], [], []
    for rep in range(reps):
        held = clf.heldout(rng, per_group)
        ests, sums = [], []
        for p in range(prompts):
            probs = _draw(rng, clf, male_share, n_per_prompt)
            est = estimate_shares(probs, held, n_boot=n_boot, seed=rep * 1000 + p)
            ests.append(est)
            sums.append(
                summarise(probs, ["female", "male"], target, heldout=held, n_boot=0, estimates=est)
            )
        d = dispersion(
            ests,
            sums,
            [f"p{i}" for i in range(prompts)],
            ["female", "male"],
            target,
            reading=DEFAULT_READING,
            confidence=confidence,
        )
        mean_hits.append(_covers(d["mean_abs_gap"], truth))
        worst_hits.append(_covers(d["worst_prompt"]["abs_gap"], truth))
        rejected.append((d["homogeneity"]["p_value"] or 1.0) <= 0.05)
    return {
        "male_share": male_share,
        "n_per_prompt": n_per_prompt,
        "prompts": prompts,
        "reps": reps,
        "mean_abs_gap_coverage": float(np.mean(mean_hits)),
        "worst_prompt_coverage": float(np.mean(worst_hits)),
        "homogeneity_rejection": float(np.mean(rejected)),
    }


def paired_study(
    *,
    before: float,
    after: float,
    n: int,
    reps: int,
    per_group: int = 200,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Coverage of the paired change in the corrected male share; size of McNemar's test.

    Pairs share a uniform draw ``u``: the image is male before if ``u < before`` and after if
    ``u < after`` (the same seed keeps most images' sex), and the classifier reads each image
    independently.
    """
    clf = SimulatedClassifier()
    rng = np.random.default_rng(seed)
    hits, widths, rejected = [], [], []
    for rep in range(reps):
        held = clf.heldout(rng, per_group)
        u = rng.random(n)
        a = clf.probs(rng, (u < before).astype(int))
        b = clf.probs(rng, (u < after).astype(int))
        r = paired_change(
            a,
            b,
            ["female", "male"],
            heldout_before=held,
            heldout_after=held,
            same_classifier=True,
            reading=DEFAULT_READING,
            n_boot=n_boot,
            confidence=confidence,
            seed=rep,
        )
        e = r["change"]["male"]
        hits.append(_covers(e, after - before))
        widths.append(e["ci"][1] - e["ci"][0])
        rejected.append(r["mcnemar"]["female"]["p_value"] <= 0.05)
    return {
        "before": before,
        "after": after,
        "n": n,
        "reps": reps,
        "change_coverage": float(np.mean(hits)),
        "mean_width": float(np.mean(widths)),
        "mcnemar_rejection": float(np.mean(rejected)),
    }


@dataclass(frozen=True, kw_only=True)
class SimulatedCategorical:
    """A calibrated K-group classifier of one attribute with known error rates.

    An image of true level ``y`` has a score vector ``separation · e_y + N(0, I)``; its
    probabilities ``softmax(separation · score)`` are the exact posterior under a uniform prior.

    Args:
        k: Number of levels.
        separation: Distance of the score means (larger: fewer errors).
    """

    k: int
    separation: float = 1.6

    def probs(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(n, k)`` of images with true ``labels``."""
        score = rng.normal(0.0, 1.0, size=(len(labels), self.k))
        score[np.arange(len(labels)), labels] += self.separation
        z = self.separation * score
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def heldout(self, rng: np.random.Generator, per_group: int) -> HeldOut:
        """A held-out set with ``per_group`` images of each true level."""
        labels = np.repeat(np.arange(self.k), per_group)
        return HeldOut(labels=labels, probs=self.probs(rng, labels), predicted=None)


def joint_coverage_study(
    *,
    truth: np.ndarray,
    n: int,
    reps: int,
    classifiers: Sequence[SimulatedCategorical] | None = None,
    per_group: int = 300,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Joint cells read by one simulated classifier per attribute: do the intervals hold?

    Each replication draws a held-out set per classifier and ``n`` images from the joint
    distribution ``truth`` (shape ``(k₁, k₂, …)``); each image's attribute levels are read by
    its own classifier, independently given the cell (the assumption of
    :class:`~medfair_audit.metrics.estimates.ProductHeldOut`). It records, for each corrected
    reading, whether each cell's interval holds the true cell share, whether all of them do at
    the simultaneous (Bonferroni) level, and how often Holm's procedure over the cell tests
    rejects a true null (the target equals the truth): the family-wise error.

    Returns:
        Per reading: per-cell coverage, mean width, simultaneous coverage; the family-wise
        rejection rate; the settings.
    """
    from .estimates import ProductHeldOut, share_intervals, simultaneous_level
    from .frame import cell_tests

    truth = np.asarray(truth, dtype=np.float64)
    shape = truth.shape
    clfs = list(classifiers or [SimulatedCategorical(k=k) for k in shape])
    q = truth.ravel()
    k = len(q)
    rng = np.random.default_rng(seed)
    readings = ("acc", "pacc", "em")
    hits = {r: np.zeros(k) for r in readings}
    widths = {r: np.zeros(k) for r in readings}
    joint_hits = dict.fromkeys(readings, 0)
    family_rejections = 0
    level = simultaneous_level(confidence, k)
    for rep in range(reps):
        held = ProductHeldOut([c.heldout(rng, per_group) for c in clfs])
        cells = rng.choice(k, size=n, p=q)
        levels = np.unravel_index(cells, shape)
        probs = clfs[0].probs(rng, levels[0])
        for c, lv in zip(clfs[1:], levels[1:], strict=True):
            p = c.probs(rng, lv)
            probs = (probs[:, :, None] * p[:, None, :]).reshape(n, -1)
        est = estimate_shares(probs, held, n_boot=n_boot, seed=seed * 100_003 + rep)
        for r in readings:
            cis = np.array(share_intervals(est, r, confidence))
            inside = (cis[:, 0] - 1e-12 <= q) & (q <= cis[:, 1] + 1e-12)
            hits[r] += inside
            widths[r] += cis[:, 1] - cis[:, 0]
            sim = np.array(share_intervals(est, r, level))
            joint_hits[r] += bool(((sim[:, 0] - 1e-12 <= q) & (q <= sim[:, 1] + 1e-12)).all())
        tests = cell_tests(est, "pacc", q, confidence)
        family_rejections += any(t["reject"] for t in tests)
    return {
        "truth": truth.tolist(),
        "n": n,
        "reps": reps,
        "per_group": per_group,
        "n_boot": n_boot,
        "confidence": confidence,
        "separations": [c.separation for c in clfs],
        "shares": {
            r: {
                "coverage_per_cell": (hits[r] / reps).tolist(),
                "mean_width_per_cell": (widths[r] / reps).tolist(),
                "simultaneous_coverage": joint_hits[r] / reps,
            }
            for r in readings
        },
        "holm_familywise_rejection": family_rejections / reps,
    }
