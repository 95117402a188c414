"""Resumable checkpoints of a remediation run (trainable weights, optimiser, schedule, EMA, log).

The noise of each step comes from its own seed, so the state to keep is small and a resumed run
reaches the same final weights as an uninterrupted one. A checkpoint records the settings it was
made with, the number of processes included; resuming with other settings is a one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from ..training import Checkpointer, ParamState
from .wiring import Models

__all__ = ["restore_state", "save_state"]


def _objects(m: Models, optimizer: Any, scheduler: Any, ema: Any, scaler: Any) -> dict:
    return {
        "model": ParamState(m.trainable),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "ema": ema,
        "scaler": scaler,
    }


def save_state(
    checkpoints: Checkpointer,
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
    """Write checkpoint ``step`` (the run folder's ``checkpoints``)."""
    info = {"config": key, "log": log, "audits": audits, "stopped": stopped}
    checkpoints.save(step, _objects(m, optimizer, scheduler, ema, scaler), info=info)


def restore_state(
    checkpoints: Checkpointer,
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

    def same_settings(info: dict[str, Any], latest: Path) -> None:
        if info["config"] != json.loads(json.dumps(key)):
            changed = sorted(k for k, v in key.items() if info["config"].get(k) != v)
            raise ConfigError(
                f"the checkpoint in '{latest}' was made with other settings "
                f"({', '.join(changed)}); run without --resume to start over",
                param="resume",
            )

    objects = _objects(m, optimizer, scheduler, ema, scaler)
    step, info = checkpoints.restore(objects, check=same_settings)
    if not info:
        return 0, [], [], False
    if ema is not None:
        ema.to(m.device)  # the checkpoint is read onto the CPU
    return step, info["log"], info["audits"], info["stopped"]
