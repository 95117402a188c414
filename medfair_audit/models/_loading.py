"""The one safe loader of model folders, and the input conversion every model shares.

Every model here has a ``save_pretrained(folder)`` / ``from_pretrained(folder, *,
trust_pickle=False)`` pair; the loading half goes through :func:`load_pretrained`, which refuses
pickle weights unless trusted, checks the folder's marker file and turns every read failure into a
one-line :class:`~medfair_audit.exceptions.ModelError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..exceptions import MSG_NOT_A_DIR, ModelError

__all__ = [
    "PICKLE_SUFFIXES",
    "adapt_images",
    "check_no_pickle",
    "group_index",
    "load_errors",
    "load_pretrained",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


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


class _DropFallbackErrors(logging.Filter):
    """Drop diffusers' "error" about a missing safetensors file that it then loads around."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("An error occurred while trying to fetch")
            or message.startswith("Defaulting to unsafe serialization")
        )


@contextlib.contextmanager
def _quiet_pickle_fallback(trust_pickle: bool) -> Iterator[None]:
    """Silence diffusers' fallback "error" under ``--trust-pickle``.

    A component without safetensors is then loaded from its pickle file, as asked; diffusers
    logs that as an error first, which would read as a failure of a run that succeeded.
    """
    if not trust_pickle:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("diffusers.models.modeling_utils",)]
    drop = _DropFallbackErrors()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def load_pretrained(
    cls: Any,
    folder: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    param: str,
    what: str,
    marker: str | None = "config.json",
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained(folder)`` (transformers or diffusers), safely.

    Args:
        cls: A class with ``from_pretrained`` (a transformers model or a diffusers pipeline).
        folder: The local folder.
        trust_pickle: Allow pickle weights (they run code when loaded); safetensors are still
            preferred where both exist.
        param: Argument name used in error messages.
        what: What the folder should hold, for messages (``"a CLIP model"``).
        marker: A file the folder must have (``None``: no check).
        **kwargs: Passed on to ``from_pretrained``.

    Raises:
        ModelError: Missing folder or marker, pickle weights without ``trust_pickle``, or files
            that cannot be read.
    """
    folder = check_no_pickle(folder, trust_pickle=trust_pickle, param=param)
    if marker and not (folder / marker).is_file():
        raise ModelError(f"'{folder}' has no {marker}: not {what} folder", param=param)
    try:
        with _quiet_pickle_fallback(trust_pickle):
            return cls.from_pretrained(
                str(folder), use_safetensors=None if trust_pickle else True, **kwargs
            )
    except load_errors() as exc:
        raise ModelError(
            f"cannot load {what} from '{folder}': {exc.__class__.__name__}: {exc}", param=param
        ) from exc


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
