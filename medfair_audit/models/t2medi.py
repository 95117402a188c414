"""The T2MedI model: a latent text-to-image diffusion pipeline with a frozen CLIP text encoder.

The saved folder is a standard Stable Diffusion pipeline (``vae``, ``text_encoder``,
``tokenizer``, ``unet``, ``scheduler``; no safety checker), so ``DiffusionPipeline.from_pretrained``
loads it and the same code audits a user's own Stable Diffusion fine-tune.

Training (:func:`train_t2i`) runs in two stages on the captioned images:

1. **VAE.** A small ``AutoencoderKL`` (64×64×1 → 16×16×4) learns to reconstruct the images
   (MSE + L1 + a small KL term); its latent scale is set so latents have unit variance.
2. **UNet.** A ``UNet2DConditionModel`` with cross-attention at the two lower resolutions learns to
   predict the noise added to latents, conditioned on the frozen CLIP text encoder's hidden
   states. The text encoder is frozen, so every distinct caption is encoded once before
   training. Captions are dropped (replaced by the empty prompt) with probability
   ``caption_dropout`` so that classifier-free guidance works; the loss is weighted by min-SNR-γ
   (Hang et al. 2023), which speeds up convergence; an EMA of the weights is what gets saved.

Both stages checkpoint into ``<out>.partial/`` every ``checkpoint_every`` steps, and ``resume``
continues from the newest checkpoint so that the result equals an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_write_json, building_dir, check_out, locks_out
from .._validate import require_count, require_rate
from ..data.datasets import ImageFolderDataset
from ..device import Placement
from ..exceptions import ConfigError
from ..progress import ProgressCallback, report
from ._common import (
    TrainingState,
    backward_step,
    load_images,
    seed_everything,
)
from .clip import load_clip
from .pipelines import generate, load_pipeline

__all__ = [
    "T2IConfig",
    "T2IResult",
    "encode_prompts",
    "load_pipeline",
    "sample_images",
    "train_t2i",
]


@dataclass(frozen=True, kw_only=True)
class T2IConfig:
    """Architecture and schedule of the T2MedI model.

    Args:
        image_size: Pixel side (the VAE downsamples by 4: 64 → 16).
        vae_channels: Channels of the VAE's three resolution levels.
        latent_channels: Channels of the latent.
        vae_steps: VAE training steps (0 with ``init`` keeps the initial VAE).
        vae_batch_size: Images per VAE step.
        vae_lr: VAE learning rate.
        kl_weight: Weight of the VAE's KL term.
        unet_channels: Channels of the UNet's three levels (cross-attention in the lower two).
        attention_head_dim: Channels per attention head.
        unet_steps: UNet training steps.
        batch_size: Latents per UNet step.
        lr: UNet peak learning rate (AdamW, 3% warm-up, cosine decay to 10%).
        caption_dropout: Probability of training on the empty prompt (for guidance).
        snr_gamma: γ of min-SNR loss weighting (0 disables it).
        ema: Keep and save an exponential moving average of the UNet weights.
        ema_decay: Largest EMA decay (reached gradually: ``min(decay, (1+t)/(10+t))``).
        checkpoint_every: Steps between checkpoints (0: only at stage ends).
        seed: Seed of every random draw.
    """

    image_size: int = 64
    vae_channels: Sequence[int] = (16, 32, 64)
    latent_channels: int = 4
    vae_steps: int = 400
    vae_batch_size: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_channels: Sequence[int] = (48, 96, 96)
    attention_head_dim: int = 8
    unet_steps: int = 1500
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


@dataclass(frozen=True)
class T2IResult:
    """What :func:`train_t2i` produced.

    Attributes:
        path: The pipeline folder.
        vae_loss: Final VAE reconstruction loss (``None`` when the VAE was not trained).
        unet_loss: Mean UNet loss over the last 10% of steps.
        seconds: Training time of this call.
    """

    path: Path
    vae_loss: float | None
    unet_loss: float
    seconds: float


class _EMA:
    """Exponential moving average of parameters, with the ``(1+t)/(10+t)`` warm-up."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.named_parameters():
            self.shadow[k].lerp_(v.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for k, v in model.named_parameters():
            v.copy_(self.shadow[k])


def _build_vae(cfg: T2IConfig) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(8, cfg.vae_channels[0]),
        sample_size=cfg.image_size,
        mid_block_add_attention=False,
    )


