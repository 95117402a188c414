"""Losses of subgroup distribution aligned tuning (Han et al. 2024; Shen et al. 2023).

* :func:`alignment_kl`: the paper's loss, ``KL(target ‖ p̄)`` with ``p̄`` the batch mean of the
  classifier's probabilities. With a soft confusion matrix ``S[i, j] = E[p_j | truly i]`` (from
  the classifier's held-out images) the target is first mapped to what the classifier's mean
  probability would be on a batch with the target's true shares, ``target · S``: under label
  shift ``E[p̄] = π S``, so the minimum is at ``π = target`` (the PACC reading the audit uses).
* :func:`ot_targets` + :func:`ot_cross_entropy`: Shen et al.'s distributional alignment. Each image
  gets the group the *expected* optimal transport between the batch and i.i.d. draws from the
  target gives it (cost in probability space), with that assignment's confidence; images whose
  assignment is uncertain are left out, and the loss is cross-entropy to the assigned groups.
* :func:`consistency`: the knowledge-distillation term that keeps image quality, a weighted sum
  over image encoders of ``1 − cos(E(x_tuned), E(x_original))``, each image weighted (Shen et
  al. down-weight images whose assigned group differs from the original image's label).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "alignment_kl",
    "consistency",
    "ot_cross_entropy",
    "ot_plan",
    "ot_targets",
]


def alignment_kl(
    probs: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-8,
    *,
    soft_confusion: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(target ‖ mean(probs))`` in nats; groups with zero target weight contribute 0.

    Args:
        probs: ``(B, K)`` probabilities of a batch (differentiable).
        target: ``(K,)`` target proportions.
        eps: Floor on the batch mean inside the logarithm.
        soft_confusion: ``S[i, j] = E[p_j | truly i]`` on held-out real images. If given, the
            batch mean is compared with ``target · S``, the mean probability a batch with the
            target's true shares would give; the loss is then 0 exactly where the PACC-corrected
            shares equal the target, for any classifier whose ``E[p | y]`` the generated images
            share (label shift). Without it the optimum is biased toward the classifier's
            training prior.
    """
    p_bar = probs.mean(dim=0).clamp_min(eps)
    t = target.to(probs)
    if soft_confusion is not None:
        t = t @ soft_confusion.to(probs)
    terms = torch.where(
        t > 0, t * (torch.log(t.clamp_min(eps)) - torch.log(p_bar)), torch.zeros_like(t)
    )
    return terms.sum()


def _two_group_targets(p1: np.ndarray, t1: float) -> np.ndarray:
    """P(image i is assigned group 1) under the expected OT with ``n₁ ~ Binomial(B, t₁)``.

    For two groups the optimal transport with cost ``‖p − e_g‖²`` is a sort: the ``n₁`` images
    with the largest ``p₁`` get group 1, so the image of rank ``r`` (0 = smallest ``p₁``) gets it
    exactly when ``n₁ ≥ B − r``.
    """
    from scipy.stats import binom

    b = len(p1)
    rank = np.empty(b, dtype=np.int64)
    rank[np.argsort(p1, kind="stable")] = np.arange(b)
    return binom.sf(b - rank - 1, b, t1)


def ot_plan(
    probs: torch.Tensor, target: torch.Tensor, *, draws: int = 256, seed: int = 0
) -> np.ndarray:
    """``Q[i, g]``: how often image ``i`` is sent to group ``g`` by the OT to i.i.d. target draws.

    See :func:`ot_targets`; rows sum to 1 and column ``g`` sums to ``B · target[g]`` in
    expectation (exactly for two groups).
    """
    from scipy.optimize import linear_sum_assignment

    p = probs.detach().double().cpu().numpy()
    t = target.detach().double().cpu().numpy()
    b, k = p.shape
    if k == 2:
        q1 = _two_group_targets(p[:, 1], float(t[1]))
        return np.stack([1 - q1, q1], axis=1)
    rng = np.random.default_rng(seed)
    q = np.zeros((b, k))
    # ‖p − e_g‖² = ‖p‖² − 2 p_g + 1: with one label per image the assignment minimising the
    # total is the one minimising Σ −p_g.
    for _ in range(draws):
        labels = rng.choice(k, size=b, p=t / t.sum())
        rows, cols = linear_sum_assignment(-p[:, labels])
        q[rows, labels[cols]] += 1
    return q / draws


def ot_targets(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    draws: int = 256,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups for each image from the expected optimal transport to the target distribution.

    The batch's ``B`` images are matched with ``B`` labels drawn i.i.d. from ``target``, by
    optimal transport with cost ``‖p_i − e_g‖²`` (probability space, as in Shen et al.'s code).
    Averaged over the draws this gives ``Q[i, g]``, the probability that image ``i`` is sent to
    group ``g``; the image's target is ``argmax_g Q[i, g]`` and its confidence ``max_g Q[i, g]``
    (for two groups exactly, through the binomial distribution of the group counts; for more
    groups by ``draws`` Monte Carlo draws seeded with ``seed``). The expected counts match the
    target for every batch size, unlike rounding the target to fixed counts.

    Returns:
        ``(B,)`` long tensor of target groups and ``(B,)`` float tensor of confidences.
    """
    q = ot_plan(probs, target, draws=draws, seed=seed)
    assigned = q.argmax(1)
    confidence = q[np.arange(len(q)), assigned]
    return (
        torch.from_numpy(assigned).to(probs.device),
        torch.from_numpy(confidence).to(probs.device, torch.float32),
    )


def ot_cross_entropy(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    max_uncertainty: float = 0.2,
    draws: int = 256,
    seed: int = 0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``probs`` to the groups :func:`ot_targets` assigns.

    Images whose assignment is uncertain (``1 − confidence > max_uncertainty``: the group it
    would be sent to changes often between draws of the target) are left out. This thresholds
    the *assigned* group's confidence, not the classifier's: an image being pushed across the
    decision boundary keeps its target until it gets there. The loss is averaged over the
    images kept (0, still attached to the graph, when none is kept).

    Returns:
        The loss, the assigned groups ``(B,)`` and the mask of images kept ``(B,)``.
    """
    assigned, confidence = ot_targets(probs, target, draws=draws, seed=seed)
    keep = (1 - confidence) <= max_uncertainty
    nll = F.nll_loss(torch.log(probs.clamp_min(eps)), assigned, reduction="none")
    loss = (nll * keep).sum() / keep.sum().clamp_min(1)
    return loss, assigned, keep


def consistency(
    tuned: Sequence[torch.Tensor],
    original: Sequence[torch.Tensor],
    *,
    encoder_weights: Sequence[float],
    image_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ_e w_e · Σ_i ω_i (1 − cos(t_ei, o_ei)) / Σ_i ω_i`` over encoders ``e``, images ``i``.

    Args:
        tuned: Per encoder, ``(B, D_e)`` embeddings of the tuned model's images.
        original: Per encoder, the frozen original's embeddings of the same noise (detached).
        encoder_weights: ``w_e``, one per encoder.
        image_weights: ``(B,)`` weights ``ω_i`` (default all 1).
    """
    total = tuned[0].new_zeros(())
    for t, o, w in zip(tuned, original, encoder_weights, strict=True):
        d = 1.0 - F.cosine_similarity(t, o.detach(), dim=-1)
        om = torch.ones_like(d) if image_weights is None else image_weights.to(d)
        total = total + w * (d * om).sum() / om.sum().clamp_min(1e-12)
    return total
