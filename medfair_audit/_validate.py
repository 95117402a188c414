"""Checks shared by the config dataclasses."""

from __future__ import annotations

import math
from typing import Any

from .exceptions import ConfigError

__all__ = ["MAX_COUNT", "require_count", "require_rate"]

#: The largest count (steps, epochs, images, batch size) a config accepts: a guard against a
#: typo (a few zeros too many) that would otherwise start a run of years or fill the memory.
MAX_COUNT = 10_000_000


def require_count(
    config: Any, minimum: int, *names: str, maximum: int = MAX_COUNT, param: str | None = None
) -> None:
    """Raise :class:`ConfigError` naming the first field of ``config`` out of its range.

    ``param`` names the argument in the message when it differs from the field (one field only).
    """
    for name in names:
        value = getattr(config, name)
        if not minimum <= value <= maximum:
            raise ConfigError(
                f"expected {minimum} to {maximum:,}, got {value:,}", param=param or name
            )


def require_rate(config: Any, *names: str) -> None:
    """Raise :class:`ConfigError` naming the first field that is not a finite number > 0."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"expected a finite number > 0, got {value}", param=name)
