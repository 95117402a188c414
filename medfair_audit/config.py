"""Every stage's configuration in one place, and the single source of its defaults.

Each stage takes a frozen, keyword-only dataclass that validates itself on construction and
raises :class:`~medfair_audit.exceptions.ConfigError` naming the argument at fault. The training
and remediation configurations are defined here, without importing torch, so that the CLI takes
its option defaults from these fields (a test checks that none differs) while ``medfair --help``
stays fast. Named presets replace hand-written copies: ``.tiny()`` (tests, ``medfair demo
--fast``) and ``RemediationConfig.demo()``.

The device placement (:class:`Placement`) is defined here too; only making one imports torch,
to find the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._validate import require_count, require_rate
from .data.phantom import AnatomyModel, PhantomConfig
from .exceptions import ConfigError, DataError
from .target import Target

__all__ = [
    "ALIGN",
    "ALIGN_TO",
    "ARCHITECTURES",
    "DEFAULT_SMOOTHING",
    "DTYPE_NAMES",
    "GRADIENTS",
    "LORA_ON",
    "LOSSES",
    "ROBUST",
    "SPLITS",
    "AnatomyModel",
    "AuditConfig",
    "CLIPJob",
    "CLIPTrainConfig",
    "ClassifierConfig",
    "ClassifierJob",
    "GenerationConfig",
    "PhantomConfig",
    "Placement",
    "RemediationConfig",
    "RemediationJob",
    "Speed",
    "T2IConfig",
    "T2IJob",
    "Target",
    "TrainJob",
]


@dataclass(frozen=True, kw_only=True)
class CLIPTrainConfig:
    """Size and schedule of the CLIP model.

    Args:
        image_size: Input side; images are resized to it.
        patch_size: Vision transformer patch side.
        width: Hidden size of both towers.
        layers: Transformer layers per tower.
        heads: Attention heads.
        projection_dim: Size of the joint embedding.
        max_length: Token positions (captions are truncated to it).
        vocab_size: Upper bound of the BPE vocabulary.
        epochs: Passes over the training pairs.
        batch_size: Pairs per contrastive batch.
        lr: Peak learning rate (AdamW, cosine decay after 5% warm-up).
        weight_decay: AdamW weight decay.
        seed: Seed of initialisation and shuffling.
    """

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 2
    heads: int = 4
    projection_dim: int = 128
    max_length: int = 48
    vocab_size: int = 2000
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        require_count(
            self,
            1,
            "image_size",
            "patch_size",
            "width",
            "layers",
            "heads",
            "projection_dim",
            "max_length",
            "epochs",
            "batch_size",
        )
        if self.image_size % self.patch_size:
            raise ConfigError("image_size must be a multiple of patch_size", param="patch_size")
        if self.width % self.heads:
            raise ConfigError("width must be a multiple of heads", param="heads")
        require_rate(self, "lr")

    @classmethod
    def tiny(cls, **overrides: Any) -> CLIPTrainConfig:
        """A model of seconds, not quality: for tests and ``medfair demo --fast``."""
        base = {"width": 32, "layers": 1, "heads": 2, "projection_dim": 16, "epochs": 1,
                "batch_size": 16, "max_length": 40}  # fmt: skip
        return cls(**{**base, **overrides})


@dataclass(frozen=True, kw_only=True)
class T2IConfig:
    """Architecture and schedule of the T2MedI model.

    Args:
        image_size: Pixel side (the VAE downsamples by 4: 64 → 16).
        vae_channels: Channels of the VAE's three resolution levels.
        latent_channels: Channels of the latent.
        vae_steps: VAE training steps (0 with ``init`` keeps the initial VAE).
        vae_batch_size: Images per VAE step.
        vae_crop: Side of the random square crops the VAE's first steps train on (0: whole
            images throughout; else a multiple of 4 below ``image_size``). A convolutional
            autoencoder learns its filters from crops at a fraction of the cost (32² crops of
            64² images: about a quarter per step), as Stable Diffusion's autoencoders train on
            crops smaller than the images they decode.
        vae_crop_share: Share of ``vae_steps`` (the first) on crops when ``vae_crop`` is set;
            the rest see whole images, so the group normalisation's statistics are whole
            images' again.
        vae_lr: VAE learning rate.
        kl_weight: Weight of the VAE's KL term.
        unet_channels: Channels of the UNet's three levels (cross-attention in the lower two).
        attention_head_dim: Channels per attention head.
        unet_steps: UNet training steps.
        batch_size: Latents per UNet step.
        lr: UNet peak learning rate (AdamW, 3% warm-up, cosine decay to 10%).
        caption_dropout: Probability of training on the empty prompt (for guidance).
        snr_gamma: γ of min-SNR loss weighting (0 disables it).
        ema: Keep and save an exponential moving average of the UNet weights (diffusers'
            ``EMAModel``).
        ema_decay: Largest EMA decay (reached gradually: ``min(decay, (1+t)/(10+t))``).
        checkpoint_every: Steps between checkpoints (0: only at stage ends).
        seed: Seed of every random draw.
    """

    image_size: int = 64
    vae_channels: Sequence[int] = (16, 32, 64)
    latent_channels: int = 4
    vae_steps: int = 1000
    vae_batch_size: int = 32
    vae_crop: int = 0
    vae_crop_share: float = 0.8
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_channels: Sequence[int] = (48, 96, 96)
    attention_head_dim: int = 8
    unet_steps: int = 700
    batch_size: int = 64
    lr: float = 5e-4
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0
    ema: bool = True
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "vae_channels", tuple(int(c) for c in self.vae_channels))
        object.__setattr__(self, "unet_channels", tuple(int(c) for c in self.unet_channels))
        if len(self.vae_channels) != 3 or len(self.unet_channels) != 3:
            raise ConfigError("expected three channel counts", param="unet_channels")
        if self.image_size % 4 or self.image_size < 16:
            raise ConfigError(
                f"expected a multiple of 4 ≥ 16, got {self.image_size}", param="image_size"
            )
        require_count(self, 0, "vae_steps", "checkpoint_every")
        require_count(self, 1, "unet_steps", "batch_size", "vae_batch_size")
        if self.vae_crop and (self.vae_crop % 4 or not 8 <= self.vae_crop < self.image_size):
            raise ConfigError(
                f"expected 0 or a multiple of 4 in [8, {self.image_size}), got {self.vae_crop}",
                param="vae_crop",
            )
        if not 0.0 <= self.vae_crop_share <= 1.0:
            raise ConfigError(
                f"expected a share in [0, 1], got {self.vae_crop_share}", param="vae_crop_share"
            )
        require_rate(self, "lr", "vae_lr")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(
                f"expected a probability in [0, 1), got {self.caption_dropout}",
                param="caption_dropout",
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(
                f"expected a decay in [0, 1), got {self.ema_decay}", param="ema_decay"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> T2IConfig:
        """A pipeline of seconds, not quality: for tests and ``medfair demo --fast``."""
        base = {"vae_channels": (8, 8, 16), "vae_steps": 2, "vae_batch_size": 4,
                "unet_channels": (16, 16, 32), "unet_steps": 4, "batch_size": 4,
                "checkpoint_every": 2}  # fmt: skip
        return cls(**{**base, **overrides})

    @property
    def vae_crop_steps(self) -> int:
        """How many of the VAE's steps (the first) train on crops."""
        return round(self.vae_steps * self.vae_crop_share) if self.vae_crop else 0


