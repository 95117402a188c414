"""The training kit every trainer here uses: run folder, checkpoints, schedule, EMA, SNR, batching.

* :class:`RunFolder`: the ``<out>.partial/`` work folder of a run (out-exists check before the
  work, fresh start or resume, atomic finish, clean-up);
* :class:`Checkpointer`: one checkpoint format (``step-N/state.pt`` + ``state.json``) for every
  loop, saving anything with ``state_dict``/``load_state_dict`` plus the RNG states;
* :func:`warmup_cosine`: the learning-rate schedule;
* :func:`ema` and :func:`min_snr_weights`: diffusers' ``EMAModel`` and ``compute_snr``;
* :func:`batched`: inference over a large tensor in slices;
* :func:`backward_step`, :func:`seed_everything`, :func:`load_images`.

Why the schedule is not diffusers' ``get_cosine_schedule_with_warmup``: medfair's decays to a
floor (10% for the diffusion models) and counts the first step as warm-up step 1 (diffusers'
first step has a learning rate of 0). Changing either would change every trained model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ._io import atomic_write_json, building_dir, check_out
from .data.datasets import ImageDataset
from .exceptions import ConfigError
from .progress import ProgressCallback, report

__all__ = [
    "Checkpointer",
    "ParamState",
    "RunFolder",
    "backward_step",
    "batched",
    "ema",
    "load_images",
    "min_snr_weights",
    "seed_everything",
    "warmup_cosine",
]


class Stateful(Protocol):
    """Anything a checkpoint can hold: modules, optimisers, schedulers, EMAs, grad scalers."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def batched(
    fn: Callable[..., torch.Tensor],
    *inputs: Any,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``fn`` over slices of ``inputs`` (tensors of one length), concatenated on the CPU.

    Each slice is moved to ``device`` first when one is given; the outputs are moved back to
    the CPU so a large data set never sits on the accelerator at once. The result does not
    depend on ``batch_size``.
    """
    n = len(inputs[0])
    out = []
    for i in range(0, n, batch_size):
        chunk = [x[i : i + batch_size] for x in inputs]
        if device is not None:
            chunk = [x.to(device) for x in chunk]
        out.append(fn(*chunk).cpu())
    return torch.cat(out)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, total: int, warmup: int = 0, floor: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` × the peak at ``total``.

    Warm-up step ``s`` (0-based) runs at ``(s + 1) / warmup`` of the peak, so the first step
    already learns.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def ema(
    parameters: Iterable[torch.nn.Parameter],
    *,
    decay: float,
    warmup: bool = False,
    power: float = 2 / 3,
) -> Any:
    """An ``EMAModel`` of diffusers over ``parameters``.

    Without ``warmup`` the decay grows as ``min(decay, (1 + t) / (10 + t))``; with it as
    ``1 − (1 + t)^(−power)``. ``copy_to``, ``store``/``restore`` and ``state_dict`` are
    diffusers'.
    """
    from diffusers.training_utils import EMAModel

    return EMAModel(parameters, decay=decay, use_ema_warmup=warmup, power=power)


def min_snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights ``min(SNR(t), γ) / SNR(t)`` of ε-prediction (Hang et al. 2023).

    The SNR is diffusers' ``compute_snr``.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    return torch.clamp(snr, max=gamma) / snr


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


class ParamState:
    """A name → parameter mapping seen as one stateful object (remediation's trainable subset)."""

    def __init__(self, params: Mapping[str, torch.Tensor]) -> None:
        self.params = params

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the parameters' values, by name."""
        return {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy saved values into the parameters, in place."""
        for name, value in state.items():
            self.params[name].copy_(value)


class Checkpointer:
    """Checkpoints of a training loop: the state of named objects, the RNGs and JSON ``info``.

    Each checkpoint is a folder ``<root>/step-<N>`` written beside its final name and renamed into
    place, so the newest complete checkpoint is always usable; the ``keep`` newest are kept. Only
    tensors and plain containers are saved, read back with ``torch.load(weights_only=True)``.
    """

    def __init__(self, root: str | os.PathLike[str], *, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, if any."""
        done = sorted(p for p in self.root.glob("step-*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def save(
        self,
        step: int,
        objects: Mapping[str, Stateful | None],
        *,
        generator: torch.Generator | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint ``step``: every object's ``state_dict``, the RNGs and ``info``."""
        tensors: dict[str, Any] = {k: v.state_dict() for k, v in objects.items() if v is not None}
        tensors["rng"] = {"torch": torch.get_rng_state()}
        if generator is not None:
            tensors["rng"]["generator"] = generator.get_state()
        final = self.root / f"step-{step:07d}"
        tmp = self.root / f".step-{step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(tensors, tmp / "state.pt")
        atomic_write_json(tmp / "state.json", {"step": step, **(info or {})})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if self.keep > 0:
            for old in sorted(p for p in self.root.glob("step-*") if p != final)[: -self.keep + 1]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(
        self,
        objects: Mapping[str, Stateful | None],
        *,
        generator: torch.Generator | None = None,
        check: Callable[[dict[str, Any], Path], None] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Load the newest checkpoint into ``objects`` (those it holds) and the RNGs.

        Args:
            objects: Name → object, as given to :meth:`save`.
            generator: The loop's generator, restored too.
            check: Called with the checkpoint's ``info`` and folder before anything is loaded
                (e.g. to refuse a checkpoint made with other settings).

        Returns:
            ``(step, info)``; ``(0, {})`` when there is no checkpoint.

        Raises:
            ConfigError: The checkpoint cannot be read into these objects (``param="resume"``).
        """
        latest = self.latest()
        if latest is None:
            return 0, {}
        info = json.loads((latest / "state.json").read_text())
        if check is not None:
            check(info, latest)
        try:
            tensors = torch.load(latest / "state.pt", weights_only=True, map_location="cpu")
            for name, obj in objects.items():
                if obj is not None and name in tensors:
                    obj.load_state_dict(tensors[name])
        except (KeyError, RuntimeError, ValueError, TypeError, OSError) as exc:
            raise ConfigError(
                f"cannot resume from '{latest}' ({exc.__class__.__name__}: {exc}); "
                "run without --resume to start over",
                param="resume",
            ) from exc
        torch.set_rng_state(tensors["rng"]["torch"])
        if generator is not None and "generator" in tensors["rng"]:
            generator.set_state(tensors["rng"]["generator"])
        return info["step"], info

    def due(self, step: int, total: int, every: int) -> bool:
        """Whether a loop checkpoints after ``step`` of ``total`` (every ``every``, and last)."""
        return bool(every and step % every == 0) or step == total


class RunFolder:
    """The work folder ``<out>.partial/`` of a run that writes the folder ``out``.

    Creating it checks ``out`` first (a refusal comes before the work); without ``resume`` an
    earlier run's work folder is cleared. :meth:`finish` builds ``out`` beside itself and moves it
    into place when its block succeeds, then removes the work folder unless ``keep``.

    Args:
        out: The run's final folder.
        overwrite: Replace an existing ``out``.
        resume: Keep an earlier run's work folder (its checkpoints).
        keep: Keep the work folder after success.
        main: Whether this process owns the folders (rank 0 of a multi-process run).
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        resume: bool = False,
        keep: bool = False,
        main: bool = True,
    ) -> None:
        self.out = check_out(out, overwrite=overwrite)
        self.work = self.out.with_name(self.out.name + ".partial")
        self.overwrite, self.keep, self.main = overwrite, keep, main
        if main and self.work.exists() and not resume:
            shutil.rmtree(self.work)

    def checkpointer(self, name: str = "checkpoints", *, keep: int = 2) -> Checkpointer:
        """The checkpoints of one loop of the run, under ``<out>.partial/<name>``."""
        return Checkpointer(self.work / name, keep=keep)

    @contextlib.contextmanager
    def finish(self) -> Iterator[Path]:
        """Yield a folder to write ``out`` into; move it into place, then drop the work folder."""
        with building_dir(self.out, overwrite=self.overwrite) as tmp:
            yield tmp
        self.discard()

    def discard(self) -> None:
        """Remove the work folder (after success, unless ``keep``)."""
        if self.main and not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
