"""Atomic file and folder writes, and content hashes.

A write never leaves a half-written file where a finished one is expected: data goes to a
temporary file in the same folder and is moved over the target with :func:`os.replace`, which is
atomic on POSIX and Windows. Folders are built beside their destination and swapped in at the end,
so a failure halfway leaves the earlier output as it was.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .exceptions import MSG_OUT_EXISTS, DataError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "building_dir",
    "check_out",
    "file_sha256",
    "folder_sha256",
    "locks_out",
    "null_non_finite",
    "run_lock",
]

_HELD: set[Path] = set()  # locks this process holds (re-entrant: a run may build its output)


def _umask() -> int:
    """The process's umask (read without changing it where the system says it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back
    os.umask(mask)
    return mask


def _as_created(path: str | os.PathLike[str], *, folder: bool) -> None:
    """Give a ``mkstemp``/``mkdtemp`` result (0600/0700) the mode a plain create would have.

    Output is meant to be shared (a report on a lab machine): files get ``0666 & ~umask``
    and folders ``0777 & ~umask``, 0644 and 0755 under the usual umask 022.
    """
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` complete or not at all.

    It is written to a temporary file in the same folder, synced, then renamed over ``path``
    when the block ends without an error (for output streamed in parts, too large to hold as
    one ``bytes``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _as_created(tmp, folder=False)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV text with a header, one line per row."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, allow_nan: bool = True) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable bytes for equal content).

    With ``allow_nan=False`` a NaN or infinity (not JSON) raises ``ValueError`` instead of being
    written as ``NaN``/``Infinity``.
    """
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=allow_nan)
    return atomic_write_text(path, text + "\n")


def null_non_finite(node: Any, where: str = "") -> list[str]:
    """Replace every NaN/inf float in a JSON tree by ``None`` (in place); return where they were."""
    found = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            node[key] = None
            found.append(path)
        elif isinstance(value, (dict, list)):
            found += null_non_finite(value, path)
    return found


def check_out(out: str | os.PathLike[str], *, overwrite: bool, param: str = "out") -> Path:
    """Refuse an output path that is a file or a non-empty folder unless ``overwrite``.

    Long runs call this first, so that a refusal comes before the work, not after it.

    Raises:
        DataError: ``out`` exists, is a file or holds something, and ``overwrite`` is false.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(MSG_OUT_EXISTS.format(path=out), param=param)
    return out


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
    check_out(out, overwrite=overwrite, param=param)
    with run_lock(out, param=param):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
        _as_created(tmp, folder=True)
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


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def run_lock(out: str | os.PathLike[str], *, param: str = "out") -> Iterator[Path]:
    """Hold ``<out>.lock`` while a run writes ``out``, so that two runs never write one folder.

    The lock sits beside the real path of ``out`` (symlinks resolved), so ``--out real`` and
    ``--out link`` (a symlink to ``real``) exclude each other.

    The lock is an exclusive ``flock`` on that file, which the kernel drops when its process
    ends in any way: the lock of a killed run is stale by construction and the next run takes it
    over (the file, left behind, is reused). The file names its holder (host, pid, start time,
    command) for the message a second run gets. Re-entrant within one process. Where ``fcntl``
    does not exist (Windows), no lock is taken.

    Raises:
        DataError: Another live run holds the lock.
    """
    # The real path: a symlink to a folder and the folder itself are one output, one lock.
    out = Path(out).resolve()
    lock = out.with_name(out.name + ".lock")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield lock
        return
    if lock in _HELD:
        yield lock
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataError(
                f"'{out}' is being written by another medfair run (pid {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it "
                "to finish",
                param=param,
            ) from None
        try:  # a holder finishing meanwhile removes the file: hold the one on disk
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv)[:500],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
    _HELD.add(lock)
    try:
        yield lock
    finally:
        _HELD.discard(lock)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # still holding it, so nobody else has it
        os.close(fd)


def locks_out(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` holding :func:`run_lock` on its ``out`` (or ``job.out``), main process only.

    Under ``torchrun``/``accelerate launch`` the processes of one run share its folder: only rank
    0 (``RANK``) takes the lock.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if int(os.environ.get("RANK", "0") or 0) != 0:
            return fn(*args, **kwargs)
        arguments = signature.bind(*args, **kwargs).arguments
        out = arguments["out"] if "out" in arguments else arguments["job"].out
        with run_lock(out):
            return fn(*args, **kwargs)

    return wrapper


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