def _build_unet(cfg: T2IConfig, cross_attention_dim: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.image_size // 4,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(16, cfg.unet_channels[0]),
    )


def _schedulers() -> tuple[Any, Any]:
    from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        clip_sample=False,
    )
    sample = DDIMScheduler.from_config(train.config, set_alpha_to_one=False, steps_offset=1)
    return train, sample


@torch.inference_mode()
def encode_prompts(
    text_encoder: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Last hidden states of the text encoder, as the pipeline computes them."""
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(
            list(prompts[i : i + batch_size]),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        out.append(text_encoder(tokens.input_ids)[0])
    return torch.cat(out)


def sample_images(
    pipe: Any,
    prompt: str,
    *,
    n: int,
    seed: int = 0,
    prompt_index: int = 0,
    steps: int = 25,
    guidance: float = 3.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Generate ``n`` images for one prompt, image ``i`` from the audit's per-image seed.

    Image ``i`` draws its noise from ``image_seed(seed, prompt_index, i)``, the seed the
    generation engine gives it, so these images are the ones ``medfair audit --seed seed`` draws
    for prompt number ``prompt_index``.

    Returns:
        ``(n, C, H, W)`` float tensor in [-1, 1] (results do not depend on ``batch_size``).
    """
    from ..generation.seeds import image_seed

    images = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            seeds = [
                image_seed(seed, prompt_index, start + j) for j in range(min(batch_size, n - start))
            ]
            # One prompt with num_images_per_prompt: the text is encoded once per batch.
            images.append(generate(pipe, prompt, seeds, steps=steps, guidance=guidance).cpu())
    return torch.cat(images).clamp(-1, 1)


def _text_encoder(clip_model: Any) -> Any:
    """The text tower of a ``CLIPModel`` as a standalone ``CLIPTextModel``.

    transformers 5 keeps a ``CLIPTextModel`` inside ``CLIPModel``; version 4 kept the bare
    transformer, which ``CLIPTextModel`` wraps as ``.text_model``.
    """
    import copy

    from transformers import CLIPTextModel

    tower = clip_model.text_model
    if isinstance(tower, CLIPTextModel):
        return copy.deepcopy(tower)
    encoder = CLIPTextModel(clip_model.config.text_config)
    encoder.text_model.load_state_dict(tower.state_dict())
    return encoder


def _cosine(step: int, total: int, warm: int, floor: float = 0.1) -> float:
    if step < warm:
        return (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def _train_vae(
    vae: Any,
    images: torch.Tensor,
    cfg: T2IConfig,
    state: TrainingState,
    generator: torch.Generator,
    progress: ProgressCallback | None,
    placement: Placement,
) -> float:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    warm = max(1, cfg.vae_steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, cfg.vae_steps, warm))
    start, losses, _ = state.resume(vae, opt, sched, generator)
    device, scaler = placement.device, placement.grad_scaler()
    vae.train()
    for step in range(start, cfg.vae_steps):
        idx = torch.randint(len(images), (cfg.vae_batch_size,), generator=generator)
        x = images[idx].to(device)
        with placement.autocast():
            post = vae.encode(x).latent_dist
            eps = torch.randn(post.mean.shape, generator=generator).to(device)
            rec = vae.decode(post.mean + post.std * eps).sample.float()
            kl = post.kl().float().mean()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + cfg.kl_weight * kl
        backward_step(loss, vae, opt, scaler)
        sched.step()
        losses.append(loss.item())
        report(progress, "train vae", step + 1, cfg.vae_steps, loss=losses[-1])
        state.maybe_save(
            step + 1, cfg.vae_steps, cfg.checkpoint_every, vae, opt, sched, generator, losses
        )
    vae.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return float(np.mean(tail)) if tail else float("nan")


@torch.inference_mode()
def _latent_stats(vae: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations (CPU, float32), computed on the VAE's device."""
    means, stds = [], []
    for i in range(0, len(images), 256):
        post = vae.encode(images[i : i + 256].to(vae.device)).latent_dist
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def _train_unet(
    unet: Any,
    mean: torch.Tensor,
    std: torch.Tensor,
    scale: float,
    cond: torch.Tensor,
    caption_idx: torch.Tensor,
    empty_idx: int,
    cfg: T2IConfig,
    state: TrainingState,
    generator: torch.Generator,
    progress: ProgressCallback | None,
    placement: Placement,
) -> tuple[list[float], _EMA | None]:
    noise_sched, _ = _schedulers()
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-2)
    warm = max(1, cfg.unet_steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, cfg.unet_steps, warm))
    ema = _EMA(unet, cfg.ema_decay) if cfg.ema else None
    start, losses, restored = state.resume(unet, opt, sched, generator)
    device, scaler = placement.device, placement.grad_scaler()
    if ema is not None and "ema" in restored:
        ema.shadow = {k: v.to(device) for k, v in restored["ema"].items()}
    unet.train()
    n = len(mean)
    for step in range(start, cfg.unet_steps):
        idx = torch.randint(n, (cfg.batch_size,), generator=generator)
        eps0 = torch.randn(mean[idx].shape, generator=generator)
        latents = (mean[idx] + std[idx] * eps0) * scale
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(
            0, noise_sched.config.num_train_timesteps, (cfg.batch_size,), generator=generator
        )
        drop = torch.rand(cfg.batch_size, generator=generator) < cfg.caption_dropout
        cap = torch.where(drop, torch.full_like(caption_idx[idx], empty_idx), caption_idx[idx])
        noisy = noise_sched.add_noise(latents, noise, t).to(device)
        with placement.autocast():
            pred = unet(noisy, t.to(device), encoder_hidden_states=cond[cap].to(device)).sample
        per = F.mse_loss(pred.float(), noise.to(device), reduction="none").mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:
            weight, s_t = torch.clamp(snr[t], max=cfg.snr_gamma), snr[t]
            per = per * weight.to(device) / s_t.to(device)
        loss = per.mean()
        backward_step(loss, unet, opt, scaler)
        sched.step()
        if ema is not None:
            ema.update(unet, step)
        losses.append(loss.item())
        report(progress, "train unet", step + 1, cfg.unet_steps, loss=losses[-1])
        extra = {"ema": ema.shadow} if ema is not None else {}
        state.maybe_save(
            step + 1,
            cfg.unet_steps,
            cfg.checkpoint_every,
            unet,
            opt,
            sched,
            generator,
            losses,
            **extra,
        )
    unet.eval()
    return losses, ema


