"""Sampling through the DDIM chain with gradients, two ways.

* ``last-k`` (truncated back-propagation, as in DRaFT-K, Clark et al. 2024): the first ``T − K``
  steps run without gradients, the last ``K`` keep the full graph.
* ``adjusted`` (Shen et al. 2023, adjusted direct fine-tuning): at every gradient step the UNet
  input is detached, so each noise prediction reaches the weights only through its own call and
  the final latents through the scheduler's linear update; each step's gradient is rescaled by
  ``√ᾱ_t · √(1 − ᾱ_t) / (1 − α_t)`` (normalised to geometric mean 1), which evens out the
  steps' contributions. Gradients flow through every step or a random subset.

Each gradient step's UNet activations are recomputed in backward (gradient checkpointing), so
memory does not grow with the number of gradient steps beyond one step's inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from ..config import GRADIENTS

__all__ = ["GRADIENTS", "adjusted_coefficients", "ddim_sample", "decode", "step_seed"]


_TAG_TRAIN = 0x7452  # keeps training seeds in their own SeedSequence branch


def _guided_eps(
    unet: Any, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Noise prediction with classifier-free guidance; ``cond`` is ``[uncond; cond]``."""
    if guidance == 1.0:
        return unet(x, t, encoder_hidden_states=cond[len(cond) // 2 :]).sample
    u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.chunk(2)
    return u + guidance * (c - u)


def adjusted_coefficients(scheduler: Any) -> np.ndarray:
    """Shen et al.'s gradient scale of each of ``scheduler.timesteps``, geometric mean 1."""
    t = torch.as_tensor(scheduler.timesteps).long().cpu()
    ac = scheduler.alphas_cumprod[t].double()
    a = scheduler.alphas[t].double()
    coef = (ac.sqrt() * (1 - ac).sqrt() / (1 - a)).numpy()
    return coef / np.exp(np.log(coef).mean())


def _scale_grad(coef: float) -> Any:
    return lambda g: g * coef


def ddim_sample(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    *,
    guidance: float,
    grad_steps: int | Sequence[int] = 0,
    gradient: str = "last-k",
    checkpointing: bool = True,
) -> torch.Tensor:
    """Deterministic DDIM (η = 0) from ``latents`` with gradients through some steps.

    Args:
        unet: Noise-prediction UNet.
        scheduler: A ``DDIMScheduler`` whose ``set_timesteps(T)`` has been called.
        latents: ``(B, C, h, w)`` initial noise (times ``init_noise_sigma``).
        cond: ``(2B, L, D)`` text states, unconditional first.
        guidance: Classifier-free guidance scale.
        grad_steps: With ``last-k``, K (the last K steps keep the graph; 0: none). With
            ``adjusted``, the indices of the steps that keep gradients (an int K means all).
        gradient: ``last-k`` or ``adjusted`` (see the module docstring).
        checkpointing: Recompute the gradient steps' UNet activations in backward.

    Returns:
        The final latents (differentiable when some step keeps gradients and grad is enabled).
    """
    timesteps = scheduler.timesteps
    n = len(timesteps)
    if gradient == "adjusted":
        keep = set(range(n)) if isinstance(grad_steps, int) else set(grad_steps)
        coefs = adjusted_coefficients(scheduler)
    else:
        keep = set(range(n - int(grad_steps), n))
        coefs = None
    x = latents
    for i, t in enumerate(timesteps):
        if i not in keep or not torch.is_grad_enabled():
            with torch.no_grad():
                eps = _guided_eps(unet, x, t, cond, guidance)
        else:
            inp = x.detach() if coefs is not None else x
            if checkpointing:
                eps = checkpoint(_guided_eps, unet, inp, t, cond, guidance, use_reentrant=False)
            else:
                eps = _guided_eps(unet, inp, t, cond, guidance)
            if coefs is not None:
                eps.register_hook(_scale_grad(float(coefs[i])))
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


def decode(vae: Any, latents: torch.Tensor, *, checkpointed: bool = False) -> torch.Tensor:
    """Latents → images in [-1, 1], as the pipeline decodes them.

    With ``checkpointed`` (and gradients wanted) the batch is decoded as usual without keeping
    activations, and backward recomputes the decode one image at a time: the VAE's share of peak
    memory is one image's, whatever the batch. The images are the same; the gradients agree up
    to rounding (per-image instead of batched kernels).
    """
    if checkpointed and torch.is_grad_enabled() and latents.requires_grad:
        return _SlicedDecode.apply(latents, vae)
    return _decode(vae, latents)


def _decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)


class _SlicedDecode(torch.autograd.Function):
    """Decode without stored activations; backward recomputes it image by image."""

    @staticmethod
    def forward(ctx: Any, latents: torch.Tensor, vae: Any) -> torch.Tensor:
        device = latents.device.type
        ctx.vae = vae
        ctx.autocast = (
            device,
            torch.is_autocast_enabled(device),
            torch.get_autocast_dtype(device),
        )
        ctx.save_for_backward(latents)
        with torch.no_grad():
            return _decode(vae, latents)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (latents,) = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        out = torch.empty_like(latents)
        for i in range(len(latents)):
            z = latents[i : i + 1].detach().requires_grad_(True)
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                image = _decode(ctx.vae, z)
            (out[i : i + 1],) = torch.autograd.grad(image, z, grad[i : i + 1])
        return out, None


def step_seed(seed: int, step: int, slot: int) -> int:
    """Seed of batch ``slot`` (process × prompts per step + prompt) of optimiser ``step``."""
    ss = np.random.SeedSequence([_TAG_TRAIN, seed, step, slot])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63))