ARCHITECTURES = ("resnet", "radiomics", "resnet3d")
ROBUST = ("none", "noise", "pgd")


def _one_of(value: str, allowed: tuple[str, ...], param: str) -> None:
    if value not in allowed:
        raise ConfigError(f"expected one of {', '.join(allowed)}, got '{value}'", param=param)


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """Architecture and schedule of the subgroup classifier.

    Args:
        image_size: Input side.
        widths: Channels of the four ResNet stages.
        depths: Basic blocks per stage.
        epochs: Most passes over the training split.
        patience: Stop after this many epochs without a better validation balanced accuracy.
        batch_size: Images per step.
        lr: Peak learning rate (AdamW, cosine decay).
        weight_decay: AdamW weight decay.
        max_rotation: Largest augmentation rotation in degrees.
        max_shift: Largest augmentation shift as a fraction of the side.
        seed: Seed of initialisation, augmentation and shuffling.
        architecture: ``resnet`` (a small ResNet, the default) or ``radiomics`` (logistic
            regression on radiomics-style features of size, shape and intensity: a reader of
            another model family, e.g. an architecture-disjoint evaluator; it ignores the
            network settings above and chooses its L2 penalty on the validation split), or
            ``resnet3d`` (MONAI's 3-D ResNet on whole NIfTI volumes, ``image_size`` voxels a
            side; its training data are volumes in the layout of ``medfair data phantom
            --volumes``).
        robust: Training against small input changes, so that the classifier's gradients
            follow the anatomy rather than texture (a guide for remediation that other
            classifiers agree with): ``none``, ``noise`` (Gaussian noise of standard deviation
            ``robust_eps`` added to every training image) or ``pgd`` (adversarial training:
            each batch is replaced by its worst case within an L2 ball of radius
            ``robust_eps``, found by ``robust_steps`` steps of projected gradient ascent,
            Madry et al. 2018). ResNets only.
        robust_eps: Noise standard deviation or L2 radius, in pixel units of [-1, 1] images.
        robust_steps: Projected-gradient steps per batch with ``robust="pgd"``.
    """

    image_size: int = 64
    widths: Sequence[int] = (16, 32, 64, 128)
    depths: Sequence[int] = (1, 1, 1, 1)
    epochs: int = 25
    patience: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    max_rotation: float = 6.0
    max_shift: float = 0.04
    seed: int = 0
    architecture: str = "resnet"
    robust: str = "none"
    robust_eps: float = 0.5
    robust_steps: int = 3

    def __post_init__(self) -> None:
        _one_of(self.architecture, ARCHITECTURES, "architecture")
        _one_of(self.robust, ROBUST, "robust")
        if self.robust != "none" and self.architecture == "radiomics":
            raise ConfigError(
                "--robust trains the network architectures (resnet, resnet3d)", param="robust"
            )
        if not (math.isfinite(self.robust_eps) and self.robust_eps > 0):
            raise ConfigError(f"expected a radius > 0, got {self.robust_eps}", param="robust_eps")
        require_count(self, 1, "robust_steps")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ConfigError(
                "widths and depths must have the same, non-zero length", param="widths"
            )
        require_count(self, 1, "epochs", "batch_size", "image_size", "patience")
        require_rate(self, "lr")

    @classmethod
    def tiny(cls, **overrides: Any) -> ClassifierConfig:
        """A classifier of seconds, not quality: for tests and ``medfair demo --fast``."""
        base = {"widths": (8, 8, 16, 16), "epochs": 2, "patience": 2, "batch_size": 16}
        return cls(**{**base, **overrides})

    @classmethod
    def volumes(cls, **overrides: Any) -> ClassifierConfig:
        """The 3-D classifier's defaults: MONAI's ResNet at 32³, a quarter of the 2-D widths."""
        base = {
            "architecture": "resnet3d",
            "image_size": 32,
            "widths": (8, 16, 32, 64),
            "batch_size": 16,
            "patience": 6,
        }
        return cls(**{**base, **overrides})


