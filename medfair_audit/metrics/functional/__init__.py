"""Pure metric functions: proportions, divergences, error correction, image-quality distances.

Every function takes plain arrays and returns numbers; accumulation over many images lives in
:mod:`medfair_audit.metrics.accumulators` and the result frame in
:mod:`medfair_audit.metrics.frame`.
"""

from ._calibration import expected_calibration_error
from ._divergence import (
    DEFAULT_SMOOTHING,
    jensen_shannon,
    kl_divergence,
    l2_fairness_discrepancy,
    proportion_gaps,
    total_variation,
)
from ._fid import fid_from_moments, sqrtm_psd_product_trace
from ._fidelity import CMMD_SCALE, CMMD_SIGMA, cmmd, pairwise_distances, prdc, vendi_score
from ._kid import kernel_inception_distance, mmd2_unbiased
from ._proportions import (
    corrected_proportions,
    wilson_interval,
)
from ._quantification import (
    MAX_CONDITION,
    adjusted_count,
    condition_number,
    em_boundary_limit,
    em_prior_shift,
    mean_output_matrix,
    stationary_prior,
)

__all__ = [
    "CMMD_SCALE",
    "CMMD_SIGMA",
    "DEFAULT_SMOOTHING",
    "MAX_CONDITION",
    "adjusted_count",
    "cmmd",
    "condition_number",
    "corrected_proportions",
    "em_boundary_limit",
    "em_prior_shift",
    "expected_calibration_error",
    "fid_from_moments",
    "jensen_shannon",
    "kernel_inception_distance",
    "kl_divergence",
    "l2_fairness_discrepancy",
    "mean_output_matrix",
    "mmd2_unbiased",
    "pairwise_distances",
    "prdc",
    "proportion_gaps",
    "sqrtm_psd_product_trace",
    "stationary_prior",
    "total_variation",
    "vendi_score",
    "wilson_interval",
]
