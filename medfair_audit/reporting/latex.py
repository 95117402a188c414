"""The report as LaTeX ``table`` floats (booktabs), every user string escaped."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from .notes import CENSORED_CAPTION, caption_notes
from .sections import sections
from .tables import AuditColumn, _title, format_rows

__all__ = ["render_latex"]

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "^": r"\textasciicircum{}",
    "‖": r"$\Vert$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "±": r"$\pm$",
    # Every other symbol the renderers write, in a form pdflatex (no Unicode engine) compiles.
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "≈": r"$\approx$",
    "≠": r"$\neq$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "⊗": r"$\otimes$",
    "∩": r"$\cap$",
    "→": r"$\rightarrow$",
    "∞": r"$\infty$",
    "√": r"$\surd$",
    "…": r"\ldots{}",
    "–": "--",
    "—": "---",
    "°": r"$^\circ$",
    "ᵀ": r"$^{T}$",
    "⁻": r"$^{-}$",
    "²": r"$^{2}$",
    "³": r"$^{3}$",
    "₀": r"$_{0}$",
    "₁": r"$_{1}$",
    "₂": r"$_{2}$",
    "ₖ": r"$_{k}$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "χ": r"$\chi$",
    "ε": r"$\varepsilon$",
    "κ": r"$\kappa$",
    "λ": r"$\lambda$",
    "μ": r"$\mu$",
    "σ": r"$\sigma$",
    "Σ": r"$\Sigma$",
    "Ĉ": r"$\hat{C}$",
    "\u0302": "",  # a combining circumflex (written as a hat above)
}


def _latex_char(ch: str) -> str:
    """One character in a form pdflatex compiles: escaped, a math symbol, or Latin text.

    Letters of the Latin scripts pass through (LaTeX reads UTF-8 input for them); anything else
    outside ASCII that no rule covers becomes ``?`` rather than a document that fails to build.
    """
    if ch in _LATEX_SPECIAL:
        return _LATEX_SPECIAL[ch]
    if ord(ch) < 128 or (ord(ch) < 0x250 and unicodedata.category(ch).startswith("L")):
        return ch
    return "?"


def _latex(text: str) -> str:
    """User text safe in a LaTeX table cell.

    Specials are escaped; line breaks (a blank line would end the paragraph inside a tabular)
    and other runs of whitespace become one space.
    """
    return "".join(_latex_char(ch) for ch in " ".join(text.split()))


def render_latex(columns: Sequence[AuditColumn], paired: Sequence[dict[str, Any]] = ()) -> str:
    """The headline table (and paired tables) as LaTeX ``table`` floats with booktabs rules."""
    conf = round(100 * columns[0].result.confidence)

    def table(head: list[str], body: list[list[str]], caption: str, label: str) -> list[str]:
        out = [
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
            "\\toprule",
            " & ".join(_latex(h) for h in head) + " \\\\",
            "\\midrule",
        ]
        out += [" & ".join(_latex(x) for x in r) + " \\\\" for r in body]
        out += [
            "\\bottomrule",
            "\\end{tabular}",
            f"\\caption{{{caption}}}",
            f"\\label{{{label}}}",
            "\\end{table}",
        ]
        return out

    lines = ["% medfair report; needs \\usepackage{booktabs}"]
    header, rows = format_rows(columns)
    constrained = "".join(f"; {_latex(note)}" for note in caption_notes(rows))
    lines += table(
        header,
        rows,
        _latex(_title(columns)[:1].upper() + _title(columns)[1:])
        + f", with {conf}\\% intervals; {_latex(CENSORED_CAPTION)}{constrained}; "
        "FID/KID at a common subsample size (mean $\\pm$ sd over draws).",
        "tab:medfair",
    )
    for section in sections(columns, paired):
        # findings as sentences; Markdown emphasis (``*after*``) dropped
        plain = [re.sub(r"\*([^*]+)\*", r"\1", f).rstrip(". ") for f in section.findings]
        findings = "".join(f" {f[:1].upper()}{f[1:]}." for f in plain)
        caption = f"{section.title}. {section.sentence}{findings}"
        lines += table(section.header, section.rows, _latex(caption), f"tab:medfair-{section.key}")
    return "\n".join(lines) + "\n"
