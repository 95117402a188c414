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

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_write_json, check_out, locks_out
from ..config import Placement, T2IConfig, T2IJob
from ..data.datasets import ImageFolderDataset
from ..progress import ProgressCallback, report
from ..training import (
    Checkpointer,
    RunFolder,
    backward_step,
    batched,
    load_images,
    min_snr_weights,
    seed_everything,
    warmup_cosine,
)
from ..training import (
    ema as make_ema,
)
from .clip import CLIP
from .pipelines import generate, load_pipeline, save_pipeline

__all__ = [
    "T2IConfig",
    "T2IResult",
    "encode_prompts",
    "load_pipeline",
    "sample_images",
    "train_t2i",
]


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

    def summary(self) -> list[str]:
        """Lines for a terminal."""
        vae = f"VAE loss {self.vae_loss:.4f}, " if self.vae_loss is not None else ""
        return [f"wrote {self.path}: {vae}UNet loss {self.unet_loss:.4f} in {self.seconds:.0f} s"]


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
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return batched(
        lambda ids: text_encoder(ids)[0],
        tokens.input_ids,
        batch_size=batch_size,
        device=text_encoder.device,
    )


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


def _random_crops(x: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``side``² crop of each image of ``x`` (N, C, H, W), placed by ``generator``."""
    top = torch.randint(x.shape[-2] - side + 1, (len(x),), generator=generator).tolist()
    left = torch.randint(x.shape[-1] - side + 1, (len(x),), generator=generator).tolist()
    windows = zip(x, top, left, strict=True)
    return torch.stack([im[:, t : t + side, j : j + side] for im, t, j in windows])


def _train_vae(
    vae: Any,
    images: torch.Tensor,
    cfg: T2IConfig,
    state: Checkpointer,
    generator: torch.Generator,
    progress: ProgressCallback | None,
    placement: Placement,
) -> float:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = warmup_cosine(opt, total=cfg.vae_steps, warmup=max(1, cfg.vae_steps // 30), floor=0.1)
    objects = {"model": vae, "optimizer": opt, "scheduler": sched}
    start, info = state.restore(objects, generator=generator)
    losses = info.get("losses", [])
    device, scaler = placement.device, placement.grad_scaler()
    vae.train()
    for step in range(start, cfg.vae_steps):
        idx = torch.randint(len(images), (cfg.vae_batch_size,), generator=generator)
        x = images[idx]
        if step < cfg.vae_crop_steps:
            x = _random_crops(x, cfg.vae_crop, generator)
        x = x.to(device)
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
        if state.due(step + 1, cfg.vae_steps, cfg.checkpoint_every):
            state.save(step + 1, objects, generator=generator, info={"losses": losses})
    vae.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return float(np.mean(tail)) if tail else float("nan")


@torch.inference_mode()
def _latent_stats(vae: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations (CPU, float32), computed on the VAE's device."""

    def moments(x: torch.Tensor) -> torch.Tensor:
        post = vae.encode(x).latent_dist
        return torch.cat([post.mean, post.std], dim=1).float()

    mean, std = batched(moments, images, device=vae.device).chunk(2, dim=1)
    return mean.contiguous(), std.contiguous()


def _train_unet(
    unet: Any,
    mean: torch.Tensor,
    std: torch.Tensor,
    scale: float,
    cond: torch.Tensor,
    caption_idx: torch.Tensor,
    empty_idx: int,
    cfg: T2IConfig,
    state: Checkpointer,
    generator: torch.Generator,
    progress: ProgressCallback | None,
    placement: Placement,
) -> tuple[list[float], Any | None]:
    noise_sched, _ = _schedulers()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-2)
    sched = warmup_cosine(opt, total=cfg.unet_steps, warmup=max(1, cfg.unet_steps // 30), floor=0.1)
    ema = make_ema(unet.parameters(), decay=cfg.ema_decay) if cfg.ema else None
    objects = {"model": unet, "optimizer": opt, "scheduler": sched, "ema": ema}
    start, info = state.restore(objects, generator=generator)
    losses = info.get("losses", [])
    device, scaler = placement.device, placement.grad_scaler()
    if ema is not None:
        ema.to(device)  # the checkpoint is read onto the CPU
    unet.train()
    n = len(mean)
    shape = (cfg.batch_size, *mean.shape[1:])
    # The random draws come from the CPU generator (the same run on any device); the latents,
    # the noising and the text states live on the training device.
    mean, std, cond = mean.to(device), std.to(device), cond.to(device)
    for step in range(start, cfg.unet_steps):
        idx = torch.randint(n, (cfg.batch_size,), generator=generator)
        eps0 = torch.randn(shape, generator=generator).to(device)
        latents = (mean[idx] + std[idx] * eps0) * scale
        noise = torch.randn(shape, generator=generator).to(device)
        t = torch.randint(
            0, noise_sched.config.num_train_timesteps, (cfg.batch_size,), generator=generator
        )
        drop = torch.rand(cfg.batch_size, generator=generator) < cfg.caption_dropout
        cap = torch.where(drop, torch.full_like(caption_idx[idx], empty_idx), caption_idx[idx])
        noisy = noise_sched.add_noise(latents, noise, t.to(device))
        with placement.autocast():
            pred = unet(noisy, t.to(device), encoder_hidden_states=cond[cap.to(device)]).sample
        per = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:
            per = per * min_snr_weights(noise_sched, t, cfg.snr_gamma).to(device)
        loss = per.mean()
        backward_step(loss, unet, opt, scaler)
        sched.step()
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(loss.item())
        report(progress, "train unet", step + 1, cfg.unet_steps, loss=losses[-1])
        if state.due(step + 1, cfg.unet_steps, cfg.checkpoint_every):
            state.save(step + 1, objects, generator=generator, info={"losses": losses})
    unet.eval()
    return losses, ema


@locks_out
def train_t2i(job: T2IJob, *, progress: ProgressCallback | None = None) -> T2IResult:
    """Train (or fine-tune) the T2MedI pipeline on captioned images and save it to ``job.out``.

    Args:
        job: Data (``file`` and ``caption``; the ``train`` split when a ``split`` column
            exists), destination, architecture and schedule, the CLIP text tower or the
            pipeline to fine-tune, resume and placement (:class:`~medfair_audit.config.T2IJob`;
            the pipeline is saved from the CPU in float32).
        progress: Called once per step with the loss.

    Returns:
        Paths, final losses and time.
    """
    data, out, cfg, placement = job.data, job.out, job.config, job.placement
    clip, init, resume, overwrite = job.clip, job.init, job.resume, job.overwrite
    trust_pickle, keep_checkpoints = job.trust_pickle, job.keep_checkpoints
    allow_outside_root = job.allow_outside_root
    from diffusers import StableDiffusionPipeline

    placement = placement or Placement(device="cpu", dtype="float32")
    start_time = time.perf_counter()
    check_out(out, overwrite=overwrite)
    run = RunFolder(out, overwrite=overwrite, resume=resume, keep=keep_checkpoints)
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
        clip_model, tokenizer = CLIP.from_pretrained(clip, trust_pickle=trust_pickle)
        text_encoder = _text_encoder(clip_model)
        del clip_model
    else:
        text_encoder, tokenizer = base.text_encoder, base.tokenizer
    text_encoder.requires_grad_(False).eval()

    images = load_images(dataset, progress=progress, stage="load images")
    captions = dataset.captions

    distinct = sorted(set(captions))
    lookup = {c: i for i, c in enumerate(distinct)}
    cond = encode_prompts(text_encoder.to(placement.device), tokenizer, [*distinct, ""])
    caption_idx = torch.tensor([lookup[c] for c in captions])

    # Stage 1: the VAE.
    if base is not None and cfg.vae_steps == 0:
        vae = base.vae.float().to(placement.device)  # encodes the training images there
        vae_loss = None
    else:
        vae = (base.vae if base is not None else _build_vae(cfg)).float().to(placement.device)
        vae_loss = _train_vae(
            vae, images, cfg, run.checkpointer("vae"), generator, progress, placement
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
        run.checkpointer("unet"),
        generator,
        progress,
        placement,
    )
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet, vae, text_encoder = unet.to("cpu"), vae.to("cpu"), text_encoder.to("cpu")
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
    with run.finish() as tmp:
        save_pipeline(pipe, tmp)
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
    return T2IResult(path=out, vae_loss=vae_loss, unet_loss=unet_loss, seconds=seconds)
