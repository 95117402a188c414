"""The report's table model: audits as columns, and the rows every format prints.

The headline table is built once (:func:`headline_rows`, formatted by :func:`format_rows`) and
rendered by :mod:`.markdown`, :mod:`.latex` and :mod:`.html`, so the numbers in a paper's LaTeX
table are the ones in the HTML report. A censored value (a share beyond what the classifier's
errors explain, a KL at the ε ceiling) is printed as its bound (``≤ 2.3%``, ``≥ 0.91``) and no
change is computed from it. FID and KID are compared only at a subsample size every audit has.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..metrics.results import Estimate, QualityEntry, common_size
from .sequential import sequential_cells

if TYPE_CHECKING:
    from ..audit.result import AuditResult

__all__ = [
    "AuditColumn",
    "comparisons",
    "evaluator_notes",
    "evaluator_rows",
    "format_rows",
    "headline_rows",
    "load_audit",
    "paired_analysis",
    "paired_rows",
]


@dataclass(frozen=True)
class AuditColumn:
    """One audit in a report.

    Attributes:
        label: Column label (e.g. ``before``).
        result: The audit (:class:`~medfair_audit.audit.result.AuditResult`); its folder (grids,
            shards and ``images.csv`` are read from it), grids and image table come with it.
    """

    label: str
    result: AuditResult

    @property
    def folder(self) -> Path | None:
        """The audit's folder, if known."""
        return self.result.folder

    @property
    def grids(self) -> dict[str, bytes]:
        """Group → PNG bytes of images classified as that group."""
        return self.result.grids

    @property
    def images(self) -> Any:
        """The per-image table (``images.csv``)."""
        return self.result.images


def load_audit(
    path: str | os.PathLike[str], label: str, *, param: str = "AUDIT_JSON"
) -> AuditColumn:
    """Read a saved audit (its ``audit.json`` or folder) with the grids and table beside it.

    Raises:
        DataError: Missing file, invalid JSON, another schema version or missing fields.
    """
    from ..audit.result import AuditResult

    return AuditColumn(label, AuditResult.load(path, param=param))


def _cell(entry: Estimate | None) -> dict[str, Any]:
    """``{value, ci, bound}`` of an estimate; ``bound`` is ``('≤' | '≥', x)`` if censored."""
    if entry is None:
        return {"value": None, "ci": None, "bound": None}
    return {
        "value": entry.value,
        "ci": entry.ci,
        "bound": entry.bound,
        "constrained": entry.constrained,
    }


def _reading_name(reading: str) -> str:
    return {"acc": "ACC", "pacc": "PACC", "em": "EM"}.get(reading, reading)


def comparisons(columns: Sequence[AuditColumn]) -> list[tuple[int, int]]:
    """``(earlier, later)`` column pairs whose change the report shows.

    Each column is compared with the nearest earlier column measured by the same classifier
    (same sha256): a change read by two different classifiers would mix the models' change with
    the classifiers' disagreement. Before/after under two evaluators gives two comparisons.
    """
    out = []
    for i, c in enumerate(columns):
        sha = c.result.settings.classifier_sha256
        for j in range(i - 1, -1, -1):
            if columns[j].result.settings.classifier_sha256 == sha:
                out.append((j, i))
                break
    return out


def _tuned_against(columns: Sequence[AuditColumn]) -> tuple[set[str], set[str]]:
    """Classifier hashes and prompts that any audited checkpoint was remediated with."""
    shas, prompts = set(), set()
    for c in columns:
        rem = c.result.settings.remediation
        if rem is not None and rem.classifier_sha256:
            shas.add(rem.classifier_sha256)
        prompts.update(rem.prompts if rem is not None else ())
    return shas, prompts


def evaluator_rows(columns: Sequence[AuditColumn]) -> tuple[list[str], list[list[str]]]:
    """Which classifier measured each column, and whether remediation saw it or the prompts."""
    shas, trained_on = _tuned_against(columns)
    header = [
        "column",
        "evaluator (classifier)",
        "sha256",
        "remediation tuned against it",
        "prompts",
    ]
    rows = []
    for c in columns:
        cfg = c.result.settings
        sha = cfg.classifier_sha256
        seen = "–" if not shas else ("yes" if sha in shas else "no (independent)")
        prompts = list(cfg.prompts)
        shared = sum(p in trained_on for p in prompts)
        if not trained_on:
            where = f"{len(prompts)}"
        elif shared == 0:
            where = f"{len(prompts)} held out"
        else:
            where = f"{shared} of {len(prompts)} were training prompts"
        rows.append([c.label, cfg.classifier_name, sha[:12], seen, where])
    return header, rows


