"""BraTS18 volumes as axial 2-D slices with sex labels.

Layout (as distributed for the BraTS 2018 challenge)::

    <root>/HGG/<subject>/<subject>_flair.nii.gz   (_t1, _t1ce, _t2, _seg)
    <root>/LGG/<subject>/...

BraTS ships no sex labels: the user supplies a CSV mapping subject → sex (e.g. from the TCIA
clinical tables). Values ``M``/``Male``/``F``/``Female`` (any case) are understood; column names
are matched without regard to case (``Subject``, ``Sex``). Every other column of the table is kept
in the metadata (a column that clashes with one medfair writes gets a ``table_`` prefix); an
``Age`` column (any case) becomes ``age`` plus an ``age_band`` column (default bands ``<40``,
``40-59``, ``60+``), so a sex × age band target needs no renaming. The grade (``HGG``/``LGG``)
comes from the folder.

Slices are taken along the volume's superior-inferior axis after reorienting to RAS, intensities are
normalised per volume by percentiles of the brain voxels (BraTS volumes are skull-stripped, so
the brain is the non-zero region), and each slice is shown in radiological convention (patient's
right on the image's left, anterior at the top), the same as the phantom.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..attributes import AGE_BAND_EDGES, age_band, normalise_sex, parse_age_bands
from ..exceptions import (
    MSG_MISSING_COLUMN,
    MSG_NOT_A_DIR,
    MSG_UNKNOWN_GROUPS,
    ConfigError,
    DataError,
)
from ..target import read_label_table
from ._imageio import to_model_tensor
from .datasets import ImageDataset, check_inside
from .phantom import SEQUENCE_NAMES

__all__ = [
    "BRATS_GRADES",
    "BratsCohort",
    "BratsDataset",
    "brats_cohort",
    "find_volume",
    "normalise_sex",
]

BRATS_GRADES = ("HGG", "LGG")
#: Folders of subjects without a glioma, read beside the grades (``medfair data phantom
#: --volumes`` writes them; BraTS itself has none).
HEALTHY = "healthy"
#: Columns the importer writes itself; a user column of the same name gets a ``table_`` prefix.
OWN_COLUMNS = (
    "file", "subject", "grade", "sex", "sequence", "slice_index", "tumour", "caption", "seg",
)  # fmt: skip


def _column(table: pd.DataFrame, name: str, path: object, param: str) -> str:
    """The column of ``table`` called ``name``, matched exactly or else without regard to case."""
    if name in table.columns:
        return name
    hits = [c for c in table.columns if str(c).strip().lower() == name.strip().lower()]
    if len(hits) == 1:
        return hits[0]
    raise DataError(
        MSG_MISSING_COLUMN.format(
            path=path, column=name, found=", ".join(map(str, table.columns)) or "none"
        ),
        param=param,
    )


def _extra_columns(
    table: pd.DataFrame, used: Sequence[str], edges: Sequence[int], path: object
) -> dict[str, dict[str, str]]:
    """Subject → the table's other columns (``age`` also as ``age_band``), by subject row."""
    out: dict[str, str] = {}
    for col in table.columns:
        if col in used:
            continue
        name = str(col).strip()
        if name.lower() == "age":
            out[col] = "age"
        elif name.lower() in OWN_COLUMNS or name.lower() in ("age", "age_band"):
            out[col] = f"table_{name}"
        else:
            out[col] = name
    rows: dict[str, dict[str, str]] = {}
    for _, rec in table.iterrows():
        row = {new: str(rec[old]).strip() for old, new in out.items()}
        if "age" in row:
            raw = row["age"]
            if raw == "":
                row["age_band"] = ""
            else:
                try:
                    age = float(raw)
                    if not 0 <= age <= 130:
                        raise ValueError
                except ValueError:
                    raise DataError(
                        f"'{path}': age must be a number of years, got '{raw}'", param="sex_csv"
                    ) from None
                row["age_band"] = age_band(age, edges)
        rows[str(rec[used[0]]).strip()] = row
    return rows


def _load_volume(path: Path, *, param: str) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"cannot read NIfTI '{path}': {exc}", param=param) from exc
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(
            f"'{path}' has shape {tuple(data.shape)}, expected a 3-D volume", param=param
        )
    if not np.isfinite(data).all():
        raise DataError(f"'{path}' contains NaN or infinite values", param=param)
    return data


def check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """The (low, high) brain-intensity percentiles, checked: ``0 ≤ low < high ≤ 100``."""
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ConfigError(f"expected 0 ≤ low < high ≤ 100, got {percentiles}", param="percentiles")
    return float(lo_p), float(hi_p)


