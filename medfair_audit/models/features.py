"""Pluggable feature extractors for FID and KID.

* ``classifier`` (default): the subgroup classifier's pooled penultimate features: an encoder
  trained on the user's own domain, which is what the DESIGN notes recommend for medical images.
* ``inception:PATH``: the standard FID Inception-v3 (torch-fidelity's implementation) with weights
  from a local file the user supplies (``pt_inception-2015-12-05-6726825d.pth``); needs the
  ``torch-fidelity`` package. Grey images are repeated to three channels and mapped to 0-255;
  torch-fidelity resizes to 299×299 as in the reference implementation.
* ``clip:PATH`` (or a bare folder path): a local CLIP model's image embeddings (e.g. the one
  ``medfair train clip`` made); the space CMMD is defined in.
* ``dinov2:PATH``: a local DINOv2 (transformers ``Dinov2Model``) folder's CLS embedding, the
  encoder Stein et al. 2023 recommend for generative evaluation. Images are repeated to three
  channels, resized to the model's image size and normalised with ImageNet statistics.

Embedding extractors (CLIP, DINOv2) also give CMMD in the audit's quality block.

The extractor's name and its input handling are recorded in every audit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..exceptions import ConfigError, ModelError
from ..training import batched

__all__ = ["EMBEDDING_PREFIXES", "FeatureExtractor", "get_extractor"]

#: ``--features`` kinds whose features are image embeddings (CMMD is computed on them).
EMBEDDING_PREFIXES = ("clip:", "dinov2:")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FeatureExtractor:
    """A named function from images ``(N, C, H, W)`` in [-1, 1] to features ``(N, D)``."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    details: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def embedding(self) -> bool:
        """Whether the features are image embeddings (CLIP, DINOv2), where CMMD is defined."""
        return self.name.startswith(EMBEDDING_PREFIXES)

    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features ``(N, D)`` in float64 on the CPU, computed in float32 batches on ``device``."""
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            return batched(
                lambda x: self.fn(x.to(self.device, torch.float32)).double(),
                images,
                batch_size=batch_size,
            )


def _inception(path: str, device: torch.device) -> FeatureExtractor:
    weights = Path(path)
    if not weights.is_file():
        raise ConfigError(
            f"Inception weights file '{weights}' does not exist (give the local "
            "FID Inception weights, e.g. pt_inception-2015-12-05-6726825d.pth)",
            param="features",
        )
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as exc:
        raise ConfigError(
            "--features inception needs the torch-fidelity package "
            f"(pip install torch-fidelity): {exc}",
            param="features",
        ) from exc
    net = (
        FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
        )
        .eval()
        .to(device)
    )

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return net(x8)[0].flatten(1)

    return FeatureExtractor(
        "inception-v3-fid",
        fn,
        {
            "weights": str(weights),
            "grayscale": "repeated to 3 channels",
            "resize": "299x299 bilinear (torch-fidelity, TF1-compatible)",
            "dim": 2048,
        },
        device,
    )


def _clip(folder: Path, trust_pickle: bool, device: torch.device) -> FeatureExtractor:
    from ..models.clip import CLIP

    model, _ = CLIP.from_pretrained(folder, trust_pickle=trust_pickle, param="features")
    model.to(device=device, dtype=torch.float32)
    size = model.config.vision_config.image_size
    channels = model.config.vision_config.num_channels

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True) if channels == 1 else x.repeat(1, 3, 1, 1)
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        out = model.get_image_features(pixel_values=x)
        return out if torch.is_tensor(out) else out.pooler_output

    return FeatureExtractor(
        f"clip:{folder}",
        fn,
        {
            "grayscale": f"converted to {channels} channel(s)",
            "resize": f"{size}x{size}",
            "dim": model.config.projection_dim,
        },
        device,
    )


def _dinov2(folder: Path, trust_pickle: bool, device: torch.device) -> FeatureExtractor:
    from transformers import Dinov2Model

    from ._loading import load_pretrained

    model = load_pretrained(
        Dinov2Model, folder, trust_pickle=trust_pickle, param="features", what="a DINOv2 model"
    )
    model.eval().to(device=device, dtype=torch.float32)
    size = model.config.image_size
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.mean(1, keepdim=True) if x.shape[1] != 1 else x
        x = (x.clamp(-1, 1) + 1) / 2
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bicubic", antialias=True, align_corners=False
            )
        x = (x.repeat(1, 3, 1, 1) - mean) / std
        return model(pixel_values=x).pooler_output

    return FeatureExtractor(
        f"dinov2:{folder}",
        fn,
        {
            "grayscale": "repeated to 3 channels, ImageNet mean/std",
            "resize": f"{size}x{size} bicubic",
            "layer": "CLS token after the final layer norm",
            "dim": model.config.hidden_size,
        },
        device,
    )


def get_extractor(
    spec: str,
    classifier: Any = None,
    *,
    trust_pickle: bool = False,
    device: torch.device | str = "cpu",
) -> FeatureExtractor:
    """Resolve ``--features``: ``classifier``, ``inception:PATH``, ``clip:PATH``, ``dinov2:PATH``.

    A bare folder path is read as ``clip:PATH``.

    The extractor runs in float32 on ``device`` (the classifier's features on the classifier's
    device) and returns float64 features on the CPU.
    """
    device = torch.device(device)
    if spec == "classifier":
        if classifier is None:
            raise ConfigError("'classifier' features need a classifier", param="features")
        return FeatureExtractor(
            "classifier-penultimate",
            classifier.features,
            {
                "grayscale": f"{classifier.channels} channel(s)",
                "resize": "x".join(
                    [str(classifier.image_size)] * (3 if classifier.volumetric else 2)
                ),
                "layer": "pooled output of the last ResNet stage",
            },
            classifier.device,
        )
    if spec.startswith("inception"):
        _, _, path = spec.partition(":")
        if not path:
            raise ConfigError("give the weights file: --features inception:PATH", param="features")
        return _inception(path, device)
    kind, _, path = spec.partition(":") if spec.startswith(EMBEDDING_PREFIXES) else ("", "", spec)
    folder = Path(path)
    if kind and not folder.is_dir():
        raise ConfigError(
            f"'{folder}' is not a folder (give --features {kind}:FOLDER)", param="features"
        )
    if folder.is_dir():
        loader, what = (_dinov2, "DINOv2") if kind == "dinov2" else (_clip, "CLIP")
        try:
            return loader(folder, trust_pickle, device)
        except ModelError as exc:
            raise ConfigError(
                f"'{folder}' is not a {what} model folder: {exc.message}", param="features"
            ) from exc
    raise ConfigError(
        f"expected 'classifier', 'inception:PATH', 'clip:PATH' or 'dinov2:PATH', got '{spec}'",
        param="features",
    )
