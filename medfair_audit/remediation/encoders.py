"""Differentiable image encoders for the semantics-preservation term.

The knowledge-distillation term compares ``E(x_tuned)`` with ``E(x_original)``, so ``E`` must let
gradients through (unlike :func:`medfair_audit.models.clip.encode_images`, which runs under
``inference_mode``). Two kinds of local folder load: a CLIP model (medfair's own CLIP, one
channel, images in [-1, 1], or a standard CLIP) and a DINOv2 model (its CLS token, as Shen et al.
combine CLIP and DINO features); a ``preprocessor_config.json`` beside the weights gives the
normalisation. Several encoders with weights are given as ``PATH[:WEIGHT]`` specs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_json
from ..exceptions import ModelError
from ..models._loading import adapt_images, check_no_pickle, load_errors, load_pretrained
from ..models.clip import image_embeddings

__all__ = ["ENCODER_KINDS", "ImageEncoder", "parse_encoder_spec"]

ENCODER_KINDS = ("clip", "dinov2")


class ImageEncoder(torch.nn.Module):
    """A frozen vision tower returning L2-normalised embeddings, with gradients to pixels.

    Args:
        model: A ``CLIPModel`` or a ``Dinov2Model``.
        image_size: Input side the tower expects.
        channels: Input channels the tower expects.
        mean: Per-channel mean after mapping pixels to [0, 1], or ``None`` to feed [-1, 1].
        std: Per-channel std matching ``mean``.
        source: Where it was loaded from (recorded in ``remediation.json``).
        kind: ``clip`` (projected image features) or ``dinov2`` (the CLS token).
    """

    def __init__(
        self,
        model: Any,
        *,
        image_size: int,
        channels: int,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        source: str = "",
        kind: str = "clip",
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.channels = channels
        self.source = source
        self.kind = kind
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) if mean else None)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) if std else None)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images in [-1, 1] → the tower's channels, size and normalisation."""
        x = adapt_images(images, self.channels, self.image_size)
        if self.mean is not None:
            x = ((x + 1) / 2 - self.mean) / self.std
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings ``(N, D)``; differentiable with respect to ``images``."""
        x = self.prepare(images)
        if self.kind == "clip":
            return image_embeddings(self.model, x)
        cls = self.model(pixel_values=x).pooler_output
        return torch.nn.functional.normalize(cls, dim=-1)

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write the tower (safetensors) and, with a normalisation, ``preprocessor_config.json``."""
        folder = Path(folder)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        if self.mean is not None:
            atomic_write_json(
                folder / "preprocessor_config.json",
                {
                    "image_mean": self.mean.flatten().tolist(),
                    "image_std": self.std.flatten().tolist(),
                },
            )
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike[str],
        *,
        trust_pickle: bool = False,
        param: str = "image_encoder",
    ) -> ImageEncoder:
        """Load a local CLIP or DINOv2 folder (e.g. written by :meth:`save_pretrained`).

        Raises:
            ModelError: Missing folder, neither CLIP nor DINOv2, or pickle weights without
                ``trust_pickle``.
        """
        from transformers import CLIPModel, Dinov2Model

        folder = check_no_pickle(folder, trust_pickle=trust_pickle, param=param)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ModelError(
                f"'{folder}' has no config.json: expected a CLIP model folder", param=param
            )
        try:
            kind = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
        except (*load_errors(), AttributeError) as exc:
            raise ModelError(f"cannot read '{config_path}': {exc}", param=param) from exc
        if kind not in ENCODER_KINDS:
            raise ModelError(
                f"'{folder}' holds a '{kind}' model: expected one of {', '.join(ENCODER_KINDS)}",
                param=param,
            )
        model = load_pretrained(
            CLIPModel if kind == "clip" else Dinov2Model,
            folder,
            trust_pickle=trust_pickle,
            param=param,
            what=f"a {kind} image encoder",
        )
        vision = model.config.vision_config if kind == "clip" else model.config
        mean = std = None
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            doc = json.loads(pre.read_text())
            mean, std = doc.get("image_mean"), doc.get("image_std")
        return cls(
            model,
            image_size=vision.image_size,
            channels=vision.num_channels,
            mean=mean,
            std=std,
            source=str(folder),
            kind=kind,
        )


def parse_encoder_spec(
    spec: str | os.PathLike[str], *, param: str = "image_encoder"
) -> tuple[Path, float]:
    """``PATH[:WEIGHT]`` → (path, weight); the weight defaults to 1.

    Raises:
        ModelError: A weight that is not a number ≥ 0.
    """
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail:
        return Path(text), 1.0
    try:
        weight = float(tail)
    except ValueError:
        return Path(text), 1.0
    if not weight >= 0:
        raise ModelError(f"expected PATH[:WEIGHT] with a weight ≥ 0, got '{text}'", param=param)
    return Path(head), weight
