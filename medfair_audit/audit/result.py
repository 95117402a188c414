"""The outcome of an audit: one typed object, saved and loaded as a folder.

Like fairlearn's ``MetricFrame`` it is one object with typed accessors: :meth:`AuditResult.share`
and :meth:`AuditResult.kl` return :class:`~medfair_audit.metrics.results.Estimate` values, and
:attr:`AuditResult.overall`, :attr:`AuditResult.quality`, :attr:`AuditResult.readers` and the
others the frames of :mod:`medfair_audit.metrics.results`; it also gives tables
(:meth:`AuditResult.to_frame`) and text (:meth:`AuditResult.summary`). Like a diffusers model it
round-trips through :meth:`AuditResult.save` and :meth:`AuditResult.load`. This module and the
``*_from_json`` readers of :mod:`medfair_audit.metrics.results` are the only readers of
``audit.json``'s keys: everything downstream reads attributes.

The folder holds ``audit.json`` (schema version :data:`AUDIT_SCHEMA_VERSION`, described by the
JSON Schema shipped as ``audit.schema.json``), ``images.csv``, ``grid_<group>.png`` and
``audit.html``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..exceptions import DataError
from ..metrics import results as r
from ..metrics.results_json import (
    attribute_summary_from_json,
    classifier_from_json,
    conditioning_from_json,
    dispersion_from_json,
    estimate_from_json,
    joint_from_json,
    prompt_summary_from_json,
    quality_from_json,
    readers_from_json,
    sample_size_from_json,
    sequential_from_json,
    settings_from_json,
    smoothing_from_json,
    summary_from_json,
)

__all__ = [
    "AUDIT_SCHEMA_VERSION",
    "VOLATILE_FIELDS",
    "AuditResult",
    "audit_schema",
    "format_estimate",
    "grid_name",
    "read_audit_json",
]

AUDIT_SCHEMA_VERSION = 2

#: Fields of ``audit.json`` that say how an audit ran rather than what it measured (software
#: versions, batch size): :meth:`AuditResult.comparable` drops them. Two audits of the same
#: inputs, seed and dtype are then equal, at any batch size with ``batch_invariant``, and at
#: the same batch size without it; with the same software their files are byte-identical.
VOLATILE_FIELDS: tuple[tuple[str, ...], ...] = (("config", "versions"), ("config", "batch_size"))
MSG_OLD_SCHEMA = (
    "'{path}' is an audit.json of schema_version {found}; this medfair reads version {want} "
    "(re-run `medfair audit` to get intervals that include the classifier's own error)"
)


def audit_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``audit.json``, shipped with the package."""
    text = resources.files("medfair_audit.audit").joinpath("audit.schema.json").read_text()
    return json.loads(text)


