"""The audit's statistics stage: the finished shards in, every estimate and warning out.

Shares five ways with intervals, distances to the target, the on-target test, per-prompt
estimates and their spread, the sample size a precision needs, FID/KID per group, the joint
cells of several attributes and the readers' section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import AuditConfig
from ..generation.engine import Shard, iter_shards
from ..metrics.accumulators import ShardAggregate
from ..metrics.estimates import estimate_shares, headline_reading
from ..metrics.frame import LABEL_SHIFT_Z, dispersion, summarise
from ..metrics.functional import wilson_interval
from ..progress import ProgressCallback, report
from .joint import joint_sections
from .load import Loaded
from .quality import quality_by_group
from .readers import reader_sections, reader_warnings

__all__ = ["Estimates", "estimate"]

SAMPLE_SIZE_NOTE = (
    "needed_total: images in all for a ± half-width interval on the pooled share; "
    "needed_per_prompt: images per prompt for that interval on each prompt's own share "
    "(the largest over prompts); floor_half_width: the smallest half-width the held-out "
    "confusion matrix's own error allows, however many images are drawn; null: unreachable"
)


@dataclass
class Estimates:
    """The statistics of one audit (the parts of ``audit.json`` that are measurements).

    Attributes:
        data: The aggregated shards (probabilities, indices, seeds, sample images, moments).
        stored: The classifiers' stored outputs (several attributes: side by side).
        probs: Group probabilities per image (joint cells for several attributes).
        overall: The pooled summary (shares, distances, tests, counts).
        by_prompt: Each prompt's summary.
        reading: The headline reading.
        spread: How prompts differ.
        sample_size: Images a requested precision needs.
        quality: FID/KID per group (with a reference).
        attributes: Per-attribute sections (several attributes).
        joint: The joint cells (several attributes).
        readers: The readers' section.
        warnings: Everything the numbers need said beside them.
        conditioning: Conditional mode: each named group's fidelity and the marginal share
            under the requests' distribution.
    """

    data: dict[str, Any]
    stored: np.ndarray
    probs: np.ndarray
    overall: dict[str, Any]
    by_prompt: list[dict[str, Any]]
    reading: str
    spread: dict[str, Any]
    sample_size: dict[str, Any]
    quality: dict[str, Any] | None
    attributes: dict[str, Any] | None
    joint: dict[str, Any] | None
    readers: dict[str, Any] | None
    warnings: list[str]
    conditioning: dict[str, Any] | None = None


def _kw(cfg: AuditConfig, loaded: Loaded) -> dict[str, Any]:
    return {
        "heldout": loaded.heldout,
        "n_boot": cfg.n_boot,
        "confidence": cfg.confidence,
        "smoothing": cfg.smoothing,
        "half_width": cfg.half_width,
    }


def _by_prompt(
    cfg: AuditConfig,
    loaded: Loaded,
    probs: np.ndarray,
    target: np.ndarray,
    data: dict[str, Any],
    progress: Any,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Each prompt's summary (and the conditional share it names), and its replicates."""
    groups = loaded.groups
    pred = probs.argmax(1)
    by_prompt, prompt_estimates = [], []
    for i, prompt in enumerate(cfg.prompts):
        sel = data["prompt_index"] == i
        seed = cfg.generation.seed + 1 + i
        est = estimate_shares(probs[sel], loaded.heldout, n_boot=cfg.n_boot, seed=seed)
        prompt_estimates.append(est)
        entry = {
            "index": i,
            "prompt": prompt,
            **summarise(probs[sel], groups, target, seed=seed, estimates=est, **_kw(cfg, loaded)),
        }
        if loaded.named is not None:
            named = loaded.named[i]
            hit = int((pred[sel] == groups.index(named)).sum())
            reading = headline_reading(entry["proportions"])
            entry["conditional"] = {
                "named_group": named,
                "share": hit / int(sel.sum()),
                "ci": list(wilson_interval(hit, int(sel.sum()), confidence=cfg.confidence)),
                "method": "wilson, classifier's labels",
                "corrected": {"reading": reading, **entry["proportions"][reading][named]},
            }
        by_prompt.append(entry)
        report(progress, "statistics", i + 1, len(cfg.prompts) + 1)
    return by_prompt, prompt_estimates


