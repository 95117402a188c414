"""``medfair demo --quick`` shows the method working, read by a classifier it never saw.

The whole quick demo runs from an empty folder (about 10 minutes on 2 CPU cores). The biased
model must read well above the target by the independent evaluator, and the remediated model
closer to it by that same evaluator: a quick demo whose effect only its own guide sees would
show nothing.
"""

from __future__ import annotations

import json

import pytest
from medfair_cli.main import main

pytestmark = pytest.mark.slow


def _male(audit: dict) -> dict:
    return audit["proportions"][audit["default_reading"]]["male"]


# The whole demo from scratch: about 10 minutes on 2 CPU cores, nearer 15 on slower ones (the
# suite's 900 s limit is for single tests, not for a pipeline).
@pytest.mark.timeout(1800)
def test_quick_demo_moves_the_evaluators_reading_toward_the_target(tmp_path, capsys):
    out = tmp_path / "quick"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    target = json.loads((out / "target.json").read_text())["proportions"]["male"]
    before = json.loads((out / "before" / "audit.json").read_text())
    after = json.loads((out / "after" / "audit.json").read_text())
    assert before["config"]["classifier"].endswith("evaluator")
    assert after["config"]["remediation"]["same_classifier"] is False
    assert after["config"]["seed"] == before["config"]["seed"]
    b, a = _male(before), _male(after)
    # before: a share (or its censoring bound) whose interval lies above the target
    low = b["ci"][0] if b.get("value") is not None else b["bound"]["at_least"]
    assert low > target + 0.1
    # after: a measured share whose interval lies wholly below the biased one (a real move),
    # moved at least halfway toward the target and ending closer to it than it started. Where
    # it ends is not pinned tighter: the same demo trained on another CPU ends on either side of
    # the target (on one 2-core machine 64% male, on another 40%, from 99% and 93%): the gap
    # between the guiding classifier and the evaluator that the README's "Guidance that
    # transfers" (benchmarks/bench_transfer.py) measures.
    assert a.get("value") is not None
    start = b["value"] if b.get("value") is not None else low
    assert a["ci"][1] < low
    assert start - a["value"] >= 0.5 * (start - target)
    assert abs(a["value"] - target) < abs(start - target)
    md = (out / "report.md").read_text()
    assert "before (quick demo)" in md and "after (quick demo)" in md
    record = json.loads((out / "demo.json").read_text())
    assert record["config"]["quick"] is True
    assert not any(s["reused"] for s in record["stages"].values())
    assert "report.html" in capsys.readouterr().out
