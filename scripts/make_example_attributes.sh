#!/usr/bin/env bash
# Regenerate reports/example/attributes/ from a finished two-attribute demo
# (medfair demo --attributes sex,age_band): the four audits of the joint cells (before/after,
# read by the independent evaluators and by the training classifiers), the four classifiers'
# evaluations, the remediation record and stage times, a small report (HTML, Markdown, LaTeX),
# and the tables of benchmarks/RESULTS.md and the README (pasted, never typed by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO="${1:-reports/demo/attributes}"
OUT="${2:-reports/example/attributes}"
BIN="${BIN:-.venv/bin}"
SIDES="before after before-trainclf after-trainclf"
LABELS="before,after,before (training clf),after (training clf)"
[ -f "$DEMO/demo.json" ] || {
  echo "error: $DEMO/demo.json is missing; run 'medfair demo --attributes sex,age_band'" >&2
  exit 2
}
for side in $SIDES; do
  [ -f "$DEMO/$side/audit.json" ] || {
    echo "error: $DEMO/$side/audit.json is missing; run 'medfair demo --attributes sex,age_band'" >&2
    exit 2
  }
done
AUDITS=()
for side in $SIDES; do
  mkdir -p "$OUT/$side"
  cp "$DEMO/$side/audit.json" "$DEMO/$side/images.csv" "$OUT/$side/"
  AUDITS+=("$DEMO/$side")
done
for role in classifier evaluator; do
  for attr in sex age_band; do
    cp "$DEMO/models/$role-$attr/evaluation.json" "$OUT/evaluation-$role-$attr.json"
  done
done
cp "$DEMO/models/t2medi-fair/remediation.json" "$OUT/remediation.json"
# the run's record (stage times) and its stage-time table
cp "$DEMO/demo.json" "$OUT/demo.json"
"$BIN/python" scripts/stage_table.py "$OUT/demo.json" > "$OUT/demo-stages.md"
"$BIN/python" scripts/paste_markers.py README.md attributes-timings "$OUT/demo-stages.md"
"$BIN/medfair" report "${AUDITS[@]}" --overwrite --labels "$LABELS" --small --out "$OUT/report.html"
"$BIN/medfair" report "${AUDITS[@]}" --overwrite --labels "$LABELS" --out "$OUT/report.md"
"$BIN/medfair" report "${AUDITS[@]}" --overwrite --labels "$LABELS" --out "$OUT/report.tex"
"$BIN/python" scripts/attributes_summary.py "$OUT" > "$OUT/summary.md"
"$BIN/python" scripts/paste_markers.py benchmarks/RESULTS.md attributes-kl "$OUT/summary.md"
"$BIN/python" scripts/paste_markers.py README.md attributes-kl "$OUT/summary.md"
"$BIN/python" scripts/paste_markers.py benchmarks/RESULTS.md attributes-table "$OUT/report.md"
"$BIN/python" scripts/paste_markers.py README.md attributes-table "$OUT/report.md" \
  --from '^\*\*Joint cells' --to '^\*\*Evaluators\.'
ls -la "$OUT"
