"""Report pieces for several attributes: the joint-cell table, the marginals and a heatmap."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..metrics.results import Estimate, JointCell

__all__ = ["joint_heatmap_png", "joint_rows", "marginal_rows"]


def _share(entry: Estimate) -> str:
    text = entry.text(".1%")
    if entry.constrained:
        text += " (constrained)"  # another cell is censored: the value is projected
    return text


def joint_rows(columns: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """One row per joint cell: target, then per audit its share [interval], n and Holm p."""
    first = columns[0].result.joint
    header = ["cell", "target"]
    for c in columns:
        header += [f"{c.label} share", f"{c.label} n", f"{c.label} Holm p"]
    rows = []
    for i, cell in enumerate(first.cells):
        row = [cell.cell, f"{cell.target:.1%}"]
        for c in columns:
            e = c.result.joint.cells[i]
            p = e.p_holm
            mark = " *" if e.reject else ""
            small = " (small)" if e.small else ""
            row += [_share(e.share), f"{e.n}{small}", "–" if p is None else f"{p:.3g}{mark}"]
        rows.append(row)
    return header, rows


def marginal_rows(columns: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """One row per attribute level: target, then per audit its corrected share [interval]."""
    first = columns[0].result
    header = ["attribute", "group", "target"] + [f"{c.label} share" for c in columns]
    rows = []
    for attr, sect in first.attributes.items():
        for level in sect.levels:
            row = [attr, level, f"{sect.target[level]:.1%}"]
            for c in columns:
                a = c.result.attributes[attr]
                row.append(_share(a.proportions[c.result.joint.reading][level]))
            rows.append(row)
    for key in ["cells", *first.attributes]:
        row = [key if key != "cells" else "joint cells", "Shen bias", "–"]
        for c in columns:
            row.append(c.result.joint.shen_bias[key].text(".3f"))
        rows.append(row)
    return header, rows


def joint_heatmap_png(columns: Sequence[Any]) -> bytes:
    """Heatmaps of the joint cells: the target, then each audit's corrected share.

    Rows are the first attribute's levels, columns the other attributes' combinations; each
    square shows the share and its interval, coloured by share − target.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = columns[0].result.joint
    attrs = first.attributes
    rows = list(first.levels[attrs[0]])
    cols = list(dict.fromkeys("/".join(c.cell.split("/")[1:]) for c in first.cells))

    def grid(cells: Sequence[JointCell], key: str) -> tuple[np.ndarray, list[list[str]]]:
        values = np.full((len(rows), len(cols)), np.nan)
        text = [["" for _ in cols] for _ in rows]
        for e in cells:
            head, *rest = e.cell.split("/")
            i, j = rows.index(head), cols.index("/".join(rest))
            if key == "target":
                values[i, j] = e.target
                text[i][j] = f"{e.target:.1%}"
            else:
                v = e.share.value
                values[i, j] = np.nan if v is None else v - e.target
                lo, hi = e.share.ci or (None, None)
                shown = "n/a" if v is None else f"{v:.1%}"
                interval = f"\n[{lo:.0%}, {hi:.0%}]" if lo is not None else ""
                text[i][j] = f"{shown}{interval}\nn={e.n}"
        return values, text

    panels = [("target", first.cells, "target")] + [
        (c.label, c.result.joint.cells, "share") for c in columns
    ]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(0.6 + (1.1 * len(cols) + 0.8) * len(panels), 0.9 + 0.75 * len(rows)),
        dpi=110,
        squeeze=False,
    )
    for ax, (title, cells, key) in zip(axes[0], panels, strict=True):
        values, text = grid(cells, key)
        if key == "target":
            ax.imshow(values, cmap="Greys", vmin=0, vmax=max(np.nanmax(values), 1e-9) * 1.6)
        else:
            lim = max(0.05, float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0)
            ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xlabel(" × ".join(attrs[1:]), fontsize=8)
        ax.set_ylabel(attrs[0], fontsize=8)
        ax.set_title(title if key == "target" else f"{title} (colour: share − target)", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
