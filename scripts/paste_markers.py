"""Paste text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers of a file.

    python scripts/paste_markers.py TARGET NAME SOURCE [--from REGEX] [--to REGEX]

SOURCE is a file (e.g. a report.md of the committed example); ``--from``/``--to`` cut the part
from the first line matching ``--from`` up to (not including) the next line matching ``--to``.
Every number the README shows from an example run goes through here, never by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def main() -> int:  # noqa: D103
    parser = argparse.ArgumentParser()
    parser.add_argument("target", type=Path)
    parser.add_argument("name")
    parser.add_argument("source", type=Path)
    parser.add_argument("--from", dest="start")
    parser.add_argument("--to", dest="stop")
    args = parser.parse_args()
    lines = args.source.read_text(encoding="utf-8").strip().splitlines()
    if args.start:
        first = next((i for i, x in enumerate(lines) if re.search(args.start, x)), None)
        if first is None:
            sys.exit(f"error: no line of {args.source} matches {args.start!r}")
        lines = lines[first:]
    if args.stop:
        last = next((i for i, x in enumerate(lines) if i and re.search(args.stop, x)), len(lines))
        lines = lines[:last]
    text = "\n".join(lines).strip()
    start, end = f"<!-- {args.name}:start -->", f"<!-- {args.name}:end -->"
    doc = args.target.read_text(encoding="utf-8")
    if start not in doc or end not in doc:
        sys.exit(f"error: {args.target} has no {args.name} markers")
    pattern = re.escape(start) + ".*?" + re.escape(end)
    doc = re.sub(pattern, lambda m: f"{start}\n{text}\n{end}", doc, flags=re.S)
    args.target.write_text(doc, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
