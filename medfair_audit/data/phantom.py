"""Synthetic brain-MR slices with sex-linked anatomy: medfair's embedded default data set.

Real BraTS18 and ROCO data cannot be shipped, so medfair builds a stand-in from the MNI152 2009a
tissue maps that nilearn ships (see :mod:`._template`). Each image is an axial slice of a
deformed copy of the template, rendered in one of four BraTS sequences, with an optional glioma
and a radiology-style caption.

How one image is made (all draws from a generator seeded by ``(seed, index)``):

1. **Anatomy.** Sex and age set three subject parameters, each drawn with overlap between sexes
   (see :class:`AnatomyModel` for values and sources): head size (an isotropic scale of the
   template), ventricle size (a local magnification around the lateral ventricles, growing with
   age), and the grey/white balance (a shift of the grey-matter share of tissue, falling with age).
   Optionally (``AnatomyModel.age_signs``) white-matter hyperintensities and sulcal widening that
   grow with age.
2. **Geometry.** A slice position in the supratentorial band, an in-plane rotation, a small
   out-of-plane tilt, a translation, a scanner scale jitter and a smooth random elastic field.
3. **Glioma** (optional). A necrotic core, an enhancing rim and surrounding oedema with irregular
   borders, pushing the neighbouring tissue aside (mass effect); its centre names a side and lobe.
4. **Contrast.** Tissue and lesion intensities of the sequence (T1, T1ce, T2, FLAIR) with small
   per-image jitter, a smooth multiplicative bias field and Rician noise inside the brain. The
   background is zero, as in skull-stripped BraTS images.
5. **Caption.** Radiology style, e.g. "Axial FLAIR MRI of the brain showing a glioma in the left
   frontal lobe."; sex-neutral unless ``caption_sex_rate`` asks otherwise.

Images are shown in radiological convention: the patient's right on the image's left, anterior at
the top. Same configuration and seed give identical bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .._io import atomic_write_json, atomic_write_text, building_dir, csv_text
from .._validate import require_count
from ..attributes import (
    AGE_BAND_EDGES,
    age_band,
    age_band_labels,
    age_band_range,
    cell_name,
    cells,
    parse_age_bands,
    split_cell,
)
from ..exceptions import ConfigError
from ..progress import ProgressCallback, report
from ._imageio import png_bytes
from ._template import TissueAtlas, load_atlas

__all__ = [
    "METADATA_COLUMNS",
    "SEQUENCES",
    "AnatomyModel",
    "PhantomConfig",
    "PhantomResult",
    "build_phantom",
    "render_phantom_slice",
]

SEQUENCES = ("t1", "t1ce", "t2", "flair")
SEQUENCE_NAMES = {
    "t1": "T1-weighted",
    "t1ce": "contrast-enhanced T1-weighted",
    "t2": "T2-weighted",
    "flair": "FLAIR",
}
# Relative signal of each tissue and lesion compartment per sequence (0 = black, ~1 = bright).
# Ordered as healthy tissue follows on these sequences: T1 WM > GM > CSF; T2 CSF > GM > WM;
# FLAIR suppresses CSF; gadolinium makes the viable tumour rim bright on T1ce.
CONTRASTS: dict[str, dict[str, float]] = {
    "t1": {"gm": 0.55, "wm": 0.80, "csf": 0.12, "core": 0.22, "rim": 0.45, "oedema": 0.45},
    "t1ce": {"gm": 0.55, "wm": 0.80, "csf": 0.12, "core": 0.20, "rim": 1.00, "oedema": 0.45},
    "t2": {"gm": 0.55, "wm": 0.38, "csf": 1.00, "core": 0.90, "rim": 0.60, "oedema": 0.80},
    "flair": {"gm": 0.55, "wm": 0.40, "csf": 0.08, "core": 0.45, "rim": 0.70, "oedema": 0.95},
}
METADATA_COLUMNS = (
    "file",
    "subject",
    "sex",
    "age",
    "age_band",
    "tumour",
    "sequence",
    "caption",
    "split",
    "tumour_side",
    "tumour_lobe",
    "slice_z_mm",
    "head_scale",
    "ventricle_gain",
    "gm_shift",
    "wmh_load",
    "atrophy",
)
FOV_MM = 200.0  # square field of view of every image
CENTRE_Y_MM = -18.0  # MNI y of the field of view's centre (the brain's middle, front to back)
Z_BAND_MM = (-4.0, 36.0)  # MNI z band of slice positions: basal ganglia to centrum semiovale


@dataclass(frozen=True, kw_only=True)
class AnatomyModel:
    """Sex- and age-linked anatomy of the phantom, with its basis in the literature.

    Each parameter is drawn per subject from a normal distribution whose mean depends on sex (and
    age), so the sexes overlap as in real populations.

    * **Head size** (``head_log_scale_*``): an isotropic scale ``exp(N(mean, sd))`` of the template.
      Intracranial volume is about 12% larger in men on average (Ruigrok et al. 2014,
      Neurosci. Biobehav. Rev. 39:34, meta-analysis), i.e. about 4% in linear size, with a
      within-sex SD of about 9-10% in volume (3% linear): Cohen's d about 1.3.
    * **Ventricles** (``ventricle_gain_*``): strength of a local magnification centred on the
      lateral ventricles. Lateral ventricles are larger in men (Ritchie et al. 2018, Cereb.
      Cortex 28:2959, UK Biobank, d about 0.4-0.5) and grow with age in both sexes
      (``ventricle_gain_per_year``).
    * **Grey/white balance** (``gm_shift_*``): a shift on the logit of the grey-matter share of
      tissue. Women have a higher proportion of grey matter and men of white matter (Gur et al.
      1999, J. Neurosci. 19:4065; Ritchie et al. 2018); grey matter declines with age.

    ``age_effect_scale`` multiplies the two age effects (1 = the values above; larger values make
    the age band easier to read from an image, for two-attribute experiments: at 1 a small CNN
    reads the age band at chance). ``ventricle_gain_max`` caps the ventricle gain (raise it with
    a large ``age_effect_scale``, so that old subjects' ventricles keep growing).

    ``age_signs`` adds two signs of brain ageing that a reader of the image sees directly, at
    their published sizes (0, the default, leaves them out, so data sets made before stay
    byte-identical; 1 = the values below):

    * **White-matter hyperintensities** (``wmh_log_load_*``): periventricular caps and punctate
      deep lesions, bright on T2 and FLAIR and slightly dark on T1. Their prevalence and volume
      grow steeply with age: rare and punctate before 40, found in over 90% of people over 60
      (de Leeuw et al. 2001, J. Neurol. Neurosurg. Psychiatry 70:9, Rotterdam Scan Study), the
      volume growing about 7% per year (log-linear). A subject's load is log-normal around that
      curve; it sets the caps' strength and the expected number of deep lesions in a slice.
    * **Cortical atrophy** (``atrophy_per_year`` from ``atrophy_onset``): grey matter next to
      the sulcal CSF turns to CSF (sulcal widening). Cortical thinning is roughly linear across
      adulthood from the twenties on (Salat et al. 2004, Cereb. Cortex 14:721), and whole-brain
      volume falls by about 0.2-0.5% per year in healthy ageing, faster after 70 (Fotenos et al.
      2005, Neurology 64:1032).

    The signs are drawn from a child generator of the image's own, so an image with
    ``age_signs > 0`` shows the same subject, slice and pose as with 0.

    ``effect_scale`` multiplies the three male-female differences (1 = the values above). The
    default is 2.0: at the literature's effect sizes a logistic regression on 64-px phantom pixels
    reaches only about 0.68 balanced accuracy, because slice position, pose and contrast hide the
    differences; doubled, it reaches about 0.88 and a small CNN more, which is the regime of a
    good-but-imperfect sex classifier that the method needs (measured in ``tests`` and the
    README). The sexes still overlap.
    """

    head_log_scale_male: float = 0.02
    head_log_scale_female: float = -0.02
    head_log_scale_sd: float = 0.03
    ventricle_gain_male: float = 0.16
    ventricle_gain_female: float = 0.12
    ventricle_gain_sd: float = 0.08
    ventricle_gain_per_year: float = 0.003
    gm_shift_male: float = -0.12
    gm_shift_female: float = 0.12
    gm_shift_sd: float = 0.25
    gm_shift_per_year: float = -0.008
    age_mean: float = 55.0
    age_sd: float = 14.0
    effect_scale: float = 2.0
    age_effect_scale: float = 1.0
    ventricle_gain_max: float = 0.45
    wmh_log_load_at_60: float = -1.5
    wmh_log_load_per_year: float = 0.07
    wmh_log_load_sd: float = 0.7
    wmh_deep_per_load: float = 6.0
    atrophy_per_year: float = 0.004
    atrophy_onset: float = 20.0
    age_signs: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.age_signs) and self.age_signs >= 0):
            raise ConfigError(f"expected a scale ≥ 0, got {self.age_signs}", param="age_signs")

    def draw_signs(self, rng: np.random.Generator, age: float) -> dict[str, float]:
        """White-matter hyperintensity load and cortical atrophy of a subject of ``age``.

        Zero for both while ``age_signs`` is 0 (nothing is drawn then).
        """
        if self.age_signs == 0:
            return {"wmh_load": 0.0, "atrophy": 0.0}
        mu = self.wmh_log_load_at_60 + self.wmh_log_load_per_year * (age - 60.0)
        load = float(np.exp(rng.normal(mu, self.wmh_log_load_sd)))
        atrophy = self.atrophy_per_year * max(age - self.atrophy_onset, 0.0)
        return {
            "wmh_load": min(self.age_signs * load, 2.0),
            "atrophy": min(self.age_signs * atrophy, 0.9),
        }

    def draw(
        self,
        rng: np.random.Generator,
        sex: str,
        age_range: tuple[float, float] | None = None,
    ) -> dict[str, float]:
        """Draw age and the three anatomy parameters of one subject of ``sex``.

        ``age_range`` (``[low, high)`` in years) restricts the age to an age band: the normal
        draw is mapped to the same quantile of the normal truncated to the band, so the same
        random numbers are used either way.
        """
        male = sex == "male"

        def mean(m: float, f: float) -> float:
            mid = (m + f) / 2
            return mid + self.effect_scale * ((m if male else f) - mid)

        age = float(np.clip(rng.normal(self.age_mean, self.age_sd), 18, 90))
        if age_range is not None:
            age = self._in_band(age, age_range)
        years = (age - 50.0) * self.age_effect_scale
        head = float(
            np.exp(
                rng.normal(
                    mean(self.head_log_scale_male, self.head_log_scale_female),
                    self.head_log_scale_sd,
                )
            )
        )
        vent = rng.normal(
            mean(self.ventricle_gain_male, self.ventricle_gain_female), self.ventricle_gain_sd
        )
        vent = float(
            np.clip(vent + self.ventricle_gain_per_year * years, -0.1, self.ventricle_gain_max)
        )
        gm = rng.normal(mean(self.gm_shift_male, self.gm_shift_female), self.gm_shift_sd)
        gm = float(gm + self.gm_shift_per_year * years)
        return {"age": round(age), "head_scale": head, "ventricle_gain": vent, "gm_shift": gm}

    def _in_band(self, age: float, age_range: tuple[float, float]) -> float:
        """``age``'s quantile of N(mean, sd) mapped into the band (after rounding to years)."""
        from scipy import stats

        # Rounded ages must stay in the band: [low - 0.5, high - 0.5), within 18-90.
        lo = max(age_range[0], 18.0) - 0.5
        hi = min(age_range[1], 91.0) - 0.5
        a, b = ((lo - self.age_mean) / self.age_sd, (hi - self.age_mean) / self.age_sd)
        u = stats.norm.cdf((age - self.age_mean) / self.age_sd)
        lo_p, hi_p = stats.norm.cdf(a), stats.norm.cdf(b)
        z = stats.norm.ppf(lo_p + u * (hi_p - lo_p))
        return float(np.clip(self.age_mean + self.age_sd * z, lo, np.nextafter(hi, lo)))


def _parse_splits(splits: Mapping[str, float] | str) -> dict[str, float]:
    if isinstance(splits, str):
        out: dict[str, float] = {}
        for part in splits.split(","):
            name, sep, value = part.partition("=")
            try:
                if not sep or not name.strip():
                    raise ValueError
                out[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(
                    f"expected NAME=FRACTION pairs such as 'train=0.8,val=0.1,test=0.1', "
                    f"got '{splits}'",
                    param="splits",
                ) from None
        return out
    return {str(k): float(v) for k, v in splits.items()}


@dataclass(frozen=True, kw_only=True)
class PhantomConfig:
    """What :func:`build_phantom` makes.

    Args:
        n: Number of images.
        seed: Seed of every random draw; same seed and settings give identical files.
        size: Image side in pixels (32-256, a multiple of 8).
        male_fraction: Share of male subjects (exact up to rounding).
        age_bands: Edges of the ``age_band`` column in years (default 40, 60: ``<40``,
            ``40-59``, ``60+``).
        joint: Shares of the sex × age band cells instead of ``male_fraction`` (a mapping or
            ``"female/<40=0.1,male/60+=0.3,..."``; cells left out get 0; exact up to rounding).
            Each subject's age is then drawn within its band.
        tumour_rate: Share of images with a glioma (exact up to rounding).
        splits: Split name → fraction (``"train=0.8,val=0.1,test=0.1"`` or a mapping).
        sequences: Sequences to draw from, uniformly (subset of t1, t1ce, t2, flair).
        bit_depth: PNG bit depth, 8 or 16.
        caption_sex_rate: Share of captions that name the patient's sex (0 = all sex-neutral).
        anatomy: The sex- and age-linked anatomy model.
        workers: Processes used to render (default: up to 2, the CPUs available).
    """

    n: int
    seed: int = 0
    size: int = 64
    male_fraction: float = 0.5
    age_bands: Sequence[int] | str = AGE_BAND_EDGES
    joint: Mapping[str, float] | str | None = None
    tumour_rate: float = 0.7
    splits: Mapping[str, float] | str = "train=0.8,val=0.1,test=0.1"
    sequences: Sequence[str] = SEQUENCES
    bit_depth: int = 8
    caption_sex_rate: float = 0.0
    anatomy: AnatomyModel = field(default_factory=AnatomyModel)
    workers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n, int):
            raise ConfigError(f"expected a whole number of images, got {self.n}", param="n")
        require_count(self, 1, "n")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"expected a non-negative integer, got {self.seed}", param="seed")
        if not (32 <= self.size <= 256 and self.size % 8 == 0):
            raise ConfigError(
                f"expected a multiple of 8 between 32 and 256, got {self.size}", param="size"
            )
        for name in ("male_fraction", "tumour_rate", "caption_sex_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"expected a fraction in [0, 1], got {value}", param=name)
        splits = _parse_splits(self.splits)
        if not splits or any(v < 0 for v in splits.values()):
            raise ConfigError(f"split fractions must be non-negative, got {splits}", param="splits")
        if abs(sum(splits.values()) - 1.0) > 1e-6:
            raise ConfigError(
                f"split fractions must sum to 1, got {sum(splits.values()):.6g}", param="splits"
            )
        object.__setattr__(self, "splits", splits)
        seqs = tuple(s.strip().lower() for s in self.sequences)
        bad = [s for s in seqs if s not in SEQUENCES]
        if not seqs or bad:
            raise ConfigError(
                f"expected sequences from {', '.join(SEQUENCES)}, got {', '.join(seqs) or 'none'}",
                param="sequences",
            )
        object.__setattr__(self, "sequences", tuple(dict.fromkeys(seqs)))
        if self.bit_depth not in (8, 16):
            raise ConfigError(f"expected 8 or 16, got {self.bit_depth}", param="bit_depth")
        object.__setattr__(self, "age_bands", parse_age_bands(self.age_bands))
        if self.joint is not None:
            if self.male_fraction != 0.5:
                raise ConfigError(
                    "give either a male fraction or joint sex × age band shares, not both",
                    param="joint",
                )
            object.__setattr__(self, "joint", self._parse_joint(self.joint))
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"expected at least 1 worker, got {self.workers}", param="workers")

    def _parse_joint(self, joint: Mapping[str, float] | str) -> dict[str, float]:
        from ..target import parse_shares

        raw = parse_shares(joint, param="joint") if isinstance(joint, str) else dict(joint)
        bands = age_band_labels(self.age_bands)
        known = [cell_name(c) for c in cells([("female", "male"), bands])]
        unknown = sorted(set(map(str, raw)) - set(known))
        if unknown:
            raise ConfigError(
                f"expected sex/age band cells from {', '.join(known)}, got {', '.join(unknown)}",
                param="joint",
            )
        out = {c: float(raw.get(c, 0.0)) for c in known}
        if any(not math.isfinite(v) or v < 0 for v in out.values()):
            raise ConfigError(f"shares must be finite and ≥ 0, got {out}", param="joint")
        if abs(sum(out.values()) - 1.0) > 1e-6:
            raise ConfigError(
                f"cell shares must sum to 1, got {sum(out.values()):.6g}", param="joint"
            )
        return out

    def record(self) -> dict[str, Any]:
        """The settings as ``dataset.json`` records them (without ``workers``: no effect)."""
        cfg = asdict(self)
        cfg["sequences"] = list(self.sequences)
        cfg.pop("workers")
        return cfg

    @property
    def age_band_names(self) -> tuple[str, ...]:
        """Names of the age bands, youngest first."""
        return age_band_labels(self.age_bands)


