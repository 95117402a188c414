"""The audit's first stage: check the inputs and load everything generation and statistics need.

Everything that can fail on the user's input (classifier, target, reference images, readers,
checkpoint) fails here, before an image is generated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import folder_sha256
from ..attributes import cell_name
from ..config import AuditConfig
from ..data.datasets import ImageFolderDataset
from ..exceptions import ConfigError, DataError
from ..generation.engine import to_uint8
from ..models.attributes import ClassifierSet
from ..models.attributes import classifier_sha256 as classifier_sha256_of
from ..models.features import get_extractor
from ..models.pipelines import apply_speed, load_pipeline, pipeline_info, truncated_prompts
from ..progress import ProgressCallback
from ..training import load_images
from .readers import ReaderSpace
from .readers import features as reader_features

__all__ = ["Loaded", "load"]


@dataclass
class Loaded:
    """What the later stages use: models, held-out data, reference features, settings.

    Attributes:
        cset: The classifier(s), on the audit's device.
        heldout: The classifier's held-out predictions (for the corrected shares).
        named: Conditional mode: the group each prompt names.
        pipe: The text-to-image pipeline.
        info: :func:`~medfair_audit.models.pipelines.pipeline_info` of ``pipe``.
        truncated: Prompts longer than the text encoder reads.
        extractor: The feature extractor for FID/KID.
        spaces: The audit classifier and each reader, with the reference's features.
        ref_feats: Reference features (main process, with a reference).
        ref_labels: Each reference image's group index.
        ref_images: The reference images as uint8 (kept only for FRD).
        settings: What determines a shard's content (hashes, extractor, dtype).
        classifiers_sha256: Per-attribute classifier hashes (several attributes).
        distribution: Conditional mode: the share of requests per named group, and where it
            came from (``{"shares": ..., "source": ...}``).
    """

    cset: ClassifierSet
    heldout: Any
    named: list[str] | None
    pipe: Any
    info: dict[str, Any]
    truncated: list[dict[str, Any]]
    extractor: Any
    spaces: list[ReaderSpace] = field(default_factory=list)
    ref_feats: np.ndarray | None = None
    ref_labels: np.ndarray | None = None
    ref_images: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    classifiers_sha256: Any = None
    distribution: dict[str, Any] | None = None

    @property
    def groups(self) -> list[str]:
        """The groups (joint cells for several attributes)."""
        return self.cset.groups


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


def _reference(cfg: AuditConfig, cset: ClassifierSet) -> ImageFolderDataset | None:
    """The ``--reference`` images, their labels checked against the classifier's groups."""
    if cfg.reference is None:
        return None
    kwargs = {
        "require": cset.attributes,
        "split": cfg.reference_split,
        "param": "reference",
        "allow_outside_root": cfg.allow_outside_root,
    }
    if cset.primary.volumetric:
        # real volumes of the sequence the 3-D classifier was trained on, at its side
        from ..data.volumes import VolumeFolderDataset

        if cfg.frd:
            raise ConfigError(
                "FRD reads 2-D slices; a 3-D classifier's audit has FID/KID in its features",
                param="frd",
            )
        ref = VolumeFolderDataset(
            cfg.reference,
            sequence=cset.primary.sequence,
            size=cset.primary.image_size,
            **kwargs,
        )
    else:
        ref = ImageFolderDataset(cfg.reference, size=None, **kwargs)
    unknown = sorted(set(_ref_labels(ref, cset)) - set(cset.groups))
    if unknown:
        raise DataError(
            f"reference labels outside the classifier's groups {cset.groups}: {unknown}",
            param="reference",
        )
    return ref


def _classifiers(cfg: AuditConfig) -> tuple[ClassifierSet, list[str] | None]:
    """The classifier set, checked against the target and the mode, and the named groups."""
    cset = ClassifierSet.load(cfg.classifier, trust_pickle=cfg.trust_pickle)
    cset.check_target(cfg.target)
    if cfg.mode == "conditional" and cset.multi:
        raise ConfigError(
            "conditional mode reads one attribute; audit several attributes in marginal mode",
            param="mode",
        )
    named = _named_groups(cfg.prompts, cset.groups) if cfg.mode == "conditional" else None
    return cset, named


