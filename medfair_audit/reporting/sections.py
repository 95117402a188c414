"""The report's sections after the headline, built once for every format.

Each :class:`Section` is a titled table with a caption and, for some, findings in words. The
Markdown and LaTeX renderers print every section the same way (a bold title and caption, or a
float's caption), and the HTML page shows the readers, support and quality sections from the same
objects, so a table and its caption read alike in a paper's LaTeX, a README and the HTML report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .quality import QUALITY_CAPTION, has_fidelity, quality_readings, quality_rows
from .readers import READERS_CAPTION, SUPPORT_CAPTION, has_readers, reader_rows, support_rows
from .tables import AuditColumn, evaluator_notes, evaluator_rows, paired_rows

__all__ = ["EVALUATORS_CAPTION", "Section", "sections"]

EVALUATORS_CAPTION = (
    "which classifier measured each column, and whether the remediation was tuned against it or "
    "trained on its prompts; changes are computed only between columns measured by the same "
    "classifier"
)


@dataclass(frozen=True)
class Section:
    """One table of the report.

    Attributes:
        key: Short name; LaTeX labels it ``tab:medfair-<key>``.
        title: Its title (``Quality by group``).
        caption: What the table shows, in words.
        header: Column names.
        rows: Formatted cells.
        findings: Sentences the table supports, listed under it.
        left: Leading label columns (left-aligned in HTML).
    """

    key: str
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    findings: list[str] = field(default_factory=list)
    left: int = 1

    @property
    def sentence(self) -> str:
        """The caption as a sentence (a capital first, one final period)."""
        text = self.caption.rstrip(". ")
        return text[:1].upper() + text[1:] + "."


def _joint(columns: Sequence[AuditColumn], conf: int) -> list[Section]:
    from .joint import joint_rows, marginal_rows

    j = columns[0].result.joint
    return [
        Section(
            "joint",
            f"Joint cells ({' × '.join(j.attributes)})",
            f"{j.reading.upper()} shares with {conf}% intervals and images per cell; "
            f"Holm-adjusted p of share = target (* rejected at {j.holm_alpha:g}); "
            "(constrained): projected onto the simplex because another cell is censored, "
            f"beside its unconstrained interval; {j.method}",
            *joint_rows(columns),
        ),
        Section(
            "marginals",
            "Marginals",
            f"each attribute's shares with {conf}% intervals, and Shen et al.'s bias (mean "
            "absolute difference over pairs of groups)",
            *marginal_rows(columns),
            left=2,
        ),
    ]


def sections(
    columns: Sequence[AuditColumn], paired: Sequence[dict[str, Any]] = ()
) -> list[Section]:
    """Every section after the headline, in report order (empty tables left out)."""
    conf = round(100 * columns[0].result.confidence)
    out: list[Section] = []
    if all(c.result.joint for c in columns):
        out += _joint(columns, conf)
    if len({c.result.settings.classifier_sha256 for c in columns}) > 1 or any(
        c.result.settings.remediation for c in columns
    ):
        out.append(
            Section(
                "evaluators",
                "Evaluators",
                EVALUATORS_CAPTION,
                *evaluator_rows(columns),
                findings=evaluator_notes(columns),
            )
        )
    if has_readers(columns):
        out.append(
            Section(
                "readers",
                "Other readers of the same images",
                READERS_CAPTION,
                *reader_rows(columns),
                left=3,
            )
        )
        out.append(
            Section(
                "support",
                "Outside the real images' support",
                SUPPORT_CAPTION,
                *support_rows(columns),
                left=2,
            )
        )
    if has_fidelity(columns):
        out.append(
            Section(
                "quality",
                "Quality by group",
                QUALITY_CAPTION,
                *quality_rows(columns),
                findings=quality_readings(columns),
                left=2,
            )
        )
    for i, p in enumerate(paired):
        out.append(
            Section(
                f"paired{i or ''}",
                f"Paired comparison, {p['before']} → {p['after']}",
                p["method"],
                *paired_rows(p),
            )
        )
    return [s for s in out if s.rows]
