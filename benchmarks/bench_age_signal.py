"""Can a classifier read the age band from the phantom? Held-out balanced accuracy by age_signs.

The two-attribute demo needs age classifiers that read the age band (<40, 40-59, 60+) from the
image; otherwise its corrected (PACC) age shares are censored before and after remediation. For
each ``AnatomyModel.age_signs`` value this builds the two-attribute demo's target set
(:attr:`DemoConfig.target_set_attributes`, with that value) and trains the demo's evaluators
on its evaluator splits (``eval_train``/``eval_val``, tested on the held-out ``test``
subjects): :attr:`DemoConfig.age_evaluator` for ``age_band`` with two seeds (training is noisy,
by a few points) and :attr:`DemoConfig.evaluator` for ``sex`` with one (the sex signal must keep
its calibration). ``--training`` instead measures :data:`TRAINING_GRID` at ``age_signs`` 5:
the target set's size and the age-band classifier's patience. Writes
``benchmarks/age_signal.json`` and the tables between the ``age-signal-table`` and
``age-training-table`` markers of ``benchmarks/RESULTS.md``.

Run: .venv/bin/python benchmarks/bench_age_signal.py [--signs 0,1,5 | --training] [--work DIR]
[--render]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
from _markers import splice

from medfair_audit.config import ClassifierJob
from medfair_audit.data import build_phantom
from medfair_audit.demo import DemoConfig
from medfair_audit.models.classifier import train_classifier

HERE = Path(__file__).resolve().parent
EVAL_SPLITS = ("eval_train", "eval_val", "test")
#: (attribute, evaluator seed offset) trained per age_signs value.
RUNS = (("age_band", 0), ("age_band", 1), ("sex", 0))


def measure(
    signs: list[float], work: Path, *, n: int | None = None, patience: int | None = None
) -> list[dict]:
    """Train :data:`RUNS` per ``age_signs`` value; ``n`` images and ``patience`` epochs
    (default: the demo's) for the age-band classifiers."""
    cfg = DemoConfig(out=work)
    rows = []
    for s in signs:
        anatomy = dataclasses.replace(cfg.age_anatomy, age_signs=s)
        phantom = dataclasses.replace(cfg.target_set_attributes, anatomy=anatomy)
        if n is not None:
            phantom = dataclasses.replace(phantom, n=n)
        data = work / f"signs-{s:g}-n{phantom.n}"
        start = time.perf_counter()
        build_phantom(data, phantom, overwrite=True)
        built = time.perf_counter() - start
        for attribute, offset in RUNS:
            base = cfg.age_evaluator if attribute == "age_band" else cfg.evaluator
            if patience is not None and attribute == "age_band":
                epochs = max(base.epochs, 8 * patience)
                base = dataclasses.replace(base, patience=patience, epochs=epochs)
            clf = dataclasses.replace(base, seed=base.seed + offset)
            start = time.perf_counter()
            job = ClassifierJob(
                data=data, out=data / f"clf-{attribute}-{clf.seed}", config=clf,
                attribute=attribute, groups=None, splits=EVAL_SPLITS, overwrite=True,
            )  # fmt: skip
            r = train_classifier(job)
            ev = r.evaluation
            rows.append(
                {
                    "age_signs": s,
                    "n_images": phantom.n,
                    "patience": clf.patience,
                    "epochs": clf.epochs,
                    "best_epoch": ev.get("best_epoch"),
                    "attribute": attribute,
                    "seed": clf.seed,
                    "balanced_accuracy": ev["balanced_accuracy"],
                    "n_test": ev["n"],
                    "confusion_matrix": ev["confusion_matrix"],
                    "groups": ev["groups"],
                    "phantom_seconds": built,
                    "train_seconds": time.perf_counter() - start,
                }
            )
            print(f"signs {s:g}, {attribute}, seed {clf.seed}: {ev['balanced_accuracy']:.3f}")
    return rows


def _age_cells(rows: list[dict]) -> str:
    return " | ".join(
        f"{r['balanced_accuracy']:.3f} ({r['seed']})" for r in rows if r["attribute"] == "age_band"
    )


def table(doc: dict) -> str:
    lines = [
        "Two-attribute target set (demo anatomy with the given `age_signs`); the evaluator's "
        "network trained on `eval_train`/`eval_val`, balanced accuracy on the held-out `test` "
        "subjects (chance: 0.33 for three age bands, 0.50 for sex), by evaluator seed.",
        "",
        "| age_signs | images | patience | age band (seed) | age band (seed) | sex |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted({r["age_signs"] for r in doc["rows"]}):
        rows = [r for r in doc["rows"] if r["age_signs"] == s]
        sex = [f"{r['balanced_accuracy']:.3f}" for r in rows if r["attribute"] == "sex"]
        lines.append(
            f"| {s:g} | {rows[0]['n_images']} | {rows[0]['patience']} | {_age_cells(rows)} | "
            f"{', '.join(sex)} |"
        )
    return "\n".join(lines)


def training_table(doc: dict) -> str:
    """The levers on the age-band classifier at one ``age_signs``: more images, more patience."""
    lines = [
        "The same at `age_signs` 5, with more images in the target set and more epochs of "
        "patience for the age-band classifier (at most max(25, 8 × patience) epochs; the sex "
        "classifier keeps the sex evaluator's), "
        f"{doc['training_date']}:",
        "",
        "| images | patience | age band (seed): balanced acc., best epoch | age band (seed) "
        "| sex |",
        "|---:|---:|---:|---:|---:|",
    ]
    keys = sorted(
        {(r["n_images"], r["patience"]) for r in doc["training"] if r["attribute"] != "sex"}
    )
    for n, patience in keys:
        rows = [r for r in doc["training"] if r["n_images"] == n]
        age = [r for r in rows if r["attribute"] == "age_band" and r["patience"] == patience]
        sex = [f"{r['balanced_accuracy']:.3f}" for r in rows if r["attribute"] == "sex"]
        cells = " | ".join(
            f"{r['balanced_accuracy']:.3f} ({r['seed']}), epoch {r['best_epoch']}" for r in age
        )
        lines.append(f"| {n} | {patience} | {cells} | {', '.join(sorted(set(sex)))} |")
    return "\n".join(lines)


#: The levers ``--training`` measures at ``age_signs`` 5: (images, age-band patience).
TRAINING_GRID = ((3000, 10), (6000, 5), (6000, 10))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signs", default="0,1,5")
    parser.add_argument(
        "--training", action="store_true", help="measure TRAINING_GRID at age_signs 5 instead"
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    out = HERE / "age_signal.json"
    doc = json.loads(out.read_text()) if out.is_file() else {}
    if not args.render:
        torch.set_num_threads(2)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            if args.training:
                rows = []
                for n, patience in TRAINING_GRID:
                    rows += measure([5.0], work, n=n, patience=patience)
                doc.update(training=rows, training_date=time.strftime("%Y-%m-%d"))
            else:
                signs = [float(s) for s in args.signs.split(",") if s]
                doc.update(rows=measure(signs, work), date=time.strftime("%Y-%m-%d"))
        doc["seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(doc, indent=2) + "\n")
    splice(HERE / "RESULTS.md", "age-signal-table", table(doc))
    if "training" in doc:
        splice(HERE / "RESULTS.md", "age-training-table", training_table(doc))
        print(training_table(doc))
    print(table(doc))


if __name__ == "__main__":
    main()