def _distribution(cfg: AuditConfig, pipe: Any, named: list[str]) -> dict[str, Any]:
    """The requests' distribution over the named groups: given, declared by a bundle, or equal."""
    declared = (getattr(pipe, "conditioning", None) or {}).get("distribution", {})
    attribute = next((a for a, shares in declared.items() if set(named) <= set(shares)), None)
    if cfg.condition_distribution is not None:
        shares, source = dict(cfg.condition_distribution), "given (--condition-distribution)"
    elif attribute is not None:
        shares, source = dict(declared[attribute]), "declared by the model (configs/medfair.json)"
    else:
        shares = dict.fromkeys(dict.fromkeys(named), 1 / len(set(named)))
        source = "equal shares (none given or declared)"
    missing = sorted(set(named) - set(shares))
    if missing:
        raise ConfigError(
            f"the conditioning distribution gives no share to {missing}, which prompts ask for",
            param="condition_distribution",
        )
    return {"shares": {g: float(shares[g]) for g in dict.fromkeys(named)}, "source": source}


def load(cfg: AuditConfig, state: Any, progress: ProgressCallback | None = None) -> Loaded:
    """Check the inputs and load the models.

    The main process also featurises the reference, first, so that a bad reference image fails
    before anything is generated.
    """
    if cfg.frd:
        from .frd import require_frd

        require_frd()  # before anything is generated
    cset, named = _classifiers(cfg)
    heldout = cset.heldout()
    ref = _reference(cfg, cset)
    readers = _load_readers(cfg, cset)
    cset.to(cfg.placement.device)
    pipe = load_pipeline(cfg.checkpoint, trust_pickle=cfg.trust_pickle, placement=cfg.placement)
    info = pipeline_info(pipe)
    truncated = truncated_prompts(pipe, cfg.prompts)
    apply_speed(pipe, cfg.speed)
    extractor = get_extractor(
        cfg.features, cset.primary, trust_pickle=cfg.trust_pickle, device=cfg.placement.device
    )
    loaded = Loaded(cset, heldout, named, pipe, info, truncated, extractor)
    if named is not None:
        loaded.distribution = _distribution(cfg, pipe, named)
    # The audit's classifier first, then the readers; with a reference (one attribute), each
    # one's support test in its own feature space.
    members = [(cfg.classifier.name, cfg.classifier, cset), *readers] if not cset.multi else []
    if readers:
        loaded.spaces = [ReaderSpace(name=n, path=p, classifier=c) for n, p, c in members]
    if ref is not None and state.is_main_process:
        ref_images = load_images(ref, progress=progress, stage="reference")
        loaded.ref_feats = extractor(ref_images).numpy()
        loaded.ref_labels = np.array([cset.groups.index(v) for v in _ref_labels(ref, cset)])
        loaded.spaces = [
            ReaderSpace(name=n, path=p, classifier=c, reference=reader_features(c, ref_images))
            for n, p, c in members
        ]
        if cfg.frd:
            # quantised as the shards quantise the generated images
            loaded.ref_images = to_uint8(ref_images).numpy()
        del ref_images
    classifier_sha256, loaded.classifiers_sha256 = classifier_sha256_of(cfg.classifier)
    loaded.settings = {
        "checkpoint_sha256": folder_sha256(cfg.checkpoint),
        "classifier_sha256": classifier_sha256,
        "features": extractor.name,
        # shards from another dtype are redrawn; another device of the same dtype agrees within
        # kernel tolerance, so a run may resume elsewhere
        "dtype": str(cfg.placement.dtype),
    }
    # One image at a time: batched sums depend on the batch's shape (only when asked, so that
    # the shards of ordinary audits keep their stamps).
    if cfg.batch_invariant:
        loaded.settings["batch_invariant"] = True
    return loaded
