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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audit.quality import common_n
from .sequential import sequential_cells

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


@dataclass
class AuditColumn:
    """One audit in a report.

    Attributes:
        label: Column label (e.g. ``before``).
        data: The ``audit.json`` content.
        folder: The audit's folder (grids, shards and ``images.csv`` are read from it), if known.
        grids: Group → PNG bytes of images classified as that group.
        images: The per-image table (``images.csv``), if known.
    """

    label: str
    data: dict[str, Any]
    folder: Path | None = None
    grids: dict[str, bytes] = field(default_factory=dict)
    images: Any = None


def load_audit(
    path: str | os.PathLike[str], label: str, *, param: str = "AUDIT_JSON"
) -> AuditColumn:
    """Read a saved audit (its ``audit.json`` or folder) with the grids and table beside it.

    Raises:
        DataError: Missing file, invalid JSON, another schema version or missing fields.
    """
    from ..audit.result import AuditResult

    result = AuditResult.load(path, param=param)
    return AuditColumn(label, result.data, result.folder, result.grids, result.images)


def _cell(entry: dict[str, Any] | None) -> dict[str, Any]:
    """``{value, ci, bound}`` of an estimate entry; ``bound`` is ``('≤' | '≥', x)`` if censored."""
    if not entry:
        return {"value": None, "ci": None, "bound": None}
    bound = None
    b = entry.get("bound") or {}
    if entry.get("value") is None and "at_most" in b:
        bound = ("≤", b["at_most"])
    elif entry.get("value") is None and "at_least" in b:
        bound = ("≥", b["at_least"])
    ci = entry.get("ci")
    return {
        "value": entry.get("value"),
        "ci": tuple(ci) if ci else None,
        "bound": bound,
        # projected onto the simplex because another group is censored: another estimator than
        # the interval's, so the value need not lie inside it
        "constrained": "simplex-constrained" in (entry.get("method") or ""),
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
        sha = c.data["config"]["classifier_sha256"]
        for j in range(i - 1, -1, -1):
            if columns[j].data["config"]["classifier_sha256"] == sha:
                out.append((j, i))
                break
    return out


def _tuned_against(columns: Sequence[AuditColumn]) -> tuple[set[str], set[str]]:
    """Classifier hashes and prompts that any audited checkpoint was remediated with."""
    shas, prompts = set(), set()
    for c in columns:
        rem = c.data["config"].get("remediation") or {}
        if rem.get("classifier_sha256"):
            shas.add(rem["classifier_sha256"])
        prompts.update(rem.get("prompts") or [])
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
        cfg = c.data["config"]
        sha = cfg["classifier_sha256"]
        seen = "–" if not shas else ("yes" if sha in shas else "no (independent)")
        prompts = list(cfg.get("prompts") or [])
        shared = sum(p in trained_on for p in prompts)
        if not trained_on:
            where = f"{len(prompts)}"
        elif shared == 0:
            where = f"{len(prompts)} held out"
        else:
            where = f"{shared} of {len(prompts)} were training prompts"
        clf = cfg["classifier"]
        name = (
            ", ".join(f"{a}={Path(v).name}" for a, v in clf.items())
            if isinstance(clf, dict)
            else Path(clf).name
        )
        rows.append([c.label, name, sha[:12], seen, where])
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
        if not c.data["config"].get("remediation"):
            continue
        reading = c.data["default_reading"]
        parts = []
        for g in c.data["groups"]:
            cell = _cell(c.data["proportions"].get(reading, {}).get(g))
            t = c.data["target"].get(g)
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
    first = columns[0].data
    groups = list(first["groups"])
    reading = first["default_reading"]
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
            [_cell(c.data["proportions"].get(reading, {}).get(g)) for c in columns],
            first["target"].get(g),
        )
        if (seq := sequential_cells(columns, g)) is not None:
            add(f"{g} share, anytime-valid ({name})", "share", seq)
        add(
            f"{g} share, classifier's labels",
            "share",
            [_cell(c.data["proportions"]["raw"].get(g)) for c in columns],
        )
    dist = [c.data["distances"].get(reading, {}) for c in columns]
    add(
        f"KL(target‖generated), {name}",
        "kl",
        [_cell(d.get("kl_target_to_generated")) for d in dist],
    )
    add(f"largest |gap|, {name}", "share", [_cell(d.get("max_abs_gap")) for d in dist])
    add(
        "mean |gap| over prompts",
        "share",
        [_cell(c.data["dispersion"]["mean_abs_gap"]) for c in columns],
    )
    add(
        "worst prompt |gap|",
        "share",
        [_cell(c.data["dispersion"]["worst_prompt"]["abs_gap"]) for c in columns],
    )
    cells = []
    for c in columns:
        chi = c.data["chi_square"]
        bound = ("≤", chi["p_value"]) if chi.get("p_value_is_bound") else None
        cells.append({"value": None if bound else chi.get("p_value"), "ci": None, "bound": bound})
    add("on-target test p (labels vs target·C)", "p", cells)
    qualities = [(c.data.get("quality") or {}).get("by_group", {}) for c in columns]
    if any(qualities):
        for metric in ("fid", "kid"):
            for g in [*groups, "overall"]:
                entries = [q.get(g) for q in qualities]
                n = common_n(entries)
                cells = []
                for e in entries:
                    at = (e or {}).get("at_n", {}).get(n) if n else None
                    m = (at or {}).get(metric)
                    cells.append(
                        {"value": m["mean"], "ci": None, "sd": m["sd"], "bound": None}
                        if m
                        else {"value": None, "ci": None, "bound": None}
                    )
                size = f"n = {n} each side" if n else "no common n"
                add(f"{metric.upper()}, {g} ({size}; ± sd)", metric, cells)
    return rows


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

    result = paired_audits(before.data, before.images, after.data, after.images, n_boot=n_boot)
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
        rows.append([f"Δ {g} share, {name} (paired bootstrap)", _delta_text(_cell(c))])
    return header, rows


def _delta_text(cell: dict[str, Any]) -> str:
    ci = cell.get("ci")
    interval = f" [{_fmt_delta(ci[0], 'share')}, {_fmt_delta(ci[1], 'share')}]" if ci else ""
    if cell.get("value") is None:
        return "censored" + interval
    return _fmt_delta(cell["value"], "share") + interval


def _title(columns: Sequence[AuditColumn]) -> str:
    first = columns[0].data
    against = first.get("target_name") or "the target"
    return f"{first.get('attribute', '')} distribution of generated images against {against}"
