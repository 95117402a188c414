"""Pieces shared by the training code: seeding, safe weight loading, checkpoints, data in memory."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_json
from ..data.datasets import ImageDataset
from ..exceptions import MSG_NOT_A_DIR, ModelError
from ..progress import ProgressCallback, report

__all__ = [
    "PICKLE_SUFFIXES",
    "backward_step",
    "check_no_pickle",
    "load_errors",
    "load_images",
    "seed_everything",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a model loader reports as a one-line ``ModelError``.

    Missing, unreadable, truncated or malformed files; an empty or cut safetensors file raises
    ``SafetensorError``.
    """
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, SafetensorError)


def check_no_pickle(
    folder: str | os.PathLike[str], *, trust_pickle: bool = False, param: str = "checkpoint"
) -> Path:
    """Refuse a model folder whose weights exist only in a pickle format.

    Loading a pickle (``.bin``, ``.pt``, ``.ckpt``, ...) runs code stored in the file, so medfair
    loads safetensors only unless the user passes ``--trust-pickle``.

    Raises:
        ModelError: The folder is missing, or holds pickle weights without a safetensors twin
            and ``trust_pickle`` is false.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(MSG_NOT_A_DIR.format(path=folder), param=param)
    if trust_pickle:
        return folder
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
            if any(path.parent.glob("*.safetensors")):
                continue  # a safetensors twin is what gets loaded
            raise ModelError(
                f"'{path}' is a pickle file (loading it can run code); convert it to "
                "safetensors or pass --trust-pickle if you trust its source",
                param=param,
            )
    return folder


def load_images(
    dataset: ImageDataset, *, progress: ProgressCallback | None = None, stage: str = "load"
) -> torch.Tensor:
    """Load every image of a data set into one ``(N, C, H, W)`` float tensor in [-1, 1].

    Small data sets (thousands of 64×64 images, tens of MB) fit in memory; reading them once
    keeps PNG decoding out of every training epoch.
    """
    n = len(dataset)
    first = dataset[0]["image"]
    out = torch.empty((n, *first.shape), dtype=torch.float32)
    out[0] = first
    for i in range(1, n):
        out[i] = dataset[i]["image"]
        if i % 500 == 0 or i == n - 1:
            report(progress, stage, i + 1, n)
    return out


class TrainingState:
    """Checkpoints of a training loop: weights, optimiser, scheduler, EMA, step and RNG states.

    Each checkpoint is a folder ``<root>/step-<N>`` written beside its final name and renamed
    into place, so the latest complete checkpoint is always usable. Only tensors and plain
    containers are saved, and they are read back with ``torch.load(weights_only=True)``.
    """

    def __init__(self, root: str | os.PathLike[str], *, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, if any."""
        done = sorted(p for p in self.root.glob("step-*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def save(self, step: int, tensors: dict[str, Any], info: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` with ``tensors`` (state dicts) and JSON ``info``."""
        final = self.root / f"step-{step:07d}"
        tmp = self.root / f".step-{step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(tensors, tmp / "state.pt")
        atomic_write_json(tmp / "state.json", {"step": step, **info})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in self.root.glob("step-*") if p != final)[: -self.keep + 1]:
            if self.keep > 0:
                shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read a checkpoint written by :meth:`save`."""
        tensors = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        info = json.loads((folder / "state.json").read_text())
        return tensors, info

    def resume(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, generator: torch.Generator
    ) -> tuple[int, list[float], dict[str, Any]]:
        """Restore a training loop from the newest checkpoint, if there is one.

        Returns:
            The step to continue from, the loss history so far, and the checkpoint's tensors
            (for extra state such as an EMA); ``(0, [], {})`` when starting fresh.
        """
        latest = self.latest()
        if latest is None:
            return 0, [], {}
        tensors, info = self.load(latest)
        model.load_state_dict(tensors["model"])
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
        set_rng_state(tensors["rng"], generator)
        return info["step"], info["losses"], tensors

    def maybe_save(
        self,
        done: int,
        total: int,
        every: int,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        generator: torch.Generator,
        losses: list[float],
        **extra: Any,
    ) -> None:
        """Checkpoint a training loop every ``every`` steps (0: never) and at its last step."""
        if (every and done % every == 0) or done == total:
            self.save(
                done,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(generator),
                    **extra,
                },
                {"losses": losses},
            )


def backward_step(
    loss: torch.Tensor,
    model: torch.nn.Module,
    optimizer: Any,
    scaler: Any | None = None,
    max_norm: float | None = 1.0,
) -> None:
    """Zero the gradients, backward, clip to ``max_norm`` (``None``: no clipping) and step.

    With a ``GradScaler`` (float16 training) the loss is scaled, the gradients are unscaled
    before clipping, and a step with inf/NaN gradients is skipped by the scaler.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Everything random a training loop here draws from, as tensors."""
    return {"torch": torch.get_rng_state(), "generator": generator.get_state()}


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])


def adapt_images(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """``(N, C, H, W)`` images → ``channels`` (luma or repetition) and ``size``² (antialiased).

    Differentiable, so remediation can backpropagate through a model's input.
    """
    x = images.float()
    if x.shape[1] == 3 and channels == 1:
        x = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    elif x.shape[1] == 1 and channels == 3:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


def group_index(labels: Sequence[str], groups: Sequence[str]) -> torch.Tensor:
    """Labels → integer indices into ``groups``."""
    lookup = {g: i for i, g in enumerate(groups)}
    return torch.tensor([lookup[label] for label in labels], dtype=torch.long)
