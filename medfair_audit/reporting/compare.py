"""Before-and-after reports: one or more ``audit.json`` side by side, in HTML, Markdown or LaTeX.

The headline table is built once (:func:`headline_rows`) and formatted three ways, so the numbers
in a paper's LaTeX table are the ones in the HTML report. A censored value (a share beyond what
the classifier's errors explain, a KL at the ε ceiling) is printed as its bound (``≤ 2.3%``,
``≥ 0.91``) and no change is computed from it. FID and KID are compared only at a subsample size
every audit has. When audits share prompts and seeds, the paired analysis
(:func:`~medfair_audit.metrics.paired.paired_change`) joins the table. The HTML is a single
self-contained file (plots and images embedded as data URIs) rendered by Jinja2 with
autoescaping on.
Paired grids show the same seed before and after: audits made with the same ``--seed``,
prompts and number of images draw the same initial noise for image ``i`` of prompt ``p``, and
their shards hold the images.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text, check_out
from ..audit.quality import common_n
from ..exceptions import ConfigError, DataError
from .readers import has_readers, reader_rows, support_rows

__all__ = [
    "FORMATS",
    "AuditColumn",
    "audit_images",
    "comparisons",
    "evaluator_rows",
    "headline_rows",
    "load_audit",
    "paired_images",
    "render_report",
    "write_report",
]

FORMATS = ("html", "md", "latex")
READERS_CAPTION = (
    "Corrected (PACC) shares by other classifiers of the same attribute, and each one's "
    "difference from the audit's classifier with a paired-bootstrap 95% interval. Under label "
    "shift all estimate the same true share: an interval without 0 says a reading is bent "
    "by how the generated images look."
)
SUPPORT_CAPTION = (
    "Share of generated images whose 5th nearest real held-out image is farther than the real "
    "images' own 95th percentile, in each classifier's feature space (real images: 5%), by "
    "the audit classifier's label, with Wilson 95% intervals."
)


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
    return {"value": entry.get("value"), "ci": tuple(ci) if ci else None, "bound": bound}


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
    ``None`` for a censored or missing value, whose ``bound`` is then shown) and ``deltas``
    (one per :func:`comparisons` pair, later minus earlier; ``None`` where either side has no
    value).
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
        return "–"
    text = _fmt(cell["value"], kind)
    if cell.get("sd") is not None:
        return f"{text} ± {_fmt(cell['sd'], kind)}"
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

    Images are matched on (prompt text, seed) through each audit's ``images.csv``.
    """
    from ..audit.joint import heldout_from_audit
    from ..metrics.paired import paired_change

    ta, tb = before.images, after.images
    if ta is None or tb is None or not len(ta) or not len(tb):
        return None
    groups = list(before.data["groups"])
    cols = [f"p_{g}" for g in groups]
    if any(c not in ta.columns or c not in tb.columns for c in cols):
        return None
    merged = ta.merge(tb, on=["prompt", "seed"], suffixes=("_a", "_b"))
    if not len(merged):
        return None
    same = before.data["config"]["classifier_sha256"] == after.data["config"]["classifier_sha256"]
    held_a = heldout_from_audit(before.data)
    held_b = held_a if same else heldout_from_audit(after.data)
    result = paired_change(
        merged[[f"{c}_a" for c in cols]].to_numpy(),
        merged[[f"{c}_b" for c in cols]].to_numpy(),
        groups,
        heldout_before=held_a,
        heldout_after=held_b,
        same_classifier=same,
        reading=before.data["default_reading"],
        n_boot=n_boot or before.data.get("n_boot") or 1000,
        confidence=before.data.get("confidence", 0.95),
        seed=int(before.data["config"].get("seed", 0)),
    )
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


def _markdown(text: str) -> str:
    """User text (labels, prompts, group names) safe in a Markdown table cell or comment.

    ``|`` would end a cell and a line break the row; ``<``, ``>`` and ``&`` become entities so
    that no HTML a prompt holds (``<script>``, ``-->``) reaches a renderer that passes HTML on.
    """
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").split())