@dataclass(frozen=True)
class PhantomResult:
    """What :func:`build_phantom` wrote.

    Attributes:
        root: The data set folder.
        metadata_csv: Its ``metadata.csv``.
        counts: Number of images per (split, sex).
    """

    root: Path
    metadata_csv: Path
    counts: dict[str, dict[str, int]]


# --------------------------------------------------------------------------------------------
# Rendering one slice
# --------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, size: int, knots: int, sd: float) -> np.ndarray:
    """A smooth random field: Gaussian values on a coarse grid, interpolated cubically."""
    coarse = rng.normal(0.0, sd, size=(knots, knots))
    return ndimage.zoom(coarse, size / knots, order=3, mode="nearest")[:size, :size]


def _magnify(qx: np.ndarray, qy: np.ndarray, cx: float, cy: float, gain: float, sigma: float):
    """Inverse map of a local magnification by ``1/(1-gain)`` at (cx, cy), fading over ``sigma``."""
    dx, dy = qx - cx, qy - cy
    w = 1.0 - gain * np.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))
    return cx + dx * w, cy + dy * w


def _lobe(x: float, y: float, z: float) -> str:
    """Approximate lobe of an MNI point (rules on coordinates, not an atlas lookup)."""
    if y < -68:
        return "occipital"
    if z < 8 and abs(x) > 30 and y < 5:
        return "temporal"
    if y > -22:
        return "frontal"
    return "parietal"


