from __future__ import annotations

import datetime as dt
import json
import os
import re
import time

import numpy as np
import pandas as pd
import pytest
from medfair_cli.main import main

from medfair_audit.config import T2IConfig
from medfair_audit.demo import DemoConfig, run_demo, stage_span, stage_table
from medfair_audit.exceptions import ConfigError


def test_fast_demo_builds_biased_corpus_and_target_and_reuses_stages(tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(DemoConfig(out=out, fast=True, robust_guide=True))
    corpus = pd.read_csv(out / "data" / "corpus" / "metadata.csv")
    assert (corpus.sex == "male").mean() == 0.85
    target = json.loads((out / "target.json").read_text())
    target_set = pd.read_csv(out / "data" / "target_set" / "metadata.csv")
    assert target["proportions"]["male"] == (target_set.sex == "male").mean()
    assert abs(target["proportions"]["male"] - 0.58) < 0.01
    assert target_set.tumour.all()
    assert not any(s["reused"] for s in result.stages.values())
    assert set(result.stages) == {
        "corpus",
        "target_set",
        "target",
        "clip",
        "t2medi",
        "classifier",
        "evaluator",
        "classifier-b",
        "classifier-robust",
        "reader_set",
        "reader",
        "audit_before",
        "audit_before-trainclf",
        "remediate",
        "audit_after",
        "audit_after-trainclf",
        "report",
    }
    # The evaluator is independent of the training classifier: other subjects, seed and width.
    ev = {
        n: json.loads((out / "models" / n / "evaluation.json").read_text())
        for n in ("classifier", "evaluator")
    }
    assert ev["classifier"]["splits"] == ["train", "val", "test"]
    assert ev["evaluator"]["splits"] == ["eval_train", "eval_val", "test"]
    subjects = {
        s: set(target_set.subject[target_set.split.isin(names)])
        for s, names in (("clf", ["train", "val"]), ("eval", ["eval_train", "eval_val"]))
    }
    assert subjects["clf"] and subjects["eval"] and not subjects["clf"] & subjects["eval"]
    # the other guides learn on the training classifier's subjects; the reader on its own set
    for name in ("classifier-b", "classifier-robust"):
        e = json.loads((out / "models" / name / "evaluation.json").read_text())
        assert e["splits"] == ["train", "val", "test"]
    reader = json.loads((out / "models" / "reader" / "classifier.json").read_text())
    assert reader["architecture"] == "radiomics" and reader["data"].endswith("reader_set")
    robust = json.loads((out / "models" / "classifier-robust" / "classifier.json").read_text())
    assert robust["config"]["robust"] == "pgd"
    audit = json.loads((out / "before" / "audit.json").read_text())
    assert audit["n_images"] == 16 and audit["target"]["male"] == target["proportions"]["male"]
    assert audit["config"]["classifier"].endswith("evaluator")
    # the evaluator's audit is read by every guide and the reader too, with support shares
    names = [r["name"] for r in audit["readers"]["readers"]]
    assert names == ["classifier", "classifier-b", "classifier-robust", "reader"]
    assert [s["space"] for s in audit["readers"]["support"]] == ["evaluator", *names]
    trainclf = json.loads((out / "before-trainclf" / "audit.json").read_text())
    assert trainclf["readers"]["readers"] == []
    # the training classifier's audits read the evaluator's images, drawn once; its corrected
    # shares are its reading as a reader of the evaluator's audit
    for side in ("before", "after"):
        doc = json.loads((out / f"{side}-trainclf" / "audit.json").read_text())
        assert doc["config"]["images_from"] == str(out / side)
        read = json.loads((out / side / "audit.json").read_text())["readers"]["readers"][0]
        for g in ("female", "male"):
            assert doc["proportions"][read["reading"]][g]["value"] == pytest.approx(
                read["proportions"][g]["value"], abs=1e-9
            )
    assert (out / "models" / "t2medi" / "model_index.json").is_file()
    # remediated with the same audit seeds, so the report pairs every image
    after = json.loads((out / "after" / "audit.json").read_text())
    assert after["config"]["checkpoint"].endswith("t2medi-fair") and after["n_images"] == 16
    assert after["config"]["seed"] == audit["config"]["seed"]
    remediation = json.loads((out / "models" / "t2medi-fair" / "remediation.json").read_text())
    assert remediation["steps_done"] == 2 and len(remediation["audits"]) == 2
    # Held-out prompts; the after audits know what the remediation saw.
    assert not set(remediation["prompts"]) & set(after["config"]["prompts"])
    assert after["config"]["remediation"]["same_classifier"] is False
    assert after["config"]["remediation"]["shared_prompts"] == 0
    seen = json.loads((out / "after-trainclf" / "audit.json").read_text())
    assert seen["config"]["remediation"]["same_classifier"] is True
    assert any("tuned against" in w for w in seen["warnings"])
    html = (out / "report.html").read_text()
    assert 'id="headline-table"' in html and "16 image pairs" in html
    assert 'id="evaluator-table"' in html and "no (independent)" in html
    assert 'id="readers"' in html and 'id="support"' in html
    md = (out / "report.md").read_text()
    assert "Δ after − before" in md and "Δ after (training clf) − before (training clf)" in md
    assert "Δ before (training clf) − after" not in md  # no change across evaluators
    assert (out / "report.md").is_file() and "\\toprule" in (out / "report.tex").read_text()
    stamp = (out / "data" / "corpus" / "metadata.csv").stat().st_mtime_ns
    # second run through the CLI reuses every stage
    assert main(["demo", "--out", str(out), "--fast", "--robust-guide"]) == 0
    assert "reused" in capsys.readouterr().err
    assert (out / "data" / "corpus" / "metadata.csv").stat().st_mtime_ns == stamp
    doc = json.loads((out / "demo.json").read_text())
    assert all(s["reused"] for s in doc["stages"].values())
    assert doc["machine"]["cpus"] == os.cpu_count() and doc["machine"]["threads"] >= 1
    assert stage_span(doc).startswith("The stages ran from ")
    # a benchmark's partial run stops after a stage and leaves the whole run's record alone
    record = (out / "demo.json").read_text()
    partial = run_demo(DemoConfig(out=out, fast=True, robust_guide=True), until="reader")
    assert list(partial.stages)[-1] == "reader" and all(
        s["reused"] for s in partial.stages.values()
    )
    assert (out / "demo.json").read_text() == record
    with pytest.raises(ConfigError) as err:
        run_demo(DemoConfig(out=out, fast=True), until="nothing")
    assert err.value.param == "until"


def test_fields_added_later_leave_finished_stages_valid_while_at_their_default():
    """A field listed in LATER_FIELDS holds there the default its dataclass gives it, and a
    stage configuration at those defaults is stamped without it (finished stages stay valid)."""
    import dataclasses

    from medfair_audit.config import ClassifierConfig, RemediationConfig, T2IConfig
    from medfair_audit.data import AnatomyModel, PhantomConfig
    from medfair_audit.demo import LATER_FIELDS, _settings, demo_stages

    defaults = {}
    for cls in (AnatomyModel, PhantomConfig, ClassifierConfig, RemediationConfig, T2IConfig):
        for f in dataclasses.fields(cls):
            if f.name in LATER_FIELDS and f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
    assert set(defaults) == set(LATER_FIELDS)
    for name, value in defaults.items():
        expected = LATER_FIELDS[name]
        assert value == (tuple(expected) if isinstance(value, tuple) else expected), name

    def keys(node):
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return set()

    cfg = DemoConfig()
    for stage_cfg in (cfg.corpus, cfg.target_set, cfg.classifier, cfg.remediation):
        assert not keys(_settings(stage_cfg)) & set(LATER_FIELDS)

    # what each stage of the default demo hashes, too (the T2MedI's autoencoder crops included)
    def at_default(node):
        if isinstance(node, dict):
            here = {k for k, v in node.items() if k in LATER_FIELDS and v == LATER_FIELDS[k]}
            return here | {k for v in node.values() for k in at_default(v)}
        return set()

    for st in demo_stages(cfg):
        assert not at_default(st.settings), st.name
    aged = _settings(cfg.corpus_attributes)
    assert aged["anatomy"]["age_signs"] == cfg.age_anatomy.age_signs > 0


def test_quick_demo_is_the_full_protocol_at_smaller_sizes(capsys):
    """--quick keeps the full demo's target set, classifiers and evaluator (so the headline
    reader is the same model), shrinks only what QUICK names, and labels its report."""
    from medfair_audit.demo import QUICK, demo_stages

    full, quick = DemoConfig(), DemoConfig(quick=True)
    assert (quick.target_set, quick.classifier, quick.evaluator, quick.reader) == (
        full.target_set,
        full.classifier,
        full.evaluator,
        full.reader,
    )
    assert quick.corpus.n == QUICK["corpus_n"] < full.corpus.n
    assert quick.t2i.unet_channels == QUICK["t2i"]["unet_channels"] != full.t2i.unet_channels
    assert quick.remediation.steps == QUICK["remediation"]["steps"] < full.remediation.steps
    assert quick.remediation.align_to == full.remediation.align_to == "corrected"
    assert quick.audit_generation.seed == full.audit_generation.seed
    names = [st.name for st in demo_stages(quick)]
    assert names == [
        "corpus", "clip", "t2medi", "target_set", "target", "classifier", "evaluator",
        "reader_set", "reader", "audit_before", "remediate", "audit_after", "report",
    ]  # fmt: skip
    assert quick.readers == ("classifier", "reader")
    assert full.readers == ("classifier", "classifier-b", "reader")
    # the PGD-trained guide is opt-in: trained and read only with robust_guide
    robust = DemoConfig(robust_guide=True)
    assert robust.readers == ("classifier", "classifier-b", "classifier-robust", "reader")
    assert "classifier-robust" not in [st.name for st in demo_stages(full)]
    assert "classifier-robust" in [st.name for st in demo_stages(robust)]
    assert full.remediation == robust.remediation and full.remediation.prompts_per_step == 1
    # the full demo tunes with the sampler its audits (and quick audits) draw with
    assert full.remediation.sampling_steps == full.audit_generation.steps
    assert full.remediation.audit_steps == full.audit_generation.steps
    assert full.t2i == T2IConfig(seed=full.seed)  # the generator the transfer record measured
    assert all("quick" in label for label in quick.report_columns.values())
    report = {st.name: st for st in demo_stages(quick)}["report"]
    assert report.inputs == ("audit_before", "audit_after")
    assert {st.name: st for st in demo_stages(full)}["report"].settings == {}
    with pytest.raises(ConfigError) as err:
        DemoConfig(quick=True, fast=True)
    assert err.value.param == "quick"
    with pytest.raises(ConfigError) as err:
        DemoConfig(quick=True, attributes=("sex", "age_band"))
    assert err.value.param == "quick"
    assert main(["demo", "--quick", "--fast"]) == 2
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and "quick" in err_text


def test_the_demo_tunes_on_corpus_style_prompts_and_the_varied_set_adds_free_wordings():
    """Both demos tune on TRAIN_PROMPTS, worded as the corpus's captions are; the varied set
    (the transfer benchmark's ``varied-prompts``) adds wordings with words the corpus's captions
    never use; no tuning prompt is an audit's."""
    from medfair_audit.data.phantom import SEQUENCE_NAMES, _caption
    from medfair_audit.demo import (
        HELD_OUT_PROMPTS,
        TRAIN_PROMPTS,
        VARIED_TRAIN_PROMPTS,
        demo_stages,
    )

    assert not set(VARIED_TRAIN_PROMPTS) & set(HELD_OUT_PROMPTS)
    assert len(set(VARIED_TRAIN_PROMPTS)) == len(VARIED_TRAIN_PROMPTS) > len(TRAIN_PROMPTS)
    assert VARIED_TRAIN_PROMPTS[: len(TRAIN_PROMPTS)] == TRAIN_PROMPTS
    # the corpus's caption vocabulary, from its caption writer over every form and site
    rng = np.random.default_rng(0)
    sites = [{"side": a, "lobe": b} for a in ("left", "right")
             for b in ("frontal", "parietal", "temporal", "occipital")]  # fmt: skip
    corpus = {
        _caption(rng, seq, "male", 50, t, name_sex=False)
        for seq in SEQUENCE_NAMES
        for t in (None, *sites)
        for _ in range(20)
    }

    def words(text):
        return set(re.findall(r"[a-z0-9-]+", text.lower()))

    vocabulary = set().union(*map(words, corpus))
    assert all(words(p) <= vocabulary for p in TRAIN_PROMPTS)
    free = VARIED_TRAIN_PROMPTS[len(TRAIN_PROMPTS) :]
    assert all(words(p) - vocabulary for p in free)
    sex = {st.name: st for st in demo_stages(DemoConfig())}
    joint = {st.name: st for st in demo_stages(DemoConfig(attributes=("sex", "age_band")))}
    assert sex["remediate"].settings["prompts"] == joint["sa_remediate"].settings["prompts"]
    assert sex["remediate"].settings["prompts"] == TRAIN_PROMPTS


def test_the_full_demo_keeps_the_weights_chosen_on_selection_prompts():
    """The full demo's quick audits read a third wording of the prompts (none a training, varied
    or held-out prompt) and choose the kept weights; quick, fast and two-attribute runs keep the
    last weights, as their records were made."""
    from medfair_audit.demo import (
        HELD_OUT_PROMPTS,
        SELECTION_PROMPTS,
        VARIED_TRAIN_PROMPTS,
        demo_stages,
    )

    assert len(set(SELECTION_PROMPTS)) == len(SELECTION_PROMPTS) == len(HELD_OUT_PROMPTS)
    assert not set(SELECTION_PROMPTS) & (set(VARIED_TRAIN_PROMPTS) | set(HELD_OUT_PROMPTS))
    full = DemoConfig()
    assert full.remediation.keep == "best" and full.remediation.audit_every > 0
    stage = {st.name: st for st in demo_stages(full)}["remediate"]
    assert stage.settings["audit_prompts"] == SELECTION_PROMPTS
    for other in (DemoConfig(quick=True), DemoConfig(fast=True)):
        assert other.remediation.keep == "last"
        assert (
            "audit_prompts" not in {st.name: st for st in demo_stages(other)}["remediate"].settings
        )
    joint = {st.name: st for st in demo_stages(DemoConfig(attributes=("sex", "age_band")))}
    assert joint["sa_remediate"].settings["cfg"]["keep"] == "last"
    assert "audit_prompts" not in joint["sa_remediate"].settings


def test_stage_span_is_the_wall_clock_of_the_recorded_stages():
    """Wall clock from the first stage's start to the last one's end, beside the summed stage
    time; a record without the times gives no sentence."""
    t0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)

    def at(minutes: float) -> str:
        return (t0 + dt.timedelta(minutes=minutes)).isoformat()

    one_run = {"stages": {"a": {"seconds": 600, "finished": at(10)},
                          "b": {"seconds": 1200, "finished": at(30)}},
               "machine": {"cpus": 2, "threads": 2}}  # fmt: skip
    assert stage_span(one_run) == (
        "The stages ran from 2026-12-03 12:00 to 12:30 UTC on 2 CPU cores (2 torch threads): "
        "30.0 minutes of wall clock for 30.0 minutes of stage time."
    )
    # a stage reused from the day before: the span says so
    reused = {"stages": {**one_run["stages"], "c": {"seconds": 60, "finished": at(-24 * 60)}}}
    assert stage_span(reused) == (
        "The stages ran from 2026-12-02 11:59 to 2026-12-03 12:30 UTC: 1471.0 minutes of wall "
        "clock for 31.0 minutes of stage time."
    )
    assert stage_span({"stages": {"a": {"seconds": 600}}}) == ""
    assert stage_span({"stages": {}}) == ""


