"""Expectation over transformations (EOT) for the alignment loss.

A classifier's reading of a generated image can hinge on pixel patterns that a small shift or
rotation destroys: a direction in image space that moves *that* classifier without changing the
anatomy. Scoring each image by the mean of the classifier's probabilities over random small
transformations (Athalye et al. 2018) removes the reward for such patterns, so the tuning has to
change what survives them.

The views use only the transformations the classifiers were trained to ignore (rotations,
shifts, left-right flips and intensity gains of
:func:`~medfair_audit.models.classifier.random_affine`, at the classifiers' training ranges), so
that a classifier reads a view of a real-looking image as it reads the image: the soft
confusion matrix of ``--align-to corrected``, measured on clean held-out images, still applies.
Blur and noise would not: blurring a slice widens its edge, which a sex classifier reads as a
larger head, and on the demo such views made the tuning overshoot far toward female. Every draw is
seeded from the batch's own seed, so a run resumes exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.classifier import random_affine

__all__ = ["EOT_MAX_ROTATION", "EOT_MAX_SHIFT", "eot_views", "fold_views"]

_TAG_EOT = 0x454F54  # keeps EOT draws apart from the batch's noise

#: Rotation (degrees) and shift (fraction of the side) ranges: those the classifiers train with.
EOT_MAX_ROTATION = 6.0
EOT_MAX_SHIFT = 0.04


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
    return random_affine(
        images.repeat(copies, 1, 1, 1),
        max_rotation=EOT_MAX_ROTATION,
        max_shift=EOT_MAX_SHIFT,
        generator=generator,
    )


def fold_views(probs: torch.Tensor, copies: int) -> torch.Tensor:
    """``(copies · B, K)`` probabilities of :func:`eot_views` → ``(B, K)``, the mean over views."""
    if copies == 0:
        return probs
    return probs.view(copies, -1, probs.shape[-1]).mean(0)
