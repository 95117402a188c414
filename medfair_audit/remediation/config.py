"""Settings of subgroup distribution aligned tuning, validated when built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .._validate import require_count, require_rate
from ..exceptions import ConfigError
from .sampling import GRADIENTS

__all__ = ["ALIGN_TO", "LORA_ON", "LOSSES", "RemediationConfig"]

LOSSES = ("kl", "ot")
ALIGN_TO = ("probabilities", "corrected")
ALIGN = ("joint", "marginals")
LORA_ON = ("unet", "text", "both")


def _one_of(value: str, allowed: tuple[str, ...], param: str) -> None:
    if value not in allowed:
        raise ConfigError(f"expected one of {', '.join(allowed)}, got '{value}'", param=param)


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
    ot_max_uncertainty: float = 0.2
    ot_draws: int = 256
    changed_weight: float = 0.2
    gradient_checkpointing: bool = True
    unet_checkpointing: bool = False
    warmup: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.0
    ema_warmup: bool = True
    seed: int = 0
    checkpoint_every: int = 50
    audit_every: int = 0
    audit_images: int = 32
    audit_steps: int = 25
    audit_seed: int = 1_000_003
    until_kl: float | None = None

    def __post_init__(self) -> None:
        require_count(self, 1, "steps", "prompts_per_step", "sampling_steps", "ot_draws")
        require_count(self, 1, "lora_rank", "audit_images", "audit_steps")
        require_count(self, 2, "batch_per_prompt")
        require_count(self, 0, "warmup", "checkpoint_every", "audit_every")
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
        keep_free = ("checkpoint_every", "audit_every", "until_kl", "unet_checkpointing")
        key = {k: v for k, v in asdict(self).items() if k not in keep_free}
        return {**key, "processes": processes, "dtype": dtype}
