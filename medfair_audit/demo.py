"""The embedded default run: everything medfair does, on data it makes itself.

The demo reproduces the paper's situation with phantom data:

* a **training corpus** for the text-to-image model whose sex-neutral captions hide a skew
  (85% male images), standing in for ROCO;
* a **target set** standing in for BraTS18, every subject with a glioma, 58% male (close to
  the male share among glioma patients, e.g. Ostrom et al., CBTRUS 2018: about 1.3-1.4 men per
  woman for glioblastoma); its sex labels give the target proportions.

On these it trains the three models: CLIP on the corpus, the T2MedI pipeline on the corpus with
CLIP's text tower frozen, and the sex classifier on the target set.

The evaluation is kept apart from the tuning, as Shen et al. evaluate theirs:

* remediation trains on :data:`TRAIN_PROMPTS` (sex-neutral glioma prompts; a prompt without a
  lesion would not belong to a glioma cohort's sex ratio) with the **training classifier**
  (``models/classifier``, trained on the target set's ``train``/``val`` subjects);
* the audits use :data:`HELD_OUT_PROMPTS` (same clinical content, other wording) and an
  **independent evaluation classifier** (``models/evaluator``: another seed, another width, and
  trained on target-set subjects the training classifier never saw, ``eval_train``/``eval_val``).
  Both classifiers are tested on the same held-out ``test`` subjects.

It audits the biased model on the held-out prompts with both classifiers (``before/`` with the
evaluator, ``before-trainclf/`` with the training classifier), remediates it
(``models/t2medi-fair``), audits the remediated model with the same seeds (``after/``,
``after-trainclf/``; images pair up), and writes the report (``report.html``): the headline is the
evaluator's, the training classifier's reading stands beside it. Stages whose outputs exist with
the same settings are reused, so a re-run continues where an earlier one stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write_json
from .audit import AuditConfig, run_audit
from .data.phantom import PhantomConfig, build_phantom
from .device import Placement
from .exceptions import ConfigError
from .generation import GenerationConfig
from .models.classifier import ClassifierConfig, train_classifier
from .models.clip import CLIPTrainConfig, train_clip
from .models.t2medi import T2IConfig, train_t2i
from .progress import ProgressCallback
from .remediation import RemediationConfig, remediate
from .target import Target, target_from_labels

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Settings of the demo.

    Args:
        out: Output folder (default ``reports/demo``).
        fast: A small configuration for tests and quick looks.
        seed: Seed of every stage.
        corpus_male_fraction: Male share of the text-to-image training corpus.
        target_male_fraction: Male share of the BraTS18-like target set.
        device: Where every stage runs (``auto``: a GPU when there is one).
        dtype: Precision of the diffusion model in every stage (default float32, so a GPU run
            agrees with the committed CPU example within kernel tolerance).
    """

    out: Path = Path("reports/demo")
    fast: bool = False
    seed: int = 0
    corpus_male_fraction: float = 0.85
    target_male_fraction: float = 0.58
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("corpus_male_fraction", "target_male_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"expected a fraction in (0, 1), got {value}", param=name)
        object.__setattr__(self, "out", Path(self.out))
        self.placement  # noqa: B018  (checks device and dtype now, with a one-line error)

    @property
    def placement(self) -> Placement:
        """The checked device and dtype of every stage."""
        return Placement(device=self.device, dtype=self.dtype)

    @property
    def corpus(self) -> PhantomConfig:
        """The biased text-to-image training corpus."""
        return PhantomConfig(
            n=240 if self.fast else 4000,
            seed=self.seed,
            male_fraction=self.corpus_male_fraction,
            tumour_rate=0.7,
        )

    @property
    def target_set(self) -> PhantomConfig:
        """The BraTS18-like target set (classifier training and target proportions)."""
        return PhantomConfig(
            n=240 if self.fast else 3000,
            seed=self.seed + 1,
            male_fraction=self.target_male_fraction,
            tumour_rate=1.0,
            # Subject-disjoint: the training classifier learns on train/val, the independent
            # evaluator on eval_train/eval_val; both are tested on test.
            splits="train=0.35,val=0.1,eval_train=0.3,eval_val=0.1,test=0.15",
        )

    @property
    def clip(self) -> CLIPTrainConfig:
        """The CLIP model (text encoder of T2MedI, image encoder of remediation)."""
        if self.fast:
            return CLIPTrainConfig(
                width=32,
                layers=1,
                heads=2,
                projection_dim=32,
                epochs=1,
                batch_size=64,
                seed=self.seed,
            )
        return CLIPTrainConfig(width=128, layers=2, epochs=6, lr=1e-3, seed=self.seed)

    @property
    def t2i(self) -> T2IConfig:
        """The T2MedI pipeline."""
        if self.fast:
            return T2IConfig(
                vae_channels=(8, 8, 16),
                vae_steps=4,
                vae_batch_size=8,
                unet_channels=(16, 16, 32),
                unet_steps=6,
                batch_size=8,
                checkpoint_every=0,
                seed=self.seed,
            )
        return T2IConfig(vae_steps=250, unet_steps=700, seed=self.seed)

    @property
    def classifier(self) -> ClassifierConfig:
        """The sex classifier."""
        if self.fast:
            return ClassifierConfig(widths=(8, 8, 16, 16), epochs=2, patience=1, seed=self.seed)
        return ClassifierConfig(seed=self.seed)

    @property
    def evaluator(self) -> ClassifierConfig:
        """The independent evaluation classifier: another seed and width, other subjects."""
        if self.fast:
            return ClassifierConfig(
                widths=(12, 12, 24, 24), epochs=2, patience=1, seed=self.seed + 7
            )
        return ClassifierConfig(widths=(24, 48, 96, 192), seed=self.seed + 7)

    @property
    def remediation(self) -> RemediationConfig:
        """Subgroup distribution aligned tuning of the biased T2MedI."""
        if self.fast:
            return RemediationConfig(
                steps=2,
                batch_per_prompt=2,
                sampling_steps=2,
                grad_steps=1,
                lora_rank=2,
                audit_images=2,
                audit_steps=2,
                checkpoint_every=0,
                seed=self.seed,
            )
        # Two prompts per step balance the prompts' gradients. align_to="corrected" compares the
        # batch's mean probability with target · S (S: the classifier's soft confusion matrix),
        # so the PACC share rather than the classifier's mean probability meets the target (the
        # paper's form, align_to="probabilities", is biased toward the classifier's training
        # prior).
        return RemediationConfig(
            steps=150, prompts_per_step=2, align_to="corrected", audit_every=50, seed=self.seed
        )

    @property
    def audit_generation(self) -> GenerationConfig:
        """Images drawn by each demo audit (seeds never used in training)."""
        if self.fast:
            return GenerationConfig(n_per_prompt=4, seed=10_000 + self.seed, steps=2, shard_size=4)
        return GenerationConfig(n_per_prompt=64, seed=10_000 + self.seed, steps=25, shard_size=32)


# Sex-neutral glioma prompts in the corpus's caption style: what remediation trains on.
TRAIN_PROMPTS = (
    "Axial FLAIR MRI of the brain showing a glioma in the left frontal lobe.",
    "Axial T2-weighted MRI of the brain showing a glioma in the right parietal lobe.",
    "Axial contrast-enhanced T1-weighted brain MRI: glioma of the left temporal lobe with rim "
    "enhancement.",
    "Axial T1-weighted MR image demonstrating an intra-axial mass in the right occipital lobe.",
)
# The same clinical content in other words (and other sites): what the audits measure. None of
# these is a training prompt.
HELD_OUT_PROMPTS = (
    "Brain MRI, axial FLAIR slice: glioma involving the right frontal lobe.",
    "T2-weighted axial image of the brain with a glioma in the left parietal region.",
    "Post-contrast T1 axial brain MR: enhancing glioma in the right temporal lobe.",
    "Axial MR of the head, T1-weighted: intra-axial tumour of the left occipital lobe.",
)


# Report columns: audit folder → label. The evaluator's pair first (the headline), then the
# training classifier's reading of the same images.
REPORT_COLUMNS = {
    "before": "before",
    "after": "after",
    "before-trainclf": "before (training clf)",
    "after-trainclf": "after (training clf)",
}


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced: output paths and per-stage timings (seconds)."""

    out: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


def _stamp(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _stage(
    out: Path,
    name: str,
    settings: Any,
    work: Callable[[], dict[str, Any]],
    log: Callable[[str], None] | None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Run ``work`` unless ``out/.stages/name.json`` records the same settings.

    ``precision`` (a dtype other than float32) is part of the settings; the device is not (its
    results agree within kernel tolerance), so a stage finished on one device is reused on another.
    """
    stamp_file = out / ".stages" / f"{name}.json"
    stamp = _stamp(settings if precision is None else {"settings": settings, "dtype": precision})
    if stamp_file.is_file():
        done = json.loads(stamp_file.read_text())
        if done.get("stamp") == stamp:
            if log:
                log(f"[{name}] reused (finished earlier in {done['seconds']:.1f} s)")
            return {**done, "reused": True}
    if log:
        log(f"[{name}] running")
    start = time.perf_counter()
    info = work()
    seconds = time.perf_counter() - start
    record = {"stamp": stamp, "seconds": seconds, **info}
    atomic_write_json(stamp_file, record)
    if log:
        log(f"[{name}] done in {seconds:.1f} s")
    return {**record, "reused": False}


def run_demo(
    config: DemoConfig,
    *,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every stage of the demo that exists so far.

    Args:
        config: Demo settings.
        progress: Progress callback for long stages.
        log: Called with one line per stage start and end.

    Returns:
        Output folder and stage records.
    """
    out = config.out
    data = out / "data"
    where = config.placement
    dtype = where.describe()["dtype"]
    half = None if dtype == "float32" else dtype
    stage = functools.partial(_stage, precision=half)
    stages: dict[str, dict[str, Any]] = {}

    def phantom(name: str, cfg: PhantomConfig) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            result = build_phantom(data / name, cfg, overwrite=True, progress=progress)
            return {"path": str(result.root), "counts": result.counts}

        return stage(out, name, asdict(cfg), work, log)

    stages["corpus"] = phantom("corpus", config.corpus)
    stages["target_set"] = phantom("target_set", config.target_set)

    def target_work() -> dict[str, Any]:
        target = target_from_labels(
            data / "target_set" / "metadata.csv",
            column="sex",
            groups=("female", "male"),
            name="BraTS18 (phantom stand-in)",
        )
        target.save(out / "target.json", overwrite=True)
        return {"path": str(out / "target.json"), "proportions": dict(target.proportions)}

    stages["target"] = stage(
        out, "target", {"after": stages["target_set"]["stamp"]}, target_work, log
    )
    models = out / "models"

    def clip_work() -> dict[str, Any]:
        r = train_clip(
            data / "corpus",
            models / "clip",
            config.clip,
            overwrite=True,
            placement=where,
            progress=progress,
        )
        return {"path": str(r.path), "recall_at_1": r.recall_at_1, "chance": r.chance}

    stages["clip"] = stage(
        out,
        "clip",
        {"cfg": asdict(config.clip), "after": stages["corpus"]["stamp"]},
        clip_work,
        log,
    )

    def t2i_work() -> dict[str, Any]:
        r = train_t2i(
            data / "corpus",
            models / "t2medi",
            config.t2i,
            clip=models / "clip",
            overwrite=True,
            placement=where,
            progress=progress,
        )
        return {"path": str(r.path), "vae_loss": r.vae_loss, "unet_loss": r.unet_loss}

    stages["t2medi"] = stage(
        out,
        "t2medi",
        {"cfg": asdict(config.t2i), "after": stages["clip"]["stamp"]},
        t2i_work,
        log,
    )

    def classifier_work(
        name: str, cfg: ClassifierConfig, splits: tuple[str, str, str]
    ) -> Callable[[], dict[str, Any]]:
        def work() -> dict[str, Any]:
            r = train_classifier(
                data / "target_set",
                models / name,
                cfg,
                attribute="sex",
                groups=("female", "male"),
                splits=splits,
                overwrite=True,
                placement=where,
                progress=progress,
            )
            ev = r.evaluation
            return {
                "path": str(r.path),
                "balanced_accuracy": ev["balanced_accuracy"],
                "roc_auc": ev["roc_auc"],
                "ece": ev["ece"],
            }

        return work

    for name, cfg, splits in (
        ("classifier", config.classifier, ("train", "val", "test")),
        ("evaluator", config.evaluator, ("eval_train", "eval_val", "test")),
    ):
        stages[name] = stage(
            out,
            name,
            {"cfg": asdict(cfg), "splits": splits, "after": stages["target_set"]["stamp"]},
            classifier_work(name, cfg, splits),
            log,
        )

    def audit(checkpoint: Path, folder: str, clf: str) -> Callable[[], dict[str, Any]]:
        def work() -> dict[str, Any]:
            r = run_audit(
                AuditConfig(
                    checkpoint=checkpoint,
                    classifier=models / clf,
                    prompts=HELD_OUT_PROMPTS,
                    target=Target.load(out / "target.json"),
                    out=out / folder,
                    generation=config.audit_generation,
                    reference=data / "target_set",
                    reference_split="test",
                    n_boot=200 if config.fast else 1000,
                    overwrite=True,
                    placement=where,
                ),
                progress=progress,
            )
            return {
                "path": str(out / folder),
                "male_raw": r.share("male", "raw"),
                "male_corrected": r.share("male"),
                "kl": r.kl(),
            }

        return work

    audit_settings = {"gen": asdict(config.audit_generation), "prompts": HELD_OUT_PROMPTS}
    sides = (("", "evaluator"), ("-trainclf", "classifier"))
    for suffix, clf in sides:
        stages[f"audit_before{suffix}"] = stage(
            out,
            f"audit_before{suffix}",
            {
                **audit_settings,
                "after": [stages[k]["stamp"] for k in ("t2medi", clf, "target")],
            },
            audit(models / "t2medi", f"before{suffix}", clf),
            log,
        )

    def remediate_work() -> dict[str, Any]:
        r = remediate(
            models / "t2medi",
            classifier=models / "classifier",
            target=Target.load(out / "target.json"),
            prompts=TRAIN_PROMPTS,
            out=models / "t2medi-fair",
            config=config.remediation,
            image_encoders=[(models / "clip", 1.0)],
            overwrite=True,
            placement=where,
            progress=progress,
        )
        first, last = r.data["audits"][0], r.final_audit
        return {
            "path": str(r.path),
            "quick_audit_before": {"share": first["share"], "kl": first["kl"]},
            "quick_audit_after": {"share": last["share"], "kl": last["kl"]},
        }

    stages["remediate"] = stage(
        out,
        "remediate",
        {
            # a memory knob that leaves the weights unchanged is not part of the stamp
            "cfg": {
                k: v for k, v in asdict(config.remediation).items() if k != "unet_checkpointing"
            },
            "prompts": TRAIN_PROMPTS,
            "after": [stages[k]["stamp"] for k in ("t2medi", "classifier", "target", "clip")],
        },
        remediate_work,
        log,
    )
    for suffix, clf in sides:
        stages[f"audit_after{suffix}"] = stage(
            out,
            f"audit_after{suffix}",
            {
                **audit_settings,
                "after": [stages[k]["stamp"] for k in ("remediate", f"audit_before{suffix}")],
            },
            audit(models / "t2medi-fair", f"after{suffix}", clf),
            log,
        )

    def report_work() -> dict[str, Any]:
        from .reporting.compare import write_report

        audits = [out / f / "audit.json" for f in REPORT_COLUMNS]
        paths = [
            write_report(audits, out / name, labels=list(REPORT_COLUMNS.values()), overwrite=True)
            for name in ("report.html", "report.md", "report.tex")
        ]
        return {"paths": [str(p) for p in paths]}

    stages["report"] = stage(
        out,
        "report",
        {"after": [stages[f"audit_{f}"]["stamp"] for f in REPORT_COLUMNS]},
        report_work,
        log,
    )
    atomic_write_json(
        out / "demo.json",
        {
            "config": {
                k: str(v) if isinstance(v, os.PathLike) else v for k, v in asdict(config).items()
            },
            "stages": stages,
        },
    )
    return DemoResult(out=out, stages=stages)
