#!/usr/bin/env bash
# The GPU check: one prepared run on a machine with an NVIDIA GPU, planned to end within 9 minutes.
#
# For a GPU machine without network access, prepare the wheels and models on this one first,
# in the repo root:
#   mkdir -p .whl   # .whl/ and .gpu/ are git-ignored: pass them to the GPU machine
#   for p in diffusers==0.42.1 nilearn nibabel fairlearn safetensors; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl "$p"; done
#   mkdir -p .gpu && cp -r reports/demo/models/classifier .gpu/classifier   # for the benchmark
# Then, on the GPU machine with .whl and .gpu copied into the checkout: bash scripts/gpu_check.sh
#
# Steps, each under its own time limit so that one slow step cannot take the others' time:
#   1. every GPU test (tests/gpu: each remediation option checked for real work) and the device
#      and pipeline tests, all of them (no stop at the first failure): $OUT/tests.log (one line
#      per test as it finishes, so a stopped run keeps its results), tests.xml
#   2. the audit benchmark in float16 (SD-1.5 size): $OUT/audit-gpu.json
#   3. remediation at SD-1.5 size, defaults and memory-saving rows: added to audit-gpu.json
#   4. the audit benchmark in bfloat16, with the time that is left: added to audit-gpu.json
# audit-gpu.json is rewritten after every section and row, so a step stopped by its limit keeps
# what it measured. Copy it into benchmarks/ and run
# `python benchmarks/bench_audit.py --render` to write the GPU rows of RESULTS.md.
#
# A dry run on any machine (the tiny fixture, same steps and files):
#   MEDFAIR_TEST_DEVICE=cpu GPU_CHECK_SIZE=tiny OUT=/tmp/gpu-dry bash scripts/gpu_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
DEVICE=${MEDFAIR_TEST_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-full}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $((${1} - ($(date +%s) - start))); }
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
# 1. tests (at most 150 s)
MEDFAIR_TEST_DEVICE=$DEVICE timeout 150 $PY -m pytest -v -p no:cacheprovider \
  --junitxml "$OUT/tests.xml" tests/gpu tests/unit/test_device.py \
  tests/integration/test_pipelines.py 2>&1 | grep -v "Loading\|it/s" | tee "$OUT/tests.log"
DEMO=.gpu
mkdir -p /tmp/demo/models
[ -d "$DEMO/classifier" ] && cp -r "$DEMO/classifier" /tmp/demo/models/
bench() {  # bench LIMIT_S ARGS...: one section of the benchmark under its own limit
  local limit=$1; shift
  timeout "$limit" $PY benchmarks/bench_audit.py --device "$DEVICE" --size "$SIZE" \
    --demo /tmp/demo --out "$OUT/audit-gpu.json" --append "$@" 2>&1 \
    | grep -v "Loading\|Writing" | tee -a "$OUT/bench.log"
}
# 2. audit throughput in float16 on 64 images (at most 180 s: building the SD-1.5-size fixture
#    and every warm-up included), 3. remediation (at most 130 s)
# (a CPU dry run uses float32 then bfloat16: float16 convolutions on CPUs are far too slow)
if [ "$DEVICE" = cpu ]; then first=float32; else first=float16; fi
bench 180 --sections throughput --dtypes $first --n 64
bench 130 --sections remediation --dtypes $first
# 4. bfloat16 with what is left of 520 s
rest=$(left 520)
[ "$rest" -gt 30 ] && bench "$rest" --sections throughput --dtypes bfloat16 --n 64
echo "gpu_check: $(($(date +%s) - start)) s; files in $OUT:" && ls -l "$OUT"
