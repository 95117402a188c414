"""Before-and-after reports: one or more ``audit.json`` side by side, in HTML, Markdown or LaTeX.

The headline table is built once (:func:`headline_rows`) and formatted three ways, so the numbers
in a paper's LaTeX table are the ones in the HTML report. The HTML is a single self-contained
file (plots and images embedded as data URIs) rendered by Jinja2 with autoescaping on.
Paired grids show the same seed before and after: audits made with the same ``--seed``,
prompts and number of images draw the same initial noise for image ``i`` of prompt ``p``, and
their shards hold the images.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text
from ..exceptions import ConfigError, DataError

__all__ = [
    "FORMATS",
    "AuditColumn",
    "audit_images",
    "headline_rows",
    "load_audit",
    "paired_images",
    "render_report",
    "write_report",
]

FORMATS = ("html", "md", "latex")
SCHEMA_VERSION = 1
_REQUIRED = ("groups", "target", "proportions", "kl_divergence", "distances", "config")


@dataclass
class AuditColumn:
    """One audit in a report.

    Attributes:
        label: Column label (e.g. ``before``).
        data: The ``audit.json`` content.
        folder: The audit's folder (grids and shards are read from it), if known.
        grids: Group → PNG bytes of images classified as that group.
    """

    label: str
    data: dict[str, Any]
    folder: Path | None = None
    grids: dict[str, bytes] = field(default_factory=dict)


def load_audit(
    path: str | os.PathLike[str], label: str, *, param: str = "AUDIT_JSON"
) -> AuditColumn:
    """Read an ``audit.json`` (or the folder holding one) and the grids beside it.

    Raises:
        DataError: Missing file, invalid JSON, another schema version or missing fields.
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
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        found = data.get("schema_version") if isinstance(data, dict) else None
        raise DataError(
            f"'{path}' is not a medfair audit.json of schema_version {SCHEMA_VERSION} "
            f"(found {found!r})",
            param=param,
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise DataError(f"'{path}' lacks {', '.join(missing)}", param=param)
    folder = path.parent
    grids = {
        g: (folder / f"grid_{g}.png").read_bytes()
        for g in data["groups"]
        if (folder / f"grid_{g}.png").is_file()
    }
    return AuditColumn(label=label, data=data, folder=folder, grids=grids)


def _value(entry: dict[str, Any] | None) -> tuple[float | None, tuple[float, float] | None]:
    if not entry:
        return None, None
    ci = entry.get("ci")
    return entry.get("value"), (tuple(ci) if ci else None)


def headline_rows(columns: Sequence[AuditColumn]) -> list[dict[str, Any]]:
    """The headline table: one row per measure, one cell per audit, changes between columns.

    Each row has ``measure``, ``kind`` (``share`` in [0, 1], ``kl``, ``fid``, ``kid``),
    ``target`` (or ``None``), ``cells`` (``(value, ci)`` per column, ``ci`` may be ``None``) and
    ``deltas`` (column ``i`` minus column ``i - 1``).
    """
    first = columns[0].data
    groups = list(first["groups"])
    rows: list[dict[str, Any]] = []

    def add(measure: str, kind: str, cells: list[Any], target: float | None = None) -> None:
        values = [c[0] for c in cells]
        deltas = [None if a is None or b is None else b - a for a, b in itertools.pairwise(values)]
        rows.append(
            {"measure": measure, "kind": kind, "target": target, "cells": cells, "deltas": deltas}
        )

    for g in groups:
        for reading in ("raw", "corrected"):
            cells = [_value(c.data["proportions"].get(reading, {}).get(g)) for c in columns]
            add(f"{g} share, {reading}", "share", cells, first["target"].get(g))
    for reading in ("corrected", "raw"):
        cells = [
            _value(c.data["kl_divergence"].get(reading, {}).get("target_to_generated"))
            for c in columns
        ]
        add(f"KL(target‖generated), {reading}", "kl", cells)
    cells = [_value(c.data["distances"].get("corrected", {}).get("max_abs_gap")) for c in columns]
    add("largest gap, corrected", "share", cells)
    if any(c.data.get("fid_by_group") for c in columns):
        for g in [*groups, "overall"]:
            cells = [
                ((c.data.get("fid_by_group") or {}).get(g, {}).get("fid"), None) for c in columns
            ]
            add(f"FID, {g}", "fid", cells)
        for g in groups:
            cells = []
            for c in columns:
                k = (c.data.get("kid_by_group") or {}).get(g)
                cells.append(
                    (k["kid"], (k["kid"] - k["std"], k["kid"] + k["std"])) if k else (None, None)
                )
            add(f"KID, {g} (± sd)", "kid", cells)
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
    return f"{value:.2f}"


def _fmt_delta(value: float | None, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    sign = "+" if value >= 0 else "−"  # a true minus sign, as in the other cells' deltas
    if kind == "share":
        return f"{sign}{100 * abs(value):.1f} pp"
    return sign + _fmt(abs(value), kind)


def _cell(cell: tuple[float | None, Any], kind: str) -> str:
    value, ci = cell
    text = _fmt(value, kind)
    if kind == "kid" and ci is not None and value is not None:
        return f"{text} ± {_fmt((ci[1] - ci[0]) / 2, kind)}"
    if ci is not None and value is not None:
        text += f" [{_fmt(ci[0], kind)}, {_fmt(ci[1], kind)}]"
    return text


def format_rows(columns: Sequence[AuditColumn]) -> tuple[list[str], list[list[str]]]:
    """The headline table as strings: header and rows (shared by every format)."""
    rows = headline_rows(columns)
    labels = [c.label for c in columns]
    header = ["measure", "target", *labels]
    header += [f"Δ {b} − {a}" for a, b in itertools.pairwise(labels)]
    out = []
    for r in rows:
        target = _fmt(r["target"], r["kind"]) if r["target"] is not None else ""
        out.append(
            [
                r["measure"],
                target,
                *[_cell(c, r["kind"]) for c in r["cells"]],
                *[_fmt_delta(d, r["kind"]) for d in r["deltas"]],
            ]
        )
    return header, out


def render_markdown(columns: Sequence[AuditColumn]) -> str:
    """The headline table as GitHub Markdown."""
    header, rows = format_rows(columns)
    conf = round(100 * columns[0].data.get("confidence", 0.95))
    lines = [
        f"<!-- medfair report: {', '.join(c.label for c in columns)} -->",
        f"Values with {conf}% intervals (KID: ± sd); shares of "
        f"{columns[0].data.get('attribute', '')} groups among generated images.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
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
    "^": r"\textasciicircum{}",
    "‖": r"$\Vert$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "±": r"$\pm$",
}


def _latex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(columns: Sequence[AuditColumn]) -> str:
    """The headline table as a LaTeX ``table`` with booktabs rules."""
    header, rows = format_rows(columns)
    conf = round(100 * columns[0].data.get("confidence", 0.95))
    lines = [
        "% medfair report; needs \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        "\\toprule",
        " & ".join(_latex(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    for r in rows:
        lines.append(" & ".join(_latex(x) for x in r) + " \\\\")
    lines += [
        "\\bottomrule",
        "\\end{tabular}",
        f"\\caption{{Subgroup proportions of generated images against the target, with {conf}"
        "\\% intervals (KID: $\\pm$ sd), and the change between models.}",
        "\\label{tab:medfair}",
        "\\end{table}",
    ]
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
    from safetensors.torch import load_file

    pattern = "p*" if prompt_index is None else f"p{prompt_index:04d}"
    shards = sorted((Path(folder) / "shards").glob(f"{pattern}-i*.safetensors"))
    if not shards:
        return None
    parts = [load_file(str(s)) for s in shards]
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


def render_html(columns: Sequence[AuditColumn], *, paired: bool = True, small: bool = False) -> str:
    """The self-contained HTML report (one audit renders alone as well).

    Args:
        columns: The audits, in column order.
        paired: Add paired grids of the seeds the first audit shares with each later one.
        small: Half-size grids and fewer pairs (for a report committed to a repository).
    """
    from . import _env

    header, rows = format_rows(columns)
    pairs = []
    if paired:
        for later in columns[1:]:
            p = paired_images(columns[0], later, per_prompt=6 if small else 8)
            if p is not None:
                pairs.append(p)
    if small:
        columns = [
            AuditColumn(c.label, c.data, c.folder, {g: _shrink_png(v) for g, v in c.grids.items()})
            for c in columns
        ]
        for p in pairs:
            for q in p["pairs"]:
                q["png"] = _shrink_png(q["png"])
    from .. import __version__

    versions = {"medfair (report)": __version__}
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
            report_versions=versions,
        )
    )


def render_report(columns: Sequence[AuditColumn], fmt: str = "html", *, small: bool = False) -> str:
    """The report in ``html``, ``md`` or ``latex`` (``small``: see :func:`render_html`)."""
    if fmt == "html":
        return render_html(columns, small=small)
    if fmt == "md":
        return render_markdown(columns)
    if fmt == "latex":
        return render_latex(columns)
    raise ConfigError(f"expected one of {', '.join(FORMATS)}, got '{fmt}'", param="format")


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
) -> Path:
    """Write a report comparing ``audits`` (``audit.json`` files or their folders).

    Args:
        audits: One or more audits, in column order (e.g. before, after).
        out: Output file; its suffix picks the format when ``fmt`` is ``None``
            (``.md`` → Markdown, ``.tex`` → LaTeX, anything else → HTML).
        labels: Column labels (default: ``before``/``after`` for two, else the folder names).
        fmt: ``html``, ``md`` or ``latex``.
        small: Half-size image grids and fewer pairs in HTML.

    Raises:
        ConfigError: Wrong number of labels, unknown format.
        DataError: An audit is missing or unreadable, or audits are not comparable.
    """
    if not audits:
        raise ConfigError("expected at least one audit.json", param="AUDIT_JSON")
    out = Path(out)
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
    if out.is_dir():
        raise ConfigError(f"'{out}' is a folder; expected a file name", param="out")
    return atomic_write_text(out, render_report(columns, fmt, small=small))
