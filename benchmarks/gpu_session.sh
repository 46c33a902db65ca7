#!/usr/bin/env bash
# Every GPU check and measurement, on a GPU machine with no network:
#
#   bash benchmarks/gpu_session.sh [quick|tests|ops|claims|all]     (from the repository root)
#
#   quick   one device call: build, tests, sanitizers, convergence, op benchmarks, claims and
#           the dispatch rule, shrunk to end within 8 minutes on an H100 or H200 (budget below).
#           Run it first: it is what the open issues wait on.
#   tests   the build; the whole suite with the CUDA fast paths off and, beside it, the tests they
#           change with them on (MEMKERNELS_CUDA_FAST_PATHS=1; off by default until they pass
#           here); compute-sanitizer memcheck and racecheck on small kernel cases of both paths
#           and Triton. `make gpu-test` runs this stage.
#   ops     the build; the op benchmarks at every target shape (K 256 too) and the host-overhead
#           benchmark.
#   claims  the build; python -m benchmarks.claims at the paper's setting, with a profile.
#   all     tests, ops and claims in turn (three device calls' worth).
#
# A stage writes into a scratch folder, $GPU_SESSION_WORK/<stage> (default /tmp/memkernels-gpu),
# and leaves two files in $OUT (default benchmarks/results/local): <stage>.tar.gz, that folder
# packed within 16 MiB (benchmarks/pack.py), and <stage>-summary.txt, the summary table
# (benchmarks/gpu_summary.py: a row per step with its status, seconds against its bound and
# result), which is also printed last. Two files, as the device tool brings back at most
# eight. Every step runs under `bounded`, which kills it at its bound: a hang still leaves
# the summary, where the step shows as timed out.
#
# The torch and triton on the machine are used as they are: the package installs editable with
# no build isolation and no dependencies. Wheels of anything missing travel in .whl/ (`make
# gpu-wheels`: nvidia-cutlass, whose CuTe headers the tensor-core kernels need, and
# pytest-xdist with execnet; without xdist the suites run as shards of files side by side).
# From the device tool: command `bash benchmarks/gpu_session.sh quick`, carry [".whl"],
# timeout_s 600. The commit is MEMKERNELS_COMMIT, else git's, else .whl/COMMIT (written by
# `make gpu-wheels`), for a copy with no .git.
#
# quick's budget, in seconds. The steps of a phase run side by side, so a phase costs its
# longest bound; with every step stopped at its bound the stage still ends within 8 minutes:
#
#   phase  step                  bound  what
#   1      build                   120  the extension for sm_90 with the default head dims (64, 128)
#   1-2    warm-peers              210  (niced) the compiled and Flex peers and the Triton kernels run
#                                       once at the benchmark shapes, filling the compile caches on
#                                       disk that the ops step then reads instead of compiling
#   2      tests                   100  two steps side by side: every test that needs CUDA with the
#                                       fast paths off (10 workers), and the kernel and op suites'
#                                       CUDA cases, autocast and grouped-head tests with them on (5)
#   3      sanitizers               45  four steps side by side: memcheck and racecheck on small cases
#                                       of Triton and the CUDA scalar kernels, and of the fast paths
#   3      convergence              45  a small Memformer, 100 bf16 steps per fused backend and reference
#   4      ops                     115  op benchmarks, bf16, B16 H8, D 64/128, L 64/512, K 64/1024, every
#                                       implementation and peer, copy and matmul ceilings
#   5      claims                   60  memory at 1024 and 2048, speed at 1024, MRBP at horizon 4
#   6      dispatch-rule            10  python -m benchmarks.dispatch_rule on ops.json
#          phases 1 to 6           450  + about 20 s outside the steps (wheels, info, summary, packing)
#
# Time the phases before ops leave unused goes two thirds to ops, the rest (and what ops leaves)
# to claims, up to the deadline (QUICK_SECONDS less QUICK_RESERVE).
# A step stopped at its bound gets SIGTERM (SIGKILL 5 s later, should anything ignore it).
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/local}
WORK=${GPU_SESSION_WORK:-/tmp/memkernels-gpu}
TARBALL_MAX_MB=16
QUICK_SECONDS=480    # the whole quick stage
QUICK_RESERVE=30     # kept back from the deadline for what runs outside the steps

declare -A QUICK_BOUND=([build]=120 [warm-peers]=210 [tests]=100 [sanitizers]=45 [convergence]=45 [ops]=115
  [claims]=60 [dispatch-rule]=10)

