"""Does a remediation hold under classifiers it never saw? Each guidance variant, several seeds.

Starts from the demo's models (``run_demo(until="reader")`` trains what is missing and reuses
the rest): the biased T2MedI, the training classifier and the other guides (``classifier-b``:
another seed and width; ``classifier-robust``: L2-PGD adversarially trained), the independent
evaluator (other subjects) and the architecture-disjoint reader (radiomics features + logistic
regression, on a phantom set of its own). For each variant of :data:`VARIANTS` and each seed it
remediates the biased model on the demo's *training* prompts, then audits the result on the
*held-out* prompts with the evaluator, reading the same images with every guide and the reader
(the audit's readers section). Per run:

* each reader's PACC male share with its interval (evaluator, reader, every guide);
* the transfer gap: the mean of the guiding classifiers' PACC male shares minus the
  evaluator's (point estimates; the audit's paired intervals are in the JSON);
* KL(target ‖ generated) of the evaluator's PACC shares, FID/KID at a common n (classifier
  features against the target set's real test images), seconds per optimiser step;
* the share of images outside the real images' support in the evaluator's and the reader's
  feature spaces.

Per variant: the mean gap over seeds, the biased model's gap (the same guides and evaluator on
the biased model's images, before any tuning) and the tuning's part of the gap (the gap minus
that), the spread of the evaluator's reading, and whether every seed's evaluator and reader
intervals hold the target. ``--draw`` runs variants on another draw
of the models too (a demo folder trained with another ``--seed``), summarised apart, since the
tuning seeds of one draw hold the trained models fixed. ``--sampler-check`` draws a T = 10
run's held-out audit again at T = 10, with the same seeds as its 25-step audit. Writes
``benchmarks/transfer.json`` and the table between the ``transfer-table`` markers of
``benchmarks/RESULTS.md``; runs are kept under ``DEMO/transfer/`` so a rerun computes only what
is missing. ``--add`` puts the runs measured now into the committed record instead (a row of the
same variant, seed and draw replaced, FID/KID at the record's common size), e.g. another draw
whose folder is at hand when the record's own demo folders are not; ``--draw-name`` names such a
draw in the tables (the example's seed trained again on another machine is not "seed 0").

Run: .venv/bin/python benchmarks/bench_transfer.py [DEMO_DIR] [--variants a,b] [--seeds 0,1]
     [--default-seeds 0,1,2] [--seeds-of VARIANT=0,1,2] [--threads 2] [--cached]
     [--draw reports/demo-seed1 --draw-variants single,T10 --draw-seeds 1]
     [--demo-runs reports/demo,reports/demo-seed1] [--sampler-check T10=0]
     [--sampler-check reports/demo-seed1:T10=1]
     [--add --draw DIR --draw-name NAME --draw-variants single,text --draw-seeds 0,1]
     .venv/bin/python benchmarks/bench_transfer.py --render   (tables again from transfer.json)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfair_audit import AuditConfig, run_audit
from medfair_audit.audit.result import AuditResult, format_estimate
from medfair_audit.demo import (
    HELD_OUT_PROMPTS,
    SELECTION_PROMPTS,
    TRAIN_PROMPTS,
    VARIED_TRAIN_PROMPTS,
    WORDING_SELECTION_PROMPTS,
    WORDING_TRAIN_PROMPTS,
    DemoConfig,
    run_demo,
)
from medfair_audit.metrics.results import Estimate, common_size, prdc_size
from medfair_audit.metrics.results_json import estimate_from_json
from medfair_audit.remediation import RemediationJob, RemediationResult, remediate
from medfair_audit.target import Target

#: Variant → how it guides: ``guide`` (the classifier aligned against, default the training
#: classifier), ``ensemble`` (more guides, each one's loss averaged), ``augment`` (EOT views),
#: ``prompts`` (``"varied"``: tuned on ``demo.VARIED_TRAIN_PROMPTS``, the training prompts and
#: eight free wordings, instead of ``demo.TRAIN_PROMPTS``; ``"wordings"``: on
#: ``demo.WORDING_TRAIN_PROMPTS``, 150 wordings), ``steps`` (instead of the demo's),
#: ``select`` (the demo's choice of the kept weights: quick audits on ``demo.SELECTION_PROMPTS``,
#: ``keep="best"`` unless ``tuning`` says another ``keep``; ``"sites"``: on those and
#: :data:`MIRRORED_SELECTION_PROMPTS`; ``"wordings"``:
#: on ``demo.WORDING_SELECTION_PROMPTS``; without it a variant keeps its last weights and makes
#: no quick audits),
#: ``tuning`` (other :class:`~medfair_audit.config.RemediationConfig` settings than the demo's:
#: ``T10…`` tune at T = 10 DDIM steps, the demo's default before it tuned at its audits' 25).
VARIANTS: dict[str, dict] = {
    "single": {"select": True},
    # the default's tuning, stopped at the first quick audit (selection prompts) whose interval
    # holds the target, and those weights kept: the least tuning the selection cannot tell
    # from the target
    "first-within": {"select": True, "tuning": {"keep": "first-within"}},
    # the demo's default until it chose the kept weights on selection prompts: the last ones
    "last": {},
    # the demo's default until it tuned with the audits' sampler (T = 25): T = 10
    "T10": {"tuning": {"sampling_steps": 10}},
    "T10-ema": {"tuning": {"sampling_steps": 10, "ema_decay": 0.98}},
    "T10-lr-half": {"tuning": {"sampling_steps": 10, "lr": 5e-4}},
    "T10-all-prompts-50": {"tuning": {"sampling_steps": 10, "prompts_per_step": 4}, "steps": 50},
    # every training prompt in each step, at the audits' T = 25, weights chosen as the default's
    "all-prompts-50": {"select": True, "tuning": {"prompts_per_step": 4}, "steps": 50},
    # the default, its weights chosen on selection prompts of both sides (see audit_prompts_of)
    "select-sites": {"select": "sites"},
    # the default's tuning and choice of weights, tuned on the varied wordings
    "varied-select": {"prompts": "varied", "select": True},
    "varied-prompts": {"prompts": "varied"},
    # tuned on 150 wordings (one a step), weights chosen on 8 more of the same spread
    # (32 images each: the default's 256 a quick audit)
    "wordings": {"prompts": "wordings", "select": "wordings", "tuning": {"audit_images": 32}},
    "varied-prompts-250": {"prompts": "varied", "steps": 250},
    "eot": {"augment": 4},
    "ensemble": {"ensemble": ("classifier-b", "classifier-robust")},
    "robust": {"guide": "classifier-robust"},
    # Shen et al.'s default: LoRA on the text encoder's attention, the UNet frozen (the denoiser
    # cannot learn image-space patterns, only how a prompt is encoded), weights chosen as the
    # default's
    "text": {"select": True, "tuning": {"lora_on": "text"}},
    "combined": {"ensemble": ("classifier-b", "classifier-robust"), "augment": 4},
}
SEEDS = (0, 1)
#: The demo's default (its guide, ``DemoConfig.guide``) gets one seed more.
DEFAULT_VARIANT = "single"
DEFAULT_SEEDS = (0, 1, 2)
#: Images per held-out prompt in each audit, as the demo draws (with 32, one reading's 95%
#: interval was about ±9.5 pp wide, as wide as the bar on the spread between seeds).
N_PER_PROMPT = 64
HERE = Path(__file__).resolve().parent


def prompts_of(variant: dict) -> tuple[str, ...]:
    """The prompts a variant tunes on."""
    return {"varied": VARIED_TRAIN_PROMPTS, "wordings": WORDING_TRAIN_PROMPTS}.get(
        variant.get("prompts", ""), TRAIN_PROMPTS
    )


#: ``demo.SELECTION_PROMPTS`` with the tumour on the other side: the selection prompts name the
#: training prompts' sites, the held-out prompts the mirrored ones (``select="sites"`` reads both).
MIRRORED_SELECTION_PROMPTS = (
    "FLAIR MR image of the brain in the axial plane, right frontal glioma.",
    "Axial T2 MRI of the head demonstrating a left parietal glioma.",
    "Glioma of the right temporal lobe, enhancing on axial T1 post-contrast brain MRI.",
    "Axial T1 MRI of the brain: left occipital intra-axial glioma.",
)


def audit_prompts_of(variant: dict) -> tuple[str, ...]:
    """The prompts a variant's quick audits read (none: its training prompts)."""
    select = variant.get("select")
    if select == "sites":
        return SELECTION_PROMPTS + MIRRORED_SELECTION_PROMPTS
    if select == "wordings":
        return WORDING_SELECTION_PROMPTS
    return SELECTION_PROMPTS if select else ()


