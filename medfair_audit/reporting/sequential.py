"""The ``--precision`` audit in the report: its anytime-valid interval as a headline row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["SEQUENTIAL_NOTE", "has_sequential", "sequential_cells"]

#: The caption's note when a column stopped by ``--precision``.
SEQUENTIAL_NOTE = (
    "anytime-valid: the interval of a --precision audit at its data-dependent stop (a betting "
    "confidence sequence with the held-out errors), valid however the stop fell; the other rows "
    "are fixed-n estimates of the images drawn, which such a stop can bias"
)


def sequential_cells(columns: Sequence[Any], group: str) -> list[dict[str, Any]] | None:
    """One interval-only cell per column for ``group`` (``None`` if no column stopped early)."""
    if not any(c.data.get("sequential") for c in columns):
        return None
    cells = []
    for c in columns:
        intervals = (c.data.get("sequential") or {}).get("intervals") or {}
        ci = intervals.get(group)
        cells.append(
            {"value": None, "ci": tuple(ci) if ci else None, "bound": None, "interval_only": True}
        )
    return cells


def has_sequential(rows: Sequence[Sequence[str]]) -> bool:
    """Whether a formatted table has an anytime-valid row."""
    return any("anytime-valid" in row[0] for row in rows)
