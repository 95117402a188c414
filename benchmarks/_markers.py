"""Paste a benchmark's generated text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.

Every number the README and ``RESULTS.md`` show from a benchmark goes through here (or through
``scripts/paste_markers.py`` for committed example files), never by hand.
"""

from __future__ import annotations

from pathlib import Path


def splice(path: Path, marker: str, text: str) -> bool:
    """Replace the text between ``marker``'s comments in ``path`` (``False``: no markers)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    doc = path.read_text()
    if start not in doc or end not in doc:
        return False
    head, rest = doc.split(start, 1)
    path.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])
    return True


def paste(path: Path, marker: str, text: str) -> None:
    """Print ``text`` and put it between ``marker``'s comments in ``path``, or say it is not."""
    print(text)
    if not splice(path, marker, text):
        print(f"{path.name} has no {marker} markers; the text is not pasted")
