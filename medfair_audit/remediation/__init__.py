"""Remediation: subgroup distribution aligned tuning (Han et al. 2024; Shen et al. 2023)."""

from .encoders import ImageEncoder, load_image_encoder
from .losses import (
    alignment_kl,
    clip_consistency,
    correct_for_confusion,
    ot_assign,
    ot_cross_entropy,
)
from .tuning import LOSSES, RemediationConfig, RemediationResult, ddim_sample, remediate

__all__ = [
    "LOSSES",
    "ImageEncoder",
    "RemediationConfig",
    "RemediationResult",
    "alignment_kl",
    "clip_consistency",
    "correct_for_confusion",
    "ddim_sample",
    "load_image_encoder",
    "ot_assign",
    "ot_cross_entropy",
    "remediate",
]