def guides_of(variant: dict) -> list[str]:
    """The classifiers (model folder names) a variant aligns against."""
    return [variant.get("guide", "classifier"), *variant.get("ensemble", ())]


def _audit(
    demo: Path,
    checkpoint: Path,
    out: Path,
    cfg: DemoConfig,
    *,
    steps: int | None = None,
    quality: bool = True,
    prompts: tuple[str, ...] = HELD_OUT_PROMPTS,
    n_per_prompt: int = N_PER_PROMPT,
) -> AuditResult:
    """The held-out audit by the evaluator and every reader (reused when ``out`` has it).

    ``steps``: DDIM steps of the images (default the demo's audits'); ``quality``: with FID/KID
    against the target set's real test images; ``prompts`` and ``n_per_prompt``: other prompts
    than the held-out ones. An audit of the same images written before the audit gave the share
    over the wordings has its statistics recomputed from its stored images.
    """
    generation = dataclasses.replace(
        cfg.audit_generation,
        n_per_prompt=n_per_prompt,
        steps=steps or cfg.audit_generation.steps,
    )
    done = out / "audit.json"
    made = json.loads(done.read_text()) if done.is_file() else {"config": {}, "dispersion": {}}
    drawn = made["config"]
    same = (drawn.get("n_per_prompt"), drawn.get("steps"), drawn.get("prompts")) == (
        n_per_prompt,
        generation.steps,
        list(prompts),
    )
    if not same or "over_prompts" not in made["dispersion"]:
        # overwrite keeps the stored images: an audit of the same settings resumes from them
        run_audit(
            AuditConfig(
                checkpoint=checkpoint,
                classifier=demo / "models" / "evaluator",
                readers=tuple(demo / "models" / r for r in cfg.readers),
                prompts=prompts,
                target=Target.load(demo / "target.json"),
                out=out,
                generation=generation,
                **(
                    {"reference": demo / "data" / "target_set", "reference_split": "test"}
                    if quality
                    else {}
                ),
                overwrite=True,
            )
        )
    return AuditResult.load(out)


#: Settings that do not change what a tuning that keeps its last weights saves (a cached run may
#: differ in them).
_FREE = ("audit_every", "audit_images", "audit_steps", "audit_seed", "checkpoint_every",
         "until_kl", "unet_checkpointing", "decode_checkpointing")  # fmt: skip


def _tuning(cfg: DemoConfig, variant: dict, seed: int) -> Any:
    """The variant's remediation settings: the demo's, with the variant's changes."""
    changes = {
        "seed": seed,
        "augment": variant.get("augment", 0),
        "steps": variant.get("steps", cfg.remediation.steps),
        **({} if variant.get("select") else {"keep": "last", "audit_every": 0}),
        **variant.get("tuning", {}),
    }
    return dataclasses.replace(cfg.remediation, **changes)


def _tuned(out: Path, variant: dict, rcfg: Any) -> bool:
    """Whether ``out`` holds a finished model tuned on the variant's prompts with ``rcfg``."""
    if not (out / "model_index.json").is_file():
        return False
    record = json.loads((out / "remediation.json").read_text())
    want = json.loads(json.dumps(dataclasses.asdict(rcfg)))
    # a run recorded before a setting existed ran with its default
    default = json.loads(json.dumps(dataclasses.asdict(type(rcfg)())))
    # the quick audits choose what is saved under keep="best", so their settings count then
    free = _FREE if rcfg.keep == "last" else ()
    return (
        record["prompts"] == list(prompts_of(variant))
        and (record.get("audit_prompts") or []) == list(audit_prompts_of(variant))
        and all(record["config"].get(k, default[k]) == v for k, v in want.items() if k not in free)
    )


