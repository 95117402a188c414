"""The typed results: estimates, frames, and their round trip through ``audit.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfair_audit.audit.result import AuditResult, format_estimate
from medfair_audit.metrics.results import (
    Estimate,
    QualityAtN,
    QualityEntry,
    Spread,
    common_size,
    prdc_size,
)
from medfair_audit.metrics.results_json import estimate_from_json

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "reports" / "example").rglob("audit.json"))
FIELDS = ("value", "ci", "censored", "bound", "method", "note")


def _estimates(node, path=""):
    """Every estimate-shaped entry (``value`` and ``ci``) of a JSON document."""
    if isinstance(node, dict):
        if "value" in node and "ci" in node:
            yield path, node
        for k, v in node.items():
            yield from _estimates(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _estimates(v, f"{path}/{i}")


def test_estimate_text_tells_a_bound_from_a_measurement():
    assert Estimate(value=0.25, ci=(0.2, 0.3)).text(".1%") == "25.0% [20.0%, 30.0%]"
    below = Estimate(value=None, ci=(0.0, 0.023), censored="below", at_most=0.023)
    assert below.bound == ("≤", 0.023) and below.text(".1%") == "≤ 2.3% (censored) [0.0%, 2.3%]"
    above = Estimate(value=None, ci=(0.97, 1.0), censored="above", at_least=0.97)
    assert above.bound == ("≥", 0.97) and above.text(".2f").startswith("≥ 0.97 (censored)")
    assert Estimate(value=None, ci=(0.1, 0.9)).text(".1f") == "not identifiable [0.1, 0.9]"
    # a value is never reported as a bound, even when a bound is recorded beside it
    assert Estimate(value=0.5, ci=(0.4, 0.6), at_most=0.6).bound is None
    assert Estimate(value=0.1, method="PACC, simplex-constrained").constrained


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_estimate_of_an_audit_round_trips(path):
    doc = json.loads(path.read_text())
    found = list(_estimates(doc))
    assert found
    for where, entry in found:
        est = estimate_from_json(entry)
        want = {k: entry[k] for k in FIELDS if k in entry and entry[k] is not None}
        got = {k: v for k, v in est.to_json().items() if v is not None}
        assert got == want, where
        assert format_estimate(entry, ".3f") == est.text(".3f")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_typed_accessors_agree_with_the_file(path):
    doc = json.loads(path.read_text())
    result = AuditResult.from_json(doc)
    assert result.to_json() is doc and result.groups == doc["groups"]
    for reading, per in doc["proportions"].items():
        for g, e in per.items():
            assert result.share(g, reading).value == e["value"]
            assert result.share(g, reading).ci == tuple(e["ci"])
    for reading, d in doc["distances"].items():
        assert result.kl(reading).value == d["kl_target_to_generated"]["value"]
        assert result.overall.distances[reading].gaps.keys() == d["gaps"].keys()
    assert [p.prompt for p in result.by_prompt] == [p["prompt"] for p in doc["by_prompt"]]
    assert result.settings.classifier_sha256 == doc["config"]["classifier_sha256"]
    assert result.settings.prompts == tuple(doc["config"]["prompts"])
    chi = result.overall.chi_square
    assert chi.p_value == doc["chi_square"]["p_value"]
    assert chi.p_value_is_bound == bool(doc["chi_square"].get("p_value_is_bound"))
    if doc.get("quality"):
        for g, e in doc["quality"]["by_group"].items():
            entry = result.quality.entry(g)
            assert entry.fid == e["fid"] and set(entry.at_n) == set(e["at_n"])
            for n, at in e["at_n"].items():
                assert entry.at(n).fid.mean == at["fid"]["mean"]
    if doc.get("readers"):
        assert [r.name for r in result.readers.readers] == [
            r["name"] for r in doc["readers"]["readers"]
        ]
        assert len(result.readers.support) == len(doc["readers"]["support"])
    if doc.get("joint"):
        assert [c.cell for c in result.joint.cells] == [c["cell"] for c in doc["joint"]["cells"]]
        assert result.joint.rejected == tuple(doc["joint"]["holm"]["rejected"])
        assert set(result.attributes) == set(doc["attributes"])
    rem = doc["config"].get("remediation")
    assert (result.settings.remediation is None) == (rem is None)
    if rem:
        assert result.settings.remediation.prompts == tuple(rem["prompts"])


def _entry(sizes: dict[str, bool]) -> QualityEntry:
    s = Spread(mean=1.0, sd=0.1)
    at = {n: QualityAtN(fid=s, kid=s, prdc={"recall": s} if prdc else None)
          for n, prdc in sizes.items()}  # fmt: skip
    return QualityEntry(n_generated=10, n_reference=10, fid=1.0, at_n=at)


def test_common_sizes_are_the_largest_every_entry_has():
    a = _entry({"32": True, "64": True, "128": False})
    b = _entry({"32": True, "64": False, "128": False})
    assert common_size([a, b]) == "128"  # by number, not by string order
    assert common_size([a, b, None]) is None  # an audit without the group has no size
    assert prdc_size([a, b]) == "32"
    assert prdc_size([a, _entry({"32": False})]) == "64"  # entries without PRDC do not count
    assert prdc_size([_entry({"32": False})]) is None
