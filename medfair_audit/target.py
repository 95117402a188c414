"""Target subgroup proportions: what the generated distribution should match.

A target is a small JSON document::

    {"schema_version": 1, "attribute": "sex", "name": "BraTS18",
     "proportions": {"female": 0.42, "male": 0.58},
     "source": "labels.csv", "n": 1200}

``name`` says what the target stands for; reports show it in their title and methods.

It comes from a labelled dataset (:func:`target_from_labels`, e.g. the sex column of a BraTS18
subject table) or is written inline (``"male=0.58,female=0.42"``, :func:`parse_target`). Every
command that takes a target accepts either form.

A **joint target** covers several attributes at once: its groups are the joint cells
(``"female/<40"``, see :mod:`medfair_audit.attributes`), ``attributes`` names the attributes in
cell order and ``attribute`` is their comma-joined name (``"sex,age_band"``). Every combination of
the levels is a cell; cells without mass are kept with proportion 0 (and listed in
``zero_cells``). Its marginals are :meth:`Target.marginal`::

    {"schema_version": 1, "attribute": "sex,age_band", "attributes": ["sex", "age_band"],
     "proportions": {"female/<40": 0.08, ...}, "marginals": {"sex": {...}, "age_band": {...}}}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ._io import atomic_write_json, check_out
from .attributes import CELL_SEP, cell_name, cells, check_level, sort_levels, split_cell
from .exceptions import (
    MSG_MISSING_COLUMN,
    MSG_NOT_A_FILE,
    MSG_TARGET_NEGATIVE,
    MSG_TARGET_SUM,
    MSG_TARGET_TWO_GROUPS,
    MSG_UNKNOWN_GROUPS,
    ConfigError,
    DataError,
)

__all__ = [
    "TARGET_SCHEMA_VERSION",
    "Target",
    "parse_shares",
    "parse_target",
    "read_label_table",
    "target_from_labels",
]

TARGET_SCHEMA_VERSION = 1
SUM_TOLERANCE = 1e-6


@dataclass(frozen=True, kw_only=True)
class Target:
    """Validated target proportions over the groups of one attribute.

    Args:
        attribute: The attribute the groups belong to (e.g. ``"sex"``).
        proportions: Group name → proportion; non-negative, summing to 1 within 1e-6, at least
            two groups. Stored sorted by group name.
        source: Where the proportions came from (a file, ``"inline"``).
        n: Number of labelled items they were computed from, if any.
        name: What the proportions stand for (e.g. ``"BraTS18"``), shown in reports.
        attributes: For a joint target, the attributes in cell order (``("sex", "age_band")``);
            ``attribute`` must then be their comma-joined name and every group a cell
            ``"level/level"``. Missing cells are added with proportion 0.
        param: Argument name used in error messages.

    Raises:
        ConfigError: The proportions are invalid.
    """

    attribute: str
    proportions: Mapping[str, float]
    source: str | None = None
    n: int | None = None
    name: str | None = None
    attributes: Sequence[str] | None = None
    param: str = field(default="target", repr=False, compare=False)

    def __post_init__(self) -> None:
        props = {str(k): float(v) for k, v in self.proportions.items()}
        if self.attributes is not None:
            attrs = tuple(str(a) for a in self.attributes)
            if len(attrs) < 2 or len(set(attrs)) != len(attrs):
                raise ConfigError(
                    f"a joint target needs two or more distinct attributes, got {list(attrs)}",
                    param=self.param,
                )
            object.__setattr__(self, "attributes", attrs)
            object.__setattr__(self, "attribute", ",".join(attrs))
            props = self._complete_cells(props, attrs)
        if len(props) < 2:
            raise ConfigError(MSG_TARGET_TWO_GROUPS.format(n=len(props)), param=self.param)
        for group, value in props.items():
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    MSG_TARGET_NEGATIVE.format(group=group, value=value), param=self.param
                )
        total = sum(props.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise ConfigError(MSG_TARGET_SUM.format(total=total), param=self.param)
        if self.attributes is None:
            props = {g: props[g] for g in sort_levels(props)}
        object.__setattr__(self, "proportions", props)

    def _complete_cells(self, props: dict[str, float], attrs: tuple[str, ...]) -> dict[str, float]:
        seen: list[list[str]] = [[] for _ in attrs]
        for name in props:
            levels = split_cell(name)
            if len(levels) != len(attrs):
                raise ConfigError(
                    f"cell '{name}' does not have one level per attribute ({', '.join(attrs)}) "
                    f"joined by '{CELL_SEP}'",
                    param=self.param,
                )
            for i, level in enumerate(levels):
                seen[i].append(check_level(level, param=self.param))
        levels = [sort_levels(s) for s in seen]
        return {cell_name(c): props.get(cell_name(c), 0.0) for c in cells(levels)}

    @property
    def groups(self) -> tuple[str, ...]:
        """Group names (joint cells for a joint target), in a stable order."""
        return tuple(self.proportions)

    @property
    def is_joint(self) -> bool:
        """Whether this target covers several attributes (its groups are joint cells)."""
        return self.attributes is not None

    @property
    def levels(self) -> dict[str, tuple[str, ...]]:
        """Attribute → its levels in cell order (one attribute for a plain target)."""
        if self.attributes is None:
            return {self.attribute: self.groups}
        out: dict[str, list[str]] = {a: [] for a in self.attributes}
        for name in self.groups:
            for a, level in zip(self.attributes, split_cell(name), strict=True):
                out[a].append(level)
        return {a: tuple(dict.fromkeys(v)) for a, v in out.items()}

    @property
    def zero_cells(self) -> tuple[str, ...]:
        """Groups (cells) whose target proportion is 0."""
        return tuple(g for g, p in self.proportions.items() if p == 0)

    def marginal(self, attribute: str) -> Target:
        """The target of one attribute of a joint target (the sum over the other attributes)."""
        if self.attributes is None:
            if attribute != self.attribute:
                raise ConfigError(
                    f"the target is over '{self.attribute}', not '{attribute}'", param=self.param
                )
            return self
        if attribute not in self.attributes:
            raise ConfigError(
                f"the target's attributes are {', '.join(self.attributes)}; "
                f"'{attribute}' is not one of them",
                param=self.param,
            )
        i = self.attributes.index(attribute)
        props = dict.fromkeys(self.levels[attribute], 0.0)
        for name, p in self.proportions.items():
            props[split_cell(name)[i]] += p
        total = sum(props.values())
        return Target(
            attribute=attribute,
            proportions={g: v / total for g, v in props.items()},
            source=self.source,
            n=self.n,
            name=self.name,
            param=self.param,
        )

    def vector(self, groups: Sequence[str] | None = None) -> list[float]:
        """Proportions in the order of ``groups`` (default: sorted group names)."""
        return [self.proportions[g] for g in (groups or self.groups)]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary (the ``target.json`` format)."""
        doc: dict[str, Any] = {
            "schema_version": TARGET_SCHEMA_VERSION,
            "attribute": self.attribute,
            "name": self.name,
            "proportions": dict(self.proportions),
            "source": self.source,
            "n": self.n,
        }
        if self.attributes is not None:
            doc["attributes"] = list(self.attributes)
            doc["levels"] = {a: list(v) for a, v in self.levels.items()}
            doc["marginals"] = {a: dict(self.marginal(a).proportions) for a in self.attributes}
            doc["zero_cells"] = list(self.zero_cells)
        return doc

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``target.json`` atomically.

        Raises:
            DataError: ``path`` exists (a file, or a non-empty folder) and ``overwrite`` is false.
        """
        check_out(path, overwrite=overwrite)
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, param: str = "target") -> Target:
        """Read a ``target.json`` written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(MSG_NOT_A_FILE.format(path=path), param=param)
        try:
            doc = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is allowed
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read target JSON '{path}': {exc}", param=param) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("proportions"), dict):
            raise DataError(
                f"'{path}' is not a target file: expected an object with 'proportions'",
                param=param,
            )
        version = doc.get("schema_version", TARGET_SCHEMA_VERSION)
        if version != TARGET_SCHEMA_VERSION:
            raise DataError(
                f"'{path}' has schema_version {version}, expected {TARGET_SCHEMA_VERSION}",
                param=param,
            )
        try:
            props = {str(k): float(v) for k, v in doc["proportions"].items()}
        except (TypeError, ValueError) as exc:
            raise DataError(f"'{path}': proportions must be numbers ({exc})", param=param) from exc
        attributes = doc.get("attributes")
        if attributes is not None and not (
            isinstance(attributes, list) and all(isinstance(a, str) for a in attributes)
        ):
            raise DataError(f"'{path}': attributes must be a list of names", param=param)
        return cls(
            attribute=str(doc.get("attribute", "sex")),
            proportions=props,
            source=doc.get("source", str(path)),
            n=doc.get("n"),
            name=doc.get("name"),
            attributes=attributes if attributes and len(attributes) > 1 else None,
            param=param,
        )


