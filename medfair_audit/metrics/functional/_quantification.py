"""Estimating true subgroup shares from an imperfect classifier's outputs (quantification).

With ``M[y, j]`` the classifier's mean output ``j`` on held-out images of true group ``y``
(hard: the confusion rates ``P(pred j | y)``; soft: ``E[p_j | y]``), the expected mean output on
a set of images with true shares ``q`` is ``Mᵀ q`` as long as each group's images look like the
held-out ones (label shift). Solving ``Mᵀ q = observed`` gives adjusted classify-and-count
(ACC, hard) and its probabilistic form (PACC, soft) (Forman 2008; Bella et al. 2010). The
solution is left unconstrained: a component outside ``[0, 1]`` means the data sit beyond what
the classifier's error rates can explain, and callers report such a share as censored (a bound),
never as a point value clipped to 0.

The EM estimate of Saerens et al. (2002) instead re-weights calibrated posteriors until the
implied prior reproduces itself; it is the maximum-likelihood share when the probabilities are
calibrated under the held-out prior ``π``.

Every function here is vectorised over a leading batch axis (bootstrap replicates).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MAX_CONDITION",
    "adjusted_count",
    "condition_number",
    "em_boundary_limit",
    "em_prior_shift",
    "mean_output_matrix",
    "stationary_prior",
]

#: Above this condition number of the confusion matrix, shares are not identifiable in practice:
#: for two groups it means a Youden index ``C[1,1] - C[0,1]`` below about 0.02, which inflates
#: the variance of the corrected share more than 2,500-fold.
MAX_CONDITION = 100.0


def mean_output_matrix(labels: np.ndarray, outputs: np.ndarray, k: int) -> np.ndarray:
    """``M[y] = mean of outputs over held-out images of true group y`` (``(K, K)``).

    Args:
        labels: True groups ``(m,)`` in ``0..K-1``.
        outputs: One-hot predictions (hard confusion rates) or probabilities (soft) ``(m, K)``.
        k: Number of groups. A group without held-out images gets a row of NaN.
    """
    labels = np.asarray(labels)
    outputs = np.asarray(outputs, dtype=np.float64)
    rows = np.full((k, k), np.nan)
    for y in range(k):
        sel = labels == y
        if sel.any():
            rows[y] = outputs[sel].mean(0)
    return rows


def condition_number(matrix: np.ndarray) -> float:
    """2-norm condition number (``inf`` when singular or not finite)."""
    m = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(m).all():
        return float("inf")
    with np.errstate(divide="ignore"):
        return float(np.linalg.cond(m))


def adjusted_count(observed: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Unconstrained solution ``q`` of ``Mᵀ q = observed`` (ACC with hard, PACC with soft ``M``).

    Args:
        observed: Mean classifier output ``(..., K)`` (share of each predicted group, or mean
            probability).
        matrix: ``(..., K, K)`` mean-output matrix (rows: true groups); broadcast against
            ``observed``.

    Returns:
        ``(..., K)``; sums to the sum of ``observed`` when ``M``'s rows sum to 1. Entries may lie
        outside ``[0, 1]``; NaN where ``M`` is singular.
    """
    obs = np.asarray(observed, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    mt = np.swapaxes(m, -1, -2)
    shape = np.broadcast_shapes(obs.shape[:-1], mt.shape[:-2])
    k = obs.shape[-1]
    mt = np.broadcast_to(mt, (*shape, k, k)).reshape(-1, k, k)
    ob = np.broadcast_to(obs, (*shape, k)).reshape(-1, k)
    out = np.full(ob.shape, np.nan)
    finite = np.isfinite(mt).all((1, 2)) & np.isfinite(ob).all(1)
    det = np.zeros(len(mt))
    det[finite] = np.linalg.det(mt[finite])
    scale = np.abs(mt).max((1, 2), initial=0.0) ** k
    ok = finite & (np.abs(det) > 1e-12 * np.maximum(scale, 1e-300))
    if ok.any():
        out[ok] = np.linalg.solve(mt[ok], ob[ok][..., None])[..., 0]
    return out.reshape(*shape, k)


def stationary_prior(matrix: np.ndarray) -> np.ndarray:
    """The prior under which probabilities with soft confusion matrix ``S`` are calibrated.

    If posteriors are calibrated under prior ``π``, re-weighting held-out images of group ``y`` by
    ``π_y / (held-out share of y)`` makes the mean probability equal ``π``, which gives
    ``π = Sᵀ π``: ``π`` is the stationary distribution of the row-stochastic ``S``. (Training
    with balanced class weights, for example, makes it differ from the held-out shares.)

    Args:
        matrix: ``(..., K, K)`` soft confusion matrices ``S[y] = E[p | y]``.

    Returns:
        ``(..., K)`` priors.
    """
    s = np.asarray(matrix, dtype=np.float64)
    k = s.shape[-1]
    # Solve (Sᵀ − I) π = 0 with Σπ = 1: replace one equation by the normalisation.
    a = np.swapaxes(s, -1, -2) - np.eye(k)
    a[..., -1, :] = 1.0
    b = np.zeros(s.shape[:-1])
    b[..., -1] = 1.0
    try:
        pi = np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:  # several stationary priors (e.g. a perfect classifier, S = I)
        pi = (np.linalg.pinv(a) @ b[..., None])[..., 0]  # the least-norm one; EM ignores it then
    return np.clip(pi, 1e-12, 1.0)


def _em_two_groups(
    ratio: np.ndarray, weights: np.ndarray, start: float = 0.5, iters: int = 60
) -> np.ndarray:
    # Maximum likelihood of the mixture weight q of group 1: L(q) = Σ wᵢ log(r₀ᵢ + q dᵢ) is
    # concave, so its score decreases in q. Newton steps kept inside a shrinking bracket (a
    # bisection step when Newton would leave it) find the root, or the boundary where the score
    # keeps one sign. ratio: (B or 1, N, 2) likelihood ratios p / π.
    d = ratio[..., 1] - ratio[..., 0]
    r0 = ratio[..., 0]

    def derivatives(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = d / np.maximum(r0 + q[:, None] * d, 1e-12)
        return (weights * t).sum(1), -(weights * t * t).sum(1)

    b = len(weights)
    lo, hi = np.zeros(b), np.ones(b)
    at_zero, at_one = derivatives(lo)[0] <= 0, derivatives(hi)[0] >= 0
    active = ~(at_zero | at_one)
    q = np.full(b, start)
    for _ in range(iters if active.any() else 0):
        g, h = derivatives(q)
        lo = np.where(g > 0, q, lo)
        hi = np.where(g > 0, hi, q)
        step = q - g / np.minimum(h, -1e-300)
        inside = (step >= lo) & (step <= hi)
        new = np.where(inside, step, 0.5 * (lo + hi))
        if np.abs(new - q)[active].max() < 1e-12:
            q = new
            break
        q = new
    q1 = np.where(at_zero, 0.0, np.where(at_one, 1.0, q))
    return np.stack([1 - q1, q1], 1)


def em_prior_shift(
    probs: np.ndarray,
    prior: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    iters: int = 500,
    tol: float = 1e-10,
) -> np.ndarray:
    """Saerens-Latinne-Decaestecker EM estimate of the shares behind calibrated posteriors.

    Args:
        probs: Posteriors ``(N, K)``, calibrated under the prior ``prior``.
        prior: ``(K,)`` or ``(B, K)`` the prior the posteriors are calibrated under (see
            :func:`stationary_prior`).
        weights: ``(B, N)`` non-negative image weights (bootstrap counts); ``None`` = one
            unweighted estimate.
        iters: Most EM iterations (groups > 2; two groups use exact bisection).
        tol: Stop when no share moves more than this.

    Returns:
        ``(K,)`` (``weights is None``) or ``(B, K)`` maximum-likelihood shares, on the simplex.
    """
    p = np.asarray(probs, dtype=np.float64)
    pi = np.asarray(prior, dtype=np.float64)
    single = weights is None
    w = np.ones((1, len(p))) if single else np.asarray(weights, dtype=np.float64)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
    pi = np.broadcast_to(pi, (len(w), p.shape[1])) if pi.ndim == 2 else pi[None]
    ratio = p[None] / np.maximum(pi[:, None, :], 1e-300)
    if p.shape[1] == 2:
        # Replicates start from the pooled estimate, near which Newton converges in a few steps.
        start = 0.5 if single else float(em_prior_shift(p, pi.mean(0))[1])
        q = _em_two_groups(ratio, w, start=min(max(start, 1e-6), 1 - 1e-6))
    else:
        # Replicates start near the pooled estimate (warm start), a tenth of the way back to
        # the prior so that no share starts at the boundary, where EM's updates barely move.
        start = (
            pi if single else 0.9 * em_prior_shift(p, pi.mean(0), iters=iters, tol=tol) + 0.1 * pi
        )
        q = _squarem(ratio, w, np.broadcast_to(start, (len(w), p.shape[1])).copy(), iters, tol)
    return q[0] if single else q


def _em_step(ratio: np.ndarray, w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """One EM update of every replicate: the weighted mean of the re-weighted posteriors."""
    return q * _em_gradient(ratio, w, q)


def _em_gradient(ratio: np.ndarray, w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The log-likelihood's gradient in the shares, ``Σ_n w_n ratio_nk / (ratio_n · q)``.

    At the maximum it is 1 for every share above 0 and at most 1 for a share at 0 (the KKT
    conditions on the simplex); EM multiplies each share by it.
    """
    denom = np.maximum(np.einsum("bnk,bk->bn", ratio, q), 1e-300)
    return np.einsum("bn,bnk->bk", w / denom, np.broadcast_to(ratio, (len(q), *ratio.shape[1:])))


def _loglik(ratio: np.ndarray, w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Each replicate's weighted log-likelihood of the shares (up to a constant)."""
    return np.einsum("bn,bn->b", w, np.log(np.maximum(np.einsum("bnk,bk->bn", ratio, q), 1e-300)))


def _squarem(ratio: np.ndarray, w: np.ndarray, q: np.ndarray, iters: int, tol: float) -> np.ndarray:
    """EM's fixed point, accelerated by SQUAREM (Varadhan & Roland 2008, scheme S3).

    Near the boundary of the simplex plain EM converges sublinearly (hundreds of iterations);
    each SQUAREM cycle takes two EM steps, extrapolates along them (step length clamped to
    [-10⁴, -1]; -1 is the plain EM step) and takes one stabilising EM step, kept only where the
    likelihood is at least the plain double step's, so the likelihood never falls. A jump
    outside the simplex is replaced by the double step (never projected onto the boundary,
    where EM could not leave it again). The likelihood is concave in the shares, so the
    fixed point is the same maximum; replicates stop one by one when no share moves more than
    ``tol`` in a plain EM step and the gradient shows no share near 0 that should grow.
    """
    active = np.arange(len(q))
    for _ in range(iters):
        qa, ra, wa = q[active], ratio if ratio.shape[0] == 1 else ratio[active], w[active]
        grad = _em_gradient(ra, wa, qa)
        q1 = qa * grad
        # converged: no share moves, and none held near 0 would raise the likelihood
        done = (np.abs(q1 - qa).max(1) < tol) & (grad.max(1) < 1 + 1e-6)
        q2 = _em_step(ra, wa, q1)
        r, v = q1 - qa, q2 - 2 * q1 + qa
        rn, vn = np.linalg.norm(r, axis=1), np.linalg.norm(v, axis=1)
        alpha = np.clip(-rn / np.maximum(vn, 1e-300), -1e4, -1.0)[:, None]
        jump = qa - 2 * alpha * r + alpha**2 * v
        # An extrapolation that leaves the simplex is not projected back: EM's multiplicative
        # update keeps a share at exactly 0 forever, so a clipped share would be stuck there.
        outside = (jump <= 0).any(1) | ~np.isfinite(jump).all(1)
        jump[outside] = q2[outside]
        new = _em_step(ra, wa, jump)
        # the safeguard that keeps the likelihood rising: fall back to the plain EM step
        worse = _loglik(ra, wa, new) < _loglik(ra, wa, q2)
        new[worse] = q2[worse]
        q[active] = np.where(done[:, None], q1, new)
        active = active[~done]
        if not len(active):
            break
    return q


def em_boundary_limit(probs: np.ndarray, prior: np.ndarray, confidence: float) -> float:
    """One-sided limit of a two-group EM share whose maximum likelihood sits on 0 or 1.

    On the boundary every bootstrap replicate tends to sit there too, which would give a
    zero-width interval. Instead the likelihood-ratio test is inverted: the limit is where the
    log-likelihood of group 1's share falls by ``χ²₁(1 - 2α) / 2`` below its maximum, with ``α =
    (1 - confidence) / 2`` (the statistic is a 50:50 mixture of 0 and χ²₁ at the boundary).

    Returns:
        The lower limit of group 1's share when the MLE is 1, the upper limit when it is 0.
    """
    from scipy import stats

    ratio = np.asarray(probs, np.float64) / np.maximum(np.asarray(prior, np.float64), 1e-300)
    d, r0 = ratio[:, 1] - ratio[:, 0], ratio[:, 0]

    def loglik(q: float) -> float:
        return float(np.log(np.maximum(r0 + q * d, 1e-300)).sum())

    q_hat = float(em_prior_shift(probs, prior)[1])
    drop = stats.chi2.ppf(confidence, 1) / 2  # 1 - 2α = confidence
    top = loglik(q_hat)
    lo, hi = (0.0, q_hat) if q_hat >= 0.5 else (q_hat, 1.0)
    for _ in range(60):  # bisection: the log-likelihood is concave, monotone on each side
        mid = 0.5 * (lo + hi)
        inside = top - loglik(mid) <= drop
        if q_hat >= 0.5:
            lo, hi = (lo, mid) if inside else (mid, hi)
        else:
            lo, hi = (mid, hi) if inside else (lo, mid)
    return 0.5 * (lo + hi)
