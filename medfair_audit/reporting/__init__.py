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
        images: ``(N, C, H, W)`` uint8 tensor or array (colour is averaged to grey).
        cols: Images per row.
    """
    import numpy as np
    from PIL import Image

    x = np.asarray(images)
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


def proportion_plot_png(audits: dict[str, dict[str, Any]]) -> bytes:
    """Bar plot of group proportions (labels and corrected, with intervals) and the target line.

    A censored corrected share has no bar, only its interval.

    Args:
        audits: Label → ``audit.json`` content (one or more models).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    rows = []
    for label, audit in audits.items():
        for kind in ("raw", audit["default_reading"]):
            for g, v in audit["proportions"].get(kind, {}).items():
                value = v["value"]
                rows.append(
                    {
                        "model": label,
                        "reading": "labels" if kind == "raw" else kind.upper(),
                        "group": g,
                        "value": 0.0 if value is None else value,  # censored: no bar
                        "mid": (v["ci"][0] + v["ci"][1]) / 2 if value is None else value,
                        "lo": v["ci"][0],
                        "hi": v["ci"][1],
                    }
                )
    frame = pd.DataFrame(rows)
    groups = list(next(iter(audits.values()))["groups"])
    target = next(iter(audits.values()))["target"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.8 * len(groups) * len(audits), 3.2), dpi=110)
    frame["bar"] = frame["model"] + " · " + frame["reading"]
    sns.barplot(
        frame, x="group", y="value", hue="bar", order=groups, ax=ax, errorbar=None, palette="muted"
    )
    for patch_group, (_, sub) in zip(ax.containers, frame.groupby("bar", sort=False), strict=False):
        sub = sub.set_index("group").loc[groups]
        xs = [p.get_x() + p.get_width() / 2 for p in patch_group]
        # a point estimate may sit outside its percentile interval (bootstrap skew, or a
        # simplex-constrained value): the bar shows the value, the whisker the interval
        mid = sub["mid"].clip(lower=sub["lo"], upper=sub["hi"])
        ax.errorbar(
            xs,
            mid,
            yerr=[mid - sub["lo"], sub["hi"] - mid],
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
        )
    for i, g in enumerate(groups):
        ax.hlines(
            target[g],
            i - 0.45,
            i + 0.45,
            colors="crimson",
            linestyles="--",
            lw=2,
            label="target" if i == 0 else None,
        )
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of images")
    ax.set_xlabel("")
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    sns.despine(fig)
    with warnings.catch_warnings():  # long group or column names: the plot is still drawn
        warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
        fig.tight_layout()
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

    return render_html(
        [AuditColumn("model", result.data, result.folder, result.grids, result.images)]
    )
