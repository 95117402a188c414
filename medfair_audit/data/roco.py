r"""ROCO-style captioned radiology images.

Layout: an image folder and a captions file with one ``<id>\\t<caption>`` line per image (the
ROCO release's ``captions.txt``). ``<id>`` is a file name in the folder, with or without its
extension (``ROCO_00001`` matches ``ROCO_00001.jpg``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import MSG_NOT_A_DIR, MSG_NOT_A_FILE, DataError
from ._imageio import IMAGE_SUFFIXES, read_image
from .datasets import ImageDataset, check_inside

__all__ = ["RocoDataset"]


class RocoDataset(ImageDataset):
    r"""Images with captions from a ``<id>\\t<caption>`` file.

    Args:
        images: Folder with the images.
        captions: Captions file.
        size: Output side in pixels (non-square images are zero-padded to a square first).
        channels: 1 or 3.
        param: Argument name used in error messages.
        allow_outside_root: Read images that symlinks place outside ``images``.

    Attributes:
        missing: IDs in the captions file without an image (skipped).

    Raises:
        DataError: Missing folder or file, a malformed line, empty captions, no matched image.
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        captions: str | os.PathLike[str],
        *,
        size: int | None = 64,
        channels: int = 1,
        param: str = "images",
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(size=size, channels=channels, param=param)
        self.root = Path(images)
        if not self.root.is_dir():
            raise DataError(MSG_NOT_A_DIR.format(path=self.root), param=param)
        captions = Path(captions)
        if not captions.is_file():
            raise DataError(MSG_NOT_A_FILE.format(path=captions), param="captions")
        by_stem: dict[str, str] = {}
        for p in sorted(self.root.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                by_stem.setdefault(p.stem, p.name)
                by_stem.setdefault(p.name, p.name)
        rows, self.missing = [], []
        try:
            lines = captions.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read '{captions}': {exc}", param="captions") from exc
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            ident, sep, text = line.partition("\t")
            ident, text = ident.strip(), text.strip()
            if not sep or not ident or not text:
                raise DataError(
                    f"line {number} of '{captions}' is not '<id>\\t<caption>': {line[:60]!r}",
                    param="captions",
                )
            if ident in by_stem:
                rows.append({"file": by_stem[ident], "id": ident, "caption": text})
            else:
                self.missing.append(ident)
        if not rows:
            raise DataError(f"no image in '{self.root}' matches an id of '{captions}'", param=param)
        if not allow_outside_root:  # symlinked images leading out of the folder
            check_inside(self.root, [r["file"] for r in rows], "in the folder (symlinks)", param)
        self.metadata = pd.DataFrame(rows)

    def load_array(self, index: int) -> np.ndarray:
        """Read the image of item ``index``."""
        return read_image(self.root / self.metadata.at[index, "file"], param=self.param)
