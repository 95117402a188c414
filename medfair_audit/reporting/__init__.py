"""HTML rendering of audits: one self-contained file (plots and images embedded).

Templates are Jinja2 with autoescaping on: prompts and paths are user text.
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import Any

__all__ = [
    "image_grid_png",
    "proportion_plot_png",
    "render_audit_html",
    "render_report",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """``render_report``/``write_report`` live in :mod:`.compare` (imported on first use)."""
    if name in ("render_report", "write_report"):
        from . import compare

        return getattr(compare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _env() -> Any:
    from jinja2 import Environment, PackageLoader, Undefined, select_autoescape

    env = Environment(
        loader=PackageLoader("medfair_audit.reporting", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # a metric a table does not have (e.g. false positive rates of a 3-group classifier): "–"
    env.filters["pct"] = lambda v: (
        "–" if v is None or isinstance(v, Undefined) else f"{100 * v:.1f}%"
    )
    env.filters["num"] = lambda v, d=3: (
        "–" if v is None or isinstance(v, Undefined) else f"{v:.{d}f}"
    )
    env.filters["b64"] = lambda b: base64.b64encode(b).decode("ascii")
    return env


def image_grid_png(images: Any, cols: int = 8) -> bytes:
    """PNG bytes of a grid of images.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor or array (colour is averaged to grey), or RAS+
            volumes ``(N, C, X, Y, Z)``, shown by their middle axial slice in radiological
            convention (anterior at the top, the patient's right on the left), as the slice
            phantom shows a head.
        cols: Images per row.
    """
    import numpy as np
    from PIL import Image

    x = np.asarray(images)
    if x.ndim == 5:
        x = np.ascontiguousarray(x[..., x.shape[-1] // 2].swapaxes(-1, -2)[..., ::-1, ::-1])
    x = x[:, 0] if x.shape[1] == 1 else x.astype(np.float32).mean(1).round().astype(np.uint8)
    rows = max(1, -(-len(x) // cols))
    h, w = x.shape[1:] if len(x) else (64, 64)
    canvas = np.zeros((rows * h, cols * w), np.uint8)
    for i, im in enumerate(x):
        r, c = divmod(i, cols)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


#: The headline figure's width in inches (at 110 dpi about 790 px: it fits a printed page and,
#: scaled down by the page's CSS, an 800-px window).
PLOT_WIDTH_IN = 7.2


def _plot_series(audits: dict[str, Any]) -> list[dict[str, Any]]:
    """One series per (audit, reading): the classifier's labels, then the headline reading."""
    out = []
    for m, (label, audit) in enumerate(audits.items()):
        for kind in ("raw", audit.default_reading):
            out.append(
                {
                    "name": f"{label} · {'labels' if kind == 'raw' else kind.upper()}",
                    "model": m,
                    "labels": kind == "raw",
                    "shares": audit.overall.proportions.get(kind, {}),
                }
            )
    return out


def _draw_estimate(ax: Any, y: float, e: Any, color: Any, marker: str) -> None:
    """One series' share in a forest panel: interval, then its point or its censored bound."""
    lo, hi = e.ci
    ax.hlines(y, lo, hi, color=color, lw=1.6)
    value, bound = e.value, e.bound
    if bound is not None:
        at_most = bound[0] == "≤"  # the bound, pointing the way the share may lie
        ax.plot(bound[1], y, "<" if at_most else ">", ms=6, color=color, clip_on=False)
    elif value is None:  # not identifiable: the interval alone
        ax.plot([lo, hi], [y, y], "|", color=color, ms=7)
    else:
        inside = lo - 1e-12 <= value <= hi + 1e-12
        ax.plot(value, y, marker, ms=5, color=color, mfc=color if inside else "white")


def proportion_plot_png(audits: dict[str, Any]) -> bytes:
    """Forest plot of group shares with intervals against the target, one small panel per group.

    Each panel lists every series (audit · reading) by name, with its point estimate and
    interval, and the group's target as a dashed line. A censored share has no point: its
    bound is a triangle pointing the way the share may lie (left: at most; right: at least). A point
    outside its own interval (a simplex-constrained value) is drawn where it is, hollow.

    Args:
        audits: Label → :class:`~medfair_audit.audit.result.AuditResult` (one or more models).
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    first = next(iter(audits.values()))
    groups, target = first.groups, first.target
    series = _plot_series(audits)
    cols = min(len(groups), 3)
    rows = math.ceil(len(groups) / cols)
    height = 0.55 + rows * (0.45 + 0.24 * len(series))
    fig, axes = plt.subplots(
        rows, cols, figsize=(PLOT_WIDTH_IN, height), dpi=110, sharex=True, sharey=True,
        squeeze=False,
    )  # fmt: skip
    palette = plt.get_cmap("tab10")
    ys = list(range(len(series)))
    for k, ax in enumerate(axes.flat):
        if k >= len(groups):
            ax.set_visible(False)
            continue
        g = groups[k]
        for y, s in zip(ys, series, strict=True):
            e = s["shares"].get(g)
            if not e:
                continue
            _draw_estimate(ax, y, e, palette(s["model"] % 10), "s" if s["labels"] else "o")
        ax.axvline(target[g], color="crimson", ls="--", lw=1.2)
        ax.set_title(g, fontsize=9)
        ax.set_xlim(-0.02, 1.02)  # bounds at 0% or 100% stay visible
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1] if cols > 2 else [0, 0.2, 0.4, 0.6, 0.8, 1])
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", color="#e5e5e5", lw=0.6)
        ax.set_axisbelow(True)
    axes[0][0].set_yticks(ys, [s["name"] for s in series])
    axes[0][0].set_ylim(len(series) - 0.5, -0.5)  # the first series on top
    handles = [
        Line2D([], [], color="crimson", ls="--", label="target"),
        Line2D([], [], color="gray", marker="s", ls="", label="classifier's labels"),
        Line2D([], [], color="gray", marker="o", ls="", label="corrected"),
        Line2D([], [], color="gray", marker="o", mfc="white", ls="", label="outside its interval"),
        Line2D([], [], color="gray", marker="<", ls="", label="censored: its bound"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)
    with warnings.catch_warnings():  # long group or column names: the plot is still drawn
        warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
        fig.tight_layout(rect=(0, 0.2 / height + 0.02, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_audit_html(result: Any) -> str:
    """A single-file HTML page for one :class:`~medfair_audit.audit.AuditResult`.

    The report template with one column.
    """
    from .html import render_html
    from .tables import AuditColumn

    return render_html([AuditColumn("model", result)])