def render_markdown(columns: Sequence[AuditColumn], paired: Sequence[dict[str, Any]] = ()) -> str:
    """The headline table (and paired tables) as GitHub Markdown."""
    header, rows = format_rows(columns)
    conf = round(100 * columns[0].data.get("confidence", 0.95))
    title = _markdown(_title(columns)[:1].upper() + _title(columns)[1:])
    lines = [
        f"<!-- medfair report: {_markdown(', '.join(c.label for c in columns))} -->",
        f"**{title}.** Values with {conf}% "
        "intervals; censored values are shown as their bound; FID/KID at a common subsample "
        "size (mean ± sd over draws).",
        "",
    ]

    def cells(row: list[str]) -> str:
        return "| " + " | ".join(_markdown(x) for x in row) + " |"

    def table(head: list[str], body: list[list[str]]) -> None:
        lines.append(cells(head))
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        lines.extend(cells(r) for r in body)

    table(header, rows)
    if all(c.data.get("joint") for c in columns):
        from .joint import joint_rows, marginal_rows

        j = columns[0].data["joint"]
        lines += [
            "",
            f"**Joint cells ({_markdown(' × '.join(j['attributes']))}).** "
            f"{_markdown(j['reading'].upper())} shares; Holm-adjusted p of share = target "
            f"(* rejected at {j['holm']['alpha']:g}); (constrained): projected onto the simplex "
            "because another cell is censored, beside its unconstrained interval; "
            f"{_markdown(j['method'] or '')}.",
            "",
        ]
        table(*joint_rows(columns))
        lines += ["", "**Marginals.**", ""]
        table(*marginal_rows(columns))
    if len({c.data["config"]["classifier_sha256"] for c in columns}) > 1 or any(
        c.data["config"].get("remediation") for c in columns
    ):
        lines.append("")
        table(*evaluator_rows(columns))
        notes = evaluator_notes(columns)
        if notes:
            lines.append("")
            lines += [f"- {_markdown(n)}" for n in notes]
    if has_readers(columns):
        header, body = reader_rows(columns)
        if body:
            lines += ["", f"**Other readers of the same images.** {_markdown(READERS_CAPTION)}", ""]
            table(header, body)
        header, body = support_rows(columns)
        if body:
            lines += ["", f"**Outside the real images' support.** {_markdown(SUPPORT_CAPTION)}", ""]
            table(header, body)
    for p in paired:
        lines.append("")
        table(*paired_rows(p))
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "^": r"\textasciicircum{}",
    "‖": r"$\Vert$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "±": r"$\pm$",
    # Every other symbol the renderers write, in a form pdflatex (no Unicode engine) compiles.
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "≈": r"$\approx$",
    "≠": r"$\neq$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "⊗": r"$\otimes$",
    "∩": r"$\cap$",
    "→": r"$\rightarrow$",
    "∞": r"$\infty$",
    "√": r"$\surd$",
    "…": r"\ldots{}",
    "–": "--",
    "—": "---",
    "°": r"$^\circ$",
    "ᵀ": r"$^{T}$",
    "⁻": r"$^{-}$",
    "²": r"$^{2}$",
    "³": r"$^{3}$",
    "₀": r"$_{0}$",
    "₁": r"$_{1}$",
    "₂": r"$_{2}$",
    "ₖ": r"$_{k}$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "χ": r"$\chi$",
    "ε": r"$\varepsilon$",
    "κ": r"$\kappa$",
    "λ": r"$\lambda$",
    "μ": r"$\mu$",
    "σ": r"$\sigma$",
    "Σ": r"$\Sigma$",
    "Ĉ": r"$\hat{C}$",
    "\u0302": "",  # a combining circumflex (written as a hat above)
}


def _latex_char(ch: str) -> str:
    """One character in a form pdflatex compiles: escaped, a math symbol, or Latin text.

    Letters of the Latin scripts pass through (LaTeX reads UTF-8 input for them); anything else
    outside ASCII that no rule covers becomes ``?`` rather than a document that fails to build.
    """
    if ch in _LATEX_SPECIAL:
        return _LATEX_SPECIAL[ch]
    if ord(ch) < 128 or (ord(ch) < 0x250 and unicodedata.category(ch).startswith("L")):
        return ch
    return "?"


