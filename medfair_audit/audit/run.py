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
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .._io import run_lock
from ..config import AuditConfig
from ..exceptions import DataError
from ..generation.engine import Shard, iter_shards, run_shards
from ..models.pipelines import generate
from ..progress import ProgressCallback
from ..reporting import image_grid_png, render_audit_html
from .document import audit_document
from .estimate import Estimates, estimate
from .load import Loaded, load
from .result import AuditResult
from .sequential import draw_until_precise

__all__ = ["run_audit"]


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


def _draw(
    cfg: AuditConfig, loaded: Loaded, state: Any, progress: Any, only: Any = None
) -> list[Shard]:
    """The generation stage: this process's shards of the plan, drawn, read and written.

    ``only``: draw just the shards it accepts (one round of a ``--precision`` audit).
    """
    one = cfg.batch_invariant
    cset, extractor, pipe, gen = loaded.cset, loaded.extractor, loaded.pipe, cfg.generation

    def analyse(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if one:
            parts = [analyse_batch(images[i : i + 1]) for i in range(len(images))]
            return torch.cat([p for p, _ in parts]), torch.cat([f for _, f in parts])
        return analyse_batch(images)

    def analyse_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cset.predict_proba(images), extractor(images)

    def draw(prompt: str, seeds: list[int]) -> torch.Tensor:
        batches = [[s] for s in seeds] if one else [seeds]
        return torch.cat(
            [generate(pipe, prompt, b, steps=gen.steps, guidance=gen.guidance) for b in batches]
        )

    return run_shards(
        draw,
        cfg.prompts,
        gen,
        cfg.out / "shards",
        analyse=analyse,
        settings=loaded.settings,
        rank=state.process_index,
        world=state.num_processes,
        overlap=cfg.placement.device.type != "cpu" if cfg.overlap is None else cfg.overlap,
        progress=progress,
        only=only,
        image_settings=image_settings(loaded.settings),
        images_from=None if cfg.images_from is None else cfg.images_from / "shards",
    )


#: What in the load stage's settings decides the classification of the images, not the pixels.
READING_SETTINGS = ("classifier_sha256", "features")


def image_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide an audit's pixels (what ``--images-from`` must match)."""
    return {k: v for k, v in settings.items() if k not in READING_SETTINGS}


def _input_warnings(cfg: AuditConfig, loaded: Loaded, est: Estimates) -> tuple[Any, list[str]]:
    """The remediation record, and the warnings the inputs raise (before the data's own)."""
    remediation, warnings = _remediation(cfg, loaded.settings["classifier_sha256"])
    warnings += [
        f"prompt {t['prompt']} has {t['tokens']} tokens; the text encoder reads the first "
        f'{t["limit"]} and the rest is cut: the images follow "{t["kept"]}"'
        for t in loaded.truncated
    ]
    if not est.overall["identifiable"]:
        evaluation = loaded.cset.primary.evaluation or {}
        warnings.append(_unidentifiable(evaluation, est.overall["condition_number"]))
    return remediation, warnings


def _image_table(cfg: AuditConfig, loaded: Loaded, est: Estimates) -> pd.DataFrame:
    """``images.csv``: one row per image (prompt, seed, probabilities, predicted group)."""
    data, probs, groups, cset = est.data, est.probs, loaded.groups, loaded.cset
    table = pd.DataFrame(
        {
            "prompt_index": data["prompt_index"],
            "prompt": [cfg.prompts[i] for i in data["prompt_index"]],
            "image_index": data["image_index"],
            "seed": data["seeds"],
            **{f"p_{g}": probs[:, j] for j, g in enumerate(groups)},
            "predicted": [groups[j] for j in probs.argmax(1)],
        }
    )
    if cset.multi:  # each attribute's own reading beside the joint one
        for a, levels in cset.levels.items():
            marg = cset.marginal(est.stored, a)
            for j, level in enumerate(levels):
                table[f"p_{a}={level}"] = marg[:, j]
            table[f"predicted_{a}"] = [levels[j] for j in marg.argmax(1)]
    table["file"] = ""
    return table


def _export_pngs(out: Path, plan: list[Shard], table: pd.DataFrame) -> None:
    """``--save-images``: every image as ``images/p<prompt>_i<image>.png``, named in the table.

    Volumes are written as ``.nii.gz`` (uint8, as the shards store them).
    """
    from PIL import Image

    (out / "images").mkdir(parents=True, exist_ok=True)
    k = 0
    for shard in iter_shards(out / "shards", plan):
        for img in shard["images"]:
            stem = f"images/p{table.prompt_index[k]:04d}_i{table.image_index[k]:06d}"
            if img.ndim == 4:  # a volume (C, X, Y, Z): NIfTI, RAS+, 1 mm voxels
                import numpy as np

                from .._io import atomic_write_bytes
                from ..data.volumes import nifti_bytes

                name = f"{stem}.nii.gz"
                atomic_write_bytes(out / name, nifti_bytes(img[0].numpy(), np.eye(4)))
            else:
                name = f"{stem}.png"
                Image.fromarray(
                    img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
                ).save(out / name)
            table.loc[k, "file"] = name
            k += 1


def _run(cfg: AuditConfig, state: Any, progress: ProgressCallback | None) -> AuditResult | None:
    """The stages: prepare the folder, load, generate, estimate, then save and render."""
    _prepare_out(cfg, state)
    loaded = load(cfg, state, progress)
    sequential = None
    if cfg.precision is None:
        plan = _draw(cfg, loaded, state, progress)
    else:
        plan, sequential = draw_until_precise(
            cfg, loaded, state, progress, lambda only: _draw(cfg, loaded, state, progress, only)
        )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    est = estimate(cfg, loaded, cfg.out / "shards", plan, progress)
    remediation, warnings = _input_warnings(cfg, loaded, est)
    doc = audit_document(
        cfg, loaded, est, warnings=warnings + est.warnings, remediation=remediation,
        versions=_versions(), sequential=sequential,
    )  # fmt: skip
    table = _image_table(cfg, loaded, est)
    grids = {g: image_grid_png(est.data["images"][j]) for j, g in enumerate(loaded.groups)}
    if cfg.save_images:
        _export_pngs(cfg.out, plan, table)
    result = AuditResult(doc, table, grids)
    result.folder = cfg.out
    result.save(cfg.out, html=render_audit_html(result))
    return result
