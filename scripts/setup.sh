#!/usr/bin/env bash
# Create .venv and install medfair with its test tools. Idempotent: a second run with nothing
# changed does no work.
#
# torch: installs MEDFAIR_TORCH_SPEC (default torch==2.13.0, the local CPU wheel on these
# machines) before anything else, so no later requirement pulls a multi-GB CUDA build. If the
# venv already has a torch (one you installed yourself: CUDA, ROCm, ...), it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${MEDFAIR_TORCH_SPEC:-torch==2.13.0}"
STAMP="$VENV/.medfair-setup"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  "${PIP[@]}" install "$TORCH_SPEC"
fi

want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if ! { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
       && "$VENV/bin/python" -c "import medfair_audit, medfair_cli" 2>/dev/null; }; then
  echo "setup: installing medfair and its dependencies (pinned by constraints.txt)"
  "${PIP[@]}" install -c constraints.txt -e '.[dev]'
  echo "$want" > "$STAMP"
  echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
fi

# MEDFAIR_FRD=1 (make test sets it): also the frd extra (audit --frd), which builds
# pyradiomics-bhklab from source (a C compiler, about a minute). A failed build is reported and
# the FRD tests skip with that reason; nothing else depends on it.
if [ "${MEDFAIR_FRD:-0}" = 1 ] && ! "$VENV/bin/python" -c "import frd_score, radiomics" 2>/dev/null; then
  echo "setup: installing the frd extra (frd-score, pyradiomics-bhklab)"
  if ! "${PIP[@]}" install -c constraints.txt 'frd-score' 'pyradiomics-bhklab'; then
    echo "warning: the frd extra did not install; the FRD tests will be skipped" >&2
  fi
fi
