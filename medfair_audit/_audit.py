"""``run_audit``: how far a text-to-image model's subgroup distribution is from a target.

The audit generates ``n_per_prompt`` images per prompt with per-image seeds (see
:mod:`medfair_audit.generation`), classifies each with the subgroup classifier, and reports the
subgroup proportions (raw, probabilistic, error-corrected) with intervals, their distances to the
target, a goodness-of-fit test, the sample size a requested precision needs, and FID/KID per
subgroup against labelled reference images. Run under ``torchrun`` or ``accelerate launch``,
processes split the shards and the main process writes the result, which equals the
single-process one exactly.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ._io import atomic_write_bytes, atomic_write_json, atomic_write_text, folder_sha256
from .data.datasets import ImageFolderDataset
from .exceptions import ConfigError, DataError
from .generation.engine import GenerationConfig, iter_shards, run_shards
from .metrics.accumulators import FeatureMoments
from .metrics.features import get_extractor
from .metrics.frame import summarise
from .metrics.functional import DEFAULT_SMOOTHING, fid_from_moments, wilson_interval
from .metrics.kid import kernel_inception_distance
from .models._common import load_images
from .models.classifier import SubgroupClassifier
from .models.t2medi import load_pipeline
from .progress import ProgressCallback, report
from .reporting import image_grid_png
from .target import Target

__all__ = ["AUDIT_SCHEMA_VERSION", "AuditConfig", "AuditResult", "read_prompts", "run_audit"]

AUDIT_SCHEMA_VERSION = 1


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and ``#`` comments are skipped.

    Raises:
        DataError: Missing or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file '{path}' does not exist or is not a file", param="prompts")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise DataError(f"'{path}' holds no prompts (one per line expected)", param="prompts")
    return prompts


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Everything an audit needs.

    Args:
        checkpoint: Diffusers text-to-image pipeline folder.
        classifier: Subgroup classifier folder (``medfair train classifier``).
        prompts: Prompts to audit.
        target: Target proportions; its groups must be the classifier's.
        out: Output folder (``audit.json``, ``audit.html``, ``images.csv``, grids, shards).
        generation: Images per prompt, seed, steps, guidance, batch (shard) size.
        reference: Image folder of real images with the attribute column, for FID/KID.
        reference_split: Use only this ``split`` of the reference.
        features: Feature extractor: ``classifier``, ``inception:PATH`` or a CLIP folder.
        mode: ``marginal`` (neutral prompts vs the target) or ``conditional`` (each prompt names
            one group; the share of images showing it).
        n_boot: Bootstrap resamples for intervals.
        confidence: Interval level.
        smoothing: ε of KL/JS smoothing (stated in the report).
        half_width: Interval half-width for the sample-size estimate.
        min_group_n: Below this many images a group's FID carries a warning.
        trust_pickle: Allow pickle weights.
        save_images: Also write every generated image as PNG.
    """

    checkpoint: Path
    classifier: Path
    prompts: Sequence[str]
    target: Target
    out: Path
    generation: GenerationConfig
    reference: Path | None = None
    reference_split: str | None = None
    features: str = "classifier"
    mode: str = "marginal"
    n_boot: int = 1000
    confidence: float = 0.95
    smoothing: float = DEFAULT_SMOOTHING
    half_width: float = 0.05
    min_group_n: int = 50
    trust_pickle: bool = False
    save_images: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "out", Path(self.out))
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ConfigError("expected at least one non-empty prompt", param="prompts")
        if self.mode not in ("marginal", "conditional"):
            raise ConfigError(
                f"expected 'marginal' or 'conditional', got '{self.mode}'", param="mode"
            )
        if self.n_boot < 0:
            raise ConfigError(f"expected n_boot ≥ 0, got {self.n_boot}", param="n_boot")
        if not 0 < self.confidence < 1:
            raise ConfigError(
                f"expected a level in (0, 1), got {self.confidence}", param="confidence"
            )
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"expected ε in [0, 1), got {self.smoothing}", param="smoothing")


