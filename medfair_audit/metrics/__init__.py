"""Metrics: pure functions (``functional``), streaming accumulators, estimates and result frames.

Nothing here loads a model: feature extractors live in :mod:`medfair_audit.models.features`.
"""

from .functional import kernel_inception_distance

__all__ = ["kernel_inception_distance"]
