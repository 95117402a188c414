"""Several readers of one attribute, and how far generated images sit from real ones.

A corrected share assumes that generated images look to the classifier as its held-out real
images of the same group do (label shift). Two things in an audit say when that fails:

* **readers' disagreement**: other classifiers of the same attribute (``--reader``: another seed,
  architecture or training set) read the same images. Each gets its own corrected (PACC) share
  with its own held-out errors, and its difference from the audit's classifier gets a paired
  bootstrap interval (the same image resamples on both sides; the held-out images resampled
  jointly where two classifiers were tested on the same ones, else each on its own). Every
  classifier, the audit's own included, reads the stored 8-bit images here, as it read its real
  (8-bit) held-out images. Under label shift every reader estimates the same true share, so an
  interval that excludes 0 says that at least one reading is bent;
* **out-of-support share**: in each classifier's feature space, the share of generated images
  whose k-th nearest real held-out image is farther than the 95th percentile of the real images'
  own (leave-one-out) k-th-neighbour distances. Real images score 5% by construction; a
  generator whose images a classifier reads off its training manifold scores more, by group.

Both stream over the audit's shards (one shard in memory at a time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics.estimates import HeldOut, estimate_shares
from ..metrics.frame import is_censored, proportions_entry
from ..metrics.functional import kl_divergence, wilson_interval

__all__ = [
    "SUPPORT_K",
    "SUPPORT_QUANTILE",
    "ReaderSpace",
    "as_signed_unit",
    "features",
    "knn_radius",
    "reader_comparison",
    "reader_sections",
    "reader_warnings",
]

#: Neighbour rank of the support test (Kynkäänniemi et al. 2019 use k = 3 for precision/recall).
SUPPORT_K = 5
#: Quantile of the real images' own neighbour distances that bounds the support.
SUPPORT_QUANTILE = 0.95

DISAGREEMENT_NOTE = (
    "each reader's PACC share minus the audit classifier's, on the same images; percentile "
    "interval of a paired bootstrap (the same image resamples on both sides; held-out images "
    "resampled jointly where two classifiers share them, else each on its own). Under label "
    "shift every reader estimates the same true share: an interval without 0 says a reading is "
    "bent by how the images look"
)
SUPPORT_NOTE = (
    f"share of generated images whose {SUPPORT_K}-th nearest real held-out image (reference "
    "split) is farther than the "
    f"{SUPPORT_QUANTILE:.0%} quantile of the real images' own leave-one-out {SUPPORT_K}-th "
    "neighbour distances, in each classifier's feature space; real images score "
    f"{1 - SUPPORT_QUANTILE:.0%} by construction. Groups are the audit classifier's labels; "
    "Wilson intervals, given the reference set"
)


def _pairwise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xx = (x * x).sum(1)[:, None]
    yy = (y * y).sum(1)[None, :]
    return np.sqrt(np.maximum(xx + yy - 2 * x @ y.T, 0.0))


def knn_radius(
    points: np.ndarray, reference: np.ndarray, k: int, *, leave_one_out: bool = False
) -> np.ndarray:
    """Distance from each point to its ``k``-th nearest reference point (float64).

    With ``leave_one_out`` the points are the reference itself and each one's own zero distance
    is skipped.
    """
    p = np.asarray(points, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    rank = k if leave_one_out else k - 1
    if len(r) <= rank:
        raise ValueError(f"need more than {rank} reference points, got {len(r)}")
    out = np.empty(len(p))
    for start in range(0, len(p), 1024):
        d = _pairwise(p[start : start + 1024], r)
        out[start : start + 1024] = np.partition(d, rank, axis=1)[:, rank]
    return out


def as_signed_unit(images: torch.Tensor) -> torch.Tensor:
    """Images as float in [-1, 1] (stored uint8 images are mapped; floats pass unchanged)."""
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()


def features(classifier: Any, images: torch.Tensor) -> np.ndarray:
    """The classifier's own features of images (the space of its support test)."""
    return classifier.primary.features(as_signed_unit(images)).numpy()


