"""Fréchet distance between Gaussians fitted to features (FID), in float64.

``FID = ‖μ₁ - μ₂‖² + tr Σ₁ + tr Σ₂ - 2 tr √(Σ₁ Σ₂)``. The trace of the matrix square root is
computed without ``scipy.linalg.sqrtm`` (which has returned wrong or complex results on
near-singular covariances: scipy#19415, pytorch-fid#103): with ``S = √Σ₁`` from a symmetric
eigendecomposition, ``√(Σ₁Σ₂)`` is similar to ``√(S Σ₂ S)``, a symmetric PSD matrix whose
eigenvalues are real and non-negative, so ``tr √(Σ₁Σ₂) = Σ √λᵢ(S Σ₂ S)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fid_from_moments", "sqrtm_psd_product_trace"]


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def sqrtm_psd_product_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr √(Σ₁ Σ₂)`` for symmetric positive semi-definite ``Σ₁, Σ₂`` (float64, eigh only)."""
    s = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    m = s @ np.asarray(sigma2, dtype=np.float64) @ s
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def fid_from_moments(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2)
    value -= 2.0 * sqrtm_psd_product_trace(sigma1, sigma2)
    return float(max(value, 0.0))
