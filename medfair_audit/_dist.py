"""The process group for multi-process runs (``accelerate launch`` on GPUs, ``torchrun`` on CPUs).

accelerate only forms a process group on a machine without GPUs when asked for the CPU
explicitly; without that, every process of ``torchrun --nproc_per_node N`` would believe it was
alone and do all the work. ``cpu=True`` exactly when no CUDA device exists fixes that and changes
nothing for GPU runs.
"""

from __future__ import annotations

import datetime
from typing import Any

__all__ = ["accelerator", "is_main_process", "num_processes", "partial_state"]

#: How long a process waits for the others at a collective (NCCL's default is 10 minutes): rank
#: 0 runs the quick audits and writes checkpoints while the others wait in the next all-reduce,
#: which at Stable Diffusion size can take longer than that.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def _cpu(device: Any) -> bool:
    return _cpu_only() if device is None else device.type == "cpu"


def _pin(device: Any) -> None:
    """Make ``cuda:N`` the current CUDA device before anything says plain ``cuda``.

    accelerate's state, its reductions and kernels' workspaces then work on GPU N and set
    nothing up on GPU 0.
    """
    import torch

    if device is not None and device.type == "cuda" and device.index is not None:
        if torch.cuda.current_device() != device.index:
            torch.cuda.set_device(device)


def partial_state(device: Any = None) -> Any:
    """The ``PartialState`` of accelerate (rank, world size, barriers) for this run.

    Args:
        device: The run's ``torch.device``: the process group's backend follows it (gloo for
            the CPU, nccl for GPUs); default: the GPU if there is one.
    """
    from accelerate import PartialState

    _pin(device)
    return PartialState(cpu=_cpu(device), timeout=PROCESS_GROUP_TIMEOUT)


def accelerator(device: Any = None) -> Any:
    """An ``Accelerator`` for this run (process group, reductions), on ``device``'s kind."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    partial_state(device)  # the device pinned, the process group with its timeout, if not yet
    return Accelerator(
        cpu=_cpu(device), kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)]
    )


def is_main_process(device: Any = None) -> bool:
    """Whether this process writes and prints (rank 0, or the only process)."""
    return bool(partial_state(device).is_main_process)


def num_processes(device: Any = None) -> int:
    """How many processes share this run (1 without ``torchrun``/``accelerate launch``)."""
    return int(partial_state(device).num_processes)
