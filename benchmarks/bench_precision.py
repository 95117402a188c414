"""``--precision`` on the demo's models: where it stops, against the fixed n for the same H.

Audits the demo's biased and remediated T2MedI models on the held-out prompts with the
independent evaluator, as the demo does, but with ``--precision H`` (default ±0.05) and at most
``--max-n-per-prompt`` images per prompt instead of a fixed 64. Per model it records where the
audit stopped and why, the anytime-valid PACC interval at the stop, every look's largest
half-width, and, from the same images, what a fixed-n audit says: its bootstrap PACC interval at
that n, the images its delta-method advice needs for ±H (``sample_size.needed_total``), and the
floor the held-out confusion matrix sets (``floor_half_width``). Writes
``benchmarks/precision.json`` and the paragraph between the ``precision-summary`` markers of the
README and ``benchmarks/RESULTS.md``.

Run: .venv/bin/python benchmarks/bench_precision.py [DEMO_DIR] [--precision 0.05]
     [--max-n-per-prompt 256]        (needs a finished `make demo`)
     .venv/bin/python benchmarks/bench_precision.py --render   (the paragraph from the JSON)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from _markers import splice

from medfair_audit import AuditConfig, run_audit
from medfair_audit.demo import HELD_OUT_PROMPTS, DemoConfig
from medfair_audit.target import Target

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = {"biased": "t2medi", "remediated": "t2medi-fair"}


def measure(demo: Path, name: str, precision: float, max_n: int) -> dict:
    """One ``--precision`` audit of a demo model and the fixed-n numbers of its images."""
    gen = dataclasses.replace(DemoConfig().audit_generation, n_per_prompt=max_n)
    start = time.perf_counter()
    result = run_audit(
        AuditConfig(
            checkpoint=demo / "models" / MODELS[name],
            classifier=demo / "models" / "evaluator",
            prompts=HELD_OUT_PROMPTS,
            target=Target.load(demo / "target.json"),
            out=demo / "precision" / name,
            generation=gen,
            precision=precision,
            half_width=precision,
            overwrite=True,
        )
    )
    seq = result.sequential
    fixed = result.overall.proportions["pacc"]
    held = result.heldout().counts_per_group()
    return {
        "model": name,
        "seconds": time.perf_counter() - start,
        "stopped_by": seq.stopped_by,
        "n_per_prompt": seq.n_per_prompt,
        "n_images": result.n_images,
        "prompts": len(HELD_OUT_PROMPTS),
        "anytime_valid": {g: list(ci) for g, ci in seq.intervals.items()}
        if seq.intervals is not None
        else None,
        "half_widths": list(seq.half_widths),
        "fixed_n": {g: list(fixed[g].ci) for g in result.groups},
        "fixed_n_censored": {g: bool(fixed[g].censored) for g in result.groups},
        "needed_total": result.sample_size.needed_total,
        "floor_half_width": result.sample_size.floor_half_width,
        "heldout_per_group": {g: int(k) for g, k in zip(result.groups, held, strict=True)},
    }


def _model_text(r: dict, h: float) -> str:
    last = r["half_widths"][-1]
    if r["stopped_by"] == "precision":
        stop = f"stopped at {r['n_per_prompt']} images per prompt ({r['n_images']} in all)"
    else:
        reached = "no interval" if last is None else f"±{last:.3f}"
        stop = (
            f"ran to the maximum, {r['n_per_prompt']} per prompt ({r['n_images']} images), "
            f"ending at {reached}"
        )
    fixed = max((hi - lo) / 2 for lo, hi in r["fixed_n"].values())
    fixed_text = (
        "censored (a bound, not an interval)"
        if any(r["fixed_n_censored"].values())
        else f"±{fixed:.3f}"
    )
    need = r["needed_total"]
    advice = f"{need:,} images" if need is not None else "unreachable"
    floor = r["floor_half_width"]
    floor_text = f", held-out floor ±{floor:.3f}" if floor is not None else ""
    return (
        f"the {r['model']} model {stop}; the fixed-n PACC reading of the same images is "
        f"{fixed_text}, and the fixed-n advice for ±{h:g} is {advice}{floor_text}"
    )


def summary(result: dict) -> str:
    """The README/RESULTS paragraph, from ``precision.json``."""
    h = result["precision"]
    held = result["models"][0]["heldout_per_group"]
    per = ", ".join(f"{n} {g}" for g, n in held.items())
    return (
        f"**`--precision {h:g}` on the demo's models** (`benchmarks/bench_precision.py`; the "
        f"independent evaluator, held-out images {per}; at most {result['max_n_per_prompt']} "
        f"images per prompt): " + "; ".join(_model_text(r, h) for r in result["models"]) + "."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", nargs="?", type=Path, default=ROOT / "reports" / "demo")
    ap.add_argument("--precision", type=float, default=0.05)
    ap.add_argument("--max-n-per-prompt", type=int, default=256)
    ap.add_argument("--render", action="store_true", help="the paragraph again from the JSON")
    args = ap.parse_args()
    if args.render:
        _publish(json.loads((HERE / "precision.json").read_text()))
        return
    if not (args.demo / "models" / "t2medi-fair" / "model_index.json").is_file():
        raise SystemExit(f"error: {args.demo} holds no finished demo; run 'make demo' first")
    result = {
        "precision": args.precision,
        "max_n_per_prompt": args.max_n_per_prompt,
        "models": [measure(args.demo, m, args.precision, args.max_n_per_prompt) for m in MODELS],
    }
    (HERE / "precision.json").write_text(json.dumps(result, indent=1) + "\n")
    _publish(result)


def _publish(result: dict) -> None:
    text = summary(result)
    print(text)
    for path in (ROOT / "README.md", HERE / "RESULTS.md"):
        splice(path, "precision-summary", text)


if __name__ == "__main__":
    main()
