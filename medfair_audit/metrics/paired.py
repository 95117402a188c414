"""Before and after with the same seeds: a paired design.

Two audits made with the same prompts, ``--seed`` and image count start image ``i`` of prompt
``p`` from the same noise, so the images pair up. Pairs are compared as pairs: McNemar's exact
test on each group's label (did more images leave the group than enter it?), the share of pairs
whose label moved each way, and a paired bootstrap of the change in the corrected share that
resamples pairs (the same draw on both sides) and, when both audits used the same classifier,
one set of held-out resamples for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from .estimates import HeldOut, estimate_shares, percentile_interval

__all__ = ["paired_change"]


def _draws(heldout: HeldOut, rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
    out = {"hard": heldout.resample(rng, b, soft=False)}
    if heldout.has_soft:
        out["soft"] = heldout.resample(rng, b, soft=True)
    return out


def paired_change(
    before: np.ndarray,
    after: np.ndarray,
    groups: Sequence[str],
    *,
    heldout_before: HeldOut,
    heldout_after: HeldOut,
    same_classifier: bool,
    reading: str,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired statistics of two audits' probabilities for the same images.

    Args:
        before: Probabilities ``(N, K)`` of the first audit, one row per pair.
        after: Probabilities ``(N, K)`` of the second audit, rows aligned with ``before``.
        groups: Group names.
        heldout_before: The first audit's classifier held-out outputs.
        heldout_after: The second audit's (the same object when ``same_classifier``).
        same_classifier: Both audits used the same classifier (shared held-out resamples).
        reading: The corrected reading whose change is estimated.
        n_boot: Bootstrap replicates.
        confidence: Interval level.
        seed: Seed of the replicates.

    Returns:
        JSON-ready: ``n_pairs``, ``flips`` (from → to → share of pairs), ``changed``,
        ``mcnemar`` per group, ``change`` per group (after − before, with interval).
    """
    a, b = np.asarray(before, np.float64), np.asarray(after, np.float64)
    n, k = a.shape
    la, lb = a.argmax(1), b.argmax(1)
    flips = {
        groups[i]: {groups[j]: float(((la == i) & (lb == j)).sum() / n) for j in range(k) if j != i}
        for i in range(k)
    }
    mcnemar = {}
    for g, name in enumerate(groups):
        left = int(((la == g) & (lb != g)).sum())  # images that left the group
        entered = int(((la != g) & (lb == g)).sum())
        p = stats.binomtest(left, left + entered, 0.5).pvalue if left + entered else 1.0
        mcnemar[name] = {"left": left, "entered": entered, "p_value": float(p)}
        if k == 2:
            break  # one test: leaving one group is entering the other
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)
    draws_a = _draws(heldout_before, rng, n_boot)
    draws_b = draws_a if same_classifier else _draws(heldout_after, rng, n_boot)
    est_a = estimate_shares(
        a, heldout_before, n_boot=n_boot, image_weights=weights, confusion_draws=draws_a
    )
    est_b = estimate_shares(
        b, heldout_after, n_boot=n_boot, image_weights=weights, confusion_draws=draws_b
    )
    change = {}
    for i, name in enumerate(groups):
        pa, pb = est_a.point[reading][i], est_b.point[reading][i]
        diff = np.clip(est_b.samples[reading][:, i], 0, 1) - np.clip(
            est_a.samples[reading][:, i], 0, 1
        )
        lo, hi = percentile_interval((diff + 1) / 2, confidence)  # map [-1, 1] to [0, 1]
        entry: dict[str, Any] = {"value": float(pb - pa), "ci": [2 * lo - 1, 2 * hi - 1]}
        if not (0 <= pa <= 1 and 0 <= pb <= 1):
            bound = {"at_least": 2 * lo - 1} if pb > pa else {"at_most": 2 * hi - 1}
            entry.update(value=None, censored=True, bound=bound)
            entry["note"] = "a share is censored on one side: only the interval is reported"
        change[name] = entry
    return {
        "n_pairs": n,
        "flips": flips,
        "changed": float((la != lb).mean()),
        "mcnemar": mcnemar,
        "change": change,
        "reading": reading,
        "method": "pairs matched on (prompt, seed); McNemar exact binomial test; paired "
        f"bootstrap ({n_boot} draws of pairs"
        + (", one held-out resample shared by both audits)" if same_classifier else ")"),
    }
