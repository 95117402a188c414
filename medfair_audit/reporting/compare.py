"""Before-and-after reports: one or more ``audit.json`` side by side, in HTML, Markdown or LaTeX.

The table model lives in :mod:`.tables` and each format in its own module (:mod:`.html`,
:mod:`.markdown`, :mod:`.latex`); this module picks the format and writes the file. When audits
share prompts and seeds, the paired analysis (:func:`~medfair_audit.audit.paired.paired_audits`)
joins the table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .._io import atomic_write_text, check_out
from ..exceptions import ConfigError, DataError
from .html import render_html
from .latex import render_latex
from .markdown import render_markdown
from .tables import AuditColumn, comparisons, load_audit, paired_analysis

__all__ = ["FORMATS", "render_report", "write_report"]

FORMATS = ("html", "md", "latex")


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
    first = columns[0].result
    for c in columns[1:]:
        if c.result.groups != first.groups:
            raise DataError(
                f"audit '{c.label}' has groups {c.result.groups}, the first has "
                f"{first.groups}: they cannot share a table",
                param="AUDIT_JSON",
            )
        if c.result.target != first.target:
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
