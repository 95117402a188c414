"""The process group for multi-process runs (``accelerate launch`` on GPUs, ``torchrun`` on CPUs).

accelerate only forms a process group on a machine without GPUs when asked for the CPU
explicitly; without that, every process of ``torchrun --nproc_per_node N`` would believe it was
alone and do all the work. ``cpu=True`` exactly when no CUDA device exists fixes that and changes
nothing for GPU runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["accelerator", "partial_state"]


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def partial_state() -> Any:
    """The ``PartialState`` of accelerate (rank, world size, barriers) for this run."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu_only())


def accelerator() -> Any:
    """An ``Accelerator`` for this run (device placement, reductions)."""
    from accelerate import Accelerator

    return Accelerator(cpu=_cpu_only())
