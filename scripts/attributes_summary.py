"""The two-attribute example's distances to the target as a Markdown table (for RESULTS.md).

    python scripts/attributes_summary.py reports/example/attributes > table.md

Per audit: the joint KL(target‖generated) read off the classifiers' labels and corrected
(PACC; a censored value is shown as its bound), each attribute's KL, and the cells whose
"share = target" Holm rejects; then each classifier's held-out balanced accuracy. Every number
is read from the committed ``audit.json`` and ``evaluation-*.json`` files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medfair_audit.audit.result import AuditResult
from medfair_audit.metrics.results import Summary

COLUMNS = {
    "before": "before",
    "after": "after",
    "before-trainclf": "before (training clf)",
    "after-trainclf": "after (training clf)",
}


def main() -> int:  # noqa: D103
    root = Path(sys.argv[1])
    head = [
        "audit",
        "joint KL, labels",
        "joint KL, PACC",
        "sex KL, PACC",
        "age band KL, PACC",
        "cells off target (Holm)",
    ]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for folder, label in COLUMNS.items():
        d = AuditResult.load(root / folder)

        def kl(summary: Summary, reading: str) -> str:
            return summary.distances[reading].kl_target_to_generated.text(".3f")

        row = [
            label,
            kl(d.overall, "raw"),
            kl(d.overall, "pacc"),
            kl(d.attributes["sex"], "pacc"),
            kl(d.attributes["age_band"], "pacc"),
            f"{len(d.joint.rejected)} of {len(d.joint.cells)}",
        ]
        print("| " + " | ".join(row).replace("<", "&lt;") + " |")
    accuracy = []
    for role in ("evaluator", "classifier"):
        for attr in ("sex", "age_band"):
            ev = json.loads((root / f"evaluation-{role}-{attr}.json").read_text())
            accuracy.append(f"{role} of {attr.replace('_', ' ')} {ev['balanced_accuracy']:.3f}")
    print()
    print("Held-out balanced accuracy (`evaluation-*.json`): " + ", ".join(accuracy) + ".")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