def _latex(text: str) -> str:
    """User text safe in a LaTeX table cell.

    Specials are escaped; line breaks (a blank line would end the paragraph inside a tabular)
    and other runs of whitespace become one space.
    """
    return "".join(_latex_char(ch) for ch in " ".join(text.split()))


def render_latex(columns: Sequence[AuditColumn], paired: Sequence[dict[str, Any]] = ()) -> str:
    """The headline table (and paired tables) as LaTeX ``table`` floats with booktabs rules."""
    conf = round(100 * columns[0].data.get("confidence", 0.95))

    def table(head: list[str], body: list[list[str]], caption: str, label: str) -> list[str]:
        out = [
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
            "\\toprule",
            " & ".join(_latex(h) for h in head) + " \\\\",
            "\\midrule",
        ]
        out += [" & ".join(_latex(x) for x in r) + " \\\\" for r in body]
        out += [
            "\\bottomrule",
            "\\end{tabular}",
            f"\\caption{{{caption}}}",
            f"\\label{{{label}}}",
            "\\end{table}",
        ]
        return out

    lines = ["% medfair report; needs \\usepackage{booktabs}"]
    lines += table(
        *format_rows(columns),
        _latex(_title(columns)[:1].upper() + _title(columns)[1:])
        + f", with {conf}\\% intervals; censored values are shown as their bound; FID/KID "
        "at a common subsample size (mean $\\pm$ sd over draws).",
        "tab:medfair",
    )
    if all(c.data.get("joint") for c in columns):
        from .joint import joint_rows, marginal_rows

        j = columns[0].data["joint"]
        lines += table(
            *joint_rows(columns),
            f"Joint cells ({_latex(' × '.join(j['attributes']))}): {j['reading'].upper()} shares "
            f"with {conf}\\% intervals, images per cell and Holm-adjusted p of share = target "
            f"(* rejected at {j['holm']['alpha']:g}; constrained: projected onto the simplex "
            "because another cell is censored).",
            "tab:medfair-joint",
        )
        lines += table(
            *marginal_rows(columns),
            f"Marginal shares of each attribute with {conf}\\% intervals, and Shen et al.'s "
            "bias (mean absolute difference over pairs of groups).",
            "tab:medfair-marginals",
        )
    if has_readers(columns):
        for rows, caption, label in (
            (reader_rows(columns), READERS_CAPTION, "tab:medfair-readers"),
            (support_rows(columns), SUPPORT_CAPTION, "tab:medfair-support"),
        ):
            if rows[1]:
                lines += table(*rows, _latex(caption), label)
    for i, p in enumerate(paired):
        lines += table(
            *paired_rows(p),
            "Paired comparison of images with the same prompt and seed.",
            f"tab:medfair-paired{i or ''}",
        )
    return "\n".join(lines) + "\n"


def audit_images(folder: str | os.PathLike[str], prompt_index: int | None = None) -> dict | None:
    """The arrays an audit's shards hold, concatenated in plan order (per prompt, by image).

    Args:
        folder: The audit's output folder (with ``shards/``).
        prompt_index: Only this prompt's images; ``None`` for all.

    Returns:
        ``seeds``, ``images`` (uint8 ``(N, C, H, W)``) and ``probs`` as numpy arrays, or ``None``
        when there are no shards (deleted, or the audit was made elsewhere).
    """
    from ..generation.engine import stored_shards

    parts = list(stored_shards(Path(folder) / "shards", prompt_index))
    if not parts:
        return None
    return {k: np.concatenate([s[k].numpy() for s in parts]) for k in ("seeds", "images", "probs")}


