"""The outcome of an audit: one typed object, saved and loaded as a folder.

Like fairlearn's ``MetricFrame`` it is one object with accessors (:meth:`AuditResult.share`,
:meth:`AuditResult.kl`, :meth:`AuditResult.to_frame`, :meth:`AuditResult.summary`); like a
diffusers model it round-trips through :meth:`AuditResult.save` and :meth:`AuditResult.load`.
The folder holds ``audit.json`` (schema version :data:`AUDIT_SCHEMA_VERSION`, described by the
JSON Schema shipped as ``audit.schema.json``), ``images.csv``, ``grid_<group>.png`` and
``audit.html``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_write_bytes, atomic_write_json, atomic_write_text, null_non_finite
from ..exceptions import DataError

__all__ = [
    "AUDIT_SCHEMA_VERSION",
    "VOLATILE_FIELDS",
    "AuditResult",
    "audit_document",
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
        data: The ``audit.json`` content.
        images: One row per generated image (prompt, seed, probabilities, predicted group).
        grids: Group name → PNG bytes of a sample grid of images classified as that group.
        folder: Where it was saved or loaded from, if anywhere.
    """

    data: dict[str, Any]
    images: pd.DataFrame
    grids: dict[str, bytes] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def groups(self) -> list[str]:
        """Group names in the classifier's order."""
        return list(self.data["groups"])

    @property
    def default_reading(self) -> str:
        """The reading headlines use (see ``readings`` in the JSON)."""
        return self.data["default_reading"]

    def share(self, group: str, reading: str | None = None) -> dict[str, Any]:
        """One group's share: ``{value, ci, method[, censored, bound, note]}``.

        ``value`` is ``None`` when the estimate is censored (then ``bound`` holds the one-sided
        limit) or not identifiable.
        """
        return self.data["proportions"][reading or self.default_reading][group]

    def kl(self, reading: str | None = None, direction: str = "target_to_generated") -> dict:
        """KL divergence to the target: ``{value, ci[, censored, bound]}`` (nats)."""
        return self.data["distances"][reading or self.default_reading][f"kl_{direction}"]

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

        def rows(summary: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
            out = []
            for kind, per in summary["proportions"].items():
                for g, v in per.items():
                    gap = summary["distances"].get(kind, {}).get("gaps", {}).get(g, {})
                    out.append(
                        {
                            **extra,
                            "reading": kind,
                            "group": g,
                            "proportion": v["value"],
                            "ci_low": v["ci"][0],
                            "ci_high": v["ci"][1],
                            "censored": v.get("censored"),
                            "target": self.data["target"][g],
                            "gap": gap.get("value"),
                        }
                    )
            return out

        by_prompt = [
            r
            for p in self.data["by_prompt"]
            for r in rows(p, prompt_index=p["index"], prompt=p["prompt"])
        ]
        quality = (self.data.get("quality") or {}).get("by_group", {})
        by_group = pd.DataFrame(
            [
                {
                    "group": g,
                    "n_generated": quality.get(g, {}).get("n_generated"),
                    "n_reference": quality.get(g, {}).get("n_reference"),
                    "fid_full_n": quality.get(g, {}).get("fid"),
                }
                for g in [*self.groups, "overall"]
            ]
        )
        return {
            "overall": pd.DataFrame(rows(self.data)),
            "by_prompt": pd.DataFrame(by_prompt),
            "by_group": by_group,
        }

    def summary(self) -> list[str]:
        """Plain-text lines: each group's raw and default-reading share, KL, test, worst prompt."""
        d, reading = self.data, self.default_reading
        lines = []
        for g in self.groups:
            raw, est = self.share(g, "raw"), self.share(g)
            lines.append(
                f"{g}: {_share_text(raw)} raw, {_share_text(est)} {reading} "
                f"(target {d['target'][g]:.1%})"
            )
        kl = self.kl()
        lines.append(f"KL(target‖generated, {reading}) = {format_estimate(kl, '.4f')}")
        chi = d["chi_square"]
        if chi.get("p_value") is not None:
            sign = "≤" if chi.get("p_value_is_bound") else "="
            lines.append(
                f"on-target test (null: labels follow target·C): p {sign} {chi['p_value']:.3g}"
            )
        joint = d.get("joint")
        if joint:
            r = joint["reading"]
            for attr, sect in d["attributes"].items():
                shares = ", ".join(
                    f"{g} {_share_text(sect['proportions'][r][g])} (target {sect['target'][g]:.1%})"
                    for g in sect["levels"]
                )
                lines.append(f"{attr}: {shares}")
            rejected = joint["holm"]["rejected"]
            lines.append(
                f"joint cells: share = target rejected (Holm, α = {joint['holm']['alpha']:g}) for "
                f"{len(rejected)} of {len(joint['cells'])}"
                + (f": {', '.join(rejected)}" if rejected else "")
            )
        seq = d.get("sequential")
        if seq:
            from .sequential import sequential_text

            lines.append(sequential_text(seq))
        worst = d.get("dispersion", {}).get("worst_prompt")
        if worst and len(d["by_prompt"]) > 1:
            lines.append(
                f"worst prompt #{worst['index']}: |gap| {format_estimate(worst['abs_gap'], '.1%')}"
            )
        return lines

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


def _classifier_section(cfg: Any, loaded: Any) -> dict[str, Any]:
    cset = loaded.cset
    out = {"path": str(cfg.classifier), "evaluation": cset.primary.evaluation}
    if cset.multi:
        out["by_attribute"] = {
            a: {"path": str(p), "evaluation": m.evaluation}
            for a, p, m in zip(cset.attributes, cset.paths, cset.members, strict=False)
        }
    return out


def _config_section(
    cfg: Any, loaded: Any, remediation: dict[str, Any] | None, versions: dict[str, str]
) -> dict[str, Any]:
    gen, settings = cfg.generation, loaded.settings
    return {
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": settings["checkpoint_sha256"],
        "classifier": str(cfg.classifier)
        if not isinstance(cfg.classifier, dict)
        else {a: str(p) for a, p in cfg.classifier.items()},
        "classifier_sha256": settings["classifier_sha256"],
        **({"classifiers_sha256": loaded.classifiers_sha256} if loaded.classifiers_sha256 else {}),
        "prompts": list(cfg.prompts),
        "n_per_prompt": gen.n_per_prompt,
        "seed": gen.seed,
        "seeding": "image seed = SeedSequence([seed, prompt index, image index])",
        "steps": gen.steps,
        "guidance": gen.guidance,
        "batch_size": gen.shard_size,
        "batch_invariant": cfg.batch_invariant,
        "features": {"name": loaded.extractor.name, **loaded.extractor.details},
        "pipeline": loaded.info,
        "placement": cfg.placement.describe(),
        "speed": cfg.speed.describe(),
        "reference": str(cfg.reference) if cfg.reference else None,
        "reference_split": cfg.reference_split,
        "target_source": cfg.target.source,
        "remediation": remediation,
        "versions": versions,
    }


def audit_document(
    cfg: Any,
    loaded: Any,
    est: Any,
    *,
    warnings: list[str],
    remediation: dict[str, Any] | None,
    versions: dict[str, str],
    sequential: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``audit.json`` content of a run, in plain JSON types.

    A NaN or infinity becomes ``null``, and a warning names each.

    Args:
        cfg: The :class:`~medfair_audit.config.AuditConfig`.
        loaded: The load stage's :class:`~medfair_audit.audit.load.Loaded`.
        est: The statistics stage's :class:`~medfair_audit.audit.estimate.Estimates`.
        warnings: Every warning, in order.
        remediation: What remediation the checkpoint went through, if any.
        versions: Software versions.
        sequential: The ``--precision`` record (rule, looks, n at stopping), if any.
    """
    from ..metrics.estimates import READINGS

    groups, overall = loaded.groups, est.overall
    target = cfg.target.vector(groups)
    doc = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "mode": cfg.mode,
        "attribute": loaded.cset.attribute,
        "groups": groups,
        "target": dict(zip(groups, map(float, target), strict=True)),
        "target_name": cfg.target.name,
        "n_images": len(est.probs),
        "n_prompts": len(cfg.prompts),
        "confidence": cfg.confidence,
        "smoothing": {"epsilon": cfg.smoothing, "method": "p' = (1 - ε) p + ε / K before KL"},
        "n_boot": cfg.n_boot,
        "default_reading": est.reading,
        "readings": {k: READINGS[k] for k in overall["proportions"]},
        **overall,
        "sample_size": est.sample_size,
        "dispersion": est.spread,
        "quality": est.quality,
        "by_prompt": est.by_prompt,
        **({"attributes": est.attributes, "joint": est.joint} if loaded.cset.multi else {}),
        **({"readers": est.readers} if est.readers else {}),
        **({"sequential": sequential} if sequential is not None else {}),
        "warnings": warnings,
        "prompts_truncated": loaded.truncated,
        "classifier": _classifier_section(cfg, loaded),
        "config": _config_section(cfg, loaded, remediation, versions),
    }
    doc = json.loads(json.dumps(doc, default=float))  # plain JSON types, stable on disk
    for where in null_non_finite(doc):  # JSON has no NaN/inf: null, and said so
        doc["warnings"].append(f"{where} was not a finite number; written as null")
    return doc


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


def format_estimate(entry: dict[str, Any], fmt: str) -> str:
    """An estimate as text: ``value [lo, hi]``, or its bound when censored (``≥ x (censored)``)."""
    ci = entry.get("ci") or [None, None]
    interval = f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci[0] is not None else ""
    if entry.get("value") is None:
        bound = entry.get("bound") or {}
        if "at_most" in bound:
            return f"≤ {bound['at_most']:{fmt}} (censored){interval}"
        if "at_least" in bound:
            return f"≥ {bound['at_least']:{fmt}} (censored){interval}"
        return f"not identifiable{interval}"
    return f"{entry['value']:{fmt}}{interval}"


def _share_text(entry: dict[str, Any]) -> str:
    return format_estimate(entry, ".1%")