def evaluator_notes(columns: Sequence[AuditColumn]) -> list[str]:
    """One line per remediated column: its corrected shares against the target, and by whom.

    Generated from the audits, so a README quoting the report quotes no number by hand.
    """
    shas, _ = _tuned_against(columns)
    if not shas:
        return []
    _, rows = evaluator_rows(columns)
    lines = []
    for c, row in zip(columns, rows, strict=True):
        if c.result.settings.remediation is None:
            continue
        reading = c.result.default_reading
        parts = []
        for g in c.result.groups:
            cell = _cell(c.result.overall.share(g, reading))
            t = c.result.target.get(g)
            text = _cell_text(cell, "share")
            if cell["ci"] is not None and t is not None and cell["bound"] is None:
                inside = cell["ci"][0] <= t <= cell["ci"][1]
                text += f", target {_fmt(t, 'share')} {'inside' if inside else 'outside'}"
            parts.append(f"{g} {text}")
        who = (
            "the independent evaluator"
            if row[3].startswith("no")
            else "the classifier it was tuned against"
        )
        lines.append(f"*{c.label}*, read by {who} on {row[4]} prompt(s): " + "; ".join(parts) + ".")
    return lines


def headline_rows(columns: Sequence[AuditColumn]) -> list[dict[str, Any]]:
    """The headline table: one row per measure, one cell per audit, changes between columns.

    Each row has ``measure``, ``kind`` (``share`` in [0, 1], ``kl``, ``p``, ``fid``, ``kid``),
    ``target`` (or ``None``), ``cells`` (``{value, ci, bound}`` per column; ``value`` is
    ``None`` for a censored or missing value, whose ``bound`` is then shown) and ``deltas`` (one
    per :func:`comparisons` pair, later minus earlier; ``None`` where a side has no value).
    """
    pairs = comparisons(columns)
    first = columns[0].result
    groups = first.groups
    reading = first.default_reading
    name = _reading_name(reading)
    rows: list[dict[str, Any]] = []

    def add(measure: str, kind: str, cells: list[dict], target: float | None = None) -> None:
        values = [c["value"] for c in cells]
        deltas = [
            None if values[j] is None or values[i] is None else values[i] - values[j]
            for j, i in pairs
        ]
        rows.append(
            {"measure": measure, "kind": kind, "target": target, "cells": cells, "deltas": deltas}
        )

    for g in groups:
        add(
            f"{g} share, corrected ({name})",
            "share",
            [_cell(c.result.overall.share(g, reading)) for c in columns],
            first.target.get(g),
        )
        if (seq := sequential_cells(columns, g)) is not None:
            add(f"{g} share, anytime-valid ({name})", "share", seq)
        add(
            f"{g} share, classifier's labels",
            "share",
            [_cell(c.result.overall.share(g, "raw")) for c in columns],
        )
    spreads = [c.result.dispersion.over_prompts for c in columns]
    for g in groups if any(spreads) else ():
        cells = [_cell(s.share(g) if s else None) for s in spreads]
        label = f"{g} share over the wordings (prompts as a sample of them)"
        add(label, "share", cells, first.target.get(g))
    dist = [c.result.overall.distances.get(reading) for c in columns]
    add(
        f"KL(target‖generated), {name}",
        "kl",
        [_cell(d.kl_target_to_generated if d else None) for d in dist],
    )
    add(f"largest |gap|, {name}", "share", [_cell(d.max_abs_gap if d else None) for d in dist])
    add(
        "mean |gap| over prompts",
        "share",
        [_cell(c.result.dispersion.mean_abs_gap) for c in columns],
    )
    add(
        "worst prompt |gap|",
        "share",
        [_cell(_worst_gap(c)) for c in columns],
    )
    cells = []
    for c in columns:
        chi = c.result.overall.chi_square
        bound = ("≤", chi.p_value) if chi and chi.p_value_is_bound else None
        p = chi.p_value if chi else None
        cells.append({"value": None if bound else p, "ci": None, "bound": bound})
    add("on-target test p (labels vs target·C)", "p", cells)
    for measure, kind, cells in _quality_cells(columns, groups):
        add(measure, kind, cells)
    return rows


def _quality_cells(
    columns: Sequence[AuditColumn], groups: Sequence[str]
) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """FID and KID rows (measure, kind, cells) at a subsample size every audit has."""
    qualities = [c.result.quality.by_group if c.result.quality else {} for c in columns]
    if not any(qualities):
        return []
    out = []
    for metric in ("fid", "kid"):
        for g in [*groups, "overall"]:
            entries: list[QualityEntry | None] = [q.get(g) for q in qualities]
            n = common_size(entries)
            cells = []
            for e in entries:
                at = e.at(n) if e else None
                m = getattr(at, metric) if at else None
                cells.append(
                    {"value": m.mean, "ci": None, "sd": m.sd, "bound": None}
                    if m
                    else {"value": None, "ci": None, "bound": None}
                )
            size = f"n = {n} each side" if n else "no common n"
            out.append((f"{metric.upper()}, {g} ({size}; ± sd)", metric, cells))
    return out


