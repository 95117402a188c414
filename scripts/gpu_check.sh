#!/usr/bin/env bash
# medfair's GPU check: the GPU tests and the GPU benchmark rows, in one run on a machine with an
# NVIDIA GPU. Run it from the repository root:
#
#   bash scripts/gpu_check.sh                  # results in $OUT (default /tmp/gpu-out)
#
# What it runs, each step under its own time limit so that a slow step cannot take the others'
# time (seconds; set the variables to change them):
#   1. GPU_CHECK_TESTS_S=150: every GPU test (tests/gpu: each remediation option checked for real
#      work) and the device and pipeline tests, all of them, without stopping at the first
#      failure -> $OUT/tests.log (a line per test as it finishes), $OUT/tests.xml
#   2. GPU_CHECK_AUDIT_S=180: the audit benchmark in float16 at SD-1.5 size (fixture building and
#      warm-ups included) -> $OUT/audit-gpu.json
#   3. GPU_CHECK_REMEDIATION_S=130: remediation at SD-1.5 size, at the defaults and with the
#      memory-saving settings -> added to audit-gpu.json
#   4. the engine under each speed-up (--compile, --channels-last) in float16, with what is left
#      of GPU_CHECK_TOTAL_S=560 -> added to audit-gpu.json (about 3 minutes at SD-1.5 size)
#   5. the audit benchmark in bfloat16, with what is left of the total after that
# audit-gpu.json is rewritten after every section and row, so a step stopped by its limit keeps
# what it measured. To publish the rows: copy it to benchmarks/audit-gpu.json and run
# `python benchmarks/bench_audit.py --render` (writes the GPU rows of benchmarks/RESULTS.md).
#
# Inputs, both git-ignored:
#   .gpu/classifier   the classifier the benchmark steps classify with (needed by steps 2-5):
#           the demo's, copied after `make demo` with cp -r reports/demo/models/classifier .gpu/,
#           or one trained in about 20 s (only its cost per image matters here):
#             medfair data phantom --out /tmp/ts --n 1000 --seed 1
#             medfair train classifier --data /tmp/ts --out .gpu/classifier
#   .whl/   (optional) wheels installed without network into /tmp/site before anything runs,
#           for a GPU machine that has torch but lacks diffusers and friends; made on a machine
#           with access to the package index:
#             mkdir -p .whl; for p in diffusers==0.42.1 importlib_metadata==8.7.0 nilearn nibabel \
#                 fairlearn; do
#               python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                 --implementation cp --platform manylinux2014_x86_64 -d .whl "$p"; done
#
# A dry run on any machine (the tiny fixture, same steps and files; .gpu/classifier as above):
#   MEDFAIR_TEST_DEVICE=cpu GPU_CHECK_SIZE=tiny OUT=/tmp/gpu-dry bash scripts/gpu_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
TESTS_S=${GPU_CHECK_TESTS_S:-150}
AUDIT_S=${GPU_CHECK_AUDIT_S:-180}
REMEDIATION_S=${GPU_CHECK_REMEDIATION_S:-130}
TOTAL_S=${GPU_CHECK_TOTAL_S:-560}
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
# Where medfair is not installed (a bare GPU machine), the library imports from the checkout and
# the CLI package (cli/, installed as medfair_cli) through a link.
if ! $PY -c "import medfair_cli" 2> /dev/null; then
  mkdir -p /tmp/medfair-cli && ln -sfn "$PWD/cli" /tmp/medfair-cli/medfair_cli
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD:/tmp/medfair-cli
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
# 1. tests
MEDFAIR_TEST_DEVICE=$DEVICE timeout "$TESTS_S" $PY -m pytest -v -p no:cacheprovider \
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
# 2. audit throughput in float16 on 64 images (building the SD-1.5-size fixture and every
#    warm-up included), 3. remediation
# (a CPU dry run uses float32 then bfloat16: float16 convolutions on CPUs are far too slow)
if [ "$DEVICE" = cpu ]; then first=float32; else first=float16; fi
bench "$AUDIT_S" --sections throughput --dtypes $first --n 64
bench "$REMEDIATION_S" --sections remediation --dtypes $first
# 4. the speed-ups, 5. bfloat16, each with what is left of the total
rest=$(left "$TOTAL_S")
[ "$rest" -gt 30 ] && bench "$rest" --sections speedups --dtypes $first --n 64
rest=$(left "$TOTAL_S")
[ "$rest" -gt 30 ] && bench "$rest" --sections throughput --dtypes bfloat16 --n 64
echo "gpu_check: $(($(date +%s) - start)) s; files in $OUT:" && ls -l "$OUT"
