"""Atomic file and folder writes, and content hashes.

A write never leaves a half-written file where a finished one is expected: data goes to a
temporary file in the same folder and is moved over the target with :func:`os.replace`, which is
atomic on POSIX and Windows. Folders are built beside their destination and swapped in at the end,
so a failure halfway leaves the earlier output as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .exceptions import MSG_OUT_EXISTS, DataError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "building_dir",
    "file_sha256",
    "folder_sha256",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable bytes for equal content)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def building_dir(
    out: str | os.PathLike[str], *, overwrite: bool = False, param: str = "out"
) -> Iterator[Path]:
    """Build a folder beside ``out`` and move it into place only when the block succeeds.

    Args:
        out: Final folder.
        overwrite: Replace an existing non-empty ``out``. Without it, such a folder is an error.
        param: Argument name used in the error message.

    Yields:
        The temporary folder to write into.

    Raises:
        DataError: ``out`` exists, is not empty and ``overwrite`` is false.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(MSG_OUT_EXISTS.format(path=out), param=param)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_sha256(folder: str | os.PathLike[str], *, skip: tuple[str, ...] = (".partial",)) -> str:
    """Hex SHA-256 over the relative paths and bytes of every file in a folder (sorted)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part.endswith(skip) for part in rel.split("/")):
            continue
        h.update(rel.encode())
        h.update(b"\0")
        h.update(file_sha256(path).encode())
    return h.hexdigest()
