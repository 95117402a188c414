"""Report pieces for the "Quality by group" section: fidelity and diversity beyond FID.

Precision, recall, density and coverage (and CMMD with embedding features) at a subsample size
every audit has, each group's Vendi score with its interval beside the real group's, the
changes between audits read by the same classifier, and a short reading in words (see
:mod:`medfair_audit.audit.quality`). Audits without these measures (a quality block of version 1)
simply have no cells here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..metrics.results import QualityAtN, QualityEntry, Spread, Vendi, prdc_size
from .tables import _cell_text, _fmt, _fmt_delta, comparisons

__all__ = ["QUALITY_CAPTION", "has_fidelity", "quality_readings", "quality_rows"]

QUALITY_CAPTION = (
    "Per group, at a subsample size every audit has (mean ± sd over the same draws as FID): "
    "precision and density (generated images inside the real images' k-NN balls), recall and "
    "coverage (real images reached by generated ones; they fall when a group is drawn from a "
    "few prototypes), CMMD with embedding features; and the Vendi score (the effective number "
    "of distinct images among 32, features centred on the real group's mean) with a t interval "
    "over disjoint blocks, beside the real group's; FRD (radiomic features, when the audit "
    "computed it) on every image of the group."
)

PRDC = ("precision", "recall", "density", "coverage")
#: A change in recall or coverage at least this large is put into words.
NOTABLE = 0.1


def _entries(columns: Sequence[Any], group: str) -> list[QualityEntry | None]:
    return [c.result.quality.entry(group) if c.result.quality else None for c in columns]


def has_fidelity(columns: Sequence[Any]) -> bool:
    """Whether any audit's quality block has the fidelity measures (version 2)."""
    return any(c.result.quality and c.result.quality.version >= 2 for c in columns)


#: A Vendi interval from fewer disjoint blocks than this says how many (its t interval is wide).
FEW_BLOCKS = 5


def _cell(m: Spread | Vendi | None, kind: str) -> str:
    """A mean ± sd spread or a Vendi score with its interval, formatted as the headline's."""
    if m is None:
        return "–"
    if isinstance(m, Spread):
        return _cell_text({"value": m.mean, "sd": m.sd}, kind)
    text = _cell_text({"value": m.value, "ci": m.ci}, kind)
    few = m.value is not None and m.blocks < FEW_BLOCKS
    return f"{text} ({m.blocks} blocks)" if few else text


def _at(entry: QualityEntry | None, n: str | None) -> QualityAtN | None:
    return entry.at(n) if entry else None


def _delta(a: float | None, b: float | None, kind: str = "") -> str:
    return _fmt_delta(None if a is None or b is None else b - a, kind)


def quality_rows(columns: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """Rows (group, measure) × audits, then each same-classifier change (later − earlier)."""
    pairs = comparisons(columns)
    labels = [c.label for c in columns]
    header = ["group", "measure", *labels]
    header += [f"Δ {labels[i]} − {labels[j]}" for j, i in pairs]
    groups = [*columns[0].result.groups, "overall"]
    rows: list[list[str]] = []
    for g in groups:
        entries = _entries(columns, g)
        n = prdc_size(entries)
        measures = [(m, "prdc") for m in PRDC]
        if all((at := _at(e, n)) and at.cmmd for e in entries if e):
            measures.append(("CMMD", "cmmd"))
        for name, key in measures:
            ats = [_at(e, n) for e in entries]
            vals = [
                None if at is None else at.cmmd if key == "cmmd" else (at.prdc or {}).get(name)
                for at in ats
            ]
            if not any(vals):
                continue
            means = [v.mean if v else None for v in vals]
            kind = "kid" if key == "cmmd" else ""  # CMMD with KID's three decimals
            rows.append(
                [g, f"{name} (n = {n})", *[_cell(v, kind) for v in vals]]
                + [_delta(means[j], means[i], kind) for j, i in pairs]
            )
        vendi = [e.vendi if e else None for e in entries]
        if any(v and v.value is not None for v in vendi):
            size = next(v.n for v in vendi if v)
            values = [v.value if v else None for v in vendi]
            rows.append(
                [g, f"Vendi score (n = {size})", *[_cell(v, "") for v in vendi]]
                + [_delta(values[j], values[i]) for j, i in pairs]
            )
            real = [e.vendi_reference if e else None for e in entries]
            rows.append(
                [g, f"Vendi score, real images (n = {size})", *[_cell(v, "") for v in real]]
                + ["" for _ in pairs]
            )
        values = [c.result.quality.frd.get(g) if c.result.quality else None for c in columns]
        if any(v is not None for v in values):
            rows.append(
                [g, "FRD (v1, log d²; all images)",
                 *[_fmt(v, "") for v in values]]
                + [_delta(values[j], values[i]) for j, i in pairs]
            )  # fmt: skip
    return header, rows


def quality_readings(columns: Sequence[Any]) -> list[str]:
    """The section's findings in words: notable recall/coverage changes, collapsed groups."""
    out = []
    for g in columns[0].result.groups:
        entries = _entries(columns, g)
        for j, i in comparisons(columns):
            pair = [entries[j], entries[i]]
            n = prdc_size(pair)
            for name in ("recall", "coverage"):
                a, b = (_prdc_mean(_at(e, n), name) for e in pair)
                if a is not None and b is not None and abs(b - a) >= NOTABLE:
                    verb = "fell" if b < a else "rose"
                    out.append(
                        f"{g} {name} {verb} from {a:.2f} ({columns[j].label}) to {b:.2f} "
                        f"({columns[i].label}) at n = {n}"
                    )
            va, vb = (e.vendi if e else None for e in pair)
            if va and vb and va.ci and vb.ci and (vb.ci[1] < va.ci[0]):
                out.append(
                    f"{g} Vendi score fell from {va.value:.2f} to {vb.value:.2f} "
                    f"({columns[j].label} → {columns[i].label}; intervals do not overlap)"
                )
        for c, e in zip(columns, entries, strict=True):
            if e is not None and e.collapsed:
                out.append(
                    f"{g} in {c.label}: drawn from a few prototypes (low coverage and a Vendi "
                    "score under half the real group's)"
                )
    return out


def _prdc_mean(at: QualityAtN | None, name: str) -> float | None:
    spread = (at.prdc or {}).get(name) if at else None
    return spread.mean if spread else None
