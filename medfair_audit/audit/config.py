"""What an audit takes: :class:`AuditConfig` and the prompts file reader."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..device import Placement
from ..exceptions import ConfigError, DataError
from ..generation.engine import GenerationConfig
from ..metrics.functional import DEFAULT_SMOOTHING
from ..models.pipelines import Speed
from ..target import Target

__all__ = ["AuditConfig", "read_prompts"]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and ``#`` comments are skipped.

    A line whose first character is ``#`` is a comment, and so is the rest of a line from a ``#``
    with white space on both sides (``... glioma.  # note`` keeps ``... glioma.``); a ``#``
    that touches a word (``lesion #3``) is text.

    Raises:
        DataError: Missing, unreadable (not UTF-8) or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file '{path}' does not exist or is not a file", param="prompts")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read '{path}' as UTF-8 text: {exc}", param="prompts") from exc
    prompts = [re.split(r"\s#(?:\s|$)", line, maxsplit=1)[0].strip() for line in lines]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise DataError(f"'{path}' holds no prompts (one per line expected)", param="prompts")
    return prompts


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Everything an audit needs.

    Args:
        checkpoint: Diffusers text-to-image pipeline folder.
        classifier: Subgroup classifier folder (``medfair train classifier``), or attribute →
            folder for several attributes (``{"sex": ..., "age_band": ...}``: marginals and
            joint cells, see :mod:`medfair_audit.models.attributes`). A joint classifier's folder
            alone also audits several attributes.
        prompts: Prompts to audit.
        target: Target proportions; its groups must be the classifier's (for several
            attributes, a joint target over the same attributes in the same order).
        out: Output folder (``audit.json``, ``audit.html``, ``images.csv``, grids, shards).
        generation: Images per prompt, seed, steps, guidance, batch (shard) size.
        reference: Image folder of real images with the attribute column, for FID/KID.
        reference_split: Use only this ``split`` of the reference.
        features: Quality features: ``classifier``, ``inception:PATH``, ``clip:PATH`` or
            ``dinov2:PATH`` (a bare folder is read as CLIP).
        mode: ``marginal`` (neutral prompts vs the target) or ``conditional`` (each prompt names
            one group; the share of images showing it).
        n_boot: Bootstrap resamples for intervals (also the simulations of the χ² null).
        confidence: Interval level.
        smoothing: ε of KL/JS smoothing (stated in the report).
        half_width: Interval half-width for the sample-size estimate.
        min_group_n: Below this many images a group's full-n FID carries a warning.
        min_cell_n: Several attributes: a joint cell with fewer images classified into it is
            reported with its n and a warning (its interval is wide; it is never hidden).
        quality_draws: Subsamples per size for FID/KID at equal n.
        trust_pickle: Allow pickle weights.
        save_images: Also write every generated image as PNG.
        placement: Device and generation dtype (the classifier and features run in float32).
        speed: Inference speed-ups (``torch.compile``, channels-last, VAE slicing/tiling).
        allow_outside_root: Read reference images that its ``metadata.csv`` places outside it.
        overwrite: Replace a finished audit (or anything else) in ``out``; its shards are
            kept and reused where their settings match. Without it, ``out`` must be absent,
            empty or hold an unfinished audit (which is resumed).
        overlap: Classify and write each batch while the next one is generated (``None``: on
            an accelerator, where the generator leaves the CPU free; off on the CPU, where both
            would share the same cores).
        batch_invariant: Compute each image on its own (a batch of one) inside every batch, so
            that the results are bit-identical whatever ``generation.shard_size`` (they equal
            a batch-size-1 audit's). Slower: batching is what makes generation fast.
        readers: Other classifiers of the same (one) attribute that read the same images: each
            one's corrected share and its disagreement with ``classifier`` (paired bootstrap),
            and, with a ``reference``, the share of images outside the real images' support in
            each classifier's feature space (:mod:`medfair_audit.audit.readers`).
        frd: Also the Fréchet Radiomics Distance per group (needs a ``reference`` and the
            ``frd`` extra; :mod:`medfair_audit.audit.frd`).
    """

    checkpoint: Path
    classifier: Path | Mapping[str, Path]
    prompts: Sequence[str]
    target: Target
    out: Path
    generation: GenerationConfig
    reference: Path | None = None
    reference_split: str | None = None
    features: str = "classifier"
    mode: str = "marginal"
    n_boot: int = 1000
    confidence: float = 0.95
    smoothing: float = DEFAULT_SMOOTHING
    half_width: float = 0.05
    min_group_n: int = 50
    min_cell_n: int = 20
    quality_draws: int = 20
    trust_pickle: bool = False
    save_images: bool = False
    placement: Placement = field(default_factory=Placement)
    speed: Speed = field(default_factory=Speed)
    allow_outside_root: bool = False
    overwrite: bool = False
    overlap: bool | None = None
    batch_invariant: bool = False
    readers: Sequence[Path] = ()
    frd: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "readers", tuple(Path(p) for p in self.readers))
        if self.readers and isinstance(self.classifier, Mapping) and len(self.classifier) > 1:
            raise ConfigError(
                "readers read one attribute; audit several attributes without --reader",
                param="reader",
            )
        object.__setattr__(self, "out", Path(self.out))
        if isinstance(self.classifier, Mapping):
            if not self.classifier:
                raise ConfigError("expected at least one classifier", param="classifier")
            specs = {str(k): Path(v) for k, v in self.classifier.items()}
            object.__setattr__(
                self, "classifier", specs if len(specs) > 1 else next(iter(specs.values()))
            )
        else:
            object.__setattr__(self, "classifier", Path(self.classifier))
        if self.frd and self.reference is None:
            raise ConfigError("FRD compares with real images: give --reference", param="frd")
        if self.min_cell_n < 0:
            raise ConfigError(f"expected min_cell_n ≥ 0, got {self.min_cell_n}", param="min_cell_n")
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"'{self.out}' is a file; expected a folder to write", param="out")
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ConfigError("expected at least one non-empty prompt", param="prompts")
        if self.mode not in ("marginal", "conditional"):
            raise ConfigError(
                f"expected 'marginal' or 'conditional', got '{self.mode}'", param="mode"
            )
        if self.n_boot < 0:
            raise ConfigError(f"expected n_boot ≥ 0, got {self.n_boot}", param="n_boot")
        if self.quality_draws < 2:
            raise ConfigError(
                f"expected quality_draws ≥ 2, got {self.quality_draws}", param="quality_draws"
            )
        if not 0 < self.half_width < 1:
            raise ConfigError(
                f"expected a half-width in (0, 1), got {self.half_width}", param="half_width"
            )
        if not 0 < self.confidence < 1:
            raise ConfigError(
                f"expected a level in (0, 1), got {self.confidence}", param="confidence"
            )
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"expected ε in [0, 1), got {self.smoothing}", param="smoothing")
