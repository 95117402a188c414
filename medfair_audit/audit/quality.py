"""Image quality per subgroup: FID, KID, precision/recall/density/coverage, Vendi, CMMD.

FID is biased upward at small n (with identical distributions and 128-d features it is about 117
at n = 31 and 40 at n = 130), so a FID is only comparable with another at the same n on both
sides. For each group (and overall) the audit reports FID and KID on a fixed ladder of sizes
(:data:`LADDER`, plus the within-audit equal n), each the mean ± sd over ``draws`` subsamples
drawn without replacement from *both* the generated and the reference features. Two audits are
then compared at the largest n both have. The full-n FID is kept, with its n, for reference.

The same subsample draws give precision, recall, density and coverage (Naeem et al. 2020,
k = :data:`PRDC_K` neighbours of the real images) and, when the features are image embeddings
(``clip:``, ``dinov2:``), CMMD. Fidelity alone misses a group drawn from a few prototypes (its
share can look right while its images have no diversity): recall and coverage fall, and so does
the group's Vendi score, reported with a confidence interval from disjoint blocks of
:data:`VENDI_N` images (each block's score is an independent draw of the score at that n, so a
t interval over the blocks covers its mean), for the real images of the group too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..metrics.accumulators import FeatureMoments
from ..metrics.functional import cmmd, fid_from_moments, mmd2_unbiased, prdc, vendi_score

__all__ = [
    "LADDER",
    "PRDC_K",
    "QUALITY_VERSION",
    "VENDI_N",
    "collapse_warnings",
    "quality_by_group",
    "vendi_interval",
]

#: Version of the quality block: 1 had FID and KID; 2 adds PRDC, Vendi and CMMD.
QUALITY_VERSION = 2
PRDC_K = 5
#: Images per block of the Vendi score's interval (the score grows with n: compare equal n).
VENDI_N = 32
#: A group whose coverage falls below this while its Vendi score is under half the real
#: group's is flagged as drawn from few prototypes.
COLLAPSE_COVERAGE = 0.25
COLLAPSE_VENDI_RATIO = 0.5

LADDER = (8, 16, 32, 64, 128, 256, 512, 1000, 2000)
#: KID's kernel matrices grow as n²: above this n only FID is subsampled.
KID_MAX_N = 1000


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))} if values else None


def _at_n(
    gen: np.ndarray,
    ref: np.ndarray,
    n: int,
    draws: int,
    rng: np.random.Generator,
    *,
    embedding: bool = False,
) -> dict:
    fids, kids, cmmds = [], [], []
    pr: dict[str, list[float]] = {"precision": [], "recall": [], "density": [], "coverage": []}
    small = n <= KID_MAX_N
    for _ in range(draws):
        a = gen[rng.choice(len(gen), n, replace=False)]
        b = ref[rng.choice(len(ref), n, replace=False)]
        ma, mb = FeatureMoments(gen.shape[1]).update(a), FeatureMoments(gen.shape[1]).update(b)
        fids.append(fid_from_moments(ma.mean, ma.cov, mb.mean, mb.cov))
        if small:
            kids.append(mmd2_unbiased(a, b))
            if embedding:
                cmmds.append(cmmd(a, b))
            if n > PRDC_K:
                for key, value in prdc(b, a, k=PRDC_K).items():
                    pr[key].append(value)
    out: dict[str, Any] = {
        "fid": _spread(fids),
        "kid": _spread(kids),
        "draws": draws,
        "generated_subsampled": n < len(gen),
    }
    if pr["precision"]:
        out["prdc"] = {key: _spread(v) for key, v in pr.items()}
    if cmmds:
        out["cmmd"] = _spread(cmmds)
    return out


def vendi_interval(
    feats: np.ndarray,
    *,
    n: int = VENDI_N,
    confidence: float = 0.95,
    seed: int = 0,
    center: np.ndarray | None = None,
) -> dict[str, Any]:
    """The Vendi score at ``n`` images with a t interval over disjoint blocks of ``feats``.

    The rows are shuffled (``seed``) and cut into ``B = len(feats) // n`` blocks; each block's
    score is an independent draw of the score of ``n`` images, so ``mean ± t(B-1) · sd / √B``
    covers its expectation. Fewer than 2 blocks: no interval (``reason``). ``center`` is
    subtracted first: the cosine kernel of raw features (non-negative after a ReLU, or all far
    from the origin) sees every image alike; the audit centres a group's generated and real
    features on the real group's mean, so the score counts directions of variation around it.
    """
    from scipy import stats

    feats = feats - center if center is not None else feats
    blocks = len(feats) // n
    out: dict[str, Any] = {"n": n, "blocks": blocks, "value": None, "ci": None}
    if blocks < 2:
        out["reason"] = f"fewer than {2 * n} images: no two disjoint blocks of {n}"
        return out
    order = np.random.default_rng(seed).permutation(len(feats))[: blocks * n]
    scores = np.array([vendi_score(feats[idx]) for idx in order.reshape(blocks, n)])
    half = stats.t.ppf(0.5 + confidence / 2, blocks - 1) * scores.std(ddof=1) / np.sqrt(blocks)
    mean = float(scores.mean())
    out.update(value=mean, ci=[max(1.0, mean - half), min(float(n), mean + half)])
    return out


def _group_entry(
    gen: FeatureMoments,
    sample: np.ndarray,
    ref: np.ndarray,
    n_eq: int,
    draws: int,
    rng: np.random.Generator,
    *,
    embedding: bool,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """One group's (or the overall) entry: full-n FID, the equal-n ladder, the Vendi scores."""
    ng, nr = gen.n, len(ref)
    entry: dict[str, Any] = {"n_generated": ng, "n_reference": nr, "fid": None, "at_n": {}}
    if ng < 2 or nr < 2:
        side = "generated" if ng < 2 else "reference"
        entry["reason"] = f"fewer than 2 {side} images in this group: FID and KID undefined"
        return entry
    moments = FeatureMoments(ref.shape[1]).update(ref)
    entry["fid"] = fid_from_moments(gen.mean, gen.cov, moments.mean, moments.cov)
    limit = min(len(sample), nr)
    ladder = sorted({n for n in LADDER if n <= limit} | ({n_eq} if 2 <= n_eq <= limit else set()))
    for n in ladder:
        entry["at_n"][str(n)] = _at_n(sample, ref, n, draws, rng, embedding=embedding)
    centre = ref.mean(0)
    for key, feats in (("vendi", sample), ("vendi_reference", ref)):
        entry[key] = vendi_interval(feats, confidence=confidence, seed=seed, center=centre)
    return entry


