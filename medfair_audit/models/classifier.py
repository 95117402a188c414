"""The subgroup classifier: the measuring instrument of the audit.

A small ResNet (``transformers.ResNetForImageClassification``) predicts a subgroup (e.g. sex) from
one image. Its probabilities are calibrated by temperature scaling on the validation split, and it
ships with ``evaluation.json``: the held-out confusion matrix (which the audit uses to correct
observed proportions for classifier error), accuracy, balanced accuracy, ROC AUC, expected
calibration error, and per-subgroup rates computed with fairlearn's ``MetricFrame``.

Augmentation is chosen not to destroy the signal: small rotations and shifts, left-right flips
and intensity jitter, but no rescaling (head size is one of the sex-linked cues).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .._io import atomic_write_json, building_dir, check_out, locks_out, null_non_finite
from ..attributes import cell_name, cells, check_level, sort_levels
from ..config import SPLITS, ClassifierConfig, ClassifierJob, Placement
from ..data.datasets import ImageFolderDataset
from ..exceptions import ConfigError, DataError, ModelError
from ..metrics.functional import expected_calibration_error, mean_output_matrix
from ..progress import ProgressCallback, report
from ..training import backward_step, batched, load_images, seed_everything, warmup_cosine
from ._loading import adapt_images, group_index, load_errors, load_pretrained

__all__ = [
    "ClassifierConfig",
    "ClassifierResult",
    "SubgroupClassifier",
    "evaluate_classifier",
    "random_affine",
    "train_classifier",
]


@dataclass(frozen=True)
class ClassifierResult:
    """What :func:`train_classifier` produced.

    Attributes:
        path: The classifier folder.
        evaluation: The content of its ``evaluation.json``.
        seconds: Training time.
    """

    path: Path
    evaluation: dict[str, Any]
    seconds: float

    def summary(self) -> list[str]:
        """Lines for a terminal (the per-subgroup table is in ``evaluation["by_group"]``)."""
        ev = self.evaluation

        def num(key: str) -> str:
            return "–" if ev.get(key) is None else f"{ev[key]:.3f}"

        return [
            f"wrote {self.path}: test balanced accuracy {num('balanced_accuracy')}, "
            f"ROC AUC {num('roc_auc')}, ECE {num('ece')} (n={ev['n']}) in {self.seconds:.0f} s",
            *(f"warning: {w}" for w in ev.get("warnings", [])),
        ]


class SubgroupClassifier:
    """A trained subgroup classifier with calibrated probabilities.

    Args:
        model: A ``ResNetForImageClassification`` (or any model returning ``.logits``).
        attribute: The attribute it predicts (e.g. ``"sex"``).
        groups: Group names in logit order.
        temperature: Calibration temperature (logits are divided by it).
        image_size: Input side it was trained at.
        channels: Input channels it expects.
        evaluation: Its held-out evaluation (``evaluation.json``), if known.
        architecture: ``resnet``, ``radiomics`` or ``resnet3d`` (see
            :class:`~medfair_audit.config.ClassifierConfig`).
        sequence: A 3-D classifier's volume sequence (``t1``, ...), if it was trained on one.
    """

    def __init__(
        self,
        model: Any,
        *,
        attribute: str,
        groups: Sequence[str],
        temperature: float = 1.0,
        image_size: int = 64,
        channels: int = 1,
        evaluation: dict[str, Any] | None = None,
        architecture: str = "resnet",
        sequence: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.architecture = architecture
        self.sequence = sequence
        self.attribute = attribute
        self.groups = tuple(groups)
        self.temperature = float(temperature)
        self.image_size = image_size
        self.channels = channels
        self.evaluation = evaluation

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attributes it predicts: one, or several for a joint classifier.

        A joint classifier's groups are the joint cells (``"female/<40"``) and its attribute
        is ``"sex,age_band"``.
        """
        return tuple(self.attribute.split(","))

    def save_pretrained(
        self, folder: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
    ) -> Path:
        """Write the weights (safetensors), ``classifier.json`` and ``evaluation.json``.

        Args:
            folder: Destination folder (created if needed).
            extra: More keys for ``classifier.json`` (training data, config, history).
        """
        folder = Path(folder)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        atomic_write_json(
            folder / "classifier.json",
            {
                "kind": "medfair-subgroup-classifier",
                "attribute": self.attribute,
                "groups": list(self.groups),
                "temperature": self.temperature,
                "image_size": self.image_size,
                "channels": self.channels,
                **({} if self.architecture == "resnet" else {"architecture": self.architecture}),
                **({} if self.sequence is None else {"sequence": self.sequence}),
                "input": (
                    "(N, 1, D, H, W) volume in [-1, 1], RAS+ (X, Y, Z); other sizes are resampled"
                    if self.volumetric
                    else "(N, C, H, W) float in [-1, 1]; other sizes and channels are converted"
                ),
                **(extra or {}),
            },
        )
        if self.evaluation is not None:
            atomic_write_json(
                folder / "evaluation.json", finite_or_null(self.evaluation), allow_nan=False
            )
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike[str],
        *,
        trust_pickle: bool = False,
        param: str = "classifier",
    ) -> SubgroupClassifier:
        """Load a folder written by :meth:`save_pretrained` (:func:`train_classifier`).

        Raises:
            ModelError: Missing files, or pickle weights without ``trust_pickle``.
        """
        what = "a medfair classifier"
        folder = Path(folder)
        architecture = _read_architecture(folder, param)
        model = load_pretrained(
            _model_class(architecture),
            folder,
            trust_pickle=trust_pickle,
            param=param,
            what=what,
            marker="classifier.json",
        )
        try:
            meta = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
            evaluation = None
            if (folder / "evaluation.json").is_file():
                evaluation = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
            return cls(
                model,
                attribute=meta["attribute"],
                groups=meta["groups"],
                temperature=meta["temperature"],
                image_size=meta["image_size"],
                channels=meta["channels"],
                evaluation=evaluation,
                architecture=architecture,
                sequence=meta.get("sequence"),
            )
        except load_errors() as exc:
            raise ModelError(
                f"cannot load {what} from '{folder}': {exc.__class__.__name__}: {exc}",
                param=param,
            ) from exc

    @property
    def volumetric(self) -> bool:
        """Whether it reads 3-D volumes ``(N, 1, D, H, W)`` rather than images."""
        return self.architecture == "resnet3d"

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Convert ``(N, C, H, W)`` images in [-1, 1] to this classifier's channels and size.

        A 3-D classifier takes ``(N, C, D, H, W)`` volumes and resamples them to its side.
        """
        if self.volumetric:
            if images.ndim != 5:
                raise DataError(
                    f"this classifier reads volumes of shape (N, C, D, H, W), got "
                    f"{tuple(images.shape)}",
                    param="images",
                )
            from .resnet3d import adapt_volumes

            return adapt_volumes(images, self.image_size)
        if images.ndim != 4:
            raise DataError(
                f"expected images of shape (N, C, H, W), got {tuple(images.shape)}", param="images"
            )
        return adapt_images(images, self.channels, self.image_size)

    @property
    def device(self) -> torch.device:
        """Where the classifier's weights are."""
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> SubgroupClassifier:
        """Move the classifier to ``device``; it stays in float32 whatever generation uses."""
        self.model.to(device=device, dtype=torch.float32)
        return self

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        # float32 on the classifier's device, outside any autocast of the generator
        return self.prepare(images.to(self.device, torch.float32))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits (differentiable: remediation backpropagates through them).

        Runs in float32 on the classifier's device even inside a half-precision autocast.
        """
        with torch.autocast(self.device.type, enabled=False):
            return self.model(pixel_values=self._input(images)).logits

    def predict_proba(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Calibrated probabilities ``(N, n_groups)`` on the CPU (images on any device)."""
        with torch.inference_mode():
            return batched(
                lambda x: F.softmax(self.logits(x) / self.temperature, -1),
                images,
                batch_size=batch_size,
            )

    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Penultimate (pooled) features ``(N, D)`` on the CPU, e.g. for FID in its space."""
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            return batched(
                lambda x: _features(self.model, self._input(x)), images, batch_size=batch_size
            )


def _model_class(architecture: str) -> Any:
    if architecture == "radiomics":
        from .radiomics import RadiomicsForImageClassification

        return RadiomicsForImageClassification
    if architecture == "resnet3d":
        from .resnet3d import ResNet3DForVolumeClassification

        return ResNet3DForVolumeClassification
    from transformers import ResNetForImageClassification

    return ResNetForImageClassification


def _read_architecture(folder: Path, param: str) -> str:
    """The ``architecture`` in ``classifier.json`` (``resnet`` where absent, as written before)."""
    from ..config import ARCHITECTURES

    try:
        meta = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
        architecture = meta.get("architecture", "resnet")
    except (OSError, ValueError, AttributeError):
        return "resnet"  # the loader reports the missing or broken file
    if architecture not in ARCHITECTURES:
        raise ModelError(
            f"'{folder}' holds a classifier of architecture '{architecture}'; this medfair reads "
            f"{', '.join(ARCHITECTURES)}",
            param=param,
        )
    return architecture


def _features(model: Any, x: torch.Tensor) -> torch.Tensor:
    """The classifier's feature space: pooled ResNet features, or the radiomics features."""
    if hasattr(model, "resnet"):
        return model.resnet(pixel_values=x).pooler_output.flatten(1)
    return model.features(x)


