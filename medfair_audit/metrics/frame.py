"""The audit's numbers for one set of images, and across prompts, as JSON-ready dictionaries.

:func:`summarise` turns per-image probabilities and the classifier's held-out outputs into
every reading's shares (with intervals that carry the classifier's own error), their distances to
the target (with intervals that can contain 0), a goodness-of-fit test with the right null and
the sample size a requested precision needs. :func:`dispersion` compares prompts. Every group
appears in every table, empty ones too. Readings are described in
:data:`~medfair_audit.metrics.estimates.READINGS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from .estimates import (
    CENSORED_NOTE,
    CORRECTED_READINGS,
    HeldOut,
    ShareEstimates,
    distance_interval,
    distances_with_intervals,
    estimate_shares,
    gof_test,
    headline_reading,
    region_from_intervals,
    sample_size,
    share_intervals,
    simultaneous_level,
)
from .functional import (
    DEFAULT_SMOOTHING,
    MAX_CONDITION,
    corrected_proportions,
    em_boundary_limit,
    stationary_prior,
)

__all__ = [
    "LABEL_SHIFT_Z",
    "cell_tests",
    "dispersion",
    "holm_adjust",
    "over_prompts",
    "proportions_entry",
    "shen_bias",
    "summarise",
]

_TOL = 1e-9
#: How far (in bootstrap standard deviations) a corrected share must lie beyond [0, 1] before
#: the audit says label shift fails. A group truly absent from the images, with label shift
#: holding, puts its corrected share below 0 by chance about half the time and its whole
#: percentile interval below 0 a few percent of the time; past 3.29 sd (one-sided 0.05%) it
#: almost never goes.
LABEL_SHIFT_Z = 3.29
BEYOND_NOTE = (
    f"the corrected share lies beyond [0, 1] by more than {LABEL_SHIFT_Z} bootstrap standard "
    "deviations: these images do not look to the classifier as its held-out images do (label "
    "shift fails here), so the correction cannot place the share; read the classifier's labels "
    "instead"
)
BOUNDARY_NOTE = (
    "every bootstrap draw lies beyond [0, 1], but within the spread a group absent from the "
    "images (or present in all of them) shows when label shift holds: the share is at its bound"
)
EM_BOUNDARY_NOTE = (
    "the maximum-likelihood share sits on the boundary of [0, 1]: only a one-sided bound is "
    "reported"
)


def _beyond_the_spread(est: ShareEstimates, reading: str, i: int) -> bool:
    """Whether group ``i``'s share lies beyond [0, 1] by more than ``LABEL_SHIFT_Z`` sd.

    The point estimate against the bootstrap draws' standard deviation: evidence that label
    shift fails, not the chance excursion of a group that is truly absent.
    """
    draws = est.samples.get(reading)
    if draws is None or reading == "em" or len(draws) < 2:
        return False
    q = float(est.point[reading][i])
    sd = float(np.std(draws[:, i], ddof=1))
    return q < -LABEL_SHIFT_Z * sd or q > 1 + LABEL_SHIFT_Z * sd


def shen_bias(q: np.ndarray) -> float:
    """Per-prompt bias of Shen et al. (2024): mean over group pairs of ``|q_i - q_j|``."""
    q = np.asarray(q, dtype=np.float64)
    pairs = [abs(a - b) for i, a in enumerate(q) for b in q[i + 1 :]]
    return float(np.mean(pairs))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order.

    The i-th smallest p becomes ``max_{j ≤ i} min(1, (m − j + 1) p_(j))``; rejecting where the
    adjusted p ≤ α is Holm's procedure at level α.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def is_censored(est: ShareEstimates, reading: str) -> bool:
    """Whether a corrected reading's point estimate sits outside (ACC/PACC) or on (EM) [0, 1]."""
    q = est.point.get(reading)
    if reading not in CORRECTED_READINGS or q is None or not est.identifiable:
        return False
    if reading == "em":
        return bool(((q <= _TOL) | (q >= 1 - _TOL)).any())
    return bool(((q < -_TOL) | (q > 1 + _TOL)).any())