@dataclass
class AuditResult:
    """The outcome of an audit: one JSON document plus the per-image table.

    Attributes:
        data: The ``audit.json`` content.
        images: One row per generated image (prompt, seed, probabilities, predicted group).
        grids: Group name → PNG bytes of a sample grid of images classified as that group.
    """

    data: dict[str, Any]
    images: pd.DataFrame
    grids: dict[str, bytes] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``audit.json`` document."""
        return self.data

    def to_frame(self) -> dict[str, pd.DataFrame]:
        """Tables: ``overall`` and ``by_prompt`` (one row per kind × group) and ``by_group``."""

        def rows(summary: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
            out = []
            for kind, per in summary["proportions"].items():
                for g, v in per.items():
                    gap = summary["distances"][kind]["gaps"][g]
                    out.append(
                        {
                            **extra,
                            "kind": kind,
                            "group": g,
                            "proportion": v["value"],
                            "ci_low": v["ci"][0],
                            "ci_high": v["ci"][1],
                            "target": self.data["target"][g],
                            "gap": gap["value"],
                        }
                    )
            return out

        by_prompt = [
            r
            for p in self.data["by_prompt"]
            for r in rows(p, prompt_index=p["index"], prompt=p["prompt"])
        ]
        by_group = (
            pd.DataFrame(
                [
                    {
                        "group": g,
                        **{
                            k: v
                            for k, v in self.data["fid_by_group"][g].items()
                            if not isinstance(v, dict | list)
                        },
                        "kid": self.data["kid_by_group"][g]["kid"],
                    }
                    for g in self.data["groups"]
                ]
            )
            if self.data.get("fid_by_group")
            else pd.DataFrame({"group": self.data["groups"]})
        )
        return {
            "overall": pd.DataFrame(rows(self.data)),
            "by_prompt": pd.DataFrame(by_prompt),
            "by_group": by_group,
        }

    def save(self, out: str | Path) -> Path:
        """Write ``audit.json``, ``images.csv``, grids and ``audit.html`` into ``out``."""
        from .reporting import render_audit_html

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "audit.json", self.data)
        atomic_write_text(out / "images.csv", self.images.to_csv(index=False))
        for g, png in self.grids.items():
            atomic_write_bytes(out / f"grid_{g}.png", png)
        atomic_write_text(out / "audit.html", render_audit_html(self.data, self.grids))
        return out


def _named_groups(prompts: Sequence[str], groups: Sequence[str]) -> list[str]:
    named = []
    for p in prompts:
        hits = [g for g in groups if re.search(rf"\b{re.escape(g)}\b", p, re.IGNORECASE)]
        if len(hits) != 1:
            raise ConfigError(
                f"conditional mode needs each prompt to name exactly one of {list(groups)}; "
                f"'{p[:60]}' names {hits or 'none'}",
                param="prompts",
            )
        named.append(hits[0])
    return named


class _Aggregate:
    """Streams shards into what the audit needs, in memory independent of the image count.

    Kept per image: prompt index, image index, seed, probabilities (the per-image table).
    Kept per group: feature moments (FID), up to ``cap`` feature vectors in plan order (KID and
    the equal-n FID), up to 32 images (the grid).
    """

    def __init__(self, n_groups: int, cap: int = 2000, grid: int = 32) -> None:
        self.n_groups, self.cap, self.grid = n_groups, cap, grid
        self.rows: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []
        self.moments: list[FeatureMoments] | None = None
        self.samples: list[list[np.ndarray]] = [[] for _ in range(n_groups)]
        self.images: list[list[torch.Tensor]] = [[] for _ in range(n_groups)]

    def add(self, shard: dict[str, Any]) -> None:
        meta, probs, feats = shard["meta"], shard["probs"].numpy(), shard["features"].numpy()
        n = len(probs)
        self.rows.append(
            np.stack(
                [
                    np.full(n, meta["prompt_index"]),
                    np.arange(meta["start"], meta["stop"]),
                    shard["seeds"].numpy(),
                ],
                1,
            )
        )
        self.probs.append(probs)
        if self.moments is None:
            self.moments = [FeatureMoments(feats.shape[1]) for _ in range(self.n_groups)]
        pred = probs.argmax(1)
        for g in range(self.n_groups):
            sel = pred == g
            if not sel.any():
                continue
            self.moments[g].update(feats[sel])
            room = self.cap - sum(len(x) for x in self.samples[g])
            if room > 0:
                self.samples[g].append(feats[sel][:room])
            room = self.grid - sum(len(x) for x in self.images[g])
            if room > 0:
                self.images[g].append(shard["images"][torch.from_numpy(sel)][:room])

    def finish(self) -> dict[str, Any]:
        rows = np.concatenate(self.rows)
        dim = self.moments[0].dim
        return {
            "prompt_index": rows[:, 0],
            "image_index": rows[:, 1],
            "seeds": rows[:, 2],
            "probs": np.concatenate(self.probs),
            "moments": self.moments,
            "samples": [np.concatenate(x) if x else np.zeros((0, dim)) for x in self.samples],
            "images": [
                torch.cat(x) if x else torch.zeros((0, 1, 1, 1), dtype=torch.uint8)
                for x in self.images
            ],
        }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("medfair", "torch", "diffusers", "transformers", "numpy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _quality(
    agg: dict[str, Any],
    ref_feats: np.ndarray,
    ref_labels: np.ndarray,
    groups: Sequence[str],
    cfg: AuditConfig,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """FID (from streamed moments) and KID per group and overall, and an equal-n FID."""
    warnings: list[str] = []
    fid: dict[str, Any] = {}
    kid: dict[str, Any] = {}
    moments = agg["moments"]
    dim = moments[0].dim
    total = FeatureMoments(dim)
    for m in moments:
        total.merge(m)
    entries = [(g, moments[i], agg["samples"][i], ref_labels == i) for i, g in enumerate(groups)]
    entries.append(
        ("overall", total, np.concatenate(agg["samples"]), np.ones(len(ref_labels), bool))
    )
    for name, gen, sample, r_sel in entries:
        ng, nr = gen.n, int(r_sel.sum())
        entry: dict[str, Any] = {"n_generated": ng, "n_reference": nr, "fid": None}
        kid[name] = {"kid": None, "std": None, "subset_size": 0}
        if ng >= 2 and nr >= 2:
            ref = FeatureMoments(dim).update(ref_feats[r_sel])
            entry["fid"] = fid_from_moments(gen.mean, gen.cov, ref.mean, ref.cov)
            k, sd = kernel_inception_distance(
                sample, ref_feats[r_sel], subsets=50, subset_size=100, seed=cfg.generation.seed
            )
            kid[name] = {"kid": k, "std": sd, "subset_size": min(100, len(sample), nr)}
        if name != "overall" and ng < cfg.min_group_n:
            msg = (
                f"group '{name}' has {ng} generated images (< {cfg.min_group_n}): its FID is "
                "biased upward; compare KID or the equal-n FID"
            )
            entry["warning"] = msg
            warnings.append(msg)
        fid[name] = entry
    n_eq = min(len(x) for x in agg["samples"])
    equal: dict[str, Any] = {"n": int(n_eq)}
    if n_eq >= 2:
        rng = np.random.default_rng(cfg.generation.seed)
        for i, g in enumerate(groups):
            sample = agg["samples"][i]
            pick = sample[rng.choice(len(sample), n_eq, replace=False)]
            a = FeatureMoments(dim).update(pick)
            b = FeatureMoments(dim).update(ref_feats[ref_labels == i])
            equal[g] = fid_from_moments(a.mean, a.cov, b.mean, b.cov) if b.n >= 2 else None
    return fid, kid, equal, warnings


def run_audit(
    config: AuditConfig, *, progress: ProgressCallback | None = None
) -> AuditResult | None:
    """Run an audit and write its outputs into ``config.out``.

    Under ``torchrun`` (CPUs) or ``accelerate launch`` (GPUs) every process generates its share
    of the shards; the main process then computes and writes the result, and the others return
    ``None``.

    Returns:
        The result (main process), else ``None``.
    """
    from ._dist import partial_state

    cfg = config
    state = partial_state()
    clf = SubgroupClassifier.load(cfg.classifier, trust_pickle=cfg.trust_pickle)
    groups = list(clf.groups)
    if set(cfg.target.groups) != set(groups):
        raise ConfigError(
            f"the target's groups {list(cfg.target.groups)} differ from the classifier's {groups}",
            param="target",
        )
    if clf.evaluation is None or "confusion_rates" not in clf.evaluation:
        raise ConfigError(
            f"'{cfg.classifier}' has no evaluation.json with a confusion matrix", param="classifier"
        )
    named = _named_groups(cfg.prompts, groups) if cfg.mode == "conditional" else None
    ref = None
    if cfg.reference is not None:
        ref = ImageFolderDataset(
            cfg.reference,
            require=(clf.attribute,),
            split=cfg.reference_split,
            size=None,
            param="reference",
        )
        unknown = sorted(set(ref.labels(clf.attribute)) - set(groups))
        if unknown:
            raise DataError(
                f"reference labels outside the classifier's groups {groups}: {unknown}",
                param="reference",
            )
    pipe = load_pipeline(cfg.checkpoint, trust_pickle=cfg.trust_pickle)
    extractor = get_extractor(cfg.features, clf, trust_pickle=cfg.trust_pickle)
    target = np.array(cfg.target.vector(groups))
    confusion = np.array(clf.evaluation["confusion_rates"])
    settings = {
        "checkpoint_sha256": folder_sha256(cfg.checkpoint),
        "classifier_sha256": folder_sha256(cfg.classifier),
        "features": extractor.name,
    }

    def analyse(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return clf.predict_proba(images), extractor(images)

    shard_dir = cfg.out / "shards"
    plan = run_shards(
        pipe,
        cfg.prompts,
        cfg.generation,
        shard_dir,
        analyse=analyse,
        settings=settings,
        rank=state.process_index,
        world=state.num_processes,
        progress=progress,
    )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    agg = _Aggregate(len(groups))
    for shard in iter_shards(shard_dir, plan):
        agg.add(shard)
    data = agg.finish()
    probs, pred = data["probs"], data["probs"].argmax(1)
    kw = {
        "confusion": confusion,
        "n_boot": cfg.n_boot,
        "confidence": cfg.confidence,
        "smoothing": cfg.smoothing,
        "half_width": cfg.half_width,
    }
    report(progress, "statistics", 0, len(cfg.prompts) + 1)
    overall = summarise(probs, groups, target, seed=cfg.generation.seed, **kw)
    by_prompt = []
    for i, prompt in enumerate(cfg.prompts):
        sel = data["prompt_index"] == i
        entry = {
            "index": i,
            "prompt": prompt,
            **summarise(probs[sel], groups, target, seed=cfg.generation.seed + 1 + i, **kw),
        }
        if named is not None:
            hit = int((pred[sel] == groups.index(named[i])).sum())
            entry["conditional"] = {
                "named_group": named[i],
                "share": hit / int(sel.sum()),
                "ci": list(wilson_interval(hit, int(sel.sum()), confidence=cfg.confidence)),
            }
        by_prompt.append(entry)
        report(progress, "statistics", i + 1, len(cfg.prompts) + 1)
    warnings: list[str] = []
    fid = kid = equal = None
    if ref is not None:
        ref_images = load_images(ref, progress=progress, stage="reference")
        ref_feats = extractor(ref_images).numpy()
        ref_labels = np.array([groups.index(v) for v in ref.labels(clf.attribute)])
        fid, kid, equal, warnings = _quality(data, ref_feats, ref_labels, groups, cfg)
    report(progress, "statistics", len(cfg.prompts) + 1, len(cfg.prompts) + 1)
    gen = cfg.generation
    doc = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "mode": cfg.mode,
        "attribute": clf.attribute,
        "groups": groups,
        "target": dict(zip(groups, map(float, target), strict=True)),
        "n_images": len(probs),
        "n_prompts": len(cfg.prompts),
        "confidence": cfg.confidence,
        "smoothing": {"epsilon": cfg.smoothing, "method": "p' = (1 - ε) p + ε / K before KL"},
        "n_boot": cfg.n_boot,
        **{k: overall[k] for k in ("counts", "proportions", "chi_square", "sample_size")},
        "kl_divergence": {
            kind: {
                "target_to_generated": d["kl_target_to_generated"],
                "generated_to_target": d["kl_generated_to_target"],
            }
            for kind, d in overall["distances"].items()
        },
        "proportion_gaps": {
            kind: {**d["gaps"], "max_abs": d["max_abs_gap"]}
            for kind, d in overall["distances"].items()
        },
        "distances": overall["distances"],
        "fid_by_group": fid,
        "kid_by_group": kid,
        "fid_equal_n": equal,
        "by_prompt": by_prompt,
        "warnings": warnings,
        "classifier": {"path": str(cfg.classifier), "evaluation": clf.evaluation},
        "config": {
            "checkpoint": str(cfg.checkpoint),
            "checkpoint_sha256": settings["checkpoint_sha256"],
            "classifier": str(cfg.classifier),
            "classifier_sha256": settings["classifier_sha256"],
            "prompts": list(cfg.prompts),
            "n_per_prompt": gen.n_per_prompt,
            "seed": gen.seed,
            "seeding": "image seed = SeedSequence([seed, prompt index, image index])",
            "steps": gen.steps,
            "guidance": gen.guidance,
            "batch_size": gen.shard_size,
            "features": {"name": extractor.name, **extractor.details},
            "reference": str(cfg.reference) if cfg.reference else None,
            "reference_split": cfg.reference_split,
            "target_source": cfg.target.source,
            "versions": _versions(),
        },
    }
    doc = json.loads(json.dumps(doc, default=float))  # plain JSON types, stable on disk
    table = pd.DataFrame(
        {
            "prompt_index": data["prompt_index"],
            "prompt": [cfg.prompts[i] for i in data["prompt_index"]],
            "image_index": data["image_index"],
            "seed": data["seeds"],
            **{f"p_{g}": probs[:, j] for j, g in enumerate(groups)},
            "predicted": [groups[j] for j in pred],
        }
    )
    grids = {g: image_grid_png(data["images"][j]) for j, g in enumerate(groups)}
    table["file"] = ""
    if cfg.save_images:
        from PIL import Image

        (cfg.out / "images").mkdir(parents=True, exist_ok=True)
        k = 0
        for shard in iter_shards(shard_dir, plan):
            for img in shard["images"]:
                name = f"images/p{table.prompt_index[k]:04d}_i{table.image_index[k]:06d}.png"
                Image.fromarray(
                    img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
                ).save(cfg.out / name)
                table.loc[k, "file"] = name
                k += 1
    result = AuditResult(doc, table, grids)
    result.save(cfg.out)
    return result