def _conditioning(
    cfg: AuditConfig,
    loaded: Loaded,
    probs: np.ndarray,
    data: dict[str, Any],
    by_prompt: list[dict[str, Any]],
    prompt_estimates: list[Any],
) -> dict[str, Any]:
    """Conditioning fidelity per named group, and the marginal share under the requests' mix.

    Fidelity: the corrected share of images showing the group a request named (pooling the
    prompts that name it; a group one prompt names reuses that prompt's estimates, so the two
    tables print the same interval). Marginal: each prompt weighted by its group's share of requests
    (split equally among the prompts naming that group), corrected once with the classifier's
    error shared by all (:func:`~medfair_audit.metrics.estimates.mixture_estimates`).
    """
    from ..metrics.estimates import mixture_estimates
    from ..metrics.frame import proportions_entry

    groups, named, shares = loaded.groups, loaded.named, loaded.distribution["shares"]
    kw = {"n_boot": cfg.n_boot, "seed": cfg.generation.seed + 7919}
    parts = [probs[data["prompt_index"] == i] for i in range(len(cfg.prompts))]
    weights = [shares[g] / named.count(g) for g in named]
    fidelity = {}
    for g in dict.fromkeys(named):
        mine = [i for i, h in enumerate(named) if h == g]
        pooled = (
            prompt_estimates[mine[0]]
            if len(mine) == 1
            else estimate_shares(np.concatenate([parts[i] for i in mine]), loaded.heldout, **kw)
        )
        reading = headline_reading(pooled.point)
        hits = sum(int(by_prompt[i]["counts"][g]) for i in mine)
        n = sum(len(parts[i]) for i in mine)
        fidelity[g] = {
            "prompts": mine,
            "n": n,
            "labels": {"value": hits / n,
                       "ci": list(wilson_interval(hits, n, confidence=cfg.confidence))},
            "corrected": {"reading": reading,
                          **proportions_entry(pooled, reading, groups, loaded.heldout,
                                              cfg.confidence)[g]},
        }  # fmt: skip
    mixture = mixture_estimates(parts, weights, loaded.heldout, **kw)
    marginal = {
        r: proportions_entry(mixture, r, groups, loaded.heldout, cfg.confidence)
        for r in ("acc", "pacc")
    }
    return {
        "distribution": shares,
        "distribution_source": loaded.distribution["source"],
        "fidelity": fidelity,
        "marginal": marginal,
        "note": "fidelity: share of images classified as the group the request named, corrected "
        "for the classifier's held-out errors; marginal: the share of each group among the "
        "images of a use that requests the groups in the distribution's shares",
    }


def _sample_size(
    cfg: AuditConfig, overall: dict[str, Any], by_prompt: list[dict[str, Any]], reading: str
) -> dict[str, Any]:
    per_prompt_needed = [p.get("sample_size", {}).get("needed") for p in by_prompt]
    overall_size = overall.pop("sample_size", {})
    return {
        "reading": overall_size.get("reading", reading),
        "half_width": cfg.half_width,
        "confidence": cfg.confidence,
        "needed_total": overall_size.get("needed"),
        "needed_per_prompt": None
        if not per_prompt_needed or None in per_prompt_needed
        else max(per_prompt_needed),
        "floor_half_width": overall_size.get("floor_half_width"),
        "note": SAMPLE_SIZE_NOTE,
    }


