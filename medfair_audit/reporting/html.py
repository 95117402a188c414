"""The report as one self-contained HTML file.

Plots and images are embedded as data URIs; Jinja2 renders with autoescaping on. Paired grids
show the same seed before and after: audits made with the same ``--seed``, prompts and number of
images draw the same initial noise for image ``i`` of prompt ``p``, and their shards hold the
images (read through :func:`medfair_audit.generation.engine.stored_shards`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .notes import caption_notes
from .sections import sections
from .tables import (
    AuditColumn,
    _title,
    comparisons,
    evaluator_rows,
    format_rows,
    paired_rows,
)

__all__ = ["audit_images", "paired_images", "render_html"]


def audit_images(
    folder: str | os.PathLike[str], prompt_index: int | None = None, *, store: Any = None
) -> dict | None:
    """The arrays an audit's shards hold, concatenated in plan order (per prompt, by image).

    Args:
        folder: The audit's output folder (with ``shards/``).
        prompt_index: Only this prompt's images; ``None`` for all.
        store: A :class:`~medfair_audit.generation.engine.ShardStore` of the folder's shards,
            reused across calls (reading many prompts); the caller closes it.

    Returns:
        ``seeds``, ``images`` (uint8 ``(N, C, H, W)``) and ``probs`` as numpy arrays, or ``None``
        when there are no shards (deleted, or the audit was made elsewhere).
    """
    from ..generation.engine import stored_shards

    parts = list(stored_shards(Path(folder) / "shards", prompt_index, store=store))
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
    from ..generation.engine import ShardStore
    from . import image_grid_png

    if before.folder is None or after.folder is None:
        return None
    # one listing of each audit's shards for all prompts (not one per prompt)
    stores = [ShardStore(Path(c.folder) / "shards") for c in (before, after)]
    groups = before.result.groups
    prompts_a = before.result.settings.prompts
    prompts_b = after.result.settings.prompts
    pairs, changed, n, diffs = [], 0, 0, []
    for p, prompt in enumerate(prompts_a):
        if p >= len(prompts_b) or prompts_b[p] != prompt:
            continue
        a = audit_images(before.folder, p, store=stores[0])
        b = audit_images(after.folder, p, store=stores[1])
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
    for store in stores:
        store.close()
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

    return proportion_plot_png({c.label: c.result for c in columns})


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
        paired_stats: :func:`~.tables.paired_analysis` results to show.
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
                c.label,
                replace(c.result, grids={g: _shrink_png(v) for g, v in c.grids.items()}),
            )
            for c in columns
        ]
        for p in pairs:
            for q in p["pairs"]:
                q["png"] = _shrink_png(q["png"])
    from .. import __version__
    from .joint import joint_heatmap_png

    versions = {"medfair (report)": __version__}
    parts = sections(columns)
    by_key = {sec.key: sec for sec in parts}
    joint = None
    if "joint" in by_key:  # the tables of the joint and marginals sections, with the heatmap
        joint = {
            "heatmap": joint_heatmap_png(columns),
            "cells": (by_key["joint"].header, by_key["joint"].rows),
            "marginals": (by_key["marginals"].header, by_key["marginals"].rows),
            "info": columns[0].result.joint,
        }
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            columns=columns,
            first=columns[0].result,
            header=header,
            rows=rows,
            notes=caption_notes(rows),
            plot=_plot(columns),
            pairs=pairs,
            paired_stats=[(p, paired_rows(p)) for p in paired_stats],
            evaluators=evaluator_rows(columns),
            figures=list(figures),
            title=_title(columns),
            report_versions=versions,
            joint=joint,
            sections=parts,
        )
    )