def paired_images(
    before: AuditColumn, after: AuditColumn, *, per_prompt: int = 8
) -> dict[str, Any] | None:
    """Images with the same prompt and seed in two audits, and how they changed.

    Returns:
        ``None`` when the audits share no seeds (or their shards are gone); otherwise ``pairs``
        (per prompt: prompt, PNG of two rows, predicted groups before/after) and ``summary``
        (number of pairs, share whose predicted group changed, mean absolute pixel change).
    """
    from . import image_grid_png

    if before.folder is None or after.folder is None:
        return None
    groups = before.data["groups"]
    prompts_a = before.data["config"].get("prompts", [])
    prompts_b = after.data["config"].get("prompts", [])
    pairs, changed, n, diffs = [], 0, 0, []
    for p, prompt in enumerate(prompts_a):
        if p >= len(prompts_b) or prompts_b[p] != prompt:
            continue
        a, b = audit_images(before.folder, p), audit_images(after.folder, p)
        if a is None or b is None:
            continue
        common, ia, ib = np.intersect1d(a["seeds"], b["seeds"], return_indices=True)
        if not len(common):
            continue
        order = np.argsort(ia)
        ia, ib = ia[order], ib[order]
        la, lb = a["probs"][ia].argmax(1), b["probs"][ib].argmax(1)
        changed += int((la != lb).sum())
        n += len(ia)
        diffs.append(np.abs(a["images"][ia].astype(np.int16) - b["images"][ib].astype(np.int16)))
        k = min(per_prompt, len(ia))
        grid = np.concatenate([a["images"][ia[:k]], b["images"][ib[:k]]])
        pairs.append(
            {
                "prompt": prompt,
                "png": image_grid_png(grid, cols=k),
                "before": [groups[i] for i in la[:k]],
                "after": [groups[i] for i in lb[:k]],
            }
        )
    if not n:
        return None
    return {
        "before": before.label,
        "after": after.label,
        "pairs": pairs,
        "summary": {
            "n_pairs": n,
            "changed_group": changed / n,
            "mean_abs_pixel_change": float(np.mean(np.concatenate([d.ravel() for d in diffs]))),
        },
    }


def _plot(columns: Sequence[AuditColumn]) -> bytes:
    from . import proportion_plot_png

    return proportion_plot_png({c.label: c.data for c in columns})


def _shrink_png(png: bytes, factor: int = 2) -> bytes:
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(png))
    im = im.resize((max(1, im.width // factor), max(1, im.height // factor)), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def render_html(
    columns: Sequence[AuditColumn],
    *,
    paired: bool = True,
    small: bool = False,
    paired_stats: Sequence[dict[str, Any]] = (),
    figures: Sequence[tuple[str, bytes]] = (),
) -> str:
    """The self-contained HTML report (one audit renders alone as well).

    Args:
        columns: The audits, in column order.
        paired: Add paired grids of the seeds the first audit shares with each later one.
        small: Half-size grids and fewer pairs (for a report committed to a repository).
        paired_stats: :func:`paired_analysis` results to show.
        figures: ``(caption, PNG bytes)`` shown in the methods section (e.g. the
            fairness–quality trade-off of ``benchmarks/bench_tradeoff.py``).
    """
    from . import _env

    header, rows = format_rows(columns)
    pairs = []
    if paired:
        for j, i in comparisons(columns):
            p = paired_images(columns[j], columns[i], per_prompt=6 if small else 8)
            if p is not None:
                pairs.append(p)
    if small:
        columns = [
            AuditColumn(
                c.label, c.data, c.folder, {g: _shrink_png(v) for g, v in c.grids.items()}, c.images
            )
            for c in columns
        ]
        for p in pairs:
            for q in p["pairs"]:
                q["png"] = _shrink_png(q["png"])
    from .. import __version__
    from .joint import joint_heatmap_png, joint_rows, marginal_rows

    versions = {"medfair (report)": __version__}
    joint = None
    if all(c.data.get("joint") for c in columns):
        joint = {
            "heatmap": joint_heatmap_png(columns),
            "cells": joint_rows(columns),
            "marginals": marginal_rows(columns),
            "data": columns[0].data["joint"],
        }
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            columns=columns,
            first=columns[0].data,
            header=header,
            rows=rows,
            plot=_plot(columns),
            pairs=pairs,
            paired_stats=[(p, paired_rows(p)) for p in paired_stats],
            evaluators=evaluator_rows(columns),
            figures=list(figures),
            title=_title(columns),
            report_versions=versions,
            joint=joint,
            readers=(reader_rows(columns), support_rows(columns)) if has_readers(columns) else None,
            readers_caption=READERS_CAPTION,
            support_caption=SUPPORT_CAPTION,
        )
    )


