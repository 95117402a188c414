"""A reader of another model family: logistic regression on radiomics-style features.

The audit's default classifiers are small CNNs. A remediation guided by one CNN can learn what
moves CNNs rather than the attribute, so medfair also trains a reader that shares nothing with
them: fixed, hand-written features of a brain slice (its size and shape from the moments of a
soft foreground mask, the intensity histogram inside it, and the radial intensity profiles from
its centre) read by an L2-regularised logistic regression.

Every feature is a smooth function of the pixels, so the model is differentiable like the CNNs
(it can read, and if asked guide, like any classifier); the features are standardised with the
training split's mean and spread, which the model stores. It is a ``transformers``
``PreTrainedModel`` so it saves and loads as safetensors through the same safe loader as the
others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["RadiomicsConfig", "RadiomicsForImageClassification", "fit_logistic"]

#: Intensity-histogram bin centres inside the foreground, in [-1, 1] pixel units.
HIST_CENTRES = (-0.6, -0.3, 0.0, 0.3, 0.6, 0.9)
#: Ring centres of the radial profiles (normalised by the mask's spread, and absolute).
RINGS = (0.25, 0.75, 1.25, 1.75, 2.25)


class RadiomicsConfig(PretrainedConfig):
    """Configuration of :class:`RadiomicsForImageClassification`.

    Args:
        num_channels: Input channels (luma is read; colour inputs are converted before).
        thumbnail: Side of a block-mean thumbnail added to the features (0, the default: none;
            pixel-like features follow generation artifacts near the edges, which summaries
            of size, shape and intensity do not).
        background: Pixel value of the empty background (the images' minimum, -1).
    """

    model_type = "medfair-radiomics"

    def __init__(
        self,
        num_channels: int = 1,
        thumbnail: int = 0,
        background: float = -1.0,
        **kwargs: Any,
    ) -> None:
        self.num_channels = num_channels
        self.thumbnail = thumbnail
        self.background = background
        super().__init__(**kwargs)

    @property
    def num_features(self) -> int:
        """Length of the feature vector."""
        return 6 + len(HIST_CENTRES) + 2 * len(RINGS) + self.thumbnail**2


@dataclass
class _Output:
    logits: torch.Tensor


def radiomic_features(x: torch.Tensor, *, thumbnail: int = 0, background: float = -1.0) -> Any:
    """``(N, F)`` raw features of ``(N, 1, H, W)`` slices in [-1, 1] (differentiable)."""
    x = x.float()
    n, _, h, w = x.shape
    mask = torch.sigmoid((x - (background + 0.12)) / 0.012)[:, 0]  # soft foreground
    mass = mask.sum((1, 2)).clamp_min(1e-3)
    vs = torch.linspace(-1, 1, h, device=x.device)
    us = torch.linspace(-1, 1, w, device=x.device)
    v, u = torch.meshgrid(vs, us, indexing="ij")
    cu = (mask * u).sum((1, 2)) / mass
    cv = (mask * v).sum((1, 2)) / mass
    du, dv = u - cu[:, None, None], v - cv[:, None, None]
    su = ((mask * du**2).sum((1, 2)) / mass).clamp_min(1e-6).sqrt()
    sv = ((mask * dv**2).sum((1, 2)) / mass).clamp_min(1e-6).sqrt()
    cov = (mask * du * dv).sum((1, 2)) / mass / (su * sv)
    img = x[:, 0]
    mean = (mask * img).sum((1, 2)) / mass
    std = ((mask * (img - mean[:, None, None]) ** 2).sum((1, 2)) / mass).clamp_min(1e-6).sqrt()
    shape = [mask.mean((1, 2)), su, sv, cov, mean, std]
    hist = [
        (mask * torch.exp(-0.5 * ((img - c) / 0.15) ** 2)).sum((1, 2)) / mass for c in HIST_CENTRES
    ]
    r_norm = ((du / su[:, None, None]) ** 2 + (dv / sv[:, None, None]) ** 2).sqrt()
    r_abs = (du**2 + dv**2).sqrt() / 0.25  # rings of 0.25 image half-widths
    profiles = []
    for r in (r_norm, r_abs):
        for c in RINGS:
            ring = torch.exp(-0.5 * ((r - c) / 0.25) ** 2)
            profiles.append((ring * (img - background)).sum((1, 2)) / ring.sum((1, 2)))
    summary = torch.stack(shape + hist + profiles, 1)
    if not thumbnail:
        return summary
    thumb = F.adaptive_avg_pool2d(x[:, :1], thumbnail).flatten(1)
    return torch.cat([summary, thumb], 1).reshape(n, -1)


class RadiomicsForImageClassification(PreTrainedModel):
    """Logistic regression on :func:`radiomic_features` (standardised).

    ``model(pixel_values=x).logits`` as the ``transformers`` image classifiers; :meth:`features`
    gives the standardised feature vector (the audit's feature space of this reader).
    """

    config_class = RadiomicsConfig
    main_input_name = "pixel_values"

    def __init__(self, config: RadiomicsConfig) -> None:
        super().__init__(config)
        k = config.num_features
        self.register_buffer("feature_mean", torch.zeros(k))
        self.register_buffer("feature_std", torch.ones(k))
        self.linear = torch.nn.Linear(k, config.num_labels)
        self.post_init()

    def _init_weights(self, module: Any) -> None:
        if isinstance(module, torch.nn.Linear):
            module.weight.data.zero_()
            module.bias.data.zero_()

    def raw_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features before standardisation."""
        return radiomic_features(
            pixel_values[:, :1],
            thumbnail=self.config.thumbnail,
            background=self.config.background,
        )

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Standardised features ``(N, F)``."""
        return (self.raw_features(pixel_values) - self.feature_mean) / self.feature_std

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> _Output:
        """Logits ``(N, num_labels)``."""
        return _Output(logits=self.linear(self.features(pixel_values)))


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    l2: float,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS: weights ``(K, F)`` and bias ``(K,)``.

    Minimises ``Σ_i ω_i CE(W f_i + b, y_i) / Σ_i ω_i + l2/2 · ‖W‖²`` (the bias is not
    penalised), the objective of scikit-learn's ``LogisticRegression(C=1/(l2·Σω))``.
    """
    f = features.double()
    y = labels.long()
    om = (
        torch.ones(len(y), dtype=torch.float64) if sample_weight is None else sample_weight.double()
    )
    weight = torch.zeros(n_classes, f.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = F.cross_entropy(f @ weight.T + bias, y, reduction="none")
        loss = (om * ce).sum() / om.sum() + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach().float(), bias.detach().float()