# Test files that check CPU-side things (build switches, the ahead-of-time Triton compile, the
# README, the benchmark and session scripts, FLOP counts, the long-range training run, DDP on
# gloo, the CPU convergence check): quick leaves them to CI.
CPU_ONLY_TESTS=(test_triton_compile.py test_cuda_build.py test_readme.py test_gpu_session.py test_benchmarks.py
  test_claims_flops.py test_long_range.py test_ddp.py test_convergence.py)
# The tests that a fast path can change: the CUDA cases of the kernel and op suites, the
# fast-path tests, and the autocast and grouped-head tests wherever they are.
FAST_PATH_TESTS="(cuda and (kernels or fast_paths or test_memory_read or test_slot_attention or test_memory_norm)) or autocast or grouped"
# Small cases of every kernel backend (Triton and the CUDA scalar kernels) for the sanitizers,
# which slow each launch a hundredfold; racecheck where shared memory is used (bfloat16).
MEMCHECK_KERNELS="matches_formula and cuda and float32 and (K7 or K1 or W40)"
RACECHECK_KERNELS="matches_formula and cuda and bfloat16 and (K7 or W40)"
# The fast paths' sanitizer cases: small formula shapes and the strided memory_read case.
SANITIZE_FAST_PATHS="((matches_formula and (D64 or D128 or one-row or 3-5-8 or 2-7-520)) or strided_inputs) and bfloat16"
KERNEL_SUITES=(tests/test_kernels_memory_read.py tests/test_kernels_slot_attention.py tests/test_kernels_memory_norm.py)
# quick's op benchmarks: every backend and peer but the reference composite run eagerly outside
# the op (memkernels-torch runs it through the op, and the dispatch rule ranks it).
QUICK_OPS="not eager"
WARM_OPS="compiled or flex or triton"
DISPATCH_RULE=dispatch_rule.json

# Appends a step's line to steps.tsv: name, second it started at (since the script's start),
# bound, seconds taken, exit status or "skipped", log, note.
record_step() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$LOGS/steps.tsv"
}

skip_step() {
  record_step "$1" $SECONDS - 0 skipped - "$2"
}

# bounded NAME SECONDS COMMAND...: runs COMMAND into $LOGS/NAME.log for at most SECONDS (then
# SIGTERM to its whole process group, SIGKILL 5 s later if anything ignores that), so one hang
# cannot spend the whole device call; a timeout ends the log with "error: timed out", and the
# summary shows it.
bounded() {
  local name=$1 seconds=$2 start=$SECONDS
  shift 2
  STEP=$name timeout -k 5 "$seconds" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "error: timed out after $seconds s" >> "$LOGS/$name.log"; fi
  record_step "$name" $start "$seconds" $((SECONDS - start)) $rc "$name.log" ""
  return $rc
}

