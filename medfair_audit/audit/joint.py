"""The several-attribute sections of an audit: each attribute's marginal and the joint cells.

With several attributes the audit's top-level numbers are over the joint cells (every estimate,
interval, distance and test of a one-attribute audit, with cells as groups). This module adds

* ``attributes``: per attribute, the same summary over its levels against the target's
  marginal, with its own classifier's held-out errors (or the joint classifier's, summed);
* ``joint``: the cell table (target, corrected share with its interval, n), a test per cell of
  "share = target" whose p-values are Holm-adjusted across the cells, cells with fewer than
  ``min_cell_n`` images flagged (not hidden), cells the target gives no mass, and Shen et al.'s
  bias (mean |qᵢ − qⱼ| over pairs) for the cells and for each attribute, every K.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..attributes import split_cell
from ..metrics.estimates import (
    distance_interval,
    estimate_shares,
    region_from_intervals,
    share_intervals,
    simultaneous_level,
)
from ..metrics.frame import cell_tests, holm_adjust, is_censored, shen_bias, summarise
from ..models.attributes import ClassifierSet
from ..target import Target

__all__ = [
    "independence_check",
    "joint_sections",
    "shen_bias_entry",
]


def shen_bias_entry(est: Any, reading: str, confidence: float) -> dict[str, Any]:
    """Shen et al.'s bias of one set of shares with an interval from their confidence region."""
    k = len(est.counts)
    q = est.point.get(reading)
    verts = region_from_intervals(share_intervals(est, reading, simultaneous_level(confidence, k)))
    lo, hi = distance_interval(shen_bias, verts, np.full(k, 1 / k))
    known = q is not None and np.isfinite(q).all() and est.identifiable
    if known and is_censored(est, reading):  # a share on or past the boundary: only a bound
        return {"value": None, "ci": [lo, hi], "k": k, "censored": True, "bound": {"at_least": lo}}
    return {"value": shen_bias(np.clip(q, 0, 1)) if known else None, "ci": [lo, hi], "k": k}


def independence_check(cset: ClassifierSet, alpha: float = 0.05) -> dict[str, Any] | None:
    """Does each classifier's accuracy, within its own attribute's level, depend on the others?

    The joint cells of per-attribute classifiers assume it does not. Each classifier's
    ``evaluation.json`` holds its held-out accuracy per cell of the attributes (fairlearn's
    ``MetricFrame`` over ``sex × age_band``); for each of its levels, a Pearson χ² test of
    correct/incorrect × the other attributes' levels asks whether accuracy varies. p-values are
    Holm-adjusted over all the tests. ``None`` when the held-out tables lack the cells.
    """
    from scipy import stats

    if not cset.multi or cset.joint_classifier:
        return None
    key = " × ".join(cset.attributes)
    tests = []
    for i, member in enumerate(cset.members):
        table = ((member.evaluation or {}).get("by_group") or {}).get(key)
        if not table:
            return None
        for level in member.groups:
            rows = []
            for cell, m in table.items():
                levels = split_cell(cell)
                if len(levels) == len(cset.attributes) and levels[i] == level:
                    n = round(m["count"])
                    correct = round(m["accuracy"] * n)
                    rows.append((cell, correct, n - correct))
            counts = np.array([[c, w] for _, c, w in rows])
            if len(rows) < 2 or (counts.sum(0) == 0).any() or (counts.sum(1) == 0).any():
                continue
            chi = stats.chi2_contingency(counts, correction=False)
            tests.append(
                {
                    "classifier": member.attribute,
                    "level": level,
                    "accuracy_by_cell": {cell: c / (c + w) for cell, c, w in rows if c + w > 0},
                    "p_value": float(chi.pvalue),
                }
            )
    if not tests:
        return None
    for t, p in zip(tests, holm_adjust([t["p_value"] for t in tests]), strict=True):
        t["p_holm"] = p
    doubtful = [t for t in tests if t["p_holm"] <= alpha]
    return {
        "tests": tests,
        "doubtful": bool(doubtful),
        "method": "per classifier and level, Pearson chi-square of held-out correct/incorrect "
        "across the other attributes' levels; Holm-adjusted over all tests",
    }


def _attribute_sections(
    cset: ClassifierSet,
    stored: np.ndarray,
    target: Target,
    *,
    reading: str,
    n_boot: int,
    confidence: float,
    smoothing: float,
    half_width: float,
    seed: int,
) -> tuple[dict[str, Any], list[str]]:
    """Each attribute's own summary (its marginal shares against its marginal target)."""
    warnings: list[str] = []
    attributes: dict[str, Any] = {}
    for i, (attr, levels) in enumerate(cset.levels.items()):
        marg = target.marginal(attr)
        t = np.array(marg.vector(list(levels)))
        held = cset.heldout_marginal(attr)
        a_seed = seed + 100_003 * (i + 1)
        est = estimate_shares(cset.marginal(stored, attr), held, n_boot=n_boot, seed=a_seed)
        summary = summarise(
            None,
            list(levels),
            t,
            heldout=held,
            n_boot=n_boot,
            confidence=confidence,
            smoothing=smoothing,
            half_width=half_width,
            seed=a_seed,
            estimates=est,
        )
        r = reading if reading in est.point else "raw"
        attributes[attr] = {
            "levels": list(levels),
            "target": dict(zip(levels, map(float, t), strict=True)),
            **summary,
            "shen_bias": shen_bias_entry(est, r, confidence),
        }
        if not summary["identifiable"]:
            warnings.append(
                f"attribute '{attr}': its classifier's confusion matrix is ill-conditioned; "
                "its corrected shares are reported as [0, 1]"
            )
    return attributes, warnings


