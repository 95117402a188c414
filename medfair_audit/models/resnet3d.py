"""A 3-D subgroup classifier: MONAI's ResNet on whole volumes.

``monai.networks.nets.ResNet`` with ``spatial_dims=3`` and basic blocks reads a ``(N, 1, S, S,
S)`` volume; a linear head on its pooled features gives the logits. It is wrapped as a
``transformers`` ``PreTrainedModel`` (like the radiomics reader) so that it saves as
safetensors and loads through medfair's one safe loader: ``config.json`` names the MONAI
network's settings, and nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["ResNet3DConfig", "ResNet3DForVolumeClassification", "adapt_volumes"]


class ResNet3DConfig(PretrainedConfig):
    """Configuration of :class:`ResNet3DForVolumeClassification`.

    Args:
        num_channels: Input channels.
        widths: Channels of the four ResNet stages (MONAI's ``block_inplanes``).
        depths: Basic blocks per stage (MONAI's ``layers``).
    """

    model_type = "medfair-resnet3d"

    def __init__(
        self,
        num_channels: int = 1,
        widths: tuple[int, ...] | list[int] = (8, 16, 32, 64),
        depths: tuple[int, ...] | list[int] = (1, 1, 1, 1),
        **kwargs: Any,
    ) -> None:
        self.num_channels = num_channels
        self.widths = [int(w) for w in widths]
        self.depths = [int(d) for d in depths]
        super().__init__(**kwargs)


@dataclass
class _Output:
    logits: torch.Tensor


class ResNet3DForVolumeClassification(PreTrainedModel):
    """MONAI's 3-D ResNet and a linear head.

    ``model(pixel_values=x).logits`` as the ``transformers`` image classifiers; :meth:`features`
    gives the pooled features (the audit's feature space of this classifier, e.g. for 3-D FID).
    """

    config_class = ResNet3DConfig
    main_input_name = "pixel_values"

    def __init__(self, config: ResNet3DConfig) -> None:
        super().__init__(config)
        from monai.networks.nets import ResNet

        self.body = ResNet(
            block="basic",
            layers=list(config.depths),
            block_inplanes=list(config.widths),
            spatial_dims=3,
            n_input_channels=config.num_channels,
            conv1_t_size=3,
            conv1_t_stride=1,
            no_max_pool=True,
            feed_forward=False,
        )
        self.head = torch.nn.Linear(config.widths[-1], config.num_labels)
        self.post_init()

    def _init_weights(self, module: Any) -> None:
        # MONAI initialises its own layers (Kaiming for convolutions); only the head is ours
        if module is getattr(self, "head", None):
            torch.nn.init.zeros_(module.bias)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, widths[-1])``."""
        return self.body(pixel_values).flatten(1)

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> _Output:
        """Logits ``(N, num_labels)``."""
        return _Output(logits=self.head(self.features(pixel_values)))


def adapt_volumes(volumes: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, C, D, H, W)`` volumes → one channel (the first) and ``size``³ (trilinear).

    Differentiable, so remediation could backpropagate through it like through 2-D inputs.
    """
    x = volumes.float()[:, :1]
    if tuple(x.shape[-3:]) != (size, size, size):
        x = torch.nn.functional.interpolate(
            x, size=(size, size, size), mode="trilinear", align_corners=False
        )
    return x
