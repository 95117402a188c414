"""One optimiser step of subgroup distribution aligned tuning.

For each prompt of the step: draw a batch of noise from the step's own seed, sample it with the
tuned model (gradients through the chosen steps) and with the frozen original, classify the tuned
images, and combine the alignment loss with λ times the semantics-preservation term. Gradients
are averaged over the prompts and the processes, clipped, applied, and the EMA follows.

Forward passes run under autocast in the generation dtype (float32 master weights; float16 also
scales the loss with a ``GradScaler``). A step whose gradients are not finite is skipped (no
update, no EMA step) and logged as ``skipped``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from ..config import RemediationConfig
from .losses import alignment_kl, consistency, ot_cross_entropy
from .sampling import ddim_sample, decode, step_seed
from .transforms import eot_views, fold_views
from .wiring import Models

__all__ = ["batch_losses", "sample_pair", "train_step"]


def _chain(cfg: RemediationConfig, seed: int) -> tuple[int, list[int] | int]:
    """T for this batch and the steps that keep gradients (K, or indices for ``adjusted``)."""
    rng = np.random.default_rng(seed)
    t = cfg.sampling_steps
    if cfg.sampling_steps_max is not None:
        t = int(rng.integers(cfg.sampling_steps, cfg.sampling_steps_max + 1))
    k = min(cfg.k, t)
    if cfg.gradient == "adjusted" and k < t:
        return t, sorted(int(i) for i in rng.choice(t, size=k, replace=False))
    return t, k


def sample_pair(
    m: Models, cfg: RemediationConfig, prompt: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tuned images (with gradients) and the original's images from the same noise."""
    steps, grad = _chain(cfg, seed)
    sched = m.scheduler(steps)
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_per_prompt, *m.latent_shape)
    noise = torch.randn(shape, generator=gen).to(m.device) * sched.init_noise_sigma
    kw = {"guidance": cfg.guidance}
    latents = ddim_sample(
        m.unet,
        sched,
        noise,
        m.states(prompt, cfg.batch_per_prompt),
        grad_steps=grad,
        gradient=cfg.gradient,
        checkpointing=cfg.gradient_checkpointing,
        **kw,
    )
    tuned = decode(m.pipe.vae, latents, checkpointed=m.decode_checkpointing)
    original = None
    if cfg.lambda_clip > 0:
        with torch.no_grad(), m.original() as unet:
            cond = m.states(prompt, cfg.batch_per_prompt)
            original = decode(m.pipe.vae, ddim_sample(unet, sched, noise, cond, **kw))
    return tuned, original


def batch_losses(
    m: Models,
    cfg: RemediationConfig,
    tuned: torch.Tensor,
    original: torch.Tensor | None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Alignment, semantics preservation and their sum for one batch.

    With ``cfg.augment`` each image is read as the mean over that many random views
    (:func:`~.transforms.eot_views`, seeded by ``seed``); with an ensemble the alignment is the
    mean of each guiding classifier's own alignment loss, so that no single classifier can be
    satisfied at the others' expense.
    """
    views = eot_views(tuned, cfg.augment, seed)
    probs = fold_views(m.probs(views), cfg.augment)
    out: dict[str, torch.Tensor] = {"probs": probs.detach().mean(0)}
    assigned = None
    if cfg.loss == "ot":
        align, assigned, keep = ot_cross_entropy(
            probs,
            m.target,
            max_uncertainty=cfg.ot_max_uncertainty,
            draws=cfg.ot_draws,
            seed=seed,
        )
        out["kept"] = keep.float().mean()
    elif m.marginals:  # several attributes, one loss each, weighted
        parts = [fold_views(p, cfg.augment) for p in m.member_probs(views)]
        align = sum(
            w * alignment_kl(p, t, soft_confusion=s)
            for p, (t, s, w) in zip(parts, m.marginals, strict=True)
        )
    else:  # one attribute, or the joint cells of several
        align = alignment_kl(probs, m.target, soft_confusion=m.soft_confusion)
        if m.ensemble:  # one attribute read by several classifiers: each one's loss, averaged
            each = [align] + [
                alignment_kl(
                    fold_views(member.member_probs(views)[0], cfg.augment),
                    m.target,
                    soft_confusion=soft,
                )
                for member, soft in m.ensemble
            ]
            align = torch.stack(each).mean()
    out["align"] = align
    out["loss"] = align
    if original is not None:
        weights = None
        with torch.no_grad():
            ref = m.embed(original)
            if assigned is not None:  # Shen et al.: an image meant to change keeps less of it
                label = m.probs(original).argmax(1)
                weights = torch.where(assigned == label, 1.0, cfg.changed_weight).float()
        out["clip"] = consistency(
            m.embed(tuned),
            ref,
            encoder_weights=[w for _, w in m.encoders],
            image_weights=weights,
        )
        out["loss"] = align + cfg.lambda_clip * out["clip"]
    return out


def _stat(terms: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    value = terms.get(key)
    return torch.tensor(float("nan")) if value is None else value.detach().float().cpu()


def train_step(
    m: Models,
    cfg: RemediationConfig,
    step: int,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    ema: Any | None,
    scaler: Any | None = None,
) -> dict[str, Any]:
    """One optimiser step over ``prompts_per_step`` prompts; returns the logged numbers."""
    rank, world = accelerator.process_index, accelerator.num_processes
    per = cfg.prompts_per_step
    params = list(m.trainable.values())
    # Batch slots are numbered across processes, so N processes × 1 prompt per step draw the
    # same prompts and noise as 1 process × N prompts per step.
    first = step * world * per
    optimizer.zero_grad(set_to_none=True)
    stats = []
    keys = ("loss", "align", "clip", "kept")
    for slot in range(rank * per, (rank + 1) * per):
        prompt = (first + slot) % m.n_prompts
        seed = step_seed(cfg.seed, step, slot)
        with m.placement.autocast():
            terms = batch_losses(m, cfg, *sample_pair(m, cfg, prompt, seed), seed=seed)
        loss = terms["loss"].float() / per
        (scaler.scale(loss) if scaler is not None else loss).backward()
        stats.append(
            torch.cat([torch.stack([_stat(terms, k) for k in keys]), _stat(terms, "probs")])
        )
    mean = torch.stack(stats).mean(0).to(accelerator.device)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world > 1:  # means over processes, each in one flat all-reduce
        mean = accelerator.reduce(mean, reduction="mean")
        flat = accelerator.reduce(torch.cat([p.grad.flatten() for p in params]), "mean")
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad.copy_(g.view_as(p))
    mean = mean.cpu()
    record: dict[str, Any] = {
        "step": step + 1,
        "prompts": [(first + s) % m.n_prompts for s in range(world * per)],
        **{k: None if torch.isnan(mean[i]) else float(mean[i]) for i, k in enumerate(keys)},
        "mean_probs": mean[len(keys) :].tolist(),
    }
    if scaler is not None:
        scaler.unscale_(optimizer)
    # the total norm (clipped when max_grad_norm > 0) also tells whether every gradient is finite
    norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf")))
    record["grad_norm"] = norm if math.isfinite(norm) else None
    record["skipped"] = not math.isfinite(norm)
    if scaler is not None:
        scaler.step(optimizer)  # skips by itself on inf/NaN
        scaler.update()
    elif not record["skipped"]:
        optimizer.step()
    with warnings.catch_warnings():  # a skipped step still advances the schedule
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()
    if ema is not None and not record["skipped"]:
        ema.step(params)
    if ema is not None:
        record["ema_decay"] = ema.cur_decay_value
    record["lr"] = scheduler.get_last_lr()[0]
    return record
