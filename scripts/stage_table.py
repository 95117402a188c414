"""Print a demo run's stage times as the Markdown table the README and the example show.

After the table, a sentence says when the stages ran (records written before the times were
kept have none).

    python scripts/stage_table.py DEMO_JSON > demo-stages.md

DEMO_JSON is the record a demo writes (``reports/demo/demo.json``, or
``reports/demo/attributes/demo.json`` for the two-attribute pipeline).
"""

from __future__ import annotations

import json
import sys

from medfair_audit.demo import stage_span, stage_table


def main() -> int:  # noqa: D103
    if len(sys.argv) != 2:
        print("usage: python scripts/stage_table.py DEMO_JSON", file=sys.stderr)
        return 2
    with open(sys.argv[1]) as fh:
        record = json.load(fh)
    print("\n".join(stage_table(record["stages"])))
    span = stage_span(record)
    if span:
        print(f"\n{span}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
