#!/usr/bin/env bash
# One command for a GPU machine: build robustagg with CUDA for the card, run
# the CUDA tests (among them CPU/CUDA parity beyond 2**31 elements) and
# compute-sanitizer (memcheck, racecheck and initcheck) on a small call of
# every kernel, side by side, then time every CUDA op against a device-to-device copy of
# the same bytes (bench/gpu_time.py) and the Byzantine line's rounds per second
# in the ICML 2021 configuration (bench/workloads.py). Prints the table last; the full log and the tables go to $OUT (or
# bench/out/gpu when OUT is unset).
#
#   bash bench/gpu_check.sh            # everything
#   QUICK=1 bash bench/gpu_check.sh    # smaller timing grid
#   TESTS=all bash bench/gpu_check.sh  # the whole test suite, not only the CUDA tests
# Time limits per step, in seconds: TESTS_S (300), SANITIZE_S (300), TIMINGS_S (240),
# WORKLOADS_S (120); ROUNDS (30) rounds of each training run.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
PY="${PYTHON:-python3}"
# The scripts under bench/ import the in-place build from the repository root.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FAILED="$OUT/failed_steps"
: > "$FAILED"
step() { echo; echo "=== $* ($(date +%T))"; }
fail() { echo "FAILED: $*" | tee -a "$FAILED"; }

{
  step "machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

  step "build (sm_90)"
  # NVCC_APPEND_FLAGS puts the compiler's register / spill report into build.log.
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" NVCC_APPEND_FLAGS="-Xptxas=-v"
  "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; fail build; exit 1; }
  grep -E "robustagg:" "$OUT/build.log" | head -1
  "$PY" -c "import robustagg as r; assert r.cuda_kernels_built(), 'CUDA kernels missing'; print('cuda kernels built; cpu isa', r.cpu_kernel_isa())" || { fail import; exit 1; }

  # The CUDA tests and the three sanitizers run side by side (each is its own process on the
  # card; none is timed); the timings run alone afterwards. Each step has a time limit, so one
  # that hangs still leaves the others' results. TESTS=all runs the whole suite (CI runs the CPU
  # part on every commit).
  step "tests (${TESTS:-cuda}), compute-sanitizer memcheck, racecheck and initcheck, side by side"
  xdist=(); "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  marks=(-m cuda); [ "${TESTS:-cuda}" = all ] && marks=()
  for tool in memcheck racecheck initcheck; do
    timeout "${SANITIZE_S:-300}" compute-sanitizer --tool $tool --error-exitcode 3 "$PY" bench/gpu_sanitize.py \
      > "$OUT/sanitize-$tool.log" 2>&1 &
    eval "pid_$tool=$!"
  done
  timeout "${TESTS_S:-300}" "$PY" -m pytest tests -q -p no:cacheprovider --continue-on-collection-errors "${marks[@]}" "${xdist[@]}" -rfE \
    > "$OUT/tests.log" 2>&1 || fail "tests (rc $?)"
  tail -25 "$OUT/tests.log"
  for tool in memcheck racecheck initcheck; do
    eval "wait \$pid_$tool" || fail "$tool (rc $?)"
    echo "--- $tool"; tail -6 "$OUT/sanitize-$tool.log"
  done

  step "timings"
  if [ "${QUICK:-0}" = 1 ]; then grid=(--n 8 25 64 128 --d 16000000); else grid=(); fi
  timeout "${TIMINGS_S:-240}" "$PY" bench/gpu_time.py "${grid[@]}" --out "$OUT" > "$OUT/gpu-time.txt" || fail "timings (rc $?)"

  step "training throughput: the ICML 2021 configuration on synthetic CIFAR-10 (bench/workloads.py)"
  timeout "${WORKLOADS_S:-120}" "$PY" bench/workloads.py --suite icml21 --device cuda --rounds "${ROUNDS:-30}" \
    --json "$OUT/workloads-gpu.json" --markdown "$OUT/workloads-gpu.md" 2>&1 | tail -12 || fail workloads
} 2>&1 | tee "$LOG"

echo
echo "=== table"
cat "$OUT/gpu-time.txt" 2>/dev/null
if [ -s "$FAILED" ]; then cat "$FAILED"; exit 1; fi
echo "all steps passed"
