#!/usr/bin/env bash
# Every GPU check and measurement, on a GPU machine with no network, results under $OUT:
#
#   bash benchmarks/gpu_session.sh [tests|ops|claims|all]     (from the repository root)
#
#   tests   build the extension, the whole suite in parallel (pytest-xdist), compute-sanitizer
#           (memcheck on the kernel tests, racecheck on the kernels that use shared memory),
#           then the CUDA fast paths (tensor-core attention, vectorized memory_norm; off by
#           default until they pass here) through the kernel suite and the sanitizers with
#           MEMKERNELS_CUDA_FAST_PATHS=1, and tests.txt: device, driver, versions, date,
#           commit, both pytest summaries, the sanitizers.
#           `make gpu-test` runs this stage. About 5 minutes on an H100.
#   ops     the op benchmarks (eager and kernel time) and the host-overhead benchmark.
#   claims  python -m benchmarks.claims with a profile.
#
# Each stage fits one device call (10 minutes); `all` runs them in turn. Every stage ends by
# packing what it wrote into $OUT/<stage>.tar.gz (the device tool brings back at most 8 files).
# The torch and triton on the machine are used as they are: the package installs editable with
# no build isolation and no dependencies. Wheels of anything missing travel in .whl/; the
# tensor-core kernels need the CuTe headers of nvidia-cutlass (`make gpu-wheels` puts its
# wheel there, 6.4 MB), without which the extension builds the scalar kernels only and info.txt
# says so. From the device tool: command `bash benchmarks/gpu_session.sh tests`, carry [".whl"].
# With 15 minutes of device time a session, run `tests` first: it is what the issues wait on.
# MEMKERNELS_COMMIT names the commit where the copy on the machine has no .git.
set -uo pipefail
STAGE=${1:-all}
OUT=${OUT:-benchmarks/results/local}
LOGS="$OUT/$STAGE"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

if [ -d .whl ]; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile .whl/*.whl > "$LOGS/wheels.log" 2>&1 \
    || echo "installing .whl/ failed: see wheels.log"
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
MAX_JOBS=${MAX_JOBS:-16} $PYTHON -m pip install --no-build-isolation --no-deps -q -e . > "$LOGS/build.log" 2>&1 \
  || echo "the extension build failed: see build.log"
$PYTHON -m memkernels.info > "$LOGS/info.txt" 2>&1

# Runs "${@:3}" into the log $2 for at most $1 seconds, so that one hang cannot spend the
# whole device call; a timeout ends the log with "error: timed out", which the summary shows.
bounded() {
  local seconds=$1 log=$2
  shift 2
  timeout -k 10 "$seconds" "$@" > "$log" 2>&1
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "error: timed out after $seconds s" >> "$log"; fi
  return $rc
}

# Seconds per step of the tests stage: with the build (about a minute) within one 600 s call.
SUITE_S=${SUITE_S:-220}
SANITIZER_S=${SANITIZER_S:-50}
FAST_SUITE_S=${FAST_SUITE_S:-90}
FAST_SANITIZER_S=${FAST_SANITIZER_S:-35}

stage_tests() {
  bounded "$SUITE_S" "$LOGS/tests.log" $PYTHON -m pytest tests -q -rs -p no:cacheprovider -n "${PYTEST_WORKERS:-8}"
  if command -v compute-sanitizer > /dev/null; then
    # Small shapes of every kernel backend; the sanitizer slows each launch a hundredfold.
    local kernels=(tests/test_kernels_memory_read.py tests/test_kernels_slot_attention.py
                   tests/test_kernels_memory_norm.py)
    bounded "$SANITIZER_S" "$LOGS/memcheck.log" compute-sanitizer --tool memcheck --error-exitcode 1 \
      --print-limit 20 $PYTHON -m pytest "${kernels[@]}" -q -p no:cacheprovider \
      -k "matches_formula and cuda and float32 and (K7 or K1 or W40)"
    bounded "$SANITIZER_S" "$LOGS/racecheck.log" compute-sanitizer --tool racecheck --error-exitcode 1 \
      --print-limit 20 $PYTHON -m pytest "${kernels[@]}" -q -p no:cacheprovider \
      -k "matches_formula and cuda and bfloat16 and (K7 or W40)"
  else
    echo "compute-sanitizer is not on this machine" > "$LOGS/memcheck.log"
  fi
  stage_fast_paths
  $PYTHON -m benchmarks.gpu_summary "$LOGS" | tee "$LOGS/tests.txt"
}

stage_fast_paths() {
  export MEMKERNELS_CUDA_FAST_PATHS=1
  $PYTHON -m memkernels.info > "$LOGS/info-fast-paths.txt" 2>&1
  bounded "$FAST_SUITE_S" "$LOGS/tests-fast-paths.log" $PYTHON -m pytest tests/test_cuda_fast_paths.py \
    tests/test_kernels_memory_read.py tests/test_kernels_slot_attention.py tests/test_kernels_memory_norm.py \
    tests/test_memory_read.py tests/test_slot_attention.py tests/test_memory_norm.py -q -rs \
    -p no:cacheprovider -k cuda -n "${PYTEST_WORKERS:-8}"
  if command -v compute-sanitizer > /dev/null; then
    local select="matches_formula and (D64 or D128 or one-row or 3-5-8 or 2-7-520) and bfloat16"
    bounded "$FAST_SANITIZER_S" "$LOGS/memcheck-fast-paths.log" compute-sanitizer --tool memcheck \
      --error-exitcode 1 --print-limit 20 $PYTHON -m pytest tests/test_cuda_fast_paths.py -q \
      -p no:cacheprovider -k "$select"
    bounded "$FAST_SANITIZER_S" "$LOGS/racecheck-fast-paths.log" compute-sanitizer --tool racecheck \
      --error-exitcode 1 --print-limit 20 $PYTHON -m pytest tests/test_cuda_fast_paths.py -q \
      -p no:cacheprovider -k "$select"
  fi
  unset MEMKERNELS_CUDA_FAST_PATHS
}

stage_ops() {
  $PYTHON -m pytest benchmarks/test_ops.py -q -p no:cacheprovider --benchmark-json="$LOGS/ops.json" \
    --benchmark-columns=median,rounds > "$LOGS/ops.log" 2>&1
  $PYTHON -m pytest benchmarks/test_overhead.py -q -p no:cacheprovider --benchmark-json="$LOGS/overhead.json" \
    --benchmark-columns=median,rounds > "$LOGS/overhead.log" 2>&1
  $PYTHON -m benchmarks.report "$LOGS/ops.json" "$LOGS/overhead.json" > "$LOGS/ops.md"
  tail -n 40 "$LOGS/ops.md"
}

stage_claims() {
  $PYTHON -m benchmarks.claims --out "$LOGS" --profile > "$LOGS/claims.log" 2>&1
  tail -n 30 "$LOGS/claims.md"
}

case "$STAGE" in
  tests) stage_tests ;;
  ops) stage_ops ;;
  claims) stage_claims ;;
  all) stage_tests; stage_ops; stage_claims ;;
  *) echo "unknown stage $STAGE: tests, ops, claims or all"; exit 2 ;;
esac
tar -czf "$OUT/$STAGE.tar.gz" -C "$OUT" "$STAGE"