def _worst_gap(column: AuditColumn) -> Estimate | None:
    worst = column.result.dispersion.worst_prompt
    return worst.abs_gap if worst else None


def _fmt(value: float | None, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    if kind == "share":
        return f"{100 * value:.1f}%"
    if kind == "kl":
        return f"{value:.4f}"
    if kind == "kid":
        return f"{value:.3f}"
    if kind == "p":
        return f"{value:.3g}"
    return f"{value:.2f}"


def _fmt_delta(value: float | None, kind: str) -> str:
    if value is None or not np.isfinite(value) or kind == "p":
        return "–"
    sign = "+" if value >= 0 else "−"  # a true minus sign, as in the other cells' deltas
    if kind == "share":
        return f"{sign}{100 * abs(value):.1f} pp"
    return sign + _fmt(abs(value), kind)


def _cell_text(cell: dict[str, Any], kind: str) -> str:
    ci = cell.get("ci")
    interval = f" [{_fmt(ci[0], kind)}, {_fmt(ci[1], kind)}]" if ci is not None else ""
    if cell.get("bound") is not None:
        sign, x = cell["bound"]
        if kind == "p":  # a simulated p-value with no exceedance: a bound, not a censored share
            return f"{sign} {_fmt(x, kind)}"
        return f"{sign} {_fmt(x, kind)} (censored){interval}"
    if cell.get("value") is None:
        return interval.strip() if cell.get("interval_only") and interval else "–"
    text = _fmt(cell["value"], kind)
    if cell.get("sd") is not None:
        return f"{text} ± {_fmt(cell['sd'], kind)}"
    if cell.get("constrained"):
        text += " (constrained)"
    return text + interval


def format_rows(columns: Sequence[AuditColumn]) -> tuple[list[str], list[list[str]]]:
    """The headline table as strings: header and rows (shared by every format)."""
    rows = headline_rows(columns)
    labels = [c.label for c in columns]
    header = ["measure", "target", *labels]
    header += [f"Δ {labels[i]} − {labels[j]}" for j, i in comparisons(columns)]
    out = []
    for r in rows:
        target = _fmt(r["target"], r["kind"]) if r["target"] is not None else ""
        out.append(
            [
                r["measure"],
                target,
                *[_cell_text(c, r["kind"]) for c in r["cells"]],
                *[_fmt_delta(d, r["kind"]) for d in r["deltas"]],
            ]
        )
    return header, out


def paired_analysis(
    before: AuditColumn, after: AuditColumn, *, n_boot: int | None = None
) -> dict[str, Any] | None:
    """Paired statistics of two audits whose images share prompts and seeds (else ``None``).

    :func:`medfair_audit.audit.paired.paired_audits`, labelled with the columns' labels.
    """
    from ..audit.paired import paired_audits

    result = paired_audits(before.result, after.result, n_boot=n_boot)
    if result is None:
        return None
    return {"before": before.label, "after": after.label, **result}


def paired_rows(paired: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The paired analysis as a small table (shared by every format)."""
    name = _reading_name(paired["reading"])
    header = ["paired (same prompt and seed)", f"{paired['before']} → {paired['after']}"]
    rows = [
        ["image pairs", str(paired["n_pairs"])],
        ["label changed", _fmt(paired["changed"], "share")],
    ]
    for g, to in paired["flips"].items():
        for h, share in to.items():
            rows.append([f"labels {g} → {h}", _fmt(share, "share")])
    for g, m in paired["mcnemar"].items():
        rows.append(
            [
                f"McNemar exact p ({g}: {m['left']} left, {m['entered']} entered)",
                _fmt(m["p_value"], "p"),
            ]
        )
    for g, c in paired["change"].items():
        rows.append([f"Δ {g} share, {name} (paired bootstrap)", _delta_text(c)])
    return header, rows


def _delta_text(cell: dict[str, Any]) -> str:
    """A paired change (``paired_change``'s own ``{value, ci}``, computed, not read from a file)."""
    ci = cell.get("ci")
    interval = f" [{_fmt_delta(ci[0], 'share')}, {_fmt_delta(ci[1], 'share')}]" if ci else ""
    if cell.get("value") is None:
        return "censored" + interval
    return _fmt_delta(cell["value"], "share") + interval


def _title(columns: Sequence[AuditColumn]) -> str:
    first = columns[0].result
    against = first.target_name or "the target"
    return f"{first.attribute} distribution of generated images against {against}"
