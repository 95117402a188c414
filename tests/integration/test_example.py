"""The committed example is a valid schema-v2 audit pair, and the README's table is its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfair_audit.audit import audit_schema
from medfair_audit.reporting.compare import load_audit, paired_analysis, render_markdown

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "reports" / "example"


@pytest.mark.parametrize("side", ["before", "after"])
def test_example_audits_validate_against_the_schema(side):
    import jsonschema

    jsonschema.validate(json.loads((EXAMPLE / side / "audit.json").read_text()), audit_schema())


def test_readme_table_is_the_example_report_regenerated_from_the_committed_files():
    columns = [load_audit(EXAMPLE / s, s) for s in ("before", "after")]
    paired = paired_analysis(columns[0], columns[1])
    md = render_markdown(columns, [paired])
    assert md == (EXAMPLE / "report.md").read_text()
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- example-table:start -->\n", "\n<!-- example-table:end -->"
    assert readme.split(start, 1)[1].split(end, 1)[0] == md.strip()
    # The before column is censored, so no change is claimed from it.
    row = next(line for line in md.splitlines() if line.startswith("| KL(target‖generated)"))
    assert "(censored)" in row and row.rstrip(" |").endswith("–")