def _caption(
    rng: np.random.Generator,
    sequence: str,
    sex: str,
    age: int,
    tumour: dict[str, Any] | None,
    name_sex: bool,
) -> str:
    seq = SEQUENCE_NAMES[sequence]
    subject = f" of a {age}-year-old {sex} patient" if name_sex else ""
    if tumour is None:
        forms = (
            f"Axial {seq} MRI of the brain{subject} with no focal lesion.",
            f"Normal axial {seq} MR image of the brain{subject}.",
            f"Axial {seq} brain MRI{subject}: no mass or abnormal signal.",
        )
    else:
        where = f"the {tumour['side']} {tumour['lobe']} lobe"
        extra = " with rim enhancement" if sequence == "t1ce" else ""
        forms = (
            f"Axial {seq} MRI of the brain{subject} showing a glioma in {where}.",
            f"Axial {seq} MR image{subject} demonstrating an intra-axial mass in {where}"
            f"{extra} and surrounding oedema.",
            f"Axial {seq} brain MRI{subject}: glioma of {where}{extra}.",
        )
    return forms[int(rng.integers(len(forms)))]


def _age_signs(
    rng: np.random.Generator,
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    near_vent: np.ndarray,
    pix: float,
    atrophy: float,
    caps: float,
    deep_mean: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sulcal widening and white-matter hyperintensities on the warped tissue maps.

    Slices or volumes (2-D or 3-D maps). ``atrophy``: share of cortical grey matter turned to
    CSF; ``caps``: strength (0-1) of the periventricular caps; ``deep_mean``: expected number of
    deep lesions in the slice or volume. Returns
    the new grey-matter and CSF maps and the share of each pixel's white matter that is
    hyperintense (0-1).
    """
    vent = (csf > 0.3) & near_vent
    # Atrophy: grey matter next to sulcal CSF (not the ventricles') becomes CSF.
    sulcal = ndimage.gaussian_filter(np.where(vent, 0.0, csf), 2.0 / pix)
    lost = gm * np.clip(atrophy * 4.0 * sulcal, 0.0, 0.9)
    gm, csf = gm - lost, csf + lost
    # Periventricular caps: a band of white matter around the ventricles, as strong as the load.
    band = ndimage.gaussian_filter(vent.astype(np.float64), 6.0 / pix)
    wmh = np.clip(band / 0.15, 0.0, 1.0) * caps
    # Deep lesions: round foci in deep white matter, more with a larger load.
    deep = np.argwhere(wm > 0.6)
    n = int(rng.poisson(deep_mean)) if len(deep) else 0
    if n:
        grid = np.indices(gm.shape)
        for c in deep[rng.integers(len(deep), size=n)]:
            r = float(rng.uniform(1.5, 4.0)) / pix
            if gm.ndim == 2:
                dist = np.hypot(grid[0] - c[0], grid[1] - c[1])
            else:
                dist = np.sqrt(((grid - c.reshape(-1, *[1] * gm.ndim)) ** 2).sum(axis=0))
            wmh = np.maximum(wmh, np.clip(r - dist + 0.5, 0.0, 1.0))
    return gm, csf, (wmh * np.clip(wm, 0.0, 1.0)).astype(np.float32)


def grey_white_shift(gm: np.ndarray, wm: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Shift the logit of the grey-matter share of tissue by ``shift`` (tissue total kept)."""
    if shift == 0.0:
        return gm, wm
    t = gm + wm
    f = np.clip(gm / np.maximum(t, 1e-6), 1e-4, 1 - 1e-4)
    f = 1.0 / (1.0 + np.exp(-(np.log(f / (1 - f)) + shift)))
    return t * f, t * (1 - f)


def draw_contrast(rng: np.random.Generator, sequence: str) -> dict[str, float]:
    """The sequence's compartment signals, each with a small random jitter (±7%)."""
    return {k: v * float(rng.uniform(0.93, 1.07)) for k, v in CONTRASTS[sequence].items()}


def tissue_signal(
    sequence: str,
    contrast: dict[str, float],
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    wmh: np.ndarray | None,
) -> np.ndarray:
    """Healthy-tissue signal, with white-matter hyperintensities where ``wmh`` is given."""
    img = contrast["gm"] * gm + contrast["wm"] * wm + contrast["csf"] * csf
    if wmh is not None:
        # Hyperintense on T2/FLAIR (as oedema), slightly hypointense on T1 (toward grey matter).
        bright = contrast["oedema"] if sequence in ("t2", "flair") else contrast["gm"] * 1.1
        img = img + wmh * (bright - contrast["wm"])
    return img


def lesion_compartments(
    rng: np.random.Generator, d: np.ndarray, r: float, mask: np.ndarray, tissue: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Necrotic core, solid tumour and oedema (0-1 each) at distance ``d`` from the centre.

    ``d``: distance in pixels divided by the border's irregularity; ``r``: tumour radius in
    pixels. The core fills 55% of the radius, the oedema 1.6-2.4 radii of grey and white matter.
    """

    def ramp(edge: float) -> np.ndarray:
        return np.clip(edge - d + 0.5, 0.0, 1.0)

    inside = np.clip(mask, 0, 1)
    core = ramp(0.55 * r) * inside
    solid = ramp(r) * inside
    oedema = ramp(r * float(rng.uniform(1.6, 2.4))) * np.clip(tissue, 0, 1)
    return core, solid, oedema


def lesion_signal(
    img: np.ndarray,
    contrast: dict[str, float],
    core: np.ndarray,
    solid: np.ndarray,
    oedema: np.ndarray,
) -> np.ndarray:
    """Oedema over the tissue, then the solid tumour: necrotic core and enhancing rim."""
    rim = solid - core
    img = img * (1 - oedema) + contrast["oedema"] * oedema
    return img * (1 - solid) + contrast["core"] * core + contrast["rim"] * rim


def rician_and_clip(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rician noise inside the brain, a soft edge outside, scaled and clipped to [0, 1]."""
    sigma = float(rng.uniform(0.01, 0.035))
    noisy = np.hypot(img + rng.normal(0.0, sigma, img.shape), rng.normal(0.0, sigma, img.shape))
    img = np.where(mask > 0.5, noisy, img * np.clip(mask * 2, 0, 1))
    return np.clip(img / 1.15, 0.0, 1.0).astype(np.float32)


def render_phantom_slice(
    atlas: TissueAtlas,
    rng: np.random.Generator,
    *,
    sex: str,
    tumour: bool,
    sequence: str,
    size: int = 64,
    anatomy: AnatomyModel | None = None,
    return_tissue: bool = False,
    age_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one phantom slice.

    Args:
        atlas: Tissue maps from :func:`load_atlas`.
        rng: Generator for every random draw of this image.
        sex: ``"male"`` or ``"female"``.
        tumour: Whether to draw a glioma.
        sequence: One of :data:`SEQUENCES`.
        size: Output side in pixels.
        anatomy: Anatomy model (default :class:`AnatomyModel`).
        age_range: Draw the age within ``[low, high)`` years (an age band).
        return_tissue: Add the warped tissue maps (``gm``, ``wm``, ``csf``, ``mask``) and the
            lesion mask (``lesion``) to the parameters, for tests and figures.

    Returns:
        The image as float32 in [0, 1] of shape ``(size, size)``, and the drawn parameters.
    """
    anatomy = anatomy or AnatomyModel()
    subj = anatomy.draw(rng, sex, age_range)
    pix = FOV_MM / size
    half = (size - 1) / 2.0
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    px = (half - cols) * pix  # radiological: patient's right (+x) on the image's left
    py = (half - rows) * pix

    z0 = float(rng.uniform(*Z_BAND_MM))
    theta = math.radians(rng.normal(0.0, 5.0))
    tilt = rng.normal(0.0, 0.04, size=2)
    shift = rng.normal(0.0, 3.0, size=2)
    scale = subj["head_scale"] * math.exp(rng.normal(0.0, 0.01))
    elastic = [_smooth_field(rng, size, 5, 1.8) for _ in range(2)]

    # Output mm -> template mm (inverse mapping), before any lesion.
    qx, qy = px - shift[0], py - shift[1]
    c, s = math.cos(theta), math.sin(theta)
    qx, qy = c * qx + s * qy, -s * qx + c * qy
    qx, qy = qx + elastic[0], qy + elastic[1]
    qx, qy = qx / scale, qy / scale
    qy = qy + CENTRE_Y_MM
    vc = atlas.ventricle_centre
    qx, qy = _magnify(qx, qy, vc[0], vc[1], subj["ventricle_gain"], 22.0)

    def sample(mx: np.ndarray, my: np.ndarray) -> np.ndarray:
        mz = z0 + tilt[0] * mx + tilt[1] * (my - CENTRE_Y_MM)
        pts = np.stack([mx, my, mz, np.ones_like(mx)], axis=-1) @ atlas.inv_affine.T
        coords = pts[..., :3].transpose(2, 0, 1)
        return np.stack(
            [ndimage.map_coordinates(m, coords, order=1, mode="constant") for m in atlas.maps]
        ).astype(np.float32)

    maps = sample(qx, qy)
    lesion = None
    if tumour:
        tissue = maps[0] + maps[1]
        inner = ndimage.binary_erosion(maps[3] > 0.5, iterations=max(2, size // 12))
        candidates = np.argwhere(inner & (tissue > 0.6))
        if len(candidates):
            r0, c0 = candidates[int(rng.integers(len(candidates)))]
            radius_mm = float(rng.uniform(5.0, 14.0))
            tx, ty = float(qx[r0, c0]), float(qy[r0, c0])
            # Mass effect: tissue around the lesion is pushed outwards.
            qx, qy = _magnify(qx, qy, tx, ty, float(rng.uniform(0.15, 0.35)), 1.8 * radius_mm)
            maps = sample(qx, qy)
            tz = z0 + tilt[0] * tx + tilt[1] * (ty - CENTRE_Y_MM)
            lesion = {
                "row": int(r0),
                "col": int(c0),
                "radius_mm": radius_mm,
                "side": "right" if tx > 0 else "left",
                "lobe": _lobe(tx, ty, tz),
            }

    gm, wm, csf, mask = maps
    gm, wm = grey_white_shift(gm, wm, subj["gm_shift"])
    # The signs of ageing come from a child generator: the draws below stay as without them.
    child = rng.spawn(1)[0] if anatomy.age_signs else rng
    signs = anatomy.draw_signs(child, subj["age"])
    subj.update(signs)
    wmh = None
    if anatomy.age_signs:
        near_vent = np.hypot(qx - vc[0], qy - vc[1]) < 30.0
        deep = signs["wmh_load"] * anatomy.wmh_deep_per_load
        gm, csf, wmh = _age_signs(child, gm, wm, csf, near_vent, pix, signs["atrophy"],
                                  min(signs["wmh_load"], 1.0), deep)  # fmt: skip
    contrast = draw_contrast(rng, sequence)
    img = tissue_signal(sequence, contrast, gm, wm, csf, wmh)

    if lesion is not None:
        r = lesion["radius_mm"] / pix
        angle = np.arctan2(rows - lesion["row"], cols - lesion["col"])
        dist = np.hypot(rows - lesion["row"], cols - lesion["col"])
        wobble = np.ones_like(angle)
        for k in (2, 3, 5):
            wobble += rng.normal(0.0, 0.08) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
        core, solid, oedema = lesion_compartments(rng, dist / wobble, r, mask, gm + wm)
        img = lesion_signal(img, contrast, core, solid, oedema)

    u = (cols - half) / half
    v = (rows - half) / half
    b = rng.normal(0.0, 0.12, size=5)
    img = img * np.exp(b[0] * u + b[1] * v + b[2] * u * v + b[3] * u * u + b[4] * v * v)
    img = rician_and_clip(rng, img, mask)

    params = {
        **subj,
        "slice_z_mm": z0,
        "tumour_side": lesion["side"] if lesion else "",
        "tumour_lobe": lesion["lobe"] if lesion else "",
        "has_tumour": lesion is not None,
    }
    if return_tissue:
        params.update(
            gm=gm,
            wm=wm,
            csf=csf,
            mask=mask,
            lesion=np.maximum(solid, oedema) if lesion is not None else None,
        )
    return img, params


# --------------------------------------------------------------------------------------------
# Building a data set
# --------------------------------------------------------------------------------------------


def _largest_remainder(n: int, shares: Sequence[float]) -> list[int]:
    """Whole counts summing to ``n`` as close as rounding allows to ``n · shares``."""
    counts = [math.floor(n * s) for s in shares]
    remainders = [n * s - c for s, c in zip(shares, counts, strict=True)]
    for i in sorted(range(len(shares)), key=lambda i: -remainders[i])[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _assignments(
    cfg: PhantomConfig,
) -> tuple[list[str], list[bool], list[str], list[str], list[str | None]]:
    """Sex, tumour, split, sequence and (joint mode) age band of every image.

    Exact counts, seeded permutations.
    """
    rng = np.random.default_rng([cfg.seed, 0x5E7])
    n = cfg.n
    bands: list[str | None] = [None] * n
    if cfg.joint is None:
        n_male = round(n * cfg.male_fraction)
        sexes = np.array(["male"] * n_male + ["female"] * (n - n_male))[rng.permutation(n)]
    else:
        names = list(cfg.joint)
        counts = _largest_remainder(n, [cfg.joint[c] for c in names])
        drawn = np.repeat(np.array(names, dtype=object), counts)[rng.permutation(n)]
        sexes = np.array([split_cell(c)[0] for c in drawn])
        bands = [split_cell(c)[1] for c in drawn]
    n_tum = round(n * cfg.tumour_rate)
    tumours = np.array([True] * n_tum + [False] * (n - n_tum))[rng.permutation(n)]
    names = list(cfg.splits)
    counts = _largest_remainder(n, [cfg.splits[s] for s in names])
    splits = np.repeat(names, counts)[rng.permutation(n)]
    seqs = [cfg.sequences[i] for i in rng.integers(len(cfg.sequences), size=n)]
    return list(sexes), [bool(t) for t in tumours], [str(s) for s in splits], seqs, bands


def _render_one(
    cfg: PhantomConfig,
    i: int,
    sex: str,
    tumour: bool,
    split: str,
    sequence: str,
    band: str | None = None,
) -> tuple[bytes, dict[str, Any]]:
    atlas = load_atlas(1 if cfg.size > 128 else 2)
    rng = np.random.default_rng([cfg.seed, i])
    img, params = render_phantom_slice(
        atlas,
        rng,
        sex=sex,
        tumour=tumour,
        sequence=sequence,
        size=cfg.size,
        anatomy=cfg.anatomy,
        age_range=None if band is None else age_band_range(band, cfg.age_bands),
    )
    lesion = {"side": params["tumour_side"], "lobe": params["tumour_lobe"]}
    name_sex = bool(rng.random() < cfg.caption_sex_rate)
    caption = _caption(
        rng, sequence, sex, params["age"], lesion if params["has_tumour"] else None, name_sex
    )
    data = png_bytes(img, bit_depth=cfg.bit_depth)
    row = {
        "file": f"images/phantom_{i:06d}.png",
        "subject": f"phantom-{cfg.seed}-{i:06d}",
        "sex": sex,
        "age": params["age"],
        "age_band": age_band(params["age"], cfg.age_bands),
        "tumour": int(params["has_tumour"]),
        "sequence": sequence,
        "caption": caption,
        "split": split,
        "tumour_side": params["tumour_side"],
        "tumour_lobe": params["tumour_lobe"],
        "slice_z_mm": f"{params['slice_z_mm']:.2f}",
        **anatomy_columns(params),
    }
    return data, row


#: The drawn anatomy parameters written to ``metadata.csv``, five decimals each.
ANATOMY_COLUMNS = ("head_scale", "ventricle_gain", "gm_shift", "wmh_load", "atrophy")


def anatomy_columns(params: Mapping[str, Any]) -> dict[str, str]:
    """A subject's anatomy parameters as ``metadata.csv`` writes them."""
    return {k: f"{params[k]:.5f}" for k in ANATOMY_COLUMNS}


def split_sex_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Rows per split and sex."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        per = counts.setdefault(row["split"], {"female": 0, "male": 0})
        per[row["sex"]] += 1
    return counts


def render_chunks(
    work: Any, config: PhantomConfig, jobs: Sequence[Any], chunk: int, consume: Any
) -> None:
    """Run ``work(config, chunk_of_jobs)`` over ``jobs`` in chunks of ``chunk``.

    On up to ``config.workers`` processes (default: 2, or the CPUs there are); each chunk's
    results go to ``consume`` in order.
    """
    workers = config.workers or min(2, os.cpu_count() or 1)
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for results in pool.map(work, [config] * len(chunks), chunks):
                consume(results)
    else:
        for c in chunks:
            consume(work(config, c))


def _render_chunk(cfg: PhantomConfig, jobs: list[tuple[int, str, bool, str, str, str | None]]):
    return [_render_one(cfg, *job) for job in jobs]


def build_phantom(
    out: str | os.PathLike[str],
    config: PhantomConfig,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> PhantomResult:
    """Build a phantom data set: ``images/*.png``, ``metadata.csv`` and ``dataset.json``.

    The folder is built beside ``out`` and moved into place at the end, so an interrupted build
    leaves an earlier ``out`` untouched.

    Args:
        out: Destination folder (must be absent or empty unless ``overwrite``).
        config: What to build.
        overwrite: Replace an existing ``out``.
        progress: Called as images are rendered.

    Returns:
        Paths and per-split, per-sex counts.
    """
    sexes, tumours, splits, seqs, bands = _assignments(config)
    jobs = list(zip(range(config.n), sexes, tumours, splits, seqs, bands, strict=True))
    rows: list[dict[str, Any]] = []
    with building_dir(out, overwrite=overwrite, param="out") as tmp:
        (tmp / "images").mkdir()
        report(progress, "phantom", 0, config.n)

        def consume(results: list[tuple[bytes, dict[str, Any]]]) -> None:
            for data, row in results:
                (tmp / row["file"]).write_bytes(data)
                rows.append(row)
            report(progress, "phantom", len(rows), config.n)

        render_chunks(_render_chunk, config, jobs, 50, consume)
        atomic_write_text(tmp / "metadata.csv", csv_text(rows, METADATA_COLUMNS))
        counts = split_sex_counts(rows)
        atomic_write_json(
            tmp / "dataset.json",
            {
                "kind": "medfair-phantom",
                "format": "image folder + metadata.csv",
                "orientation": "axial, radiological (patient's right on image left), "
                "anterior at top",
                "intensity": f"PNG {config.bit_depth}-bit, 0 = background",
                "config": config.record(),
                "counts": counts,
                "n": len(rows),
            },
        )
    out = Path(out)
    return PhantomResult(root=out, metadata_csv=out / "metadata.csv", counts=counts)
