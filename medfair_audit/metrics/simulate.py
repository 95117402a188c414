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
from .frame import dispersion, over_prompts, summarise
from .functional import DEFAULT_SMOOTHING
from .paired import paired_change

__all__ = [
    "SimulatedCategorical",
    "SimulatedClassifier",
    "censored_study",
    "conditional_study",
    "coverage_study",
    "dispersion_study",
    "joint_coverage_study",
    "paired_study",
    "sequential_study",
    "wording_study",
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


def conditional_study(
    *,
    male_share_when_asked: Sequence[float],
    weights: Sequence[float],
    n_per_condition: int,
    reps: int,
    per_group: int = 200,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Coverage of a conditioned model's readings: fidelity per request, and the marginal.

    Condition ``i`` (asking for "female", then "male", ...) gives images whose true male share
    is ``male_share_when_asked[i]``; a use requests condition ``i`` with probability
    ``weights[i]``, so the true marginal male share is ``Σ w_i · share_i``. Each replication
    draws a held-out set and ``n_per_condition`` images per condition, then checks each
    condition's PACC interval against its true share and the marginal's
    (:func:`~medfair_audit.metrics.estimates.mixture_estimates`) against the true marginal.
    The held-out draw is shared by all conditions, as one classifier reads them all.
    """
    from .estimates import mixture_estimates, share_intervals

    clf = SimulatedClassifier()
    rng = np.random.default_rng(seed)
    shares = np.asarray(male_share_when_asked, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    truth = float(w @ shares)
    per_hits: list[list[bool]] = [[] for _ in shares]
    hits, widths = {"acc": [], "pacc": []}, {"acc": [], "pacc": []}
    for rep in range(reps):
        held = clf.heldout(rng, per_group)
        parts = [_draw(rng, clf, q, n_per_condition) for q in shares]
        for i, probs in enumerate(parts):
            est = estimate_shares(probs, held, n_boot=n_boot, seed=rep * 1000 + i)
            lo, hi = share_intervals(est, "pacc", confidence)[1]
            per_hits[i].append(bool(lo - 1e-12 <= shares[i] <= hi + 1e-12))
        mix = mixture_estimates(parts, w, held, n_boot=n_boot, seed=rep * 1000 + 999)
        for reading in hits:
            lo, hi = share_intervals(mix, reading, confidence)[1]
            hits[reading].append(bool(lo - 1e-12 <= truth <= hi + 1e-12))
            widths[reading].append(hi - lo)
    return {
        "male_share_when_asked": shares.tolist(),
        "weights": w.tolist(),
        "true_marginal": truth,
        "n_per_condition": n_per_condition,
        "reps": reps,
        "per_group": per_group,
        "n_boot": n_boot,
        "confidence": confidence,
        "fidelity_coverage": [float(np.mean(h)) for h in per_hits],
        "marginal": {
            r: {"coverage": float(np.mean(hits[r])), "mean_width": float(np.mean(widths[r]))}
            for r in hits
        },
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


def wording_study(
    *,
    male_share: float,
    between_sd: float,
    prompts: int,
    n_per_prompt: int,
    reps: int,
    per_group: int = 200,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Coverage of :func:`~medfair_audit.metrics.frame.over_prompts` with known truth.

    Each replication draws a held-out set, then ``prompts`` wordings whose true male shares
    come from a beta distribution with mean ``male_share`` and sd ``between_sd`` (every prompt
    the same share when 0), and ``n_per_prompt`` images of each. The estimand is the
    population mean ``male_share``, not the mean of the drawn prompts. Also returns how often
    the interval of the pooled share of the same images (which treats the prompts as fixed)
    covers it.
    """
    clf = SimulatedClassifier()
    rng = np.random.default_rng(seed)
    if between_sd > 0:
        nu = male_share * (1 - male_share) / between_sd**2 - 1
        a, b = male_share * nu, (1 - male_share) * nu
    hits, pooled_hits, widths, sds = [], [], [], []
    for rep in range(reps):
        held = clf.heldout(rng, per_group)
        shares = rng.beta(a, b, prompts) if between_sd > 0 else np.full(prompts, male_share)
        draws = [_draw(rng, clf, q, n_per_prompt) for q in shares]
        ests = [
            estimate_shares(x, held, n_boot=n_boot, seed=rep * 1000 + p)
            for p, x in enumerate(draws)
        ]
        out = over_prompts(
            ests, ["female", "male"], reading=DEFAULT_READING, heldout=held,
            confidence=confidence, n_boot=n_boot, seed=rep,
        )  # fmt: skip
        male = out["shares"]["male"]
        hits.append(_covers(male, male_share))
        widths.append(male["ci"][1] - male["ci"][0])
        sds.append(out["between_prompt_sd"]["male"])
        pooled = summarise(
            np.concatenate(draws), ["female", "male"], np.array([0.42, 0.58]), heldout=held,
            n_boot=n_boot, seed=rep,
        )  # fmt: skip
        pooled_hits.append(_covers(pooled["proportions"][DEFAULT_READING]["male"], male_share))
    return {
        "male_share": male_share,
        "between_sd": between_sd,
        "prompts": prompts,
        "n_per_prompt": n_per_prompt,
        "reps": reps,
        "coverage": float(np.mean(hits)),
        "pooled_coverage": float(np.mean(pooled_hits)),
        "mean_width": float(np.mean(widths)),
        "mean_between_sd": float(np.mean(sds)),
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

    An image of true level ``y`` has a score vector ``d_y · e_y + N(0, I)`` (``d_y`` its level's
    separation); its probabilities ``softmax(d_j s_j − d_j² / 2)`` are the exact posterior under a
    uniform prior. Unequal separations give asymmetric errors (a weakly separated level is
    mistaken for the others more often), still calibrated.

    Args:
        k: Number of levels.
        separation: Distance of the score means (larger: fewer errors).
        separations: One separation per level (overrides ``separation``).
    """

    k: int
    separation: float = 1.6
    separations: tuple[float, ...] | None = None

    def _d(self) -> np.ndarray:
        d = self.separations if self.separations is not None else (self.separation,) * self.k
        if len(d) != self.k:
            raise ValueError(f"expected {self.k} separations, got {len(d)}")
        return np.asarray(d, dtype=np.float64)

    def probs(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(n, k)`` of images with true ``labels``."""
        d = self._d()
        score = rng.normal(0.0, 1.0, size=(len(labels), self.k))
        score[np.arange(len(labels)), labels] += d[labels]
        z = d * score - d**2 / 2
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def heldout(self, rng: np.random.Generator, per_group: int) -> HeldOut:
        """A held-out set with ``per_group`` images of each true level."""
        labels = np.repeat(np.arange(self.k), per_group)
        return HeldOut(labels=labels, probs=self.probs(rng, labels), predicted=None)


def censored_study(
    *,
    truth: Sequence[float],
    n: int,
    reps: int,
    classifier: SimulatedCategorical | None = None,
    per_group: int = 200,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """How often a censored share's one-sided bound holds the truth, given that it is censored.

    A share is censored when its corrected point estimate falls outside [0, 1]; the report then
    gives only its bound (``at_most`` the interval's upper end for a share below 0). Over all
    audits the interval still covers at about its level, but the audits that are censored are the
    ones whose data happened to lie low, so *given* censoring the bound misses the truth more
    often. This measures both, per group and corrected reading.

    Args:
        truth: True shares (``K`` groups, summing to 1).
        n: Generated images per audit.
        reps: Simulated audits.
        classifier: The simulated classifier (default: ``K`` levels, separation 1.6).
        per_group: Held-out images per true level.
        n_boot: Bootstrap replicates per audit.
        confidence: Interval level.
        seed: Seed of the study.

    Returns:
        Per reading and group: the censored fraction, the coverage over all audits, the coverage
        given censoring (``None`` when never censored) and the number of censored audits.
    """
    from .frame import proportions_entry

    q = np.asarray(truth, dtype=np.float64)
    k = len(q)
    clf = classifier or SimulatedCategorical(k=k)
    groups = [f"g{i}" for i in range(k)]
    rng = np.random.default_rng(seed)
    readings = ("acc", "pacc", "em")
    hits = {r: np.zeros(k) for r in readings}
    cens = {r: np.zeros(k) for r in readings}
    cens_hits = {r: np.zeros(k) for r in readings}
    for rep in range(reps):
        held = clf.heldout(rng, per_group)
        probs = clf.probs(rng, rng.choice(k, size=n, p=q))
        est = estimate_shares(probs, held, n_boot=n_boot, seed=seed * 100_003 + rep)
        for r in readings:
            entry = proportions_entry(est, r, groups, held, confidence)
            for i, g in enumerate(groups):
                bound = entry[g].get("bound", {})
                if "at_most" in bound:  # the one-sided claim the report makes
                    inside = q[i] <= bound["at_most"] + 1e-12
                elif "at_least" in bound:
                    inside = q[i] >= bound["at_least"] - 1e-12
                else:
                    inside = _covers(entry[g], q[i])
                hits[r][i] += inside
                if entry[g].get("censored"):
                    cens[r][i] += 1
                    cens_hits[r][i] += inside
    return {
        "truth": q.tolist(),
        "n": n,
        "reps": reps,
        "per_group": per_group,
        "n_boot": n_boot,
        "confidence": confidence,
        "separations": clf._d().tolist(),
        "shares": {
            r: {
                g: {
                    "censored": float(cens[r][i] / reps),
                    "coverage": float(hits[r][i] / reps),
                    "coverage_given_censored": (
                        float(cens_hits[r][i] / cens[r][i]) if cens[r][i] else None
                    ),
                    "n_censored": int(cens[r][i]),
                }
                for i, g in enumerate(groups)
            }
            for r in readings
        },
    }


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


def sequential_study(
    *,
    male_share: float,
    precision: float,
    reps: int,
    look_every: int = 256,
    max_n: int = 16_384,
    per_group: int = 4000,
    n_boot: int = 200,
    confidence: float = 0.95,
    classifier: SimulatedClassifier | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """An audit that stops at the first look where every share's interval is within ±precision.

    Two rules on the same image streams: the anytime-valid one
    (:class:`~medfair_audit.metrics.sequential.SequentialShares`) and the naive one that
    recomputes the fixed-n PACC bootstrap interval at every look and stops when it is narrow
    enough (peeking). For each: the coverage of the interval reported at stopping, the
    stopping n (the naive rule's is about the fixed n that reaches the same precision), the
    width at stopping, and how often it ran to ``max_n``.

    Returns:
        ``{"sequential": {...}, "naive": {...}}`` plus the settings.
    """
    from .estimates import share_intervals
    from .sequential import SequentialShares

    clf = classifier or SimulatedClassifier()
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, list]] = {
        rule: {"hit": [], "n": [], "width": [], "capped": []} for rule in ("sequential", "naive")
    }
    for rep in range(reps):
        held = clf.heldout(rng, per_group)
        stream = _draw(rng, clf, male_share, max_n)
        seq = SequentialShares(heldout=held, confidence=confidence)
        done: dict[str, tuple] = {}
        for stop in range(look_every, max_n + 1, look_every):
            last = stop == max_n
            if "sequential" not in done:
                seq.update(stream[stop - look_every : stop])
                region = seq.intervals()
                if region is not None and max(h - lo for lo, h in region) <= 2 * precision:
                    done["sequential"] = (region[1], stop, False)
                elif last:
                    done["sequential"] = (region[1] if region else (0.0, 1.0), stop, True)
            if "naive" not in done:
                est = estimate_shares(stream[:stop], held, n_boot=n_boot, seed=seed * 100_003 + rep)
                ci = share_intervals(est, DEFAULT_READING, confidence)[1]
                if ci[1] - ci[0] <= 2 * precision or last:
                    done["naive"] = (ci, stop, last and ci[1] - ci[0] > 2 * precision)
            if len(done) == 2:
                break
        for rule, ((lo, hi), n, capped) in done.items():
            rows[rule]["hit"].append(lo - 1e-12 <= male_share <= hi + 1e-12)
            rows[rule]["n"].append(n)
            rows[rule]["width"].append(hi - lo)
            rows[rule]["capped"].append(capped)
    return {
        "male_share": male_share,
        "precision": precision,
        "reps": reps,
        "look_every": look_every,
        "max_n": max_n,
        "per_group": per_group,
        "n_boot": n_boot,
        "confidence": confidence,
        **{
            rule: {
                "coverage": float(np.mean(r["hit"])),
                "median_n": float(np.median(r["n"])),
                "mean_n": float(np.mean(r["n"])),
                "mean_width": float(np.mean(r["width"])),
                "capped": float(np.mean(r["capped"])),
            }
            for rule, r in rows.items()
        },
    }