GRADIENTS = ("last-k", "adjusted")
LOSSES = ("kl", "ot")
ALIGN_TO = ("probabilities", "corrected")
ALIGN = ("joint", "marginals")
LORA_ON = ("unet", "text", "both")


@dataclass(frozen=True, kw_only=True)
class RemediationConfig:
    """Settings of subgroup distribution aligned tuning.

    Args:
        steps: Optimiser steps.
        lr: AdamW peak learning rate (linear warm-up of ``warmup`` steps, cosine decay to 10%).
        batch_per_prompt: Images generated per prompt per step (the batch whose distribution is
            aligned).
        prompts_per_step: Prompts per step (gradients accumulate over them; prompts cycle).
        lambda_clip: Weight λ of the semantics-preservation term (0 switches it off).
        gradient: ``last-k`` (truncated back-propagation through the last K steps, as in
            DRaFT-K) or ``adjusted`` (Shen et al.'s adjusted direct fine-tuning: per-step detach
            and gradient rescaling through every step or a random subset).
        grad_steps: K: with ``last-k`` the last K steps (default 2); with ``adjusted`` a random
            subset of K steps per batch (default: all steps).
        sampling_steps: T, DDIM steps while training (the lower end with ``sampling_steps_max``).
            The tuned model meets the target at the T it was tuned with; drawn with other
            steps it can land elsewhere (the demo's models tuned at T = 10 drew more female images
            at 25 steps: ``benchmarks/RESULTS.md``), so tune with the steps you audit
            with (``medfair audit --steps``, 25 by default) when you can: a training step's
            cost grows with T.
        sampling_steps_max: Draw T uniformly from ``sampling_steps … sampling_steps_max`` for each
            batch (Shen et al. use 19–23), so the tuned model does not fit one step count.
        guidance: Classifier-free guidance scale during training and quick audits.
        lora_rank: Rank of the LoRA adapters.
        lora_alpha: LoRA α (scale α/rank); ``None`` means α = rank.
        lora_on: Where the adapters go: ``unet`` (attention projections), ``text`` (the text
            encoder's attention, Shen et al.'s default) or ``both``.
        full: Tune every UNet weight instead of UNet adapters (needs ``lora_on="unet"``).
        loss: ``kl`` (paper: KL(target ‖ batch mean)) or ``ot`` (Shen et al.: cross-entropy to
            the groups the expected optimal transport assigns).
        align: Several attributes: ``joint`` (one alignment loss over the joint cells, the
            cells' probabilities being the product of the per-attribute ones) or ``marginals``
            (one loss per attribute, summed with ``align_weights``), as in Shen et al.'s
            several-attribute experiments. Ignored for one attribute.
        align_weights: Weight of each attribute's loss with ``align="marginals"``, in the
            classifiers' order (default: 1 each).
        align_to: ``probabilities`` (paper: the mean probability meets the target) or
            ``corrected`` (the mean probability meets ``target · S`` with the soft confusion
            matrix ``S`` from the classifier's held-out images, so the PACC-corrected share the
            audit reports meets the target; needs ``evaluation.json`` with ``soft_confusion``).
        augment: Expectation over transformations: read each generated image as the mean of the
            classifier's probabilities over this many random small transformations (rotation,
            shift, flip, intensity gain: those the classifiers train with;
            :mod:`medfair_audit.remediation.transforms`),
            so that patterns a small change destroys earn nothing (0: off, the paper's loss).
        ot_max_uncertainty: With ``loss="ot"``, images whose assigned group has confidence below
            ``1 − this`` are left out of the loss (1 keeps all).
        ot_draws: Monte Carlo draws of the expected OT for more than two groups.
        changed_weight: With ``loss="ot"``, the weight in the semantics-preservation term of an
            image whose assigned group differs from the original image's label (Shen et al.:
            0.2; such an image is meant to change).
        gradient_checkpointing: Recompute each gradient step's UNet activations in backward.
        unet_checkpointing: Also checkpoint inside the UNet (diffusers' block-level gradient
            checkpointing): the recomputed step keeps only block boundaries, for SD-sized
            models on a GPU; slower, same gradients.
        decode_checkpointing: Decode the tuned images without keeping the VAE's activations
            and recompute the decode one image at a time in backward, so the VAE's share of
            peak memory does not grow with ``batch_per_prompt``. ``None`` (default): on with a
            GPU or MPS, off on the CPU. Same images; gradients equal up to rounding.
        warmup: Linear warm-up steps of the learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm (0 disables).
        ema_decay: Largest decay of an EMA of the tuned weights (diffusers' ``EMAModel``; 0
            disables). The EMA weights are what quick audits judge and what gets saved.
        ema_warmup: Let the decay grow as ``1 − (1 + step)^(−2/3)`` up to ``ema_decay`` instead
            of diffusers' default ``(1 + step)/(10 + step)``.
        seed: Seed of the training noise.
        checkpoint_every: Save a resumable checkpoint every N steps (and at the end).
        audit_every: Quick audit every N steps (0: only at the start and end).
        audit_images: Images per prompt in a quick audit.
        audit_steps: DDIM steps in a quick audit.
        audit_seed: Seed of the quick audit's images (disjoint from training noise).
        until_kl: Stop once a quick audit's KL(target ‖ share) is at most this (decided on the
            main process and broadcast).
        keep: Which weights to save: ``"last"`` (the final step's), ``"best"`` (those of the
            quick audit with the lowest KL, the step-0 original included) or
            ``"first-within"`` (stop at the first quick audit, the step-0 original included,
            whose 95% interval holds the target for every group, and save those weights: the
            least tuning the quick audit cannot tell from the target; when none does, as
            ``"best"``). Quick audits read the job's ``audit_prompts`` when it has them:
            selection prompts, worded apart from both the training and the evaluation prompts,
            so the choice follows how the model draws wordings it was not tuned on without
            looking at the evaluation's prompts.
    """

    steps: int = 200
    lr: float = 1e-3
    batch_per_prompt: int = 8
    prompts_per_step: int = 1
    lambda_clip: float = 1.0
    gradient: str = "last-k"
    grad_steps: int | None = None
    sampling_steps: int = 10
    sampling_steps_max: int | None = None
    guidance: float = 3.0
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_on: str = "unet"
    full: bool = False
    loss: str = "kl"
    align: str = "joint"
    align_weights: Sequence[float] | None = None
    align_to: str = "probabilities"
    augment: int = 0
    ot_max_uncertainty: float = 0.2
    ot_draws: int = 256
    changed_weight: float = 0.2
    gradient_checkpointing: bool = True
    unet_checkpointing: bool = False
    decode_checkpointing: bool | None = None
    warmup: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.0
    ema_warmup: bool = True
    seed: int = 0
    checkpoint_every: int = 50
    audit_every: int = 50
    audit_images: int = 32
    audit_steps: int = 25
    audit_seed: int = 1_000_003
    until_kl: float | None = None
    keep: str = "last"

    def __post_init__(self) -> None:
        require_count(self, 1, "steps", "prompts_per_step", "sampling_steps", "ot_draws")
        require_count(self, 1, "lora_rank", "audit_images", "audit_steps")
        require_count(self, 2, "batch_per_prompt")
        require_count(self, 0, "warmup", "checkpoint_every", "audit_every")
        require_count(self, 0, "augment", maximum=64)
        _one_of(self.gradient, GRADIENTS, "gradient")
        _one_of(self.loss, LOSSES, "loss")
        _one_of(self.align_to, ALIGN_TO, "align_to")
        _one_of(self.align, ALIGN, "align")
        if self.align_weights is not None:
            weights = tuple(float(w) for w in self.align_weights)
            if not weights or any(not w >= 0 for w in weights) or not sum(weights) > 0:
                raise ConfigError(
                    f"expected weights ≥ 0, not all 0, got {list(weights)}", param="align_weights"
                )
            object.__setattr__(self, "align_weights", weights)
        if self.align == "marginals" and self.loss != "kl":
            raise ConfigError("--align marginals works with --loss kl", param="align")
        _one_of(self.lora_on, LORA_ON, "lora_on")
        require_rate(self, "lr")
        if self.sampling_steps_max is not None and self.sampling_steps_max < self.sampling_steps:
            raise ConfigError(
                f"expected ≥ --sampling-steps ({self.sampling_steps}), got "
                f"{self.sampling_steps_max}",
                param="sampling_steps_max",
            )
        if self.grad_steps is not None and not 1 <= self.grad_steps <= self.sampling_steps:
            raise ConfigError(
                f"expected 1 ≤ K ≤ T (--sampling-steps {self.sampling_steps}), got "
                f"{self.grad_steps}",
                param="grad_steps",
            )
        if self.align_to == "corrected" and self.loss != "kl":
            raise ConfigError("--align-to corrected works with --loss kl", param="align_to")
        if self.full and self.lora_on != "unet":
            raise ConfigError("--full tunes the UNet: it needs --lora-on unet", param="full")
        for name, value in (
            ("lambda_clip", self.lambda_clip),
            ("changed_weight", self.changed_weight),
        ):
            if not value >= 0:
                raise ConfigError(f"expected a weight ≥ 0, got {value}", param=name)
        if not 0 < self.ot_max_uncertainty <= 1:
            raise ConfigError(
                f"expected a value in (0, 1], got {self.ot_max_uncertainty}",
                param="ot_max_uncertainty",
            )
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(
                f"expected a decay in [0, 1), got {self.ema_decay}", param="ema_decay"
            )
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ConfigError(f"expected α > 0, got {self.lora_alpha}", param="lora_alpha")
        if self.guidance < 1:
            raise ConfigError(f"expected guidance ≥ 1, got {self.guidance}", param="guidance")
        if self.until_kl is not None:
            if not self.until_kl >= 0:
                raise ConfigError(f"expected KL ≥ 0, got {self.until_kl}", param="until_kl")
            if self.audit_every == 0:
                raise ConfigError("--until-kl needs --audit-every N > 0", param="until_kl")
        if self.keep not in ("last", "best", "first-within"):
            raise ConfigError(
                f"expected keep 'last', 'best' or 'first-within', got '{self.keep}'", param="keep"
            )
        if self.keep != "last" and self.audit_every == 0:
            raise ConfigError(f"--keep {self.keep} needs --audit-every N > 0", param="keep")

    @classmethod
    def tiny(cls, **overrides: Any) -> RemediationConfig:
        """Two steps of tiny batches: for tests and ``medfair demo --fast``."""
        base = {"steps": 2, "batch_per_prompt": 2, "sampling_steps": 2, "grad_steps": 1,
                "lora_rank": 2, "audit_images": 2, "audit_steps": 2,
                "checkpoint_every": 0}  # fmt: skip
        return cls(**{**base, **overrides})

    @classmethod
    def demo(cls, **overrides: Any) -> RemediationConfig:
        """The demo's tuning: 150 steps of one prompt each, T = 25, PACC-corrected alignment.

        One prompt per step, the protocol ``benchmarks/bench_transfer.py`` measures (its
        ``single`` rows), so the benchmark's seeds describe the demo's own tuning. T = 25 DDIM
        steps, as the demo's audits draw: tuned at T = 10, the remediated models drew more female
        images at the audits' 25 steps than at 10 (``benchmarks/RESULTS.md``).
        ``align_to="corrected"`` compares the batch's mean probability with ``target · S``
        (``S``: the classifier's soft confusion matrix), so the PACC share rather than the
        classifier's mean probability meets the target (the paper's form,
        ``align_to="probabilities"``, is biased toward the classifier's training prior).
        ``keep="best"`` with a quick audit of 64 images per prompt every 25 steps: the demo's
        quick audits read its selection prompts (``demo.SELECTION_PROMPTS``), and the weights
        whose reading there is nearest the target are saved.
        """
        base = {"steps": 150, "prompts_per_step": 1, "sampling_steps": 25,
                "align_to": "corrected", "audit_every": 25, "audit_images": 64,
                "keep": "best"}  # fmt: skip
        return cls(**{**base, **overrides})

    @property
    def k(self) -> int:
        """K with its default filled in (2 for ``last-k``; every step for ``adjusted``)."""
        if self.grad_steps is not None:
            return self.grad_steps
        return 2 if self.gradient == "last-k" else self.sampling_steps_max or self.sampling_steps

    def resume_key(self, processes: int, dtype: str = "float32") -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it.

        The number of processes is part of it: each process draws its own batches, so another
        world size would continue with other noise than the interrupted run. So is the
        generation dtype (another precision takes other steps).
        """
        keep_free = (
            "checkpoint_every",
            "audit_every",
            "until_kl",
            "unet_checkpointing",
            "decode_checkpointing",
        )
        key = {k: v for k, v in asdict(self).items() if k not in keep_free}
        return {**key, "processes": processes, "dtype": dtype}


#: Generation dtypes by name (``--dtype``); ``auto`` picks one for the device.
DTYPE_NAMES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True, kw_only=True)
class Placement:
    """A device and a generation dtype, resolved and checked on construction.

    Defining it does not import torch (this module stays torch-free); making one does, to find
    the device and check that it can run the dtype (:func:`medfair_audit.device.resolve_device`).

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (or a ``torch.device``).
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16`` (or a ``torch.dtype``).
    """

    device: Any = "auto"
    dtype: Any = "auto"

    def __post_init__(self) -> None:
        import torch

        from .device import resolve_device, resolve_dtype

        device = self.device
        if not isinstance(device, torch.device):
            device = resolve_device(str(device))
        object.__setattr__(self, "device", device)
        dtype = self.dtype
        if not isinstance(dtype, torch.dtype):
            dtype = resolve_dtype(str(dtype), device)
        if str(dtype).removeprefix("torch.") not in DTYPE_NAMES:
            raise ConfigError(
                f"expected one of {', '.join(DTYPE_NAMES)}, got {dtype}", param="dtype"
            )
        object.__setattr__(self, "dtype", dtype)

    @property
    def dtype_name(self) -> str:
        """``float32``, ``float16`` or ``bfloat16``."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def half(self) -> bool:
        """Whether generation runs in a 16-bit dtype."""
        return self.dtype_name != "float32"

    def autocast(self) -> Any:
        """``torch.autocast`` to the generation dtype (a no-op context in ``float32``)."""
        import torch

        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.half)

    def grad_scaler(self) -> Any:
        """A ``GradScaler`` for float16 training (its range needs loss scaling), else ``None``."""
        if self.dtype_name != "float16":
            return None
        import torch

        return torch.amp.GradScaler(self.device.type)

    def describe(self) -> dict[str, str]:
        """JSON-able record: device, dtype and the GPU's name when there is one."""
        out = {"device": str(self.device), "dtype": self.dtype_name}
        if self.device.type == "cuda":
            import torch

            out["name"] = torch.cuda.get_device_name(self.device)
        return out


