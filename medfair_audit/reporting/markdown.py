"""The report as GitHub Markdown: the headline table and its companions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .notes import CENSORED_CAPTION, caption_notes
from .sections import sections
from .tables import AuditColumn, _title, format_rows

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
    for section in sections(columns, paired):
        lines += ["", f"**{_markdown(section.title)}.** {_markdown(section.sentence)}", ""]
        table(section.header, section.rows)
        if section.findings:
            lines.append("")
            lines += [f"- {_markdown(f)}" for f in section.findings]
    return "\n".join(lines) + "\n"