@locks_out
def train_t2i(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: T2IConfig | None = None,
    *,
    clip: str | os.PathLike[str] | None = None,
    init: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    trust_pickle: bool = False,
    keep_checkpoints: bool = False,
    placement: Placement | None = None,
    allow_outside_root: bool = False,
    progress: ProgressCallback | None = None,
) -> T2IResult:
    """Train (or fine-tune) the T2MedI pipeline on captioned images and save it to ``out``.

    Args:
        data: Image folder with ``file`` and ``caption`` (the ``train`` split is used when a
            ``split`` column exists).
        out: Pipeline folder to write.
        config: Architecture and schedule.
        clip: CLIP folder whose text tower becomes the frozen text encoder (required unless
            ``init`` is given; with ``init`` it replaces the pipeline's text encoder).
        init: An existing pipeline folder to fine-tune (its VAE is kept when
            ``config.vae_steps == 0``).
        resume: Continue from the checkpoints in ``<out>.partial/``.
        overwrite: Replace an existing ``out``.
        trust_pickle: Allow pickle weights in ``init``/``clip``.
        keep_checkpoints: Keep ``<out>.partial/`` after success.
        placement: Device and training precision of the VAE and UNet (default: the CPU in
            float32); the pipeline is saved from the CPU in float32.
        allow_outside_root: Read images that ``metadata.csv`` places outside ``data``.
        progress: Called once per step with the loss.

    Returns:
        Paths, final losses and time.
    """
    from diffusers import StableDiffusionPipeline

    cfg = config or T2IConfig()
    placement = placement or Placement(device="cpu", dtype="float32")
    start_time = time.perf_counter()
    out = Path(out)
    check_out(out, overwrite=overwrite)
    if clip is None and init is None:
        raise ConfigError("give --clip CLIP_DIR (or --init CKPT to fine-tune)", param="clip")
    work = out.with_name(out.name + ".partial")
    if work.exists() and not resume:
        shutil.rmtree(work)
    generator = seed_everything(cfg.seed)

    # Cheap checks first (the table, then the model folders), pixels last.
    dataset = ImageFolderDataset(
        data, require=("caption",), size=cfg.image_size, allow_outside_root=allow_outside_root
    )
    meta = dataset.metadata
    if "split" in meta.columns and (meta.split == "train").any():
        dataset.metadata = meta[meta.split == "train"].reset_index(drop=True)  # read once
    base = load_pipeline(init, trust_pickle=trust_pickle, param="init") if init else None
    if clip is not None:
        clip_model, tokenizer = load_clip(clip, trust_pickle=trust_pickle)
        text_encoder = _text_encoder(clip_model)
        del clip_model
    else:
        text_encoder, tokenizer = base.text_encoder, base.tokenizer
    text_encoder.requires_grad_(False).eval()

    images = load_images(dataset, progress=progress, stage="load images")
    captions = dataset.captions

    distinct = sorted(set(captions))
    lookup = {c: i for i, c in enumerate(distinct)}
    cond = encode_prompts(text_encoder, tokenizer, [*distinct, ""])
    caption_idx = torch.tensor([lookup[c] for c in captions])

    # Stage 1: the VAE.
    if base is not None and cfg.vae_steps == 0:
        vae = base.vae
        vae_loss = None
    else:
        vae = (base.vae if base is not None else _build_vae(cfg)).float().to(placement.device)
        vae_loss = _train_vae(
            vae, images, cfg, TrainingState(work / "vae"), generator, progress, placement
        )
    vae.requires_grad_(False).eval()
    mean, std = _latent_stats(vae, images)
    scale = float(1.0 / mean.std()) if base is None or cfg.vae_steps else vae.config.scaling_factor
    vae.register_to_config(scaling_factor=scale)

    # Stage 2: the UNet.
    if base is not None:
        unet = base.unet
    else:
        unet = _build_unet(cfg, text_encoder.config.hidden_size)
    unet = unet.float().to(placement.device)
    losses, ema = _train_unet(
        unet,
        mean,
        std,
        scale,
        cond,
        caption_idx,
        len(distinct),
        cfg,
        TrainingState(work / "unet"),
        generator,
        progress,
        placement,
    )
    if ema is not None:
        ema.copy_to(unet)
    unet, vae = unet.to("cpu"), vae.to("cpu")
    _, ddim = _schedulers()
    if base is not None:
        ddim = base.scheduler
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=ddim,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    seconds = time.perf_counter() - start_time
    unet_loss = float(np.mean(losses[-max(1, len(losses) // 10) :]))
    with building_dir(out, overwrite=True) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        atomic_write_json(
            tmp / "medfair.json",
            {
                "kind": "medfair-t2medi",
                "data": str(data),
                "clip": str(clip) if clip else None,
                "init": str(init) if init else None,
                "config": asdict(cfg),
                "n_train": len(images),
                "n_captions": len(distinct),
                "vae_loss": vae_loss,
                "unet_loss_curve": losses[:: max(1, len(losses) // 200)],
                "unet_loss": unet_loss,
                "seconds": seconds,
            },
        )
    if not keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)
    return T2IResult(path=out, vae_loss=vae_loss, unet_loss=unet_loss, seconds=seconds)