def normalise_brain(vol: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the brain's (non-zero voxels') ``percentiles`` to 0 and 1; background stays 0."""
    brain = vol > 0
    lo, hi = np.percentile(vol[brain], percentiles)
    return np.where(brain, np.clip((vol - lo) / max(hi - lo, 1e-6), 0.0, 1.0), 0.0)


def _to_display(axial: np.ndarray) -> np.ndarray:
    """RAS ``(x, y)`` slice → rows anterior-first, columns patient's right first."""
    return axial.T[::-1, ::-1]


@dataclass(frozen=True)
class BratsCohort:
    """The BraTS subjects on disk that the sex table labels.

    Attributes:
        subjects: Subject → (grade, folder), for the labelled subjects in folder order.
        sex: Subject → ``female``/``male``, in the same order.
        extra: Subject → the table's other columns (``age`` and ``age_band`` among them).
        skipped: Subjects found on disk but absent from the table.
    """

    subjects: dict[str, tuple[str, Path]]
    sex: dict[str, str]
    extra: dict[str, dict[str, str]]
    skipped: list[str]


def brats_cohort(
    root: Path,
    sex_csv: str | os.PathLike[str],
    *,
    subject_column: str = "subject",
    sex_column: str = "sex",
    age_bands: Sequence[int] | str = AGE_BAND_EDGES,
    param: str = "root",
) -> BratsCohort:
    """Find the subject folders under ``root/HGG`` and ``root/LGG`` and join the sex table.

    Subjects under ``root/healthy`` (the volume phantom's subjects without a glioma) are found
    too, with the grade ``healthy``.

    Raises:
        DataError: No subject folders, missing columns, unknown sex values, or no subject of the
            folders in the table.
    """
    if not root.is_dir():
        raise DataError(MSG_NOT_A_DIR.format(path=root), param=param)
    subjects: dict[str, tuple[str, Path]] = {}
    for grade in (*BRATS_GRADES, HEALTHY):
        for folder in sorted((root / grade).glob("*")):
            if folder.is_dir():
                subjects[folder.name] = (grade, folder)
    if not subjects:
        raise DataError(
            f"no subject folders under '{root}/HGG' or '{root}/LGG' (BraTS18 layout expected)",
            param=param,
        )
    edges = parse_age_bands(age_bands)
    table = read_label_table(sex_csv, [], param="sex_csv")
    subject_column = _column(table, subject_column, sex_csv, "sex_csv")
    sex_column = _column(table, sex_column, sex_csv, "sex_csv")
    extra = _extra_columns(table, [subject_column, sex_column], edges, sex_csv)
    sex_of: dict[str, str] = {}
    bad = []
    for sid, raw in zip(table[subject_column], table[sex_column], strict=True):
        sex = normalise_sex(raw)
        if sex is None:
            bad.append(raw)
        else:
            sex_of[sid.strip()] = sex
    if bad:
        raise DataError(
            MSG_UNKNOWN_GROUPS.format(known=["female", "male"], unknown=sorted(set(bad))[:5]),
            param="sex_csv",
        )
    labelled = [sid for sid in subjects if sid in sex_of]
    if not labelled:
        raise DataError(
            f"none of the {len(subjects)} subjects under '{root}' is in '{sex_csv}'",
            param="sex_csv",
        )
    return BratsCohort(
        subjects={sid: subjects[sid] for sid in labelled},
        sex={sid: sex_of[sid] for sid in labelled},
        extra=extra,
        skipped=sorted(set(subjects) - set(sex_of)),
    )


def find_volume(folder: Path, sid: str, kind: str, *, required: bool = True) -> Path | None:
    """``<folder>/<sid>_<kind>.nii.gz`` (or ``.nii``); ``None`` or an error where absent."""
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{sid}_{kind}{suffix}"
        if path.is_file():
            return path
    if required:
        raise DataError(
            f"'{folder}' has no '{sid}_{kind}.nii.gz' (BraTS18 layout expected)", param="root"
        )
    return None


