"""Subgroup distribution aligned tuning of a T2MedI pipeline (Han et al. 2024).

One training step, for each prompt of the step:

1. **sample**: draw a batch of initial latents from the step's own seed and run T DDIM steps with
   classifier-free guidance. The first ``T - K`` steps run without gradients; the last ``K``
   keep the graph, each UNet call under gradient checkpointing so memory does not grow with
   ``K``. The VAE decodes the result.
2. **losses**: the frozen, calibrated subgroup classifier gives probabilities; the alignment loss
   is ``KL(target ‖ batch mean)`` (paper) or cross-entropy to optimal-transport assignments
   (Shen et al. 2023). The frozen original model generates from the same noise and prompt and
   ``λ · (1 − cos(E(x_tuned), E(x_original)))`` with a CLIP image encoder ``E`` keeps the images
   close to what the original drew.
3. **step**: gradients (averaged across the processes of ``torchrun``/``accelerate launch``)
   update LoRA adapters on the UNet's attention projections (or the whole UNet with ``full``);
   AdamW, linear warm-up and cosine decay, gradient clipping, optional EMA.
4. **checkpoint** every N steps (trainable weights, optimiser, scheduler, EMA, RNG, log), so an
   interrupted run resumes to the same final weights.
5. **evaluate** every M steps: a quick audit on held-out seeds (share per group, KL to the target).

The noise of step ``s`` comes from its own seed (``SeedSequence([seed, s, process, prompt])``),
never from a running generator, so resuming needs no sampler state and held-out audit seeds can
never collide with training noise. The result is a normal pipeline folder with the adapters merged,
the adapters alone (``adapters/``, loadable with ``pipe.load_lora_weights``), ``remediation.json``
and ``log.jsonl``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._io import atomic_write_json, building_dir
from .._validate import require_at_least
from ..exceptions import ConfigError, DataError, ModelError
from ..generation.seeds import image_seed
from ..metrics.functional import corrected_proportions, kl_divergence
from ..progress import ProgressCallback, report
from ..target import Target
from .losses import alignment_kl, clip_consistency, ot_cross_entropy

__all__ = [
    "LOSSES",
    "RemediationConfig",
    "RemediationResult",
    "ddim_sample",
    "remediate",
]

LOSSES = ("kl", "ot")
ALIGN_TO = ("probabilities", "corrected")
# Attention projections of diffusers' UNet blocks (self- and cross-attention).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TAG_TRAIN = 0x7452  # keeps training seeds in their own SeedSequence branch


@dataclass(frozen=True, kw_only=True)
class RemediationConfig:
    """Settings of subgroup distribution aligned tuning.

    Args:
        steps: Optimiser steps.
        lr: AdamW peak learning rate (linear warm-up of ``warmup`` steps, cosine decay to 10%).
        batch_per_prompt: Images generated per prompt per step (the batch whose mean the
            alignment loss compares with the target).
        prompts_per_step: Prompts per step (gradients accumulate over them; prompts cycle).
        lambda_clip: Weight λ of the CLIP-consistency term (0 switches it off).
        grad_steps: K, the last sampling steps that gradients flow through.
        sampling_steps: T, DDIM steps when sampling during training.
        guidance: Classifier-free guidance scale during training and quick audits.
        lora_rank: Rank of the LoRA adapters.
        lora_alpha: LoRA α (scale α/rank); ``None`` means α = rank.
        full: Tune every UNet weight instead of LoRA adapters.
        loss: ``kl`` (paper: KL(target ‖ batch mean)) or ``ot`` (Shen et al.: cross-entropy to
            optimal-transport assignments).
        align_to: ``probabilities`` (paper: the classifier's mean probability meets the target)
            or ``corrected`` (it meets the target as the classifier would report it, target ·
            C with the held-out confusion rates C, so that the audit's confusion-corrected
            shares meet the target and a classifier that misses one group more often does not
            bias the result; needs ``evaluation.json``).
        ot_max_uncertainty: With ``loss="ot"``, images whose binomial uncertainty ``1 − max p``
            exceeds this are left out of the loss (1 keeps all).
        detach_per_step: Shen et al.'s variant: the UNet input is detached at every gradient
            step, so each step's gradient reaches the weights only through its own prediction.
        gradient_checkpointing: Recompute each gradient step's UNet activations in backward.
        warmup: Linear warm-up steps of the learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm (0 disables).
        ema_decay: EMA of the tuned weights (0 disables; the EMA is what gets saved).
        seed: Seed of the training noise.
        checkpoint_every: Save a resumable checkpoint every N steps (and at the end).
        audit_every: Quick audit every N steps (0: only at the end).
        audit_images: Images per prompt in a quick audit.
        audit_steps: DDIM steps in a quick audit.
        audit_seed: Seed of the quick audit's images (disjoint from training noise).
        until_kl: Stop early once a quick audit's KL(target ‖ share) is at most this.
    """

    steps: int = 200
    lr: float = 1e-3
    batch_per_prompt: int = 8
    prompts_per_step: int = 1
    lambda_clip: float = 1.0
    grad_steps: int = 2
    sampling_steps: int = 10
    guidance: float = 3.0
    lora_rank: int = 8
    lora_alpha: float | None = None
    full: bool = False
    loss: str = "kl"
    align_to: str = "probabilities"
    ot_max_uncertainty: float = 0.2
    detach_per_step: bool = False
    gradient_checkpointing: bool = True
    warmup: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50
    audit_every: int = 0
    audit_images: int = 32
    audit_steps: int = 25
    audit_seed: int = 1_000_003
    until_kl: float | None = None

    def __post_init__(self) -> None:
        require_at_least(self, 1, "steps", "prompts_per_step", "grad_steps", "sampling_steps")
        require_at_least(self, 1, "lora_rank", "audit_images", "audit_steps")
        require_at_least(self, 2, "batch_per_prompt")
        require_at_least(self, 0, "warmup", "checkpoint_every", "audit_every")
        if not self.lr > 0:
            raise ConfigError(f"expected a learning rate > 0, got {self.lr}", param="lr")
        if self.grad_steps > self.sampling_steps:
            raise ConfigError(
                f"expected K ≤ T (--sampling-steps {self.sampling_steps}), got {self.grad_steps}",
                param="grad_steps",
            )
        if self.loss not in LOSSES:
            raise ConfigError(
                f"expected one of {', '.join(LOSSES)}, got '{self.loss}'", param="loss"
            )
        if self.align_to not in ALIGN_TO:
            raise ConfigError(
                f"expected one of {', '.join(ALIGN_TO)}, got '{self.align_to}'", param="align_to"
            )
        if self.align_to == "corrected" and self.loss != "kl":
            raise ConfigError("--align-to corrected works with --loss kl", param="align_to")
        if not self.lambda_clip >= 0:
            raise ConfigError(f"expected λ ≥ 0, got {self.lambda_clip}", param="lambda_clip")
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

    def resume_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it."""
        keep_free = ("checkpoint_every", "audit_every", "until_kl")
        return {k: v for k, v in asdict(self).items() if k not in keep_free}


@dataclass
class RemediationResult:
    """Outcome of :func:`remediate`.

    Attributes:
        path: The remediated pipeline folder.
        data: The ``remediation.json`` content (config, curves, quick audits).
        seconds: Wall time of the run (this invocation).
    """

    path: Path
    data: dict[str, Any]
    seconds: float

    @property
    def final_audit(self) -> dict[str, Any]:
        """The last quick audit (share per group and KL to the target)."""
        return self.data["audits"][-1]


# ----------------------------------------------------------------------------------- sampling
def _guided_eps(
    unet: Any, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Noise prediction with classifier-free guidance; ``cond`` is ``[uncond; cond]``."""
    if guidance == 1.0:
        return unet(x, t, encoder_hidden_states=cond[len(cond) // 2 :]).sample
    u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.chunk(2)
    return u + guidance * (c - u)


def ddim_sample(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    *,
    guidance: float,
    grad_steps: int = 0,
    checkpointing: bool = True,
    detach_per_step: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM (η = 0) from ``latents``, with gradients through the last steps only.

    Args:
        unet: Noise-prediction UNet.
        scheduler: A ``DDIMScheduler`` whose ``set_timesteps(T)`` has been called.
        latents: ``(B, C, h, w)`` initial noise (times ``init_noise_sigma``).
        cond: ``(2B, L, D)`` text states, unconditional first.
        guidance: Classifier-free guidance scale.
        grad_steps: K; the last K steps keep the autograd graph (0: none do).
        checkpointing: Recompute those steps' UNet activations in backward.
        detach_per_step: Detach the UNet input at each gradient step (Shen et al.).

    Returns:
        The final latents (differentiable when ``grad_steps > 0`` and grad is enabled).
    """
    x = latents
    timesteps = scheduler.timesteps
    first_grad = len(timesteps) - grad_steps
    for i, t in enumerate(timesteps):
        if i < first_grad or not torch.is_grad_enabled():
            with torch.no_grad():
                eps = _guided_eps(unet, x, t, cond, guidance)
        else:
            inp = x.detach() if detach_per_step else x
            if checkpointing:
                eps = checkpoint(_guided_eps, unet, inp, t, cond, guidance, use_reentrant=False)
            else:
                eps = _guided_eps(unet, inp, t, cond, guidance)
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


def _decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents → images in [-1, 1], as the pipeline decodes them."""
    return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)


def _step_seed(seed: int, step: int, slot: int) -> int:
    """Seed of the noise of batch ``slot`` (process × prompts per step + prompt) of ``step``."""
    ss = np.random.SeedSequence([_TAG_TRAIN, seed, step, slot])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63))


# ------------------------------------------------------------------------------------ tuning
def _add_lora(unet: Any, cfg: RemediationConfig) -> None:
    from peft import LoraConfig

    unet.add_adapter(
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha or cfg.lora_rank,
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGETS),
            lora_dropout=0.0,
        )
    )


def _lr_schedule(cfg: RemediationConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 10% (calms the batch-to-batch swing at the end)."""
    from ..models.t2medi import _cosine

    return lambda s: _cosine(s, cfg.steps, max(1, cfg.warmup))


@dataclass
class _Models:
    """Everything frozen plus the tuned UNet, on one device."""

    pipe: Any
    unet: Any
    original_unet: Any | None  # full tuning keeps a frozen copy; LoRA disables adapters
    scheduler: Any
    audit_scheduler: Any
    classifier: Any
    encoder: Any | None
    cond: torch.Tensor  # (P, L, D) prompt states
    uncond: torch.Tensor  # (1, L, D)
    target: torch.Tensor
    confusion: torch.Tensor | None
    latent_shape: tuple[int, int, int]
    device: torch.device
    trainable: list[torch.nn.Parameter] = field(default_factory=list)

    def pair(self, prompt: int, n: int) -> torch.Tensor:
        return torch.cat(
            [self.uncond.expand(n, -1, -1), self.cond[prompt : prompt + 1].expand(n, -1, -1)]
        )

    @contextlib.contextmanager
    def original(self) -> Iterator[Any]:
        """The frozen original UNet (adapters disabled for LoRA)."""
        if self.original_unet is not None:
            yield self.original_unet
            return
        self.unet.disable_adapters()
        try:
            yield self.unet
        finally:
            self.unet.enable_adapters()

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        clf = self.classifier
        return F.softmax(clf.logits(images) / clf.temperature, dim=-1)


def _alignment(m: _Models, probs: torch.Tensor, cfg: RemediationConfig) -> torch.Tensor:
    if cfg.loss == "ot":
        return ot_cross_entropy(probs, m.target, max_uncertainty=cfg.ot_max_uncertainty)
    return alignment_kl(probs, m.target, confusion_rates=m.confusion)


def _sample_pair(
    m: _Models, cfg: RemediationConfig, prompt: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tuned images (with gradients) and the original's images from the same noise."""
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_per_prompt, *m.latent_shape)
    noise = torch.randn(shape, generator=gen).to(m.device) * m.scheduler.init_noise_sigma
    cond = m.pair(prompt, cfg.batch_per_prompt)
    latents = ddim_sample(
        m.unet,
        m.scheduler,
        noise,
        cond,
        guidance=cfg.guidance,
        grad_steps=cfg.grad_steps,
        checkpointing=cfg.gradient_checkpointing,
        detach_per_step=cfg.detach_per_step,
    )
    tuned = _decode(m.pipe.vae, latents)
    original = None
    if cfg.lambda_clip > 0:
        with torch.no_grad(), m.original() as unet:
            original = _decode(
                m.pipe.vae, ddim_sample(unet, m.scheduler, noise, cond, guidance=cfg.guidance)
            )
    return tuned, original


def _losses(
    m: _Models, cfg: RemediationConfig, tuned: torch.Tensor, original: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    probs = m.probs(tuned)
    align = _alignment(m, probs, cfg)
    out = {"align": align, "probs": probs.detach().mean(0)}
    if original is not None:
        with torch.no_grad():
            ref = m.encoder(original)
        out["clip"] = clip_consistency(m.encoder(tuned), ref)
        out["loss"] = align + cfg.lambda_clip * out["clip"]
    else:
        out["loss"] = align
    return out


def _train_step(
    m: _Models,
    cfg: RemediationConfig,
    step: int,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    ema: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """One optimiser step over ``prompts_per_step`` prompts; returns the logged numbers."""
    n_prompts = len(m.cond)
    rank, world = accelerator.process_index, accelerator.num_processes
    per = cfg.prompts_per_step
    # Batch slots are numbered across processes, so N processes × 1 prompt per step draw the
    # same prompts and noise as 1 process × N prompts per step.
    first = step * world * per
    optimizer.zero_grad(set_to_none=True)
    stats = []
    for slot in range(rank * per, (rank + 1) * per):
        prompt = (first + slot) % n_prompts
        tuned, original = _sample_pair(m, cfg, prompt, _step_seed(cfg.seed, step, slot))
        terms = _losses(m, cfg, tuned, original)
        (terms["loss"] / per).backward()
        clip = terms["clip"].detach() if "clip" in terms else torch.tensor(float("nan"))
        stats.append(
            torch.cat(
                [
                    torch.stack([terms["loss"].detach(), terms["align"].detach(), clip]),
                    terms["probs"],
                ]
            )
            .float()
            .cpu()
        )
    mean = torch.stack(stats).mean(0).to(accelerator.device)
    if world > 1:
        mean = accelerator.reduce(mean, reduction="mean")
    mean = mean.cpu()
    record: dict[str, Any] = {
        "step": step + 1,
        "prompts": [(first + s) % n_prompts for s in range(world * per)],
        "loss": float(mean[0]),
        "align": float(mean[1]),
        "clip": None if torch.isnan(mean[2]) else float(mean[2]),
        "mean_probs": mean[3:].tolist(),
    }
    for p in m.trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world > 1:  # mean over processes, in one flat all-reduce
        flat = accelerator.reduce(torch.cat([p.grad.flatten() for p in m.trainable]), "mean")
        for p, g in zip(m.trainable, flat.split([p.numel() for p in m.trainable]), strict=True):
            p.grad.copy_(g.view_as(p))
    if cfg.max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(m.trainable, cfg.max_grad_norm)
        record["grad_norm"] = float(norm)
    optimizer.step()
    scheduler.step()
    if ema is not None:
        with torch.no_grad():
            for shadow, p in zip(ema.values(), m.trainable, strict=True):
                shadow.lerp_(p.detach(), 1 - cfg.ema_decay)
    record["lr"] = scheduler.get_last_lr()[0]
    return record


@torch.no_grad()
def quick_audit(
    m: _Models, cfg: RemediationConfig, groups: Sequence[str], target: Target
) -> dict[str, Any]:
    """Classify ``audit_images`` images per prompt from held-out seeds with the tuned model.

    Returns:
        Share per group (hard labels) overall and per prompt, mean probabilities,
        KL(target ‖ share) with the audit's smoothing (``kl_raw``) and, with
        ``align_to="corrected"``, the confusion-corrected share and its KL; ``kl`` is the KL of
        the reading being aligned (what ``until_kl`` compares).
    """
    counts = np.zeros((len(m.cond), len(groups)), dtype=np.int64)
    prob_sum = np.zeros(len(groups))
    for p in range(len(m.cond)):
        for start in range(0, cfg.audit_images, 32):
            n = min(32, cfg.audit_images - start)
            noise = torch.cat(
                [
                    torch.randn(
                        (1, *m.latent_shape),
                        generator=torch.Generator().manual_seed(
                            image_seed(cfg.audit_seed, p, start + i)
                        ),
                    )
                    for i in range(n)
                ]
            ).to(m.device)
            latents = ddim_sample(
                m.unet,
                m.audit_scheduler,
                noise * m.audit_scheduler.init_noise_sigma,
                m.pair(p, n),
                guidance=cfg.guidance,
            )
            probs = m.probs(_decode(m.pipe.vae, latents)).cpu().double().numpy()
            prob_sum += probs.sum(0)
            counts[p] += np.bincount(probs.argmax(1), minlength=len(groups))
    total = counts.sum()
    share = counts.sum(0) / total
    tvec = np.asarray(target.vector(groups))
    out = {
        "n": int(total),
        "share": dict(zip(groups, share.tolist(), strict=True)),
        "mean_probs": dict(zip(groups, (prob_sum / total).tolist(), strict=True)),
        "kl_raw": kl_divergence(tvec, share),
        "by_prompt": [
            dict(zip(groups, (c / c.sum()).tolist(), strict=True)) for c in counts.astype(float)
        ],
    }
    out["kl"] = out["kl_raw"]
    if m.confusion is not None:  # align_to="corrected": judge the reading that was aligned
        corrected = corrected_proportions(share, m.confusion.double().cpu().numpy())
        out["share_corrected"] = dict(zip(groups, corrected.tolist(), strict=True))
        out["kl"] = out["kl_corrected"] = kl_divergence(tvec, corrected)
    return out


# ------------------------------------------------------------------------------- loading
def _load_models(
    checkpoint_dir: Path,
    classifier_dir: Path,
    target: Target,
    prompts: Sequence[str],
    image_encoder: Path | str | None,
    cfg: RemediationConfig,
    device: torch.device,
    trust_pickle: bool,
) -> tuple[_Models, Any]:
    from diffusers import DDIMScheduler

    from ..models.classifier import SubgroupClassifier
    from ..models.t2medi import encode_prompts, load_pipeline
    from .encoders import load_image_encoder

    classifier = SubgroupClassifier.load(classifier_dir, trust_pickle=trust_pickle)
    if set(classifier.groups) != set(target.groups):
        raise ConfigError(
            f"target groups {sorted(target.groups)} differ from the classifier's "
            f"{sorted(classifier.groups)}",
            param="target",
        )
    confusion = None
    if cfg.align_to == "corrected":
        ev = classifier.evaluation or {}
        if "confusion_rates" not in ev:
            raise ModelError(
                f"'{classifier_dir}' has no evaluation.json with confusion rates, which "
                "--align-to corrected needs",
                param="classifier",
            )
        order = [list(ev["groups"]).index(g) for g in classifier.groups]
        rates = np.asarray(ev["confusion_rates"], dtype=np.float64)[np.ix_(order, order)]
        if abs(np.linalg.det(rates)) < 1e-6:
            raise ModelError(
                "the classifier's confusion matrix is singular: it cannot tell the groups apart",
                param="classifier",
            )
        confusion = torch.tensor(rates, dtype=torch.float32, device=device)
    encoder = None
    if cfg.lambda_clip > 0:
        if image_encoder is None:
            image_encoder = _default_encoder(checkpoint_dir)
        encoder = load_image_encoder(image_encoder, trust_pickle=trust_pickle).to(device)
    pipe = load_pipeline(checkpoint_dir, trust_pickle=trust_pickle)
    for part in (pipe.vae, pipe.text_encoder, classifier.model):
        part.requires_grad_(False).eval().to(device)
    unet = pipe.unet.to(device)
    unet.requires_grad_(False)
    original = None
    if cfg.full:
        original = copy.deepcopy(unet).eval()
        unet.requires_grad_(True)
    else:
        _add_lora(unet, cfg)
    unet.train()
    states = encode_prompts(pipe.text_encoder, pipe.tokenizer, [*prompts, ""]).to(device)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(cfg.sampling_steps)
    audit_scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    audit_scheduler.set_timesteps(cfg.audit_steps)
    size = pipe.unet.config.sample_size
    models = _Models(
        pipe=pipe,
        unet=unet,
        original_unet=original,
        scheduler=scheduler,
        audit_scheduler=audit_scheduler,
        classifier=classifier,
        encoder=encoder,
        cond=states[:-1].clone(),
        uncond=states[-1:].clone(),
        target=torch.tensor(target.vector(classifier.groups), device=device),
        confusion=confusion,
        latent_shape=(unet.config.in_channels, size, size),
        device=device,
        trainable=[p for p in unet.parameters() if p.requires_grad],
    )
    return models, classifier


def _default_encoder(checkpoint_dir: Path) -> Path:
    """The CLIP the T2MedI was trained with, as recorded in its ``medfair.json``."""
    meta = checkpoint_dir / "medfair.json"
    clip = None
    if meta.is_file():
        doc = json.loads(meta.read_text())
        clip = doc.get("image_encoder") or doc.get("clip")
    if not clip or not Path(clip).is_dir():
        raise ModelError(
            "no image encoder for the CLIP-consistency term: pass --image-encoder CLIP_DIR "
            "(or --lambda-clip 0)",
            param="image_encoder",
        )
    return Path(clip)


def _named_trainable(unet: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if p.requires_grad}


def _save_state(
    work: Path,
    step: int,
    m: _Models,
    optimizer: Any,
    scheduler: Any,
    ema: dict[str, torch.Tensor] | None,
    cfg: RemediationConfig,
    log: list[dict[str, Any]],
    audits: list[dict[str, Any]],
    stopped: bool,
) -> None:
    from ..models._common import TrainingState

    tensors = {
        "model": {n: p.detach().clone() for n, p in _named_trainable(m.unet).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }
    if ema is not None:
        tensors["ema"] = ema
    info = {"config": cfg.resume_key(), "log": log, "audits": audits, "stopped": stopped}
    TrainingState(work / "checkpoints").save(step, tensors, info)


def _restore_state(
    work: Path,
    m: _Models,
    optimizer: Any,
    scheduler: Any,
    ema: dict[str, torch.Tensor] | None,
    cfg: RemediationConfig,
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]], bool]:
    from ..models._common import TrainingState

    state = TrainingState(work / "checkpoints")
    latest = state.latest()
    if latest is None:
        return 0, [], [], False
    tensors, info = state.load(latest)
    if info["config"] != json.loads(json.dumps(cfg.resume_key())):
        changed = sorted(k for k, v in cfg.resume_key().items() if info["config"].get(k) != v)
        raise ConfigError(
            f"the checkpoint in '{latest}' was made with other settings ({', '.join(changed)}); "
            "run without --resume to start over",
            param="resume",
        )
    params = _named_trainable(m.unet)
    with torch.no_grad():
        for name, value in tensors["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(tensors["optimizer"])
    scheduler.load_state_dict(tensors["scheduler"])
    torch.set_rng_state(tensors["rng"]["torch"])
    if ema is not None and "ema" in tensors:
        for name, value in tensors["ema"].items():
            ema[name].copy_(value)
    return info["step"], info["log"], info["audits"], info["stopped"]


def _merged_unet(m: _Models, cfg: RemediationConfig) -> Any:
    """The tuned UNet as plain weights (LoRA fused in, adapters removed)."""
    unet = m.unet
    if cfg.full:
        return unet
    merged = copy.deepcopy(unet)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


def _write_output(
    out: Path,
    checkpoint_dir: Path,
    m: _Models,
    cfg: RemediationConfig,
    data: dict[str, Any],
    log: list[dict[str, Any]],
    overwrite: bool,
) -> None:
    from diffusers import StableDiffusionPipeline

    merged = _merged_unet(m, cfg).eval().requires_grad_(False).to("cpu")
    pipe = m.pipe
    with building_dir(out, overwrite=overwrite) as tmp:
        tuned_unet = pipe.unet
        pipe.unet = merged
        try:
            pipe.save_pretrained(str(tmp), safe_serialization=True)
        finally:
            pipe.unet = tuned_unet
        if not cfg.full:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(m.unet))
            StableDiffusionPipeline.save_lora_weights(
                str(tmp / "adapters"),
                unet_lora_layers=layers,
                safe_serialization=True,
                unet_lora_adapter_metadata=m.unet.peft_config["default"].to_dict(),
            )
        meta = {}
        if (checkpoint_dir / "medfair.json").is_file():
            meta = json.loads((checkpoint_dir / "medfair.json").read_text())
        meta.update({"kind": "medfair-t2medi-remediated", "remediated_from": str(checkpoint_dir)})
        if m.encoder is not None:
            meta["image_encoder"] = m.encoder.source
        atomic_write_json(tmp / "medfair.json", meta)
        atomic_write_json(tmp / "remediation.json", data)
        (tmp / "log.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in log))


def remediate(
    checkpoint: str | Path,
    *,
    classifier: str | Path,
    target: Target,
    prompts: Sequence[str],
    out: str | Path,
    config: RemediationConfig | None = None,
    image_encoder: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    trust_pickle: bool = False,
    keep_checkpoints: bool = False,
    progress: ProgressCallback | None = None,
) -> RemediationResult:
    """Fine-tune ``checkpoint`` so its subgroup distribution matches ``target``.

    Args:
        checkpoint: Diffusers text-to-image pipeline folder (T2MedI or a Stable Diffusion).
        classifier: Subgroup classifier folder; its groups must be the target's.
        target: Target proportions (e.g. the BraTS18-like set's sex proportions).
        prompts: Training prompts (sex-neutral for the marginal target).
        out: New pipeline folder (adapters merged) with ``adapters/``, ``remediation.json`` and
            ``log.jsonl``; checkpoints live in ``<out>.partial/`` while it runs.
        config: Training settings.
        image_encoder: CLIP folder for the consistency term (default: the CLIP recorded in the
            checkpoint's ``medfair.json``).
        resume: Continue from the newest checkpoint in ``<out>.partial/``.
        overwrite: Replace an existing ``out``.
        trust_pickle: Allow pickle weights.
        keep_checkpoints: Keep ``<out>.partial/`` after success.
        progress: Called once per step with the loss terms.

    Returns:
        The output path, the ``remediation.json`` content and the time taken.
    """
    from .._dist import accelerator as make_accelerator

    cfg = config or RemediationConfig()
    started = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ConfigError("expected at least one non-empty prompt", param="prompts")
    if (out / "model_index.json").exists() and not overwrite:
        raise DataError(
            f"'{out}' already holds a pipeline; pass --overwrite to replace it", param="out"
        )
    if out.resolve() == checkpoint.resolve():
        raise ConfigError("--out must differ from the checkpoint being remediated", param="out")
    accelerator = make_accelerator()
    torch.manual_seed(cfg.seed)
    m, clf = _load_models(
        checkpoint,
        Path(classifier),
        target,
        prompts,
        image_encoder,
        cfg,
        accelerator.device,
        trust_pickle,
    )
    groups = list(clf.groups)
    optimizer = torch.optim.AdamW(m.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_schedule(cfg))
    names = list(_named_trainable(m.unet))
    ema = None
    if cfg.ema_decay > 0:
        ema = {n: p.detach().clone() for n, p in zip(names, m.trainable, strict=True)}

    work = out.with_name(out.name + ".partial")
    if work.exists() and not resume and accelerator.is_main_process:
        shutil.rmtree(work)
    accelerator.wait_for_everyone()
    start, log, audits, stopped = 0, [], [], False
    if resume:
        start, log, audits, stopped = _restore_state(work, m, optimizer, lr_sched, ema, cfg)
    log_path = work / "log.jsonl"
    if accelerator.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in log))

    if start == 0 and not audits:
        audits.append({"step": 0, **quick_audit(m, cfg, groups, target)})
    step = start
    while step < cfg.steps and not stopped:
        record = _train_step(m, cfg, step, optimizer, lr_sched, accelerator, ema)
        step += 1
        record["mean_probs"] = dict(zip(groups, record["mean_probs"], strict=True))
        if cfg.audit_every and step % cfg.audit_every == 0 and step < cfg.steps:
            audit = {"step": step, **quick_audit(m, cfg, groups, target)}
            audits.append(audit)
            record["audit"] = {"share": audit["share"], "kl": audit["kl"]}
            stopped = cfg.until_kl is not None and audit["kl"] <= cfg.until_kl
        log.append(record)
        if accelerator.is_main_process:
            with log_path.open("a") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopped:
                _save_state(work, step, m, optimizer, lr_sched, ema, cfg, log, audits, stopped)
        info = {"loss": record["loss"], "align": record["align"]}
        if record["clip"] is not None:
            info["clip"] = record["clip"]
        info.update({f"p_{g}": v for g, v in record["mean_probs"].items()})
        report(progress, "remediate", step, cfg.steps, **info)

    if accelerator.is_main_process and step > start:
        _save_state(work, step, m, optimizer, lr_sched, ema, cfg, log, audits, stopped)
    if ema is not None:
        with torch.no_grad():
            for name, p in zip(names, m.trainable, strict=True):
                p.copy_(ema[name])
    m.unet.eval()
    if audits[-1]["step"] != step:
        audits.append({"step": step, **quick_audit(m, cfg, groups, target)})
    seconds = time.perf_counter() - started
    data = {
        "schema_version": 1,
        "checkpoint": str(checkpoint),
        "classifier": str(classifier),
        "image_encoder": m.encoder.source if m.encoder is not None else None,
        "target": target.to_json(),
        "groups": groups,
        "prompts": list(prompts),
        "config": asdict(cfg),
        "trainable_parameters": int(sum(p.numel() for p in m.trainable)),
        "steps_done": step,
        "stopped_early": bool(stopped and step < cfg.steps),
        "processes": accelerator.num_processes,
        "curves": {
            key: [r.get(key) for r in log] for key in ("loss", "align", "clip", "grad_norm", "lr")
        },
        "mean_probs": [r["mean_probs"] for r in log],
        "audits": audits,
        "seconds": seconds,
    }
    if accelerator.is_main_process:
        _write_output(out, checkpoint, m, cfg, data, log, overwrite)
        if not keep_checkpoints:
            shutil.rmtree(work, ignore_errors=True)
    accelerator.wait_for_everyone()
    return RemediationResult(path=out, data=data, seconds=seconds)
