"""Quick audits during remediation: the guiding classifier(s) on held-out seeds of the prompts.

They read the training prompts, or the job's own ``audit_prompts`` (selection prompts). These
numbers steer the run (``--until-kl``), choose the saved weights (``--keep best``) and draw its
curve; they are not the evaluation of
the result, which belongs to ``medfair audit`` with an independent classifier on held-out
prompts. They judge the weights that will be saved (the EMA when there is one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import RemediationConfig
from ..device import initial_latents
from ..generation.seeds import image_seed
from ..metrics.functional import adjusted_count, kl_divergence
from .sampling import ddim_sample, decode
from .wiring import Models

__all__ = ["quick_audit", "reading_interval"]


@torch.no_grad()
def quick_audit(m: Models, cfg: RemediationConfig) -> dict[str, Any]:
    """Classify ``audit_images`` images per audit prompt (see :func:`_quick_audit`)."""
    with m.audit_prompts():
        return _quick_audit(m, cfg)


def _quick_audit(m: Models, cfg: RemediationConfig) -> dict[str, Any]:
    """Classify ``audit_images`` images per prompt drawn from the held-out ``audit_seed``.

    Returns:
        Share per group (labels) overall and per prompt, mean probabilities, ``kl_raw`` =
        KL(target ‖ label share) and, with a soft confusion matrix (``align_to="corrected"``),
        the PACC share (clipped to the simplex; ``pacc_clipped`` says if it was) and its KL.
        ``kl`` is the KL of the reading being aligned (what ``until_kl`` compares and
        ``keep="best"`` minimises). ``ci`` is the reading's 95% interval per group
        (:func:`reading_interval`; null with fewer than two images a prompt) and ``within`` says
        whether the target lies inside it for every group (what ``keep="first-within"`` stops
        on). With an ensemble, every guide reads the same images: ``ensemble`` holds each
        other guide's reading, ``within`` needs every guide's, ``kl_guide`` is the first
        guide's KL, and ``kl`` the mean of the guides' KLs, as the alignment loss is the mean
        of theirs.
    """
    groups = list(m.classifier.groups)
    sched = m.scheduler(cfg.audit_steps)
    readers = 1 + len(m.ensemble)
    counts = np.zeros((readers, m.n_prompts, len(groups)), dtype=np.int64)
    # per prompt: sum of probabilities and of their outer products (the reading's variance)
    psum = np.zeros((readers, m.n_prompts, len(groups)))
    pouter = np.zeros((readers, m.n_prompts, len(groups), len(groups)))
    for p in range(m.n_prompts):
        for start in range(0, cfg.audit_images, 32):
            n = min(32, cfg.audit_images - start)
            seeds = [image_seed(cfg.audit_seed, p, start + i) for i in range(n)]
            noise = initial_latents(seeds, m.latent_shape, device=m.device)
            latents = ddim_sample(
                m.unet, sched, noise * sched.init_noise_sigma, m.states(p, n), guidance=cfg.guidance
            )
            images = decode(m.pipe.vae, latents)
            each = [m.probs(images)] + [member.member_probs(images)[0] for member, _ in m.ensemble]
            for r, probs in enumerate(each):
                probs = probs.cpu().double().numpy()
                psum[r, p] += probs.sum(0)
                pouter[r, p] += probs.T @ probs
                counts[r, p] += np.bincount(probs.argmax(1), minlength=len(groups))
    softs = [m.soft_confusion] + [soft for _, soft in m.ensemble]
    tvec = m.target.double().cpu().numpy()  # in the classifier's group order
    out, *others = [
        _reading(counts[r], psum[r], pouter[r], softs[r], groups, tvec) for r in range(readers)
    ]
    out["within"] = all(o["within"] for o in [out, *others])
    if others:
        keys = ("share", "share_corrected", "pacc_clipped", "kl", "ci", "within")
        out["ensemble"] = [{k: o[k] for k in keys if k in o} for o in others]
        out["kl_guide"] = out["kl"]
        out["kl"] = float(np.mean([out["kl"]] + [o["kl"] for o in others]))
    return out


def reading_interval(
    sums: np.ndarray,
    outer: np.ndarray,
    n: np.ndarray,
    matrix: np.ndarray | None = None,
    *,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share per group and its normal interval from per-prompt sums of per-image vectors.

    Each image gives a vector ``v`` (its probabilities, or its one-hot label); per prompt
    ``sums`` holds ``Σ v``, ``outer`` ``Σ v vᵀ`` and ``n`` the images. The pooled mean ``v̄`` has
    the covariance ``Σ_p (n_p / n)² C_p / n_p`` (``C_p`` the prompt's plug-in covariance, as
    Wald's interval for a proportion takes; the prompts are fixed, their images random), and
    the share is ``q = M⁻ᵀ v̄`` with covariance ``M⁻ᵀ Cov(v̄) M⁻¹`` (``M`` the soft confusion
    matrix, identity when ``None``). The interval is conditional on ``M``: it answers whether
    the images of *these* prompts tell the model from a share, which is what a quick audit
    decides; the matrix's own error is shared by every quick audit of a run.

    Args:
        sums: ``(P, K)``.
        outer: ``(P, K, K)``.
        n: ``(P,)`` images per prompt.
        matrix: ``(K, K)``, rows the true groups.
        level: Two-sided coverage.

    Returns:
        ``q`` (unclipped), lower and upper bounds clipped to ``[0, 1]``, each ``(K,)``.
    """
    from scipy.stats import norm

    n = np.asarray(n, dtype=np.float64)
    total = n.sum()
    mean_p = sums / n[:, None]
    cov_p = outer / n[:, None, None] - mean_p[:, :, None] * mean_p[:, None, :]
    cov = ((n / total) ** 2 / n)[:, None, None] * cov_p
    cov = cov.sum(0)
    vbar = sums.sum(0) / total
    inv_t = np.eye(len(vbar)) if matrix is None else np.linalg.inv(np.asarray(matrix).T)
    q = inv_t @ vbar
    se = np.sqrt(np.clip(np.diag(inv_t @ cov @ inv_t.T), 0, None))
    z = float(norm.ppf(0.5 + level / 2))
    return q, np.clip(q - z * se, 0, 1), np.clip(q + z * se, 0, 1)


