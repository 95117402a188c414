#!/usr/bin/env bash
# The GPU check: one prepared run on a machine with an NVIDIA GPU (about 10 minutes).
#
# For a GPU machine without network access, prepare the wheels and models on this one first,
# in the repo root:
#   echo /.whl/ >> .git/info/exclude; mkdir -p .whl
#   for p in diffusers==0.42.1 nilearn nibabel fairlearn safetensors; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl "$p"; done
#   mkdir -p .gpu && cp -r reports/demo/models/classifier .gpu/classifier   # for the benchmark
#   echo /.gpu/ >> .git/info/exclude
# Then, on the GPU machine with .whl and .gpu copied into the checkout: bash scripts/gpu_check.sh
#
# It runs the fast test tier (tests/gpu included: they skip without CUDA) and the GPU audit
# benchmark (SD-1.5 size, float16 and bfloat16, plus LoRA remediation memory), and leaves
# benchmarks/audit-gpu.json and the logs in $OUT. Copy audit-gpu.json into benchmarks/ and run
# `python benchmarks/bench_audit.py --render` here to write the GPU rows of RESULTS.md.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -x tests/gpu tests/unit/test_device.py \
  tests/integration/test_pipelines.py 2>&1 | tee "$OUT/tests.log"
DEMO=.gpu
[ -d "$DEMO/classifier" ] && mkdir -p /tmp/demo/models && cp -r "$DEMO/classifier" /tmp/demo/models/
timeout 420 python3 benchmarks/bench_audit.py --device cuda --demo /tmp/demo \
  --out "$OUT/audit-gpu.json" 2>&1 | grep -v "Loading\|Writing" | tee "$OUT/bench.log"
