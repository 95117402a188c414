"""Fidelity and diversity beyond FID: precision/recall/density/coverage, CMMD, Vendi score.

* **PRDC** (Kynkäänniemi et al. 2019; Naeem et al. 2020): each real image's k-NN radius among
  the real images defines a ball; *precision* is the share of generated images inside some real
  ball, *density* the mean number of real balls holding a generated image (over k), *recall* the
  share of real images inside some generated ball (the generated images' own k-NN radii),
  *coverage* the share of real balls holding at least one generated image. Low recall and
  coverage with fine precision is the signature of a generator drawing a few prototypes.
  Euclidean distances, ties broken as in the ``prdc`` package (strict ``<``).
* **CMMD** (Jayasumana et al. 2024): MMD² with a Gaussian kernel, σ = 10, between unit-norm
  image embeddings (CLIP in the paper), times 1000. Here the unbiased estimator (the diagonal
  terms left out), so two sets from one distribution score 0 in expectation at any n.
* **Vendi score** (Friedman & Dieng 2023): the exponential of the Shannon entropy of the
  eigenvalues of ``K / n`` with the cosine-similarity kernel, the effective number of distinct
  images; 1 when every image is the same, ``n`` when all are orthogonal.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CMMD_SCALE", "CMMD_SIGMA", "cmmd", "pairwise_distances", "prdc", "vendi_score"]

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


def pairwise_distances(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances ``(len(x), len(y))`` in float64 (exactly 0 on the diagonal of x, x)."""
    x = np.asarray(x, dtype=np.float64)
    same = y is None
    y = x if y is None else np.asarray(y, dtype=np.float64)
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    d = np.sqrt(np.maximum(d2, 0.0))
    if same:
        np.fill_diagonal(d, 0.0)
    return d


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's distance to its k-th nearest other row."""
    d = pairwise_distances(x)
    return np.partition(d, k, axis=1)[:, k]


def prdc(real: np.ndarray, fake: np.ndarray, *, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` features.

    Args:
        real: Real features ``(N, D)``, N > k.
        fake: Generated features ``(M, D)``, M > k.
        k: The neighbour that sets each ball's radius.

    Returns:
        ``{"precision", "recall", "density", "coverage"}``; precision, recall and coverage lie
        in [0, 1], density in [0, N / k].
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected (N, d) and (M, d) features, got {real.shape} and {fake.shape}")
    if k < 1 or len(real) <= k or len(fake) <= k:
        raise ValueError(f"PRDC with k = {k} needs more than k images on each side")
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = pairwise_distances(real, fake)  # (N, M)
    inside_real = d < r_real[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d < r_fake[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) < r_real).mean()),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def cmmd(
    x: np.ndarray,
    y: np.ndarray,
    *,
    sigma: float = CMMD_SIGMA,
    scale: float = CMMD_SCALE,
    normalize: bool = True,
) -> float:
    """Unbiased CMMD between embeddings ``x`` (m, d) and ``y`` (n, d).

    ``scale · [mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) - 2 mean k(x_i, y_j)]`` with
    ``k(a, b) = exp(-|a - b|² / (2σ²))``, after scaling each embedding to unit norm when
    ``normalize`` (as the CMMD reference does with CLIP embeddings).
    """
    x, y = (_unit(x), _unit(y)) if normalize else (np.asarray(x, float), np.asarray(y, float))
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("CMMD needs at least 2 embeddings on each side")
    gamma = 1.0 / (2.0 * sigma**2)
    kxx = np.exp(-gamma * pairwise_distances(x) ** 2)
    kyy = np.exp(-gamma * pairwise_distances(y) ** 2)
    kxy = np.exp(-gamma * pairwise_distances(x, y) ** 2)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(scale * (sxx + syy - 2.0 * kxy.mean()))


def vendi_score(x: np.ndarray) -> float:
    """Vendi score of features ``x`` (n, d) with the cosine-similarity kernel (``score_X``).

    A row of zero norm (no direction) adds nothing to the kernel; the eigenvalues are then
    rescaled to sum to 1 (all rows zero: 1).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 1:
        raise ValueError(f"expected (n, d) features with n ≥ 1, got {x.shape}")
    u = _unit(x)
    w = np.linalg.eigvalsh(u @ u.T / len(u))
    w = w[w > 0]
    if not len(w):  # every row zero: nothing distinguishes them
        return 1.0
    w = w / w.sum()  # the eigenvalues sum to 1 up to rounding
    return float(np.exp(-(w * np.log(w)).sum()))
