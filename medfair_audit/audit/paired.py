"""Paired statistics of two saved audits whose images share prompts and seeds.

Two audits made with the same prompts, ``--seed`` and image count draw image ``i`` of prompt
``p`` from the same noise, so their images pair up on (prompt text, seed) through each audit's
``images.csv``; :func:`medfair_audit.metrics.paired.paired_change` then compares the pairs.
"""

from __future__ import annotations

from typing import Any

from ..metrics.paired import paired_change

__all__ = ["paired_audits"]


def paired_audits(before: Any, after: Any, *, n_boot: int | None = None) -> dict[str, Any] | None:
    """Paired statistics of two audits (:class:`~medfair_audit.audit.result.AuditResult`).

    Returns:
        :func:`~medfair_audit.metrics.paired.paired_change`'s result, or ``None`` when the
        audits share no (prompt, seed) pair or either table lacks the groups' probabilities.
    """
    ta, tb = before.images, after.images
    if ta is None or tb is None or not len(ta) or not len(tb):
        return None
    groups = before.groups
    cols = [f"p_{g}" for g in groups]
    if any(c not in ta.columns or c not in tb.columns for c in cols):
        return None
    merged = ta.merge(tb, on=["prompt", "seed"], suffixes=("_a", "_b"))
    if not len(merged):
        return None
    same = before.settings.classifier_sha256 == after.settings.classifier_sha256
    held_a = before.heldout()
    held_b = held_a if same else after.heldout()
    return paired_change(
        merged[[f"{c}_a" for c in cols]].to_numpy(),
        merged[[f"{c}_b" for c in cols]].to_numpy(),
        groups,
        heldout_before=held_a,
        heldout_after=held_b,
        same_classifier=same,
        reading=before.default_reading,
        n_boot=n_boot or before.n_boot or 1000,
        confidence=before.confidence,
        seed=before.settings.seed,
    )