def render_report(
    columns: Sequence[AuditColumn],
    fmt: str = "html",
    *,
    small: bool = False,
    figures: Sequence[tuple[str, bytes]] = (),
) -> str:
    """The report in ``html``, ``md`` or ``latex`` (``small``, ``figures``: :func:`render_html`)."""
    if fmt not in FORMATS:
        raise ConfigError(f"expected one of {', '.join(FORMATS)}, got '{fmt}'", param="format")
    paired = [
        p
        for j, i in comparisons(columns)
        if (p := paired_analysis(columns[j], columns[i])) is not None
    ]
    if fmt == "html":
        return render_html(columns, small=small, paired_stats=paired, figures=figures)
    if fmt == "md":
        return render_markdown(columns, paired)
    return render_latex(columns, paired)


def _check_comparable(columns: Sequence[AuditColumn]) -> None:
    first = columns[0].data
    for c in columns[1:]:
        if list(c.data["groups"]) != list(first["groups"]):
            raise DataError(
                f"audit '{c.label}' has groups {c.data['groups']}, the first has "
                f"{first['groups']}: they cannot share a table",
                param="AUDIT_JSON",
            )
        if c.data["target"] != first["target"]:
            raise DataError(
                f"audit '{c.label}' was measured against another target than the first",
                param="AUDIT_JSON",
            )


def write_report(
    audits: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    fmt: str | None = None,
    small: bool = False,
    figures: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
) -> Path:
    """Write a report comparing ``audits`` (``audit.json`` files or their folders).

    Args:
        audits: One or more audits, in column order (e.g. before, after).
        out: Output file; its suffix picks the format when ``fmt`` is ``None``
            (``.md`` → Markdown, ``.tex`` → LaTeX, anything else → HTML).
        labels: Column labels (default: ``before``/``after`` for two, else the folder names).
        fmt: ``html``, ``md`` or ``latex``.
        small: Half-size image grids and fewer pairs in HTML.
        figures: PNG files shown in the HTML's methods section, captioned by their file name.
        overwrite: Replace an existing ``out``.

    Raises:
        ConfigError: Wrong number of labels, unknown format.
        DataError: An audit is missing or unreadable, audits are not comparable, or ``out``
            exists and ``overwrite`` is false.
    """
    if not audits:
        raise ConfigError("expected at least one audit.json", param="AUDIT_JSON")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"'{out}' is a folder; expected a file name", param="out")
    check_out(out, overwrite=overwrite)
    if fmt is None:
        fmt = {".md": "md", ".tex": "latex"}.get(out.suffix.lower(), "html")
    if fmt not in FORMATS:
        raise ConfigError(f"expected one of {', '.join(FORMATS)}, got '{fmt}'", param="format")
    if labels is None:
        if len(audits) == 2:
            labels = ["before", "after"]
        else:
            labels = [Path(a).parent.name if Path(a).suffix else Path(a).name for a in audits]
    labels = [str(x).strip() for x in labels]
    if len(labels) != len(audits) or any(not x for x in labels):
        raise ConfigError(
            f"expected {len(audits)} non-empty comma-separated labels, got {len(labels)}",
            param="labels",
        )
    columns = [load_audit(a, label) for a, label in zip(audits, labels, strict=True)]
    _check_comparable(columns)
    pngs = []
    for f in figures:
        path = Path(f)
        data = path.read_bytes() if path.is_file() else b""
        if not data.startswith(b"\x89PNG"):
            raise DataError(f"'{path}' is not a PNG file", param="figure")
        pngs.append((path.stem.replace("-", " ").replace("_", " "), data))
    return atomic_write_text(out, render_report(columns, fmt, small=small, figures=pngs))