@dataclass(frozen=True, kw_only=True)
class Speed:
    """Inference speed-ups; none changes which image a seed gives beyond kernel tolerance.

    :func:`medfair_audit.models.pipelines.apply_speed` applies them to a loaded pipeline.

    Args:
        compile: Fuse the attention projections, then ``torch.compile`` the UNet and the VAE
            decoder. The first batch pays the compile (about a minute for an SD-1.5 UNet on a
            GPU); a prompt's last, smaller batch is padded to the full size, so nothing
            recompiles. Worth it for long audits (``benchmarks/RESULTS.md``: the break-even).
        channels_last: Channels-last memory format for the UNet and VAE; with ``compile`` on
            GPUs (measured slower without it in float16: ``benchmarks/RESULTS.md``).
        vae_slicing: Decode a batch one image at a time (less memory for large batches).
        vae_tiling: Decode large images in overlapping tiles (less memory for large images).
    """

    compile: bool = False
    channels_last: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False

    def describe(self) -> dict[str, bool]:
        """JSON-able record of the switches."""
        return {
            "compile": self.compile,
            "channels_last": self.channels_last,
            "vae_slicing": self.vae_slicing,
            "vae_tiling": self.vae_tiling,
        }


#: ε of the smoothed KL/JS divergences (stated in every report that uses it).
DEFAULT_SMOOTHING = 1e-3