def test_stage_records_cpu_time_and_the_table_gives_cores_kept_busy(tmp_path):
    """``_stage`` records the CPU time of the process and its children; the table turns it
    into cores (CPU over wall time), and keeps its old form for records that lack it in any
    stage."""
    from medfair_audit.demo import _stage

    def spin() -> dict:
        end = time.perf_counter() + 0.6
        while time.perf_counter() < end:  # busy on one core
            pass
        return {}

    def sleep() -> dict:
        time.sleep(0.6)  # no CPU
        return {}

    def child() -> dict:  # the work of a stage's worker processes counts too
        import subprocess
        import sys

        subprocess.run([sys.executable, "-c", "import time\nt = time.perf_counter()\n"
                        "while time.perf_counter() - t < 0.6: pass"], check=True)  # fmt: skip
        return {}

    busy = _stage(tmp_path, "busy", {"a": 1}, spin, None)
    idle = _stage(tmp_path, "idle", {"a": 1}, sleep, None)
    forked = _stage(tmp_path, "forked", {"a": 1}, child, None)
    assert 0.3 < busy["cpu_seconds"] / busy["seconds"] < 1.5
    assert idle["cpu_seconds"] / idle["seconds"] < 0.2
    assert forked["cpu_seconds"] > 0.3
    stored = json.loads((tmp_path / ".stages" / "busy.json").read_text())
    assert stored["cpu_seconds"] == busy["cpu_seconds"]  # the record keeps it

    stages = {"a": {"seconds": 100, "cpu_seconds": 180},
              "b": {"seconds": 50, "cpu_seconds": 45, "reused": True}}  # fmt: skip
    table = stage_table(stages)
    assert table[0] == "| stage | wall time | CPU use | ran |"
    assert table[2] == "| a | 100 s | 1.8 cores | this run |"
    assert table[3] == "| b | 50 s | 0.9 cores | earlier (reused now) |"
    assert table[-1] == "| **all stages** | **2.5 min** | 1.5 cores | |"
    del stages["b"]["cpu_seconds"]
    assert stage_table(stages)[0] == "| stage | wall time | ran |"


