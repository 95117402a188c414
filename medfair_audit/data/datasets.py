"""One dataset interface over image folders, BraTS18 NIfTI volumes and ROCO captions.

Every loader yields items ``{"image": Tensor(C, H, W) in [-1, 1], "caption": str | None,
"metadata": dict}`` and exposes the whole table as :attr:`ImageDataset.metadata` (a pandas
DataFrame, one row per item), so that training code, the audit and the classifier see the same
thing whatever the source. Loaders work with ``torch.utils.data.DataLoader`` as they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write_json, atomic_write_text, building_dir, csv_text
from ..exceptions import (
    MSG_EMPTY_DATASET,
    MSG_MISSING_COLUMN,
    MSG_NOT_A_DIR,
    MSG_NOT_A_FILE,
    ConfigError,
    DataError,
)
from ..progress import ProgressCallback, report
from ._imageio import IMAGE_SUFFIXES, read_image, to_model_tensor, write_png

__all__ = ["ImageDataset", "ImageFolderDataset", "export_image_folder"]


class ImageDataset:
    """Base class: a table of items and a way to load each item's image.

    Subclasses set :attr:`metadata` and implement :meth:`load_array`.

    Args:
        size: Side of the square output images (``None`` keeps the source size; non-square
            sources are zero-padded to a square).
        channels: 1 (grey) or 3 (RGB).
        param: Argument name used in error messages.
    """

    metadata: pd.DataFrame

    def __init__(self, *, size: int | None = 64, channels: int = 1, param: str = "data") -> None:
        if size is not None and size < 8:
            raise ConfigError(f"expected an image size of at least 8, got {size}", param="size")
        if channels not in (1, 3):
            raise ConfigError(f"expected 1 or 3 channels, got {channels}", param="channels")
        self.size = size
        self.channels = channels
        self.param = param

    def load_array(self, index: int) -> np.ndarray:
        """The image of item ``index`` as float32 in [0, 1], ``(H, W)`` or ``(H, W, 3)``."""
        raise NotImplementedError

    def to_tensor(self, array: np.ndarray) -> Any:
        """An image from :meth:`load_array` as the model's input: ``(C, size, size)`` in [-1, 1]."""
        return to_model_tensor(array, size=self.size, channels=self.channels)

    def __len__(self) -> int:
        return len(self.metadata)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        row = self.metadata.iloc[index].to_dict()
        image = self.to_tensor(self.load_array(index))
        caption = row.get("caption")
        return {"image": image, "caption": caption if caption else None, "metadata": row}

    @property
    def captions(self) -> list[str]:
        """Captions of all items (raises if the data set has none)."""
        if "caption" not in self.metadata.columns:
            raise DataError("this data set has no captions", param=self.param)
        return self.metadata["caption"].astype(str).tolist()

    def labels(self, column: str) -> list[str]:
        """Values of a metadata column (e.g. ``"sex"``) for all items.

        Raises:
            DataError: The column is missing.
        """
        if column not in self.metadata.columns:
            found = ", ".join(map(str, self.metadata.columns))
            raise DataError(
                f"the data set has no column '{column}' (found: {found})", param=self.param
            )
        return self.metadata[column].astype(str).tolist()