def read_audit_json(path: str | os.PathLike[str], *, param: str = "audit") -> dict[str, Any]:
    """Read an ``audit.json`` (or the folder holding one) of the current schema version.

    Raises:
        DataError: Missing, unreadable, another schema version, or missing top-level keys.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "audit.json"
    if not path.is_file():
        raise DataError(f"'{path}' does not exist (expected an audit.json)", param=param)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read '{path}': {exc}", param=param) from exc
    found = data.get("schema_version") if isinstance(data, dict) else None
    if found != AUDIT_SCHEMA_VERSION:
        raise DataError(
            MSG_OLD_SCHEMA.format(path=path, found=found, want=AUDIT_SCHEMA_VERSION), param=param
        )
    missing = [k for k in audit_schema()["required"] if k not in data]
    if missing:
        raise DataError(f"'{path}' lacks {', '.join(missing)}", param=param)
    return data


@dataclass
class AuditResult:
    """The outcome of an audit.

    Attributes:
        data: The ``audit.json`` content (:meth:`to_json`); read it through the typed
            accessors below.
        images: One row per generated image (prompt, seed, probabilities, predicted group).
        grids: Group name → PNG bytes of a sample grid of images classified as that group.
        folder: Where it was saved or loaded from, if anywhere.
    """

    data: dict[str, Any]
    images: pd.DataFrame
    grids: dict[str, bytes] = field(default_factory=dict)
    folder: Path | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any], **parts: Any) -> AuditResult:
        """An audit from its ``audit.json`` content (``parts``: ``images``, ``grids``, ``folder``).

        The inverse of :meth:`to_json`; :meth:`load` reads the folder.
        """
        return cls(data=doc, images=parts.pop("images", pd.DataFrame()), **parts)

    def to_json(self) -> dict[str, Any]:
        """The ``audit.json`` content (plain JSON types, as written)."""
        return self.data

    @property
    def groups(self) -> list[str]:
        """Group names in the classifier's order."""
        return list(self.data["groups"])

    @property
    def attribute(self) -> str:
        """The attribute audited (``sex × age_band`` style names for joint cells)."""
        return self.data.get("attribute", "")

    @property
    def target(self) -> dict[str, float]:
        """Target share of each group."""
        return dict(self.data["target"])

    @property
    def target_name(self) -> str | None:
        """What the target is (e.g. the reference data set's name), if given."""
        return self.data.get("target_name")

    @property
    def confidence(self) -> float:
        """Interval level."""
        return float(self.data.get("confidence", 0.95))

    @property
    def n_boot(self) -> int:
        """Bootstrap replicates behind the intervals."""
        return int(self.data.get("n_boot") or 0)

    @property
    def n_images(self) -> int:
        """Images audited."""
        return int(self.data["n_images"])

    @property
    def warnings(self) -> list[str]:
        """Every warning of the run, in order."""
        return list(self.data.get("warnings", []))

    @property
    def mode(self) -> str:
        """``marginal`` (one target for all prompts) or ``conditional``."""
        return self.data["mode"]

    @property
    def n_prompts(self) -> int:
        """Prompts audited."""
        return int(self.data["n_prompts"])

    @property
    def schema_version(self) -> int:
        """The ``audit.json`` schema version."""
        return int(self.data["schema_version"])

    @property
    def readings(self) -> dict[str, str]:
        """Reading name → what it is, in words."""
        return dict(self.data["readings"])

    @property
    def smoothing(self) -> r.Smoothing:
        """The ε-smoothing before KL."""
        return smoothing_from_json(self.data["smoothing"])

    @property
    def sample_size(self) -> r.SampleSize:
        """Images needed for a ±5-point interval (the audit's own advice)."""
        return sample_size_from_json(self.data["sample_size"])

    @cached_property
    def classifier(self) -> r.ClassifierInfo:
        """The measuring instrument: folder, held-out evaluation, condition numbers."""
        return classifier_from_json(self.data["classifier"], self.data.get("condition_number"))

    @property
    def default_reading(self) -> str:
        """The reading headlines use (see ``readings`` in the JSON)."""
        return self.data["default_reading"]

    @cached_property
    def overall(self) -> r.Summary:
        """Shares, distances and the on-target test of all images."""
        return summary_from_json(self.data)

    @cached_property
    def by_prompt(self) -> list[r.PromptSummary]:
        """One :class:`~medfair_audit.metrics.results.Summary` per prompt."""
        return [prompt_summary_from_json(p) for p in self.data["by_prompt"]]

    def share(self, group: str, reading: str | None = None) -> r.Estimate:
        """One group's share (``value`` is ``None`` when censored: ``bound`` holds the limit)."""
        return self.overall.proportions[reading or self.default_reading][group]

    def kl(self, reading: str | None = None, direction: str = "target_to_generated") -> r.Estimate:
        """KL divergence to the target (nats)."""
        return getattr(self.overall.distances[reading or self.default_reading], f"kl_{direction}")

    @cached_property
    def dispersion(self) -> r.Dispersion:
        """How the prompts spread around the target."""
        return dispersion_from_json(self.data["dispersion"], self.default_reading)

    @cached_property
    def quality(self) -> r.Quality | None:
        """Per-group quality, if measured (an audit without a reference has none)."""
        return quality_from_json(self.data.get("quality"))

    @cached_property
    def readers(self) -> r.Readers | None:
        """Other readers' shares and the support shares, if any."""
        return readers_from_json(self.data.get("readers"))

    @cached_property
    def conditioning(self) -> r.Conditioning | None:
        """Conditional mode: fidelity per named group and the marginal shares of the output."""
        return conditioning_from_json(self.data.get("conditioning"))

    @cached_property
    def joint(self) -> r.Joint | None:
        """Joint cells (several attributes only)."""
        return joint_from_json(self.data.get("joint"))

    @cached_property
    def attributes(self) -> dict[str, r.AttributeSummary]:
        """Each attribute's marginal summary (several attributes only; else empty)."""
        return {
            a: attribute_summary_from_json(s)
            for a, s in (self.data.get("attributes") or {}).items()
        }

    @cached_property
    def sequential(self) -> r.Sequential | None:
        """Where a ``--precision`` audit stopped and its anytime-valid intervals."""
        return sequential_from_json(self.data.get("sequential"))

    @cached_property
    def settings(self) -> r.AuditSettings:
        """How the audit ran: checkpoint, classifier, prompts, generation, remediation."""
        return settings_from_json(self.data["config"])

    def heldout(self) -> Any:
        """The held-out errors the audit used for its groups (joint cells too).

        One classifier per attribute gives the Kronecker product of theirs; one classifier (joint
        or not) gives its own.
        """
        from ..metrics.estimates import HeldOut, ProductHeldOut

        clf, joint = self.data["classifier"], self.data.get("joint")
        by_attr = clf.get("by_attribute")
        if joint and by_attr and len(by_attr) > 1:
            return ProductHeldOut(
                [
                    HeldOut.from_evaluation(e["evaluation"], joint["levels"][a])
                    for a, e in by_attr.items()
                ]
            )
        return HeldOut.from_evaluation(clf["evaluation"], self.groups)

    def comparable(self) -> dict[str, Any]:
        """The ``audit.json`` content without :data:`VOLATILE_FIELDS`, for equality checks."""
        data = json.loads(json.dumps(self.data))
        for path in VOLATILE_FIELDS:
            node = data
            for key in path[:-1]:
                node = node.get(key, {})
            node.pop(path[-1], None)
        return data

    def to_frame(self) -> dict[str, pd.DataFrame]:
        """Tables: ``overall`` and ``by_prompt`` (one row per reading × group) and ``by_group``."""
        from .views import result_frames

        return result_frames(self)

    def summary(self) -> list[str]:
        """Plain-text lines: each group's raw and default-reading share, KL, test, worst prompt."""
        from .views import summary_lines

        return summary_lines(self)

    def save(self, out: str | os.PathLike[str] | None = None, *, html: str | None = None) -> Path:
        """Write ``images.csv``, grids, ``audit.html`` (``html``) and, last, ``audit.json``.

        Each file is written atomically and ``audit.json`` comes last: a folder with an
        ``audit.json`` holds a finished audit, one without it an unfinished one. The page is
        rendered by :func:`medfair_audit.reporting.render_audit_html` (``run_audit`` does it),
        so that this results module does not import the reporting layer above it.
        """
        out = Path(out or self.folder)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "images.csv", self.images.to_csv(index=False))
        for g, png in self.grids.items():
            atomic_write_bytes(out / grid_name(g), png)
        self.folder = out
        if html is not None:
            atomic_write_text(out / "audit.html", html)
        atomic_write_json(out / "audit.json", self.data, allow_nan=False)
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, param: str = "audit") -> AuditResult:
        """Read a saved audit (its folder or its ``audit.json``).

        Raises:
            DataError: Missing or unreadable files, or another schema version.
        """
        path = Path(folder)
        data = read_audit_json(path, param=param)
        folder = path if path.is_dir() else path.parent
        table = folder / "images.csv"
        images = pd.read_csv(table, keep_default_na=False) if table.is_file() else pd.DataFrame()
        grids = {
            g: (folder / grid_name(g)).read_bytes()
            for g in data["groups"]
            if (folder / grid_name(g)).is_file()
        }
        return cls(data=data, images=images, grids=grids, folder=folder)


def grid_name(group: str) -> str:
    """File name of a group's sample grid: ``grid_<group>.png``.

    Characters of the group name that could leave the folder or confuse a shell are replaced, and
    a replaced name gets a short hash so that distinct groups keep distinct files.
    """
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9_-]", "_", group)
    if safe != group:
        safe += "-" + hashlib.sha256(group.encode()).hexdigest()[:8]
    return f"grid_{safe}.png"


def format_estimate(entry: dict[str, Any] | r.Estimate, fmt: str) -> str:
    """An estimate (typed, or an ``audit.json`` entry) as text: :meth:`Estimate.text`."""
    est = (
        entry
        if isinstance(entry, r.Estimate)
        else estimate_from_json(entry) or r.Estimate(value=None)
    )
    return est.text(fmt)
