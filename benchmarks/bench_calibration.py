"""Do the audit's intervals cover? Simulated audits with known truth.

Runs :mod:`medfair_audit.metrics.simulate` at the issue's settings: a calibrated two-group
classifier with about 12% errors, its confusion matrix estimated from 200 held-out images per
group; true male shares 0.58 (exactly on the 58% target), 0.90 and 0.98 (female 0.42, 0.10,
0.02); 256 and 1024 images per audit; 1000 bootstrap draws per audit (the audit's default).
Also the across-prompt intervals (4 prompts × 64 images) and the paired before/after change,
and how often a censored share's one-sided bound holds the truth *given* that it is censored
(two groups, and three groups with asymmetric errors and a nearly absent group).
Writes ``benchmarks/calibration.json`` and prints a table for ``RESULTS.md``.

    .venv/bin/python benchmarks/bench_calibration.py [--reps 1000] [--workers 2]
    .venv/bin/python benchmarks/bench_calibration.py --only censored   # that section alone
    .venv/bin/python benchmarks/bench_calibration.py --only sequential # the --precision rule
    .venv/bin/python benchmarks/bench_calibration.py --only conditional # conditioned models
    .venv/bin/python benchmarks/bench_calibration.py --only wordings    # prompts as a sample

The sequential section simulates ``--precision`` audits: looks every 256 images, stop when every
share's interval is within ± H, against the naive rule that recomputes the fixed-n bootstrap
interval at every look and stops when it is narrow enough.

The wordings section checks the share over the wordings (``dispersion.over_prompts``): each
audit's prompts are drawn from a population of wordings whose true male shares spread around
0.58 with a known sd; the interval should cover the population's mean, where the pooled share's
interval (prompts taken as fixed) is checked against the same number.

The conditional section simulates a model conditioned on sex (``medfair audit --condition
sex``): asked for each group in turn, it shows the asked-for group with a known fidelity; the
rows check the per-request PACC intervals and the marginal share of the output under a declared
mix of requests.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from medfair_audit.metrics.simulate import (
    SimulatedCategorical,
    censored_study,
    conditional_study,
    coverage_study,
    dispersion_study,
    paired_study,
    sequential_study,
    wording_study,
)

OUT = Path(__file__).with_name("calibration.json")
ROOT = Path(__file__).resolve().parents[1]


def _coverage(args: tuple[float, int, int, int, int]) -> dict:
    share, n, reps, n_boot, seed = args
    return coverage_study(male_share=share, n=n, reps=reps, n_boot=n_boot, seed=seed)


#: The censored-bound settings: (true shares, per-level separations, images per audit).
CENSORED = [
    ((0.02, 0.98), (1.6, 1.6), 256),
    ((0.05, 0.35, 0.60), (1.2, 1.6, 2.0), 512),
]


def _censored(args: tuple) -> dict:
    truth, separations, n, reps, n_boot, seed = args
    clf = SimulatedCategorical(k=len(truth), separations=separations)
    return censored_study(truth=truth, n=n, reps=reps, classifier=clf, n_boot=n_boot, seed=seed)


def _merge_censored(results: list[dict]) -> dict:
    """Pool chunks: rates weighted by replications, conditional coverage by censored audits."""
    out = json.loads(json.dumps(results[0]))
    total = sum(r["reps"] for r in results)
    out["reps"] = total
    for reading, per in out["shares"].items():
        for g, e in per.items():
            parts = [r["shares"][reading][g] for r in results]
            n_cens = sum(p["n_censored"] for p in parts)
            e["n_censored"] = n_cens
            e["censored"] = n_cens / total
            held = sum(p["coverage"] * r["reps"] for p, r in zip(parts, results, strict=True))
            e["coverage"] = held / total
            hits = sum((p["coverage_given_censored"] or 0) * p["n_censored"] for p in parts)
            e["coverage_given_censored"] = hits / n_cens if n_cens else None
    return out


def censored_section(reps: int, n_boot: int, workers: int) -> list[dict]:
    """Every :data:`CENSORED` setting, its replications split over ``workers`` processes."""
    jobs, per = [], len(_split(reps, workers))
    for i, (truth, seps, n) in enumerate(CENSORED):
        for j, r in enumerate(_split(reps, workers)):
            jobs.append((truth, seps, n, r, n_boot, 7000 + 100 * i + j))
    with ProcessPoolExecutor(workers) as pool:
        chunks = list(pool.map(_censored, jobs))
    return [_merge_censored(chunks[i * per : (i + 1) * per]) for i in range(len(CENSORED))]


def censored_table(studies: list[dict]) -> list[str]:
    """The censored-bound rows as Markdown (README and RESULTS.md, between markers)."""
    lines = [
        "| true shares | separations | n | audits | reading | group (true share) | censored "
        "| bound holds (all audits) | bound holds, given censored |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for st in studies:
        truth = st["truth"]
        low = min(range(len(truth)), key=lambda i: truth[i])
        for reading in ("acc", "pacc"):
            e = st["shares"][reading][f"g{low}"]
            given = e["coverage_given_censored"]
            lines.append(
                f"| {' / '.join(f'{t:.2f}' for t in truth)} | "
                f"{' / '.join(f'{d:g}' for d in st['separations'])} | {st['n']} | {st['reps']} | "
                f"{reading.upper()} | {truth[low]:.2f} | {e['censored']:.3f} | "
                f"{e['coverage']:.3f} | "
                + (f"{given:.3f} (of {e['n_censored']})" if given is not None else "never censored")
                + " |"
            )
    return lines


#: The sequential settings: true male shares × precisions (half-widths), and the most images.
SEQUENTIAL = [(share, h) for h in (0.05, 0.03) for share in (0.58, 0.90, 0.98)]
SEQUENTIAL_MAX_N = {0.05: 16_384, 0.03: 32_768}
SEQUENTIAL_HELD_OUT = 4000


def _sequential(args: tuple) -> dict:
    share, h, reps, seed = args
    return sequential_study(
        male_share=share, precision=h, reps=reps, max_n=SEQUENTIAL_MAX_N[h],
        per_group=SEQUENTIAL_HELD_OUT, seed=seed,
    )  # fmt: skip


def _merge_sequential(results: list[dict]) -> dict:
    """Pool chunks: every rate and mean weighted by replications (medians: of the chunks')."""
    out = json.loads(json.dumps(results[0]))
    total = sum(r["reps"] for r in results)
    out["reps"] = total
    for rule in ("sequential", "naive"):
        for key in out[rule]:
            out[rule][key] = sum(r[rule][key] * r["reps"] for r in results) / total
    return out


def _section(rows: list[tuple], fn: Any, merge: Any, reps: int, workers: int, seed: int) -> list:
    """Each row's study, its replications split over ``workers`` processes, then merged.

    ``fn`` takes ``(*row, reps, seed)``; chunk ``j`` of row ``i`` is seeded ``seed + 100 i + j``.
    """
    jobs, per = [], len(_split(reps, workers))
    for i, row in enumerate(rows):
        for j, r in enumerate(_split(reps, workers)):
            jobs.append((*row, r, seed + 100 * i + j))
    with ProcessPoolExecutor(workers) as pool:
        chunks = list(pool.map(fn, jobs))
    return [merge(chunks[i * per : (i + 1) * per]) for i in range(len(rows))]


def sequential_section(reps: int, workers: int) -> list[dict]:
    """Every :data:`SEQUENTIAL` setting, its replications split over ``workers`` processes."""
    return _section(SEQUENTIAL, _sequential, _merge_sequential, reps, workers, 9000)


def sequential_table(studies: list[dict]) -> list[str]:
    """The sequential rows as Markdown (README and RESULTS.md, between markers)."""
    s = studies[0]
    lines = [
        f"{s['reps']} simulated audits per row; looks every {s['look_every']} images; the "
        f"calibration table's classifier, its confusion matrix from {s['per_group']} held-out "
        f"images per group; at most {SEQUENTIAL_MAX_N[0.05]:,} images at ±0.05 and "
        f"{SEQUENTIAL_MAX_N[0.03]:,} at ±0.03. *Naive*: the fixed-n PACC bootstrap interval "
        f"({s['n_boot']} draws) recomputed at every look, stopping once it is within ± H "
        "(peeking); its stopping n is about the fixed n that reaches H.",
        "",
        "| true female share | H | anytime-valid covers | naive covers | images (median), "
        "anytime-valid | images (median), naive | width at stop, anytime-valid / naive "
        "| ran to the maximum |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for st in studies:
        a, n = st["sequential"], st["naive"]
        lines.append(
            f"| {1 - st['male_share']:.2f} | ±{st['precision']:g} | **{a['coverage']:.3f}** | "
            f"{n['coverage']:.3f} | {a['median_n']:,.0f} | {n['median_n']:,.0f} | "
            f"{a['mean_width']:.3f} / {n['mean_width']:.3f} | {a['capped']:.2f} |"
        )
    return lines


#: Conditioned-model settings: (true male share when asked for female, for male), weights.
CONDITIONAL = [((0.15, 0.90), (0.5, 0.5)), ((0.02, 0.97), (0.3, 0.7)), ((0.42, 0.58), (0.5, 0.5))]


def _conditional(args: tuple) -> dict:
    shares, weights, n_boot, reps, seed = args
    return conditional_study(
        male_share_when_asked=shares, weights=weights, n_per_condition=128, reps=reps,
        n_boot=n_boot, seed=seed,
    )  # fmt: skip


def _merge_conditional(results: list[dict]) -> dict:
    """Pool chunks: coverages and widths weighted by replications."""
    out = json.loads(json.dumps(results[0]))
    total = sum(r["reps"] for r in results)
    out["reps"] = total
    out["fidelity_coverage"] = [
        sum(r["fidelity_coverage"][i] * r["reps"] for r in results) / total
        for i in range(len(out["fidelity_coverage"]))
    ]
    for reading in out["marginal"]:
        for key in out["marginal"][reading]:
            out["marginal"][reading][key] = (
                sum(r["marginal"][reading][key] * r["reps"] for r in results) / total
            )
    return out


def conditional_section(reps: int, n_boot: int, workers: int) -> list[dict]:
    """Every :data:`CONDITIONAL` setting, its replications split over ``workers`` processes."""
    rows = [(shares, weights, n_boot) for shares, weights in CONDITIONAL]
    return _section(rows, _conditional, _merge_conditional, reps, workers, 7000)


def conditional_table(studies: list[dict]) -> list[str]:
    """The conditional rows as Markdown (between the ``conditional-table`` markers)."""
    s = studies[0]
    lines = [
        f"{s['reps']} simulated audits per row of a model conditioned on sex, asked for each "
        f"group in turn ({s['n_per_condition']} images per request); the calibration table's "
        f"classifier, {s['per_group']} held-out images per group, drawn once for both requests; "
        f"{s['n_boot']} bootstrap draws. Coverage of nominal 95% intervals.",
        "",
        "| true male share when asked for female / male | requests female / male | true marginal "
        "male share | fidelity PACC covers (female / male request) | marginal ACC covers | "
        "**marginal PACC covers** | marginal PACC width |",
        "|---|---|---|---|---|---|---|",
    ]
    for st in studies:
        a, m = st["male_share_when_asked"], st["marginal"]
        lines.append(
            f"| {a[0]:.2f} / {a[1]:.2f} | {st['weights'][0]:.1f} / {st['weights'][1]:.1f} | "
            f"{st['true_marginal']:.3f} | {st['fidelity_coverage'][0]:.3f} / "
            f"{st['fidelity_coverage'][1]:.3f} | {m['acc']['coverage']:.3f} | "
            f"**{m['pacc']['coverage']:.3f}** | {m['pacc']['mean_width']:.3f} |"
        )
    return lines


#: Prompts-as-a-sample settings: (sd of the prompts' true male shares, prompts, images each).
WORDINGS = [(sd, k, n) for k, n in ((4, 64), (16, 32)) for sd in (0.0, 0.1, 0.2)]


def _wording(args: tuple) -> dict:
    sd, k, n, n_boot, reps, seed = args
    return wording_study(
        male_share=0.58, between_sd=sd, prompts=k, n_per_prompt=n, reps=reps, n_boot=n_boot,
        seed=seed,
    )  # fmt: skip


def _merge_wording(results: list[dict]) -> dict:
    out = dict(results[0])
    total = sum(r["reps"] for r in results)
    out["reps"] = total
    for key in ("coverage", "pooled_coverage", "mean_width", "mean_between_sd"):
        out[key] = sum(r[key] * r["reps"] for r in results) / total
    return out


def wording_section(reps: int, n_boot: int, workers: int) -> list[dict]:
    """Every :data:`WORDINGS` setting, its replications split over ``workers`` processes."""
    rows = [(sd, k, n, n_boot) for sd, k, n in WORDINGS]
    return _section(rows, _wording, _merge_wording, reps, workers, 11000)


def wording_table(studies: list[dict], n_boot: int) -> list[str]:
    """The prompts-as-a-sample rows as Markdown (between the ``wording-table`` markers)."""
    s = studies[0]
    lines = [
        f"{s['reps']} simulated audits per row, {n_boot} bootstrap draws each; the calibration "
        "table's classifier, 200 held-out images per group. Each audit's prompts are drawn "
        "from wordings whose true male shares spread around 0.58 (beta, the sd given); "
        "coverage of that mean by the 95% interval of the share over the wordings, and by the "
        "pooled share's interval of the same images (prompts taken as fixed).",
        "",
        "| prompts × images | sd of the prompts' shares | **over the wordings covers** | "
        "pooled covers | width, over the wordings | estimated sd (mean) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for st in studies:
        lines.append(
            f"| {st['prompts']} × {st['n_per_prompt']} | {st['between_sd']:.2f} | "
            f"**{st['coverage']:.3f}** | {st['pooled_coverage']:.3f} | {st['mean_width']:.3f} | "
            f"{st['mean_between_sd']:.3f} |"
        )
    return lines


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
    ap.add_argument(
        "--censored-reps", type=int, default=2000, help="replications of the censored-bound study"
    )
    ap.add_argument(
        "--sequential-reps", type=int, default=300, help="replications of the sequential study"
    )
    ap.add_argument(
        "--conditional-reps", type=int, default=1000, help="replications of the conditional study"
    )
    ap.add_argument(
        "--wording-reps",
        type=int,
        default=500,
        help="replications of the prompts-as-a-sample study",
    )
    ap.add_argument("--wording-boot", type=int, default=300, help="bootstrap draws in that study")
    ap.add_argument(
        "--only",
        choices=("all", "censored", "sequential", "conditional", "wordings"),
        default="all",
        help="run every section, or only the censored-bound study (kept beside the others)",
    )
    args = ap.parse_args()
    start = time.perf_counter()
    if args.only == "censored":
        result = json.loads(OUT.read_text())
        result["censored"] = censored_section(args.censored_reps, args.n_boot, args.workers)
        result["censored_seconds"] = time.perf_counter() - start
        _write(result)
        return
    if args.only == "conditional":
        result = json.loads(OUT.read_text())
        result["conditional"] = conditional_section(
            args.conditional_reps, args.n_boot, args.workers
        )
        result["conditional_seconds"] = time.perf_counter() - start
        _write(result)
        return
    if args.only == "wordings":
        result = json.loads(OUT.read_text())
        result["wordings"] = wording_section(args.wording_reps, args.wording_boot, args.workers)
        result["wordings_n_boot"] = args.wording_boot
        result["wordings_seconds"] = time.perf_counter() - start
        _write(result)
        return
    if args.only == "sequential":
        result = json.loads(OUT.read_text())
        result["sequential"] = sequential_section(args.sequential_reps, args.workers)
        result["sequential_seconds"] = time.perf_counter() - start
        _write(result)
        return
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
    t = time.perf_counter()
    result["censored"] = censored_section(args.censored_reps, args.n_boot, args.workers)
    result["censored_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    result["sequential"] = sequential_section(args.sequential_reps, args.workers)
    result["sequential_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    result["conditional"] = conditional_section(args.conditional_reps, args.n_boot, args.workers)
    result["conditional_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    result["wordings"] = wording_section(args.wording_reps, args.wording_boot, args.workers)
    result["wordings_n_boot"] = args.wording_boot
    result["wordings_seconds"] = time.perf_counter() - t
    _write(result)


def _write(result: dict) -> None:
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}")
    lines = table(result)
    print("\n".join(lines))
    for path in (ROOT / "README.md", Path(__file__).with_name("RESULTS.md")):
        splice(path, lines)
        if "censored" in result:
            splice(path, censored_table(result["censored"]), marker="censored-table")
        if "sequential" in result:
            splice(path, sequential_table(result["sequential"]), marker="sequential-table")
        if "conditional" in result:
            splice(path, conditional_table(result["conditional"]), marker="conditional-table")
        if "wordings" in result:
            table_w = wording_table(result["wordings"], result["wordings_n_boot"])
            splice(path, table_w, marker="wording-table")


def table(result: dict) -> list[str]:
    """The results as Markdown (written into README.md and RESULTS.md between markers)."""
    s = result["settings"]
    errors = result["coverage"][0]["true_error_rates"]
    lines = [
        f"{s['reps']} simulated audits per row, {s['n_boot']} bootstrap draws each; a calibrated "
        f"classifier calling {errors['female_as_male']:.1%} of women men and "
        f"{errors['male_as_female']:.1%} of men women, its confusion matrix estimated from "
        f"{s['held_out_per_group']} held-out images "
        "per group; target 58% male. Coverage of nominal 95% intervals (each reading against its "
        "own estimand: the true share for ACC/PACC/EM, q·C for the labels, q·S for the mean "
        "probability); the KL column is the share of intervals containing 0 when the generator "
        "is on target, else the coverage of the true KL; χ² rejection at α = 0.05.",
        "",
        "| true female share | n | labels (q·C) | mean prob. (q·S) | ACC | **PACC** | EM "
        "| PACC censored | KL: ∋ 0 on target / covers | TV covers | χ² rejects |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["coverage"]:
        sh, d = c["shares"], c["distances"]["pacc"]
        kl = d["kl_target_to_generated"]
        on_target = abs(c["male_share"] - c["target"][1]) < 1e-9
        lines.append(
            f"| {1 - c['male_share']:.2f} | {c['n']} | {sh['raw']['coverage']:.3f} | "
            f"{sh['probabilistic']['coverage']:.3f} | {sh['acc']['coverage']:.3f} | "
            f"**{sh['pacc']['coverage']:.3f}** | {sh['em']['coverage']:.3f} | "
            f"{sh['pacc']['censored']:.3f} | "
            f"{(kl['contains_zero'] if on_target else kl['coverage']):.3f} | "
            f"{d['tv']['coverage']:.3f} | {c['chi_square_rejection']:.3f} |"
        )
    lines += [
        "",
        "Mean width of the 95% interval of the male share (n = 256 / 1024): "
        + "; ".join(
            f"{r.upper()} "
            + " / ".join(
                f"{c['shares'][r]['mean_width']:.3f}"
                for c in result["coverage"]
                if c["male_share"] == 0.58
            )
            for r in ("acc", "pacc", "em")
        )
        + " (on target).",
        "",
    ]
    for d in result["dispersion"]:
        lines.append(
            f"- {d['prompts']} prompts × {d['n_per_prompt']} images, true female share "
            f"{1 - d['male_share']:.2f} in every prompt ({d['reps']} audits): mean |gap| interval "
            f"covers {d['mean_abs_gap_coverage']:.3f}, worst-prompt |gap| "
            f"{d['worst_prompt_coverage']:.3f}; homogeneity test rejects "
            f"{d['homogeneity_rejection']:.3f}."
        )
    for p in result["paired"]:
        lines.append(
            f"- Paired, male share {p['before']:.2f} → {p['after']:.2f}, {p['n']} pairs "
            f"({p['reps']} audits): the interval of the change covers "
            f"{p['change_coverage']:.3f}; McNemar rejects {p['mcnemar_rejection']:.3f}."
        )
    lines.append(
        f"\n({result['seconds']:.0f} s wall time on 2 cores; `benchmarks/calibration.json`.)"
    )
    return lines


def splice(path: Path, lines: list[str], marker: str = "calibration-table") -> None:
    """Replace the text between the ``marker`` start and end comments of ``path``."""
    from _markers import splice as paste

    paste(path, marker, "\n".join(lines))


if __name__ == "__main__":
    main()
