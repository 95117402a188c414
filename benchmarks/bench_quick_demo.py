"""How long ``medfair demo --quick`` takes from scratch, and what its before/after report shows.

Runs the quick demo (:data:`medfair_audit.demo.QUICK`) into an empty folder, as a new user's
first run would, and records each stage's wall time from its ``demo.json`` and the male share
(PACC-corrected, with its 95% interval, or the bound when it is censored) of the biased and the
remediated model, read on the held-out prompts by the independent evaluator (the headline), by
the training classifier remediation was tuned against, and by the architecture-disjoint
radiomics reader. Writes ``benchmarks/quick_demo.json``, the table between the
``quick-demo-table`` markers of ``benchmarks/RESULTS.md`` and the summary between the
``quick-demo-summary`` markers of the README. Run it alone on the machine: two CPU jobs at once
slow each other several-fold.

Run: .venv/bin/python benchmarks/bench_quick_demo.py [--out reports/demo-quick] [--render]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from _markers import splice

from medfair_audit.audit.result import AuditResult, format_estimate
from medfair_audit.demo import DemoConfig, run_demo, stage_names

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Who reads the quick demo's audit images: the audit's own classifier, then its readers.
READ_BY = {"evaluator": None, "training classifier": "classifier", "radiomics reader": "reader"}


def reading(audit: AuditResult, reader: str | None) -> dict:
    """The male share of ``audit`` as read by ``reader`` (``None``: the audit's own)."""
    if reader is None:
        return audit.share("male").to_json()
    (row,) = [r for r in audit.readers.readers if r.name == reader]
    return row.proportions["male"].to_json()


def measure(out: Path) -> dict:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: the benchmark times a run from scratch")
    start = time.perf_counter()
    result = run_demo(DemoConfig(out=out, quick=True), log=print)
    wall = time.perf_counter() - start
    assert not any(st["reused"] for st in result.stages.values())
    rows = {}
    for side in ("before", "after"):
        audit = AuditResult.load(out / side)
        rows[side] = {name: reading(audit, r) for name, r in READ_BY.items()}
    stages = {n: round(result.stages[n]["seconds"], 1) for n in stage_names(result.stages)}
    target = json.loads((out / "target.json").read_text())["proportions"]["male"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "wall_seconds": round(wall, 1),
        "stages": stages,
        "target_male": target,
        "male": rows,
    }


def _share(cell: dict) -> str:
    return format_estimate(cell, ".1%")


def table(doc: dict) -> str:
    lines = [
        f"`medfair demo --quick` from an empty folder on {doc['cpus']} CPU cores "
        f"({doc['threads']} torch threads), {doc['date']}: **{doc['wall_seconds'] / 60:.1f} "
        "minutes** in all. Male share (PACC-corrected, 95% interval; a censored share as its "
        "bound) of the images drawn for the held-out prompts, before and after remediation; "
        f"target {100 * doc['target_male']:.0f}%.",
    ]
    lines += ["", "| read by | before | after |", "|---|---|---|"]
    for name in READ_BY:
        b, a = doc["male"]["before"][name], doc["male"]["after"][name]
        lines.append(f"| {name} | {_share(b)} | {_share(a)} |")
    lines += ["", "| stage | wall time |", "|---|---:|"]
    lines += [f"| {n} | {s:.0f} s |" for n, s in doc["stages"].items()]
    return "\n".join(lines)


def summary(doc: dict) -> str:
    ev = doc["male"]
    return (
        f"`medfair demo --quick` took **{doc['wall_seconds'] / 60:.1f} minutes** from scratch on "
        f"{doc['cpus']} CPU cores ({doc['date']}, `benchmarks/bench_quick_demo.py`). The "
        f"independent evaluator read the biased model's images as "
        f"{_share(ev['before']['evaluator'])} male and the remediated model's as "
        f"{_share(ev['after']['evaluator'])} (target {100 * doc['target_male']:.0f}%); the "
        f"classifier it was tuned against read {_share(ev['after']['training classifier'])} "
        "after. All readings and stage times: "
        "[RESULTS.md](benchmarks/RESULTS.md#quick-demo)."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "demo-quick")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first")
    parser.add_argument("--render", action="store_true", help="re-render the committed JSON")
    args = parser.parse_args()
    record = HERE / "quick_demo.json"
    if args.render:
        doc = json.loads(record.read_text())
    else:
        if args.fresh and args.out.exists():
            shutil.rmtree(args.out)
        doc = measure(args.out.resolve())
        record.write_text(json.dumps(doc, indent=2) + "\n")
    splice(HERE / "RESULTS.md", "quick-demo-table", table(doc))
    splice(ROOT / "README.md", "quick-demo-summary", summary(doc))
    print(table(doc))


if __name__ == "__main__":
    main()
