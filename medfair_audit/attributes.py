"""Attributes and their joint cells: sex spellings, age bands and cell names.

Several attributes (sex, age band, tumour grade) are audited and remediated together through
their **joint cells**: one cell per combination of levels, named by joining the levels with
:data:`CELL_SEP` in the order of the attributes (``"female/<40"`` for sex × age band). Levels may
therefore not contain :data:`CELL_SEP`, ``,`` or ``=`` (the inline target syntax).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .exceptions import ConfigError

__all__ = [
    "AGE_BAND_EDGES",
    "CELL_SEP",
    "age_band",
    "age_band_labels",
    "cell_name",
    "cells",
    "check_level",
    "level_key",
    "normalise_sex",
    "parse_age_bands",
    "parse_classifier_specs",
    "sort_levels",
    "split_cell",
]

#: Separator of the levels in a joint cell's name.
CELL_SEP = "/"
#: Default age-band edges in years: ``<40``, ``40-59``, ``60+``.
AGE_BAND_EDGES: tuple[int, ...] = (40, 60)

SEX_ALIASES = {"m": "male", "male": "male", "f": "female", "female": "female"}


def normalise_sex(value: object) -> str | None:
    """Map ``M``/``Male``/``F``/``Female`` (any case, padded) to ``male``/``female``; else None."""
    return SEX_ALIASES.get(str(value).strip().lower())


def parse_age_bands(edges: Sequence[float] | str, *, param: str = "age_bands") -> tuple[int, ...]:
    """Validated band edges: whole years, strictly increasing, between 1 and 120."""
    if isinstance(edges, str):
        try:
            edges = [float(e) for e in edges.split(",") if e.strip()]
        except ValueError:
            raise ConfigError(
                f"expected comma-separated ages such as '40,60', got '{edges}'", param=param
            ) from None
    values = [float(e) for e in edges]
    if not values or any(not math.isfinite(e) or e != round(e) for e in values):
        raise ConfigError(f"expected whole-year edges such as 40,60, got {values}", param=param)
    out = tuple(int(e) for e in values)
    if any(b <= a for a, b in itertools.pairwise(out)) or out[0] < 1 or out[-1] > 120:
        raise ConfigError(
            f"expected increasing edges between 1 and 120, got {list(out)}", param=param
        )
    return out


def age_band_labels(edges: Sequence[int] = AGE_BAND_EDGES) -> tuple[str, ...]:
    """Band names for ``edges``: ``("<40", "40-59", "60+")`` for the default (40, 60)."""
    edges = tuple(edges)
    inner = [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
    return (f"<{edges[0]}", *inner, f"{edges[-1]}+")


def age_band(age: float, edges: Sequence[int] = AGE_BAND_EDGES) -> str:
    """The band of ``age`` (years; a band includes its lower edge)."""
    labels = age_band_labels(edges)
    for label, edge in zip(labels, edges, strict=False):
        if age < edge:
            return label
    return labels[-1]


def age_band_range(label: str, edges: Sequence[int] = AGE_BAND_EDGES) -> tuple[float, float]:
    """``[low, high)`` ages of a band (``-inf``/``inf`` at the ends)."""
    labels = age_band_labels(edges)
    i = labels.index(label)
    bounds = (-math.inf, *edges, math.inf)
    return float(bounds[i]), float(bounds[i + 1])


def level_key(level: str) -> tuple[int, float, str]:
    """Sort key that puts age-band-like levels in numeric order (``<40``, ``40-59``, ``60+``)."""
    import re

    m = re.fullmatch(r"\s*(<|<=|≤)?\s*(\d+(?:\.\d+)?)\s*(?:-\s*\d+(?:\.\d+)?|\+)?\s*", level)
    if m:
        return (0, float(m.group(2)) - (0.5 if m.group(1) else 0.0), level)
    return (1, 0.0, level)


def sort_levels(levels: Sequence[str]) -> list[str]:
    """Levels in :func:`level_key` order (plain names alphabetically, age bands by age)."""
    return sorted(dict.fromkeys(levels), key=level_key)


def check_level(level: str, *, param: str) -> str:
    """A level name usable in a joint cell (no ``/``, ``,`` or ``=``; not blank)."""
    level = str(level).strip()
    if not level or any(c in level for c in (CELL_SEP, ",", "=")):
        raise ConfigError(
            f"a group name must be non-empty and hold none of '{CELL_SEP}', ',' or '=': "
            f"got '{level}'",
            param=param,
        )
    return level


def cell_name(levels: Sequence[str]) -> str:
    """The joint cell of one level per attribute: ``("female", "<40")`` → ``"female/<40"``."""
    return CELL_SEP.join(levels)


def split_cell(name: str) -> tuple[str, ...]:
    """Inverse of :func:`cell_name`."""
    return tuple(name.split(CELL_SEP))


def cells(levels: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Every combination of levels, the first attribute varying slowest."""
    return list(itertools.product(*levels))


def parse_classifier_specs(
    specs: Sequence[str | os.PathLike[str]], *, param: str = "classifier"
) -> Path | dict[str, Path]:
    """``["PATH"]`` → the path; ``["sex=PATH", "age_band=PATH"]`` → attribute → path."""
    specs = [str(s) for s in specs]
    if not specs:
        raise ConfigError("expected at least one classifier", param=param)
    named = [s for s in specs if "=" in s and not Path(s).exists()]
    if not named:
        if len(specs) > 1:
            raise ConfigError(
                "several classifiers must name their attribute: --classifier sex=PATH "
                "--classifier age_band=PATH",
                param=param,
            )
        return Path(specs[0])
    if len(named) != len(specs):
        raise ConfigError(
            "name the attribute of every classifier (ATTRIBUTE=PATH) or give one PATH",
            param=param,
        )
    out: dict[str, Path] = {}
    for s in specs:
        attr, _, path = s.partition("=")
        attr = attr.strip()
        if not attr or not path.strip():
            raise ConfigError(f"expected ATTRIBUTE=PATH, got '{s}'", param=param)
        if attr in out:
            raise ConfigError(f"attribute '{attr}' is given twice", param=param)
        out[attr] = Path(path.strip())
    return out
