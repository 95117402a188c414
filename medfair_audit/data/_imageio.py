"""Reading, converting and resizing 2-D images, shared by every loader."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..exceptions import DataError

__all__ = ["IMAGE_SUFFIXES", "png_bytes", "read_image", "to_model_tensor", "write_png"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(path: str | os.PathLike[str], *, param: str = "data") -> np.ndarray:
    """Read an image as float32 in [0, 1], shape ``(H, W)`` (grey) or ``(H, W, 3)`` (colour).

    8-bit images are divided by 255, 16-bit ones by 65535; alpha is dropped.

    Raises:
        DataError: The file is missing or not a readable image.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0
            elif mode == "I":
                raw = np.asarray(im, dtype=np.int64)
                arr = raw.astype(np.float32) / (65535.0 if raw.max(initial=0) > 255 else 255.0)
            elif mode == "F":
                arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
            elif mode in ("L", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            elif mode == "LA":
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image '{path}': {exc}", param=param) from exc
    return np.clip(arr, 0.0, 1.0)


def to_model_tensor(arr: np.ndarray, *, size: int | None, channels: int) -> Any:
    """Turn a [0, 1] image into a float32 tensor ``(channels, size, size)`` in [-1, 1].

    Colour is turned to grey by ITU-R 601 luma when ``channels == 1``; grey is repeated when
    ``channels == 3``. A non-square image is padded with zeros to a square (keeping its aspect
    ratio), then resized with antialiased bilinear interpolation.
    """
    import torch
    import torch.nn.functional as F

    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if channels == 1 and t.shape[0] == 3:
        t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])[None]
    elif channels == 3 and t.shape[0] == 1:
        t = t.repeat(3, 1, 1)
    h, w = t.shape[-2:]
    if h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        t = F.pad(t, (left, side - w - left, top, side - h - top))
    if size is not None and t.shape[-1] != size:
        t = F.interpolate(
            t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
    return (t.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


def write_png(path: str | os.PathLike[str], arr: np.ndarray, *, bit_depth: int = 8) -> Path:
    """Write a [0, 1] grey image ``(H, W)`` as an 8- or 16-bit PNG (deterministic bytes)."""
    path = Path(path)
    path.write_bytes(png_bytes(arr, bit_depth=bit_depth))
    return path


def png_bytes(arr: np.ndarray, *, bit_depth: int = 8) -> bytes:
    """Encode a [0, 1] grey image ``(H, W)`` as 8-bit (``L``) or 16-bit (``I;16``) PNG bytes."""
    arr = np.clip(np.asarray(arr, dtype=np.float64), 0.0, 1.0)
    if bit_depth == 16:
        im = Image.fromarray(np.round(arr * 65535).astype(np.uint16))  # mode I;16
    else:
        im = Image.fromarray(np.round(arr * 255).astype(np.uint8))  # mode L
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