@dataclass
class ReaderSpace:
    """One classifier: its probabilities on the generated images and its support test.

    Attributes:
        name: The classifier's folder name.
        path: Its folder.
        classifier: A loaded :class:`~medfair_audit.models.attributes.ClassifierSet`.
        reference: Its features of the real reference images (``None``: no support test).
    """

    name: str
    path: Path
    classifier: Any
    reference: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.threshold = None
        if self.reference is not None and len(self.reference) > SUPPORT_K:
            own = knn_radius(self.reference, self.reference, SUPPORT_K, leave_one_out=True)
            self.threshold = float(np.quantile(own, SUPPORT_QUANTILE))
        self.probs: list[np.ndarray] = []
        self.outside: list[np.ndarray] = []

    def add(self, images: torch.Tensor, *, read: bool) -> None:
        """Read a shard's images (uint8 or [-1, 1] floats)."""
        x = as_signed_unit(images)
        if read:
            self.probs.append(self.classifier.predict_proba(x).numpy())
        if self.threshold is not None:
            radius = knn_radius(features(self.classifier, x), self.reference, SUPPORT_K)
            self.outside.append(radius > self.threshold)


#: Images read at once: fixed, so the readings do not depend on the audit's batch size.
READ_CHUNK = 64


def _fixed_chunks(shards: Iterable[dict[str, Any]], size: int) -> Iterable[torch.Tensor]:
    """The shards' images regrouped into chunks of ``size`` (the last may be shorter)."""
    buffer: list[torch.Tensor] = []
    held = 0
    for shard in shards:
        buffer.append(shard["images"])
        held += len(shard["images"])
        while held >= size:
            block = torch.cat(buffer)
            yield block[:size]
            buffer, held = [block[size:]], held - size
    if held:
        yield torch.cat(buffer)


def _support(space: ReaderSpace, labels: np.ndarray, groups: Sequence[str], conf: float) -> dict:
    outside = np.concatenate(space.outside) if space.outside else np.zeros(0, bool)

    def entry(sel: np.ndarray) -> dict[str, Any]:
        n, hit = int(sel.sum()), int(outside[sel].sum())
        lo, hi = wilson_interval(hit, n, confidence=conf) if n else (0.0, 1.0)
        return {"share": hit / n if n else None, "ci": [lo, hi], "n": n}

    everything = np.ones(len(outside), bool)
    return {
        "space": space.name,
        "threshold": space.threshold,
        "reference_n": len(space.reference),
        "reference_rate": 1 - SUPPORT_QUANTILE,
        "overall": entry(everything),
        "by_group": {g: entry(labels == j) for j, g in enumerate(groups)},
    }