def quality_by_group(
    moments: Sequence[FeatureMoments],
    samples: Sequence[np.ndarray],
    ref_feats: np.ndarray,
    ref_labels: np.ndarray,
    groups: Sequence[str],
    *,
    draws: int = 20,
    seed: int = 0,
    min_group_n: int = 50,
    embedding: bool = False,
    confidence: float = 0.95,
) -> tuple[dict[str, Any], list[str]]:
    """FID/KID/PRDC (CMMD) per predicted group and overall, at full n and on the equal-n ladder.

    Args:
        moments: Streamed feature moments of the generated images per group (full n).
        samples: Up to a cap of generated feature vectors per group (plan order).
        ref_feats: Reference features ``(R, D)``.
        ref_labels: Reference group index per row.
        groups: Group names.
        draws: Subsamples per size.
        seed: Seed of the subsamples.
        min_group_n: Below this many generated images a group's full-n FID carries a warning.
        embedding: The features are unit-normalisable image embeddings (CLIP, DINOv2): CMMD too.
        confidence: Level of the Vendi score's intervals.

    Returns:
        ``(quality, warnings)``; ``quality`` has ``by_group`` (group or ``overall`` → entry:
        ``at_n`` with FID, KID, PRDC and CMMD per size; ``vendi`` and ``vendi_reference``),
        ``equal_n`` (the largest size every group reaches), ``draws`` and ``ladder``.
    """
    rng = np.random.default_rng(seed)
    dim = ref_feats.shape[1]
    total = FeatureMoments(dim)
    for m in moments:
        total.merge(m)
    sizes = [min(len(s), int((ref_labels == i).sum())) for i, s in enumerate(samples)]
    n_eq = min(sizes) if sizes else 0
    entries = [(g, moments[i], samples[i], ref_labels == i) for i, g in enumerate(groups)]
    entries.append(
        ("overall", total, np.concatenate(list(samples)), np.ones(len(ref_labels), bool))
    )
    warnings: list[str] = []
    by_group: dict[str, Any] = {}
    for name, gen, sample, r_sel in entries:
        ng = gen.n
        entry = _group_entry(
            gen, sample, ref_feats[r_sel], n_eq, draws, rng,
            embedding=embedding, confidence=confidence, seed=seed,
        )  # fmt: skip
        if entry["fid"] is None:
            by_group[name] = entry
            continue
        if name != "overall" and ng < min_group_n:
            msg = (
                f"group '{name}' has {ng} generated images (< {min_group_n}): its full-n FID is "
                "biased upward; compare FID and KID at equal n"
            )
            entry["warning"] = msg
            warnings.append(msg)
        by_group[name] = entry
    quality = {
        "version": QUALITY_VERSION,
        "by_group": by_group,
        "equal_n": n_eq,
        "draws": draws,
        "ladder": list(LADDER),
        "prdc_k": PRDC_K,
        "method": "mean ± sd over draws of subsamples of n generated and n reference images "
        "(without replacement); FID in float64 with an eigh-based square root; unbiased KID, "
        f"cubic kernel; precision/recall/density/coverage with k = {PRDC_K} (Naeem et al. "
        "2020)"
        + ("; unbiased CMMD, Gaussian kernel σ = 10 on unit-norm embeddings, ×1000" if embedding
           else "")
        + f"; Vendi score (cosine kernel, features centred on the real group's mean) of disjoint "
        f"blocks of {VENDI_N} images, t interval",
    }  # fmt: skip
    more = collapse_warnings(quality)
    return quality, warnings + more


def collapse_warnings(quality: dict[str, Any]) -> list[str]:
    """Groups whose images look drawn from a few prototypes: low coverage and low diversity.

    At the block size of the Vendi score: coverage (at the equal n) below
    :data:`COLLAPSE_COVERAGE` and a Vendi score under :data:`COLLAPSE_VENDI_RATIO` of the real
    group's. Each flagged entry gets ``collapsed: true``.
    """
    out = []
    n_eq = str(quality.get("equal_n"))
    for name, entry in quality.get("by_group", {}).items():
        cov = ((entry.get("at_n", {}).get(n_eq) or {}).get("prdc") or {}).get("coverage")
        v, v_ref = entry.get("vendi") or {}, entry.get("vendi_reference") or {}
        if name == "overall" or cov is None or None in (v.get("value"), v_ref.get("value")):
            continue
        ratio = v["value"] / v_ref["value"]
        if cov["mean"] < COLLAPSE_COVERAGE and ratio < COLLAPSE_VENDI_RATIO:
            entry["collapsed"] = True
            out.append(
                f"group '{name}' looks drawn from a few prototypes: coverage {cov['mean']:.2f} "
                f"at n = {n_eq} and a Vendi score of {v['value']:.1f} against the real group's "
                f"{v_ref['value']:.1f} (n = {v['n']}): its share can look right while its images "
                "lack the real group's diversity"
            )
    return out
