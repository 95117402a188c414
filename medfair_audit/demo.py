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
  (``models/classifier``, trained on the target set's ``train``/``val`` subjects), and keeps
  the weights whose quick audit on :data:`SELECTION_PROMPTS` (a third wording) reads nearest
  the target;
* the audits use :data:`HELD_OUT_PROMPTS` (same clinical content, other wording) and an
  **independent evaluation classifier** (``models/evaluator``: another seed, another width, and
  trained on target-set subjects the training classifier never saw, ``eval_train``/``eval_val``).
  Both classifiers are tested on the same held-out ``test`` subjects.

It audits the biased model on the held-out prompts with both classifiers (``before/`` with the
evaluator, ``before-trainclf/`` with the training classifier, which reads the evaluator's
images instead of drawing them again: ``AuditConfig.images_from``); the evaluator's audits are also
read by the other guides (:attr:`DemoConfig.guides`) and by an architecture-disjoint reader
(:attr:`DemoConfig.reader`: radiomics features and a logistic regression, trained on a phantom
set of its own), with each one's disagreement and out-of-support share. It then remediates it
(``models/t2medi-fair``), audits the remediated model with the same seeds (``after/``,
``after-trainclf/``; images pair up), and writes the report (``report.html``): the headline is the
evaluator's, the training classifier's reading stands beside it. Stages whose outputs exist with
the same settings are reused, so a re-run continues where an earlier one stopped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write_json
from .audit import AuditConfig, run_audit
from .config import (
    SPLITS,
    ClassifierConfig,
    ClassifierJob,
    CLIPJob,
    CLIPTrainConfig,
    Placement,
    RemediationConfig,
    RemediationJob,
    T2IConfig,
    T2IJob,
)
from .data.phantom import AnatomyModel, PhantomConfig, build_phantom
from .exceptions import ConfigError
from .generation import GenerationConfig
from .generation.engine import settings_hash
from .models.classifier import train_classifier
from .models.clip import train_clip
from .models.t2medi import train_t2i
from .progress import ProgressCallback
from .remediation import remediate
from .target import Target, target_from_labels

__all__ = ["DemoConfig", "DemoResult", "run_demo", "stage_names", "stage_span", "stage_table"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Settings of the demo.

    Args:
        out: Output folder (default ``reports/demo``).
        fast: A configuration of seconds for tests: its models are fixtures that show nothing.
        quick: The whole protocol at smaller sizes (about 10 minutes on 2 CPU cores): a
            smaller corpus and T2MedI, shorter tuning, fewer audit images, no extra guides and
            no training-classifier audits (the evaluator's audits still read their images with
            the training classifier). The effect is real but its intervals are wider and its
            models weaker than the full demo's; the report's columns say "quick".
        seed: Seed of every stage.
        corpus_male_fraction: Male share of the text-to-image training corpus.
        target_male_fraction: Male share of the BraTS18-like target set.
        device: Where every stage runs (``auto``: a GPU when there is one).
        dtype: Precision of the diffusion model in every stage (default float32, so a GPU run
            agrees with the committed CPU example within kernel tolerance).
        attributes: ``("sex",)`` (the default demo) or ``("sex", "age_band")``: the
            two-attribute pipeline (see :data:`ATTRIBUTE_STAGES`), written under
            ``OUT/attributes`` beside the default demo, whose CLIP and T2MedI it starts from.
        robust_guide: Also train ``classifier-robust`` (L2-PGD adversarial training: about
            five minutes on 2 CPU cores, the demo's costliest classifier) and read the
            evaluator's audits with it too. The demo aligns against the plain training
            classifier, so its headline does not need it; ``benchmarks/bench_transfer.py``
            does (its ``robust``, ``ensemble`` and ``combined`` variants guide with it).
    """

    out: Path = Path("reports/demo")
    fast: bool = False
    quick: bool = False
    seed: int = 0
    corpus_male_fraction: float = 0.85
    target_male_fraction: float = 0.58
    device: str = "auto"
    dtype: str = "float32"
    attributes: tuple[str, ...] = ("sex",)
    robust_guide: bool = False

    def __post_init__(self) -> None:
        attrs = tuple(a.strip() for a in self.attributes)
        if attrs not in DEMO_ATTRIBUTES:
            raise ConfigError(
                "expected one of "
                + " or ".join(",".join(a) for a in DEMO_ATTRIBUTES)
                + f", got {','.join(attrs)}",
                param="attributes",
            )
        object.__setattr__(self, "attributes", attrs)
        if self.fast and self.quick:
            raise ConfigError("choose --fast or --quick, not both", param="quick")
        if self.quick and attrs != ("sex",):
            raise ConfigError("--quick runs the one-attribute demo (sex)", param="quick")
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
            n=240 if self.fast else QUICK["corpus_n"] if self.quick else 4000,
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
            return CLIPTrainConfig.tiny(seed=self.seed)
        if self.quick:
            return CLIPTrainConfig(**QUICK["clip"], seed=self.seed)
        return CLIPTrainConfig(seed=self.seed)

    @property
    def t2i(self) -> T2IConfig:
        """The T2MedI pipeline."""
        if self.fast:
            return T2IConfig.tiny(checkpoint_every=0, seed=self.seed)
        if self.quick:
            return T2IConfig(**QUICK["t2i"], seed=self.seed)
        # Whole images for the autoencoder. Trained 800 of its 1000 steps on 32² crops it
        # reconstructs real slices as well in well under half the time (benchmarks/RESULTS.md,
        # autoencoder table), but both whole demo runs with it (seed 0, two machines) drew a
        # biased model that the evaluator read at its upper bound, and the one that went on
        # to remediation overshot the target far below it; the whole-image autoencoder's
        # demo reads close to the corpus before and reaches the target after.
        return T2IConfig(seed=self.seed)

    @property
    def classifier(self) -> ClassifierConfig:
        """The sex classifier."""
        if self.fast:
            return ClassifierConfig.tiny(seed=self.seed)
        return ClassifierConfig(seed=self.seed)

    @property
    def evaluator(self) -> ClassifierConfig:
        """The independent evaluation classifier: another seed and width, other subjects."""
        if self.fast:
            return ClassifierConfig.tiny(widths=(12, 12, 24, 24), seed=self.seed + 7)
        return ClassifierConfig(widths=(24, 48, 96, 192), seed=self.seed + 7)

    @property
    def guides(self) -> dict[str, ClassifierConfig]:
        """More guiding classifiers of sex for remediation (with the training classifier).

        Trained on the training classifier's subjects (``train``/``val``), never the
        evaluators': ``classifier-b`` differs in seed and width; with :attr:`robust_guide`,
        ``classifier-robust`` is adversarially trained (L2 PGD), so its gradients follow
        anatomy more than texture.
        """
        if self.quick:
            return {}
        if self.fast:
            guides = {
                "classifier-b": ClassifierConfig.tiny(widths=(8, 8, 8, 16), seed=self.seed + 3),
                "classifier-robust": ClassifierConfig.tiny(
                    robust="pgd", robust_steps=2, seed=self.seed + 4
                ),
            }
        else:
            guides = {
                "classifier-b": ClassifierConfig(widths=(12, 24, 48, 96), seed=self.seed + 3),
                "classifier-robust": ClassifierConfig(robust="pgd", seed=self.seed + 4),
            }
        if not self.robust_guide:
            del guides["classifier-robust"]
        return guides

    @property
    def reader_set(self) -> PhantomConfig:
        """Subjects of their own for the architecture-disjoint reader (same 58% male)."""
        return PhantomConfig(
            n=240 if self.fast else QUICK["reader_set_n"] if self.quick else 3000,
            seed=self.seed + 2,
            male_fraction=self.target_male_fraction,
            tumour_rate=1.0,
        )

    @property
    def reader(self) -> ClassifierConfig:
        """The architecture-disjoint evaluator: radiomics features + logistic regression."""
        return ClassifierConfig(architecture="radiomics", seed=self.seed + 11)

    @property
    def readers(self) -> tuple[str, ...]:
        """Who else reads the evaluator's audit images (``models/<name>``).

        The training classifier, the other guides and the architecture-disjoint reader.
        """
        return ("classifier", *self.guides, "reader")

    @property
    def report_columns(self) -> dict[str, str]:
        """The report's audits, folder → column label.

        :data:`REPORT_COLUMNS`, or with ``quick`` the evaluator's pair alone, labelled as the
        quick demo's.
        """
        if self.quick:
            return {"before": "before (quick demo)", "after": "after (quick demo)"}
        return dict(REPORT_COLUMNS)

    @property
    def guide(self) -> str:
        """The classifier remediation aligns against (``models/<guide>``): the training one.

        Chosen by ``benchmarks/bench_transfer.py`` (numbers in ``benchmarks/RESULTS.md``). With
        the T2MedI's 1000-step autoencoder, tuned against the PGD-trained classifier (the
        default while the autoencoder trained 250 steps) the evaluator read the result far
        above the guide and the target in both draws of the demo's models measured; the plain
        classifier and the ensemble of all three guides came closer, which of them closest
        changed with the draw, and the plain one needs no extra guide trained.
        """
        return "classifier"

    @property
    def ensemble(self) -> tuple[str, ...]:
        """More guides (of :attr:`guides`) aligned against beside :attr:`guide` (none)."""
        return ()

    @property
    def remediation(self) -> RemediationConfig:
        """Subgroup distribution aligned tuning of the biased T2MedI (see its ``demo()``)."""
        if self.fast:
            return RemediationConfig.tiny(seed=self.seed)
        if self.quick:
            return RemediationConfig.demo(**QUICK["remediation"], seed=self.seed)
        return RemediationConfig.demo(seed=self.seed)

    @property
    def audit_generation(self) -> GenerationConfig:
        """Images drawn by each demo audit (seeds never used in training)."""
        if self.fast:
            return GenerationConfig(n_per_prompt=4, seed=10_000 + self.seed, steps=2, shard_size=4)
        if self.quick:
            return GenerationConfig(**QUICK["audit"], seed=10_000 + self.seed)
        return GenerationConfig(n_per_prompt=64, seed=10_000 + self.seed, steps=25, shard_size=32)

    # -- the two-attribute pipeline (sex × age band) ---------------------------------------

    @property
    def age_anatomy(self) -> AnatomyModel:
        """Anatomy of the two-attribute data: ageing ×6, and the signs of ageing ×5.

        Ventricle and grey-matter ageing ×6, white-matter hyperintensities and sulcal widening
        (``age_signs``) ×5. With the first alone the evaluator reads the age band (<40, 40-59,
        60+) of held-out subjects near chance; ``benchmarks/bench_age_signal.py`` measures how
        far the signs of ageing lift it (``benchmarks/age_signal.json``) and that the sex
        reading keeps its accuracy.
        """
        return AnatomyModel(age_effect_scale=6.0, ventricle_gain_max=0.7, age_signs=5.0)

    @property
    def age_classifier(self) -> ClassifierConfig:
        """The age-band training classifier: the sex one's network, with :data:`AGE_TRAINING`."""
        return dataclasses.replace(self.classifier, **({} if self.fast else AGE_TRAINING))

    @property
    def age_evaluator(self) -> ClassifierConfig:
        """The age-band evaluator: the sex evaluator's network, with :data:`AGE_TRAINING`."""
        return dataclasses.replace(self.evaluator, **({} if self.fast else AGE_TRAINING))

    @property
    def corpus_attributes(self) -> PhantomConfig:
        """A corpus skewed in sex and age band: old men dominate (see :data:`CORPUS_JOINT`)."""
        return PhantomConfig(
            n=240 if self.fast else 3000,
            seed=self.seed + 20,
            joint=CORPUS_JOINT,
            tumour_rate=0.7,
            anatomy=self.age_anatomy,
        )

    @property
    def target_set_attributes(self) -> PhantomConfig:
        """The BraTS18-like set with sex and age bands (see :data:`TARGET_JOINT`)."""
        return dataclasses.replace(
            self.target_set,
            n=self.target_set.n if self.fast else TARGET_ATTRIBUTES_N,
            seed=self.seed + 21,
            male_fraction=0.5,  # the joint shares set the sexes
            joint=TARGET_JOINT,
            anatomy=self.age_anatomy,
        )

    @property
    def t2i_attributes(self) -> T2IConfig:
        """Fine-tuning of the default demo's T2MedI on the two-attribute corpus (VAE kept)."""
        if self.fast:
            return dataclasses.replace(self.t2i, vae_steps=0, unet_steps=4)
        return T2IConfig(vae_steps=0, unet_steps=300, seed=self.seed)

    @property
    def remediation_attributes(self) -> RemediationConfig:
        """Joint alignment over the six cells (``align="joint"``, PACC-corrected).

        Two prompts per step, the committed two-attribute example's tuning: it keeps the last
        weights, with a quick audit every 50 steps of 32 images per prompt (choosing the kept
        weights on selection prompts is measured for one attribute only).
        """
        if self.fast:
            return dataclasses.replace(self.remediation, align="joint")
        if self.quick:
            return dataclasses.replace(self.remediation, align="joint", prompts_per_step=2)
        return dataclasses.replace(
            self.remediation, align="joint", prompts_per_step=2, keep="last", audit_every=50,
            audit_images=32,
        )  # fmt: skip


#: What ``--quick`` shrinks (every other setting is the full demo's): chosen so that the whole
#: protocol runs in about 10 minutes on 2 CPU cores and the biased model still reads far above
#: the target by the evaluator (``benchmarks/RESULTS.md``, quick demo).
QUICK: dict[str, Any] = {
    "corpus_n": 1500,
    "reader_set_n": 1500,
    "clip": {"epochs": 3},
    "t2i": {"vae_steps": 400, "vae_batch_size": 16, "unet_steps": 650, "batch_size": 32,
            "lr": 1e-3, "unet_channels": (32, 64, 64), "checkpoint_every": 0},
    "remediation": {"steps": 60, "prompts_per_step": 2, "batch_per_prompt": 6,
                    "sampling_steps": 8, "audit_every": 0, "audit_images": 8, "audit_steps": 15,
                    "keep": "last"},
    "audit": {"n_per_prompt": 32, "steps": 20, "shard_size": 32},
}  # fmt: skip

#: How the age-band classifiers train differently from the sex ones: with five epochs of
#: patience they stopped on validation noise (best epoch 7-8, held-out balanced accuracy
#: 0.68-0.76 by seed); ``bench_age_signal.py --training`` measures the levers.
AGE_TRAINING: dict[str, Any] = {"patience": 10, "epochs": 80}
#: Images of the two-attribute target set (the sex-only demo's has 3000): three age bands need
#: more training subjects than two sexes.
TARGET_ATTRIBUTES_N = 6000

#: The two attribute sets the demo runs.
DEMO_ATTRIBUTES = (("sex",), ("sex", "age_band"))
#: Sex × age band shares of the two-attribute corpus: 85% male as the default demo, and old
#: (60+) subjects over-represented.
CORPUS_JOINT = {
    "female/<40": 0.03,
    "female/40-59": 0.05,
    "female/60+": 0.07,
    "male/<40": 0.10,
    "male/40-59": 0.25,
    "male/60+": 0.50,
}
#: Sex × age band shares of the two-attribute target set: 58% male and, independently, 25% /
#: 40% / 35% in the three age bands.
TARGET_JOINT = {
    "female/<40": 0.105,
    "female/40-59": 0.168,
    "female/60+": 0.147,
    "male/<40": 0.145,
    "male/40-59": 0.232,
    "male/60+": 0.203,
}


# Sex-neutral glioma prompts in the corpus's caption style: what remediation trains on.
TRAIN_PROMPTS = (
    "Axial FLAIR MRI of the brain showing a glioma in the left frontal lobe.",
    "Axial T2-weighted MRI of the brain showing a glioma in the right parietal lobe.",
    "Axial contrast-enhanced T1-weighted brain MRI: glioma of the left temporal lobe with rim "
    "enhancement.",
    "Axial T1-weighted MR image demonstrating an intra-axial mass in the right occipital lobe.",
)
# The training prompts and free wordings a user might type (words the corpus's captions never
# use among them): what ``benchmarks/bench_transfer.py``'s ``varied-prompts`` variant tunes on.
# On the example's models, tuned on TRAIN_PROMPTS the model moves every prompt towards female,
# and a held-out prompt the biased model already draws near balance goes far past the target;
# tuned on these, it evens the prompts out but, in the demo's 150 steps, stops above the
# target. On models trained from another seed, both go far past it on one prompt
# (benchmarks/RESULTS.md, transfer).
VARIED_TRAIN_PROMPTS = (
    *TRAIN_PROMPTS,
    "MRI head, axial T2: high-grade glioma in the left frontal lobe.",
    "Brain tumour on an axial T1-weighted MRI, right temporal lobe.",
    "Axial FLAIR image of the head showing a mass in the left occipital lobe.",
    "Glioblastoma of the right parietal lobe, axial post-contrast T1 MRI.",
    "Axial MR scan of the brain: infiltrative glioma, right frontal lobe.",
    "T1-weighted axial MRI with a tumour in the left parietal lobe.",
    "Contrast-enhanced axial brain MR showing an enhancing lesion in the left temporal lobe.",
    "Axial T2 brain MR image: space-occupying lesion of the right occipital lobe.",
)
# A third wording of the same content, apart from the training and the held-out prompts: what
# the remediation's quick audits read to choose the weights it keeps (``keep="best"``), so the
# choice follows how the model draws wordings it was not tuned on without looking at the
# evaluation's prompts.
SELECTION_PROMPTS = (
    "FLAIR MR image of the brain in the axial plane, left frontal glioma.",
    "Axial T2 MRI of the head demonstrating a right parietal glioma.",
    "Glioma of the left temporal lobe, enhancing on axial T1 post-contrast brain MRI.",
    "Axial T1 MRI of the brain: right occipital intra-axial glioma.",
)
# The same clinical content in other words (and other sites): what the audits measure. None of
# these is a training prompt.
HELD_OUT_PROMPTS = (
    "Brain MRI, axial FLAIR slice: glioma involving the right frontal lobe.",
    "T2-weighted axial image of the brain with a glioma in the left parietal region.",
    "Post-contrast T1 axial brain MR: enhancing glioma in the right temporal lobe.",
    "Axial MR of the head, T1-weighted: intra-axial tumour of the left occipital lobe.",
)

# Parts of free wordings of the same clinical content (sequence, lesion, site, sentence
# pattern): :func:`prompt_wordings` combines them into many prompts a user might type, for
# tuning on a spread of wordings and choosing the kept weights on others of the same spread.
# No pattern is a held-out prompt's, and no combination is a held-out prompt.
_SEQUENCES = (
    "FLAIR", "T2-weighted", "T2", "T1-weighted", "contrast-enhanced T1-weighted",
    "post-contrast T1", "gadolinium-enhanced T1",
)  # fmt: skip
_LESIONS = (
    "glioma", "high-grade glioma", "low-grade glioma", "glioblastoma", "tumour", "mass",
    "intra-axial mass", "infiltrative lesion",
)  # fmt: skip
_SITES = tuple(
    (side, lobe)
    for side in ("left", "right")
    for lobe in ("frontal", "parietal", "temporal", "occipital")
)
_PATTERNS = (
    "Axial {seq} MRI of the brain with {a} {lesion} in the {side} {lobe} lobe.",
    "{Seq} axial brain MRI: {lesion}, {side} {lobe} lobe.",
    "Brain MR, axial {seq} image, showing a {side} {lobe} {lesion}.",
    "Axial {seq} image of the head: {lesion} of the {side} {lobe} lobe.",
    "MRI of the brain, axial {seq}, demonstrating {a} {lesion} in the {side} {lobe} lobe.",
    "{Lesion} in the {side} {lobe} lobe on an axial {seq} brain MRI.",
    "Axial {seq} MR of the brain, {side} {lobe} {lesion}.",
    "Head MRI in the axial plane, {seq}: {a} {lesion} of the {side} {lobe} lobe.",
)


def prompt_wordings(n: int, *, seed: int, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``n`` distinct sex-neutral glioma prompts drawn from the wording parts above.

    The same ``seed`` gives the same prompts; none is in ``exclude`` or :data:`HELD_OUT_PROMPTS`.

    Raises:
        ConfigError: More prompts than the parts make.
    """
    rng = random.Random(seed)
    banned = set(exclude) | set(HELD_OUT_PROMPTS)
    made = len(_SEQUENCES) * len(_LESIONS) * len(_SITES) * len(_PATTERNS)
    if not 0 <= n <= made - len(banned):
        raise ConfigError(f"n must be between 0 and {made - len(banned)}, got {n}", param="n")
    out: list[str] = []
    while len(out) < n:
        seq, lesion = rng.choice(_SEQUENCES), rng.choice(_LESIONS)
        side, lobe = rng.choice(_SITES)
        text = rng.choice(_PATTERNS).format(
            seq=seq, Seq=seq[0].upper() + seq[1:], lesion=lesion,
            Lesion=lesion[0].upper() + lesion[1:], side=side, lobe=lobe,
            a="an" if lesion[0] in "aeiou" else "a",
        )  # fmt: skip
        if text not in banned:
            banned.add(text)
            out.append(text)
    return tuple(out)


#: Tuning prompts of many wordings (one per step of the demo's tuning) and selection prompts
#: of the same spread, none of them a tuning or a held-out prompt.
WORDING_TRAIN_PROMPTS = prompt_wordings(150, seed=0)
WORDING_SELECTION_PROMPTS = prompt_wordings(8, seed=1, exclude=WORDING_TRAIN_PROMPTS)


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
    stamp = settings_hash(
        settings if precision is None else {"settings": settings, "dtype": precision}
    )
    if stamp_file.is_file():
        done = json.loads(stamp_file.read_text())
        # stamps written before "finished" was recorded: the file was written when it finished
        done.setdefault("finished", _utc(stamp_file.stat().st_mtime))
        if done.get("stamp") == stamp:
            if log:
                log(f"[{name}] reused (finished earlier in {done['seconds']:.1f} s)")
            return {**done, "reused": True}
    if log:
        log(f"[{name}] running")
    start, cpu_start = time.perf_counter(), _cpu_time()
    info = work()
    seconds = time.perf_counter() - start
    # with ``seconds``, how many cores the stage kept busy (the stage table's "CPU use")
    cpu_seconds = _cpu_time() - cpu_start
    record = {
        "stamp": stamp,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "finished": _utc(time.time()),
        **info,
    }
    atomic_write_json(stamp_file, record)
    if log:
        log(f"[{name}] done in {seconds:.1f} s")
    return {**record, "reused": False}


def _cpu_time() -> float:
    """CPU seconds of this process's threads and of its finished child processes.

    Children count once they have been waited for (a stage's worker pool, when it closes).
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _utc(timestamp: float) -> str:
    """A POSIX time as an ISO 8601 UTC time to the second."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


#: Fields added to stage configurations after stamps were first written, with their defaults:
#: left out of a stamp while at the default, so that stages finished before them stay valid.
LATER_FIELDS: dict[str, Any] = {
    "age_bands": (40, 60),
    "joint": None,
    "age_effect_scale": 1.0,
    "ventricle_gain_max": 0.45,
    "align": "joint",
    "align_weights": None,
    "architecture": "resnet",
    "robust": "none",
    "robust_eps": 0.5,
    "robust_steps": 3,
    "augment": 0,
    "decode_checkpointing": None,
    "wmh_log_load_at_60": -1.5,
    "wmh_log_load_per_year": 0.07,
    "wmh_log_load_sd": 0.7,
    "wmh_deep_per_load": 6.0,
    "atrophy_per_year": 0.004,
    "atrophy_onset": 20.0,
    "age_signs": 0.0,
    "vae_crop": 0,
    "vae_crop_share": 0.8,
}


def _settings(cfg: Any) -> Any:
    """``asdict(cfg)`` without :data:`LATER_FIELDS` that hold their defaults (recursively)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: strip(v)
                for k, v in node.items()
                if not (k in LATER_FIELDS and v == LATER_FIELDS[k])
            }
        return node

    return strip(asdict(cfg))


@dataclass(frozen=True)
class Stage:
    """One step of the demo, declared: its name, the stages it reads, its settings, its work.

    Its output is keyed by the generation engine's :func:`settings_hash` of the settings and of
    the stamps of its inputs (one input: ``"after": stamp``; several: a list), so a stage reruns
    exactly when its settings or anything upstream changed.
    """

    name: str
    inputs: tuple[str, ...]
    settings: dict[str, Any]
    work: Callable[[], dict[str, Any]]

    def key(self, stamps: dict[str, str]) -> dict[str, Any]:
        """What the stamp hashes, given the stamps of the finished stages."""
        if not self.inputs:
            return self.settings
        after = [stamps[n] for n in self.inputs]
        return {**self.settings, "after": after[0] if len(after) == 1 else after}


@dataclass(frozen=True)
class _Context:
    """What every stage's work shares: the settings, the placement and the progress callback."""

    config: DemoConfig
    progress: ProgressCallback | None

    @property
    def where(self) -> Placement:
        return self.config.placement


def _phantom(ctx: _Context, name: str, cfg: PhantomConfig, folder: Path) -> Stage:
    def work() -> dict[str, Any]:
        result = build_phantom(folder, cfg, overwrite=True, progress=ctx.progress)
        return {"path": str(result.root), "counts": result.counts}

    return Stage(name, (), _settings(cfg), work)


def _clip(ctx: _Context, data: Path, folder: Path) -> Stage:
    def work() -> dict[str, Any]:
        job = CLIPJob(
            data=data, out=folder, config=ctx.config.clip, overwrite=True, placement=ctx.where
        )
        r = train_clip(job, progress=ctx.progress)
        return {"path": str(r.path), "recall_at_1": r.recall_at_1, "chance": r.chance}

    return Stage("clip", ("corpus",), {"cfg": asdict(ctx.config.clip)}, work)


def _t2medi(
    ctx: _Context,
    name: str,
    cfg: T2IConfig,
    inputs: tuple[str, ...],
    *,
    data: Path,
    folder: Path,
    clip: Path | None = None,
    init: Path | None = None,
) -> Stage:
    def work() -> dict[str, Any]:
        job = T2IJob(
            data=data, out=folder, config=cfg, clip=clip, init=init, overwrite=True,
            placement=ctx.where,
        )  # fmt: skip
        r = train_t2i(job, progress=ctx.progress)
        info = {"path": str(r.path), "unet_loss": r.unet_loss}
        return info if init else {"path": str(r.path), "vae_loss": r.vae_loss, **info}

    return Stage(name, inputs, {"cfg": _settings(cfg)}, work)


def _target(name: str, inputs: tuple[str, ...], labels: Path, out: Path, **how: Any) -> Stage:
    def work() -> dict[str, Any]:
        target = target_from_labels(labels, name="BraTS18 (phantom stand-in)", **how)
        target.save(out, overwrite=True)
        return {"path": str(out), "proportions": dict(target.proportions)}

    return Stage(name, inputs, {}, work)


def _classifier(
    ctx: _Context,
    name: str,
    cfg: ClassifierConfig,
    splits: tuple[str, str, str],
    inputs: tuple[str, ...],
    *,
    data: Path,
    folder: Path,
    attribute: str = "sex",
    groups: tuple[str, ...] | None = ("female", "male"),
) -> Stage:
    def work() -> dict[str, Any]:
        job = ClassifierJob(
            data=data, out=folder, config=cfg, attribute=attribute, groups=groups,
            splits=splits, overwrite=True, placement=ctx.where,
        )  # fmt: skip
        r = train_classifier(job, progress=ctx.progress)
        ev = r.evaluation
        return {
            "path": str(r.path),
            "balanced_accuracy": ev["balanced_accuracy"],
            "roc_auc": ev["roc_auc"],
            "ece": ev["ece"],
        }

    settings: dict[str, Any] = {"cfg": _settings(cfg), "splits": splits}
    if attribute != "sex":
        settings["attribute"] = attribute
    return Stage(name, inputs, settings, work)


def _audit(
    ctx: _Context,
    name: str,
    inputs: tuple[str, ...],
    *,
    checkpoint: Path,
    classifier: Path | dict[str, Path],
    target: Path,
    reference: Path,
    folder: Path,
    readers: tuple[Path, ...] = (),
    images_from: Path | None = None,
) -> Stage:
    cfg = ctx.config

    def work() -> dict[str, Any]:
        r = run_audit(
            AuditConfig(
                checkpoint=checkpoint,
                classifier=classifier,
                prompts=HELD_OUT_PROMPTS,
                target=Target.load(target),
                out=folder,
                generation=cfg.audit_generation,
                reference=reference,
                reference_split="test",
                n_boot=200 if cfg.fast else 1000,
                overwrite=True,
                placement=ctx.where,
                readers=readers,
                images_from=images_from,
            ),
            progress=ctx.progress,
        )
        info = {"path": str(folder), "kl": r.kl().to_json()}
        if "male" in r.groups:
            info.update(
                male_raw=r.share("male", "raw").to_json(), male_corrected=r.share("male").to_json()
            )
        if r.joint is not None:
            info["rejected_cells"] = list(r.joint.rejected)
        return info

    settings: dict[str, Any] = {
        "gen": asdict(cfg.audit_generation),
        "prompts": HELD_OUT_PROMPTS,
        # shards record how their pixels were drawn (``images_from``): an audit finished
        # before runs again once, reusing its shards, and records it
        "shards": 2,
        # the share over the wordings (``dispersion.over_prompts``): an audit finished before
        # it (or before its prompts' sd left out the held-out matrix's part) runs again once
        # from its shards
        "statistics": 3,
    }
    if readers:
        settings["readers"] = [p.name for p in readers]
    if images_from is not None:
        settings["images_from"] = images_from.name
    return Stage(name, inputs, settings, work)


def _images_of(suffix: str, side: str, root: Path) -> tuple[tuple[str, ...], Path | None]:
    """A second reader's audit reads the evaluator's images of the same side (no redraw).

    Returns the stage inputs it adds and the folder it reads the images from.
    """
    if not suffix:
        return (), None
    return (f"audit_{side}",), root / side.removeprefix("sa_")


def _remediate(
    ctx: _Context,
    name: str,
    rcfg: RemediationConfig,
    inputs: tuple[str, ...],
    *,
    checkpoint: Path,
    classifier: Path | dict[str, Path],
    target: Path,
    folder: Path,
    encoder: Path,
    ensemble: tuple[Path, ...] = (),
) -> Stage:
    # the kept weights are chosen on prompts worded apart from the training and held-out ones
    audit_prompts = SELECTION_PROMPTS if rcfg.keep == "best" else ()

    def work() -> dict[str, Any]:
        r = remediate(
            RemediationJob(
                checkpoint=checkpoint,
                classifier=classifier,
                ensemble=ensemble,
                target=Target.load(target),
                prompts=TRAIN_PROMPTS,
                audit_prompts=audit_prompts,
                out=folder,
                config=rcfg,
                image_encoders=[(encoder, 1.0)],
                overwrite=True,
                placement=ctx.where,
            ),
            progress=ctx.progress,
        )
        first, last = r.first_audit, r.final_audit
        return {
            "path": str(r.path),
            "quick_audit_before": {"share": first["share"], "kl": first["kl"]},
            "quick_audit_after": {"share": last["share"], "kl": last["kl"]},
            "kept_step": r.kept_step,
        }

    # a memory knob that leaves the weights unchanged is not part of the stamp
    cfg = {k: v for k, v in _settings(rcfg).items() if k != "unet_checkpointing"}
    settings: dict[str, Any] = {"cfg": cfg, "prompts": TRAIN_PROMPTS}
    if audit_prompts:
        settings["audit_prompts"] = audit_prompts
    if ensemble:
        settings["ensemble"] = [p.name for p in ensemble]
    return Stage(name, inputs, settings, work)


def _report(
    name: str,
    inputs: tuple[str, ...],
    folder: Path,
    stem: Path,
    columns: dict[str, str] = REPORT_COLUMNS,
) -> Stage:
    """Reports (HTML, Markdown, LaTeX) of the audits in ``folder`` (``columns``: folder → label)."""

    def work() -> dict[str, Any]:
        from .reporting.compare import write_report

        files = [folder / f / "audit.json" for f in columns]
        labels = list(columns.values())
        paths = [
            write_report(files, stem.with_suffix(ext), labels=labels, overwrite=True)
            for ext in (".html", ".md", ".tex")
        ]
        return {"paths": [str(p) for p in paths]}

    return Stage(name, inputs, {} if columns == REPORT_COLUMNS else {"columns": columns}, work)


#: The demo's stages in the order they run (others, e.g. the two-attribute pipeline's, follow).
STAGE_ORDER = (
    "corpus", "target_set", "clip", "t2medi", "target", "classifier", "evaluator",
    "classifier-b", "classifier-robust", "reader_set", "reader", "audit_before",
    "audit_before-trainclf", "remediate", "audit_after", "audit_after-trainclf", "report",
)  # fmt: skip


def stage_names(stages: dict[str, Any]) -> list[str]:
    """The stages of ``stages`` in running order (default demo, two-attribute, then by name)."""
    order = (*STAGE_ORDER, *ATTRIBUTE_STAGES)
    return [n for n in order if n in stages] + sorted(set(stages) - set(order))


def stage_table(stages: dict[str, dict[str, Any]]) -> list[str]:
    """Each stage's wall time as Markdown rows (from ``demo.json``'s ``stages``), then the total.

    A stage reused from an earlier invocation shows the time it took when it ran. Where every
    stage recorded its CPU time (``cpu_seconds``), a column gives the cores it kept busy on
    average (CPU time over wall time): a stage well under the machine's cores leaves room to
    run another beside it.
    """
    names = stage_names(stages)
    cpu = bool(stages) and all("cpu_seconds" in st for st in stages.values())
    head = "| stage | wall time | CPU use | ran |" if cpu else "| stage | wall time | ran |"
    lines = [head, "|---|---:|---:|---|" if cpu else "|---|---:|---|"]
    for name in names:
        st = stages[name]
        when = "earlier (reused now)" if st.get("reused") else "this run"
        seconds = st.get("seconds") or 0
        use = f" {_cores(st['cpu_seconds'], seconds)} |" if cpu else ""
        lines.append(f"| {name} | {seconds:.0f} s |{use} {when} |")
    total = sum(st.get("seconds") or 0 for st in stages.values())
    if cpu:
        all_cpu = sum(st["cpu_seconds"] for st in stages.values())
        lines.append(f"| **all stages** | **{total / 60:.1f} min** | {_cores(all_cpu, total)} | |")
    else:
        lines.append(f"| **all stages** | **{total / 60:.1f} min** | |")
    return lines


def _cores(cpu_seconds: float, seconds: float) -> str:
    """CPU time over wall time, as the number of cores kept busy ("–" for an instant)."""
    return f"{cpu_seconds / seconds:.1f} cores" if seconds >= 0.5 else "–"


def stage_span(record: dict[str, Any]) -> str:
    """When a demo record's stages ran, as a sentence (empty for records without the times).

    The wall clock from the first stage's start to the last stage's end, beside the stages'
    summed time: equal for one uninterrupted run from scratch, larger when stages were reused
    from earlier invocations. With the machine's CPU count and the torch threads of the run
    that wrote the record.
    """
    stages = list(record.get("stages", {}).values())
    if not stages or any("finished" not in st for st in stages):
        return ""
    ends = [dt.datetime.fromisoformat(st["finished"]) for st in stages]
    lengths = [dt.timedelta(seconds=st.get("seconds") or 0) for st in stages]
    starts = [end - length for end, length in zip(ends, lengths, strict=True)]
    first, last = min(starts), max(ends)
    wall = (last - first).total_seconds() / 60
    total = sum(st.get("seconds") or 0 for st in stages) / 60
    until = last.strftime("%H:%M") if last.date() == first.date() else f"{last:%Y-%m-%d %H:%M}"
    machine = record.get("machine") or {}
    where = (
        f" on {machine['cpus']} CPU cores ({machine['threads']} torch threads)"
        if {"cpus", "threads"} <= set(machine)
        else ""
    )
    return (
        f"The stages ran from {first:%Y-%m-%d %H:%M} to {until} UTC{where}: {wall:.1f} minutes "
        f"of wall clock for {total:.1f} minutes of stage time."
    )


def run_demo(
    config: DemoConfig,
    *,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    until: str | None = None,
) -> DemoResult:
    """Run every stage of the demo (the default, or the two-attribute pipeline).

    Args:
        config: Demo settings.
        progress: Progress callback for long stages.
        log: Called with one line per stage start and end.
        until: Stop after this stage (e.g. ``"reader"``: data and models, no audit), as a
            benchmark that starts from the demo's models does; ``demo.json``, the record of a
            whole run, is then left as it was.

    Returns:
        Output folder and stage records.
    """
    out = config.out
    dtype = config.placement.describe()["dtype"]
    half = None if dtype == "float32" else dtype
    stages: dict[str, dict[str, Any]] = {}
    plan = demo_stages(config, progress=progress)
    names = [st.name for st in plan]
    if until is not None and until not in names:
        raise ConfigError(f"expected a stage of {', '.join(names)}, got '{until}'", param="until")
    for st in plan:
        stamps = {n: stages[n]["stamp"] for n in st.inputs}
        stages[st.name] = _stage(out, st.name, st.key(stamps), st.work, log, precision=half)
        if st.name == until:
            return DemoResult(out=out, stages=stages)  # a partial run leaves demo.json as it was
    record = out / "demo.json" if config.attributes == ("sex",) else out / "attributes/demo.json"
    import torch

    atomic_write_json(
        record,
        {
            "config": {
                k: str(v) if isinstance(v, os.PathLike) else v for k, v in asdict(config).items()
            },
            "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads()},
            "stages": stages,
        },
    )
    return DemoResult(out=out, stages=stages)


def demo_stages(config: DemoConfig, *, progress: ProgressCallback | None = None) -> list[Stage]:
    """The demo's stages in running order: the shared base, then one attribute or two."""
    ctx = _Context(config, progress)
    base = _base_stages(ctx)
    return base + (_sex_stages(ctx) if config.attributes == ("sex",) else _attribute_stages(ctx))


def _base_stages(ctx: _Context) -> list[Stage]:
    """The biased corpus, CLIP and the T2MedI trained on it (both pipelines start here)."""
    cfg, data, models = ctx.config, ctx.config.out / "data", ctx.config.out / "models"
    return [
        _phantom(ctx, "corpus", cfg.corpus, data / "corpus"),
        _clip(ctx, data / "corpus", models / "clip"),
        _t2medi(ctx, "t2medi", cfg.t2i, ("clip",), data=data / "corpus",
                folder=models / "t2medi", clip=models / "clip"),
    ]  # fmt: skip


#: Audits of one pipeline: folder suffix → the classifier role that reads the images.
SIDES = (("", "evaluator"), ("-trainclf", "classifier"))
#: Classifier roles → the splits each trains, validates and is tested on.
ROLES = {"classifier": ("train", "val", "test"), "evaluator": ("eval_train", "eval_val", "test")}


def _sex_stages(ctx: _Context) -> list[Stage]:
    """The default demo: one attribute (sex)."""
    cfg, out = ctx.config, ctx.config.out
    data, models, target = out / "data", out / "models", out / "target.json"
    role_cfg = {"classifier": cfg.classifier, "evaluator": cfg.evaluator}
    stages = [
        _phantom(ctx, "target_set", cfg.target_set, data / "target_set"),
        _target("target", ("target_set",), data / "target_set" / "metadata.csv", target,
                column="sex", groups=("female", "male")),
    ]  # fmt: skip
    stages += [
        _classifier(ctx, role, role_cfg[role], splits, ("target_set",),
                    data=data / "target_set", folder=models / role)
        for role, splits in ROLES.items()
    ]  # fmt: skip
    stages += [
        _classifier(ctx, name, c, ROLES["classifier"], ("target_set",),
                    data=data / "target_set", folder=models / name)
        for name, c in cfg.guides.items()
    ]  # fmt: skip
    stages += [
        _phantom(ctx, "reader_set", cfg.reader_set, data / "reader_set"),
        _classifier(ctx, "reader", cfg.reader, SPLITS, ("reader_set",),
                    data=data / "reader_set", folder=models / "reader"),
    ]  # fmt: skip
    # The evaluator's audits also read the images with every guide and the disjoint reader;
    # the "-trainclf" audits read them with the classifier remediation is tuned against.
    readers: dict[str, tuple[str, ...]] = {"": cfg.readers, "-trainclf": ()}
    sides = (("", "evaluator"), ("-trainclf", cfg.guide))[: 1 if cfg.quick else 2]
    stages += [
        _audit(ctx, f"audit_before{suffix}",
               ("t2medi", role, "target", *readers[suffix], *_images_of(suffix, "before", out)[0]),
               checkpoint=models / "t2medi", classifier=models / role, target=target,
               reference=data / "target_set", folder=out / f"before{suffix}",
               readers=tuple(models / r for r in readers[suffix]),
               images_from=_images_of(suffix, "before", out)[1])
        for suffix, role in sides
    ]  # fmt: skip
    ensemble = tuple(models / g for g in cfg.ensemble)
    stages.append(
        _remediate(ctx, "remediate", cfg.remediation,
                   ("t2medi", cfg.guide, "target", "clip", *cfg.ensemble),
                   checkpoint=models / "t2medi", classifier=models / cfg.guide,
                   target=target, folder=models / "t2medi-fair", encoder=models / "clip",
                   ensemble=ensemble)
    )  # fmt: skip
    stages += [
        _audit(ctx, f"audit_after{suffix}",
               ("remediate", f"audit_before{suffix}", *_images_of(suffix, "after", out)[0]),
               checkpoint=models / "t2medi-fair", classifier=models / role, target=target,
               reference=data / "target_set", folder=out / f"after{suffix}",
               readers=tuple(models / r for r in readers[suffix]),
               images_from=_images_of(suffix, "after", out)[1])
        for suffix, role in sides
    ]  # fmt: skip
    columns = cfg.report_columns
    audits = tuple(f"audit_{f}" for f in columns)
    return [*stages, _report("report", audits, out, out / "report", columns)]


#: The two-attribute pipeline's stages (``medfair demo --attributes sex,age_band``), written
#: under ``OUT/attributes``: a corpus skewed in sex and age band and a target set with both
#: (age effects on anatomy ×6, so that the age band can be read); the default demo's T2MedI
#: fine-tuned on that corpus; one classifier per attribute, twice (training and independent
#: evaluation, as in the default demo); audits before and after joint remediation.
ATTRIBUTE_STAGES = (
    "sa_corpus",
    "sa_target_set",
    "sa_target",
    "sa_t2medi",
    "sa_classifier_sex",
    "sa_classifier_age_band",
    "sa_evaluator_sex",
    "sa_evaluator_age_band",
    "audit_sa_before",
    "audit_sa_before-trainclf",
    "sa_remediate",
    "audit_sa_after",
    "audit_sa_after-trainclf",
    "sa_report",
)


def _attribute_stages(ctx: _Context) -> list[Stage]:
    """Sex × age band: every stage of :data:`ATTRIBUTE_STAGES`."""
    cfg, root = ctx.config, ctx.config.out / "attributes"
    data, models, target = root / "data", root / "models", root / "target.json"
    role_cfg = {
        ("classifier", "sex"): cfg.classifier,
        ("evaluator", "sex"): cfg.evaluator,
        ("classifier", "age_band"): cfg.age_classifier,
        ("evaluator", "age_band"): cfg.age_evaluator,
    }
    pairs = {role: {a: models / f"{role}-{a}" for a in cfg.attributes} for role in ROLES}
    clf_stages = {role: tuple(f"sa_{role}_{a}" for a in cfg.attributes) for role in ROLES}
    stages = [
        _phantom(ctx, "sa_corpus", cfg.corpus_attributes, data / "corpus"),
        _phantom(ctx, "sa_target_set", cfg.target_set_attributes, data / "target_set"),
        _target("sa_target", ("sa_target_set",), data / "target_set" / "metadata.csv", target,
                column=["sex", "age_band"]),
        _t2medi(ctx, "sa_t2medi", cfg.t2i_attributes, ("t2medi", "sa_corpus"),
                data=data / "corpus", folder=models / "t2medi",
                init=cfg.out / "models" / "t2medi"),
    ]  # fmt: skip
    stages += [
        _classifier(ctx, f"sa_{role}_{attr}", role_cfg[role, attr], splits, ("sa_target_set",),
                    data=data / "target_set", folder=pairs[role][attr], attribute=attr,
                    groups=None)
        for role, splits in ROLES.items()
        for attr in cfg.attributes
    ]  # fmt: skip
    stages += [
        _audit(ctx, f"audit_sa_before{suffix}",
               ("sa_t2medi", *clf_stages[role], "sa_target",
                *_images_of(suffix, "sa_before", root)[0]),
               checkpoint=models / "t2medi", classifier=pairs[role], target=target,
               reference=data / "target_set", folder=root / f"before{suffix}",
               images_from=_images_of(suffix, "sa_before", root)[1])
        for suffix, role in SIDES
    ]  # fmt: skip
    stages.append(
        _remediate(ctx, "sa_remediate", cfg.remediation_attributes,
                   ("sa_t2medi", *clf_stages["classifier"], "sa_target", "clip"),
                   checkpoint=models / "t2medi", classifier=pairs["classifier"], target=target,
                   folder=models / "t2medi-fair", encoder=cfg.out / "models" / "clip")
    )  # fmt: skip
    stages += [
        _audit(ctx, f"audit_sa_after{suffix}",
               ("sa_remediate", f"audit_sa_before{suffix}",
                *_images_of(suffix, "sa_after", root)[0]),
               checkpoint=models / "t2medi-fair", classifier=pairs[role], target=target,
               reference=data / "target_set", folder=root / f"after{suffix}",
               images_from=_images_of(suffix, "sa_after", root)[1])
        for suffix, role in SIDES
    ]  # fmt: skip
    audits = tuple(f"audit_sa_{f}" for f in REPORT_COLUMNS)
    return [*stages, _report("sa_report", audits, root, root / "report")]
