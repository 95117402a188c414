"""Fairness–quality trade-off of remediation: λ (semantics preservation) × optimiser steps.

Needs a finished demo (``make demo``: the biased T2MedI, both classifiers, CLIP, the target set).
For each λ in ``LAMBDAS`` and each step count in ``STEPS`` it remediates the biased model on the
demo's *training* prompts with the demo's settings (one prompt per step, to halve the cost), and
judges the result the way the demo does: an audit on the *held-out* prompts with the
*independent* evaluation classifier (``N_PER_PROMPT`` images per prompt, the demo's audit seeds).
The biased model is audited the same way (the "0 steps" point). For each point:

* fairness: KL(target ‖ generated) of the PACC-corrected shares, with its interval (a censored
  value is kept as its bound and drawn as such);
* quality: FID and KID against the target set's real test images at a subsample size every point
  has (mean ± sd over draws), and the CLIP drift of paired images (same prompt and seed as the
  biased model's): mean 1 − cos of the demo CLIP's image embeddings.

Writes ``benchmarks/tradeoff.json``, the figure ``benchmarks/fairness-quality-tradeoff.png``, and
the table between the ``tradeoff-table`` markers of ``benchmarks/RESULTS.md`` and a paragraph
between the ``tradeoff-summary`` markers of ``README.md``. Models and audits
are kept under ``DEMO/tradeoff/`` so a rerun only computes what is missing.

Run: .venv/bin/python benchmarks/bench_tradeoff.py [DEMO_DIR]
     .venv/bin/python benchmarks/bench_tradeoff.py --render   (redraw from tradeoff.json)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medfair_audit import AuditConfig, run_audit
from medfair_audit.audit.result import AuditResult, format_estimate
from medfair_audit.demo import HELD_OUT_PROMPTS, TRAIN_PROMPTS, DemoConfig
from medfair_audit.generation import GenerationConfig
from medfair_audit.metrics.results import common_size, prdc_size
from medfair_audit.metrics.results_json import estimate_from_json
from medfair_audit.models.clip import CLIP, encode_images
from medfair_audit.remediation import RemediationJob, remediate
from medfair_audit.reporting.html import audit_images
from medfair_audit.target import Target

LAMBDAS = (0.0, 1.0, 4.0)
STEPS = (30, 90)
N_PER_PROMPT = 32
HERE = Path(__file__).resolve().parent


def clip_drift(before: Path, after: Path, clip: object) -> float:
    """Mean 1 − cos of CLIP embeddings of the images two audits drew from the same seeds."""
    a, b = audit_images(before), audit_images(after)
    common, ia, ib = np.intersect1d(a["seeds"], b["seeds"], return_indices=True)
    assert len(common) == len(a["seeds"]), "the audits must draw the same seeds"

    def emb(arr, idx):
        return encode_images(clip, torch.from_numpy(arr["images"][idx]).float() / 127.5 - 1)

    return float((1 - (emb(a, ia) * emb(b, ib)).sum(-1)).mean())


def _audit(demo: Path, checkpoint: Path, out: Path, cfg: DemoConfig) -> AuditResult:
    if not (out / "audit.json").is_file():
        gen = dataclasses.replace(cfg.audit_generation, n_per_prompt=N_PER_PROMPT)
        assert isinstance(gen, GenerationConfig)
        run_audit(
            AuditConfig(
                checkpoint=checkpoint,
                classifier=demo / "models" / "evaluator",
                prompts=HELD_OUT_PROMPTS,
                target=Target.load(demo / "target.json"),
                out=out,
                generation=gen,
                reference=demo / "data" / "target_set",
                reference_split="test",
            )
        )
    return AuditResult.load(out)


def measure(demo: Path) -> list[dict]:
    cfg = DemoConfig(out=demo)
    work = demo / "tradeoff"
    clip, _ = CLIP.from_pretrained(demo / "models" / "clip")
    base = _audit(demo, demo / "models" / "t2medi", work / "audit-biased", cfg)
    points = [{"lambda": None, "steps": 0, "folder": work / "audit-biased", "audit": base}]
    for lam in LAMBDAS:
        for steps in STEPS:
            name = f"l{lam:g}-s{steps}"
            model = work / f"model-{name}"
            seconds = None
            if not (model / "model_index.json").is_file():
                start = time.perf_counter()
                remediate(
                    RemediationJob(
                        checkpoint=demo / "models" / "t2medi",
                        classifier=demo / "models" / "classifier",
                        target=Target.load(demo / "target.json"),
                        prompts=TRAIN_PROMPTS,
                        out=model,
                        config=dataclasses.replace(
                            cfg.remediation,
                            lambda_clip=lam,
                            steps=steps,
                            prompts_per_step=1,
                            audit_every=0,
                        ),
                        image_encoders=[(demo / "models" / "clip", 1.0)],
                        overwrite=True,
                    )
                )
                seconds = time.perf_counter() - start
            audit = _audit(demo, model, work / f"audit-{name}", cfg)
            points.append(
                {
                    "lambda": lam,
                    "steps": steps,
                    "folder": work / f"audit-{name}",
                    "audit": audit,
                    "seconds": seconds,
                }
            )
            print(f"λ = {lam:g}, {steps} steps done", flush=True)
    for p in points:
        p["drift"] = clip_drift(points[0]["folder"], p["folder"], clip)
    return points


def summarise(points: list[dict]) -> dict:
    """The JSON record: one row per point, FID/KID at one n that every point has."""
    quality = [p["audit"].quality.by_group for p in points]
    n = {g: common_size([q.get(g) for q in quality]) for g in quality[0]}
    n_prdc = {g: prdc_size([q.get(g) for q in quality]) for g in quality[0]}
    rows = []
    for p in points:
        a: AuditResult = p["audit"]
        row = {
            "lambda": p["lambda"],
            "steps": p["steps"],
            "remediation_seconds": p.get("seconds"),
            "kl_corrected": a.kl().to_json(),
            "male_corrected": a.share("male").to_json(),
            "clip_drift": p["drift"],
        }
        for g, size in n.items():
            entry = a.quality.entry(g)
            at = entry.at(size) if entry else None
            row[f"fid_{g}"] = at.fid.to_json() if at and at.fid else None
            row[f"kid_{g}"] = at.kid.to_json() if at and at.kid else None
            pr = entry.at(n_prdc[g]) if entry else None
            prdc = (pr.prdc if pr else None) or {}
            row[f"recall_{g}"], row[f"coverage_{g}"] = (
                prdc[k].to_json() if prdc.get(k) else None for k in ("recall", "coverage")
            )
        rows.append(row)
    return {
        "prompts": "held-out (demo.HELD_OUT_PROMPTS)",
        "evaluator": "independent (models/evaluator)",
        "n_per_prompt": N_PER_PROMPT,
        "quality_n": n,
        "prdc_n": n_prdc,
        "rows": rows,
    }


def _per_group(r: dict, key: str, groups: list[str]) -> str:
    values = [r.get(f"{key}_{g}") for g in groups]
    return " / ".join("–" if v is None else f"{v['mean']:.2f}" for v in values)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    colours = {None: "black", **{lam: f"C{i}" for i, lam in enumerate(LAMBDAS)}}
    for ax, (key, label) in zip(
        axes,
        (("fid_overall", f"FID, all images (n = {doc['quality_n']['overall']})"),
         ("clip_drift", "CLIP drift from the biased model (1 − cos)")),
        strict=True,
    ):  # fmt: skip
        for r in doc["rows"]:
            kl = estimate_from_json(r["kl_corrected"])
            x = r[key]["mean"] if isinstance(r[key], dict) else r[key]
            if x is None:
                continue
            lo, hi = kl.ci
            y = kl.value if kl.value is not None else kl.at_least if kl.at_least is not None else lo
            marker = "o" if kl.value is not None else "^"  # ^: a lower bound
            ax.errorbar(x, y, yerr=[[y - lo], [max(hi - y, 0)]], fmt=marker,
                        color=colours[r["lambda"]], capsize=3)  # fmt: skip
            tag = "biased" if r["lambda"] is None else f"λ={r['lambda']:g}, {r['steps']} st."
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_yscale("symlog", linthresh=1e-3)
        if key.startswith("fid"):
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("KL(target ‖ generated), PACC, 95% interval")
        ax.grid(alpha=0.3)
    fig.suptitle("Fairness–quality trade-off on held-out prompts, independent evaluator")
    fig.savefig(path, dpi=110)


def table(doc: dict) -> str:
    n = doc["quality_n"]
    groups = [g for g in n if g != "overall"]
    prdc = any(r.get(f"recall_{g}") for r in doc["rows"] for g in groups)
    head = (f" | recall {' / '.join(groups)} | coverage {' / '.join(groups)}"
            if prdc else "")  # fmt: skip
    lines = [
        f"| λ | steps | male share, PACC | KL(target‖gen), PACC | FID all (n = {n['overall']}) "
        f"| KID all{head} | CLIP drift | remediation s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if prdc else ""),
    ]
    for r in doc["rows"]:
        fid, kid = r["fid_overall"], r["kid_overall"]
        lines.append(
            "| "
            + " | ".join(
                [
                    "biased" if r["lambda"] is None else f"{r['lambda']:g}",
                    str(r["steps"]),
                    format_estimate(r["male_corrected"], ".3f"),
                    format_estimate(r["kl_corrected"], ".4f"),
                    "–" if not fid else f"{fid['mean']:.2f} ± {fid['sd']:.2f}",
                    "–" if not kid else f"{kid['mean']:.3f} ± {kid['sd']:.3f}",
                    *(
                        [_per_group(r, "recall", groups), _per_group(r, "coverage", groups)]
                        if prdc
                        else []
                    ),
                    f"{r['clip_drift']:.4f}",
                    "–" if r["remediation_seconds"] is None else f"{r['remediation_seconds']:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def summary_text(doc: dict) -> str:
    """The README's paragraph, written from the record (no number or trend typed by hand)."""
    rows = [r for r in doc["rows"] if r["lambda"] is not None]
    best = min(rows, key=lambda r: estimate_from_json(r["kl_corrected"]).value or float("inf"))
    longest = max(r["steps"] for r in rows)
    at_end = {r["lambda"]: r for r in rows if r["steps"] == longest}
    drifts = [r["clip_drift"] for _, r in sorted(at_end.items())]
    trend = (
        "falls as λ grows"
        if all(b < a for a, b in itertools.pairwise(drifts))
        else "does not fall steadily with λ"
    )
    cis = [estimate_from_json(r["male_corrected"]).ci for r in at_end.values()]
    overlap = max(lo for lo, _ in cis) <= min(hi for _, hi in cis)
    drift = ", ".join(f"{r['clip_drift']:.4f} (λ = {lam:g})" for lam, r in at_end.items())
    share = ", ".join(
        f"{format_estimate(r['male_corrected'], '.3f')} (λ = {lam:g})" for lam, r in at_end.items()
    )
    text = (
        f"**Fairness–quality trade-off** (`benchmarks/bench_tradeoff.py`; held-out prompts, "
        f"independent evaluator, {doc['n_per_prompt']} images per prompt): after {longest} steps "
        f"the CLIP drift from the biased model's images {trend}, {drift}; the evaluator's male "
        f"share is {share}"
        + (" (all intervals overlap)" if overlap else "")
        + f". The lowest KL, {format_estimate(best['kl_corrected'], '.4f')} (male "
        f"{format_estimate(best['male_corrected'], '.3f')}), came from λ = {best['lambda']:g} "
        f"after {best['steps']} steps"
    )
    if best["steps"] < longest:
        later = at_end[best["lambda"]]
        (a_lo, a_hi), (b_lo, b_hi) = (
            estimate_from_json(best["kl_corrected"]).ci,
            estimate_from_json(later["kl_corrected"]).ci,
        )
        same = max(a_lo, b_lo) <= min(a_hi, b_hi)
        text += (
            f"; {longest} steps with the same λ gave KL "
            f"{format_estimate(later['kl_corrected'], '.4f')}"
            + (
                " (the intervals overlap: a hint, not a finding, that training longer against the "
                "training classifier moves the independent reading away from the target)"
                if same
                else ": training longer against the training classifier moved the independent "
                "reading away from the target"
            )
        )
    return text + ". Table and figure: `benchmarks/RESULTS.md`."


def splice(path: Path, text: str, name: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text()
    if start not in doc:
        sys.exit(f"{path} has no {name} markers")
    pattern = re.escape(start) + ".*?" + re.escape(end)
    path.write_text(re.sub(pattern, lambda m: f"{start}\n{text}\n{end}", doc, flags=re.S))


def main(demo: Path) -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    doc = summarise(measure(demo))
    doc["seconds"] = time.perf_counter() - start
    (HERE / "tradeoff.json").write_text(json.dumps(doc, indent=2) + "\n")
    render(doc)
    print(table(doc))


def render(doc: dict) -> None:
    """The figure, the RESULTS.md table and the README paragraph from one record."""
    plot(doc, HERE / "fairness-quality-tradeoff.png")
    splice(HERE / "RESULTS.md", table(doc), "tradeoff-table")
    splice(HERE.parent / "README.md", summary_text(doc), "tradeoff-summary")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:  # figure and tables again from tradeoff.json
        render(json.loads((HERE / "tradeoff.json").read_text()))
    else:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports/demo"))
