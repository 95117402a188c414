"""Checks shared by the config dataclasses."""

from __future__ import annotations

from typing import Any

from .exceptions import ConfigError

__all__ = ["require_at_least"]


def require_at_least(config: Any, minimum: int, *names: str) -> None:
    """Raise :class:`ConfigError` naming the first field of ``config`` below ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ConfigError(f"expected ≥ {minimum}, got {value}", param=name)
