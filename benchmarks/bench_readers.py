"""How far apart do classifiers of one attribute read the same generated images?

Beside the demo's classifiers, a panel of sex classifiers is trained on the demo's target set
(reused when present, under ``DEMO/readers/models/``):

* ``classifier-seed``: the training classifier's network and subjects, another seed;
* ``fold0``, ``fold1``, ``fold2``: the training classifier's network, each on a third of its
  training subjects (the same validation and test subjects): guides on disjoint subject splits;
* ``radiomics-guide``: the radiomics reader's model family on the training classifier's
  subjects (the demo's ``reader`` learns on a phantom set of its own);
* ``evaluator-seed``: the evaluator's subjects, another seed and width.

Each given audit's stored images (``bench_transfer.py``'s held-out audits: ``transfer/audit-
biased`` for the biased model, ``transfer/<variant>-s<seed>/audit`` for a remediated one) are
read again by the evaluator, the demo's readers and the panel (``AuditConfig.images_from``; the
audit's readers section gives each one's PACC share). Per audit: every reading, the mean of the
fold guides minus the evaluator (what aligning against the fold ensemble would leave of the
transfer gap, were the tuning to bring the folds' mean to the target), and the spread of the
readings: how far the bar "the evaluator's interval holds the target" depends on which
classifier is the evaluator. Writes ``benchmarks/readers.json`` and the table between the
``readers-table`` markers of ``benchmarks/RESULTS.md``.

Run: .venv/bin/python benchmarks/bench_readers.py
        --run reports/demo=transfer/audit-biased,transfer/single-s0/audit
        --run reports/demo-seed1=transfer/audit-biased,transfer/single-s1/audit
     .venv/bin/python benchmarks/bench_readers.py --render   (the table again from readers.json)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _markers import paste
from bench_transfer import _male_shares

from medfair_audit import AuditConfig, run_audit
from medfair_audit.audit.result import AuditResult
from medfair_audit.config import ClassifierConfig, ClassifierJob
from medfair_audit.demo import DemoConfig
from medfair_audit.metrics.results_json import estimate_from_json
from medfair_audit.models.classifier import train_classifier
from medfair_audit.target import Target

HERE = Path(__file__).resolve().parent
#: Subject folds of the training classifier's ``train`` split.
FOLDS = 3
#: Splits (train, val, test) by whose subjects a panel member learns.
GUIDE, EVALUATOR = ("train", "val", "test"), ("eval_train", "eval_val", "test")
#: The demo's classifiers that read beside the evaluator (every draw of the demo has them).
DEMO_READERS = ("classifier", "classifier-b", "reader")


def panel(cfg: DemoConfig) -> dict[str, tuple[ClassifierConfig, tuple[str, str, str]]]:
    """Panel member → its settings and splits (seeds apart from every demo classifier's)."""
    out = {"classifier-seed": (dataclasses.replace(cfg.classifier, seed=cfg.seed + 50), GUIDE)}
    out |= {
        f"fold{k}": (
            dataclasses.replace(cfg.classifier, seed=cfg.seed + 30 + k),
            (f"train_f{k}", "val", "test"),
        )
        for k in range(FOLDS)
    }
    out["radiomics-guide"] = (ClassifierConfig(architecture="radiomics", seed=cfg.seed + 60), GUIDE)
    out["evaluator-seed"] = (
        dataclasses.replace(cfg.evaluator, widths=(16, 32, 64, 128), seed=cfg.seed + 40),
        EVALUATOR,
    )
    return out


def folded(demo: Path, work: Path) -> Path:
    """The demo's target set with its ``train`` subjects in ``FOLDS`` folds (``train_fK``)."""
    src = demo / "data" / "target_set"
    out = work / "target_set"
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to((src / "images").resolve())
    meta = pd.read_csv(src / "metadata.csv")
    subjects = np.array(sorted(meta.loc[meta.split == "train", "subject"].astype(str).unique()))
    order = subjects[np.random.default_rng(0).permutation(len(subjects))]
    fold = {s: i % FOLDS for i, s in enumerate(order)}
    meta["split"] = [
        f"train_f{fold[str(s)]}" if split == "train" else split
        for s, split in zip(meta.subject, meta.split, strict=True)
    ]
    meta.to_csv(out / "metadata.csv", index=False)
    return out


def train_panel(demo: Path, cfg: DemoConfig) -> dict[str, dict]:
    """Train the panel where missing; each member's folder (in ``demo``) and held-out balanced
    accuracy."""
    work = demo / "readers"
    data = folded(demo, work)
    out = {}
    for name, (ccfg, splits) in panel(cfg).items():
        folder = work / "models" / name
        if not (folder / "evaluation.json").is_file():
            train_classifier(
                ClassifierJob(
                    data=data, out=folder, config=ccfg, attribute="sex",
                    groups=("female", "male"), splits=splits, overwrite=True,
                    allow_outside_root=True,
                )
            )  # fmt: skip
        ev = json.loads((folder / "evaluation.json").read_text())
        out[name] = {
            "path": str(folder.relative_to(demo)),
            "balanced_accuracy": ev["balanced_accuracy"],
        }
    return out


def read(demo: Path, cfg: DemoConfig, audit: Path, members: dict[str, dict]) -> AuditResult:
    """``audit``'s stored images read by the evaluator, the demo's readers and the panel."""
    made = AuditResult.load(audit).settings
    model = audit.parent / "model"
    checkpoint = model if model.is_dir() else demo / "models" / "t2medi"
    out = demo / "readers" / "reads" / str(audit.relative_to(demo)).replace("/", "--")
    names = [*DEMO_READERS, *members]
    if (out / "audit.json").is_file():
        done = AuditResult.load(out)
        if [r.name for r in done.readers.readers] == names:
            return done
    generation = dataclasses.replace(
        cfg.audit_generation,
        n_per_prompt=made.n_per_prompt,
        steps=made.steps,
        seed=made.seed,
    )
    run_audit(
        AuditConfig(
            checkpoint=checkpoint,
            classifier=demo / "models" / "evaluator",
            readers=[demo / "models" / r for r in DEMO_READERS]
            + [demo / m["path"] for m in members.values()],
            prompts=made.prompts,
            target=Target.load(demo / "target.json"),
            out=out,
            generation=generation,
            images_from=audit,
            overwrite=True,
        )
    )
    return AuditResult.load(out)


def row_of(draw: int, audit: str, result: AuditResult) -> dict:
    """Every reader's PACC male share of one audit's images."""
    shares = _male_shares(result)
    return {
        "draw": draw,
        "audit": audit,
        "male": {k: e.to_json() for k, e in shares.items()},
        "architecture": {"evaluator": "resnet"}
        | {r.name: r.architecture for r in result.readers.readers},
        "target_male": result.target["male"],
    }


def _value(row: dict, name: str) -> float | None:
    e = estimate_from_json(row["male"].get(name))
    return None if e is None else e.value


def stats(row: dict) -> dict:
    """Fold mean minus evaluator, the guide minus evaluator, and the spreads of the readings."""
    ev = _value(row, "evaluator")
    folds = [_value(row, f"fold{k}") for k in range(FOLDS)]
    values = {k: _value(row, k) for k in row["male"]}
    resnets = [v for k, v in values.items() if row["architecture"][k] == "resnet" and v is not None]
    every = [v for v in values.values() if v is not None]
    return {
        "fold_mean_minus_evaluator": None if None in folds else float(np.mean(folds)) - ev,
        "guide_minus_evaluator": values["classifier"] - ev,
        "resnet_range": [min(resnets), max(resnets)],
        "resnet_sd": float(np.std(resnets, ddof=1)),
        "range": [min(every), max(every)],
    }


COLUMNS = ("evaluator", "evaluator-seed", "classifier", "classifier-seed", "classifier-b",
           "fold0", "fold1", "fold2", "radiomics-guide", "reader")  # fmt: skip


def _pp(x: float) -> str:
    return f"{x * 100:+.1f} pp".replace("-", "−")


def render(doc: dict) -> str:
    """The RESULTS table of ``readers.json``."""
    lines = [
        "PACC male share of one audit's images (held-out prompts, 64 images each) by every "
        "reader; target 58%. ResNets: the evaluator and the classifiers without a family in "
        "their name; `radiomics-guide` and `reader` are the radiomics family. Panel balanced "
        "accuracy on the held-out test subjects: "
        + "; ".join(
            f"models of seed {d}: "
            + ", ".join(f"{k} {v['balanced_accuracy']:.3f}" for k, v in members.items())
            for d, members in doc["panel"].items()
        )
        + ".",
        "",
        "| models | audit | " + " | ".join(COLUMNS) + " | folds' mean − evaluator | "
        "classifier − evaluator | ResNets: range (sd) | all: range |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 4),
    ]
    for row in doc["rows"]:
        s = stats(row)
        cells = [f"{v:.3f}" if (v := _value(row, c)) is not None else "–" for c in COLUMNS]
        lo, hi = s["resnet_range"]
        alo, ahi = s["range"]
        lines.append(
            f"| seed {row['draw']} | `{row['audit']}` | " + " | ".join(cells)
            + f" | {_pp(s['fold_mean_minus_evaluator'])} | {_pp(s['guide_minus_evaluator'])}"
            + f" | {lo:.3f}–{hi:.3f} ({s['resnet_sd'] * 100:.1f} pp) | {alo:.3f}–{ahi:.3f} |"
        )  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="DEMO=AUDIT[,AUDIT]",
        help="a demo folder and its audits (folders relative to it) to read again",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render", action="store_true", help="only the table, from readers.json")
    args = ap.parse_args()
    record = HERE / "readers.json"
    if not args.render:
        torch.set_num_threads(args.threads)
        doc: dict = {"panel": {}, "rows": []}
        for spec in args.run:
            folder, _, audits = spec.partition("=")
            demo = Path(folder)
            seed = json.loads((demo / "demo.json").read_text())["config"]["seed"]
            cfg = DemoConfig(out=demo, seed=seed)
            members = train_panel(demo, cfg)
            doc["panel"][str(seed)] = members
            for name in audits.split(","):
                doc["rows"].append(row_of(seed, name, read(demo, cfg, demo / name, members)))
                print(f"models of seed {seed}, {name}: read", flush=True)
        record.write_text(json.dumps(doc, indent=1) + "\n")
    paste(HERE / "RESULTS.md", "readers-table", render(json.loads(record.read_text())))


if __name__ == "__main__":
    main()
