"""Image quality per subgroup: FID and KID at equal sample sizes.

FID is biased upward at small n (with identical distributions and 128-d features it is about 117
at n = 31 and 40 at n = 130), so a FID is only comparable with another at the same n on both
sides. For each group (and overall) the audit reports FID and KID on a fixed ladder of sizes
(:data:`LADDER`, plus the within-audit equal n), each the mean ± sd over ``draws`` subsamples
drawn without replacement from *both* the generated and the reference features. Two audits are
then compared at the largest n both have. The full-n FID is kept, with its n, for reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..metrics.accumulators import FeatureMoments
from ..metrics.functional import fid_from_moments, mmd2_unbiased

__all__ = ["LADDER", "common_n", "quality_by_group"]

LADDER = (8, 16, 32, 64, 128, 256, 512, 1000, 2000)
#: KID's kernel matrices grow as n²: above this n only FID is subsampled.
KID_MAX_N = 1000


def _at_n(gen: np.ndarray, ref: np.ndarray, n: int, draws: int, rng: np.random.Generator) -> dict:
    fids, kids = [], []
    for _ in range(draws):
        a = gen[rng.choice(len(gen), n, replace=False)]
        b = ref[rng.choice(len(ref), n, replace=False)]
        ma, mb = FeatureMoments(gen.shape[1]).update(a), FeatureMoments(gen.shape[1]).update(b)
        fids.append(fid_from_moments(ma.mean, ma.cov, mb.mean, mb.cov))
        if n <= KID_MAX_N:
            kids.append(mmd2_unbiased(a, b))
    out: dict[str, Any] = {
        "fid": {"mean": float(np.mean(fids)), "sd": float(np.std(fids, ddof=1))},
        "kid": {"mean": float(np.mean(kids)), "sd": float(np.std(kids, ddof=1))} if kids else None,
        "draws": draws,
        "generated_subsampled": n < len(gen),
    }
    return out


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
) -> tuple[dict[str, Any], list[str]]:
    """FID/KID per predicted group and overall, at full n and on the equal-n ladder.

    Args:
        moments: Streamed feature moments of the generated images per group (full n).
        samples: Up to a cap of generated feature vectors per group (plan order).
        ref_feats: Reference features ``(R, D)``.
        ref_labels: Reference group index per row.
        groups: Group names.
        draws: Subsamples per size.
        seed: Seed of the subsamples.
        min_group_n: Below this many generated images a group's full-n FID carries a warning.

    Returns:
        ``(quality, warnings)``; ``quality`` has ``by_group`` (group or ``overall`` → entry),
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
        ng, nr = gen.n, int(r_sel.sum())
        entry: dict[str, Any] = {"n_generated": ng, "n_reference": nr, "fid": None, "at_n": {}}
        if ng < 2 or nr < 2:
            side = "generated" if ng < 2 else "reference"
            entry["reason"] = f"fewer than 2 {side} images in this group: FID and KID undefined"
            by_group[name] = entry
            continue
        ref = FeatureMoments(dim).update(ref_feats[r_sel])
        entry["fid"] = fid_from_moments(gen.mean, gen.cov, ref.mean, ref.cov)
        limit = min(len(sample), nr)
        ladder = sorted(
            {n for n in LADDER if n <= limit} | ({n_eq} if 2 <= n_eq <= limit else set())
        )
        for n in ladder:
            entry["at_n"][str(n)] = _at_n(sample, ref_feats[r_sel], n, draws, rng)
        if name != "overall" and ng < min_group_n:
            msg = (
                f"group '{name}' has {ng} generated images (< {min_group_n}): its full-n FID is "
                "biased upward; compare FID and KID at equal n"
            )
            entry["warning"] = msg
            warnings.append(msg)
        by_group[name] = entry
    quality = {
        "by_group": by_group,
        "equal_n": n_eq,
        "draws": draws,
        "ladder": list(LADDER),
        "method": "mean ± sd over draws of subsamples of n generated and n reference images "
        "(without replacement); FID in float64 with an eigh-based square root; unbiased KID, "
        "cubic kernel",
    }
    return quality, warnings


def common_n(entries: Sequence[dict[str, Any] | None]) -> str | None:
    """The largest subsample size present in every entry's ``at_n`` (``None`` if none)."""
    keys = None
    for e in entries:
        have = set((e or {}).get("at_n", {}))
        keys = have if keys is None else keys & have
    return max(keys, key=int) if keys else None
