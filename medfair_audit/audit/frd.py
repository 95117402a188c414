"""Fréchet Radiomics Distance per group (Konz, Osuala et al. 2026), through ``frd-score``.

FRD compares two image sets by the distribution of their radiomic features (first-order
intensity statistics and texture matrices on the original, Laplacian-of-Gaussian and wavelet-
filtered images, about 464 features in FRDv1): interpretable, medical-imaging-specific, and
needing no network weights. medfair writes the audit's stored 8-bit images and the reference
images (8-bit too, so both sides go through the same quantisation) as PNG files and calls
``frd_score.frd.compute_frd`` (FRDv1: features z-scored against the real set, log-transformed
distance) per predicted group and overall. Lower is closer (the squared distance is 0 for
identical sets, so their log-scale FRD is unbounded below and reported as ``null``).

``frd-score`` needs pyradiomics, whose PyPI release does not build on Python ≥ 3.10; the
``frd`` extra installs the maintained ``pyradiomics-bhklab`` build instead
(``pip install 'medfair[frd]'``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import ConfigError

__all__ = ["FRD_METHOD", "frd_by_group", "require_frd"]

FRD_METHOD = (
    "Fréchet Radiomics Distance v1 (frd-score: pyradiomics features of the original, LoG and "
    "wavelet images, z-scored against the real set, log-transformed Fréchet distance), on "
    "8-bit PNGs of the generated and the reference images of each predicted group"
)
#: Fewer images than this on either side: FRD's covariance is not estimated (no value).
FRD_MIN_N = 10


def require_frd() -> Any:
    """``frd_score.frd``, or a one-line error naming the extra that provides it."""
    try:
        from frd_score import frd

        frd._ensure_radiomics()
    except (ImportError, RuntimeError) as exc:
        raise ConfigError(
            "FRD needs the frd extra (pip install 'medfair[frd]': frd-score with "
            f"pyradiomics-bhklab): {str(exc).splitlines()[0]}",
            param="frd",
        ) from exc
    return frd


def _write(images: np.ndarray, folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{i:06d}.png"
        Image.fromarray(np.ascontiguousarray(img)).save(path)
        paths.append(str(path))
    return paths


def _grey(images: Any) -> np.ndarray:
    """``(N, H, W)`` from uint8 ``(N, C, H, W)`` images (their first channel)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images[:, 0] if images.ndim == 4 else images


def frd_by_group(
    generated: Iterable[np.ndarray],
    labels: np.ndarray,
    reference: np.ndarray,
    ref_labels: np.ndarray,
    groups: Sequence[str],
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """FRD of each predicted group's generated images against the reference's, and overall.

    Args:
        generated: The generated images in plan order, in chunks (uint8 ``(n, 1, H, W)``).
        labels: Each generated image's predicted group index (same order).
        reference: The reference images, uint8 (quantised as the shards are:
            :func:`~medfair_audit.generation.engine.to_uint8`).
        ref_labels: Each reference image's group index.
        groups: Group names.
        workers: Feature-extraction processes (default: the CPU count, at most 8).

    Returns:
        ``{"by_group": {group or "overall": {"frd", "frechet_d2", "n_generated",
        "n_reference"[, "reason"]}}, "method"}``: ``frd`` is FRDv1's log(d²), ``frechet_d2`` the
        squared Fréchet distance itself (0 for sets with the same feature statistics).
    """
    frd = require_frd()
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    gen = np.concatenate([_grey(x) for x in generated]) if labels.size else None
    ref = _grey(reference)
    out: dict[str, Any] = {"by_group": {}, "method": FRD_METHOD}
    sets = [(g, labels == i, ref_labels == i) for i, g in enumerate(groups)]
    sets.append(("overall", np.ones(len(labels), bool), np.ones(len(ref_labels), bool)))
    with tempfile.TemporaryDirectory(prefix="medfair-frd-") as tmp:
        for name, g_sel, r_sel in sets:
            ng, nr = int(g_sel.sum()), int(r_sel.sum())
            entry: dict[str, Any] = {"frd": None, "n_generated": ng, "n_reference": nr}
            if min(ng, nr) < FRD_MIN_N:
                entry["reason"] = f"fewer than {FRD_MIN_N} images on a side"
                out["by_group"][name] = entry
                continue
            real = _write(ref[r_sel], Path(tmp) / name / "real")
            fake = _write(gen[g_sel], Path(tmp) / name / "generated")
            # frd-score logs and warns per feature (constant features, normalisation); the
            # audit reports the value only
            quiet = logging.getLogger("radiomics"), logging.getLogger()
            levels = [q.level for q in quiet]
            try:
                for q in quiet:
                    q.setLevel(logging.ERROR)
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    value = frd.compute_frd([real, fake], frd_version="v1", num_workers=workers)
            finally:
                for q, level in zip(quiet, levels, strict=True):
                    q.setLevel(level)
            # v1 reports log(d²): identical feature statistics give log 0, a bound, not a value
            entry["frechet_d2"] = float(np.exp(value)) if not np.isnan(value) else None
            if np.isfinite(value):
                entry["frd"] = float(value)
            else:
                entry["reason"] = "the sets' radiomic statistics agree exactly (log of 0)"
            out["by_group"][name] = entry
    return out
