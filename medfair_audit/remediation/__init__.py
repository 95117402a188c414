"""Remediation: subgroup distribution aligned tuning (Han et al. 2024; Shen et al. 2023).

Settings are :class:`~medfair_audit.config.RemediationConfig` (how to tune) and
:class:`~medfair_audit.config.RemediationJob` (what to tune, where to write). Modules by concern:
:mod:`.sampling` (the DDIM chain with gradients: last-K or adjusted DFT), :mod:`.wiring`
(loading, adapters, the frozen original, merging), :mod:`.losses` (alignment KL, expected-OT
cross-entropy, semantics preservation), :mod:`.encoders` (CLIP and DINOv2 image encoders),
:mod:`.step` (one optimiser step), :mod:`.evaluate` (quick audits), :mod:`.state` (checkpoints),
:mod:`.output` (the pipeline folder) and :mod:`.loop` (:func:`remediate`).
"""

from ..config import ALIGN_TO, LORA_ON, LOSSES, RemediationConfig, RemediationJob
from .encoders import ImageEncoder, parse_encoder_spec
from .loop import RemediationResult, remediate
from .losses import alignment_kl, consistency, ot_cross_entropy, ot_targets
from .sampling import GRADIENTS, adjusted_coefficients, ddim_sample

__all__ = [
    "ALIGN_TO",
    "GRADIENTS",
    "LORA_ON",
    "LOSSES",
    "ImageEncoder",
    "RemediationConfig",
    "RemediationJob",
    "RemediationResult",
    "adjusted_coefficients",
    "alignment_kl",
    "consistency",
    "ddim_sample",
    "ot_cross_entropy",
    "ot_targets",
    "parse_encoder_spec",
    "remediate",
]
