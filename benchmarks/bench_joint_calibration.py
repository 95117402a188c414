"""Do the joint cells' intervals cover? Simulated two-attribute audits with known joint truth.

One simulated classifier per attribute (``SimulatedCategorical`` of ``metrics.simulate``):
sex (2 levels, separation 1.8: about 10% errors) and age band (3 levels, separation 1.2: about
0.65 balanced accuracy, near the two-attribute demo's age classifier), each with 300 held-out
images per level. Joint truths: the demo's target (58% male, 25/40/35% by band, independent)
and its corpus (85% male, old men dominate); 256 and 1024 images per audit. For each corrected
reading: per-cell coverage (min and mean over the six cells), the simultaneous (Bonferroni)
coverage of all six, and the family-wise rejection rate of Holm's cell tests when the target
equals the truth. Writes ``benchmarks/joint-calibration.json`` and the table between the
``joint-calibration`` markers of ``RESULTS.md``.

    .venv/bin/python benchmarks/bench_joint_calibration.py [--reps 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from medfair_audit.metrics.simulate import SimulatedCategorical, joint_coverage_study

OUT = Path(__file__).with_name("joint-calibration.json")
TRUTHS = {
    "target-like (58% male, independent bands)": [[0.105, 0.168, 0.147], [0.145, 0.232, 0.203]],
    "corpus-like (85% male, old men dominate)": [[0.03, 0.05, 0.07], [0.10, 0.25, 0.50]],
}
CLASSIFIERS = (SimulatedCategorical(k=2, separation=1.8), SimulatedCategorical(k=3, separation=1.2))


def _study(args: tuple[str, int, int, int, int]) -> dict:
    name, n, reps, n_boot, seed = args
    r = joint_coverage_study(
        truth=np.array(TRUTHS[name]),
        n=n,
        reps=reps,
        classifiers=CLASSIFIERS,
        n_boot=n_boot,
        seed=seed,
    )
    return {"scenario": name, **r}


def _merge(parts: list[dict]) -> dict:
    total = sum(p["reps"] for p in parts)
    out = json.loads(json.dumps(parts[0]))
    out["reps"] = total

    def avg(get):
        return np.sum([np.asarray(get(p)) * p["reps"] for p in parts], axis=0) / total

    for r in out["shares"]:
        for key in ("coverage_per_cell", "mean_width_per_cell", "simultaneous_coverage"):
            out["shares"][r][key] = avg(lambda p, a=r, k=key: p["shares"][a][k]).tolist()
    out["holm_familywise_rejection"] = float(avg(lambda p: p["holm_familywise_rejection"]))
    return out


def table(results: list[dict]) -> list[str]:
    """Markdown rows: scenario, n, reading, per-cell coverage (min/mean), simultaneous, FWER."""
    r0 = results[0]
    lines = [
        f"{r0['reps']} simulated audits per row, {r0['n_boot']} bootstrap draws, "
        f"{r0['per_group']} held-out images per level; nominal 95% per cell and simultaneous.",
        "",
        "| joint truth | n | reading | cell coverage min / mean | all six cells at once | "
        "mean width | Holm family-wise rejection (true null) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for reading in ("acc", "pacc", "em"):
            s = r["shares"][reading]
            cov = s["coverage_per_cell"]
            lines.append(
                f"| {r['scenario']} | {r['n']} | {reading.upper()} | {min(cov):.3f} / "
                f"{np.mean(cov):.3f} | {s['simultaneous_coverage']:.3f} | "
                f"{np.mean(s['mean_width_per_cell']):.3f} | "
                + (f"{r['holm_familywise_rejection']:.3f} |" if reading == "pacc" else "– |")
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    start = time.perf_counter()
    scenarios = [(name, n) for name in TRUTHS for n in (256, 1024)]
    split = [
        args.reps // args.workers + (i < args.reps % args.workers) for i in range(args.workers)
    ]
    jobs = [
        (name, n, reps, args.n_boot, 1000 * i + j)
        for i, (name, n) in enumerate(scenarios)
        for j, reps in enumerate(split)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        chunks = list(pool.map(_study, jobs))
    per = len(split)
    results = [_merge(chunks[i * per : (i + 1) * per]) for i in range(len(scenarios))]
    doc = {"seconds": time.perf_counter() - start, "results": results}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    lines = table(results)
    print("\n".join(lines))
    path = Path(__file__).with_name("RESULTS.md")
    text = path.read_text()
    start_m, end_m = "<!-- joint-calibration:start -->", "<!-- joint-calibration:end -->"
    block = "\n".join([start_m, *lines, end_m])
    path.write_text(re.sub(re.escape(start_m) + ".*?" + re.escape(end_m), block, text, flags=re.S))
    print(f"wrote {OUT} and RESULTS.md in {doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