def _remediate(demo: Path, cfg: DemoConfig, variant: dict, seed: int, out: Path) -> dict:
    """Remediate unless ``out`` is finished on today's prompts; seconds per step, CPU threads.

    A model tuned on other prompts or settings is tuned again, and its audit (``out``'s
    sibling) dropped.
    """
    rcfg = _tuning(cfg, variant, seed)
    record_file = out / "remediation.json"
    if record_file.is_file() and not _tuned(out, variant, rcfg):
        shutil.rmtree(out.parent / "audit", ignore_errors=True)
        shutil.rmtree(out)
    if (out / "model_index.json").is_file():
        record = json.loads(record_file.read_text())
        # Runs recorded before the thread count was kept used the default, 2.
        return {
            "seconds_per_step": record.get("seconds_per_step"),
            "threads": record.get("threads", 2),
            "steps_done": record["steps_done"],
        }
    start = time.perf_counter()
    remediate(
        RemediationJob(
            checkpoint=demo / "models" / "t2medi",
            classifier=demo / "models" / variant.get("guide", "classifier"),
            ensemble=[demo / "models" / g for g in variant.get("ensemble", ())],
            target=Target.load(demo / "target.json"),
            prompts=prompts_of(variant),
            audit_prompts=audit_prompts_of(variant),
            out=out,
            config=rcfg,
            image_encoders=[(demo / "models" / "clip", 1.0)],
            overwrite=True,
        )
    )
    elapsed = time.perf_counter() - start
    record = json.loads((out / "remediation.json").read_text())
    # a run that stopped early (keep="first-within") took fewer steps than configured
    done = record["steps_done"]
    timing = {"seconds_per_step": elapsed / done if done else None,
              "threads": torch.get_num_threads()}  # fmt: skip
    (out / "remediation.json").write_text(json.dumps({**record, **timing}))
    return {**timing, "steps_done": done}


def _point(est: dict | Estimate) -> float | None:
    """A share's value, or the bound of a censored one (from a row's stored estimate)."""
    e = est if isinstance(est, Estimate) else estimate_from_json(est)
    if e is None:
        return None
    return e.value if e.value is not None else e.bound[1] if e.bound else None


def _support(share: Any) -> dict:
    return {"share": share.share, "ci": list(share.ci), "n": share.n}


def _male_shares(audit: AuditResult) -> dict[str, Estimate]:
    """The PACC male share by the audit's evaluator and by each reader of the same images."""
    shares = {"evaluator": audit.share("male")}
    return shares | {r.name: r.proportions["male"] for r in audit.readers.readers}


def row_of(
    name: str, seed: int | None, variant: dict | None, audit: AuditResult, timing: dict
) -> dict:
    """One run's numbers from its audit (estimates stored as ``audit.json`` writes them)."""
    readers = audit.readers
    shares = _male_shares(audit)
    guides = guides_of(variant) if variant is not None else []
    gap = None
    if guides and all(_point(shares[g]) is not None for g in guides):
        gap = float(np.mean([_point(shares[g]) for g in guides])) - _point(shares["evaluator"])
    return {
        "variant": name,
        "seed": seed,
        "guides": guides,
        "male": {k: e.to_json() for k, e in shares.items()},
        "gap": gap,
        # the evaluator's male label share on each held-out prompt (a prompt the tuning moves
        # past the target shows here before it shows in the pooled share)
        "evaluator_by_prompt": [p.counts["male"] / p.n for p in audit.by_prompt],
        "kl": audit.kl().to_json(),
        "quality": audit.quality.by_group,
        "seconds_per_step": timing.get("seconds_per_step"),
        "threads": timing.get("threads"),
        "steps_done": timing.get("steps_done"),
        "outside_support": {
            s.space: {
                "overall": _support(s.overall),
                "by_group": {g: _support(x) for g, x in s.by_group.items()},
            }
            for s in readers.support
        },
        "target_male": audit.target["male"],
    }


def _config(demo: Path) -> DemoConfig:
    """The demo settings that made ``demo``'s models (its training seed, its guides)."""
    doc = demo / "demo.json"
    seed = json.loads(doc.read_text())["config"]["seed"] if doc.is_file() else 0
    return DemoConfig(
        out=demo, seed=seed, robust_guide=(demo / "models" / "classifier-robust").is_dir()
    )


def measure(
    demo: Path,
    plan: dict[str, list[int]],
    *,
    cached: bool = False,
    skipped: list | None = None,
    draw: bool = False,
    draw_name: str | None = None,
) -> list[dict]:
    """Every (variant, seed) of ``plan``; finished runs under ``DEMO/transfer/`` are reused.

    With ``cached``, a run whose remediated model is not finished is left out (and its
    ``variant-sSEED`` name appended to ``skipped``) instead of computed. With ``draw``,
    ``demo`` is another draw of the models (a demo folder trained with another seed): its
    settings are read from its ``demo.json`` and its rows keep that seed as ``draw`` (and
    ``draw_name``, when given, as the name the tables show instead of ``seed N``: a demo of the
    example's seed trained again on another machine is another draw of the same seed).
    """
    cfg = _config(demo) if draw else DemoConfig(out=demo, robust_guide=True)
    run_demo(cfg, until="reader", log=print)
    work = demo / "transfer"
    # the biased model's gap: how far the training classifier reads it from the evaluator before
    # any tuning (the tuning cannot know that offset)
    rows = [row_of("biased", None, {}, _audit(demo, demo / "models" / "t2medi",
                                                 work / "audit-biased", cfg), {})]  # fmt: skip
    for name, seeds in plan.items():
        for seed in seeds:
            run = work / f"{name}-s{seed}"
            variant = VARIANTS[name]
            if cached and not _tuned(run / "model", variant, _tuning(cfg, variant, seed)):
                if skipped is not None:
                    where = draw_name or f"seed {cfg.seed}"
                    skipped.append(_run_name({"variant": name, "seed": seed,
                                              "draw": cfg.seed if draw else None,
                                              "draw_name": where}))  # fmt: skip
                continue
            timing = _remediate(demo, cfg, variant, seed, run / "model")
            audit = _audit(demo, run / "model", run / "audit", cfg)
            rows.append(row_of(name, seed, variant, audit, timing))
            print(f"{name}, seed {seed}: done", flush=True)
    for r in rows:
        r["draw"] = cfg.seed if draw else None
        if draw and draw_name:
            r["draw_name"] = draw_name
    return rows


