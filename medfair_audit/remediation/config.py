"""Settings of subgroup distribution aligned tuning (defined in :mod:`medfair_audit.config`)."""

from ..config import ALIGN, ALIGN_TO, GRADIENTS, LORA_ON, LOSSES, RemediationConfig

__all__ = ["ALIGN", "ALIGN_TO", "GRADIENTS", "LORA_ON", "LOSSES", "RemediationConfig"]