def proportions_entry(
    est: ShareEstimates,
    reading: str,
    groups: Sequence[str],
    heldout: HeldOut | None,
    confidence: float,
) -> dict[str, Any]:
    """``{group: {value, ci, method[, censored, bound, note]}}`` for one reading."""
    q = est.point[reading]
    cis = share_intervals(est, reading, confidence)
    method = {"raw": "wilson"}.get(reading, "bootstrap (images and held-out images)")
    if reading == "probabilistic":
        method = "bootstrap (images)"
    out: dict[str, Any] = {}
    if reading in CORRECTED_READINGS and not est.identifiable:
        cond = max(est.condition.values())
        note = (
            f"not identifiable: the confusion matrix's condition number {cond:.3g} exceeds "
            f"{MAX_CONDITION:g} (the classifier barely separates the groups)"
        )
        return {
            g: {"value": None, "ci": [0.0, 1.0], "method": method, "note": note} for g in groups
        }
    censored = is_censored(est, reading)
    if censored and reading == "em" and len(groups) == 2:
        # The bootstrap is degenerate on the boundary: invert the likelihood-ratio test instead.
        limit = em_boundary_limit(
            est.probs, stationary_prior(heldout.matrix(soft=True)), confidence
        )
        cis = [(1 - limit, 1 - limit), (limit, limit)]
        cis = [(min(c[0], q0), max(c[1], q0)) for c, q0 in zip(cis, np.clip(q, 0, 1), strict=True)]
    constrained = None
    if censored and reading != "em":
        m = heldout.matrix(soft=reading == "pacc")
        obs = est.point["raw" if reading == "acc" else "probabilistic"]
        constrained = corrected_proportions(obs, m)
    for i, g in enumerate(groups):
        lo, hi = cis[i]
        entry: dict[str, Any] = {"value": float(q[i]), "ci": [lo, hi], "method": method}
        edge = _TOL if reading == "em" else -_TOL  # EM sits on the boundary, ACC/PACC beyond it
        below, above = censored and q[i] < edge, censored and q[i] > 1 - edge
        if below or above:
            entry.update(
                value=None,
                censored="below" if below else "above",
                bound={"at_most": hi} if below else {"at_least": lo},
                note=CENSORED_NOTE if reading != "em" else EM_BOUNDARY_NOTE,
            )
            if _beyond_the_spread(est, reading, i):
                entry["note"] = BEYOND_NOTE
                entry["label_shift_fails"] = True
            elif hi - lo <= 0:  # zero width: no draw inside the simplex, but no evidence
                entry["note"] = BOUNDARY_NOTE
            if reading == "em" and len(groups) == 2:
                entry["method"] = "likelihood-ratio test inversion (the MLE is on the boundary)"
        elif constrained is not None:
            entry["value"] = float(constrained[i])
            entry["method"] += "; simplex-constrained because another group is censored"
        out[g] = entry
    return out


def _gaps(props: dict[str, Any], target: np.ndarray, groups: Sequence[str]) -> dict[str, Any]:
    out = {}
    for i, g in enumerate(groups):
        e = props[g]
        t = float(target[i])
        gap: dict[str, Any] = {
            "value": None if e["value"] is None else e["value"] - t,
            "ci": [e["ci"][0] - t, e["ci"][1] - t],
        }
        if e.get("censored"):
            gap["censored"] = e["censored"]
            gap["bound"] = {k: v - t for k, v in e["bound"].items()}
        out[g] = gap
    return out