class BratsDataset(ImageDataset):
    """Axial slices of BraTS18 subjects that have a sex label.

    Args:
        root: Folder holding ``HGG/`` and/or ``LGG/``.
        sex_csv: CSV with a subject column and a sex column.
        sequence: ``flair``, ``t1``, ``t1ce`` or ``t2``.
        slices: ``"brain"``: slices evenly spread over those whose brain area is at least
            ``min_brain_fraction`` of the largest; ``"tumour"``: a band of ``band`` slices either
            side of the tumour's centre (needs ``<subject>_seg.nii.gz``).
        slices_per_subject: Slices kept per subject in ``"brain"`` mode.
        band: Half-width of the tumour band in slices.
        min_brain_fraction: Brain-area threshold for ``"brain"`` mode.
        percentiles: Lower and upper intensity percentiles (of brain voxels) mapped to 0 and 1.
        subject_column: Column of ``sex_csv`` with subject IDs.
        sex_column: Column of ``sex_csv`` with sex.
        size: Output side in pixels.
        channels: 1 or 3.
        param: Argument name used in error messages.
        allow_outside_root: Read subject folders or volumes that symlinks place outside
            ``root``.
        age_bands: Edges of the ``age_band`` column made from an ``Age`` column.

    Attributes:
        skipped: Subjects found on disk but absent from ``sex_csv``.

    Raises:
        DataError: Bad layout, unreadable or non-3-D volumes, unknown sex values, no subjects.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        sex_csv: str | os.PathLike[str],
        *,
        sequence: str = "flair",
        slices: str = "brain",
        slices_per_subject: int = 10,
        band: int = 5,
        min_brain_fraction: float = 0.3,
        percentiles: Sequence[float] = (1.0, 99.0),
        subject_column: str = "subject",
        sex_column: str = "sex",
        size: int | None = 64,
        channels: int = 1,
        param: str = "root",
        allow_outside_root: bool = False,
        age_bands: Sequence[int] | str = AGE_BAND_EDGES,
    ) -> None:
        super().__init__(size=size, channels=channels, param=param)
        if sequence not in SEQUENCE_NAMES:
            raise ConfigError(
                f"expected one of {', '.join(SEQUENCE_NAMES)}, got '{sequence}'", param="sequence"
            )
        if slices not in ("brain", "tumour"):
            raise ConfigError(f"expected 'brain' or 'tumour', got '{slices}'", param="slices")
        if slices_per_subject < 1 or band < 0:
            raise ConfigError("slices_per_subject must be ≥ 1 and band ≥ 0", param="slices")
        bounds = check_percentiles(percentiles)
        root = Path(root)
        cohort = brats_cohort(
            root,
            sex_csv,
            subject_column=subject_column,
            sex_column=sex_column,
            age_bands=age_bands,
            param=param,
        )
        subjects, sex_of, extra = cohort.subjects, cohort.sex, cohort.extra
        self.skipped = cohort.skipped
        labelled = list(cohort.sex)
        self.sequence = sequence
        self._slices: list[np.ndarray] = []
        rows = []
        volumes = {sid: find_volume(subjects[sid][1], sid, sequence) for sid in labelled}
        segs = {sid: find_volume(subjects[sid][1], sid, "seg", required=False) for sid in labelled}
        if not allow_outside_root:  # symlinked subject folders or volumes leading out
            found = [*volumes.values(), *(s for s in segs.values() if s is not None)]
            check_inside(root, found, "found in the subject folders", param)
        for sid in labelled:
            grade, folder = subjects[sid]
            path = volumes[sid]
            vol = _load_volume(path, param=param)
            brain = vol > 0
            area = brain.sum(axis=(0, 1))
            if area.max() == 0:
                raise DataError(f"'{path}' is empty (all zero)", param=param)
            valid = np.flatnonzero(area >= min_brain_fraction * area.max())
            seg = None
            seg_path = segs[sid]
            if seg_path is not None:
                seg = _load_volume(seg_path, param=param)
                if seg.shape != vol.shape:
                    raise DataError(
                        f"'{seg_path}' has shape {seg.shape}, but the image has {vol.shape}",
                        param=param,
                    )
            if slices == "tumour":
                if seg is None or not (seg > 0).any():
                    raise DataError(
                        f"slices='tumour' needs a non-empty '{sid}_seg.nii.gz' in '{folder}'",
                        param=param,
                    )
                centre = round(np.argwhere(seg > 0)[:, 2].mean())
                zs = [z for z in range(centre - band, centre + band + 1) if z in set(valid)]
            else:
                take = min(slices_per_subject, len(valid))
                zs = sorted({int(valid[round(i)]) for i in np.linspace(0, len(valid) - 1, take)})
            norm = normalise_brain(vol, bounds)
            for z in zs:
                arr = _to_display(norm[:, :, z]).astype(np.float32)
                if size is not None:
                    arr = ((to_model_tensor(arr, size=size, channels=1)[0] + 1) / 2).numpy()
                self._slices.append(arr)
                tumour = int(seg is not None and bool((seg[:, :, z] > 0).any()))
                caption = (
                    f"Axial {SEQUENCE_NAMES[sequence]} MRI of the brain showing a glioma."
                    if tumour
                    else f"Axial {SEQUENCE_NAMES[sequence]} MRI of the brain."
                )
                rows.append(
                    {
                        "file": f"{path.relative_to(root).as_posix()}#z={z}",
                        "subject": sid,
                        "grade": grade,
                        "sex": sex_of[sid],
                        "sequence": sequence,
                        "slice_index": z,
                        "tumour": tumour,
                        "caption": caption,
                        **extra.get(sid, {}),
                    }
                )
        self.metadata = pd.DataFrame(rows)

    def load_array(self, index: int) -> np.ndarray:
        """The normalised slice of item ``index`` (already at the output size)."""
        return self._slices[index]
