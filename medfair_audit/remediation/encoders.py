"""Differentiable image encoders for the CLIP-consistency term.

The knowledge-distillation term compares ``E(x_tuned)`` with ``E(x_original)``, so ``E`` must let
gradients through (unlike :func:`medfair_audit.models.clip.encode_images`, which runs under
``inference_mode``). Any local CLIP folder works: medfair's own CLIP (one channel, images in
[-1, 1]) or a standard CLIP whose ``preprocessor_config.json`` gives the normalisation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..exceptions import ModelError
from ..models._common import adapt_images, check_no_pickle
from ..models.clip import image_embeddings

__all__ = ["ImageEncoder", "load_image_encoder"]


class ImageEncoder(torch.nn.Module):
    """A frozen CLIP vision tower returning L2-normalised embeddings, with gradients to pixels.

    Args:
        model: A ``CLIPModel`` (or ``CLIPVisionModelWithProjection``).
        image_size: Input side the tower expects.
        channels: Input channels the tower expects.
        mean: Per-channel mean after mapping pixels to [0, 1], or ``None`` to feed [-1, 1].
        std: Per-channel std matching ``mean``.
        source: Where it was loaded from (recorded in ``remediation.json``).
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
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.channels = channels
        self.source = source
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
        return image_embeddings(self.model, self.prepare(images))


def load_image_encoder(
    path: str | os.PathLike[str], *, trust_pickle: bool = False, param: str = "image_encoder"
) -> ImageEncoder:
    """Load a local CLIP folder as an :class:`ImageEncoder`.

    Raises:
        ModelError: Missing folder, not a CLIP model, or pickle weights without ``trust_pickle``.
    """
    from transformers import CLIPModel

    folder = check_no_pickle(path, trust_pickle=trust_pickle, param=param)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"'{folder}' has no config.json: expected a CLIP model folder", param=param
        )
    try:
        model = CLIPModel.from_pretrained(str(folder), use_safetensors=not trust_pickle)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"cannot load a CLIP image encoder from '{folder}': {exc}", param=param
        ) from exc
    vision = model.config.vision_config
    mean = std = None
    pre = Path(folder) / "preprocessor_config.json"
    if pre.is_file():
        doc = json.loads(pre.read_text())
        mean, std = doc.get("image_mean"), doc.get("image_std")
    return ImageEncoder(
        model,
        image_size=vision.image_size,
        channels=vision.num_channels,
        mean=mean,
        std=std,
        source=str(folder),
    )
