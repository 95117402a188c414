"""The 3-D sex classifier on held-out phantom subjects: balanced accuracy, calibration, time.

Builds a volume phantom (``medfair data phantom --volumes``: ``--n`` subjects at ``--size``
voxels, a quarter of them held out for the test split) and trains
:meth:`ClassifierConfig.volumes` (MONAI's 3-D ResNet at 32³) on its T1 volumes with several
seeds. Writes ``benchmarks/volumes.json`` and the table between the ``volumes-table`` markers of
``README.md``.

Run: .venv/bin/python benchmarks/bench_volumes.py [--n 600] [--size 48] [--seeds 0,1,2]
[--work DIR] [--render]

``--demo OUT`` instead records a finished ``medfair demo --volumes --out OUT`` (its
``OUT/volumes/demo.json``: each stage's wall time, the classifier's held-out balanced accuracy,
the conditioning fidelity and the marginal share) into ``volumes.json`` and renders it between
the ``volume-demo-table`` markers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _markers import splice

from medfair_audit.audit.result import format_estimate
from medfair_audit.config import ClassifierConfig, ClassifierJob, PhantomConfig
from medfair_audit.data import build_phantom_volumes
from medfair_audit.models.classifier import train_classifier

HERE = Path(__file__).resolve().parent
SPLITS = "train=0.6,val=0.15,test=0.25"


def measure(n: int, size: int, seeds: list[int], work: Path) -> dict:
    """Build the phantom once, train one classifier per seed."""
    data = work / f"volumes-n{n}-s{size}"
    start = time.perf_counter()
    phantom = PhantomConfig(n=n, size=size, seed=0, splits=SPLITS)
    built = build_phantom_volumes(data, phantom, overwrite=True)
    phantom_s = time.perf_counter() - start
    runs = []
    for seed in seeds:
        cfg = ClassifierConfig.volumes(seed=seed)
        result = train_classifier(
            ClassifierJob(data=data, out=work / f"clf-{seed}", config=cfg, sequence="t1",
                          overwrite=True)
        )  # fmt: skip
        ev = result.evaluation
        runs.append(
            {
                "seed": seed,
                "balanced_accuracy": ev["balanced_accuracy"],
                "roc_auc": ev["roc_auc"],
                "ece": ev["ece"],
                "n_test": ev["n"],
                "best_epoch": ev["best_epoch"],
                "seconds": round(result.seconds, 1),
            }
        )
        print(runs[-1], flush=True)
    return {
        "phantom": {
            "n": n,
            "size": size,
            "splits": SPLITS,
            "seconds": round(phantom_s, 1),
            "counts": built.counts,
        },
        "classifier": vars(ClassifierConfig.volumes()),
        "sequence": "t1",
        "runs": runs,
        "threads": torch.get_num_threads(),
    }


def render(doc: dict) -> str:
    """The README's table of :func:`measure`'s runs."""
    p, c = doc["phantom"], doc["classifier"]
    lines = [
        f"{p['n']} phantom subjects at {p['size']}³ ({p['splits']}; built in "
        f"{p['seconds']:.0f} s); `ClassifierConfig.volumes()`: MONAI ResNet widths "
        f"{','.join(map(str, c['widths']))} at {c['image_size']}³ on the T1 volumes; "
        f"{doc['threads']} threads. Training times are wall clock: a run that shared the cores "
        "with other work took longer.",
        "",
        "| seed | test subjects | balanced accuracy | ROC AUC | ECE | best epoch | training |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        lines.append(
            f"| {r['seed']} | {r['n_test']} | {r['balanced_accuracy']:.3f} | {r['roc_auc']:.3f} "
            f"| {r['ece']:.3f} | {r['best_epoch']} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def record_demo(out: Path) -> dict:
    """What ``OUT/volumes/demo.json`` says about a 3-D demo run, with the file's date."""
    path = out / "volumes" / "demo.json"
    doc = json.loads(path.read_text())
    stages = doc["stages"]
    audit = stages["audit3d"]
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime)),
        "seconds": {name: round(st["seconds"], 1) for name, st in stages.items()},
        "reused": sorted(name for name, st in stages.items() if st.get("reused")),
        "balanced_accuracy": stages["classifier3d"]["balanced_accuracy"],
        "n_test": stages["classifier3d"].get("n_test"),
        "fidelity": audit["fidelity"],
        "marginal_male": audit["marginal_male"],
        "generation": doc["config"]["generation"],
        "threads": torch.get_num_threads(),
    }


def _share(e: dict) -> str:
    return format_estimate(e, ".1%")


def render_demo(d: dict) -> str:
    """The README's lines for a recorded 3-D demo run."""
    order = ("volumes", "classifier3d", "ldm", "audit3d")
    total = sum(d["seconds"].values())
    g = d["generation"]
    lines = [
        f"`medfair demo --volumes` on {d['date']} ({d['threads']} threads"
        + (f"; reused: {', '.join(d['reused'])}" if d["reused"] else "")
        + f"): {total / 60:.1f} minutes in all. {g['n_per_prompt']} volumes per request, "
        f"{g['steps']} DDIM steps; the 3-D classifier's held-out balanced accuracy "
        f"{d['balanced_accuracy']:.3f} (n = {d['n_test']}).",
        "",
        "| stage | wall time |",
        "|---|---:|",
        *(f"| {n} | {d['seconds'][n]:.0f} s |" for n in order if n in d["seconds"]),
        "",
        "| asked for | shown (corrected, PACC) |",
        "|---|---|",
        *(f"| {grp} | {_share(e)} |" for grp, e in d["fidelity"].items()),
        "",
        f"Marginal male share of the output under equal requests: {_share(d['marginal_male'])}.",
    ]
    chance = 1 / len(d["fidelity"])
    weak = [g for g, e in d["fidelity"].items() if e.get("ci") and e["ci"][0] <= chance]
    if weak:
        lines.append(
            f"The fidelity interval of {' and of '.join(repr(g) for g in weak)} reaches "
            f"{chance:.0%}, what a model that ignored the request would show: at this size and "
            "training time the model's conditioning is weak, and the audit says so with an "
            "interval rather than a point."
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--render", action="store_true", help="only re-render the JSON")
    ap.add_argument("--demo", type=Path, default=None, help="record OUT/volumes/demo.json")
    args = ap.parse_args()
    out = HERE / "volumes.json"
    if args.demo is not None:
        doc = json.loads(out.read_text())
        doc["demo"] = record_demo(args.demo)
        out.write_text(json.dumps(doc, indent=1) + "\n")
    if args.demo is not None or args.render:
        doc = json.loads(out.read_text())
        if "demo" in doc:
            text = render_demo(doc["demo"])
            print(text)
            splice(HERE.parent / "README.md", "volume-demo-table", text)
        if args.demo is not None:
            return
    if not args.render:
        seeds = [int(s) for s in args.seeds.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            doc = measure(args.n, args.size, seeds, args.work or Path(tmp))
        out.write_text(json.dumps(doc, indent=1) + "\n")
    doc = json.loads(out.read_text())
    text = render(doc)
    print(text)
    splice(HERE.parent / "README.md", "volumes-table", text)


if __name__ == "__main__":
    main()
