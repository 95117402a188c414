#!/usr/bin/env bash
# Regenerate reports/example/ from a finished demo (make demo): the two audits, the classifier's
# evaluation, the remediation record, a small before/after report (HTML, Markdown, LaTeX), a
# screenshot of the report in headless Chromium (skipped when Chromium is not installed), and
# the README's results table (from report.md). `medfair report reports/example/before
# reports/example/after` reproduces the tables and the paired analysis (images.csv is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO="${1:-reports/demo}"
OUT="${2:-reports/example}"
BIN="${BIN:-.venv/bin}"
for f in before/audit.json after/audit.json models/classifier/evaluation.json \
         models/t2medi-fair/remediation.json; do
  [ -f "$DEMO/$f" ] || { echo "error: $DEMO/$f is missing; run 'make demo' first" >&2; exit 2; }
done
mkdir -p "$OUT/before" "$OUT/after"
for side in before after; do
  cp "$DEMO/$side/audit.json" "$DEMO/$side/images.csv" "$OUT/$side/"
done
cp "$DEMO/models/classifier/evaluation.json" "$OUT/evaluation.json"
cp "$DEMO/models/t2medi-fair/remediation.json" "$OUT/remediation.json"
# The report reads grids and paired images from the demo's audit folders (shards are not copied).
"$BIN/medfair" report "$DEMO/before" "$DEMO/after" --labels before,after --small --out "$OUT/report.html"
"$BIN/medfair" report "$DEMO/before" "$DEMO/after" --labels before,after --out "$OUT/report.md"
"$BIN/medfair" report "$DEMO/before" "$DEMO/after" --labels before,after --out "$OUT/report.tex"
# The README's results table is the example's report.md, pasted between two markers, so every
# number in it is read off the committed example.
"$BIN/python" - "$OUT/report.md" README.md <<'PY'
import re, sys
table, readme = open(sys.argv[1]).read().strip(), open(sys.argv[2]).read()
start, end = "<!-- example-table:start -->", "<!-- example-table:end -->"
if start not in readme:
    sys.exit("README.md has no example-table markers")
new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m: f"{start}\n{table}\n{end}", readme, flags=re.S)
open(sys.argv[2], "w").write(new)
PY
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
