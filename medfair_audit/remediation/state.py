"""Resumable checkpoints of a remediation run (trainable weights, optimiser, schedule, EMA, log).

The noise of each step comes from its own seed, so the state to keep is small and a resumed run
reaches the same final weights as an uninterrupted one. A checkpoint records the settings it was
made with, the number of processes included; resuming with other settings is a one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..exceptions import ConfigError
from .wiring import Models

__all__ = ["restore_state", "save_state"]


def save_state(
    work: Path,
    step: int,
    m: Models,
    optimizer: Any,
    scheduler: Any,
    ema: Any | None,
    key: dict[str, Any],
    log: list[dict[str, Any]],
    audits: list[dict[str, Any]],
    stopped: bool,
    scaler: Any | None = None,
) -> None:
    """Write checkpoint ``step`` under ``work/checkpoints``."""
    from ..models._common import TrainingState

    tensors = {
        "model": {n: p.detach().clone() for n, p in m.trainable.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }
    if ema is not None:
        tensors["ema"] = ema.state_dict()
    if scaler is not None:
        tensors["scaler"] = scaler.state_dict()
    info = {"config": key, "log": log, "audits": audits, "stopped": stopped}
    TrainingState(work / "checkpoints").save(step, tensors, info)


def restore_state(
    work: Path,
    m: Models,
    optimizer: Any,
    scheduler: Any,
    ema: Any | None,
    key: dict[str, Any],
    *,
    scaler: Any | None = None,
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Load the newest checkpoint (``(0, [], [], False)`` when there is none).

    Raises:
        ConfigError: The checkpoint was made with other settings or another number of processes.
    """
    from ..models._common import TrainingState

    state = TrainingState(work / "checkpoints")
    latest = state.latest()
    if latest is None:
        return 0, [], [], False
    tensors, info = state.load(latest)
    if info["config"] != json.loads(json.dumps(key)):
        changed = sorted(k for k, v in key.items() if info["config"].get(k) != v)
        raise ConfigError(
            f"the checkpoint in '{latest}' was made with other settings ({', '.join(changed)}); "
            "run without --resume to start over",
            param="resume",
        )
    with torch.no_grad():
        for name, value in tensors["model"].items():
            m.trainable[name].copy_(value)
    optimizer.load_state_dict(tensors["optimizer"])
    scheduler.load_state_dict(tensors["scheduler"])
    torch.set_rng_state(tensors["rng"]["torch"])
    if ema is not None and "ema" in tensors:
        ema.load_state_dict(tensors["ema"])
        ema.to(m.device)  # the checkpoint is read onto the CPU
    if scaler is not None and "scaler" in tensors:
        scaler.load_state_dict(tensors["scaler"])
    return info["step"], info["log"], info["audits"], info["stopped"]