def sampler_check(demo: Path, name: str, seed: int) -> dict | None:
    """One T = 10 run's held-out audit drawn again at T = 10 (its regular audit draws 25).

    The same seeds at both step counts, read by the evaluator and every guide: how far the
    reading of a model tuned at T = 10 moves when the audit draws with more steps.
    """
    run = demo / "transfer" / f"{name}-s{seed}"
    if not (run / "audit" / "audit.json").is_file():
        return None
    cfg = _config(demo)
    steps = VARIANTS[name]["tuning"]["sampling_steps"]
    again = _audit(demo, run / "model", run / f"audit-steps{steps}", cfg, steps=steps,
                   quality=False)  # fmt: skip
    audits = ((steps, again), (cfg.audit_generation.steps, AuditResult.load(run / "audit")))
    by_steps = {str(n): {r: e.to_json() for r, e in _male_shares(a).items()} for n, a in audits}
    return {"variant": name, "seed": seed, "draw": cfg.seed, "male_by_audit_steps": by_steps}


#: The start of the names of rows read off whole demo runs; each adds the run's guide.
DEMO_ROWS = "demo (full run"


def _demo_name(guide: str) -> str:
    return f"{DEMO_ROWS}, guide {guide})"


def _is_demo(variant: str) -> bool:
    return variant.startswith(DEMO_ROWS)


def demo_rows(folders: list[Path]) -> list[dict]:
    """One row per finished demo folder: its remediated model's audit (held-out prompts, the
    evaluator, read by every guide and the reader), labelled with the demo's training seed.

    The demo runs the default with its own settings (64 images per held-out prompt),
    and each folder retrains every model from its seed: this is the run-to-run spread a user
    would see, where the variant rows hold the trained models fixed. Each row also keeps the
    biased model's evaluator reading (``before``: the models differ by folder) and the male
    share the quick audit of the kept weights reported (the training classifier, corrected, on
    the selection prompts, or the training prompts for a run that kept its last weights).
    """
    rows = []
    for folder in folders:
        doc = json.loads((folder / "demo.json").read_text())
        audit = AuditResult.load(folder / "after")
        tuned = json.loads((folder / "models" / "t2medi-fair" / "remediation.json").read_text())
        variant = {
            "guide": Path(tuned["classifier"]).name,
            "ensemble": tuple(Path(p).name for p in tuned.get("ensemble", ())),
        }
        row = row_of(_demo_name(variant["guide"]), doc["config"]["seed"], variant, audit, {})
        row["before_evaluator"] = AuditResult.load(folder / "before").share("male").to_json()
        fair = folder / "models" / "t2medi-fair"
        last = RemediationResult(path=fair, data=tuned, seconds=tuned["seconds"]).final_audit
        row["quick_audit_male"] = {
            "share": (last.get("share_corrected") or last["share"])["male"],
            "n": last["n"],
            "step": last["step"],
            "prompts": "selection" if tuned.get("audit_prompts") else "training",
        }
        rows.append(row)
    return rows


def draw_of(row: dict) -> str | None:
    """Which models a row's run started from: ``None`` for the example's, else the draw's name
    (``seed N`` for a demo trained with another seed, or the name given with ``--draw-name``)."""
    if row.get("draw") is None:
        return None
    return row.get("draw_name") or f"seed {row['draw']}"


def _run_name(row: dict) -> str:
    """How ``not_run`` names a run: ``variant-sSEED``, with its draw when not the example's."""
    draw = draw_of(row)
    return f"{row['variant']}-s{row['seed']}" + ("" if draw is None else f" (models of {draw})")


def group_of(row: dict) -> str:
    """A row's variant, with the draw of its models when they are another draw's."""
    draw = draw_of(row)
    return row["variant"] if draw is None else f"{row['variant']} (models of {draw})"


def tuning_gaps(rows: list[dict], *, key: Any = draw_of) -> None:
    """Set each tuned row's ``gap_before`` (its draw's biased model's gap, read with the same
    guides) and ``tuning_gap`` (its gap minus that): the part of the transfer gap the tuning
    made, beside the offset the guides and the evaluator already had on the generator's images.
    ``key``: which biased row is a row's (default: the one of its draw).

    The biased model's gap is the mean over the row's guides of each guide's reading minus the
    evaluator's on the biased model's held-out images (``None`` where one of them is missing or
    censored).
    """
    biased = {key(r): r for r in rows if r["variant"] == "biased"}
    for r in rows:
        # a whole demo run retrained its own biased model, which the record does not read
        if r["variant"] == "biased" or _is_demo(r["variant"]):
            continue
        before = biased.get(key(r))
        gap = None
        if before is not None and r["guides"]:
            points = [_point(before["male"][g]) if g in before["male"] else None
                      for g in ("evaluator", *r["guides"])]  # fmt: skip
            if None not in points:
                gap = float(np.mean(points[1:])) - points[0]
        r["gap_before"] = gap
        r["tuning_gap"] = None if gap is None or r["gap"] is None else r["gap"] - gap


def _readers_spread(row: dict) -> float | None:
    """Largest minus smallest PACC male share among all readers of one run's images."""
    points = [_point(e) for e in row["male"].values()]
    return None if None in points else float(max(points) - min(points))


def closest(doc: dict) -> str | None:
    """The variant whose evaluator reading is nearest the target on average over its seeds."""
    scored = {
        k: v["target_miss"]
        for k, v in doc["summary"].items()
        if v.get("target_miss") is not None and not _is_demo(k) and v.get("draw") is None
    }
    return min(scored, key=scored.get) if scored else None