def _share_warnings(est: Estimates) -> list[str]:
    """Label shift failing (overall or per prompt) and groups no image was classified as."""
    out = []
    summaries = [("overall", est.overall)] + [(f"prompt {p['index']}", p) for p in est.by_prompt]
    for where, summ in summaries:
        if any(e.get("label_shift_fails") for e in summ["proportions"][est.reading].values()):
            out.append(
                f"{where}: the {est.reading.upper()} share lies beyond [0, 1] by more than "
                f"{LABEL_SHIFT_Z} bootstrap standard deviations; the images do not look to the "
                "classifier as its held-out images do (label shift fails), so the corrected "
                "share there is only a bound at the boundary"
            )
    for g, n_g in est.overall["counts"].items():
        if n_g == 0:
            out.append(f"no generated image was classified '{g}'")
    return out


def estimate(
    cfg: AuditConfig,
    loaded: Loaded,
    folder: Path,
    plan: list[Shard],
    progress: ProgressCallback | None = None,
) -> Estimates:
    """Every statistic of the audit from its finished shards in ``folder``.

    The warnings that depend only on the inputs (truncated prompts, an ill-conditioned
    classifier, the remediation's independence) are added by the caller; these are the ones
    the data raise.
    """
    cset, groups = loaded.cset, loaded.groups
    target = np.array(cfg.target.vector(groups))
    agg = ShardAggregate(len(groups), to_groups=cset.joint if cset.multi else None)
    for shard in iter_shards(folder, plan):
        agg.add(shard)
    data = agg.finish()
    stored = data["probs"]  # several attributes: each classifier's outputs side by side
    probs = cset.joint(stored) if cset.multi else stored
    kw, seed = _kw(cfg, loaded), cfg.generation.seed
    report(progress, "statistics", 0, len(cfg.prompts) + 1)
    overall_est = estimate_shares(probs, loaded.heldout, n_boot=cfg.n_boot, seed=seed)
    overall = summarise(probs, groups, target, seed=seed, estimates=overall_est, **kw)
    by_prompt, prompt_estimates = _by_prompt(cfg, loaded, probs, target, data, progress)
    reading = headline_reading(overall["proportions"])
    spread = dispersion(
        prompt_estimates, by_prompt, cfg.prompts, groups, target, reading=reading,
        confidence=cfg.confidence, heldout=loaded.heldout, n_boot=cfg.n_boot, seed=seed,
    )  # fmt: skip
    est = Estimates(
        data, stored, probs, overall, by_prompt, reading, spread, {}, None, None, None, None, []
    )
    if loaded.ref_feats is not None:
        est.quality, more = quality_by_group(
            data["moments"], data["samples"], loaded.ref_feats, loaded.ref_labels, groups,
            draws=cfg.quality_draws, seed=seed, min_group_n=cfg.min_group_n,
            embedding=loaded.extractor.embedding,
            confidence=cfg.confidence,
        )  # fmt: skip
        est.warnings += more
        if cfg.frd:
            from .frd import frd_by_group

            est.quality["frd"] = frd_by_group(
                (s["images"] for s in iter_shards(folder, plan)), probs.argmax(1),
                loaded.ref_images, loaded.ref_labels, groups,
            )  # fmt: skip
    est.warnings += _share_warnings(est)
    if cset.multi:
        est.attributes, est.joint, more = joint_sections(
            cset, stored, cfg.target, overall, reading=reading, min_cell_n=cfg.min_cell_n,
            overall_estimates=overall_est, **kw, seed=seed,
        )  # fmt: skip
        est.warnings += more
    if loaded.spaces:
        est.readers = reader_sections(
            iter_shards(folder, plan), loaded.spaces, probs=probs, heldout=loaded.heldout,
            groups=groups, target=target, n_boot=cfg.n_boot, confidence=cfg.confidence,
            seed=seed,
        )  # fmt: skip
        est.warnings += reader_warnings(est.readers)
    if loaded.named is not None and loaded.heldout is not None:
        est.conditioning = _conditioning(cfg, loaded, probs, data, by_prompt, prompt_estimates)
    report(progress, "statistics", len(cfg.prompts) + 1, len(cfg.prompts) + 1)
    est.sample_size = _sample_size(cfg, overall, by_prompt, reading)
    return est
