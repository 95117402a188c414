"""The MNI152 (ICBM 2009a symmetric) tissue maps that nilearn ships inside its wheel.

Grey matter, white matter and the brain mask are read with nilearn's loaders, which use files in
``nilearn/datasets/data`` and never touch the network. Cerebrospinal fluid is what the mask holds
beyond grey and white matter. The maps are stacked into one float32 array, kept once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["TissueAtlas", "load_atlas"]


@dataclass(frozen=True)
class TissueAtlas:
    """Tissue probability maps in MNI space.

    Attributes:
        maps: Array of shape ``(4, X, Y, Z)``: grey matter, white matter, CSF, brain mask.
        affine: Voxel → MNI millimetre affine (RAS+).
        inv_affine: MNI millimetre → voxel affine.
        ventricle_centre: MNI coordinates (mm) of the lateral ventricles' centroid.
    """

    maps: np.ndarray
    affine: np.ndarray
    inv_affine: np.ndarray
    ventricle_centre: np.ndarray


@functools.lru_cache(maxsize=2)
def load_atlas(resolution: int = 2) -> TissueAtlas:
    """Load the MNI152 tissue maps at ``resolution`` mm (1 or 2), cached per process."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets

        gm_img = datasets.load_mni152_gm_template(resolution=resolution)
        wm_img = datasets.load_mni152_wm_template(resolution=resolution)
        mask_img = datasets.load_mni152_brain_mask(resolution=resolution)
    gm = np.asarray(gm_img.get_fdata(), dtype=np.float32)
    wm = np.asarray(wm_img.get_fdata(), dtype=np.float32)
    mask = np.asarray(mask_img.get_fdata(), dtype=np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    maps = np.stack([gm, wm, csf, mask])
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    inv = np.linalg.inv(affine)
    # Lateral ventricles: CSF within a central box around the MNI origin (x in ±25 mm,
    # y in -45..+25 mm, z in 0..30 mm).
    idx = np.argwhere(csf > 0.5)
    mm = idx @ affine[:3, :3].T + affine[:3, 3]
    box = (np.abs(mm[:, 0]) < 25) & (mm[:, 1] > -45) & (mm[:, 1] < 25)
    box &= (mm[:, 2] > 0) & (mm[:, 2] < 30)
    centre = mm[box].mean(axis=0) if box.any() else np.array([0.0, -10.0, 15.0])
    return TissueAtlas(maps=maps, affine=affine, inv_affine=inv, ventricle_centre=centre)