def variant_summary(rows: list[dict], target: float) -> dict:
    """Per variant: seeds, mean gap (and the tuning's part of it), the evaluator's mean, spread
    and miss, what holds. Sets the rows' ``gap_before`` and ``tuning_gap``
    (:func:`tuning_gaps`)."""
    tuning_gaps(rows)
    variants = {}
    for name in dict.fromkeys(group_of(r) for r in rows if r["variant"] != "biased"):
        runs = [r for r in rows if group_of(r) == name]
        evals = [_point(r["male"]["evaluator"]) for r in runs]
        gaps = [r["gap"] for r in runs if r["gap"] is not None]
        own = [r.get("tuning_gap") for r in runs]

        def holds(reader: str, runs: list[dict] = runs) -> bool:
            cis = [estimate_from_json(r["male"][reader]).ci for r in runs]
            return all(ci is not None and ci[0] <= target <= ci[1] for ci in cis)

        spreads = [_readers_spread(r) for r in runs]
        variants[name] = {
            "draw": runs[0].get("draw"),
            "seeds": [r["seed"] for r in runs],
            "readers_spread": float(np.mean(spreads)) if None not in spreads else None,
            "target_miss": float(np.mean([abs(e - target) for e in evals]))
            if None not in evals
            else None,
            "mean_gap": float(np.mean(gaps)) if gaps else None,
            "gap_before": runs[0].get("gap_before"),
            "mean_tuning_gap": None if None in own else float(np.mean(own)),
            "evaluator_mean": float(np.mean(evals)) if None not in evals else None,
            "evaluator_spread": float(np.ptp(evals)) if None not in evals else None,
            "evaluator_holds_target": holds("evaluator"),
            "reader_holds_target": holds("reader"),
        }
    return variants


def _fid_kid_at(rows: list[dict], n: str | None) -> None:
    """Set each row's overall ``fid`` and ``kid`` at subsample size ``n``."""
    for r in rows:
        at = r["quality"]["overall"].at(n)
        r["fid"] = at.fid.to_json() if at and at.fid else None
        r["kid"] = at.kid.to_json() if at and at.kid else None


def fid_kid_at_common_n(rows: list[dict]) -> str | None:
    """Set each row's overall ``fid`` and ``kid`` at one n all rows have; that n."""
    n = common_size([r["quality"].get("overall") for r in rows])
    _fid_kid_at(rows, n)
    return n


def variants_defined() -> dict:
    """:data:`VARIANTS` as the record stores them."""
    return {
        k: {a: list(b) if isinstance(b, tuple) else b for a, b in v.items()}
        for k, v in VARIANTS.items()
    }


def _prdc_at(rows: list[dict], n_prdc: dict) -> None:
    """Set each row's per-group recall and coverage at ``n_prdc`` (a group collapsed onto
    prototypes shows there) and drop its quality entries."""
    for r in rows:
        for g, n in n_prdc.items():
            pr = r["quality"][g].at(n)
            prdc = (pr.prdc if pr else None) or {}
            r[f"recall_{g}"], r[f"coverage_{g}"] = (
                prdc[k].to_json() if prdc.get(k) else None for k in ("recall", "coverage")
            )
        del r["quality"]


def merge_rows(old: list[dict], new: list[dict], *, key: Any) -> tuple[list[dict], list[str]]:
    """``old`` without the rows whose ``key`` a row of ``new`` has, then ``new``; and the
    replaced rows' names (:func:`group_of`)."""
    keys = {key(r) for r in new}
    return [r for r in old if key(r) not in keys] + new, [
        group_of(r) for r in old if key(r) in keys
    ]


def add_rows(doc: dict, rows: list[dict]) -> list[str]:
    """Put freshly measured ``rows`` into the record ``doc`` and summarise it again.

    A row replaces the record's row of the same run (variant, seed and draw); the others are
    appended. Their FID/KID and recall/coverage are taken at the record's common sizes, so the
    new rows compare with the old ones. Returns the runs that were replaced (by variant and
    draw).

    Raises:
        SystemExit: a new row has fewer images than the record's common size.
    """
    n, n_prdc = doc["quality_n"], doc["prdc_n"]
    short = [group_of(r) for r in rows if r["quality"]["overall"].at(n) is None]
    if short:
        sys.exit(f"--add: fewer than the record's {n} images for FID/KID in {short}")
    _fid_kid_at(rows, n)
    _prdc_at(rows, n_prdc)

    doc["rows"], replaced = merge_rows(
        doc["rows"], rows, key=lambda r: (r["variant"], r["seed"], draw_of(r))
    )
    doc["variants_defined"] = variants_defined()
    doc["summary"] = variant_summary(doc["rows"], doc["target_male"])
    return replaced


def summarise(rows: list[dict], *, steps: int, prompts_per_step: int) -> dict:
    """The record: rows with FID/KID at one n all runs have, and a summary per variant."""
    n = fid_kid_at_common_n(rows)
    groups = [g for g in rows[0]["quality"] if g != "overall"]
    n_prdc = {g: prdc_size([r["quality"].get(g) for r in rows]) for g in groups}
    _prdc_at(rows, n_prdc)
    target = rows[0]["target_male"]
    variants = variant_summary(rows, target)
    return {
        "prompts": "held-out (demo.HELD_OUT_PROMPTS); remediation on demo.TRAIN_PROMPTS "
        "(varied-prompts: demo.VARIED_TRAIN_PROMPTS)",
        "evaluator": "models/evaluator (ResNet, eval_train/eval_val subjects)",
        "reader": "models/reader (radiomics + logistic regression, its own phantom subjects)",
        "n_per_prompt": N_PER_PROMPT,
        "prompts_per_step": prompts_per_step,
        "steps": steps,
        "quality_n": n,
        "prdc_n": n_prdc,
        "target_male": target,
        "variants_defined": variants_defined(),
        "rows": rows,
        "summary": variants,
    }


