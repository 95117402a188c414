"""Where models run and in which precision: ``--device`` and ``--dtype``, resolved once.

* ``auto`` device: ``cuda`` if available, else ``mps``, else ``cpu``. Under ``accelerate launch``
  or ``torchrun`` with several processes, ``auto`` and ``cuda`` mean ``cuda:<local rank>``: each
  process uses its own GPU.
* ``auto`` dtype: ``bfloat16`` on GPUs that support it (``float16`` on older ones and on MPS),
  ``float32`` on the CPU. The dtype is the *generation* dtype (UNet, VAE, text encoders); the
  subgroup classifier and the FID feature extractor always run in ``float32``, and remediation
  keeps an ``float32`` master copy of what it trains.

Initial noise never comes from the device's generator: every image's latents are drawn in
``float32`` from its own CPU generator (:func:`initial_latents`) and then moved and cast, so a
seed gives the same starting point on any device, batch size and process count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .exceptions import ConfigError

__all__ = [
    "DEVICES",
    "DTYPES",
    "initial_latents",
    "is_out_of_memory",
    "resolve_device",
    "resolve_dtype",
]

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _local_process() -> tuple[int, int]:
    """(local rank, processes on this machine) from the launcher's environment."""
    import os

    rank = int(os.environ.get("LOCAL_RANK", os.environ.get("LOCAL_PROCESS_INDEX", "0")))
    world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return rank, world


def resolve_device(spec: str = "auto", *, param: str = "device") -> torch.device:
    """The ``torch.device`` a ``--device`` value names, checked to exist.

    Raises:
        ConfigError: Unknown spelling, or the device is not available on this machine.
    """
    spec = (spec or "auto").strip().lower()
    local, n_local = _local_process()
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif _mps_available():
            spec = "mps"
        else:
            spec = "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError(
                "--device mps: Apple's MPS backend is not available on this machine "
                "(use auto or cpu)",
                param=param,
            )
        return torch.device("mps")
    kind, _, index = spec.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"expected {', '.join(DEVICES)}, got '{spec}'", param=param)
    if not torch.cuda.is_available():
        raise ConfigError(
            f"'{spec}' is not available: this machine has no CUDA GPU usable by torch "
            f"{torch.__version__} (use --device auto or cpu)",
            param=param,
        )
    count = torch.cuda.device_count()
    if index:
        if n_local > 1:
            raise ConfigError(
                f"'{spec}' names one GPU but {n_local} processes run on this machine: use "
                "--device cuda (each process takes the GPU of its local rank)",
                param=param,
            )
        number = int(index)
    else:
        number = local
    if number >= count:
        raise ConfigError(
            f"'cuda:{number}' is not available: this machine has {count} CUDA device(s)",
            param=param,
        )
    return torch.device("cuda", number)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _bf16_supported(device: torch.device) -> bool:
    """Whether the chosen GPU (not the current one) runs bfloat16."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def resolve_dtype(spec: str, device: torch.device, *, param: str = "dtype") -> torch.dtype:
    """The generation dtype a ``--dtype`` value names on ``device``.

    Raises:
        ConfigError: Unknown spelling, or half precision the device cannot run.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if _bf16_supported(device) else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if spec not in DTYPES:
        raise ConfigError(f"expected auto, {', '.join(DTYPES)}, got '{spec}'", param=param)
    dtype = DTYPES[spec]
    if dtype == torch.bfloat16 and device.type == "cuda" and not _bf16_supported(device):
        raise ConfigError(f"{device} does not support bfloat16: use --dtype float16", param=param)
    return dtype


def initial_latents(
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard-normal latents ``(len(seeds), *shape)``, image ``i`` from ``seeds[i]`` alone.

    Each image's noise is drawn in ``float32`` from its own CPU generator and only then moved to
    ``device`` and cast to ``dtype``, so it does not depend on the device, the batch it is drawn
    in or the process that draws it.
    """
    rows = [
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds
    ]
    return torch.stack(rows).to(device=device, dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator (or CPU allocator) out-of-memory error."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )
