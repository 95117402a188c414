#!/usr/bin/env bash
# Regenerate reports/example/ from a finished demo (make demo): the four audits (before/after on
# the held-out prompts, read by the independent evaluator and by the training classifier), the
# classifiers' evaluations (training, evaluator, the other guides, the radiomics reader), the remediation record, a small report (HTML, Markdown, LaTeX; with
# the fairness-quality trade-off figure of benchmarks/bench_tradeoff.py when it exists), a
# screenshot of the report in headless Chromium (skipped when Chromium is not installed), and
# the README's results table (from report.md). `medfair report` on the four committed folders
# reproduces the tables and the paired analyses (images.csv is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO="${1:-reports/demo}"
OUT="${2:-reports/example}"
BIN="${BIN:-.venv/bin}"
SIDES="before after before-trainclf after-trainclf"
LABELS="before,after,before (training clf),after (training clf)"
for f in before/audit.json after/audit.json before-trainclf/audit.json after-trainclf/audit.json \
         models/evaluator/evaluation.json models/t2medi-fair/remediation.json demo.json; do
  [ -f "$DEMO/$f" ] || { echo "error: $DEMO/$f is missing; run 'make demo' first" >&2; exit 2; }
done
# the classifier remediation was tuned against, as its record names it
GUIDE="$("$BIN/python" -c 'import json, pathlib, sys
print(pathlib.Path(json.load(open(sys.argv[1]))["classifier"]).name)' \
  "$DEMO/models/t2medi-fair/remediation.json")"
AUDITS=()
for side in $SIDES; do
  mkdir -p "$OUT/$side"
  cp "$DEMO/$side/audit.json" "$DEMO/$side/images.csv" "$OUT/$side/"
  AUDITS+=("$DEMO/$side")
done
rm -f "$OUT/evaluation.json"
# the classifier remediation was tuned against, the independent evaluator, and the other
# readers of the evaluator's audits (the other guides and the radiomics reader)
cp "$DEMO/models/$GUIDE/evaluation.json" "$OUT/evaluation-training-classifier.json"
cp "$DEMO/models/evaluator/evaluation.json" "$OUT/evaluation-evaluator.json"
# (those the evaluator's audit names as readers; a model folder left from another run is not one)
READERS="$("$BIN/python" -c 'import json, pathlib, sys
doc = json.load(open(sys.argv[1]))
print(" ".join(pathlib.Path(r["name"]).name for r in doc["readers"]["readers"]))' \
  "$DEMO/after/audit.json")"
for name in classifier classifier-b classifier-robust reader; do
  rm -f "$OUT/evaluation-$name.json"
  if [ "$name" != "$GUIDE" ] && [[ " $READERS " == *" $name "* ]] \
     && [ -f "$DEMO/models/$name/evaluation.json" ]; then
    cp "$DEMO/models/$name/evaluation.json" "$OUT/evaluation-$name.json"
  fi
done
cp "$DEMO/models/t2medi-fair/remediation.json" "$OUT/remediation.json"
# the demo's record (settings, stage times, headline numbers) and the README's stage-time table
cp "$DEMO/demo.json" "$OUT/demo.json"
"$BIN/python" scripts/stage_table.py "$OUT/demo.json" > "$OUT/demo-stages.md"
"$BIN/python" scripts/paste_markers.py README.md demo-timings "$OUT/demo-stages.md"
FIG=()
[ -f benchmarks/fairness-quality-tradeoff.png ] && FIG=(--figure benchmarks/fairness-quality-tradeoff.png)
# The report reads grids and paired images from the demo's audit folders (shards are not copied).
"$BIN/medfair" report "${AUDITS[@]}" --overwrite --labels "$LABELS" --small "${FIG[@]}" --out "$OUT/report.html"
"$BIN/medfair" report "${AUDITS[@]}" --overwrite --labels "$LABELS" --out "$OUT/report.md"
"$BIN/medfair" report "${AUDITS[@]}" --overwrite --labels "$LABELS" --out "$OUT/report.tex"
# The README's results table is the example's report.md, pasted between two markers, so every
# number in it is read off the committed example.
"$BIN/python" scripts/paste_markers.py README.md example-table "$OUT/report.md"
if command -v chromium >/dev/null 2>&1; then
  profile="$(mktemp -d)"
  chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1200,1500 \
    --screenshot="$PWD/$OUT/screenshot.png" "file://$PWD/$OUT/report.html" >/dev/null 2>&1
  rm -rf "$profile"
else
  echo "note: chromium not installed; screenshot not refreshed" >&2
fi
ls -la "$OUT"
