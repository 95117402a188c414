"""Progress reporting without a UI dependency.

Long-running library functions take ``progress: ProgressCallback | None``. They call it with a
:class:`ProgressEvent` as work advances; the CLI turns events into a progress bar, tests collect
them, and library users may log them. The library itself never imports a terminal UI package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProgressCallback", "ProgressEvent", "report"]


@dataclass(frozen=True, kw_only=True)
class ProgressEvent:
    """One step of progress.

    Attributes:
        stage: Short name of the work (e.g. ``"phantom"``).
        completed: Units done so far in this stage.
        total: Units in the stage, or ``None`` when unknown.
        info: Extra numbers to display (loss, images/s, ...).
    """

    stage: str
    completed: int
    total: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def report(
    progress: ProgressCallback | None,
    stage: str,
    completed: int,
    total: int | None = None,
    **info: Any,
) -> None:
    """Send one event to ``progress`` if a callback was given."""
    if progress is not None:
        progress(ProgressEvent(stage=stage, completed=completed, total=total, info=info))
