"""``run_audit``: how far a text-to-image model's subgroup distribution is from a target.

The audit generates ``n_per_prompt`` images per prompt with per-image seeds (see
:mod:`medfair_audit.generation`), classifies each with the subgroup classifier, and reports each
group's share five ways (the classifier's labels, its mean probability, and three estimates
corrected for its held-out errors, with intervals that resample those errors too), distances to
the target with intervals that can contain 0, a goodness-of-fit test against the labels a
generator on target would produce, the sample size a requested precision needs, how prompts
differ, and FID/KID per subgroup at equal n. Run under ``torchrun`` or ``accelerate launch``,
processes split the shards and the main process writes the result, which equals the
single-process one exactly.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._io import folder_sha256, null_non_finite, run_lock
from ..attributes import cell_name
from ..data.datasets import ImageFolderDataset
from ..exceptions import ConfigError, DataError
from ..generation.engine import iter_shards, run_shards
from ..metrics.accumulators import ShardAggregate
from ..metrics.estimates import READINGS, estimate_shares, headline_reading
from ..metrics.frame import dispersion, summarise
from ..metrics.functional import wilson_interval
from ..models._training import load_images
from ..models.attributes import ClassifierSet
from ..models.attributes import classifier_sha256 as classifier_sha256_of
from ..models.features import get_extractor
from ..models.pipelines import generate, load_pipeline, pipeline_info, truncated_prompts
from ..progress import ProgressCallback, report
from ..reporting import image_grid_png, render_audit_html
from .config import AuditConfig
from .joint import joint_sections
from .quality import quality_by_group
from .readers import ReaderSpace, reader_sections, reader_warnings
from .readers import features as reader_features
from .result import AUDIT_SCHEMA_VERSION, AuditResult

__all__ = ["run_audit"]


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


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("medfair", "torch", "diffusers", "transformers", "numpy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _remediation(cfg: AuditConfig, classifier_sha256: str) -> tuple[dict | None, list[str]]:
    """What remediation a checkpoint went through, and whether this audit is independent of it.

    A remediated checkpoint's ``remediation.json`` names the classifier it was tuned against and
    its training prompts. An audit with that classifier, or on those prompts, is not an
    independent evaluation of the remediation: say so.
    """
    path = cfg.checkpoint / "remediation.json"
    if not path.is_file():
        return None, []
    doc = json.loads(path.read_text())
    record = {
        "classifier": doc.get("classifier"),
        "classifier_sha256": doc.get("classifier_sha256"),
        "prompts": list(doc.get("prompts") or []),
        "steps": doc.get("steps_done"),
    }
    guides = [record["classifier_sha256"], *(doc.get("ensemble_sha256") or [])]
    record["same_classifier"] = classifier_sha256 in guides
    shared = sorted(set(record["prompts"]) & set(cfg.prompts))
    record["shared_prompts"] = len(shared)
    warnings = []
    if record["same_classifier"]:
        warnings.append(
            "this audit uses the classifier the remediation was tuned against: the tuning may "
            "have fitted that classifier's quirks; judge it with an independent classifier"
        )
    if shared:
        warnings.append(
            f"{len(shared)} of the {len(cfg.prompts)} prompts were remediation training prompts: "
            "audit held-out prompts to judge generalisation"
        )
    return record, warnings


def _audit_file(name: str) -> bool:
    """Whether ``name`` is something an audit writes into its folder."""
    own = ("shards", "images", "images.csv", "audit.html", "audit.json")
    return name in own or (name.startswith("grid_") and name.endswith(".png"))


def _prepare_out(cfg: AuditConfig, state: Any) -> None:
    """Refuse a folder holding a finished audit or foreign files unless ``overwrite``.

    An unfinished audit (shards and no ``audit.json``) is resumed. With ``overwrite`` the main
    process removes everything but the shards (``audit.json`` first), then all processes go on.
    """
    out = cfg.out
    entries = sorted(out.iterdir()) if out.is_dir() else []
    finished = (out / "audit.json").exists()
    foreign = [p.name for p in entries if not _audit_file(p.name)]
    if (finished or foreign) and not cfg.overwrite:
        what = "a finished audit" if finished else f"other files ({', '.join(foreign[:3])})"
        raise DataError(
            f"'{out}' holds {what}; pass --overwrite to replace it (an unfinished audit there "
            "would be resumed without it)",
            param="out",
        )
    if cfg.overwrite and state.is_main_process:
        if finished:
            (out / "audit.json").unlink()
        for path in entries:
            if path.name == "shards" or not path.exists():
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    state.wait_for_everyone()


def _unidentifiable(evaluation: dict[str, Any], condition: dict[str, float]) -> str:
    """Why the corrected shares cannot be identified, pointing at the cause where it is known."""
    groups = evaluation.get("groups") or []
    rows = evaluation.get("confusion_matrix") or []
    empty = [g for g, row in zip(groups, rows, strict=False) if not sum(row)]
    if empty:
        split = evaluation.get("split", "test")
        return (
            f"corrected shares are not identifiable: the classifier's '{split}' split held no "
            f"{', '.join(repr(g) for g in empty)} image, so its confusion matrix cannot say how "
            "it reads that group; retrain it with every group in that split (more subjects, or "
            "a 'split' column); reported as [0, 1]"
        )
    return (
        "the classifier's confusion matrix is ill-conditioned (condition number "
        f"{max(condition.values()):.3g}): corrected shares are not identifiable and are "
        "reported as [0, 1]"
    )


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
    from .._dist import partial_state

    state = partial_state(config.placement.device)
    # One run writes a folder at a time (the main process holds the lock for all of them).
    lock = run_lock(config.out) if state.is_main_process else contextlib.nullcontext()
    with lock:
        return _run(config, state, progress)


def _load_readers(cfg: AuditConfig, cset: ClassifierSet) -> list[tuple[str, Path, Any]]:
    """``(name, folder, ClassifierSet)`` of each ``--reader``: one attribute, the same groups."""
    out = []
    for path in cfg.readers:
        reader = ClassifierSet.load(path, trust_pickle=cfg.trust_pickle, param="reader")
        if cset.multi or reader.multi:
            raise ConfigError("readers read one attribute", param="reader")
        if reader.attribute != cset.attribute or set(reader.groups) != set(cset.groups):
            raise ConfigError(
                f"'{path}' reads {reader.attribute} {reader.groups}; the classifier reads "
                f"{cset.attribute} {cset.groups}",
                param="reader",
            )
        if list(reader.groups) != list(cset.groups):
            raise ConfigError(
                f"'{path}' orders the groups {reader.groups}, the classifier {cset.groups}",
                param="reader",
            )
        out.append((path.name, path, reader.to(cfg.placement.device)))
    return out


def _ref_labels(ref: ImageFolderDataset, cset: ClassifierSet) -> list[str]:
    """Each reference image's group: its level, or its joint cell for several attributes."""
    if not cset.multi:
        return list(ref.labels(cset.attribute))
    columns = [ref.labels(a) for a in cset.attributes]
    return [cell_name(t) for t in zip(*columns, strict=True)]


