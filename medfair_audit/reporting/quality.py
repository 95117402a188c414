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

from ..audit.quality import prdc_n
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


def _entries(columns: Sequence[Any], group: str) -> list[dict[str, Any] | None]:
    return [((c.data.get("quality") or {}).get("by_group") or {}).get(group) for c in columns]


def has_fidelity(columns: Sequence[Any]) -> bool:
    """Whether any audit's quality block has the fidelity measures (version 2)."""
    return any((c.data.get("quality") or {}).get("version", 1) >= 2 for c in columns)


#: A Vendi interval from fewer disjoint blocks than this says how many (its t interval is wide).
FEW_BLOCKS = 5


def _cell(m: dict[str, Any] | None, kind: str) -> str:
    """A ``{mean, sd}`` spread or a ``{value, ci}`` Vendi entry, formatted as the headline's."""
    if not m:
        return "–"
    if "mean" in m:
        return _cell_text({"value": m["mean"], "sd": m["sd"]}, kind)
    text = _cell_text({"value": m.get("value"), "ci": m.get("ci")}, kind)
    few = m.get("blocks") is not None and m.get("value") is not None and m["blocks"] < FEW_BLOCKS
    return f"{text} ({m['blocks']} blocks)" if few else text


def _at(entry: dict[str, Any] | None, n: str | None, key: str) -> Any:
    return (((entry or {}).get("at_n") or {}).get(n) or {}).get(key) if n else None


def _delta(a: float | None, b: float | None, kind: str = "") -> str:
    return _fmt_delta(None if a is None or b is None else b - a, kind)


def quality_rows(columns: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """Rows (group, measure) × audits, then each same-classifier change (later − earlier)."""
    pairs = comparisons(columns)
    labels = [c.label for c in columns]
    header = ["group", "measure", *labels]
    header += [f"Δ {labels[i]} − {labels[j]}" for j, i in pairs]
    groups = [*columns[0].data["groups"], "overall"]
    rows: list[list[str]] = []
    for g in groups:
        entries = _entries(columns, g)
        n = prdc_n(entries)
        measures = [(m, "prdc") for m in PRDC]
        if all(_at(e, n, "cmmd") for e in entries if e):
            measures.append(("CMMD", "cmmd"))
        for name, key in measures:
            vals = [_at(e, n, key) for e in entries]
            vals = [v.get(name) if key == "prdc" and v else v for v in vals]
            if not any(vals):
                continue
            means = [v["mean"] if v else None for v in vals]
            kind = "kid" if key == "cmmd" else ""  # CMMD with KID's three decimals
            rows.append(
                [g, f"{name} (n = {n})", *[_cell(v, kind) for v in vals]]
                + [_delta(means[j], means[i], kind) for j, i in pairs]
            )
        vendi = [(e or {}).get("vendi") for e in entries]
        if any(v and v.get("value") is not None for v in vendi):
            size = next(v["n"] for v in vendi if v)
            values = [v.get("value") if v else None for v in vendi]
            rows.append(
                [g, f"Vendi score (n = {size})", *[_cell(v, "") for v in vendi]]
                + [_delta(values[j], values[i]) for j, i in pairs]
            )
            real = [(e or {}).get("vendi_reference") for e in entries]
            rows.append(
                [g, f"Vendi score, real images (n = {size})", *[_cell(v, "") for v in real]]
                + ["" for _ in pairs]
            )
        frd = [(((c.data.get("quality") or {}).get("frd") or {}).get("by_group") or {}).get(g)
               for c in columns]  # fmt: skip
        if any(f and f.get("frd") is not None for f in frd):
            values = [f.get("frd") if f else None for f in frd]
            rows.append(
                [g, "FRD (v1, log d²; all images)",
                 *[_fmt(v, "") for v in values]]
                + [_delta(values[j], values[i]) for j, i in pairs]
            )  # fmt: skip
    return header, rows


def quality_readings(columns: Sequence[Any]) -> list[str]:
    """The section's findings in words: notable recall/coverage changes, collapsed groups."""
    out = []
    for g in columns[0].data["groups"]:
        entries = _entries(columns, g)
        for j, i in comparisons(columns):
            pair = [entries[j], entries[i]]
            n = prdc_n(pair)
            for name in ("recall", "coverage"):
                a, b = (((_at(e, n, "prdc") or {}).get(name) or {}).get("mean") for e in pair)
                if a is not None and b is not None and abs(b - a) >= NOTABLE:
                    verb = "fell" if b < a else "rose"
                    out.append(
                        f"{g} {name} {verb} from {a:.2f} ({columns[j].label}) to {b:.2f} "
                        f"({columns[i].label}) at n = {n}"
                    )
            va, vb = ((e or {}).get("vendi") or {} for e in pair)
            if va.get("ci") and vb.get("ci") and (vb["ci"][1] < va["ci"][0]):
                out.append(
                    f"{g} Vendi score fell from {va['value']:.2f} to {vb['value']:.2f} "
                    f"({columns[j].label} → {columns[i].label}; intervals do not overlap)"
                )
        for c, e in zip(columns, entries, strict=True):
            if (e or {}).get("collapsed"):
                out.append(
                    f"{g} in {c.label}: drawn from a few prototypes (low coverage and a Vendi "
                    "score under half the real group's)"
                )
    return out