def _build(cfg: ClassifierConfig, groups: Sequence[str]) -> Any:
    labels = {
        "num_labels": len(groups),
        "id2label": dict(enumerate(groups)),
        "label2id": {g: i for i, g in enumerate(groups)},
    }
    if cfg.architecture == "resnet3d":
        from .resnet3d import ResNet3DConfig, ResNet3DForVolumeClassification

        return ResNet3DForVolumeClassification(
            ResNet3DConfig(num_channels=1, widths=cfg.widths, depths=cfg.depths, **labels)
        )
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=1,
        embedding_size=cfg.widths[0],
        hidden_sizes=list(cfg.widths),
        depths=list(cfg.depths),
        layer_type="basic",
        **labels,
    )
    return ResNetForImageClassification(config)


def random_affine(
    x: torch.Tensor,
    *,
    max_rotation: float,
    max_shift: float,
    generator: torch.Generator,
    max_gain: float = 0.1,
) -> torch.Tensor:
    """Random small rotations, shifts, left-right flips and intensity gains (differentiable).

    Args:
        x: ``(N, C, H, W)`` images or ``(N, C, X, Y, Z)`` RAS+ volumes in [-1, 1] (the
            background at -1 stays at -1). A volume turns in its axial plane (about its
            superior axis), shifts along all three axes and flips left-right (along ``X``).
        max_rotation: Largest rotation in degrees.
        max_shift: Largest shift as a fraction of the side.
        generator: CPU generator of the random draws (one set per image).
        max_gain: Largest relative change of the intensity above the background.
    """
    n, dims = len(x), x.ndim - 2
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_rotation)
    shift = (torch.rand(n, dims, generator=generator) * 2 - 1) * max_shift * 2
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros(n), torch.ones(n)
    if dims == 2:
        rows = [[cos * flip, -sin, shift[:, 0]], [sin * flip, cos, shift[:, 1]]]
    else:  # grid coordinates run (Z, Y, X): X (left-right) is the last
        rows = [
            [one, zero, zero, shift[:, 0]],
            [zero, cos, -sin * flip, shift[:, 1]],
            [zero, sin, cos * flip, shift[:, 2]],
        ]
    theta = torch.stack([torch.stack(row, 1) for row in rows], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    gain = 1 + (torch.rand(n, generator=generator) * 2 - 1) * max_gain
    return ((out + 1) * gain.view(-1, *[1] * (x.ndim - 1)).to(x) - 1).clamp(-1, 1)


def _augment(x: torch.Tensor, cfg: ClassifierConfig, generator: torch.Generator) -> torch.Tensor:
    return random_affine(
        x, max_rotation=cfg.max_rotation, max_shift=cfg.max_shift, generator=generator
    )


@dataclass(frozen=True)
class _FitJob:
    """What a fitting function needs: settings, data, splits, class weights, where, progress."""

    cfg: ClassifierConfig
    groups: Sequence[str]
    images: torch.Tensor
    y: torch.Tensor
    split: tuple[np.ndarray, np.ndarray]
    weights: torch.Tensor
    placement: Placement
    generator: torch.Generator
    progress: ProgressCallback | None


def _perturb(
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ClassifierConfig,
    weights: torch.Tensor,
    generator: torch.Generator,
    placement: Placement,
) -> torch.Tensor:
    """The training batch under ``cfg.robust``: as is, with noise, or its PGD worst case.

    PGD (Madry et al. 2018): ``robust_steps`` steps of size ``2.5·ε/steps`` along the
    normalised gradient of the loss, each projected back into the L2 ball of radius ``ε``
    around the image and into [-1, 1].
    """
    if cfg.robust == "none":
        return x
    eps = cfg.robust_eps
    if cfg.robust == "noise":
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        return (x + eps * noise).clamp(-1, 1)
    alpha = 2.5 * eps / cfg.robust_steps
    delta = torch.zeros_like(x)
    for _ in range(cfg.robust_steps):
        delta.requires_grad_(True)
        with placement.autocast():
            logits = model(pixel_values=x + delta).logits
        loss = F.cross_entropy(logits.float(), y, weight=weights)
        (grad,) = torch.autograd.grad(loss, delta)
        per_image = (-1, *[1] * (x.ndim - 1))
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(per_image)
        delta = delta.detach() + alpha * grad / norm
        scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        delta = ((x + delta * scale.view(per_image)).clamp(-1, 1) - x).detach()
    return x + delta


def _fit_network(job: _FitJob) -> tuple[Any, list[dict[str, Any]], int, float]:
    """The ResNet by AdamW with augmentation, early stopping on the validation split."""
    from sklearn.metrics import balanced_accuracy_score

    cfg, images, y, weights, placement, generator = (
        job.cfg, job.images, job.y, job.weights, job.placement, job.generator
    )  # fmt: skip
    train_idx, val_idx = job.split
    device = placement.device
    model = _build(cfg, job.groups).to(device)
    scaler = placement.grad_scaler()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    sched = warmup_cosine(opt, total=total)
    weights = weights.to(device)

    def val_logits() -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            out = batched(lambda x: model(pixel_values=x).logits, images[val_idx], device=device)
        model.train()
        return out

    best, best_state, best_epoch, history = -1.0, None, 0, []
    step = 0
    train_t = torch.from_numpy(train_idx)
    model.train()
    for epoch in range(cfg.epochs):
        order = train_t[torch.randperm(len(train_t), generator=generator)]
        running = 0.0
        for b in range(per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = _augment(images[idx].to(device), cfg, generator)  # draws on the CPU, work here
            target = y[idx].to(device)
            x = _perturb(model, x, target, cfg, weights, generator, placement)
            with placement.autocast():
                logits = model(pixel_values=x).logits
            loss = F.cross_entropy(logits.float(), target, weight=weights)
            backward_step(loss, model, opt, scaler, max_norm=None)
            sched.step()
            step += 1
            value = loss.item()  # the step's one synchronisation
            running += value
            report(job.progress, "train classifier", step, total, loss=value, epoch=epoch + 1)
        score = balanced_accuracy_score(y[val_idx].numpy(), val_logits().argmax(1).numpy())
        history.append(
            {"epoch": epoch + 1, "loss": running / per_epoch, "val_balanced_accuracy": float(score)}
        )
        if score > best:
            best, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch + 1 - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return model, history, best_epoch, best


#: Spread below which a radiomics feature counts as constant on the training images.
CONSTANT_FEATURE = 1e-3
#: L2 penalties :func:`_fit_radiomics` chooses from on the validation split.
RADIOMICS_L2 = (1e-4, 1e-3, 1e-2, 1e-1)


def _fit_radiomics(job: _FitJob) -> tuple[Any, list[dict[str, Any]], int, float]:
    """Logistic regression on radiomics features; the L2 penalty chosen on validation.

    Class-balanced like the network (each image weighted by its group's inverse frequency);
    the features are standardised with the training split's mean and spread.
    """
    from sklearn.metrics import balanced_accuracy_score

    from .radiomics import RadiomicsConfig, RadiomicsForImageClassification, fit_logistic

    groups, y = job.groups, job.y
    train_idx, val_idx = job.split
    model = RadiomicsForImageClassification(
        RadiomicsConfig(
            num_channels=1,
            num_labels=len(groups),
            id2label=dict(enumerate(groups)),
            label2id={g: i for i, g in enumerate(groups)},
        )
    )
    with torch.no_grad():
        raw = batched(model.raw_features, job.images)
        mean, std = raw[train_idx].mean(0), raw[train_idx].std(0)
        # A feature constant on the training images (e.g. a thumbnail corner that is always
        # background) carries no information; dividing by a tiny spread would turn faint
        # background noise in other images into huge inputs, so it is switched off instead.
        std = torch.where(std < CONSTANT_FEATURE, torch.full_like(std, 1e6), std)
        model.feature_mean.copy_(mean)
        model.feature_std.copy_(std)
        feats = (raw - mean) / std
    train_t, val_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    omega = job.weights[y[train_t]]
    best, best_fit, best_i, history = -1.0, None, 0, []
    for i, l2 in enumerate(RADIOMICS_L2):
        w, b = fit_logistic(feats[train_t], y[train_t], len(groups), l2=l2, sample_weight=omega)
        pred = (feats[val_t] @ w.T + b).argmax(1)
        score = float(balanced_accuracy_score(y[val_t].numpy(), pred.numpy()))
        history.append({"l2": l2, "val_balanced_accuracy": score})
        report(job.progress, "train classifier", i + 1, len(RADIOMICS_L2), l2=l2)
        if score > best:
            best, best_fit, best_i = score, (w, b), i + 1
    with torch.no_grad():
        model.linear.weight.copy_(best_fit[0])
        model.linear.bias.copy_(best_fit[1])
    return model.to(job.placement.device), history, best_i, best


def _fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature minimising the validation negative log-likelihood (Guo et al. 2017)."""
    logits, labels = logits.detach().clone(), labels.clone()  # may come from inference mode
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def evaluate_classifier(
    probs: np.ndarray, labels: np.ndarray, groups: Sequence[str], metadata: Any = None
) -> dict[str, Any]:
    """Held-out metrics of a classifier, with per-subgroup rates from fairlearn.

    Args:
        probs: Calibrated probabilities ``(N, K)``.
        labels: True group indices ``(N,)``.
        groups: Group names in index order.
        metadata: Optional DataFrame aligned with ``labels``; each of its
            :data:`BY_GROUP_COLUMNS` (where present) defines the subgroups of a per-group table,
            and so do their intersections (fairlearn's ``MetricFrame`` with several sensitive
            features; key ``"sex × age_band"``, groups ``"female/<40"``).

    Returns:
        JSON-ready metrics. ``confusion_matrix[i][j]`` counts images of true group ``i``
        predicted as ``j``; ``confusion_rates`` is its row-normalised form,
        P(predicted j | true i); ``soft_confusion[i][j]`` is the mean probability of ``j`` on
        images of true group ``i``; ``heldout`` keeps each image's label and probabilities (6
        decimals), which the audit resamples so that corrected shares carry the classifier's
        own uncertainty.
    """
    from fairlearn.metrics import (
        MetricFrame,
        false_negative_rate,
        false_positive_rate,
        selection_rate,
    )
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        roc_auc_score,
    )

    k = len(groups)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(labels, pred, labels=list(range(k)))
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    present = np.unique(labels)
    if len(present) < 2:
        auc = None
    elif k == 2:
        auc = float(roc_auc_score(labels, probs[:, 1]))
    else:
        auc = float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(k))))
    result: dict[str, Any] = {
        "groups": list(groups),
        "n": len(labels),
        "confusion_matrix": cm.tolist(),
        "confusion_rates": rates.tolist(),
        "soft_confusion": mean_output_matrix(labels, probs, k).tolist(),
        "heldout": {
            "labels": [int(v) for v in labels],
            "probs": np.round(np.asarray(probs, dtype=np.float64), 6).tolist(),
        },
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "roc_auc": auc,
        "ece": expected_calibration_error(probs, labels),
        "by_group": {},
    }
    if metadata is None:
        return result
    metrics: dict[str, Any] = {"accuracy": accuracy_score, "count": lambda y, p: len(y)}
    if k == 2:
        metrics.update(
            selection_rate=selection_rate,
            false_positive_rate=false_positive_rate,
            false_negative_rate=false_negative_rate,
        )
        result["positive_group"] = groups[1]
    present = [c for c in BY_GROUP_COLUMNS if c in metadata.columns]
    attributes = [c for c in present if c != "tumour"]
    sets = [[c] for c in present]
    if len(attributes) > 1:
        sets.append(attributes)
    for columns in sets:
        features = metadata[columns].astype(str).reset_index(drop=True)
        frame = MetricFrame(
            metrics=metrics,
            y_true=labels,
            y_pred=pred,
            sensitive_features=features[columns[0]] if len(columns) == 1 else features,
        )
        table = frame.by_group.dropna(how="all")
        result["by_group"][" × ".join(columns)] = {
            cell_name(g) if isinstance(g, tuple) else str(g): {
                m: float(table.loc[g, m]) for m in table.columns
            }
            for g in table.index
        }
    return result


#: Metadata columns whose subgroups :func:`evaluate_classifier` tabulates (where present).
BY_GROUP_COLUMNS = ("sex", "age_band", "grade", "tumour")


def split_warnings(
    meta: Any, y: torch.Tensor, groups: Sequence[str], parts: dict[str, np.ndarray]
) -> list[str]:
    """One line per split that holds no image of some group: what that breaks, what to do.

    A small cohort split 70/15/15 by subject easily leaves a group out of the test split.
    """
    out = []
    unit = "subjects" if "subject" in meta.columns else "images"
    for name, idx in parts.items():
        counts = torch.bincount(y[torch.as_tensor(idx)], minlength=len(groups)).tolist()
        missing = [g for g, c in zip(groups, counts, strict=True) if c == 0]
        if not missing:
            continue
        n_units = meta.iloc[idx]["subject"].nunique() if unit == "subjects" else len(idx)
        effect = (
            "its held-out confusion matrix cannot say how the classifier reads that group, so "
            "an audit with it cannot correct shares"
            if name == list(parts)[2]
            else "the classifier cannot learn or calibrate on that group there"
        )
        out.append(
            f"the '{name}' split ({n_units} {unit}) holds no "
            f"{', '.join(repr(g) for g in missing)} image: {effect}; use more subjects, or "
            "give metadata.csv a 'split' column (train/val/test) that puts every group in "
            "each split"
        )
    return out


def finite_or_null(evaluation: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``evaluation`` with every NaN or infinity ``None`` and ``null_reasons`` saying why.

    The nulling is the audit's own (:func:`~medfair_audit._io.null_non_finite`); the reason is
    a classifier's.

    ``evaluation.json`` is then valid JSON (no bare ``NaN``), and a metric that is not defined
    (a rate of a group without images in the test split) is ``null`` with its reason.
    """
    doc = json.loads(json.dumps(evaluation))  # a copy in JSON's own types (tuples as lists)
    found = null_non_finite(doc)
    if found:
        reason = (
            "not defined on the test split (a group without images, or a rate with nothing to "
            "count)"
        )
        doc["null_reasons"] = {**doc.get("null_reasons", {}), **dict.fromkeys(found, reason)}
    return doc


def _splits(
    meta: Any, seed: int, names: Sequence[str] = SPLITS
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], str]:
    """Train/val/test indices and the unit that was split (no subject spans two splits).

    ``names`` are the values of the ``split`` column used as train, val and test; names other
    than the default must all be present.
    """
    has_subject = "subject" in meta.columns and meta["subject"].astype(str).str.strip().ne("").all()
    names = tuple(names)
    present = set(meta.split) if "split" in meta.columns else set()
    if names != SPLITS and not set(names) <= present:
        missing = sorted(set(names) - present)
        raise DataError(
            f"the split column has no {', '.join(repr(m) for m in missing)} rows "
            f"(found {', '.join(sorted(map(str, present))) or 'no split column'})",
            param="splits",
        )
    if set(names) <= present:
        if has_subject:
            spans = meta.groupby(meta["subject"].astype(str))["split"].nunique()
            leaking = spans[spans > 1]
            if len(leaking):
                raise DataError(
                    f"{len(leaking)} subjects have images in more than one split (e.g. "
                    f"'{leaking.index[0]}'): held-out errors would be optimistic; give each "
                    "subject one split",
                    param="data",
                )
        return tuple(np.flatnonzero(meta.split == s) for s in names), (
            "predefined split column" + (" (subject-disjoint)" if has_subject else "")
        )
    rng = np.random.default_rng(seed)
    if has_subject:
        subjects = meta["subject"].astype(str).to_numpy()
        unique = rng.permutation(np.unique(subjects))
        n_val = n_test = max(1, len(unique) * 15 // 100)
        parts = (unique[n_val + n_test :], unique[:n_val], unique[n_val : n_val + n_test])
        return tuple(np.flatnonzero(np.isin(subjects, p)) for p in parts), "subject"
    order = rng.permutation(len(meta))
    n_val = n_test = max(1, len(meta) * 15 // 100)
    return (
        np.sort(order[n_val + n_test :]),
        np.sort(order[:n_val]),
        np.sort(order[n_val : n_val + n_test]),
    ), "image"


def _dataset(job: ClassifierJob, columns: Sequence[str]) -> ImageFolderDataset:
    """The labelled images (or, for ``resnet3d``, volumes of one sequence) of ``job.data``."""
    kwargs = {
        "require": tuple(columns),
        "size": job.config.image_size,
        "param": "data",
        "allow_outside_root": job.allow_outside_root,
    }
    if job.config.architecture != "resnet3d":
        return ImageFolderDataset(job.data, **kwargs)
    from ..data.volumes import VolumeFolderDataset

    dataset = VolumeFolderDataset(job.data, sequence=job.sequence, **kwargs)
    meta = dataset.metadata
    if job.sequence is None and "sequence" in meta.columns and meta["sequence"].nunique() > 1:
        found = ", ".join(sorted(map(str, meta["sequence"].unique())))
        raise ConfigError(
            f"'{job.data}' holds volumes of several sequences ({found}); choose one",
            param="sequence",
        )
    return dataset


@locks_out
def train_classifier(
    job: ClassifierJob, *, progress: ProgressCallback | None = None
) -> ClassifierResult:
    """Train a subgroup classifier on labelled images and save it with its evaluation.

    Uses the ``train``/``val``/``test`` splits of ``metadata.csv`` when all three exist (or the
    three named by ``job.splits``: e.g. an independent evaluation classifier trained on subjects
    the remediation's classifier never saw, ``("eval_train", "eval_val", "test")``), else a
    seeded 70/15/15 split, by subject where a ``subject`` column exists (slices of one BraTS
    subject never land in two splits; ``evaluation.json`` records the unit as ``split_unit``).
    Early stopping and temperature scaling use ``val``; every number in ``evaluation.json``
    comes from ``test``.

    Args:
        job: Data (``metadata.csv`` with the ``attribute`` column), destination, attribute,
            groups, splits, architecture and schedule, placement
            (:class:`~medfair_audit.config.ClassifierJob`; half precision trains under
            autocast, float16 with loss scaling; the model is saved in float32).
        progress: Called once per step with the loss.

    Returns:
        Path and evaluation.
    """
    data, out, cfg, placement = job.data, job.out, job.config, job.placement
    attribute, groups, splits = job.attribute, job.groups, job.splits
    overwrite = job.overwrite
    check_out(out, overwrite=overwrite)  # before the training, not after it
    placement = placement or Placement(device="cpu", dtype="float32")
    device = placement.device
    start = time.perf_counter()
    generator = seed_everything(cfg.seed)
    columns = attribute.split(",") if isinstance(attribute, str) else list(attribute)
    columns = [c.strip() for c in columns]
    if not all(columns) or len(set(columns)) != len(columns):
        raise ConfigError(f"expected distinct column names, got {columns}", param="attribute")
    attribute = ",".join(columns)
    dataset = _dataset(job, columns)
    meta = dataset.metadata
    if len(columns) == 1:
        labels_raw = meta[attribute].astype(str).str.strip()
        found = sort_levels(set(labels_raw))
    else:  # one joint classifier over every combination of the levels
        parts = [meta[c].astype(str).str.strip() for c in columns]
        for part in parts:
            for level in set(part):
                check_level(level, param="data")
        labels_raw = pd.Series([cell_name(t) for t in zip(*parts, strict=True)])
        combos = [cell_name(c) for c in cells([sort_levels(set(p)) for p in parts])]
        found = [c for c in combos if c in set(labels_raw)]  # a cell without images: no logit
    groups = tuple(sort_levels(groups)) if groups else tuple(found)
    unknown = sorted(set(found) - set(groups))
    if unknown:
        raise DataError(f"labels outside the known groups {list(groups)}: {unknown}", param="data")
    if len(groups) < 2:
        raise DataError(
            f"column '{attribute}' needs at least two groups, found {found}", param="attribute"
        )
    y = group_index(labels_raw.tolist(), groups)
    if len(tuple(splits)) != 3 or len(set(splits)) != 3:
        raise ConfigError(
            f"expected three distinct split names, got {list(splits)}", param="splits"
        )
    (train_idx, val_idx, test_idx), split_unit = _splits(meta, cfg.seed, splits)
    if min(len(train_idx), len(val_idx), len(test_idx)) == 0:
        raise DataError("the train, val and test splits must each hold images", param="data")
    images = load_images(dataset, progress=progress, stage="load images")
    weights = torch.bincount(y[train_idx], minlength=len(groups)).float()
    weights = weights.sum() / (len(groups) * weights.clamp(min=1))  # balanced
    fit = _fit_radiomics if cfg.architecture == "radiomics" else _fit_network
    model, history, best_epoch, best = fit(
        _FitJob(
            cfg=cfg, groups=groups, images=images, y=y, split=(train_idx, val_idx),
            weights=weights, placement=placement, generator=generator, progress=progress,
        )
    )  # fmt: skip
    model.eval()

    def val_logits() -> torch.Tensor:
        with torch.inference_mode():
            return batched(lambda x: model(pixel_values=x).logits, images[val_idx], device=device)

    temperature = _fit_temperature(val_logits(), y[val_idx])
    clf = SubgroupClassifier(
        model,
        attribute=attribute,
        groups=groups,
        temperature=temperature,
        image_size=cfg.image_size,
        channels=1,
        architecture=cfg.architecture,
        sequence=job.sequence,
    )
    probs = clf.predict_proba(images[test_idx]).numpy()
    evaluation = evaluate_classifier(
        probs, y[test_idx].numpy(), groups, meta.iloc[test_idx].reset_index(drop=True)
    )
    with torch.inference_mode():
        raw = batched(lambda x: F.softmax(clf.logits(x), -1), images[test_idx]).numpy()
    evaluation.update(
        attribute=attribute,
        split=list(splits)[2],
        splits=list(splits),
        split_unit=split_unit,
        temperature=temperature,
        ece_uncalibrated=expected_calibration_error(raw, y[test_idx].numpy()),
        best_epoch=best_epoch,
        val_balanced_accuracy=best,
        warnings=split_warnings(
            meta, y, groups, dict(zip(splits, (train_idx, val_idx, test_idx), strict=True))
        ),
    )
    evaluation = finite_or_null(evaluation)
    seconds = time.perf_counter() - start
    clf.evaluation = evaluation
    with building_dir(out, overwrite=overwrite) as tmp:
        clf.save_pretrained(
            tmp,
            extra={
                "data": str(data),
                "config": asdict(cfg),
                "history": history,
                "seconds": seconds,
            },
        )
    return ClassifierResult(path=Path(out), evaluation=evaluation, seconds=seconds)
