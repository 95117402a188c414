"""The committed example: four valid schema-v2 audits (evaluator and training classifier, before
and after, on held-out prompts), and the README's table is their report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfair_audit.audit import audit_schema
from medfair_audit.reporting.markdown import render_markdown
from medfair_audit.reporting.tables import comparisons, load_audit, paired_analysis

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "reports" / "example"
COLUMNS = {
    "before": "before",
    "after": "after",
    "before-trainclf": "before (training clf)",
    "after-trainclf": "after (training clf)",
}


@pytest.mark.parametrize("side", list(COLUMNS))
def test_example_audits_validate_against_the_schema(side):
    import jsonschema

    jsonschema.validate(json.loads((EXAMPLE / side / "audit.json").read_text()), audit_schema())


def test_readme_table_is_the_example_report_regenerated_from_the_committed_files():
    columns = [load_audit(EXAMPLE / s, label) for s, label in COLUMNS.items()]
    pairs = comparisons(columns)
    assert pairs == [(0, 1), (2, 3)]  # changes only within one classifier
    md = render_markdown(columns, [paired_analysis(columns[j], columns[i]) for j, i in pairs])
    assert md == (EXAMPLE / "report.md").read_text()
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- example-table:start -->\n", "\n<!-- example-table:end -->"
    assert readme.split(start, 1)[1].split(end, 1)[0] == md.strip()
    # The headline is independent of the tuning: held-out prompts, a classifier it never saw.
    after = columns[1].result.data["config"]
    assert after["remediation"]["same_classifier"] is False
    assert after["remediation"]["shared_prompts"] == 0
    assert columns[3].result.data["config"]["remediation"]["same_classifier"] is True


def test_a_censored_value_gets_no_change():
    columns = [load_audit(EXAMPLE / s, label) for s, label in COLUMNS.items()]
    md = render_markdown(columns)
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip(" |").split("|")]
        if len(cells) == 8 and cells[0] != "measure":
            for (j, i), delta in zip(((0, 1), (2, 3)), cells[6:], strict=True):
                if "(censored)" in cells[2 + j] or "(censored)" in cells[2 + i]:
                    assert delta == "–", line


ATTRIBUTES = EXAMPLE / "attributes"


@pytest.mark.parametrize("side", list(COLUMNS))
def test_two_attribute_example_audits_validate_and_hold_every_cell(side):
    import jsonschema

    doc = json.loads((ATTRIBUTES / side / "audit.json").read_text())
    jsonschema.validate(doc, audit_schema())
    assert doc["joint"]["attributes"] == ["sex", "age_band"] and len(doc["joint"]["cells"]) == 6
    assert set(doc["attributes"]) == {"sex", "age_band"}


def test_two_attribute_tables_are_the_example_report_regenerated_from_the_committed_files():
    columns = [load_audit(ATTRIBUTES / s, label) for s, label in COLUMNS.items()]
    pairs = comparisons(columns)
    md = render_markdown(columns, [paired_analysis(columns[j], columns[i]) for j, i in pairs])
    assert md == (ATTRIBUTES / "report.md").read_text()
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    start, end = "<!-- attributes-table:start -->\n", "\n<!-- attributes-table:end -->"
    assert results.split(start, 1)[1].split(end, 1)[0] == md.strip()
    readme = (ROOT / "README.md").read_text().split(start, 1)[1].split(end, 1)[0]
    assert readme.startswith("**Joint cells") and readme in md
    import subprocess
    import sys

    summary = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "attributes_summary.py"), str(ATTRIBUTES)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert summary == (ATTRIBUTES / "summary.md").read_text().strip()
    for doc in (results, (ROOT / "README.md").read_text()):
        kl = doc.split("<!-- attributes-kl:start -->\n", 1)[1].split("\n<!-- attributes-kl:end -->")
        assert kl[0] == summary
    after = columns[1].result.data["config"]
    assert after["remediation"]["same_classifier"] is False  # independent evaluators
    assert columns[3].result.data["config"]["remediation"]["same_classifier"] is True


@pytest.mark.parametrize("root", [EXAMPLE, ATTRIBUTES], ids=["one", "two"])
def test_no_share_is_shown_bare_outside_its_interval(root):
    """A simplex-constrained value is another estimator than its interval's, so it may lie
    outside it; the table then says so, in the cell and in the caption."""
    import re

    columns = [load_audit(root / s, label) for s, label in COLUMNS.items()]
    md = render_markdown(columns)
    outside = 0
    for value, mark, lo, hi, after in re.findall(
        r"(?<![≤≥] )(\d+\.\d)%( \(constrained\))? \[(\d+\.\d)%, (\d+\.\d)%\]"
        r"( \(constrained\))?",  # (the joint cells' table marks it after the interval)
        md,
    ):
        if not float(lo) <= float(value) <= float(hi):
            outside += 1
            assert mark or after, (value, lo, hi)
    assert ("(constrained): projected onto the simplex" in md.splitlines()[1]) == bool(outside)
    if root == ATTRIBUTES:
        assert outside  # the two-attribute example has such cells


@pytest.mark.parametrize("root", [EXAMPLE, ATTRIBUTES], ids=["one", "two"])
def test_markdown_and_latex_print_the_same_sections(root):
    """One section model: every table after the headline has the same title, caption and rows
    in Markdown and LaTeX (the LaTeX of a paper is the README's table)."""
    from medfair_audit.reporting.latex import render_latex
    from medfair_audit.reporting.markdown import _markdown
    from medfair_audit.reporting.sections import sections

    columns = [load_audit(root / s, label) for s, label in COLUMNS.items()]
    paired = [paired_analysis(columns[j], columns[i]) for j, i in comparisons(columns)]
    found = sections(columns, paired)
    keys = [s.key for s in found]
    assert keys[-2:] == ["paired", "paired1"] and "evaluators" in keys
    assert ("joint" in keys) == (root == ATTRIBUTES)
    md, tex = render_markdown(columns, paired), render_latex(columns, paired)
    for s in found:
        assert f"**{_markdown(s.title)}.** {_markdown(s.sentence)}" in md
        assert f"\\label{{tab:medfair-{s.key}}}" in tex
        assert tex.count("\\begin{table}") == len(found) + 1  # and the headline
        for row in s.rows:  # every row, in both
            assert "| " + " | ".join(_markdown(x) for x in row) + " |" in md


@pytest.mark.parametrize("root", [EXAMPLE, ATTRIBUTES], ids=["one", "two"])
def test_readme_stage_times_are_the_example_demo_record(root):
    """The demo's stage times in the README come from the example run's demo.json, not by hand."""
    from medfair_audit.demo import (
        ATTRIBUTE_STAGES,
        DemoConfig,
        demo_stages,
        stage_span,
        stage_table,
    )

    record = json.loads((root / "demo.json").read_text())
    stages = record["stages"]
    cfg = DemoConfig(robust_guide=record["config"].get("robust_guide", False))
    expected = [st.name for st in demo_stages(cfg)] if root == EXAMPLE else ATTRIBUTE_STAGES
    assert set(expected) <= set(stages)  # every stage of that pipeline is recorded
    span = stage_span(record)
    table = "\n".join(stage_table(stages)) + (f"\n\n{span}" if span else "")
    assert (root / "demo-stages.md").read_text().strip() == table
    readme = (ROOT / "README.md").read_text()
    marker = "demo-timings" if root == EXAMPLE else "attributes-timings"
    start, end = f"<!-- {marker}:start -->\n", f"\n<!-- {marker}:end -->"
    assert readme.split(start, 1)[1].split(end, 1)[0] == table
    total = sum(s["seconds"] for s in stages.values())
    assert f"**{total / 60:.1f} min**" in table


def test_quick_demo_figures_are_the_benchmark_record_rendered():
    """The quick demo's time and readings in the README and RESULTS.md are
    ``bench_quick_demo.py``'s rendering of ``quick_demo.json``, whose stages are the quick
    demo's, timed from an empty folder (no stage reused)."""
    import importlib.util
    import sys

    from medfair_audit.demo import DemoConfig, demo_stages, stage_names

    spec = importlib.util.spec_from_file_location(
        "bench_quick_demo", ROOT / "benchmarks" / "bench_quick_demo.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    doc = json.loads((ROOT / "benchmarks" / "quick_demo.json").read_text())
    plan = {st.name: None for st in demo_stages(DemoConfig(quick=True))}
    assert list(doc["stages"]) == stage_names(plan)
    # the stages ran within the measured wall time (each rounded to 0.1 s)
    assert sum(doc["stages"].values()) <= doc["wall_seconds"] + 0.05 * len(doc["stages"])
    for path, marker, text in (
        (ROOT / "benchmarks" / "RESULTS.md", "quick-demo-table", bench.table(doc)),
        (ROOT / "README.md", "quick-demo-summary", bench.summary(doc)),
    ):
        start, end = f"<!-- {marker}:start -->\n", f"\n<!-- {marker}:end -->"
        assert path.read_text().split(start, 1)[1].split(end, 1)[0] == text
    assert f"**{doc['wall_seconds'] / 60:.1f} minutes**" in bench.summary(doc)
