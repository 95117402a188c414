"""``medfair report``: before-and-after comparison of audits (HTML, Markdown or LaTeX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import OverwriteFile, out_console


def report(
    audits: Annotated[
        list[Path],
        typer.Argument(
            metavar="AUDIT_JSON...",
            help="audit.json files (or their folders), in column order: before, after, ...",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file (report.html, table.md, table.tex).")
    ],
    labels: Annotated[
        str | None,
        typer.Option(help="Comma-separated column labels (default before,after for two)."),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="html, md or latex (default: from the suffix of --out; else html)."
        ),
    ] = None,
    small: Annotated[
        bool, typer.Option("--small", help="Half-size image grids, fewer pairs (to commit).")
    ] = False,
    figure: Annotated[
        list[Path] | None,
        typer.Option(
            help="A PNG to show in the methods section (repeatable), e.g. a trade-off plot."
        ),
    ] = None,
    overwrite: OverwriteFile = False,
) -> None:
    """Compare audits side by side: proportions against the target, distances, quality.

    HTML is one self-contained file: headline table with intervals and the change between
    columns, a forest plot of the shares (one panel per group, every series labelled, target
    line), per-prompt tables, image grids per group, paired grids of the same seeds before and
    after, the classifier's own accuracy, and the methods (checkpoint hashes, seeds,
    versions). md and latex give the headline table for a paper
    (LaTeX needs booktabs).

    For example:

        medfair report reports/before/audit.json reports/after/audit.json
        --labels before,after --out reports/report.html
    """
    from medfair_audit.reporting.compare import write_report

    names = None if labels is None else [x.strip() for x in labels.split(",")]
    path = write_report(
        audits,
        out,
        labels=names,
        fmt=format,
        small=small,
        figures=figure or (),
        overwrite=overwrite,
    )
    out_console.print(f"wrote {path}")