#: Upper bounds that catch a typo (an extra zero too many) before it becomes an hours-long run or
#: a shard plan that fills the memory: batches of 65,536 and 10,000 denoising steps (images per
#: prompt are capped at :data:`~medfair_audit._validate.MAX_COUNT`, ten million).
MAX_BATCH = 65_536
MAX_STEPS = 10_000


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """How images are drawn.

    Args:
        n_per_prompt: Images per prompt.
        seed: Global seed (image seeds derive from it, the prompt index and the image index).
        steps: Denoising steps.
        guidance: Classifier-free guidance scale.
        shard_size: Images per shard, which is also the generation batch.
    """

    n_per_prompt: int = 128
    seed: int = 0
    steps: int = 25
    guidance: float = 3.0
    shard_size: int = 32

    def __post_init__(self) -> None:
        require_count(self, 1, "n_per_prompt")
        require_count(self, 1, "shard_size", maximum=MAX_BATCH, param="batch_size")
        require_count(self, 1, "steps", maximum=MAX_STEPS)
        if not (math.isfinite(self.guidance) and 0 <= self.guidance <= 100):
            raise ConfigError(
                f"expected a guidance scale from 0 to 100, got {self.guidance}", param="guidance"
            )
        if self.seed < 0:
            raise ConfigError(f"expected a non-negative seed, got {self.seed}", param="seed")


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Everything an audit needs.

    Args:
        checkpoint: Diffusers text-to-image pipeline folder.
        classifier: Subgroup classifier folder (``medfair train classifier``), or attribute →
            folder for several attributes (``{"sex": ..., "age_band": ...}``: marginals and
            joint cells, see :mod:`medfair_audit.models.attributes`). A joint classifier's folder
            alone also audits several attributes.
        prompts: Prompts to audit.
        target: Target proportions; its groups must be the classifier's (for several
            attributes, a joint target over the same attributes in the same order).
        out: Output folder (``audit.json``, ``audit.html``, ``images.csv``, grids, shards).
        generation: Images per prompt, seed, steps, guidance, batch (shard) size.
        reference: Image folder of real images with the attribute column, for FID/KID.
        reference_split: Use only this ``split`` of the reference.
        features: Quality features: ``classifier``, ``inception:PATH``, ``clip:PATH`` or
            ``dinov2:PATH`` (a bare folder is read as CLIP).
        mode: ``marginal`` (neutral prompts vs the target) or ``conditional`` (each prompt names
            one group; the share of images showing it).
        n_boot: Bootstrap resamples for intervals (also the simulations of the χ² null).
        confidence: Interval level.
        smoothing: ε of KL/JS smoothing (stated in the report).
        half_width: Interval half-width for the sample-size estimate.
        min_group_n: Below this many images a group's full-n FID carries a warning.
        min_cell_n: Several attributes: a joint cell with fewer images classified into it is
            reported with its n and a warning (its interval is wide; it is never hidden).
        quality_draws: Subsamples per size for FID/KID at equal n.
        trust_pickle: Allow pickle weights.
        save_images: Also write every generated image as PNG.
        placement: Device and generation dtype (the classifier and features run in float32).
        speed: Inference speed-ups (``torch.compile``, channels-last, VAE slicing/tiling).
        allow_outside_root: Read reference images that its ``metadata.csv`` places outside it.
        overwrite: Replace a finished audit (or anything else) in ``out``; its shards are
            kept and reused where their settings match. Without it, ``out`` must be absent,
            empty or hold an unfinished audit (which is resumed).
        overlap: Classify and write each batch while the next one is generated (``None``: on
            an accelerator, where the generator leaves the CPU free; off on the CPU, where both
            would share the same cores).
        batch_invariant: Compute each image on its own (a batch of one) inside every batch, so
            that the results are bit-identical whatever ``generation.shard_size`` (they equal
            a batch-size-1 audit's). Slower: batching is what makes generation fast.
        readers: Other classifiers of the same (one) attribute that read the same images: each
            one's corrected share and its disagreement with ``classifier`` (paired bootstrap),
            and, with a ``reference``, the share of images outside the real images' support in
            each classifier's feature space (:mod:`medfair_audit.audit.readers`).
        frd: Also the Fréchet Radiomics Distance per group (needs a ``reference`` and the
            ``frd`` extra; :mod:`medfair_audit.audit.frd`).
        precision: Stop drawing once every group's anytime-valid corrected (PACC) share is
            within ± this half-width (``None``: draw ``generation.n_per_prompt`` images per
            prompt). ``generation.n_per_prompt`` is then the maximum; images come in rounds of
            one shard per prompt (:mod:`medfair_audit.audit.sequential`).
        min_n_per_prompt: With ``precision``: draw at least this many images per prompt before
            the first look that may stop.
        images_from: Another audit's folder: read its stored (8-bit) images instead of drawing
            them, e.g. to read one set of images with another classifier. That audit must have
            drawn them from the same checkpoint, prompts, dtype and generation settings
            (images per prompt, seed, steps, guidance, batch size); anything else is refused.
        condition_distribution: Conditional mode: the share of requests for each group that
            the model's use makes (group → share), under which the audit also reports the
            marginal share of what comes out. ``None``: a MONAI bundle's declared distribution
            (``configs/medfair.json``), else equal shares.
    """

    checkpoint: Path
    classifier: Path | Mapping[str, Path]
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
    min_cell_n: int = 20
    quality_draws: int = 20
    trust_pickle: bool = False
    save_images: bool = False
    placement: Placement = field(default_factory=Placement)
    speed: Speed = field(default_factory=Speed)
    allow_outside_root: bool = False
    overwrite: bool = False
    overlap: bool | None = None
    batch_invariant: bool = False
    readers: Sequence[Path] = ()
    frd: bool = False
    precision: float | None = None
    min_n_per_prompt: int = 0
    images_from: Path | None = None
    condition_distribution: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.condition_distribution is not None:
            shares = {str(k): float(v) for k, v in self.condition_distribution.items()}
            if (
                not shares
                or any(not (math.isfinite(v) and v >= 0) for v in shares.values())
                or abs(sum(shares.values()) - 1) > 1e-6
            ):
                raise ConfigError(
                    f"expected shares ≥ 0 summing to 1, got {shares}",
                    param="condition_distribution",
                )
            if self.mode != "conditional":
                raise ConfigError(
                    "a conditioning distribution goes with --mode conditional",
                    param="condition_distribution",
                )
            object.__setattr__(self, "condition_distribution", shares)
        object.__setattr__(self, "readers", tuple(Path(p) for p in self.readers))
        if self.readers and isinstance(self.classifier, Mapping) and len(self.classifier) > 1:
            raise ConfigError(
                "readers read one attribute; audit several attributes without --reader",
                param="reader",
            )
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        if self.reference is not None:
            object.__setattr__(self, "reference", Path(self.reference))
        if isinstance(self.classifier, Mapping):
            if not self.classifier:
                raise ConfigError("expected at least one classifier", param="classifier")
            specs = {str(k): Path(v) for k, v in self.classifier.items()}
            object.__setattr__(
                self, "classifier", specs if len(specs) > 1 else next(iter(specs.values()))
            )
        else:
            object.__setattr__(self, "classifier", Path(self.classifier))
        if self.frd and self.reference is None:
            raise ConfigError("FRD compares with real images: give --reference", param="frd")
        if self.images_from is not None:
            object.__setattr__(self, "images_from", Path(self.images_from))
            if not (self.images_from / "shards").is_dir():
                raise ConfigError(
                    f"expected a folder of an audit (with shards/), got '{self.images_from}'",
                    param="images_from",
                )
            if self.images_from.resolve() == self.out.resolve():
                raise ConfigError(
                    "expected another audit's folder, not --out itself", param="images_from"
                )
        if self.precision is not None:
            if not 0 < self.precision <= 0.5:
                raise ConfigError(
                    f"expected a half-width in (0, 0.5], got {self.precision}", param="precision"
                )
            if self.mode != "marginal":
                raise ConfigError("--precision works with --mode marginal", param="precision")
        if not 0 <= self.min_n_per_prompt <= self.generation.n_per_prompt:
            raise ConfigError(
                f"expected 0 ≤ min_n_per_prompt ≤ {self.generation.n_per_prompt} (the most "
                f"images per prompt), got {self.min_n_per_prompt}",
                param="min_n_per_prompt",
            )
        if self.min_cell_n < 0:
            raise ConfigError(f"expected min_cell_n ≥ 0, got {self.min_cell_n}", param="min_cell_n")
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"'{self.out}' is a file; expected a folder to write", param="out")
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ConfigError("expected at least one non-empty prompt", param="prompts")
        if self.mode not in ("marginal", "conditional"):
            raise ConfigError(
                f"expected 'marginal' or 'conditional', got '{self.mode}'", param="mode"
            )
        if self.n_boot < 0:
            raise ConfigError(f"expected n_boot ≥ 0, got {self.n_boot}", param="n_boot")
        if self.quality_draws < 2:
            raise ConfigError(
                f"expected quality_draws ≥ 2, got {self.quality_draws}", param="quality_draws"
            )
        if not 0 < self.half_width < 1:
            raise ConfigError(
                f"expected a half-width in (0, 1), got {self.half_width}", param="half_width"
            )
        if not 0 < self.confidence < 1:
            raise ConfigError(
                f"expected a level in (0, 1), got {self.confidence}", param="confidence"
            )
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"expected ε in [0, 1), got {self.smoothing}", param="smoothing")


@dataclass(frozen=True, kw_only=True)
class RemediationJob:
    """Everything one remediation run needs: what to tune, against what, and where to write.

    Args:
        checkpoint: Diffusers text-to-image pipeline folder (T2MedI or a Stable Diffusion).
        classifier: Subgroup classifier folder; its groups must be the target's. Several
            attributes: attribute → folder (one classifier each; ``config.align`` picks a joint or
            per-attribute loss) or one joint classifier's folder, with a joint target.
        target: Target proportions (e.g. the BraTS18-like set's sex proportions).
        prompts: Training prompts (keep held-out prompts for the evaluation).
        audit_prompts: Prompts the quick audits read (default: the training prompts). With
            ``config.keep="best"`` they choose the weights to save, so give them wordings of
            their own, neither training nor evaluation prompts.
        out: New pipeline folder; checkpoints live in ``<out>.partial/`` while it runs.
        config: Training settings.
        image_encoders: ``(folder, weight)`` of each CLIP or DINOv2 encoder of the
            semantics-preservation term (default: the CLIP in the checkpoint's ``medfair.json``).
        ensemble: More classifiers of the same attribute (one attribute only): the alignment
            loss is the mean of each classifier's own loss (each with its soft confusion matrix
            under ``align_to="corrected"``). Classifiers that differ in seed, width, robustness
            or subjects agree on the anatomy more than on each one's quirks.
        resume: Continue from the newest checkpoint in ``<out>.partial/``.
        overwrite: Replace an existing ``out``.
        trust_pickle: Allow pickle weights.
        keep_checkpoints: Keep ``<out>.partial/`` after success.
        placement: Device and generation dtype (``None``: ``auto``, the GPU in bfloat16/float16
            when there is one, else the CPU in float32). Under ``accelerate launch`` each
            process takes the GPU of its local rank.
    """

    checkpoint: Path
    classifier: Path | Mapping[str, Path]
    target: Target
    prompts: Sequence[str]
    out: Path
    audit_prompts: Sequence[str] = ()
    config: RemediationConfig = field(default_factory=RemediationConfig)
    image_encoders: Sequence[tuple[Path, float]] = ()
    ensemble: Sequence[Path] = ()
    resume: bool = False
    overwrite: bool = False
    trust_pickle: bool = False
    keep_checkpoints: bool = False
    placement: Placement | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "out", Path(self.out))
        if self.config is None:
            object.__setattr__(self, "config", RemediationConfig())
        elif not isinstance(self.config, RemediationConfig):
            raise ConfigError(
                f"expected a RemediationConfig, got {type(self.config).__name__}", param="config"
            )
        if isinstance(self.classifier, Mapping):
            if not self.classifier:
                raise ConfigError("expected at least one classifier", param="classifier")
            spec: Path | dict[str, Path] = {str(a): Path(p) for a, p in self.classifier.items()}
        else:
            spec = Path(self.classifier)
        object.__setattr__(self, "classifier", spec)
        prompts = tuple(p for p in self.prompts if p.strip())
        if not prompts:
            raise ConfigError("expected at least one non-empty prompt", param="prompts")
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "audit_prompts", tuple(p for p in self.audit_prompts if p.strip()))
        encoders = tuple((Path(p), float(w)) for p, w in self.image_encoders)
        object.__setattr__(self, "image_encoders", encoders)
        object.__setattr__(self, "ensemble", tuple(Path(p) for p in self.ensemble))
        if self.out.resolve() == self.checkpoint.resolve():
            raise ConfigError("--out must differ from the checkpoint being remediated", param="out")


#: Values of ``metadata.csv``'s ``split`` column a classifier trains, stops and is tested on.
SPLITS = ("train", "val", "test")


def _config_of(job: Any, kind: type) -> None:
    if job.config is None:
        object.__setattr__(job, "config", kind())
    elif not isinstance(job.config, kind):
        raise ConfigError(
            f"expected a {kind.__name__}, got {type(job.config).__name__}", param="config"
        )


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """What to train on and where to write: the part every training job shares.

    Args:
        data: Image folder with ``metadata.csv``.
        out: Destination folder (absent or empty unless ``overwrite``).
        overwrite: Replace an existing ``out``.
        placement: Device and training precision (default: the CPU in float32; half precision
            trains under autocast; models are saved in float32).
        allow_outside_root: Read images that ``metadata.csv`` places outside ``data``.
    """

    data: Path
    out: Path
    overwrite: bool = False
    placement: Placement | None = None
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.out.resolve() == self.data.resolve():
            raise ConfigError("--out must differ from the training data folder", param="out")


@dataclass(frozen=True, kw_only=True)
class CLIPJob(TrainJob):
    """Train CLIP on captioned images (:func:`medfair_audit.models.clip.train_clip`).

    Args:
        config: Model size and schedule.
    """

    config: CLIPTrainConfig = field(default_factory=CLIPTrainConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _config_of(self, CLIPTrainConfig)


@dataclass(frozen=True, kw_only=True)
class ClassifierJob(TrainJob):
    """Train a subgroup classifier (:func:`medfair_audit.models.classifier.train_classifier`).

    Args:
        config: Architecture and schedule.
        attribute: Column to predict, or several columns (a sequence, or ``"sex,age_band"``)
            for one joint classifier over their cells (``"female/<40"``, ...).
        groups: Known groups (default: the labels found, sorted). Labels outside are an error.
        splits: Values of the ``split`` column used as train, val and test.
        sequence: With the ``resnet3d`` architecture, the volumes' ``sequence`` (``t1``,
            ``flair``, ...) to train on; needed when the data hold several.
    """

    config: ClassifierConfig = field(default_factory=ClassifierConfig)
    attribute: str | Sequence[str] = "sex"
    groups: Sequence[str] | None = None
    splits: Sequence[str] = SPLITS
    sequence: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _config_of(self, ClassifierConfig)
        object.__setattr__(self, "splits", tuple(self.splits))
        if self.sequence is not None and self.config.architecture != "resnet3d":
            raise ConfigError(
                "a sequence chooses among volumes; it needs the resnet3d architecture",
                param="sequence",
            )
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(self.groups))


@dataclass(frozen=True, kw_only=True)
class T2IJob(TrainJob):
    """Train (or fine-tune) the T2MedI pipeline (:func:`medfair_audit.models.t2medi.train_t2i`).

    Args:
        config: Architecture and schedule.
        clip: CLIP folder whose text tower becomes the frozen text encoder (required unless
            ``init`` is given; with ``init`` it replaces the pipeline's text encoder).
        init: An existing pipeline folder to fine-tune (its VAE is kept when
            ``config.vae_steps == 0``).
        resume: Continue from the checkpoints in ``<out>.partial/``.
        trust_pickle: Allow pickle weights in ``init``/``clip``.
        keep_checkpoints: Keep ``<out>.partial/`` after success.
    """

    config: T2IConfig = field(default_factory=T2IConfig)
    clip: Path | None = None
    init: Path | None = None
    resume: bool = False
    trust_pickle: bool = False
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _config_of(self, T2IConfig)
        for name in ("clip", "init"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.clip is None and self.init is None:
            raise ConfigError("give --clip CLIP_DIR (or --init CKPT to fine-tune)", param="clip")
