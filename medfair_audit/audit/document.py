"""The ``audit.json`` content of a run: built once, from the config and the estimate stage.

:class:`~medfair_audit.audit.result.AuditResult` wraps it and is the only reader of its keys.
"""

from __future__ import annotations

import json
from typing import Any

from .._io import null_non_finite
from .result import AUDIT_SCHEMA_VERSION

__all__ = ["audit_document"]


def _classifier_section(cfg: Any, loaded: Any) -> dict[str, Any]:
    cset = loaded.cset
    out = {"path": str(cfg.classifier), "evaluation": cset.primary.evaluation}
    if cset.multi:
        out["by_attribute"] = {
            a: {"path": str(p), "evaluation": m.evaluation}
            for a, p, m in zip(cset.attributes, cset.paths, cset.members, strict=False)
        }
    return out


def _config_section(
    cfg: Any, loaded: Any, remediation: dict[str, Any] | None, versions: dict[str, str]
) -> dict[str, Any]:
    gen, settings = cfg.generation, loaded.settings
    return {
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": settings["checkpoint_sha256"],
        "classifier": str(cfg.classifier)
        if not isinstance(cfg.classifier, dict)
        else {a: str(p) for a, p in cfg.classifier.items()},
        "classifier_sha256": settings["classifier_sha256"],
        **({"classifiers_sha256": loaded.classifiers_sha256} if loaded.classifiers_sha256 else {}),
        "prompts": list(cfg.prompts),
        "n_per_prompt": gen.n_per_prompt,
        "seed": gen.seed,
        "seeding": "image seed = SeedSequence([seed, prompt index, image index])",
        "steps": gen.steps,
        "guidance": gen.guidance,
        "batch_size": gen.shard_size,
        "batch_invariant": cfg.batch_invariant,
        "features": {"name": loaded.extractor.name, **loaded.extractor.details},
        "pipeline": loaded.info,
        "placement": cfg.placement.describe(),
        "speed": cfg.speed.describe(),
        "reference": str(cfg.reference) if cfg.reference else None,
        "reference_split": cfg.reference_split,
        **({"images_from": str(cfg.images_from)} if cfg.images_from is not None else {}),
        "target_source": cfg.target.source,
        "remediation": remediation,
        "versions": versions,
    }


def audit_document(
    cfg: Any,
    loaded: Any,
    est: Any,
    *,
    warnings: list[str],
    remediation: dict[str, Any] | None,
    versions: dict[str, str],
    sequential: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``audit.json`` content of a run, in plain JSON types.

    A NaN or infinity becomes ``null``, and a warning names each.

    Args:
        cfg: The :class:`~medfair_audit.config.AuditConfig`.
        loaded: The load stage's :class:`~medfair_audit.audit.load.Loaded`.
        est: The statistics stage's :class:`~medfair_audit.audit.estimate.Estimates`.
        warnings: Every warning, in order.
        remediation: What remediation the checkpoint went through, if any.
        versions: Software versions.
        sequential: The ``--precision`` record (rule, looks, n at stopping), if any.
    """
    from ..metrics.estimates import READINGS

    groups, overall = loaded.groups, est.overall
    target = cfg.target.vector(groups)
    doc = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "mode": cfg.mode,
        "attribute": loaded.cset.attribute,
        "groups": groups,
        "target": dict(zip(groups, map(float, target), strict=True)),
        "target_name": cfg.target.name,
        "n_images": len(est.probs),
        "n_prompts": len(cfg.prompts),
        "confidence": cfg.confidence,
        "smoothing": {"epsilon": cfg.smoothing, "method": "p' = (1 - ε) p + ε / K before KL"},
        "n_boot": cfg.n_boot,
        "default_reading": est.reading,
        "readings": {k: READINGS[k] for k in overall["proportions"]},
        **overall,
        "sample_size": est.sample_size,
        "dispersion": est.spread,
        "quality": est.quality,
        "by_prompt": est.by_prompt,
        **({"attributes": est.attributes, "joint": est.joint} if loaded.cset.multi else {}),
        **({"readers": est.readers} if est.readers else {}),
        **({"conditioning": est.conditioning} if est.conditioning else {}),
        **({"sequential": sequential} if sequential is not None else {}),
        "warnings": warnings,
        "prompts_truncated": loaded.truncated,
        "classifier": _classifier_section(cfg, loaded),
        "config": _config_section(cfg, loaded, remediation, versions),
    }
    doc = json.loads(json.dumps(doc, default=float))  # plain JSON types, stable on disk
    for where in null_non_finite(doc):  # JSON has no NaN/inf: null, and said so
        doc["warnings"].append(f"{where} was not a finite number; written as null")
    return doc
