"""``medfair demo --volumes``: the 3-D path end to end on phantom volumes.

1. **volumes**: whole phantom heads in the BraTS layout (:func:`build_phantom_volumes`), split by
   subject into train, val and test.
2. **classifier3d**: the 3-D sex classifier (MONAI's ResNet, ``ClassifierConfig.volumes()``) on
   the T1 volumes of the train split, tested on the held-out test subjects.
3. **ldm**: a small MONAI latent diffusion model of the T1 volumes conditioned on sex
   (:func:`~medfair_audit.models.volume_ldm.train_volume_ldm`), trained on the train split and
   written as a MONAI bundle.
4. **audit**: ``medfair audit BUNDLE --condition sex``: each sex asked for in turn; conditioning
   fidelity and the marginal share under equal requests, read by the 3-D classifier, with FID/KID
   in its features against the held-out test volumes; the target is the test split's sex mix.

Stages are reused when their settings and inputs are unchanged, as in the 2-D demo; the stage
times go to ``OUT/volumes/demo.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write_json
from .audit import AuditConfig, run_audit
from .config import ClassifierConfig, ClassifierJob, Placement
from .data.phantom import PhantomConfig
from .demo import DemoResult, Stage, _settings, _stage
from .generation import GenerationConfig
from .models.volume_ldm import VolumeLDMConfig
from .progress import ProgressCallback
from .target import target_from_labels

__all__ = ["VolumeDemoConfig", "run_volume_demo"]

SPLITS = "train=0.6,val=0.15,test=0.25"


@dataclass(frozen=True, kw_only=True)
class VolumeDemoConfig:
    """Settings of the 3-D demo.

    Args:
        out: The demo's folder (the 3-D demo writes ``out/volumes``).
        phantom: The volume phantom (subjects, side, splits).
        classifier: The 3-D classifier.
        ldm: The latent diffusion model.
        generation: Volumes per request, seed, DDIM steps, batch.
        placement: Device and dtype.
        fast: Test-fixture sizes (seconds; shows nothing).
    """

    out: Path = Path("reports/demo")
    phantom: PhantomConfig = field(
        default_factory=lambda: PhantomConfig(n=600, size=48, seed=0, splits=SPLITS)
    )
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig.volumes)
    ldm: VolumeLDMConfig = field(default_factory=VolumeLDMConfig)
    generation: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(n_per_prompt=64, steps=50, shard_size=16)
    )
    placement: Placement = field(default_factory=lambda: Placement(device="cpu"))
    fast: bool = False

    @classmethod
    def tiny(cls, **overrides: Any) -> VolumeDemoConfig:
        """Seconds, not quality: for tests and ``medfair demo --volumes --fast``."""
        base = {
            "phantom": PhantomConfig(n=16, size=32, seed=0, workers=1,
                                     splits="train=0.5,val=0.25,test=0.25"),
            "classifier": ClassifierConfig.volumes(image_size=16, widths=(4, 4, 8, 8), epochs=2,
                                                   batch_size=4),
            "ldm": VolumeLDMConfig.tiny(),
            "generation": GenerationConfig(n_per_prompt=4, steps=2, shard_size=4),
            "fast": True,
        }  # fmt: skip
        return cls(**{**base, **overrides})


def volume_stages(
    config: VolumeDemoConfig, *, progress: ProgressCallback | None = None
) -> list[Stage]:
    """The 3-D demo's stages in running order."""
    from .data.volumes import build_phantom_volumes
    from .models.classifier import train_classifier
    from .models.volume_ldm import train_volume_ldm

    root = Path(config.out) / "volumes"
    data, clf, ldm = root / "data", root / "models" / "sex-3d", root / "models" / "brain-ldm"

    def volumes() -> dict[str, Any]:
        r = build_phantom_volumes(data, config.phantom, overwrite=True, progress=progress)
        return {"path": str(r.root), "counts": r.counts}

    def classifier() -> dict[str, Any]:
        job = ClassifierJob(data=data, out=clf, config=config.classifier, sequence="t1",
                            overwrite=True, placement=config.placement)  # fmt: skip
        ev = train_classifier(job, progress=progress).evaluation
        return {"path": str(clf), "balanced_accuracy": ev["balanced_accuracy"],
                "roc_auc": ev["roc_auc"], "ece": ev["ece"], "n_test": ev["n"]}  # fmt: skip

    def generator() -> dict[str, Any]:
        train_volume_ldm(data, ldm, config=config.ldm, overwrite=True, progress=progress)
        return {"path": str(ldm)}

    def audit() -> dict[str, Any]:
        meta = data / "metadata.csv"
        target = target_from_labels(meta, column="sex", where={"split": "test",
                                                                "sequence": "t1"})  # fmt: skip
        r = run_audit(
            AuditConfig(
                checkpoint=ldm, classifier=clf, prompts=("sex=female", "sex=male"),
                mode="conditional", target=target, out=root / "audit",
                generation=config.generation, reference=data, reference_split="test",
                n_boot=200 if config.fast else 1000, overwrite=True,
                placement=config.placement,
            ),
            progress=progress,
        )  # fmt: skip
        cond = r.conditioning
        return {
            "path": str(root / "audit"),
            "fidelity": {g: f.corrected.to_json() for g, f in cond.fidelity.items()},
            "marginal_male": cond.marginal[r.default_reading]["male"].to_json(),
        }

    return [
        Stage("volumes", (), _settings(config.phantom), volumes),
        Stage("classifier3d", ("volumes",), {"cfg": _settings(config.classifier)}, classifier),
        Stage("ldm", ("volumes",), {"cfg": asdict(config.ldm)}, generator),
        Stage("audit3d", ("classifier3d", "ldm"), {"gen": asdict(config.generation)}, audit),
    ]


def run_volume_demo(
    config: VolumeDemoConfig,
    *,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the 3-D demo's stages (reusing finished ones); write ``out/volumes/demo.json``."""
    root = Path(config.out) / "volumes"
    stages: dict[str, dict[str, Any]] = {}
    for st in volume_stages(config, progress=progress):
        stamps = {n: stages[n]["stamp"] for n in st.inputs}
        stages[st.name] = _stage(root, st.name, st.key(stamps), st.work, log)
    atomic_write_json(
        root / "demo.json",
        {
            "config": {
                **{
                    k: str(v) if isinstance(v, os.PathLike) else v
                    for k, v in asdict(config).items()
                    if k != "placement"
                },
                "placement": config.placement.describe(),
            },
            "stages": stages,
        },
    )
    return DemoResult(out=root, stages=stages)
