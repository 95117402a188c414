"""Expectation over transformations (EOT) for the alignment loss.

A classifier's reading of a generated image can hinge on pixel patterns that a small shift,
rotation, intensity change, noise or blur destroys: a direction in image space that moves *that*
classifier without changing the anatomy. Scoring each image by the mean of the classifier's
probabilities over random small transformations (Athalye et al. 2018) removes the reward for such
patterns, so the tuning has to change what survives them. The transformations are those the
classifiers were trained to ignore (:func:`~medfair_audit.models.classifier.random_affine`) plus
sensor-like noise and blur; every draw is seeded from the batch's own seed, so a run resumes
exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..models.classifier import random_affine

__all__ = [
    "EOT_MAX_BLUR",
    "EOT_MAX_NOISE",
    "EOT_MAX_ROTATION",
    "EOT_MAX_SHIFT",
    "eot_views",
    "fold_views",
]

_TAG_EOT = 0x454F54  # keeps EOT draws apart from the batch's noise

#: Largest standard deviation of the added Gaussian noise, in [-1, 1] pixel units.
EOT_MAX_NOISE = 0.05
#: Largest Gaussian blur, in pixels (standard deviation).
EOT_MAX_BLUR = 1.0
#: Rotation (degrees) and shift (fraction of the side) ranges, those the classifiers train with.
EOT_MAX_ROTATION = 6.0
EOT_MAX_SHIFT = 0.04


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur of ``(N, C, H, W)`` images (σ in pixels, may be 0)."""
    n, c, h, w = x.shape
    radius = math.ceil(3 * EOT_MAX_BLUR)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N·C, taps)
    flat = x.reshape(1, n * c, h, w) + 1  # the background (-1) pads as 0
    taps = kernel.shape[1]
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, taps), padding=(0, radius), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, taps, 1), padding=(radius, 0), groups=n * c)
    return flat.view(n, c, h, w) - 1


def eot_views(images: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    """``copies`` randomly transformed views of each image, ``(copies · B, C, H, W)``.

    View ``j`` of image ``i`` is row ``j · B + i``. Differentiable in ``images``.

    Args:
        images: ``(B, C, H, W)`` images in [-1, 1].
        copies: Views per image (0 returns the images unchanged).
        seed: Seed of the draws (the batch's seed).
    """
    if copies == 0:
        return images
    ss = np.random.SeedSequence([_TAG_EOT, seed])
    generator = torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))
    x = images.repeat(copies, 1, 1, 1)
    x = random_affine(
        x, max_rotation=EOT_MAX_ROTATION, max_shift=EOT_MAX_SHIFT, generator=generator
    )
    n = len(x)
    sigma = torch.rand(n, generator=generator) * EOT_MAX_BLUR
    x = _blur(x, sigma)
    noise_sd = torch.rand(n, 1, 1, 1, generator=generator) * EOT_MAX_NOISE
    noise = torch.randn(x.shape, generator=generator) * noise_sd
    return (x + noise.to(x)).clamp(-1, 1)


def fold_views(probs: torch.Tensor, copies: int) -> torch.Tensor:
    """``(copies · B, K)`` probabilities of :func:`eot_views` → ``(B, K)``, the mean over views."""
    if copies == 0:
        return probs
    return probs.view(copies, -1, probs.shape[-1]).mean(0)