def parse_shares(spec: str, *, param: str) -> dict[str, float]:
    """``"male=0.58,female=0.42"`` → ``{"male": 0.58, "female": 0.42}`` (names checked once)."""
    props: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(
                f"expected GROUP=PROPORTION pairs such as 'male=0.58,female=0.42', got '{spec}'",
                param=param,
            )
        if name in props:
            raise ConfigError(f"group '{name}' is given twice in '{spec}'", param=param)
        try:
            props[name] = float(value)
        except ValueError:
            raise ConfigError(
                f"proportion for '{name}' must be a number, got '{value.strip()}'", param=param
            ) from None
    return props


def parse_target(
    spec: str,
    *,
    attribute: str | Sequence[str] = "sex",
    param: str = "target",
) -> Target:
    """Read a target given as a JSON file path or inline as ``"male=0.58,female=0.42"``.

    An inline joint target names cells: ``"female/<40=0.1,male/<40=0.1,..."`` with
    ``attribute=("sex", "age_band")`` (cells left out get 0).

    Args:
        spec: Path to a ``target.json`` or an inline ``GROUP=PROPORTION,...`` list.
        attribute: Attribute name (or names, for joint cells) recorded for an inline target.
        param: Argument name used in error messages.

    Returns:
        The validated target.
    """
    if "=" in spec and not Path(spec).is_file():
        attrs = [attribute] if isinstance(attribute, str) else list(attribute)
        props = parse_shares(spec, param=param)
        joint = any(CELL_SEP in g for g in props)
        if joint and len(attrs) < 2:
            raise ConfigError(
                f"'{spec}' names joint cells ('{CELL_SEP}'): name their attributes in order, "
                "e.g. --column sex --column age_band",
                param=param,
            )
        if len(attrs) > 1 and not joint:
            raise ConfigError(
                f"{len(attrs)} attributes need joint cells such as "
                f"'female{CELL_SEP}<40=0.1,...', got '{spec}'",
                param=param,
            )
        return Target(
            attribute=",".join(attrs),
            proportions=props,
            source="inline",
            attributes=attrs if len(attrs) > 1 else None,
            param=param,
        )
    return Target.load(spec, param=param)


