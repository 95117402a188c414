"""The report as GitHub Markdown: the headline table and its companions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .notes import CENSORED_CAPTION, caption_notes
from .quality import QUALITY_CAPTION, has_fidelity, quality_readings, quality_rows
from .readers import (
    READERS_CAPTION,
    SUPPORT_CAPTION,
    has_readers,
    reader_rows,
    support_rows,
)
from .tables import (
    AuditColumn,
    _title,
    evaluator_notes,
    evaluator_rows,
    format_rows,
    paired_rows,
)

__all__ = ["render_markdown"]


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
    conf = round(100 * columns[0].result.confidence)
    title = _markdown(_title(columns)[:1].upper() + _title(columns)[1:])
    constrained = "".join(f"; {note}" for note in caption_notes(rows))
    lines = [
        f"<!-- medfair report: {_markdown(', '.join(c.label for c in columns))} -->",
        f"**{title}.** Values with {conf}% "
        f"intervals; {CENSORED_CAPTION}{constrained}; FID/KID at a "
        "common subsample size (mean ± sd over draws).",
        "",
    ]

    def cells(row: list[str]) -> str:
        return "| " + " | ".join(_markdown(x) for x in row) + " |"

    def table(head: list[str], body: list[list[str]]) -> None:
        lines.append(cells(head))
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        lines.extend(cells(r) for r in body)

    table(header, rows)
    if all(c.result.joint for c in columns):
        from .joint import joint_rows, marginal_rows

        j = columns[0].result.joint
        lines += [
            "",
            f"**Joint cells ({_markdown(' × '.join(j.attributes))}).** "
            f"{_markdown(j.reading.upper())} shares; Holm-adjusted p of share = target "
            f"(* rejected at {j.holm_alpha:g}); (constrained): projected onto the simplex "
            "because another cell is censored, beside its unconstrained interval; "
            f"{_markdown(j.method)}.",
            "",
        ]
        table(*joint_rows(columns))
        lines += ["", "**Marginals.**", ""]
        table(*marginal_rows(columns))
    if len({c.result.settings.classifier_sha256 for c in columns}) > 1 or any(
        c.result.settings.remediation for c in columns
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
    if has_fidelity(columns):
        header, body = quality_rows(columns)
        if body:
            lines += ["", f"**Quality by group.** {_markdown(QUALITY_CAPTION)}", ""]
            table(header, body)
            readings = quality_readings(columns)
            if readings:
                lines.append("")
                lines += [f"- {_markdown(r)}" for r in readings]
    for p in paired:
        lines.append("")
        table(*paired_rows(p))
    return "\n".join(lines) + "\n"
