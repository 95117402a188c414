"""Synthetic brain-MR volumes in the BraTS layout: the phantom in 3-D.

The slice phantom (:mod:`.phantom`) cuts one plane out of a deformed copy of the MNI152 template;
here the whole deformed head is rendered, so a subject is a set of co-registered volumes, one per
BraTS sequence, with a segmentation, as BraTS ships them::

    <out>/HGG/<subject>/<subject>_t1.nii.gz      (_t1ce, _t2, _flair, _seg)
    <out>/healthy/<subject>/...                  (subjects without a glioma; seg all zero)
    <out>/subjects.csv                           Subject, Sex, Age (what import-brats reads)
    <out>/metadata.csv                           one row per volume: file, subject, sex, ...
    <out>/dataset.json                           settings, voxel size, counts

The anatomy is the slice phantom's (:class:`~.phantom.AnatomyModel`: head size, ventricles and
grey/white balance by sex and age; optionally the signs of ageing), applied in 3-D: a pose
(rotation about all three axes, translation), a smooth 3-D elastic field, the isotropic head scale
and a 3-D magnification around the lateral ventricles. A glioma is a necrotic core, an enhancing
rim and oedema around a centre inside the white and grey matter, with irregular 3-D borders and
mass effect; the segmentation uses the BraTS labels (1 necrotic core, 2 oedema, 4 enhancing
tumour). Each sequence has its own contrast jitter, bias field and Rician noise.

Volumes are isotropic, ``size`` voxels a side over the slice phantom's 200 mm field of view
(``size=48``: 4.2 mm voxels), in RAS+ orientation (the affine is diagonal), stored as int16 in
0-1000 (background 0, as in skull-stripped BraTS), gzip-compressed without a time stamp, so the
same configuration and seed give identical bytes.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .._io import atomic_write_bytes, atomic_write_json, atomic_write_text, building_dir, csv_text
from ..attributes import AGE_BAND_EDGES, age_band, age_band_range
from ..exceptions import ConfigError, DataError
from ..progress import ProgressCallback, report
from ._template import TissueAtlas, load_atlas
from .brats import _load_volume, brats_cohort, check_percentiles, find_volume, normalise_brain
from .datasets import ImageFolderDataset, check_inside
from .phantom import (
    CENTRE_Y_MM,
    FOV_MM,
    SEQUENCES,
    AnatomyModel,
    PhantomConfig,
    PhantomResult,
    _age_signs,
    _assignments,
    _lobe,
    anatomy_columns,
    draw_contrast,
    grey_white_shift,
    lesion_compartments,
    lesion_signal,
    render_chunks,
    rician_and_clip,
    split_sex_counts,
    tissue_signal,
)

__all__ = [
    "BRATS_LABELS",
    "VOLUME_COLUMNS",
    "VolumeFolderDataset",
    "VolumeImport",
    "build_phantom_volumes",
    "import_brats_volumes",
    "render_phantom_volume",
    "volume_affine",
]

#: BraTS segmentation labels.
BRATS_LABELS = {"necrotic_core": 1, "oedema": 2, "enhancing": 4}
#: MNI z (mm) of the field of view's centre: the brain's middle, top to bottom.
CENTRE_Z_MM = 12.0
#: Largest volume side (voxels) the phantom renders.
MAX_VOLUME_SIZE = 128
#: Deep white-matter lesions of a volume per unit of load: the slice phantom's count per slice
#: times about the number of 5 mm slices through the deep white matter.
DEEP_LESIONS_PER_LOAD = 6.0 * 8
#: Stored intensity of a signal of 1.
INTENSITY_SCALE = 1000
VOLUME_COLUMNS = (
    "file",
    "subject",
    "grade",
    "sex",
    "age",
    "age_band",
    "tumour",
    "sequence",
    "split",
    "seg",
    "tumour_side",
    "tumour_lobe",
    "head_scale",
    "ventricle_gain",
    "gm_shift",
    "wmh_load",
    "atrophy",
    "lesion_ml",
)


def volume_affine(size: int) -> np.ndarray:
    """Voxel → MNI-like millimetre affine (RAS+) of a ``size``-voxel phantom volume."""
    pix = FOV_MM / size
    half = (size - 1) / 2.0
    affine = np.diag([pix, pix, pix, 1.0])
    affine[:3, 3] = [-half * pix, CENTRE_Y_MM - half * pix, CENTRE_Z_MM - half * pix]
    return affine


def _smooth_field3(rng: np.random.Generator, size: int, knots: int, sd: float) -> np.ndarray:
    coarse = rng.normal(0.0, sd, size=(knots, knots, knots))
    return ndimage.zoom(coarse, size / knots, order=3, mode="nearest")[:size, :size, :size]


def _magnify3(q: np.ndarray, centre: np.ndarray, gain: float, sigma: float) -> np.ndarray:
    """Inverse map of a local 3-D magnification by ``1/(1-gain)`` at ``centre``."""
    d = q - centre.reshape(3, 1, 1, 1)
    w = 1.0 - gain * np.exp(-(d * d).sum(axis=0) / (2.0 * sigma * sigma))
    return centre.reshape(3, 1, 1, 1) + d * w


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def render_phantom_volume(
    atlas: TissueAtlas,
    rng: np.random.Generator,
    *,
    sex: str,
    tumour: bool,
    size: int = 48,
    anatomy: AnatomyModel | None = None,
    age_range: tuple[float, float] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Render one phantom subject: a volume per sequence and the segmentation.

    Args:
        atlas: Tissue maps from :func:`~._template.load_atlas`.
        rng: Generator for every random draw of this subject.
        sex: ``"male"`` or ``"female"``.
        tumour: Whether to draw a glioma.
        size: Voxels a side (isotropic, over 200 mm).
        anatomy: Anatomy model (default :class:`~.phantom.AnatomyModel`).
        age_range: Draw the age within ``[low, high)`` years (an age band).

    Returns:
        Sequence → float32 volume in [0, 1] of shape ``(size, size, size)`` indexed
        ``[x, y, z]`` in RAS+ (see :func:`volume_affine`); the uint8 segmentation with the
        BraTS labels; the drawn parameters (the slice phantom's, plus ``lesion_ml``).
    """
    anatomy = anatomy or AnatomyModel()
    subj = anatomy.draw(rng, sex, age_range)
    pix = FOV_MM / size
    p = np.indices((size,) * 3, dtype=np.float64)
    p = p * pix + volume_affine(size)[:3, 3].reshape(3, 1, 1, 1)
    centre = np.array([0.0, CENTRE_Y_MM, CENTRE_Z_MM])
    p = p - centre.reshape(3, 1, 1, 1)  # millimetres from the field of view's centre

    angles = rng.normal(0.0, [0.04, 0.04, math.radians(5.0)])
    shift = rng.normal(0.0, 3.0, size=3)
    scale = subj["head_scale"] * math.exp(rng.normal(0.0, 0.01))
    elastic = np.stack([_smooth_field3(rng, size, 5, 1.8) for _ in range(3)])

    # Output mm -> template mm (inverse mapping), before any lesion.
    rot = _rotation(angles)
    q = np.einsum("ij,j...->i...", rot.T, p - shift.reshape(3, 1, 1, 1))
    q = (q + elastic) / scale + centre.reshape(3, 1, 1, 1)
    q = _magnify3(q, atlas.ventricle_centre, subj["ventricle_gain"], 22.0)

    def sample(mm: np.ndarray) -> np.ndarray:
        vox = np.einsum("ij,j...->i...", atlas.inv_affine[:3, :3], mm)
        vox = vox + atlas.inv_affine[:3, 3].reshape(3, 1, 1, 1)
        return np.stack(
            [ndimage.map_coordinates(m, vox, order=1, mode="constant") for m in atlas.maps]
        ).astype(np.float32)

    maps = sample(q)
    lesion = None
    if tumour:
        tissue = maps[0] + maps[1]
        inner = ndimage.binary_erosion(maps[3] > 0.5, iterations=max(2, size // 12))
        candidates = np.argwhere(inner & (tissue > 0.6))
        if len(candidates):
            c = candidates[int(rng.integers(len(candidates)))]
            radius_mm = float(rng.uniform(5.0, 14.0))
            t = q[:, c[0], c[1], c[2]].copy()
            q = _magnify3(q, t, float(rng.uniform(0.15, 0.35)), 1.8 * radius_mm)
            maps = sample(q)
            lesion = {
                "voxel": c,
                "radius_mm": radius_mm,
                "side": "right" if t[0] > 0 else "left",
                "lobe": _lobe(float(t[0]), float(t[1]), float(t[2])),
            }

    gm, wm, csf, mask = maps
    gm, wm = grey_white_shift(gm, wm, subj["gm_shift"])
    child = rng.spawn(1)[0] if anatomy.age_signs else rng
    signs = anatomy.draw_signs(child, subj["age"])
    subj.update(signs)
    wmh = None
    if anatomy.age_signs:
        vc = atlas.ventricle_centre.reshape(3, 1, 1, 1)
        near_vent = np.sqrt(((q - vc) ** 2)[:2].sum(axis=0)) < 30.0
        deep = signs["wmh_load"] * DEEP_LESIONS_PER_LOAD
        gm, csf, wmh = _age_signs(child, gm, wm, csf, near_vent, pix, signs["atrophy"],
                                  min(signs["wmh_load"], 1.0), deep)  # fmt: skip

    seg = np.zeros((size,) * 3, dtype=np.uint8)
    parts = None
    if lesion is not None:
        r = lesion["radius_mm"] / pix
        d = np.indices((size,) * 3, dtype=np.float64) - lesion["voxel"].reshape(3, 1, 1, 1)
        dist = np.sqrt((d * d).sum(axis=0))
        azimuth = np.arctan2(d[1], d[0])
        elevation = np.arctan2(d[2], np.hypot(d[0], d[1]))
        wobble = np.ones_like(dist)
        for k in (2, 3, 5):
            wobble += rng.normal(0.0, 0.08) * np.cos(k * azimuth + rng.uniform(0, 2 * np.pi))
            wobble += rng.normal(0.0, 0.05) * np.cos(k * elevation + rng.uniform(0, 2 * np.pi))
        core, solid, oedema = lesion_compartments(rng, dist / wobble, r, mask, gm + wm)
        parts = (core, solid, oedema)
        seg[oedema > 0.5] = BRATS_LABELS["oedema"]
        seg[solid > 0.5] = BRATS_LABELS["enhancing"]  # the solid tumour outside the core
        seg[core > 0.5] = BRATS_LABELS["necrotic_core"]

    u = np.indices((size,) * 3, dtype=np.float64) / ((size - 1) / 2.0) - 1.0
    volumes: dict[str, np.ndarray] = {}
    for sequence in SEQUENCES:
        contrast = draw_contrast(rng, sequence)
        img = tissue_signal(sequence, contrast, gm, wm, csf, wmh)
        if parts is not None:
            img = lesion_signal(img, contrast, *parts)
        b = rng.normal(0.0, 0.12, size=6)
        field = b[0] * u[0] + b[1] * u[1] + b[2] * u[2]
        field = field + b[3] * u[0] * u[1] + b[4] * u[0] * u[0] + b[5] * u[1] * u[1]
        volumes[sequence] = rician_and_clip(rng, img * np.exp(field), mask)

    params = {
        **subj,
        "tumour_side": lesion["side"] if lesion else "",
        "tumour_lobe": lesion["lobe"] if lesion else "",
        "has_tumour": lesion is not None,
        "lesion_ml": float((seg > 0).sum() * pix**3 / 1000.0),
    }
    return volumes, seg, params


def nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A ``.nii.gz`` file's bytes, gzip without a time stamp (same data, same bytes)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _render_subject(
    cfg: PhantomConfig, i: int, sex: str, tumour: bool, split: str, band: str | None
) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    atlas = load_atlas(1 if cfg.size > 96 else 2)
    rng = np.random.default_rng([cfg.seed, i, 0x3D])
    volumes, seg, params = render_phantom_volume(
        atlas,
        rng,
        sex=sex,
        tumour=tumour,
        size=cfg.size,
        anatomy=cfg.anatomy,
        age_range=None if band is None else age_band_range(band, cfg.age_bands),
    )
    sid = f"phantom3d-{cfg.seed}-{i:06d}"
    grade = "HGG" if params["has_tumour"] else "healthy"
    folder = f"{grade}/{sid}"
    affine = volume_affine(cfg.size)
    files = {f"{folder}/{sid}_seg.nii.gz": nifti_bytes(seg, affine)}
    rows = []
    for sequence, vol in volumes.items():
        name = f"{folder}/{sid}_{sequence}.nii.gz"
        stored = np.round(vol * INTENSITY_SCALE).astype(np.int16)
        files[name] = nifti_bytes(stored, affine)
        rows.append(
            {
                "file": name,
                "subject": sid,
                "grade": grade,
                "sex": sex,
                "age": params["age"],
                "age_band": age_band(params["age"], cfg.age_bands),
                "tumour": int(params["has_tumour"]),
                "sequence": sequence,
                "split": split,
                "seg": f"{folder}/{sid}_seg.nii.gz",
                "tumour_side": params["tumour_side"],
                "tumour_lobe": params["tumour_lobe"],
                **anatomy_columns(params),
                "lesion_ml": f"{params['lesion_ml']:.3f}",
            }
        )
    return files, rows


def _render_chunk(cfg: PhantomConfig, jobs: list[tuple[int, str, bool, str, str | None]]):
    return [_render_subject(cfg, *job) for job in jobs]


def build_phantom_volumes(
    out: str | os.PathLike[str],
    config: PhantomConfig,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> PhantomResult:
    """Build a phantom of ``config.n`` subjects as NIfTI volumes in the BraTS layout.

    ``config.size`` is the volume side in voxels (32-128); every subject gets all four
    sequences (``config.sequences`` must be left at all four); captions are not written.
    Sex, tumour, split and (joint) age band are assigned per subject exactly as the slice
    phantom assigns them per image, so splits are subject-disjoint by construction. Built beside
    ``out`` and moved into place at the end.

    Returns:
        Paths and per-split, per-sex counts of subjects.
    """
    if config.size > MAX_VOLUME_SIZE:
        raise ConfigError(
            f"expected a volume side of at most {MAX_VOLUME_SIZE} voxels, got {config.size}",
            param="size",
        )
    if tuple(config.sequences) != SEQUENCES:
        raise ConfigError(
            "volumes are written for all four sequences, as BraTS ships them: leave "
            "--sequences at its default",
            param="sequences",
        )
    sexes, tumours, splits, _, bands = _assignments(config)
    jobs = list(zip(range(config.n), sexes, tumours, splits, bands, strict=True))
    rows: list[dict[str, Any]] = []
    subjects: list[dict[str, Any]] = []
    with building_dir(out, overwrite=overwrite, param="out") as tmp:
        report(progress, "phantom volumes", 0, config.n)

        def consume(results: list[tuple[dict[str, bytes], list[dict[str, Any]]]]) -> None:
            for files, subject_rows in results:
                for name, data in files.items():
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(tmp / name, data)
                rows.extend(subject_rows)
                first = subject_rows[0]
                subjects.append({"Subject": first["subject"], "Sex": first["sex"],
                                 "Age": first["age"]})  # fmt: skip
            report(progress, "phantom volumes", len(subjects), config.n)

        render_chunks(_render_chunk, config, jobs, 8, consume)
        atomic_write_text(tmp / "metadata.csv", csv_text(rows, VOLUME_COLUMNS))
        atomic_write_text(tmp / "subjects.csv", csv_text(subjects, ("Subject", "Sex", "Age")))
        counts = split_sex_counts(rows[:: len(SEQUENCES)])
        atomic_write_json(
            tmp / "dataset.json",
            {
                "kind": "medfair-phantom-volumes",
                "format": "BraTS layout (<grade>/<subject>/<subject>_<sequence>.nii.gz) + "
                "metadata.csv (one row per volume) + subjects.csv",
                "orientation": "RAS+ (diagonal affine)",
                "voxel_mm": FOV_MM / config.size,
                "shape": [config.size] * 3,
                "intensity": f"int16, {INTENSITY_SCALE} = signal 1, 0 = background",
                "segmentation": dict(BRATS_LABELS),
                "config": config.record(),
                "counts": counts,
                "n_subjects": len(subjects),
            },
        )
    out = Path(out)
    return PhantomResult(root=out, metadata_csv=out / "metadata.csv", counts=counts)


def resample_cube(volume: np.ndarray, size: int, *, order: int = 1) -> np.ndarray:
    """Zero-pad a volume to a cube (centred) and resample it to ``size`` voxels a side.

    Linear interpolation (``order=0``: nearest, for label maps); an isotropic volume keeps its
    proportions (BraTS's 240×240×155 is padded to 240³ first).
    """
    side = max(volume.shape)
    pad = [((side - n) // 2, side - n - (side - n) // 2) for n in volume.shape]
    cube = np.pad(volume, pad)
    if side == size:
        return cube.astype(np.float32)
    return ndimage.zoom(cube, size / side, order=order, grid_mode=True, mode="grid-constant")[
        :size, :size, :size
    ].astype(np.float32)


@dataclass(frozen=True)
class VolumeImport:
    """What :func:`import_brats_volumes` wrote.

    Attributes:
        root: The output folder.
        n_subjects: Subjects written.
        n_volumes: Volumes written (the sequences and the segmentations).
        skipped: Subjects on disk without a sex label.
    """

    root: Path
    n_subjects: int
    n_volumes: int
    skipped: list[str]


def _isotropic(path: Path, size: int, *, order: int) -> tuple[np.ndarray, float]:
    """A NIfTI volume in RAS+, resampled to isotropic voxels, padded and resampled to ``size``³.

    Returns the cube and its voxel side in millimetres.
    """
    import nibabel as nib

    try:  # the header only: the voxel sizes in RAS+ axis order
        img = nib.load(str(path))
        axes = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)
        zooms = np.empty(3)
        zooms[axes] = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"cannot read NIfTI '{path}': {exc}", param="root") from exc
    vol = _load_volume(path, param="root")
    if not np.all(zooms > 0):
        raise DataError(f"'{path}' has voxel sizes {zooms.tolist()} mm", param="root")
    if zooms.max() / zooms.min() > 1.01:  # anisotropic: to the finest voxel first
        vol = ndimage.zoom(vol, zooms / zooms.min(), order=order, grid_mode=True,
                           mode="grid-constant")  # fmt: skip
    side_mm = max(vol.shape) * float(zooms.min())
    return resample_cube(vol, size, order=order), side_mm / size


def import_brats_volumes(
    root: str | os.PathLike[str],
    sex_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 64,
    subject_column: str = "subject",
    sex_column: str = "sex",
    age_bands: Any = AGE_BAND_EDGES,
    overwrite: bool = False,
    allow_outside_root: bool = False,
    progress: ProgressCallback | None = None,
) -> VolumeImport:
    """Copy BraTS18 subjects with a sex label into a volume folder medfair reads.

    Each labelled subject's four sequences (and its segmentation, where present) are reoriented
    to RAS+, made isotropic, zero-padded to a centred cube and resampled to ``size`` voxels a
    side (linear; nearest for the segmentation), keeping their raw intensities (float32;
    :class:`VolumeFolderDataset` normalises when it reads). The output has the layout of
    ``medfair data phantom --volumes``: ``<grade>/<subject>/<subject>_<sequence>.nii.gz``,
    ``metadata.csv`` with one row per volume (file, subject, grade, sex, tumour, sequence, seg,
    and the sex table's other columns, ``age`` and ``age_band`` among them) and
    ``subjects.csv``, so it can be imported again. Built beside ``out`` and moved into place.

    Raises:
        DataError: As :class:`~.brats.BratsDataset` (layout, sex table, unreadable volumes).
    """
    if not 8 <= size <= 256:
        raise ConfigError(f"expected a side of 8-256 voxels, got {size}", param="size")
    root = Path(root)
    cohort = brats_cohort(
        root,
        sex_csv,
        subject_column=subject_column,
        sex_column=sex_column,
        age_bands=age_bands,
    )
    found: dict[str, dict[str, Path | None]] = {}
    for sid, (_, folder) in cohort.subjects.items():
        found[sid] = {seq: find_volume(folder, sid, seq) for seq in SEQUENCES}
        found[sid]["seg"] = find_volume(folder, sid, "seg", required=False)
    if not allow_outside_root:  # symlinked subject folders or volumes leading out
        paths = [p for files in found.values() for p in files.values() if p is not None]
        check_inside(root, paths, "found in the subject folders", "root")
    rows: list[dict[str, Any]] = []
    subjects: list[dict[str, Any]] = []
    n_volumes = 0
    with building_dir(out, overwrite=overwrite, param="out") as tmp:
        for i, (sid, (grade, _)) in enumerate(cohort.subjects.items()):
            report(progress, "import volumes", i, len(cohort.subjects))
            extra = cohort.extra.get(sid, {})
            folder = f"{grade}/{sid}"
            seg_name, tumour = "", 0
            if found[sid]["seg"] is not None:
                seg, pix = _isotropic(found[sid]["seg"], size, order=0)
                seg_name = f"{folder}/{sid}_seg.nii.gz"
                tumour = int((seg > 0).any())
                atomic_write_bytes(
                    tmp / seg_name, nifti_bytes(seg.astype(np.uint8), _affine(pix, size))
                )
                n_volumes += 1
            for seq in SEQUENCES:
                vol, pix = _isotropic(found[sid][seq], size, order=1)
                name = f"{folder}/{sid}_{seq}.nii.gz"
                atomic_write_bytes(tmp / name, nifti_bytes(vol, _affine(pix, size)))
                n_volumes += 1
                rows.append(
                    {"file": name, "subject": sid, "grade": grade, "sex": cohort.sex[sid],
                     "tumour": tumour, "sequence": seq, "seg": seg_name, **extra}
                )  # fmt: skip
            subjects.append({"Subject": sid, "Sex": cohort.sex[sid], "Age": extra.get("age", "")})
        report(progress, "import volumes", len(cohort.subjects), len(cohort.subjects))
        columns = list(dict.fromkeys(k for row in rows for k in row))
        atomic_write_text(tmp / "metadata.csv", csv_text(rows, columns))
        has_age = any(s["Age"] != "" for s in subjects)
        fields = ("Subject", "Sex", "Age") if has_age else ("Subject", "Sex")
        subjects = [{k: s[k] for k in fields} for s in subjects]
        atomic_write_text(tmp / "subjects.csv", csv_text(subjects, fields))
    return VolumeImport(
        root=Path(out), n_subjects=len(subjects), n_volumes=n_volumes, skipped=cohort.skipped
    )


def _affine(pix: float, size: int) -> np.ndarray:
    """RAS+ diagonal affine of a ``size``³ cube of ``pix``-mm voxels centred on the origin."""
    affine = np.diag([pix, pix, pix, 1.0])
    affine[:3, 3] = -(size - 1) / 2.0 * pix
    return affine


class VolumeFolderDataset(ImageFolderDataset):
    """NIfTI volumes listed in a ``metadata.csv`` (``medfair data phantom --volumes``' layout).

    Each item is one volume, reoriented to RAS+, normalised by percentiles of its brain (the
    non-zero voxels, as for skull-stripped BraTS: the 1st and 99th map to 0 and 1, the
    background stays 0), zero-padded to a cube and resampled to ``size`` voxels a side:
    ``{"image": Tensor(1, size, size, size) in [-1, 1], "caption": None, "metadata": row}``.

    Args:
        root: The folder.
        sequence: Keep only rows whose ``sequence`` column equals this (``None``: all rows).
        size: Output side in voxels.
        percentiles: Brain-intensity percentiles mapped to 0 and 1.
        **kwargs: As :class:`~.datasets.ImageFolderDataset` (``metadata``, ``split``,
            ``require``, ``param``, ``allow_outside_root``; ``channels`` is 1).

    Raises:
        DataError: As the image folder's, and for volumes that are unreadable, not 3-D, not
            finite or empty.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        sequence: str | None = None,
        size: int = 48,
        percentiles: tuple[float, float] = (1.0, 99.0),
        **kwargs: Any,
    ) -> None:
        require = tuple(kwargs.pop("require", ())) + (("sequence",) if sequence else ())
        super().__init__(root, size=size, require=require, **kwargs)
        if sequence is not None:
            self.metadata = self.metadata[self.metadata["sequence"] == sequence].reset_index(
                drop=True
            )
            if not len(self.metadata):
                raise ConfigError(
                    f"no volume of sequence '{sequence}' in '{self.root}'", param="sequence"
                )
        self.percentiles = check_percentiles(percentiles)

    def load_array(self, index: int) -> np.ndarray:
        """The normalised volume of item ``index`` (``size``³, float32 in [0, 1])."""
        path = self.root / self.metadata.at[index, self.file_column]
        vol = _load_volume(path, param=self.param)
        if not (vol > 0).any():
            raise DataError(f"'{path}' is empty (all zero)", param=self.param)
        return resample_cube(normalise_brain(vol, self.percentiles), self.size)

    def to_tensor(self, array: np.ndarray) -> Any:
        """A volume from :meth:`load_array` as ``(1, size, size, size)`` in [-1, 1]."""
        import torch

        return torch.from_numpy(array)[None] * 2.0 - 1.0
