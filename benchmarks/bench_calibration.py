"""Do the audit's intervals cover? Simulated audits with known truth.

Runs :mod:`medfair_audit.metrics.simulate` at the issue's settings: a calibrated two-group
classifier with about 12% errors, its confusion matrix estimated from 200 held-out images per
group; true male shares 0.58 (exactly on the 58% target), 0.90 and 0.98 (female 0.42, 0.10,
0.02); 256 and 1024 images per audit; 1000 bootstrap draws per audit (the audit's default).
Also the across-prompt intervals (4 prompts × 64 images) and the paired before/after change.
Writes ``benchmarks/calibration.json`` and prints a table for ``RESULTS.md``.

    .venv/bin/python benchmarks/bench_calibration.py [--reps 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from medfair_audit.metrics.simulate import coverage_study, dispersion_study, paired_study

OUT = Path(__file__).with_name("calibration.json")


def _coverage(args: tuple[float, int, int, int, int]) -> dict:
    share, n, reps, n_boot, seed = args
    return coverage_study(male_share=share, n=n, reps=reps, n_boot=n_boot, seed=seed)


def _split(reps: int, parts: int) -> list[int]:
    return [reps // parts + (i < reps % parts) for i in range(parts)]


def _merge(results: list[dict]) -> dict:
    """Average per-chunk rates weighted by their replications."""
    total = sum(r["reps"] for r in results)

    def avg(get):
        return sum(get(r) * r["reps"] for r in results) / total

    out = json.loads(json.dumps(results[0]))
    out["reps"] = total
    for reading in out["shares"]:
        for key in ("coverage", "mean_width", "censored"):
            out["shares"][reading][key] = avg(lambda r, a=reading, k=key: r["shares"][a][k])
    for reading, per in out["distances"].items():
        for name in per:
            for key in ("coverage", "contains_zero"):
                per[name][key] = avg(lambda r, a=reading, b=name, k=key: r["distances"][a][b][k])
    out["chi_square_rejection"] = avg(lambda r: r["chi_square_rejection"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--side-reps", type=int, default=400, help="replications of the prompt and paired studies"
    )
    args = ap.parse_args()
    start = time.perf_counter()
    scenarios = [(s, n) for s in (0.58, 0.90, 0.98) for n in (256, 1024)]
    jobs = []
    for i, (share, n) in enumerate(scenarios):
        for j, reps in enumerate(_split(args.reps, args.workers)):
            jobs.append((share, n, reps, args.n_boot, 1000 * i + j))
    with ProcessPoolExecutor(args.workers) as pool:
        chunks = list(pool.map(_coverage, jobs))
        side = [
            pool.submit(
                dispersion_study,
                male_share=share,
                n_per_prompt=64,
                prompts=4,
                reps=args.side_reps,
                n_boot=args.n_boot,
                seed=50 + k,
            )
            for k, share in enumerate((0.58, 0.90))
        ] + [
            pool.submit(
                paired_study,
                before=0.90,
                after=after,
                n=256,
                reps=args.side_reps,
                n_boot=args.n_boot,
                seed=60 + k,
            )
            for k, after in enumerate((0.58, 0.90))
        ]
        side = [f.result() for f in side]
    per = len(_split(args.reps, args.workers))
    studies = [_merge(chunks[i * per : (i + 1) * per]) for i in range(len(scenarios))]
    result = {
        "seconds": time.perf_counter() - start,
        "settings": {"reps": args.reps, "n_boot": args.n_boot, "held_out_per_group": 200},
        "coverage": studies,
        "dispersion": side[:2],
        "paired": side[2:],
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT} in {result['seconds']:.0f} s")
    print(
        "| true female share | n | raw (q·C) | probabilistic (q·S) | ACC | PACC (default) | EM "
        "| PACC censored | KL interval ∋ 0 (on target) / covers true KL | TV covers "
        "| χ² rejection |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in studies:
        sh, d = s["shares"], s["distances"]["pacc"]
        kl = d["kl_target_to_generated"]
        on_target = abs(s["male_share"] - s["target"][1]) < 1e-9
        print(
            f"| {1 - s['male_share']:.2f} | {s['n']} | {sh['raw']['coverage']:.3f} | "
            f"{sh['probabilistic']['coverage']:.3f} | {sh['acc']['coverage']:.3f} | "
            f"{sh['pacc']['coverage']:.3f} | {sh['em']['coverage']:.3f} | "
            f"{sh['pacc']['censored']:.3f} | "
            f"{(kl['contains_zero'] if on_target else kl['coverage']):.3f} | "
            f"{d['tv']['coverage']:.3f} | {s['chi_square_rejection']:.3f} |"
        )
    for d in side[:2]:
        print(
            f"prompts: male {d['male_share']}: mean |gap| {d['mean_abs_gap_coverage']:.3f}, "
            f"worst {d['worst_prompt_coverage']:.3f}, homogeneity rejection "
            f"{d['homogeneity_rejection']:.3f}"
        )
    for p in side[2:]:
        print(
            f"paired {p['before']}→{p['after']}: change coverage {p['change_coverage']:.3f}, "
            f"McNemar rejection {p['mcnemar_rejection']:.3f}"
        )


if __name__ == "__main__":
    main()