def _require_dir(root: str | os.PathLike[str], param: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(MSG_NOT_A_DIR.format(path=root), param=param)
    return root


def check_inside(
    root: Path, files: Sequence[str | os.PathLike[str]], source: str, param: str
) -> None:
    """Refuse files that resolve (``..``, absolute paths, symlinks) outside ``root``.

    Args:
        root: The data set's folder.
        files: Paths relative to ``root`` (or absolute).
        source: Where the paths came from, for the message (e.g. ``listed in 'x.csv'``).
        param: Argument name used in the error message.
    """
    base = root.resolve()
    outside = [f for f in files if not (root / f).resolve().is_relative_to(base)]
    if outside:
        raise DataError(
            f"{len(outside)} images {source} lie outside '{root}', e.g. "
            f"'{outside[0]}' -> '{(root / outside[0]).resolve()}'; pass --allow-outside-root "
            "to read them anyway",
            param=param,
        )


class ImageFolderDataset(ImageDataset):
    """Images in a folder, described by a CSV (the phantom's format and a common PACS export).

    The CSV has a column of image paths relative to ``root`` (``file``) and any metadata:
    ``caption``, ``sex``, ``split``, ... Without a CSV, every image under ``root`` is an item
    with only a ``file`` column.

    Args:
        root: The folder.
        metadata: CSV file name inside ``root`` or a path (default ``metadata.csv``; ``None``
            lists the images instead).
        file_column: CSV column with image paths.
        split: Keep only rows whose ``split`` column equals this.
        require: Columns that must exist (e.g. ``("caption",)`` for text-to-image training).
        size: Output side; ``None`` keeps the source size.
        channels: 1 or 3.
        param: Argument name used in error messages.
        allow_outside_root: Read listed images that resolve outside ``root`` (``..`` rows,
            absolute paths, symlinks leading out). Off by default: a metadata table or a link
            must not make medfair read files the user did not hand it.

    Raises:
        DataError: Missing folder or CSV, missing columns or files, no items, or images that
            resolve outside ``root`` without ``allow_outside_root``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        metadata: str | os.PathLike[str] | None = "metadata.csv",
        file_column: str = "file",
        split: str | None = None,
        require: Sequence[str] = (),
        size: int | None = 64,
        channels: int = 1,
        param: str = "data",
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(size=size, channels=channels, param=param)
        self.root = _require_dir(root, param)
        if metadata is None:
            files = sorted(
                p.relative_to(self.root).as_posix()
                for p in self.root.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            table = pd.DataFrame({file_column: files})
            source = self.root
        else:
            source = Path(metadata)
            if not source.is_absolute() and not source.exists():
                source = self.root / source
            if not source.is_file():
                raise DataError(MSG_NOT_A_FILE.format(path=source), param=param)
            try:
                table = pd.read_csv(source, dtype=str, keep_default_na=False)
            except (
                OSError,
                UnicodeDecodeError,
                pd.errors.ParserError,
                pd.errors.EmptyDataError,
            ) as exc:
                raise DataError(f"cannot read CSV '{source}': {exc}", param=param) from exc
        for column in (file_column, *require, *(("split",) if split else ())):
            if column not in table.columns:
                raise DataError(
                    MSG_MISSING_COLUMN.format(
                        path=source, column=column, found=", ".join(table.columns) or "none"
                    ),
                    param=param,
                )
        if split is not None:
            table = table[table["split"] == split]
        if "caption" in require and (table["caption"].str.strip() == "").any():
            n_blank = int((table["caption"].str.strip() == "").sum())
            raise DataError(f"{n_blank} rows of '{source}' have an empty caption", param=param)
        if len(table) == 0:
            raise DataError(MSG_EMPTY_DATASET.format(path=self.root), param=param)
        missing = [f for f in table[file_column] if not (self.root / f).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} images listed in '{source}' are missing, e.g. "
                f"'{self.root / missing[0]}'",
                param=param,
            )
        if not allow_outside_root:
            check_inside(self.root, table[file_column], f"listed in '{source}'", param)
        self.file_column = file_column
        self.metadata = table.reset_index(drop=True)

    def load_array(self, index: int) -> np.ndarray:
        """Read the image file of item ``index``."""
        path = self.root / self.metadata.at[index, self.file_column]
        return read_image(path, param=self.param)


def export_image_folder(
    dataset: ImageDataset,
    out: str | os.PathLike[str],
    *,
    bit_depth: int = 16,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write any data set as an image folder with ``metadata.csv``.

    This turns BraTS18 volumes or ROCO captions into the one format that medfair's training and
    audit commands read. Images are written grey, at the data set's ``size``.

    Args:
        dataset: The source.
        out: Destination folder (absent or empty unless ``overwrite``).
        bit_depth: PNG bit depth (16 keeps the dynamic range of MR intensities).
        overwrite: Replace an existing ``out``.
        progress: Called as images are written.

    Returns:
        The folder.
    """
    if bit_depth not in (8, 16):
        raise ConfigError(f"expected 8 or 16, got {bit_depth}", param="bit_depth")
    n = len(dataset)
    with building_dir(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for i in range(n):
            image = dataset[i]["image"]
            arr = ((image.mean(0) + 1.0) / 2.0).numpy()
            name = f"images/{i:06d}.png"
            write_png(tmp / name, arr, bit_depth=bit_depth)
            row = {k: v for k, v in dataset.metadata.iloc[i].to_dict().items() if k != "file"}
            rows.append({"file": name, **row})
            if i % 50 == 49 or i == n - 1:
                report(progress, "export", i + 1, n)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        atomic_write_text(tmp / "metadata.csv", csv_text(rows, columns))
        atomic_write_json(
            tmp / "dataset.json",
            {"kind": type(dataset).__name__, "n": n, "size": dataset.size, "bit_depth": bit_depth},
        )
    return Path(out)