def _reading(
    counts: np.ndarray,
    psum: np.ndarray,
    pouter: np.ndarray,
    soft: torch.Tensor | None,
    groups: list[str],
    tvec: np.ndarray,
) -> dict[str, Any]:
    """One classifier's reading of the quick audit's images (see :func:`_quick_audit`).

    ``ci`` is :func:`reading_interval`'s 95% interval of the reading being aligned (the PACC
    share with a soft confusion matrix, else the label share); ``within`` says whether every
    group's target lies inside it.
    """
    total = counts.sum()
    share = counts.sum(0) / total
    mean_probs = psum.sum(0) / total
    out: dict[str, Any] = {
        "n": int(total),
        "share": dict(zip(groups, share.tolist(), strict=True)),
        "mean_probs": dict(zip(groups, mean_probs.tolist(), strict=True)),
        "kl_raw": kl_divergence(tvec, share),
        "by_prompt": [
            dict(zip(groups, (c / c.sum()).tolist(), strict=True)) for c in counts.astype(float)
        ],
    }
    out["kl"] = out["kl_raw"]
    if soft is not None:
        pacc = adjusted_count(mean_probs, soft.double().cpu().numpy())
        clipped = np.clip(pacc, 0, None)
        clipped = clipped / clipped.sum()
        out["share_corrected"] = dict(zip(groups, clipped.tolist(), strict=True))
        out["pacc_clipped"] = bool(np.any(pacc < 0) or np.any(pacc > 1))
        out["kl"] = out["kl_corrected"] = kl_divergence(tvec, clipped)
    n = counts.sum(1)
    out["ci"], out["within"] = None, False
    if (n < 2).any():  # no variance from one image
        return out
    try:
        if soft is not None:
            _, lo, hi = reading_interval(psum, pouter, n, soft.double().cpu().numpy())
        else:  # one-hot labels: Σ v vᵀ is the diagonal of the counts
            c = counts.astype(np.float64)
            _, lo, hi = reading_interval(c, np.stack([np.diag(r) for r in c]), n)
    except np.linalg.LinAlgError:  # a singular matrix identifies no share
        return out
    out["ci"] = {g: [float(a), float(b)] for g, a, b in zip(groups, lo, hi, strict=True)}
    out["within"] = bool(np.all((lo <= tvec) & (tvec <= hi)))
    return out