def test_prompt_wordings_are_a_reproducible_spread_apart_from_every_audit_prompt():
    """The wording grammar gives the same distinct prompts for a seed, never a held-out,
    selection or excluded prompt, names no sex, and spreads over every site and sequence."""
    from medfair_audit.demo import (
        HELD_OUT_PROMPTS,
        SELECTION_PROMPTS,
        WORDING_SELECTION_PROMPTS,
        WORDING_TRAIN_PROMPTS,
        prompt_wordings,
    )

    assert prompt_wordings(40, seed=3) == prompt_wordings(40, seed=3) != prompt_wordings(40, seed=4)
    assert len(set(WORDING_TRAIN_PROMPTS)) == len(WORDING_TRAIN_PROMPTS) == 150
    assert not set(WORDING_SELECTION_PROMPTS) & set(WORDING_TRAIN_PROMPTS)
    audits = set(HELD_OUT_PROMPTS) | set(SELECTION_PROMPTS)
    assert not (set(WORDING_TRAIN_PROMPTS) | set(WORDING_SELECTION_PROMPTS)) & audits
    some = prompt_wordings(20, seed=5)
    assert not set(prompt_wordings(30, seed=5, exclude=some)) & set(some)
    words = {w for p in WORDING_TRAIN_PROMPTS for w in re.findall(r"[a-z]+", p.lower())}
    assert not words & {"male", "female", "man", "woman", "men", "women", "boy", "girl"}
    for side in ("left", "right"):
        for lobe in ("frontal", "parietal", "temporal", "occipital"):
            assert any(f"{side} {lobe}" in p for p in WORDING_TRAIN_PROMPTS), (side, lobe)
    for seq in ("FLAIR", "T2", "T1"):
        assert any(seq in p for p in WORDING_TRAIN_PROMPTS), seq
    assert not any(re.search(r"\ba [aeiou]", p) for p in WORDING_TRAIN_PROMPTS)
    with pytest.raises(ConfigError, match="n must be between 0 and"):
        prompt_wordings(10_000, seed=0)