# parallel_pytest WORKERS PYTEST_ARGS...: pytest-xdist with WORKERS workers where it is
# installed; else WORKERS pytest processes side by side, each on a share of the files under
# tests/ (all but the --ignore'd), each into $LOGS/$STEP.shard-N.log (the summary adds them up).
parallel_pytest() {
  local workers=$1
  shift
  if $PYTHON -c "import xdist" 2> /dev/null; then
    $PYTHON -m pytest -n "$workers" "$@"
    return
  fi
  echo "pytest-xdist is not installed: $workers shards of files instead, in $STEP.shard-*.log"
  local args=() files=() ignored=" " pids=() rc=0 shard i
  for arg in "$@"; do
    case "$arg" in
      tests) ;;
      --ignore=*) ignored+="${arg#--ignore=} " ;;
      *) args+=("$arg") ;;
    esac
  done
  for file in tests/test_*.py; do [[ "$ignored" == *" $file "* ]] || files+=("$file"); done
  for ((shard = 0; shard < workers; shard++)); do
    local mine=()
    for ((i = shard; i < ${#files[@]}; i += workers)); do mine+=("${files[i]}"); done
    $PYTHON -m pytest "${mine[@]}" "${args[@]}" > "$LOGS/$STEP.shard-$shard.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}
export -f parallel_pytest

# pytest's options for a GPU run: no cache, a line per test (so a run stopped at its bound still
# shows what passed), skip reasons, the slowest tests (for the next budget), and a per-test
# timeout where pytest-timeout is installed.
pytest_options() {
  echo "-p no:cacheprovider -v -rs --tb=short --durations=25"
  if $PYTHON -c "import pytest_timeout" 2> /dev/null; then echo "--timeout=${TEST_TIMEOUT_S:-60}"; fi
}

install_wheels() {
  if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile .whl/*.whl > "$WORK/wheels.log" 2>&1 \
      || echo "installing .whl/ failed: see $WORK/wheels.log"
  fi
}

build() {
  MAX_JOBS=${MAX_JOBS:-16} bounded build "$1" $PYTHON -m pip install --no-build-isolation --no-deps -v -e .
  # A missing extension must not be built just in time by every test process.
  export MEMKERNELS_JIT=0
  $PYTHON -m memkernels.info > "$LOGS/info.txt" 2>&1 &
  MEMKERNELS_CUDA_FAST_PATHS=1 $PYTHON -m memkernels.info > "$LOGS/info-fast-paths.txt" 2>&1 &
}

sanitizer() {  # sanitizer NAME BOUND TOOL PYTEST_ARGS...
  local name=$1 seconds=$2 tool=$3
  shift 3
  if ! command -v compute-sanitizer > /dev/null; then
    skip_step "$name" "compute-sanitizer is not on this machine"
    return
  fi
  bounded "$name" "$seconds" compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 \
    $PYTHON -m pytest -q -p no:cacheprovider "$@"
}

# sanitizers BOUND: memcheck and racecheck on small cases of Triton and the CUDA scalar
# kernels, and of the CUDA fast paths; four steps side by side, in the background.
sanitizers() {
  sanitizer memcheck "$1" memcheck "${KERNEL_SUITES[@]}" -k "$MEMCHECK_KERNELS" &
  sanitizer racecheck "$1" racecheck "${KERNEL_SUITES[@]}" -k "$RACECHECK_KERNELS" &
  MEMKERNELS_CUDA_FAST_PATHS=1 sanitizer memcheck-fast-paths "$1" memcheck tests/test_cuda_fast_paths.py \
    -k "$SANITIZE_FAST_PATHS" &
  MEMKERNELS_CUDA_FAST_PATHS=1 sanitizer racecheck-fast-paths "$1" racecheck tests/test_cuda_fast_paths.py \
    -k "$SANITIZE_FAST_PATHS" &
}

# test_suites BOUND WORKERS PYTEST_ARGS...: in the background, two steps side by side: `tests`,
# the suite with the fast paths off (PYTEST_ARGS select it), and `tests-fast-paths`, the tests
# they change (FAST_PATH_TESTS) with them on, on half as many workers.
test_suites() {
  local seconds=$1 workers=$2 options ignores=()
  shift 2
  options=$(pytest_options)
  for file in "${CPU_ONLY_TESTS[@]}"; do ignores+=("--ignore=tests/$file"); done
  bounded tests "$seconds" bash -c 'parallel_pytest "$@"' _ "$workers" tests "$@" $options &
  MEMKERNELS_CUDA_FAST_PATHS=1 bounded tests-fast-paths "$seconds" bash -c 'parallel_pytest "$@"' _ \
    $((workers / 2)) tests "${ignores[@]}" -k "$FAST_PATH_TESTS" $options &
}

# warm_compile_caches BOUND: in the background, niced, the op benchmarks' compiled peers and
# Triton kernels run once each, untimed (MEMKERNELS_BENCH_WARM_ONLY), so that the timed run
# reads their compiled code from the caches on disk. The extension is not built yet: no JIT.
warm_compile_caches() {
  MEMKERNELS_JIT=0 MEMKERNELS_BENCH_WARM_ONLY=1 TORCHINDUCTOR_COMPILE_THREADS=4 bounded warm-peers "$1" \
    nice -n 10 $PYTHON -m pytest benchmarks/test_ops.py -q -p no:cacheprovider -k "$WARM_OPS" &
}

# The full suite: one device call of at most 10 minutes, with the build (about a minute).
stage_tests() {
  build 120
  test_suites "${SUITE_S:-220}" "${PYTEST_WORKERS:-10}"
  wait
  sanitizers "${SANITIZER_S:-60}"
}

op_benchmarks() {  # op_benchmarks BOUND PYTEST_ARGS...
  local seconds=$1
  shift
  MEMKERNELS_BENCH_JSONL="$LOGS/ops.jsonl" bounded ops "$seconds" $PYTHON -m pytest benchmarks/test_ops.py -q -rs \
    -p no:cacheprovider --benchmark-json="$LOGS/ops.json" --benchmark-columns=median,rounds "$@"
  if [ ! -f "$LOGS/ops.json" ] && [ -f "$LOGS/ops.jsonl" ]; then  # cut short: what it finished
    $PYTHON -m benchmarks.report --json "$LOGS/ops.jsonl" > "$LOGS/ops.json"
  fi
  if [ -f "$LOGS/ops.json" ]; then $PYTHON -m benchmarks.report "$LOGS/ops.json" > "$LOGS/ops.md" 2>&1; fi
}

# Every target shape (K 256 too) and implementation, then the host-overhead benchmark.
stage_ops() {
  warm_compile_caches 120
  build 120
  wait
  op_benchmarks "${OPS_S:-400}"
  bounded overhead 60 $PYTHON -m pytest benchmarks/test_overhead.py -q -p no:cacheprovider \
    --benchmark-json="$LOGS/overhead.json" --benchmark-columns=median,rounds
  if [ -f "$LOGS/overhead.json" ]; then $PYTHON -m benchmarks.report "$LOGS/overhead.json" > "$LOGS/overhead.md"; fi
}

stage_claims() {
  build 120
  bounded claims "${CLAIMS_S:-440}" $PYTHON -m benchmarks.claims --out "$LOGS" --profile
}

dispatch_rule() {
  if ! $PYTHON -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('benchmarks.dispatch_rule') is None)"; then
    skip_step dispatch-rule "benchmarks.dispatch_rule is not in this checkout: no rule generated"
  elif [ ! -f "$LOGS/ops.json" ]; then
    skip_step dispatch-rule "no ops.json to derive the rule from"
  else
    bounded dispatch-rule "${QUICK_BOUND[dispatch-rule]}" $PYTHON -m benchmarks.dispatch_rule "$LOGS/ops.json" \
      --out "$LOGS/$DISPATCH_RULE"
  fi
}

# The phases of the budget table above. SECONDS counts from the script's start.
stage_quick() {
  local ignores=() deadline=$((QUICK_SECONDS - QUICK_RESERVE))
  for file in "${CPU_ONLY_TESTS[@]}"; do ignores+=("--ignore=tests/$file"); done
  export MEMKERNELS_BENCH=quick
  warm_compile_caches "${QUICK_BOUND[warm-peers]}"
  local warm=$!
  build "${QUICK_BOUND[build]}"
  test_suites "${QUICK_BOUND[tests]}" 10 "${ignores[@]}"
  wait $(jobs -p | grep -v "^$warm$")
  sanitizers "${QUICK_BOUND[sanitizers]}"
  bounded convergence "${QUICK_BOUND[convergence]}" $PYTHON -m benchmarks.convergence --out "$LOGS" &
  wait
  # The op benchmarks, then the claims, each alone on the GPU, with the time left unused before.
  local slack=$((deadline - SECONDS - QUICK_BOUND[ops] - QUICK_BOUND[claims] - QUICK_BOUND[dispatch-rule]))
  ((slack < 0)) && slack=0
  op_benchmarks $((QUICK_BOUND[ops] + 2 * slack / 3)) -k "$QUICK_OPS"
  local claims_bound=$((deadline - SECONDS - QUICK_BOUND[dispatch-rule]))
  ((claims_bound < QUICK_BOUND[claims])) && claims_bound=${QUICK_BOUND[claims]}
  bounded claims "$claims_bound" $PYTHON -m benchmarks.claims --out "$LOGS" --memory-sizes 1024 2048 \
    --speed-memories 1024 --horizons 4
  dispatch_rule
}

run_stage() {
  local stage=$1
  export LOGS="$WORK/$stage" PYTHON
  rm -rf "$LOGS"
  mkdir -p "$LOGS" "$OUT"
  : > "$LOGS/steps.tsv"
  nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
  "stage_$stage"
  wait
  $PYTHON -m benchmarks.gpu_summary "$LOGS" > "$LOGS/summary.txt" 2>&1
  $PYTHON -m benchmarks.pack "$LOGS" "$OUT/$stage.tar.gz" --max-mb "$TARBALL_MAX_MB"
  cp "$LOGS/summary.txt" "$OUT/$stage-summary.txt"
  cat "$LOGS/summary.txt"
}

main() {
  mkdir -p "$WORK"
  install_wheels
  case "${1:-all}" in
    quick | tests | ops | claims) run_stage "$1" ;;
    all) for stage in tests ops claims; do run_stage "$stage"; done ;;
    *) echo "unknown stage $1: quick, tests, ops, claims or all"; exit 2 ;;
  esac
}

# Sourced (tests/test_gpu_session.py), it only defines the helpers.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
