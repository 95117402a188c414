"""The headline caption's notes, chosen once for every format (HTML, Markdown, LaTeX)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CENSORED_CAPTION", "CONSTRAINED_NOTE", "SEQUENTIAL_NOTE", "caption_notes"]

#: How the captions read a censored value (README, "Calibration": censored bounds).
CENSORED_CAPTION = (
    "censored values are shown as their bound, which among censored audits misses the truth "
    "more often than the interval's level"
)

#: The caption's note when a headline cell holds a simplex-constrained value.
CONSTRAINED_NOTE = (
    "(constrained): projected onto the simplex because another group is censored, beside the "
    "unconstrained estimate's interval, which need not contain it"
)

#: The caption's note when a column stopped by ``--precision``.
SEQUENTIAL_NOTE = (
    "anytime-valid: the interval of a --precision audit at its data-dependent stop (a betting "
    "confidence sequence with the held-out errors), valid however the stop fell; the other rows "
    "are fixed-n estimates of the images drawn, which such a stop can bias"
)


def caption_notes(rows: Sequence[Sequence[str]]) -> list[str]:
    """The notes a formatted headline table needs (simplex-constrained values, anytime rows)."""
    notes = []
    if any("(constrained)" in cell for row in rows for cell in row):
        notes.append(CONSTRAINED_NOTE)
    if any("anytime-valid" in row[0] for row in rows):
        notes.append(SEQUENTIAL_NOTE)
    return notes
