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

__all__ = ["quick_audit"]


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
        ``keep="best"`` minimises). With an ensemble, every guide reads the same images:
        ``ensemble`` holds each other guide's reading, ``kl_guide`` the first guide's KL, and
        ``kl`` is the mean of the guides' KLs, as the alignment loss is the mean of theirs.
    """
    groups = list(m.classifier.groups)
    sched = m.scheduler(cfg.audit_steps)
    readers = 1 + len(m.ensemble)
    counts = np.zeros((readers, m.n_prompts, len(groups)), dtype=np.int64)
    prob_sum = np.zeros((readers, len(groups)))
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
                prob_sum[r] += probs.sum(0)
                counts[r, p] += np.bincount(probs.argmax(1), minlength=len(groups))
    softs = [m.soft_confusion] + [soft for _, soft in m.ensemble]
    tvec = m.target.double().cpu().numpy()  # in the classifier's group order
    out, *others = [
        _reading(counts[r], prob_sum[r], softs[r], groups, tvec) for r in range(readers)
    ]
    if others:
        out["ensemble"] = [
            {k: o[k] for k in ("share", "share_corrected", "pacc_clipped", "kl") if k in o}
            for o in others
        ]
        out["kl_guide"] = out["kl"]
        out["kl"] = float(np.mean([out["kl"]] + [o["kl"] for o in others]))
    return out


def _reading(
    counts: np.ndarray,
    prob_sum: np.ndarray,
    soft: torch.Tensor | None,
    groups: list[str],
    tvec: np.ndarray,
) -> dict[str, Any]:
    """One classifier's reading of the quick audit's images (see :func:`_quick_audit`)."""
    total = counts.sum()
    share = counts.sum(0) / total
    mean_probs = prob_sum / total
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
    return out
