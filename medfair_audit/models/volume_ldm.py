"""A small MONAI latent diffusion model of brain volumes, conditioned on one attribute.

What ``medfair demo --volumes`` audits: the recipe of the brain LDM of Pinaya et al. (2022) at a
size two CPU cores train in minutes. MONAI's ``AutoencoderKL`` compresses ``size``³ volumes
(intensities in [0, 1]) to a latent a quarter of the side, trained on an L1 reconstruction loss
and a small KL term; MONAI's ``DiffusionModelUNet`` learns the latents' noise (DDPM, scaled-linear
betas), conditioned by cross-attention on the attribute's value (0 or 1 for two groups). The
result is written as a MONAI bundle (:func:`~medfair_audit.models.monai_ldm.save_bundle`) that
``medfair audit --condition`` reads like any other; sampling uses DDIM.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._io import atomic_write_json, building_dir, check_out
from ..exceptions import ConfigError, DataError
from ..progress import ProgressCallback, report
from ..training import backward_step, load_images, seed_everything, warmup_cosine

__all__ = ["VolumeLDMConfig", "train_volume_ldm"]

#: The noise schedule: DDPM while training, DDIM (the bundle's scheduler) while sampling.
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "clip_sample": False,
}


@dataclass(frozen=True, kw_only=True)
class VolumeLDMConfig:
    """Sizes and schedules of :func:`train_volume_ldm`.

    Args:
        size: Volume side in voxels (the latent's is a quarter of it).
        ae_channels: Channels of the autoencoder's three levels.
        latent_channels: Latent channels.
        ae_steps: Autoencoder optimiser steps.
        ae_batch: Volumes per autoencoder step.
        ae_lr: Autoencoder learning rate (AdamW, cosine decay).
        kl_weight: Weight of the autoencoder's KL term.
        unet_channels: Channels of the diffusion UNet's three levels (attention at the last).
        unet_steps: Diffusion optimiser steps.
        unet_batch: Latents per diffusion step.
        unet_lr: Diffusion learning rate (AdamW, cosine decay).
        seed: Seed of initialisation and batches.
    """

    size: int = 32
    ae_channels: Sequence[int] = (8, 16, 16)
    latent_channels: int = 3
    ae_steps: int = 300
    ae_batch: int = 4
    ae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_channels: Sequence[int] = (16, 32, 32)
    unet_steps: int = 1500
    unet_batch: int = 32
    unet_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_channels", tuple(int(c) for c in self.ae_channels))
        object.__setattr__(self, "unet_channels", tuple(int(c) for c in self.unet_channels))
        if len(self.ae_channels) != 3 or len(self.unet_channels) != 3:
            raise ConfigError("expected three channel counts", param="ae_channels")
        if self.size % 4 or self.size < 8:
            raise ConfigError(f"expected a side divisible by 4, got {self.size}", param="size")
        for name in ("ae_steps", "ae_batch", "unet_steps", "unet_batch", "latent_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"expected {name} ≥ 1", param=name)

    @classmethod
    def tiny(cls, **overrides: Any) -> VolumeLDMConfig:
        """Seconds, not quality: for tests."""
        base = {"size": 16, "ae_channels": (4, 4, 4), "unet_channels": (8, 8, 8), "ae_steps": 2,
                "unet_steps": 2, "ae_batch": 2, "unet_batch": 4, "latent_channels": 2}  # fmt: skip
        return cls(**{**base, **overrides})

    def definitions(self) -> dict[str, dict[str, Any]]:
        """The bundle's ``inference.json`` definitions of these networks."""
        groups = max(1, min(self.ae_channels) // 2)
        return {
            "autoencoder_def": {
                "_target_": "monai.networks.nets.AutoencoderKL", "spatial_dims": 3,
                "in_channels": 1, "out_channels": 1, "channels": list(self.ae_channels),
                "latent_channels": self.latent_channels, "num_res_blocks": 1,
                "norm_num_groups": groups, "attention_levels": [False, False, False],
                "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False,
            },
            "network_def": {
                "_target_": "monai.networks.nets.DiffusionModelUNet", "spatial_dims": 3,
                "in_channels": self.latent_channels, "out_channels": self.latent_channels,
                "channels": list(self.unet_channels), "attention_levels": [False, False, True],
                "num_res_blocks": 1, "num_head_channels": [0, 0, self.unet_channels[-1]],
                "norm_num_groups": max(1, min(self.unet_channels) // 2),
                "with_conditioning": True, "cross_attention_dim": 1,
            },
            "scheduler": {"_target_": "monai.networks.schedulers.DDIMScheduler",
                          **NOISE_SCHEDULE},
        }  # fmt: skip


def _step(
    loss: torch.Tensor, model: Any, opt: Any, sched: Any, history: list[float], *,
    max_norm: float | None,
) -> None:  # fmt: skip
    """One optimiser step (gradients clipped to ``max_norm``); the loss joins ``history``."""
    backward_step(loss, model, opt, None, max_norm=max_norm)
    sched.step()
    history.append(round(loss.item(), 5))


def train_volume_ldm(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: VolumeLDMConfig | None = None,
    attribute: str = "sex",
    groups: Sequence[str] = ("female", "male"),
    sequence: str = "t1",
    split: str | None = "train",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Train the autoencoder, then the conditioned diffusion UNet; write a MONAI bundle.

    Args:
        data: A volume folder (``medfair data phantom --volumes``).
        out: The bundle folder to write.
        config: Sizes and schedules.
        attribute: The ``metadata.csv`` column it is conditioned on.
        groups: That column's two groups, conditioned as 0 and 1.
        sequence: The volumes' sequence.
        split: Train on this split only (``None``: every volume).
        overwrite: Replace ``out``.
        progress: Called once per step.

    Returns:
        The bundle folder (with ``configs/training.json``: settings, losses, seconds).
    """
    from ..data.volumes import VolumeFolderDataset
    from .monai_ldm import build_component, save_bundle

    cfg = config or VolumeLDMConfig()
    if len(groups) != 2:
        raise ConfigError("a volume LDM conditions on two groups", param="groups")
    check_out(out, overwrite=overwrite)
    start = time.perf_counter()
    generator = seed_everything(cfg.seed)
    dataset = VolumeFolderDataset(
        data, sequence=sequence, size=cfg.size, split=split, require=(attribute,), param="data"
    )
    labels = dataset.metadata[attribute].astype(str).str.strip()
    unknown = sorted(set(labels) - set(groups))
    if unknown:
        raise DataError(f"{attribute} values outside {list(groups)}: {unknown}", param="data")
    cond = torch.tensor([groups.index(v) for v in labels], dtype=torch.float32)
    x = (load_images(dataset, progress=progress, stage="load volumes") + 1) / 2  # [0, 1]
    defs = cfg.definitions()
    ae, unet = (
        build_component(defs, "autoencoder", "config"),
        build_component(defs, "diffusion", "config"),
    )
    history: dict[str, list[float]] = {"autoencoder": [], "diffusion": []}

    # the autoencoder: L1 reconstruction and a small KL term
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr)
    sched = warmup_cosine(opt, total=cfg.ae_steps, warmup=min(20, cfg.ae_steps), floor=0.1)
    ae.train()
    for step in range(cfg.ae_steps):
        idx = torch.randint(0, len(x), (cfg.ae_batch,), generator=generator)
        batch = x[idx]
        rec, mu, sigma = ae(batch)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1).mean()
        loss = F.l1_loss(rec, batch) + cfg.kl_weight * kl
        _step(loss, ae, opt, sched, history["autoencoder"], max_norm=None)
        report(
            progress, "train autoencoder", step + 1, cfg.ae_steps, loss=history["autoencoder"][-1]
        )
    ae.eval()
    with torch.no_grad():
        latents = torch.cat([ae.encode(x[i : i + 16])[0] for i in range(0, len(x), 16)])
    scale = 1.0 / float(latents.std().clamp_min(1e-6))
    z = latents * scale

    # the diffusion UNet: DDPM noise prediction, conditioned by cross-attention
    from monai.networks.schedulers import DDPMScheduler

    train_sched = DDPMScheduler(**NOISE_SCHEDULE)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr)
    sched = warmup_cosine(opt, total=cfg.unet_steps, warmup=min(50, cfg.unet_steps), floor=0.1)
    unet.train()
    for step in range(cfg.unet_steps):
        idx = torch.randint(0, len(z), (cfg.unet_batch,), generator=generator)
        noise = torch.randn(z[idx].shape, generator=generator)
        t = torch.randint(0, 1000, (len(idx),), generator=generator)
        noisy = train_sched.add_noise(original_samples=z[idx], noise=noise, timesteps=t)
        eps = unet(noisy, timesteps=t, context=cond[idx].view(-1, 1, 1))
        loss = F.mse_loss(eps, noise)
        _step(loss, unet, opt, sched, history["diffusion"], max_norm=1.0)
        report(progress, "train diffusion", step + 1, cfg.unet_steps, loss=history["diffusion"][-1])
    unet.eval()
    side = cfg.size // 4
    declared = {
        "latent_shape": [cfg.latent_channels, side, side, side],
        "scale_factor": scale,
        "output_range": [0.0, 1.0],
        "conditioning": {
            "mode": "crossattn",
            "vector": [attribute],
            "default": [0.5],
            "groups": {attribute: {groups[0]: {attribute: 0.0}, groups[1]: {attribute: 1.0}}},
            "distribution": {attribute: {groups[0]: 0.5, groups[1]: 0.5}},
        },
    }
    with building_dir(out, overwrite=overwrite) as tmp:
        save_bundle(
            tmp, autoencoder_def=defs["autoencoder_def"], network_def=defs["network_def"],
            scheduler_def=defs["scheduler"], autoencoder=ae, diffusion=unet, medfair=declared,
        )  # fmt: skip
        tail = {k: v[-max(1, len(v) // 10) :] for k, v in history.items()}
        atomic_write_json(
            tmp / "configs" / "training.json",
            {
                "data": str(data),
                "sequence": sequence,
                "split": split,
                "attribute": attribute,
                "groups": list(groups),
                "n_volumes": len(x),
                "config": asdict(cfg),
                "final_loss": {k: sum(v) / len(v) for k, v in tail.items()},
                "seconds": time.perf_counter() - start,
                "threads": torch.get_num_threads(),
                "note": "latents scaled to unit standard deviation (scale_factor)",
                "steps": {k: len(v) for k, v in history.items()},
                "loss_first": {k: v[0] for k, v in history.items() if v},
                "finite": all(math.isfinite(v) for h in history.values() for v in h),
            },
        )
    return Path(out)
