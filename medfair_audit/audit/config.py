"""The prompts file reader; the audit's settings are :class:`medfair_audit.config.AuditConfig`."""

from __future__ import annotations

import re
from pathlib import Path

from ..exceptions import DataError

__all__ = ["read_prompts"]


def read_prompts(path: str | Path, *, param: str = "prompts") -> list[str]:
    """Prompts from a text file: one per line; blank lines and ``#`` comments are skipped.

    A line whose first character is ``#`` is a comment, and so is the rest of a line from a ``#``
    with white space on both sides (``... glioma.  # note`` keeps ``... glioma.``); a ``#``
    that touches a word (``lesion #3``) is text.

    Raises:
        DataError: Missing, unreadable (not UTF-8) or empty file (named as ``param``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file '{path}' does not exist or is not a file", param=param)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read '{path}' as UTF-8 text: {exc}", param=param) from exc
    prompts = [re.split(r"\s#(?:\s|$)", line, maxsplit=1)[0].strip() for line in lines]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise DataError(f"'{path}' holds no prompts (one per line expected)", param=param)
    return prompts