def _pp(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:+.1f} pp".replace("-", "−")


def _per_group(r: dict, key: str, groups: list[str]) -> str:
    values = [r.get(f"{key}_{g}") for g in groups]
    return " / ".join("–" if v is None else f"{v['mean']:.2f}" for v in values)


def table(doc: dict) -> str:
    n = doc["quality_n"]
    groups = list(doc.get("prdc_n") or {})
    prdc = any(r.get(f"recall_{g}") for r in doc["rows"] for g in groups)
    lines = [
        f"Target male share {doc['target_male']:.0%}; {doc['steps']} steps (a variant named "
        f"…-N: N steps; a run that stopped early, `first-within`, names its steps beside its "
        f"s/step) × {doc['prompts_per_step']} prompt(s) per step; audits of "
        f"{doc['n_per_prompt']} images per held-out prompt. PACC male share with 95% interval "
        f"by each reader; the evaluator's male label share on each held-out prompt, in the "
        f"order of `demo.HELD_OUT_PROMPTS`."
        + (f" Planned but not run: {', '.join(doc['not_run'])}." if doc.get("not_run") else ""),
        "",
        "| variant | seed | evaluator | radiomics reader | classifier (plain ResNet) "
        "| classifier-b | classifier-robust | gap (guides − evaluator) "
        "| tuning's part (gap − biased model's) | KL, evaluator "
        f"| FID (n = {n}) | KID "
        + (f"| recall {' / '.join(groups)} | coverage {' / '.join(groups)} " if prdc else "")
        + "| outside support (evaluator / reader) | evaluator's male labels by prompt | s/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if prdc else ""),
    ]
    for r in doc["rows"]:
        m = r["male"]
        out = r["outside_support"]
        ev = out.get("evaluator") or out.get("classifier")
        cells = [
            group_of(r),
            "–" if r["seed"] is None else str(r["seed"]),
            *(format_estimate(m[k], ".3f") if k in m else "–" for k in
              ("evaluator", "reader", "classifier", "classifier-b", "classifier-robust")),
            _pp(r["gap"]),
            _pp(r.get("tuning_gap")),
            format_estimate(r["kl"], ".4f"),
            "–" if not r["fid"] else f"{r['fid']['mean']:.2f} ± {r['fid']['sd']:.2f}",
            "–" if not r["kid"] else f"{r['kid']['mean']:.3f} ± {r['kid']['sd']:.3f}",
            *([_per_group(r, "recall", groups), _per_group(r, "coverage", groups)]
              if prdc else []),
            f"{ev['overall']['share']:.0%} / {out['reader']['overall']['share']:.0%}",
            " / ".join(f"{x:.2f}" for x in r["evaluator_by_prompt"])
            if r.get("evaluator_by_prompt") else "–",
            "–" if r["seconds_per_step"] is None
            else f"{r['seconds_per_step']:.1f} ({r.get('threads', 2)} thr."
            + ("" if r.get("steps_done") in (None, doc["steps"])
               else f"; {r['steps_done']} steps") + ")",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| variant | seeds | mean gap | biased model's gap | tuning's part "
        "| evaluator mean (spread) | evaluator holds target | reader holds target "
        "| readers' spread |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for name, s in doc["summary"].items():
        mean = "–" if s["evaluator_mean"] is None else f"{s['evaluator_mean']:.3f}"
        if s["evaluator_mean"] is not None and len(s["seeds"]) > 1:
            mean += f" ({s['evaluator_spread'] * 100:.1f} pp)"
        every = "every seed" if len(s["seeds"]) > 1 else "yes"
        lines.append(
            f"| {name} | {', '.join(map(str, s['seeds']))} | {_pp(s['mean_gap'])} | "
            f"{_pp(s.get('gap_before'))} | {_pp(s.get('mean_tuning_gap'))} | {mean} | "
            f"{every if s['evaluator_holds_target'] else 'no'} | "
            f"{every if s['reader_holds_target'] else 'no'} | "
            f"{_pp(s.get('readers_spread')).lstrip('+')} |"
        )
    for check in doc.get("sampler_check") or []:
        by = check["male_by_audit_steps"]
        lines += ["", f"`{check['variant']}` seed {check['seed']}'s model on the models of seed "
                  f"{check['draw']} (tuned at T = {min(by, key=int)}), its held-out audit drawn "
                  "at each step count with the same seeds:", ""]  # fmt: skip
        lines += [
            f"- {steps} steps: "
            + "; ".join(f"{k} {format_estimate(e, '.3f')}" for k, e in shares.items())
            for steps, shares in by.items()
        ]
    demos = [r for r in doc["rows"] if r.get("before_evaluator")]
    if demos:
        lines += ["", "Whole demo runs, each on its own models:", ""]
        lines += [
            f"- training seed {r['seed']}: the biased model read by the evaluator "
            f"{format_estimate(r['before_evaluator'], '.3f')}; the kept weights' quick audit "
            f"(the training classifier on {r['quick_audit_male']['n']} images of the "
            f"{r['quick_audit_male'].get('prompts', 'training')} prompts, step "
            f"{r['quick_audit_male']['step']}) {r['quick_audit_male']['share']:.3f};"
            f" after, the evaluator on the held-out prompts "
            f"{format_estimate(r['male']['evaluator'], '.3f')}."
            for r in demos
        ]
    return "\n".join(lines)


def summary_text(doc: dict) -> str:
    """The README's paragraph, written from the record (no number typed by hand)."""
    target = doc["target_male"]
    parts = []
    for name, s in doc["summary"].items():
        runs = [r for r in doc["rows"] if group_of(r) == name]
        ev = ", ".join(format_estimate(r["male"]["evaluator"], ".1%") for r in runs)
        rd = ", ".join(format_estimate(r["male"]["reader"], ".1%") for r in runs)
        spread = s.get("readers_spread")
        label = f"`{name}`"
        if _is_demo(name):
            label += f" (training seeds {', '.join(str(r['seed']) for r in runs)}; demo settings)"
        parts.append(
            f"{label}: evaluator {ev}, radiomics reader {rd}, mean gap {_pp(s['mean_gap'])}"
            + ("" if spread is None else f", readers' spread {spread * 100:.1f} pp")
        )
    seeds = sorted(
        {r["seed"] for r in doc["rows"] if r["seed"] is not None and not _is_demo(r["variant"])}
    )
    return (
        f"Measured on the demo's biased model (target {target:.0%} male; PACC male share on the "
        f"held-out prompts; {doc['steps']} steps × {doc['prompts_per_step']} prompt per step; "
        f"remediation seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}): "
        + "; ".join(parts)
        + ". The gap is the guides' own reading minus the evaluator's; the readers' spread is the "
        "largest minus the smallest PACC share among the readers of the same images (five; four "
        "in a demo run without --robust-guide; mean over seeds)."
        + _closest_text(doc)
        + _offset_text(doc)
        + _readers_text(doc)
        + _cut_text(doc)
    )


def reader_room(row: dict, target: float) -> tuple[float, float, float | None, float | None]:
    """How far the evaluator and the radiomics reader read one model's images apart, and where
    the evaluator's reading would have to lie for both intervals to hold ``target``.

    With ``d`` = evaluator − reader fixed by the images, both intervals (half-widths ``h_e``,
    ``h_r``) hold the target exactly when the evaluator reads within ``[t − h_e, t + h_e]`` and
    within ``[t + d − h_r, t + d + h_r]``; they meet only when ``|d| ≤ h_e + h_r``.

    Returns:
        ``d``, ``h_e + h_r``, and the lowest and highest evaluator reading that would do
        (``None`` when none would).
    """
    ev, rd = row["male"]["evaluator"], row["male"]["reader"]
    d = ev["value"] - rd["value"]
    he, hr = (ev["ci"][1] - ev["ci"][0]) / 2, (rd["ci"][1] - rd["ci"][0]) / 2
    lo, hi = max(target - he, target + d - hr), min(target + he, target + d + hr)
    return d, he + hr, *((lo, hi) if lo <= hi else (None, None))


def _offset_text(doc: dict) -> str:
    """Per draw, the biased model's gap and the range of the tuning's part of the gap."""
    parts, own = [], []
    for draw in dict.fromkeys(draw_of(r) for r in doc["rows"]):
        rows = [r for r in doc["rows"] if draw_of(r) == draw and not _is_demo(r["variant"])]
        biased = [r for r in rows if r["variant"] == "biased" and r["gap"] is not None]
        tuned = [r["tuning_gap"] for r in rows if r.get("tuning_gap") is not None]
        if not biased or not tuned:
            continue
        own += tuned
        label = "the example's models" if draw is None else f"the models of {draw}"
        parts.append(
            f"on {label} the biased model {_pp(biased[0]['gap'])}, the tuning's part "
            f"{_pp(min(tuned))} to {_pp(max(tuned))} ({len(tuned)} runs)"
        )
    if not parts:
        return ""
    small = max(abs(x) for x in own) <= 0.05
    return (
        " Before any tuning the training classifier already reads the biased model's images "
        "apart from the evaluator; the tuning's part of the gap is the gap after tuning minus "
        "that offset (same guides): "
        + "; ".join(parts)
        + (
            ". Every run's tuning part (point estimates) is within ±5 pp: what the guides and "
            "the evaluator still disagree on after tuning is mostly the offset they had on the "
            "generator's images before it, not a pattern the tuning taught the guide."
            if small
            else ". Some run's tuning part exceeds ±5 pp: there the tuning itself moved the "
            "guides apart from the evaluator."
        )
    )


def _readers_text(doc: dict) -> str:
    """Per draw, the evaluator's distance from the radiomics reader on the same images."""
    t = doc["target_male"]
    parts = []
    for draw in dict.fromkeys(draw_of(r) for r in doc["rows"]):
        rows = [r for r in doc["rows"] if draw_of(r) == draw and not _is_demo(r["variant"])
                and "reader" in r["male"] and "evaluator" in r["male"]]  # fmt: skip
        tuned = [r for r in rows if r["seed"] is not None]
        biased = [r for r in rows if r["seed"] is None]
        if not tuned:
            continue
        rooms = [reader_room(r, t) for r in tuned]
        ds = [x[0] for x in rooms]
        d, allow, lo, hi = max(rooms, key=lambda x: abs(x[0]))
        where = (
            "no evaluator reading would let both hold the target"
            if lo is None
            else f"both hold the target only with the evaluator between {lo:.1%} and {hi:.1%}"
        )
        label = "the example's models" if draw is None else f"the models of {draw}"
        parts.append(
            f"on {label} {_pp(min(ds))} to {_pp(max(ds))}"
            + (f" (the biased model {_pp(reader_room(biased[0], t)[0])})" if biased else "")
            + f"; at the widest, {_pp(d)} against {allow * 100:.1f} pp that the two intervals' "
            f"half-widths allow together: {where}"
        )
    if not parts:
        return ""
    return (
        " The evaluator minus the radiomics reader on the same remediated images: "
        + "; ".join(parts)
        + ". The tuning reads with neither, so it cannot aim at that distance."
    )


def _cut_text(doc: dict) -> str:
    run = {r["variant"] for r in doc["rows"]}
    cut = [v for v in doc["variants_defined"] if v not in run]
    names = ", ".join(f"`{v}`" for v in cut)
    text = (
        f" Defined but not run in this record (left out with `--variants`): {names}." if cut else ""
    )
    if doc.get("not_run"):
        text += f" Planned but not run yet (`--cached`): {', '.join(doc['not_run'])}."
    return text


def _closest_text(doc: dict) -> str:
    best = closest(doc)
    if best is None:
        return ""
    s = doc["summary"][best]
    holds = "every seed's" if len(s["seeds"]) > 1 else "its"
    verdict = (
        f"{holds} evaluator interval holds the target"
        if s["evaluator_holds_target"]
        else "the evaluator's interval misses the target in some seed"
    )
    gap_ok = s["mean_gap"] is not None and abs(s["mean_gap"]) <= 0.05
    within = [
        f"`{k}` (evaluator {'on' if v['evaluator_holds_target'] else 'off'} target)"
        for k, v in doc["summary"].items()
        if not _is_demo(k)
        and v.get("draw") is None
        and v["mean_gap"] is not None
        and abs(v["mean_gap"]) <= 0.05
    ]
    return (
        (f" Within the ±5 pp gap bar: {', '.join(within)}." if within else "")
        + f" Closest to the target under the evaluator: `{best}` (mean miss "
        f"{s['target_miss'] * 100:.1f} pp over seeds {', '.join(map(str, s['seeds']))}; "
        f"{verdict}; mean gap {_pp(s['mean_gap'])}, "
        f"{'within' if gap_ok else 'outside'} the ±5 pp bar)."
    )


def splice(path: Path, text: str, name: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text()
    if start not in doc:
        doc += f"\n{start}\n{end}\n"
    pattern = re.escape(start) + ".*?" + re.escape(end)
    path.write_text(re.sub(pattern, lambda m: f"{start}\n{text}\n{end}", doc, flags=re.S))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("demo", nargs="?", type=Path, default=Path("reports/demo"))
    parser.add_argument(
        "--variants",
        default=None,
        help="variants run on DEMO (default: every one; with --add, none unless named)",
    )
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument(
        "--default-seeds",
        default=",".join(map(str, DEFAULT_SEEDS)),
        help=f"seeds of the demo's default variant ({DEFAULT_VARIANT})",
    )
    parser.add_argument(
        "--seeds-of",
        action="append",
        default=[],
        metavar="VARIANT=0,1,2",
        help="seeds of one variant instead of --seeds (repeatable)",
    )
    parser.add_argument("--render", action="store_true")
    parser.add_argument(
        "--add",
        action="store_true",
        help="put the runs measured now into the committed record (a row of the same variant, "
        "seed and draw is replaced) instead of writing a new record of these runs only",
    )
    parser.add_argument(
        "--demo-runs",
        type=lambda v: [Path(p) for p in v.split(",") if p],
        default=[],
        help="finished demo folders (e.g. reports/demo,reports/demo-seed1) added as rows",
    )
    parser.add_argument(
        "--draw",
        action="append",
        type=Path,
        default=[],
        metavar="DEMO_DIR",
        help="another draw of the models (a demo folder made with another --seed; repeatable): "
        "--draw-variants are run on it too, with --draw-seeds",
    )
    parser.add_argument(
        "--draw-name",
        default=None,
        help="the name the tables give the --draw models instead of 'seed N' (e.g. the "
        "example's seed trained again on another machine)",
    )
    parser.add_argument("--draw-variants", default=f"{DEFAULT_VARIANT}")
    parser.add_argument("--draw-seeds", default="1")
    parser.add_argument(
        "--sampler-check",
        action="append",
        default=[],
        metavar="[DEMO_DIR:]VARIANT=SEED",
        help="a T10… run whose held-out audit is drawn again at its own T (repeatable; "
        "DEMO_DIR: the run of another --draw)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads (s/step is measured with them)"
    )
    parser.add_argument(
        "--cached",
        action="store_true",
        help="only the finished runs of the plan (the JSON lists the others as not run)",
    )
    args = parser.parse_args()
    if args.render:
        doc = json.loads((HERE / "transfer.json").read_text())
        doc["summary"] = variant_summary(doc["rows"], doc["target_male"])
    else:
        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        if args.variants is not None:
            variants = [v for v in args.variants.split(",") if v]
        else:  # every variant, or with --add only the draws' runs
            variants = [] if args.add else list(VARIANTS)
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            sys.exit(f"unknown variants {unknown}; expected some of {', '.join(VARIANTS)}")
        seeds = [int(s) for s in args.seeds.split(",") if s]
        default_seeds = [int(s) for s in args.default_seeds.split(",") if s]
        plan = {v: default_seeds if v == DEFAULT_VARIANT else seeds for v in variants}
        for item in args.seeds_of:
            name, _, given = item.partition("=")
            if name not in plan:
                sys.exit(f"--seeds-of {item}: {name!r} is not among --variants")
            plan[name] = [int(x) for x in given.split(",") if x]
        skipped: list[str] = []
        rows = measure(args.demo, plan, cached=args.cached, skipped=skipped) if plan else []
        draw_plan = {
            v: [int(x) for x in args.draw_seeds.split(",") if x]
            for v in args.draw_variants.split(",")
            if v
        }
        for folder in args.draw:
            rows += measure(
                folder,
                draw_plan,
                cached=args.cached,
                skipped=skipped,
                draw=True,
                draw_name=args.draw_name,
            )
        rows += demo_rows(args.demo_runs)
        checks = []
        for item in args.sampler_check:
            where, _, run = item.rpartition(":")
            name, _, seed = run.partition("=")
            checks.append(sampler_check(Path(where) if where else args.demo, name, int(seed)))
        checks = [c for c in checks if c is not None]
        if args.add:
            doc = json.loads((HERE / "transfer.json").read_text())
            replaced = add_rows(doc, rows)
            print(f"added {len(rows) - len(replaced)} rows, replaced {replaced or 'none'}")
            done = {_run_name(r) for r in rows}
            doc["not_run"] = sorted((set(doc["not_run"]) | set(skipped)) - done)
            doc["sampler_check"] += checks
            doc["seconds_added"] = doc.get("seconds_added", 0.0) + time.perf_counter() - start
        else:
            tuning = DemoConfig(out=args.demo).remediation
            doc = summarise(rows, steps=tuning.steps, prompts_per_step=tuning.prompts_per_step)
            doc["not_run"] = skipped
            doc["sampler_check"] = checks
            doc["seconds"] = time.perf_counter() - start
    (HERE / "transfer.json").write_text(json.dumps(doc, indent=2) + "\n")
    splice(HERE / "RESULTS.md", table(doc), "transfer-table")
    splice(HERE.parent / "README.md", summary_text(doc), "transfer-summary")
    print(table(doc))


if __name__ == "__main__":
    main()
