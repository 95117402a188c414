"""Report pieces for the audits' readers section: other readers and the support shares.

Who else read the images, and how far off the real images' support they lie (see
:mod:`medfair_audit.audit.readers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..metrics.results import Estimate, SupportShare

__all__ = [
    "READERS_CAPTION",
    "SUPPORT_CAPTION",
    "has_readers",
    "reader_rows",
    "support_rows",
]

READERS_CAPTION = (
    "Corrected (PACC) shares by other classifiers of the same attribute, and each one's "
    "difference from the audit's classifier with a paired-bootstrap 95% interval. Under label "
    "shift all estimate the same true share: an interval without 0 says a reading is bent "
    "by how the generated images look."
)

SUPPORT_CAPTION = (
    "Share of generated images whose 5th nearest real held-out image is farther than the real "
    "images' own 95th percentile, in each classifier's feature space (real images: 5%), by "
    "the audit classifier's label, with Wilson 95% intervals."
)


def has_readers(columns: Sequence[Any]) -> bool:
    """Whether any audit has a readers section (readers or support shares)."""
    return any(c.result.readers for c in columns)


def _delta(entry: Estimate) -> str:
    lo, hi = entry.ci or (None, None)
    interval = "" if lo is None else f" [{lo * 100:+.1f}, {hi * 100:+.1f}]"
    text = f"{entry.value * 100:+.1f} pp{interval}".replace("-", "−")  # a minus sign
    return text + " (censored)" if entry.censored else text


def reader_rows(columns: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """Per audit: its classifier's corrected share, then each reader's and the difference."""
    groups = columns[0].result.groups
    header = ["audit", "read by", "architecture"]
    for g in groups:
        header += [f"{g} share", f"Δ {g} vs audit's"]
    rows = []
    for c in columns:
        section = c.result.readers
        if not section or not section.readers:
            continue
        row = [c.label, f"{c.result.settings.classifier_name} (the audit's)", "–"]
        for g in groups:
            row += [c.result.share(g).text(".1%"), "–"]
        rows.append(row)
        for r in section.readers:
            row = [c.label, r.name, r.architecture]
            for g in groups:
                row += [r.proportions[g].text(".1%"), _delta(r.disagreement[g])]
            rows.append(row)
    return header, rows


def _share(entry: SupportShare) -> str:
    if entry.share is None:
        return f"– (n = {entry.n})"
    lo, hi = entry.ci
    return f"{entry.share:.0%} [{lo:.0%}, {hi:.0%}] (n = {entry.n})"


def support_rows(columns: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """Per audit and feature space: the share of images outside the real images' support."""
    groups = columns[0].result.groups
    header = ["audit", "feature space of", "all images", *groups]
    rows = []
    for c in columns:
        for s in c.result.readers.support if c.result.readers else ():
            rows.append(
                [c.label, s.space, _share(s.overall), *(_share(s.by_group[g]) for g in groups)]
            )
    return header, rows