def summarise(
    probs: np.ndarray,
    groups: Sequence[str],
    target: np.ndarray,
    *,
    heldout: HeldOut | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    smoothing: float = DEFAULT_SMOOTHING,
    half_width: float = 0.05,
    seed: int = 0,
    estimates: ShareEstimates | None = None,
) -> dict[str, Any]:
    """Shares, distances, test and sample size for one set of images.

    Args:
        probs: Calibrated probabilities ``(N, K)``, columns in ``groups`` order.
        groups: Group names.
        target: Target proportions ``(K,)``.
        heldout: The classifier's held-out outputs (``None``: raw and probabilistic only).
        n_boot: Bootstrap replicates (also the simulations of the goodness-of-fit test).
        confidence: Interval level.
        smoothing: ε of the KL smoothing toward uniform.
        half_width: Target interval half-width for the sample-size estimate.
        seed: Seed of the bootstrap.
        estimates: Precomputed :func:`~medfair_audit.metrics.estimates.estimate_shares`.

    Returns:
        A JSON-ready dictionary (see the README's audit.json section).
    """
    groups = list(groups)
    target = np.asarray(target, dtype=np.float64)
    est = estimates or estimate_shares(probs, heldout, n_boot=n_boot, seed=seed)
    proportions = {r: proportions_entry(est, r, groups, heldout, confidence) for r in est.point}
    distances = {}
    for r in est.point:
        if r == "probabilistic":
            continue
        censored = any(e.get("censored") for e in proportions[r].values())
        unknown = any(e["value"] is None and not e.get("censored") for e in proportions[r].values())
        d = distances_with_intervals(
            est, r, target, confidence=confidence, smoothing=smoothing, censored=censored
        )
        if unknown:
            for e in d.values():
                e["value"] = None
        distances[r] = {"gaps": _gaps(proportions[r], target, groups), **d}
    result: dict[str, Any] = {
        "n": est.n,
        "counts": dict(zip(groups, map(int, est.counts), strict=True)),
        "proportions": proportions,
        "distances": distances,
        "chi_square": gof_test(est.counts, target, heldout, n_sim=max(n_boot, 200), seed=seed),
        "condition_number": est.condition,
        "identifiable": est.identifiable,
    }
    reading = headline_reading(est.point)
    if heldout is not None and est.n > 1 and reading in est.point:
        result["sample_size"] = {
            "reading": reading,
            "half_width": half_width,
            "confidence": confidence,
            **sample_size(
                est.probs,
                heldout,
                est.point[reading],
                half_width=half_width,
                confidence=confidence,
                soft=reading == "pacc",
            ),
        }
    return result


