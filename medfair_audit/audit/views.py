"""Tables and plain text of an :class:`~medfair_audit.audit.result.AuditResult` (typed reads)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from ..metrics import results as r

if TYPE_CHECKING:
    from .result import AuditResult

__all__ = ["result_frames", "summary_lines"]


def result_frames(result: AuditResult) -> dict[str, pd.DataFrame]:
    """Tables: ``overall`` and ``by_prompt`` (one row per reading × group) and ``by_group``."""

    def rows(summary: r.Summary, **extra: Any) -> list[dict[str, Any]]:
        out = []
        for kind, per in summary.proportions.items():
            dist = summary.distances.get(kind)
            for g, v in per.items():
                gap = dist.gaps.get(g) if dist else None
                out.append(
                    {
                        **extra,
                        "reading": kind,
                        "group": g,
                        "proportion": v.value,
                        "ci_low": v.ci[0] if v.ci else None,
                        "ci_high": v.ci[1] if v.ci else None,
                        "censored": v.censored,
                        "target": result.target[g],
                        "gap": gap.value if gap else None,
                    }
                )
        return out

    by_prompt = [
        row for p in result.by_prompt for row in rows(p, prompt_index=p.index, prompt=p.prompt)
    ]
    quality = result.quality.by_group if result.quality else {}
    by_group = pd.DataFrame(
        [
            {
                "group": g,
                "n_generated": q.n_generated if (q := quality.get(g)) else None,
                "n_reference": q.n_reference if q else None,
                "fid_full_n": q.fid if q else None,
            }
            for g in [*result.groups, "overall"]
        ]
    )
    return {
        "overall": pd.DataFrame(rows(result.overall)),
        "by_prompt": pd.DataFrame(by_prompt),
        "by_group": by_group,
    }


def summary_lines(result: AuditResult) -> list[str]:
    """Plain-text lines: each group's raw and default-reading share, KL, test, worst prompt."""
    reading = result.default_reading
    lines = [
        f"{g}: {result.share(g, 'raw').text('.1%')} raw, {result.share(g).text('.1%')} {reading} "
        f"(target {result.target[g]:.1%})"
        for g in result.groups
    ]
    lines.append(f"KL(target‖generated, {reading}) = {result.kl().text('.4f')}")
    chi = result.overall.chi_square
    if chi is not None and chi.p_value is not None:
        sign = "≤" if chi.p_value_is_bound else "="
        lines.append(f"on-target test (null: labels follow target·C): p {sign} {chi.p_value:.3g}")
    if (joint := result.joint) is not None:
        for attr, sect in result.attributes.items():
            shares = ", ".join(
                f"{g} {sect.share(g, joint.reading).text('.1%')} (target {sect.target[g]:.1%})"
                for g in sect.levels
            )
            lines.append(f"{attr}: {shares}")
        lines.append(
            f"joint cells: share = target rejected (Holm, α = {joint.holm_alpha:g}) for "
            f"{len(joint.rejected)} of {len(joint.cells)}"
            + (f": {', '.join(joint.rejected)}" if joint.rejected else "")
        )
    if result.sequential is not None:
        from .sequential import sequential_text

        lines.append(sequential_text(result.sequential))
    worst = result.dispersion.worst_prompt
    if worst and len(result.by_prompt) > 1:
        lines.append(f"worst prompt #{worst.index}: |gap| {worst.abs_gap.text('.1%')}")
    if (spread := result.dispersion.over_prompts) is not None:
        shares = ", ".join(f"{g} {spread.share(g).text('.1%')}" for g in result.groups)
        sds = [v for v in spread.between_prompt_sd.values() if v is not None]
        sd = f"; prompts' sd about {max(sds):.1%}" if sds else ""
        lines.append(
            f"over the wordings ({spread.prompts} prompts taken as a sample of them): {shares}{sd}"
        )
    return lines
