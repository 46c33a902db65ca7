#!/usr/bin/env bash
# One device call that does every GPU check and measurement, results under $OUT:
#   bash benchmarks/gpu_session.sh        (from the repository root, on the GPU machine)
# The machine has torch, triton, pytest, pytest-benchmark and nvcc but no network:
# the package installs editable with no build isolation and no dependencies,
# which also builds the CUDA extension against the torch that is there.
set -uo pipefail
OUT=${OUT:-benchmarks/results/local}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

{
  date -u +%Y-%m-%dT%H:%MZ
  git rev-parse HEAD 2>/dev/null || echo "no git"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} > "$OUT/env.txt" 2>&1

# matplotlib and tqdm (plots, progress) are not on the GPU machine: carry their wheels in .whl/
# (see the device README) and they install here first.
if [ -d .whl ]; then python -m pip install -q --no-index --no-deps .whl/*.whl >> "$OUT/env.txt" 2>&1; fi
MAX_JOBS=16 python -m pip install --no-build-isolation --no-deps -q -e . > "$OUT/build.log" 2>&1 \
  || echo "extension build failed: see build.log" | tee -a "$OUT/env.txt"
python -m memkernels.info | tee -a "$OUT/env.txt"

python -m pytest tests -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -n 25

if command -v compute-sanitizer > /dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 1 python -m pytest tests -q -p no:cacheprovider \
    -k "bitwise_deterministic" > "$OUT/memcheck.log" 2>&1 && echo "memcheck: clean" || echo "memcheck: see memcheck.log"
fi

python -m pytest benchmarks/test_ops.py -q -p no:cacheprovider --benchmark-json="$OUT/ops.json" \
  --benchmark-columns=median,rounds > "$OUT/ops.log" 2>&1
python -m benchmarks.report "$OUT/ops.json" | tee "$OUT/ops.md"
python -m benchmarks.claims --out "$OUT" --profile > "$OUT/claims.log" 2>&1
tail -n 25 "$OUT/claims.md"