def dispersion(
    estimates: Sequence[ShareEstimates],
    summaries: Sequence[dict[str, Any]],
    prompts: Sequence[str],
    groups: Sequence[str],
    target: np.ndarray,
    *,
    reading: str,
    confidence: float = 0.95,
    heldout: HeldOut | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How prompts differ: Shen et al.'s per-prompt bias, mean and worst gap, homogeneity.

    Intervals of the mean and the worst prompt hold for all prompts at once (Bonferroni over
    prompts), and come from each prompt's share region, so they can contain 0. With the
    classifier's ``heldout`` set, ``over_prompts`` is the share over the wordings the prompts
    were drawn from (:func:`over_prompts`; ``None`` where it does not apply).
    """
    target = np.asarray(target, dtype=np.float64)
    k, n_prompts = len(groups), len(prompts)
    uniform = np.full(k, 1 / k)
    joint = simultaneous_level(confidence, k, n_prompts)
    single = simultaneous_level(confidence, k)

    def gap_fn(q: np.ndarray) -> float:
        return float(np.abs(np.asarray(q) - target).max())

    per_prompt, gap_ranges, shen_ranges, gaps = [], [], [], []
    for est, summ in zip(estimates, summaries, strict=True):
        props = summ["proportions"].get(reading, {})
        censored = any(e.get("censored") for e in props.values())
        unknown = any(e["value"] is None for e in props.values())
        q = np.clip(est.point[reading], 0, 1)
        verts = region_from_intervals(share_intervals(est, reading, single))
        verts_joint = region_from_intervals(share_intervals(est, reading, joint))
        bias = {
            "value": None if unknown else shen_bias(q),
            "ci": list(distance_interval(shen_bias, verts, uniform)),
        }
        if censored:
            bias["censored"] = True
        per_prompt.append(bias)
        shen_ranges.append(distance_interval(shen_bias, verts_joint, uniform))
        gap_ranges.append(distance_interval(gap_fn, verts_joint, target))
        gaps.append(None if unknown else gap_fn(q))
    # A prompt whose share is censored has no point value: rank it by the lower end of its range.
    worst_i = int(
        np.argmax([g if g is not None else r[0] for g, r in zip(gaps, gap_ranges, strict=True)])
    )

    def mean_entry(values: list[float | None], ranges: list[tuple[float, float]]) -> dict:
        ci = [float(np.mean([r[0] for r in ranges])), float(np.mean([r[1] for r in ranges]))]
        if all(v is not None for v in values):
            return {"value": float(np.mean(values)), "ci": ci}
        return {"value": None, "ci": ci, "censored": True, "bound": {"at_least": ci[0]}}

    worst_gap: dict[str, Any] = {"value": gaps[worst_i], "ci": list(gap_ranges[worst_i])}
    if gaps[worst_i] is None:
        worst_gap.update(censored=True, bound={"at_least": gap_ranges[worst_i][0]})
    counts = np.array([[s["counts"][g] for g in groups] for s in summaries])
    used = counts.sum(0) > 0
    homogeneity: dict[str, Any] = {"statistic": None, "p_value": None, "df": None}
    if n_prompts > 1 and used.sum() > 1 and (counts.sum(1) > 0).all():
        chi = stats.chi2_contingency(counts[:, used], correction=False)
        homogeneity = {
            "statistic": float(chi.statistic),
            "p_value": float(chi.pvalue),
            "df": int(chi.dof),
        }
    homogeneity["test"] = (
        "Pearson chi-square of prompts × predicted groups: under 'every prompt has the same true "
        "shares' the label distributions are equal too (one classifier), so no correction is needed"
    )
    return {
        "reading": reading,
        "shen_bias": {
            "per_prompt": per_prompt,
            "mean": mean_entry([b["value"] for b in per_prompt], shen_ranges),
            "definition": "mean over pairs of groups of |share_i − share_j| (Shen et al. 2024)",
        },
        "mean_abs_gap": mean_entry(gaps, gap_ranges),
        "worst_prompt": {"index": worst_i, "prompt": prompts[worst_i], "abs_gap": worst_gap},
        "homogeneity": homogeneity,
        "over_prompts": over_prompts(
            estimates,
            groups,
            reading=reading,
            heldout=heldout,
            confidence=confidence,
            n_boot=n_boot,
            seed=seed,
        ),
        "note": f"{reading} reading; |gap| = largest |share − target| over groups; the mean and "
        "worst-prompt intervals hold jointly over prompts (Bonferroni)",
    }


def over_prompts(
    estimates: Sequence[ShareEstimates],
    groups: Sequence[str],
    *,
    reading: str,
    heldout: HeldOut | None,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The share over the wordings the prompts stand for, with prompts as a random sample.

    The audit's pooled share holds for *these* prompts. When the prompts are a few of the many
    ways a user could word the same request, which ones were picked moves the reading too, and
    prompts often differ by more than the images of one prompt do. This estimates the mean of
    the per-prompt true shares over the population of wordings the prompts were drawn from:
    the mean of the prompts' corrected shares, with a Student-t interval (``k − 1`` degrees of
    freedom) whose variance is the prompts' sample variance over ``k`` (the spread between
    prompts and within them) plus the variance shared by every prompt through the classifier's
    held-out matrix (the prompts' shares recomputed under ``n_boot`` resampled matrices).

    Only for a corrected reading with a held-out set (``acc``, ``pacc``), at least two prompts,
    every one identifiable, and at least two resampled matrices (``n_boot``); else ``None``. A
    mean outside ``[0, 1]`` is reported as a bound (censored), not a value.
    """
    k = len(estimates)
    if k < 2 or n_boot < 2 or heldout is None or reading not in ("acc", "pacc"):
        return None
    if not all(e.identifiable and reading in e.point for e in estimates):
        return None
    soft = reading == "pacc"
    points = np.stack([np.asarray(e.point[reading], dtype=np.float64) for e in estimates])
    observed = np.stack([_observed(e, soft) for e in estimates])  # (k, K)
    mats = heldout.resample(np.random.default_rng(seed), n_boot, soft=soft)  # (B, K, K)
    # q·M = observed for each resampled M: the prompts' shares move together with the matrix
    shared = observed[None] @ np.linalg.pinv(mats)  # (B, k, K)
    calib_var = shared.mean(1).var(0, ddof=1)
    mean, var = points.mean(0), points.var(0, ddof=1)
    within = np.array(
        [
            e.samples[reading].var(0, ddof=1) if e.samples.get(reading) is not None else np.nan
            for e in estimates
        ]
    ).mean(0)
    half = stats.t.ppf(0.5 + confidence / 2, k - 1) * np.sqrt(var / k + calib_var)
    shares: dict[str, Any] = {}
    for g, m, h in zip(groups, mean, half, strict=True):
        ci = [float(max(m - h, 0.0)), float(min(m + h, 1.0))]
        entry: dict[str, Any] = {"value": float(m), "ci": ci}
        if m > 1 or m < 0:
            side = "above" if m > 1 else "below"
            bound = {"at_least": ci[0]} if side == "above" else {"at_most": ci[1]}
            entry = {"value": None, "ci": ci, "censored": side, "bound": bound}
        shares[g] = entry
    # the prompts' points share one matrix, their bootstrap replicates resample it: take the
    # matrix's part out of the within-prompt variance before subtracting it
    within_images = within - shared.var(0, ddof=1).mean(0)
    between = np.sqrt(np.clip(var - within_images, 0, None))
    return {
        "reading": reading,
        "prompts": k,
        "shares": shares,
        "between_prompt_sd": {
            g: None if np.isnan(b) else float(b) for g, b in zip(groups, between, strict=True)
        },
        "method": f"mean of the prompts' {reading} shares; Student-t interval with {k - 1} "
        "degrees of freedom on the prompts' variance / k plus the held-out matrix's shared "
        "variance",
        "note": "prompts taken as a random sample of wordings: the interval holds for the mean "
        "over the wordings they were drawn from, not only for these prompts",
    }


def _observed(est: ShareEstimates, soft: bool) -> np.ndarray:
    """What a corrected reading inverts: the mean probability (PACC) or the label shares (ACC)."""
    if soft:
        return np.asarray(est.probs, dtype=np.float64).mean(0)
    return np.asarray(est.counts, dtype=np.float64) / max(est.n, 1)


def cell_tests(
    est: Any, reading: str, target: np.ndarray, confidence: float
) -> list[dict[str, Any]]:
    """Per cell, a bootstrap test of "share = target", then Holm's adjustment across cells.

    The p-value inverts the percentile interval: ``2 · min(P*(q ≤ t), P*(q ≥ t))`` over the
    bootstrap replicates (with the usual +1), so a cell whose interval at level 1 − α excludes its
    target has p ≤ α. Cells whose share is not identifiable get no p-value.
    """
    samples = est.samples.get(reading)
    out = []
    for i, t in enumerate(target):
        entry: dict[str, Any] = {"p_value": None}
        if samples is not None and est.identifiable:
            col = samples[:, i]
            col = col[np.isfinite(col)]
            if len(col):
                below = (1 + int((col <= t).sum())) / (len(col) + 1)
                above = (1 + int((col >= t).sum())) / (len(col) + 1)
                entry["p_value"] = min(1.0, 2 * min(below, above))
        out.append(entry)
    known = [i for i, e in enumerate(out) if e["p_value"] is not None]
    adjusted = holm_adjust([out[i]["p_value"] for i in known])
    alpha = 1 - confidence
    for i, p in zip(known, adjusted, strict=True):
        out[i]["p_holm"] = p
        out[i]["reject"] = bool(p <= alpha)
    for e in out:
        e.setdefault("p_holm", None)
        e.setdefault("reject", None)
    return out