def _run(cfg: AuditConfig, state: Any, progress: ProgressCallback | None) -> AuditResult | None:
    _prepare_out(cfg, state)
    cset = ClassifierSet.load(cfg.classifier, trust_pickle=cfg.trust_pickle)
    clf = cset.primary
    groups = cset.groups
    cset.check_target(cfg.target)
    heldout = cset.heldout()
    if cfg.mode == "conditional" and cset.multi:
        raise ConfigError(
            "conditional mode reads one attribute; audit several attributes in marginal mode",
            param="mode",
        )
    named = _named_groups(cfg.prompts, groups) if cfg.mode == "conditional" else None
    ref = None
    if cfg.reference is not None:
        ref = ImageFolderDataset(
            cfg.reference,
            require=cset.attributes,
            split=cfg.reference_split,
            size=None,
            param="reference",
            allow_outside_root=cfg.allow_outside_root,
        )
        unknown = sorted(set(_ref_labels(ref, cset)) - set(groups))
        if unknown:
            raise DataError(
                f"reference labels outside the classifier's groups {groups}: {unknown}",
                param="reference",
            )
    readers = _load_readers(cfg, cset)
    cset.to(cfg.placement.device)
    pipe = load_pipeline(cfg.checkpoint, trust_pickle=cfg.trust_pickle, placement=cfg.placement)
    info = pipeline_info(pipe)
    truncated = truncated_prompts(pipe, cfg.prompts)
    cfg.speed.apply(pipe)
    extractor = get_extractor(
        cfg.features, clf, trust_pickle=cfg.trust_pickle, device=cfg.placement.device
    )
    ref_feats = ref_labels = None
    # The audit's classifier first, then the readers; with a reference (one attribute), each
    # one's support test in its own feature space.
    members = [(cfg.classifier.name, cfg.classifier, cset), *readers] if not cset.multi else []
    spaces = [ReaderSpace(name=n, path=p, classifier=c) for n, p, c in members] if readers else []
    if ref is not None and state.is_main_process:  # first: a bad image fails before generating
        ref_images = load_images(ref, progress=progress, stage="reference")
        ref_feats = extractor(ref_images).numpy()
        ref_labels = np.array([groups.index(v) for v in _ref_labels(ref, cset)])
        spaces = [
            ReaderSpace(name=n, path=p, classifier=c, reference=reader_features(c, ref_images))
            for n, p, c in members
        ]
        del ref_images
    target = np.array(cfg.target.vector(groups))
    classifier_sha256, classifiers_sha256 = classifier_sha256_of(cfg.classifier)
    settings = {
        "checkpoint_sha256": folder_sha256(cfg.checkpoint),
        "classifier_sha256": classifier_sha256,
        "features": extractor.name,
        # shards from another dtype are redrawn; another device of the same dtype agrees within
        # kernel tolerance, so a run may resume elsewhere
        "dtype": str(cfg.placement.dtype),
    }
    # One image at a time: batched sums depend on the batch's shape (only when asked, so that
    # the shards of ordinary audits keep their stamps).
    one = cfg.batch_invariant
    if one:
        settings["batch_invariant"] = True

    def analyse(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if one:
            parts = [analyse_batch(images[i : i + 1]) for i in range(len(images))]
            return torch.cat([p for p, _ in parts]), torch.cat([f for _, f in parts])
        return analyse_batch(images)

    def analyse_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cset.predict_proba(images), extractor(images)

    def draw(prompt: str, seeds: list[int]) -> torch.Tensor:
        gen = cfg.generation
        batches = [[s] for s in seeds] if one else [seeds]
        return torch.cat(
            [generate(pipe, prompt, b, steps=gen.steps, guidance=gen.guidance) for b in batches]
        )

    shard_dir = cfg.out / "shards"
    plan = run_shards(
        draw,
        cfg.prompts,
        cfg.generation,
        shard_dir,
        analyse=analyse,
        settings=settings,
        rank=state.process_index,
        world=state.num_processes,
        overlap=cfg.placement.device.type != "cpu" if cfg.overlap is None else cfg.overlap,
        progress=progress,
    )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    agg = ShardAggregate(len(groups), to_groups=cset.joint if cset.multi else None)
    for shard in iter_shards(shard_dir, plan):
        agg.add(shard)
    data = agg.finish()
    stored = data["probs"]  # several attributes: each classifier's outputs side by side
    probs = cset.joint(stored) if cset.multi else stored
    pred = probs.argmax(1)
    kw = {
        "heldout": heldout,
        "n_boot": cfg.n_boot,
        "confidence": cfg.confidence,
        "smoothing": cfg.smoothing,
        "half_width": cfg.half_width,
    }
    report(progress, "statistics", 0, len(cfg.prompts) + 1)
    overall_est = estimate_shares(
        probs, heldout, n_boot=cfg.n_boot, seed=cfg.generation.seed
    )  # the replicates behind the overall numbers (and the joint cells' tests)
    overall = summarise(
        probs, groups, target, seed=cfg.generation.seed, estimates=overall_est, **kw
    )
    by_prompt, prompt_estimates = [], []
    for i, prompt in enumerate(cfg.prompts):
        sel = data["prompt_index"] == i
        seed = cfg.generation.seed + 1 + i
        est = estimate_shares(probs[sel], heldout, n_boot=cfg.n_boot, seed=seed)
        prompt_estimates.append(est)
        entry = {
            "index": i,
            "prompt": prompt,
            **summarise(probs[sel], groups, target, seed=seed, estimates=est, **kw),
        }
        if named is not None:
            hit = int((pred[sel] == groups.index(named[i])).sum())
            entry["conditional"] = {
                "named_group": named[i],
                "share": hit / int(sel.sum()),
                "ci": list(wilson_interval(hit, int(sel.sum()), confidence=cfg.confidence)),
                "method": "wilson, classifier's labels",
            }
        by_prompt.append(entry)
        report(progress, "statistics", i + 1, len(cfg.prompts) + 1)
    reading = headline_reading(overall["proportions"])
    spread = dispersion(
        prompt_estimates,
        by_prompt,
        cfg.prompts,
        groups,
        target,
        reading=reading,
        confidence=cfg.confidence,
    )
    remediation, warnings = _remediation(cfg, settings["classifier_sha256"])
    warnings += [
        f"prompt {t['prompt']} has {t['tokens']} tokens; the text encoder reads the first "
        f'{t["limit"]} and the rest is cut: the images follow "{t["kept"]}"'
        for t in truncated
    ]
    if not overall["identifiable"]:
        warnings.append(_unidentifiable(clf.evaluation or {}, overall["condition_number"]))
    quality = None
    if ref_feats is not None:
        quality, quality_warnings = quality_by_group(
            data["moments"],
            data["samples"],
            ref_feats,
            ref_labels,
            groups,
            draws=cfg.quality_draws,
            seed=cfg.generation.seed,
            min_group_n=cfg.min_group_n,
        )
        warnings += quality_warnings
    for where, summ in [("overall", overall)] + [(f"prompt {p['index']}", p) for p in by_prompt]:
        if any(e.get("label_shift_fails") for e in summ["proportions"][reading].values()):
            warnings.append(
                f"{where}: every bootstrap draw of the {reading.upper()} share lies beyond [0, 1]; "
                "the images do not look to the classifier as its held-out images do (label "
                "shift fails), so the corrected share there is only a bound at the boundary"
            )
    for g, n_g in overall["counts"].items():
        if n_g == 0:
            warnings.append(f"no generated image was classified '{g}'")
    attributes = joint = None
    if cset.multi:
        attributes, joint, more = joint_sections(
            cset,
            stored,
            cfg.target,
            overall,
            reading=reading,
            min_cell_n=cfg.min_cell_n,
            overall_estimates=overall_est,
            **kw,
            seed=cfg.generation.seed,
        )
        warnings += more
    readers_doc = None
    if spaces:
        readers_doc = reader_sections(
            iter_shards(shard_dir, plan),
            spaces,
            probs=probs,
            heldout=heldout,
            groups=groups,
            target=target,
            n_boot=cfg.n_boot,
            confidence=cfg.confidence,
            seed=cfg.generation.seed,
        )
        warnings += reader_warnings(readers_doc)
    report(progress, "statistics", len(cfg.prompts) + 1, len(cfg.prompts) + 1)
    per_prompt_needed = [p.get("sample_size", {}).get("needed") for p in by_prompt]
    overall_size = overall.pop("sample_size", {})
    sample_size = {
        "reading": overall_size.get("reading", reading),
        "half_width": cfg.half_width,
        "confidence": cfg.confidence,
        "needed_total": overall_size.get("needed"),
        "needed_per_prompt": None
        if not per_prompt_needed or None in per_prompt_needed
        else max(per_prompt_needed),
        "floor_half_width": overall_size.get("floor_half_width"),
        "note": "needed_total: images in all for a ± half-width interval on the pooled share; "
        "needed_per_prompt: images per prompt for that interval on each prompt's own share "
        "(the largest over prompts); floor_half_width: the smallest half-width the held-out "
        "confusion matrix's own error allows, however many images are drawn; null: unreachable",
    }
    gen = cfg.generation
    doc = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "mode": cfg.mode,
        "attribute": cset.attribute,
        "groups": groups,
        "target": dict(zip(groups, map(float, target), strict=True)),
        "target_name": cfg.target.name,
        "n_images": len(probs),
        "n_prompts": len(cfg.prompts),
        "confidence": cfg.confidence,
        "smoothing": {"epsilon": cfg.smoothing, "method": "p' = (1 - ε) p + ε / K before KL"},
        "n_boot": cfg.n_boot,
        "default_reading": reading,
        "readings": {k: READINGS[k] for k in overall["proportions"]},
        **overall,
        "sample_size": sample_size,
        "dispersion": spread,
        "quality": quality,
        "by_prompt": by_prompt,
        **({"attributes": attributes, "joint": joint} if cset.multi else {}),
        **({"readers": readers_doc} if readers_doc else {}),
        "warnings": warnings,
        "prompts_truncated": truncated,
        "classifier": {"path": str(cfg.classifier), "evaluation": clf.evaluation}
        if not cset.multi
        else {
            "path": str(cfg.classifier),
            "evaluation": clf.evaluation,
            "by_attribute": {
                a: {"path": str(p), "evaluation": m.evaluation}
                for a, p, m in zip(cset.attributes, cset.paths, cset.members, strict=False)
            },
        },
        "config": {
            "checkpoint": str(cfg.checkpoint),
            "checkpoint_sha256": settings["checkpoint_sha256"],
            "classifier": str(cfg.classifier)
            if not isinstance(cfg.classifier, dict)
            else {a: str(p) for a, p in cfg.classifier.items()},
            "classifier_sha256": settings["classifier_sha256"],
            **({"classifiers_sha256": classifiers_sha256} if classifiers_sha256 else {}),
            "prompts": list(cfg.prompts),
            "n_per_prompt": gen.n_per_prompt,
            "seed": gen.seed,
            "seeding": "image seed = SeedSequence([seed, prompt index, image index])",
            "steps": gen.steps,
            "guidance": gen.guidance,
            "batch_size": gen.shard_size,
            "batch_invariant": cfg.batch_invariant,
            "features": {"name": extractor.name, **extractor.details},
            "pipeline": info,
            "placement": cfg.placement.describe(),
            "speed": cfg.speed.describe(),
            "reference": str(cfg.reference) if cfg.reference else None,
            "reference_split": cfg.reference_split,
            "target_source": cfg.target.source,
            "remediation": remediation,
            "versions": _versions(),
        },
    }
    doc = json.loads(json.dumps(doc, default=float))  # plain JSON types, stable on disk
    for where in null_non_finite(doc):  # JSON has no NaN/inf: null, and said so
        doc["warnings"].append(f"{where} was not a finite number; written as null")
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
    if cset.multi:  # each attribute's own reading beside the joint one
        for a, levels in cset.levels.items():
            marg = cset.marginal(stored, a)
            for j, level in enumerate(levels):
                table[f"p_{a}={level}"] = marg[:, j]
            table[f"predicted_{a}"] = [levels[j] for j in marg.argmax(1)]
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
    result.folder = cfg.out
    result.save(cfg.out, html=render_audit_html(result))
    return result