def _cells(
    cset: ClassifierSet,
    overall: dict[str, Any],
    props: dict[str, Any],
    tests: list[dict[str, Any]],
    t_joint: np.ndarray,
    min_cell_n: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One entry per joint cell (share, test, size), and a warning per small cell."""
    cells, warnings = [], []
    for j, g in enumerate(cset.groups):
        n_g = int(overall["counts"][g])
        small = n_g < min_cell_n
        cells.append(
            {
                "cell": g,
                "levels": dict(zip(cset.attributes, split_cell(g), strict=True)),
                "target": float(t_joint[j]),
                "n": n_g,
                **{
                    k: props[g][k]
                    for k in ("value", "ci", "censored", "bound", "method", "note")
                    if k in props[g]
                },
                "small": small,
                **tests[j],
            }
        )
        if small:
            warnings.append(
                f"joint cell '{g}' holds {n_g} images (< {min_cell_n}): its interval is wide "
                "and its test has little power"
            )
    return cells, warnings


def _independence_warnings(check: dict[str, Any] | None, confidence: float) -> list[str]:
    """Where a classifier's accuracy on a level depends on the other attributes."""
    if not (check and check["doubtful"]):
        return []
    out = []
    for t in check["tests"]:
        if t["p_holm"] <= 1 - confidence:
            acc = t["accuracy_by_cell"].values()
            out.append(
                f"the {t['classifier']} classifier's held-out accuracy on '{t['level']}' "
                f"images depends on the other attributes ({min(acc):.2f}-{max(acc):.2f}, "
                f"Holm p = {t['p_holm']:.2g}): the independence behind the joint cells is "
                "doubtful there; a joint classifier does not need it"
            )
    return out


def joint_sections(
    cset: ClassifierSet,
    stored: np.ndarray,
    target: Target,
    overall: dict[str, Any],
    *,
    reading: str,
    min_cell_n: int,
    heldout: Any,
    n_boot: int,
    confidence: float,
    smoothing: float,
    half_width: float,
    seed: int,
    overall_estimates: Any = None,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``attributes`` and ``joint`` sections of ``audit.json``, and their warnings.

    ``overall_estimates`` are the replicates behind ``overall`` (drawn again from ``seed``
    when not given).
    """
    groups = cset.groups
    t_joint = np.array(target.vector(groups))
    attributes, warnings = _attribute_sections(
        cset, stored, target, reading=reading, n_boot=n_boot, confidence=confidence,
        smoothing=smoothing, half_width=half_width, seed=seed,
    )  # fmt: skip
    est = overall_estimates or estimate_shares(
        cset.joint(stored), heldout, n_boot=n_boot, seed=seed
    )
    r = reading if reading in est.point else "raw"
    tests = cell_tests(est, r, t_joint, confidence)
    cells, more = _cells(cset, overall, overall["proportions"][r], tests, t_joint, min_cell_n)
    warnings += more
    check = independence_check(cset, alpha=1 - confidence)
    warnings += _independence_warnings(check, confidence)
    zero = [g for g, t in zip(groups, t_joint, strict=True) if t == 0]
    joint = {
        "attributes": list(cset.attributes),
        "levels": {a: list(v) for a, v in cset.levels.items()},
        "reading": r,
        "method": cset.note,
        "min_cell_n": min_cell_n,
        "cells": cells,
        "zero_target_cells": zero,
        "independence_check": check,
        "holm": {
            "alpha": 1 - confidence,
            "rejected": [c["cell"] for c in cells if c["reject"]],
            "method": "per cell, bootstrap test of share = target (percentile-interval "
            "inversion); Holm's step-down adjustment across the cells controls the "
            "family-wise error at alpha",
        },
        "shen_bias": {
            "cells": shen_bias_entry(est, r, confidence),
            **{a: attributes[a]["shen_bias"] for a in cset.attributes},
            "definition": "mean over pairs of groups of |share_i − share_j| (Shen et al. 2024); "
            "intervals from the simultaneous box of the shares",
        },
    }
    if zero:
        warnings.append(
            f"the target gives no mass to {len(zero)} joint cell(s) ({', '.join(zero)}): any "
            "image there is off target, and KL to the target is capped by its smoothing"
        )
    return attributes, joint, warnings
