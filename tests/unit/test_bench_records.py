"""The reader-panel, generator, demo-models and wordings benchmarks: the fold split the panel's
guides learn on, the wordings the record audited, and the README and RESULTS tables as their
committed records rendered."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def _between(path: Path, marker: str) -> str:
    start, end = f"<!-- {marker}:start -->\n", f"\n<!-- {marker}:end -->"
    return path.read_text().split(start, 1)[1].split(end, 1)[0]


def test_fold_guides_learn_on_disjoint_thirds_of_the_training_subjects(tmp_path):
    bench = _bench("bench_readers")
    demo = tmp_path / "demo"
    src = demo / "data" / "target_set"
    (src / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    splits = rng.choice(["train", "val", "eval_train", "test"], size=200, p=[0.5, 0.1, 0.3, 0.1])
    # two slices per subject: a fold holds whole subjects
    meta = pd.DataFrame(
        {
            "file": [f"images/{i}.png" for i in range(400)],
            "subject": [f"s{i // 2:03d}" for i in range(400)],
            "split": np.repeat(splits, 2),
        }
    )
    meta.to_csv(src / "metadata.csv", index=False)
    out = pd.read_csv(bench.folded(demo, tmp_path / "work") / "metadata.csv")
    train = meta.split == "train"
    # every other split is untouched; every training subject lands in exactly one fold
    assert (out.split[~train] == meta.split[~train]).all()
    folds = out[train].groupby("subject")["split"].unique()
    assert all(len(f) == 1 for f in folds)
    sizes = folds.map(lambda f: f[0]).value_counts()
    assert set(sizes.index) == {f"train_f{k}" for k in range(bench.FOLDS)}
    assert sizes.max() - sizes.min() <= 1
    # the same folds on another call (every panel member of a draw sees one split)
    again = pd.read_csv(bench.folded(demo, tmp_path / "work2") / "metadata.csv")
    assert again.split.equals(out.split)


@pytest.mark.parametrize(
    ("name", "record", "marker", "doc"),
    [
        ("bench_readers", "readers.json", "readers-table", BENCH / "RESULTS.md"),
        ("bench_generator", "generator.json", "generator-table", BENCH / "RESULTS.md"),
        ("bench_models", "models.json", "models-table", BENCH / "RESULTS.md"),
        ("bench_models", "models.json", "models-table", ROOT / "README.md"),
        ("bench_wordings", "wordings.json", "wordings-table", BENCH / "RESULTS.md"),
    ],
)
def test_tables_are_the_records_rendered(name, record, marker, doc):
    bench = _bench(name)
    assert _between(doc, marker) == bench.render(json.loads((BENCH / record).read_text()))


def test_reader_panel_statistics_follow_from_the_readings():
    bench = _bench("bench_readers")
    doc = json.loads((BENCH / "readers.json").read_text())
    for row in doc["rows"]:
        stats = bench.stats(row)
        values = {k: v["value"] for k, v in row["male"].items()}
        folds = [values[f"fold{k}"] for k in range(bench.FOLDS)]
        assert stats["fold_mean_minus_evaluator"] == pytest.approx(
            np.mean(folds) - values["evaluator"]
        )
        lo, hi = stats["range"]
        assert lo == min(values.values()) and hi == max(values.values())
        assert stats["resnet_range"][0] >= lo and stats["resnet_range"][1] <= hi


def test_the_wordings_record_audits_todays_wordings_none_a_tuning_or_audit_prompt():
    from medfair_audit.demo import (
        HELD_OUT_PROMPTS,
        SELECTION_PROMPTS,
        TRAIN_PROMPTS,
        WORDING_SELECTION_PROMPTS,
        WORDING_TRAIN_PROMPTS,
    )

    bench = _bench("bench_wordings")
    doc = json.loads((BENCH / "wordings.json").read_text())
    assert doc["wordings"] == list(bench.AUDIT_WORDINGS) and len(set(doc["wordings"])) == 16
    used = {*HELD_OUT_PROMPTS, *SELECTION_PROMPTS, *TRAIN_PROMPTS, *WORDING_TRAIN_PROMPTS}
    assert not set(doc["wordings"]) & (used | set(WORDING_SELECTION_PROMPTS))
    for row in doc["rows"]:
        for side, k in (("held_out", len(HELD_OUT_PROMPTS)), ("wordings", 16)):
            over = row[side]["over"]
            assert over["prompts"] == k
            lo, hi = over["share"]["ci"]
            assert lo <= (over["share"]["value"] or lo) <= hi


@pytest.mark.parametrize("doc", [BENCH / "RESULTS.md", ROOT / "README.md"])
def test_the_wordings_coverage_table_is_the_calibration_record_rendered(doc):
    bench = _bench("bench_calibration")
    record = json.loads((BENCH / "calibration.json").read_text())
    table = bench.wording_table(record["wordings"], record["wordings_n_boot"])
    assert _between(doc, "wording-table") == "\n".join(table)
    # the interval over the wordings holds its level in every simulated setting
    assert all(row["coverage"] >= 0.93 for row in record["wordings"])


def test_the_transfer_tables_are_the_committed_record_rendered():
    bench = _bench("bench_transfer")
    doc = json.loads((BENCH / "transfer.json").read_text())
    assert _between(BENCH / "RESULTS.md", "transfer-table") == bench.table(doc)
    assert _between(ROOT / "README.md", "transfer-summary") == bench.summary_text(doc)


@pytest.mark.parametrize(
    ("ev", "rd"),
    [((0.60, 0.53, 0.67), (0.55, 0.48, 0.62)), ((0.49, 0.42, 0.56), (0.34, 0.27, 0.41))],
)
def test_reader_room_is_where_both_intervals_would_hold_the_target(ev, rd):
    bench = _bench("bench_transfer")
    row = {"male": {k: {"value": v[0], "ci": [v[1], v[2]]} for k, v in
                    (("evaluator", ev), ("reader", rd))}}  # fmt: skip
    d, allow, lo, hi = bench.reader_room(row, 0.58)
    assert d == pytest.approx(ev[0] - rd[0]) and allow == pytest.approx(0.14)
    # by brute force: shift both readings together (their distance is the images'), keep widths
    grid = np.linspace(0, 1, 100_001)
    ok = (np.abs(grid - 0.58) <= 0.07 + 1e-12) & (np.abs(grid - d - 0.58) <= 0.07 + 1e-12)
    if ok.any():
        assert (lo, hi) == pytest.approx((grid[ok].min(), grid[ok].max()), abs=1e-5)
    else:
        assert lo is None and hi is None and abs(d) > allow


def test_gpu_speedup_rows_and_target_verdicts_are_the_records():
    bench = _bench("bench_audit")
    gpu = json.loads((BENCH / "audit-gpu.json").read_text())
    text = "\n".join(bench._speedup_lines(gpu))
    rows = gpu["speedups"]["rows"]
    ref = rows["batched diffusers loop"]["images_per_s"]
    for label, r in rows.items():
        ratio = r["images_per_s"] / ref
        assert f"| {label} | {r['images_per_s']:.2f} | {ratio:.2f} |" in text
    best = max(r["images_per_s"] for r in rows.values())
    met = best >= bench.TARGET_IMAGES_PER_S
    assert ("meets the 8 images/s" if met else "misses the 8 images/s") in text
    assert ("meets the 1.25×" if best / ref >= bench.TARGET_RATIO else "misses the 1.25×") in text
    naive = next(
        v
        for t in gpu["throughput"]
        if t["placement"]["dtype"] == "float16"
        for k, v in t["images_per_s"].items()
        if k.startswith("naive")
    )
    hit = "meets" if best / naive >= bench.TARGET_NAIVE else "misses"
    assert (
        f"{best / naive:.1f}× the naive loop of the float16 throughput rows ({hit} the 9×" in text
    )
    peak = gpu["remediation"]["rows"]["defaults"]["peak_gib"]
    assert f"peaks at {peak:.1f} GiB ({'within' if peak <= 24 else 'over'} 24 GiB)" in text
    # the same record below the bars reads as misses, not as a pass
    slow = json.loads(json.dumps(gpu))
    for r in slow["speedups"]["rows"].values():
        r["images_per_s"] = 5.0
    slow["speedups"]["rows"]["batched diffusers loop"]["images_per_s"] = 4.5
    slow["remediation"]["rows"]["defaults"]["peak_gib"] = 30.0
    verdict = bench._speedup_lines(slow)[-1]
    assert "misses the 8 images/s" in verdict and "misses the 1.25×" in verdict
    assert "misses the 9×" in verdict
    assert "over 24 GiB" in verdict
    # the break-even: at that many images both loops have taken the same time (to the hundred)
    eager, comp = rows["medfair engine, eager"], rows["medfair engine, --compile --channels-last"]
    n = bench._break_even(rows)
    gap = (comp["warmup_s"] + n / comp["images_per_s"]) - (
        eager["warmup_s"] + n / eager["images_per_s"]
    )
    assert abs(gap) <= 50 * (1 / eager["images_per_s"] - 1 / comp["images_per_s"])
    # RESULTS.md and the README hold what the records render
    results = (BENCH / "RESULTS.md").read_text()
    assert text.strip() in results
    assert _between(ROOT / "README.md", "gpu-speed") == bench.gpu_summary(gpu)
