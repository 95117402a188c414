"""Remediation (issue in progress): the losses of subgroup distribution aligned tuning."""

from .losses import alignment_kl, clip_consistency, ot_assign, ot_cross_entropy

__all__ = ["alignment_kl", "clip_consistency", "ot_assign", "ot_cross_entropy"]