def reader_sections(
    shards: Iterable[dict[str, Any]],
    spaces: Sequence[ReaderSpace],
    *,
    probs: np.ndarray,
    heldout: HeldOut,
    groups: Sequence[str],
    target: np.ndarray,
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """``audit.json["readers"]``: each reader's reading, its disagreement, the support shares.

    Args:
        shards: The audit's shards in plan order (their ``images``).
        spaces: The audit's classifier first, then the readers (names: their folders').
        probs: The audit classifier's probabilities of the images, in shard order (its labels
            group the support shares; the comparison reads the stored 8-bit images with every
            classifier, this one included, so that a reader equal to it disagrees by exactly 0).
        heldout: The audit classifier's held-out errors.
        groups: Group names.
        target: Target proportions.
        n_boot: Bootstrap replicates.
        confidence: Interval level.
        seed: Seed of the paired bootstrap.
    """
    for chunk in _fixed_chunks(shards, READ_CHUNK):
        for space in spaces:
            space.add(chunk, read=len(spaces) > 1)
    base = np.concatenate(spaces[0].probs) if len(spaces) > 1 else probs
    compare = reader_comparison(
        base,
        heldout,
        [(np.concatenate(s.probs), s.classifier.heldout()) for s in spaces[1:]],
        groups=groups,
        target=target,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )
    readers = [
        {
            "name": space.name,
            "path": str(space.path),
            "architecture": getattr(space.classifier.primary, "architecture", "resnet"),
            **entry,
        }
        for space, entry in zip(spaces[1:], compare, strict=True)
    ]
    labels = probs.argmax(1)
    support = [_support(s, labels, groups, confidence) for s in spaces if s.threshold is not None]
    return {
        "readers": readers,
        "disagreement_note": DISAGREEMENT_NOTE,
        "support": support,
        "support_note": SUPPORT_NOTE,
        "support_k": SUPPORT_K,
        "support_quantile": SUPPORT_QUANTILE,
    }


def reader_comparison(
    probs: np.ndarray,
    heldout: HeldOut,
    others: Sequence[tuple[np.ndarray, HeldOut]],
    *,
    groups: Sequence[str],
    target: np.ndarray,
    n_boot: int,
    confidence: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Each other reader's corrected share of the same images and its paired difference.

    Args:
        probs: The audit classifier's probabilities ``(N, K)``.
        heldout: Its held-out errors.
        others: ``(probs, heldout)`` of each other reader, rows in the same image order.
        groups: Group names.
        target: Target proportions.
        n_boot: Bootstrap replicates (the same image resamples for every reader).
        confidence: Interval level.
        seed: Seed of the resamples.

    Returns:
        Per reader: ``reading``, ``proportions`` (as the audit's), ``kl``, ``counts`` and
        ``disagreement`` (group → value and interval of reader − classifier).
    """
    if not others:  # the support shares alone: no bootstrap to draw
        return []
    n = len(probs)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x52454144]))
    weights = rng.multinomial(n, np.full(n, 1 / n), size=n_boot) if n_boot and n > 1 else None
    base = estimate_shares(probs, heldout, n_boot=n_boot, seed=seed, image_weights=weights)
    out = []
    for j, (p, held) in enumerate(others, start=1):
        # Classifiers tested on the same held-out images (the same label sequence, as two
        # classifiers tested on one split) resample them jointly; others independently.
        shared = np.array_equal(held.labels, heldout.labels)
        est = estimate_shares(
            p, held, n_boot=n_boot, seed=seed if shared else seed + j, image_weights=weights
        )
        reading = "pacc" if "pacc" in est.point and "pacc" in base.point else "acc"
        diff = {}
        for i, g in enumerate(groups):
            value = float(est.point[reading][i] - base.point[reading][i])
            lo = hi = None
            if weights is not None:
                delta = est.samples[reading][:, i] - base.samples[reading][:, i]
                lo, hi = _diff_interval(delta, confidence)
            diff[g] = {"value": value, "ci": [lo, hi]}
            if is_censored(est, reading) or is_censored(base, reading):
                diff[g]["censored"] = True  # a difference of values beyond [0, 1]
        q = np.clip(est.point[reading], 0, None)
        counts = np.bincount(np.asarray(p).argmax(1), minlength=len(groups))
        out.append(
            {
                "reading": reading,
                "proportions": proportions_entry(est, reading, groups, held, confidence),
                "kl": kl_divergence(target, q / q.sum()) if q.sum() > 0 else None,
                "counts": dict(zip(groups, counts.tolist(), strict=True)),
                "disagreement": diff,
            }
        )
    return out


def _diff_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of a difference of shares (may be negative; NaN draws dropped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return (-1.0, 1.0)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(v, [alpha, 1 - alpha])
    return float(lo), float(hi)


def reader_warnings(section: dict[str, Any]) -> list[str]:
    """Warnings for readers that disagree and for images off a classifier's real support."""
    out = []
    for r in section["readers"]:
        off = [
            g
            for g, d in r["disagreement"].items()
            if d["ci"][0] is not None
            and not d.get("censored")
            and (d["ci"][0] > 0 or d["ci"][1] < 0)
        ]
        if off:
            out.append(
                f"reader '{r['name']}' disagrees with the classifier on the corrected share of "
                f"{', '.join(off)} (paired interval excludes 0): the images are read differently "
                "than the real held-out images, so a corrected share is bent"
            )
    for s in section["support"]:
        hit = s["overall"]
        if hit["share"] is not None and hit["ci"][0] > s["reference_rate"]:
            out.append(
                f"{hit['share']:.0%} of the images lie outside the real images' support in the "
                f"feature space of '{s['space']}' (real images: {s['reference_rate']:.0%})"
            )
    return out
