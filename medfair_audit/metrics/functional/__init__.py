"""Pure metric functions: proportions, divergences, error correction, image-quality distances.

Every function takes plain arrays and returns numbers; accumulation over many images lives in
:mod:`medfair_audit.metrics.accumulators` and the result frame in
:mod:`medfair_audit.metrics.frame`.
"""

from ._divergence import (
    DEFAULT_SMOOTHING,
    jensen_shannon,
    kl_divergence,
    l2_fairness_discrepancy,
    proportion_gaps,
    total_variation,
)
from ._fid import fid_from_moments, sqrtm_psd_product_trace
from ._proportions import (
    chi_square_gof,
    corrected_proportions,
    required_sample_size,
    wilson_interval,
)

__all__ = [
    "DEFAULT_SMOOTHING",
    "chi_square_gof",
    "corrected_proportions",
    "fid_from_moments",
    "jensen_shannon",
    "kl_divergence",
    "l2_fairness_discrepancy",
    "proportion_gaps",
    "required_sample_size",
    "sqrtm_psd_product_trace",
    "total_variation",
    "wilson_interval",
]