def read_label_table(
    path: str | os.PathLike[str], columns: Sequence[str], *, param: str = "labels"
) -> pd.DataFrame:
    """Read a CSV and check that it has ``columns``.

    Raises:
        DataError: The file is missing, unreadable, empty, or lacks a column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(MSG_NOT_A_FILE.format(path=path), param=param)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read CSV '{path}': {exc}", param=param) from exc
    for column in columns:
        if column not in table.columns:
            raise DataError(
                MSG_MISSING_COLUMN.format(
                    path=path, column=column, found=", ".join(map(str, table.columns)) or "none"
                ),
                param=param,
            )
    return table


def target_from_labels(
    labels: str | os.PathLike[str],
    *,
    column: str | Sequence[str] = "sex",
    groups: Sequence[str] | None = None,
    where: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Target:
    """Compute target proportions from a label column of a CSV.

    Args:
        labels: CSV file with one row per labelled item (e.g. a phantom ``metadata.csv`` or a
            BraTS18 subject → sex table).
        column: Column holding the group labels, or several columns for a joint target over
            their cells (every combination of the levels found; cells without rows get 0).
        groups: The known groups (of a single column). Labels outside them are an error; known
            groups without any label get proportion 0. Default: the labels found.
        where: Keep only rows whose columns equal these values (e.g. ``{"split": "test"}``).
        name: What the target stands for. Default: read from the ``dataset.json`` beside
            ``labels`` when medfair imported the data (``BraTS18`` for a BraTS import).

    Returns:
        The target, with ``n`` the number of rows counted.

    Raises:
        DataError: Missing file or column, empty or blank labels, labels outside ``groups``.
    """
    where = dict(where or {})
    columns = [column] if isinstance(column, str) else list(dict.fromkeys(column))
    table = read_label_table(labels, [*columns, *where], param="labels")
    for key, value in where.items():
        table = table[table[key] == value]
    if len(columns) > 1:
        return _joint_from_table(table, columns, labels, name)
    column = columns[0]
    values = table[column].str.strip()
    if len(values) == 0:
        raise DataError(f"'{labels}' has no rows to count", param="labels")
    if (values == "").any():
        raise DataError(
            f"column '{column}' of '{labels}' has {(values == '').sum()} empty labels",
            param="labels",
        )
    counts = values.value_counts()
    if groups is not None:
        known = sorted({str(g) for g in groups})
        unknown = sorted(set(counts.index) - set(known))
        if unknown:
            raise DataError(MSG_UNKNOWN_GROUPS.format(known=known, unknown=unknown), param="labels")
    else:
        known = sorted(counts.index)
    n = int(counts.sum())
    props = {g: int(counts.get(g, 0)) / n for g in known}
    return Target(
        attribute=column,
        proportions=props,
        source=str(labels),
        n=n,
        name=name or _dataset_name(Path(labels).parent),
        param="labels",
    )


def _joint_from_table(
    table: pd.DataFrame, columns: list[str], labels: Any, name: str | None
) -> Target:
    if len(table) == 0:
        raise DataError(f"'{labels}' has no rows to count", param="labels")
    parts = []
    for col in columns:
        values = table[col].str.strip()
        if (values == "").any():
            raise DataError(
                f"column '{col}' of '{labels}' has {(values == '').sum()} empty labels",
                param="labels",
            )
        for level in values.unique():
            check_level(level, param="labels")
        parts.append(values)
    names = pd.Series([cell_name(t) for t in zip(*parts, strict=True)])
    counts = names.value_counts()
    n = int(counts.sum())
    return Target(
        attribute=",".join(columns),
        attributes=columns,
        proportions={g: int(c) / n for g, c in counts.items()},
        source=str(labels),
        n=n,
        name=name or _dataset_name(Path(labels).parent),
        param="labels",
    )


#: ``dataset.json`` kinds written by ``export_image_folder`` → the data set they import.
DATASET_NAMES = {"BratsDataset": "BraTS18", "RocoDataset": "ROCO"}


def _dataset_name(folder: Path) -> str | None:
    try:
        kind = json.loads((folder / "dataset.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return DATASET_NAMES.get(kind)
