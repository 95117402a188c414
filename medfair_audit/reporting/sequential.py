"""The ``--precision`` audit in the report: its anytime-valid interval as a headline row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["sequential_cells"]


def sequential_cells(columns: Sequence[Any], group: str) -> list[dict[str, Any]] | None:
    """One interval-only cell per column for ``group`` (``None`` if no column stopped early)."""
    if not any(c.result.sequential for c in columns):
        return None
    cells = []
    for c in columns:
        seq = c.result.sequential
        ci = (seq.intervals or {}).get(group) if seq else None
        cells.append(
            {"value": None, "ci": tuple(ci) if ci else None, "bound": None, "interval_only": True}
        )
    return cells
