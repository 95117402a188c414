"""Can a classifier read the age band from the phantom? Held-out balanced accuracy by age_signs.

The two-attribute demo needs age classifiers that read the age band (<40, 40-59, 60+) from the
image; otherwise its corrected (PACC) age shares are censored before and after remediation. For
each ``AnatomyModel.age_signs`` value this builds the two-attribute demo's target set
(:attr:`DemoConfig.target_set_attributes`, with that value) and trains the demo's evaluator
configuration on its evaluator splits (``eval_train``/``eval_val``, tested on the held-out
``test`` subjects): for ``age_band`` with two seeds (training is noisy, by a few points) and for
``sex`` with one (the sex signal must keep its calibration). Writes ``benchmarks/age_signal.json``
and the table between the ``age-signal-table`` markers of ``benchmarks/RESULTS.md``.

Run: .venv/bin/python benchmarks/bench_age_signal.py [--signs 0,1,5] [--work DIR] [--render]
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


def measure(signs: list[float], work: Path) -> list[dict]:
    cfg = DemoConfig(out=work)
    rows = []
    for s in signs:
        anatomy = dataclasses.replace(cfg.age_anatomy, age_signs=s)
        phantom = dataclasses.replace(cfg.target_set_attributes, anatomy=anatomy)
        data = work / f"signs-{s:g}"
        start = time.perf_counter()
        build_phantom(data, phantom, overwrite=True)
        built = time.perf_counter() - start
        for attribute, offset in RUNS:
            clf = dataclasses.replace(cfg.evaluator, seed=cfg.evaluator.seed + offset)
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


def table(doc: dict) -> str:
    lines = [
        f"Two-attribute target set ({doc['n_images']} images, demo anatomy with the given "
        "`age_signs`); the demo's evaluator configuration trained on `eval_train`/`eval_val`, "
        "balanced accuracy on the held-out `test` subjects (chance: 0.33 for three age bands, "
        "0.50 for sex).",
        "",
        "| age_signs | age band (seed) | age band (seed) | sex |",
        "|---:|---:|---:|---:|",
    ]
    for s in sorted({r["age_signs"] for r in doc["rows"]}):
        rows = [r for r in doc["rows"] if r["age_signs"] == s]
        age = [f"{r['balanced_accuracy']:.3f} ({r['seed']})" for r in rows
               if r["attribute"] == "age_band"]  # fmt: skip
        sex = [f"{r['balanced_accuracy']:.3f}" for r in rows if r["attribute"] == "sex"]
        lines.append(f"| {s:g} | {' | '.join(age)} | {', '.join(sex)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signs", default="0,1,5")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    out = HERE / "age_signal.json"
    if args.render:
        doc = json.loads(out.read_text())
    else:
        torch.set_num_threads(2)
        signs = [float(s) for s in args.signs.split(",") if s]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            rows = measure(signs, work)
        n = DemoConfig().target_set_attributes.n
        doc = {"n_images": n, "rows": rows, "seconds": time.perf_counter() - start,
               "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        out.write_text(json.dumps(doc, indent=2) + "\n")
    splice(HERE / "RESULTS.md", "age-signal-table", table(doc))
    print(table(doc))


if __name__ == "__main__":
    main()
