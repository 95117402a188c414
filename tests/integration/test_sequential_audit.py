"""``--precision``: an audit that draws round by round and stops on an anytime-valid interval."""

from __future__ import annotations

import itertools
import json

import pytest

from medfair_audit import run_audit
from medfair_audit.audit import audit_schema
from medfair_audit.reporting.markdown import render_markdown
from medfair_audit.reporting.tables import load_audit
from tests.cli.test_cli import assert_one_line_error, run
from tests.integration.test_audit import PROMPTS, Kill, config
from tests.launch import medfair_processes


def test_a_reachable_precision_stops_at_the_first_allowed_look(tiny_models, tmp_path):
    import jsonschema

    seq = run_audit(
        config(tiny_models, tmp_path / "seq", n=8, shard=2, precision=0.5, min_n_per_prompt=4)
    )
    s = seq.data["sequential"]
    jsonschema.validate(seq.data, audit_schema())
    assert s["stopped_by"] == "precision" and s["n_per_prompt"] == 4
    assert [look["n_per_prompt"] for look in s["looks"]] == [2, 4]
    assert [look["n_images"] for look in s["looks"]] == [4, 8]
    assert seq.data["n_images"] == 8 and seq.data["config"]["n_per_prompt"] == 8  # the maximum
    for lo, hi in s["intervals"].values():
        assert 0 <= lo <= hi <= 1 and (hi - lo) / 2 <= 0.5
    # every estimate is the fixed-n one of the images drawn: a 4-per-prompt audit's
    fixed = run_audit(config(tiny_models, tmp_path / "fixed", n=4, shard=2))
    for key in ("proportions", "distances", "counts", "by_prompt", "chi_square"):
        assert seq.data[key] == fixed.data[key], key
    assert sorted(p.name for p in (tmp_path / "seq" / "shards").glob("*.json")) == sorted(
        p.name for p in (tmp_path / "fixed" / "shards").glob("*.json")
    )  # nothing drawn beyond the stop
    md = render_markdown([load_audit(tmp_path / "seq", "sequential")])
    assert "male share, anytime-valid (PACC)" in md and "data-dependent stop" in md
    assert "anytime-valid" not in render_markdown([load_audit(tmp_path / "fixed", "fixed")])
    assert any(line.startswith("stopped at 4 images per prompt") for line in seq.summary())


def test_an_unreachable_precision_runs_to_the_maximum_and_says_so(tiny_models, tmp_path):
    r = run_audit(config(tiny_models, tmp_path / "a", n=6, shard=2, precision=0.001))
    s = r.data["sequential"]
    assert s["stopped_by"] == "max_n_per_prompt" and s["n_per_prompt"] == 6
    assert len(s["looks"]) == 3 and r.data["n_images"] == 12
    halves = [look["half_width"] for look in s["looks"] if look["half_width"] is not None]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(halves))  # never widens
    assert "not reached" in next(x for x in r.summary() if x.startswith("stopped at"))


def test_a_killed_precision_audit_resumes_to_the_same_stop(tiny_models, tmp_path):
    def cfg(out):
        return config(tiny_models, out, n=8, shard=2, precision=0.001, min_n_per_prompt=2)

    full = run_audit(cfg(tmp_path / "full"))
    looks = []

    def kill_in_round_three(event):  # after two looks, once one shard of the third is drawn
        if event.stage == "precision":
            looks.append(event.completed)
        elif event.stage == "generate" and len(looks) == 2 and event.completed >= 2:
            raise Kill

    with pytest.raises(Kill):
        run_audit(cfg(tmp_path / "cut"), progress=kill_in_round_three)
    assert len(list((tmp_path / "cut" / "shards").glob("*.json"))) == 5
    again = run_audit(cfg(tmp_path / "cut"))
    assert (tmp_path / "cut" / "audit.json").read_bytes() == (
        tmp_path / "full" / "audit.json"
    ).read_bytes()
    assert again.data["sequential"] == full.data["sequential"]


def test_two_processes_stop_where_one_does(tiny_models, tmp_path):
    args = [
        "audit", str(tiny_models["t2medi"]), "--classifier", str(tiny_models["classifier"]),
        "--target", "male=0.58,female=0.42", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
        "--precision", "0.5", "--min-n-per-prompt", "4", "--max-n-per-prompt", "8",
        "--batch-size", "2", "--steps", "2", "--n-boot", "30",
    ]  # fmt: skip
    one = medfair_processes(*args, "--out", tmp_path / "one")
    medfair_processes(*args, "--out", tmp_path / "two", processes=2)
    assert "stopped at 4 images per prompt" in one.stdout
    a, b = (json.loads((tmp_path / n / "audit.json").read_text()) for n in ("one", "two"))
    assert a["sequential"]["n_per_prompt"] == 4
    for doc in (a, b):
        doc["config"].pop("placement")
        doc["config"].pop("versions")
    assert a == b


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (["--max-n-per-prompt", "64"], "max_n_per_prompt"),
        (["--precision", "0.7"], "precision"),
        (["--precision", "0.05", "--mode", "conditional"], "precision"),
    ],
)
def test_precision_options_are_checked(tiny_models, tmp_path, capsys, extra, param):
    code, _, err = run(
        capsys,
        "audit", str(tiny_models["t2medi"]), "--classifier", str(tiny_models["classifier"]),
        "--target", "male=0.58,female=0.42", "--prompt", PROMPTS[0], *extra,
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert_one_line_error(code, err, param.replace("_", "-"))
