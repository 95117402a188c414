"""Losses of subgroup distribution aligned tuning (Han et al. 2024; Shen et al. 2023).

* :func:`alignment_kl`: the paper's loss. For images generated from one prompt, ``p̄`` is the
  mean of the classifier's (calibrated) probabilities and ``L = KL(target ‖ p̄)``.
* :func:`ot_assign` + :func:`ot_cross_entropy`: Shen et al.'s alternative. Each image gets a
  target group so that the batch matches the target proportions, by optimal transport with cost
  ``-log p`` (for two groups this is a sort), and the loss is cross-entropy to those groups.
* :func:`clip_consistency`: the knowledge-distillation term that keeps image quality,
  ``1 - cos(E(x_tuned), E(x_original))`` averaged over the batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "alignment_kl",
    "clip_consistency",
    "correct_for_confusion",
    "ot_assign",
    "ot_cross_entropy",
    "target_counts",
]


def alignment_kl(
    probs: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-8,
    *,
    confusion_rates: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(target ‖ mean(probs))`` in nats; groups with zero target weight contribute 0.

    Args:
        probs: ``(B, K)`` probabilities of a batch (differentiable).
        target: ``(K,)`` target proportions.
        eps: Floor on the batch mean inside the logarithm.
        confusion_rates: ``C[i, j] = P(classifier says j | truly i)``. If given, the target is
            compared with the batch as the classifier would see a batch with the target's true
            shares, ``target @ C``: the minimum is where the confusion-corrected shares
            (:func:`correct_for_confusion`) equal the target, and unlike correcting the batch
            mean (which leaves the simplex and must be clipped) the loss stays smooth.
    """
    p_bar = probs.mean(dim=0).clamp_min(eps)
    if confusion_rates is not None:
        target = target.to(probs) @ confusion_rates.to(probs)
    t = target.to(probs)
    terms = torch.where(
        t > 0, t * (torch.log(t.clamp_min(eps)) - torch.log(p_bar)), torch.zeros_like(t)
    )
    return terms.sum()


def correct_for_confusion(
    mean_probs: torch.Tensor, confusion_rates: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Differentiable confusion-matrix correction of a batch's mean probabilities.

    With ``C[i, j] = P(classifier says j | truly i)`` from held-out real images, a batch whose
    true group shares are ``π`` shows the classifier's shares ``π C``; this returns
    ``π = p̄ C⁻¹``, floored at ``eps`` and renormalised (the audit's corrected reading, applied
    to the mean probability so that gradients flow).
    """
    c = confusion_rates.to(mean_probs)
    pi = torch.linalg.solve(c.T, mean_probs)  # solves Cᵀ π = p̄
    pi = pi.clamp_min(eps)
    return pi / pi.sum()


def target_counts(target: np.ndarray, batch: int) -> np.ndarray:
    """Integer group counts for a batch that match ``target`` best (largest remainders)."""
    target = np.asarray(target, dtype=np.float64)
    raw = target * batch
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: batch - counts.sum()]:
        counts[i] += 1
    return counts


def ot_assign(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Assign each image a group so the batch has the target's counts, at least total cost.

    The cost of giving image ``i`` group ``g`` is ``-log p_i[g]``; the assignment is an exact
    optimal transport between the images and the target counts (``linear_sum_assignment`` on
    the cost matrix with each group repeated by its count). For two groups this is the same as
    sorting images by ``p_i[1]`` and giving the top ``count[1]`` group 1.

    Returns:
        ``(B,)`` long tensor of assigned group indices (no gradient).
    """
    from scipy.optimize import linear_sum_assignment

    p = probs.detach().double().clamp_min(1e-12).cpu().numpy()
    counts = target_counts(target.detach().cpu().numpy(), len(p))
    columns = np.repeat(np.arange(p.shape[1]), counts)
    cost = -np.log(p)[:, columns]
    rows, cols = linear_sum_assignment(cost)
    assigned = np.empty(len(p), dtype=np.int64)
    assigned[rows] = columns[cols]
    return torch.from_numpy(assigned)


def ot_cross_entropy(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    max_uncertainty: float = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Cross-entropy of ``probs`` to the groups :func:`ot_assign` gives them.

    Images whose binomial uncertainty ``1 - max_g p[g]`` (the probability that the classifier's
    own label is wrong) exceeds ``max_uncertainty`` are left out: their group is not known well
    enough to push them anywhere. The loss is averaged over the images kept (0 with no gradient
    signal when none is kept).
    """
    assigned = ot_assign(probs, target).to(probs.device)
    nll = F.nll_loss(torch.log(probs.clamp_min(eps)), assigned, reduction="none")
    keep = (1 - probs.detach().max(dim=-1).values) <= max_uncertainty
    return (nll * keep).sum() / keep.sum().clamp_min(1)


def clip_consistency(tuned: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos(tuned_i, original_i))`` between image embeddings ``(B, D)``."""
    return (1.0 - F.cosine_similarity(tuned, original.detach(), dim=-1)).mean()
