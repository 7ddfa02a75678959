#!/usr/bin/env bash
# The whole GPU check of fastrnn's CUDA backend, on a machine with a GPU:
#   build + install, CUDA tests, compute-sanitizer (memcheck, racecheck), benchmarks vs
#   cuDNN, and a summary table. Run from anywhere:
#
#     bash benchmarks/gpu_check.sh              # everything (about 10 minutes on an H100)
#     bash benchmarks/gpu_check.sh build test   # only some stages: build test sanitize bench
#     bash benchmarks/gpu_check.sh test_cuda gpu_timing   # or single stages, by their names
#     DEADLINE=540 bash benchmarks/gpu_check.sh           # all that fits in 9 minutes, in order
#
# Environment: PYTHON (default: python3), OUT (folder for logs and tables, default
# ./gpu_check_out), CUDA_ARCHS (default: the GPU's own compute capability, e.g. "90"),
# STAGE_TIMEOUT (seconds a stage may run before it is killed and marked FAIL, default 600),
# DEADLINE (seconds the whole check may take: each stage gets at most what is left, and a
# stage with under 15 s left is SKIPPED; default none: fit a device lease with it),
# TEST_TIMEOUT (seconds per test where pytest-timeout is installed, default 120),
# WORKERS (pytest-xdist workers for the CUDA tests where xdist is installed, default 4),
# SANITIZE_FILTER (pytest -k expression of the tests run under compute-sanitizer; racecheck
# and synccheck narrow it further to forward-direction cases).
# The persistent (one cooperative launch) kernel's tests and timings run in stages of
# their own, after the per-step ones, so that a hang there costs only its own stage.
# Needs: torch with CUDA, nvcc, scikit-build-core, pybind11, pytest (no package registry:
# the install uses --no-build-isolation).
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
STAGES="${*:-build test sanitize bench}"
STAGE_TIMEOUT="${STAGE_TIMEOUT:-600}"
DEADLINE="${DEADLINE:-}"
export PYTHONUNBUFFERED=1
declare -A RESULT
ORDER=()

stage() {  # stage NAME COMMAND...: run, log to $OUT/NAME.log, record PASS/FAIL
  local name="$1"; shift
  ORDER+=("$name")
  local limit="$STAGE_TIMEOUT"
  if [ -n "$DEADLINE" ]; then
    local left=$((DEADLINE - SECONDS - 15))  # 15 s for the kill and the summary
    if [ "$left" -lt 15 ]; then
      RESULT[$name]="SKIPPED (DEADLINE=$DEADLINE s reached)"; echo "=== $name: skipped"; return
    fi
    [ "$left" -lt "$limit" ] && limit="$left"
  fi
  echo "=== $name (at most $limit s): $*"
  local t0=$SECONDS
  # bash -c so that the exported shell function pytest_ok can run under timeout too
  if timeout -k 10 "$limit" bash -c '"$@"' _ "$@" > >(tee "$OUT/$name.log") 2>&1; then
    RESULT[$name]="PASS ($((SECONDS - t0)) s)"
  else
    RESULT[$name]="FAIL ($((SECONDS - t0)) s, see $OUT/$name.log)"
  fi
}

want() {  # want GROUP STAGE: the group (build test sanitize bench) or the stage was named
  local w
  for w in "$@"; do [[ " $STAGES " == *" $w "* ]] && return 0; done
  return 1
}

pytest_ok() {  # pytest exit code 5 (nothing selected) is not a failure here
  "$@"; local rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ]
}
export -f pytest_ok

# Tests and benchmarks run from a scratch folder so that `import fastrnn` finds the
# installed package (with its compiled modules), not the source tree.
RUN_DIR="$(mktemp -d)"
cd "$RUN_DIR"

"$PY" - <<'PYEOF' | tee "$OUT/environment.txt"
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
print("capability", torch.cuda.get_device_capability() if torch.cuda.is_available() else None)
PYEOF

if want build; then
  ARCHS="${CUDA_ARCHS:-$("$PY" -c 'import torch; a, b = torch.cuda.get_device_capability(); print(f"{a}{b}")' 2>/dev/null || echo "80;90")}"
  stage build env CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${ARCHS}" \
    "$PY" -m pip install --no-build-isolation --no-deps -v "$REPO"
fi
if want build import; then
  stage import "$PY" -c "
import fastrnn, fastrnn._cuda as m
from fastrnn.backends import cuda as cb
print(fastrnn.__file__, m.__file__, 'device_count', m.device_count())
r = cb.unavailable_reason()
assert r is None, r
print('cuda backend available')"
fi

PYTEST=("$PY" -m pytest -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml")
# Parallel workers and a per-test time limit where the plugins are there (a hung kernel
# then fails its test instead of the whole stage).
PAR=()
"$PY" -c "import xdist" 2>/dev/null && PAR+=(-n "${WORKERS:-4}")
"$PY" -c "import pytest_timeout" 2>/dev/null && PAR+=(--timeout "${TEST_TIMEOUT:-120}")
if want test tests_k_cuda; then
  stage tests_k_cuda pytest_ok "${PYTEST[@]}" "${PAR[@]}" -q -rs "$REPO/tests" \
    -k "cuda and not test_cuda.py"
fi
if want test test_cuda; then
  stage test_cuda "${PYTEST[@]}" "${PAR[@]}" -q -rs "$REPO/tests/test_cuda.py" -k "not persistent"
fi
if want bench gpu_user; then
  # What a user gets: the default backend (the CUDA dispatch) against torch.nn, fp32, bf16,
  # autocast, padded and packed.
  # shellcheck disable=SC2086
  stage gpu_user "$PY" "$REPO/benchmarks/gpu_user.py" ${GPU_USER_ARGS:-} \
    --json "$OUT/gpu_user.json" --markdown "$OUT/gpu_user.md"
fi

if want sanitize memcheck racecheck synccheck; then
  if command -v compute-sanitizer >/dev/null; then
    # A representative subset (all cells, packed, reverse, both tiles) keeps it short.
    SUB="${SANITIZE_FILTER:-test_gpu_kernels_match_reference and float32 and packed}"
    want sanitize memcheck && stage memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
      "${PYTEST[@]}" -q -x "$REPO/tests/test_cuda.py" -k "$SUB"
    want sanitize racecheck && stage racecheck compute-sanitizer --tool racecheck --error-exitcode 1 \
      "${PYTEST[@]}" -q -x "$REPO/tests/test_cuda.py" -k "$SUB and fwd"
    want sanitize synccheck && stage synccheck compute-sanitizer --tool synccheck --error-exitcode 1 \
      "${PYTEST[@]}" -q -x "$REPO/tests/test_cuda.py" -k "$SUB and fwd and small"
  else
    ORDER+=(sanitize); RESULT[sanitize]="SKIPPED (compute-sanitizer not on PATH)"
  fi
fi

if want test test_cuda_persistent; then
  stage test_cuda_persistent "${PYTEST[@]}" "${PAR[@]}" -q -rs "$REPO/tests/test_cuda.py" \
    -k "persistent"
fi
if want bench gpu_timing; then
  # GPU_TIMING_ARGS (GPU_USER_ARGS): more arguments of gpu_timing.py (gpu_user.py) (say "--shapes imdb,n1 --variants auto,step")
  # shellcheck disable=SC2086
  stage gpu_timing "$PY" "$REPO/benchmarks/gpu_timing.py" --variants auto,small,large ${GPU_TIMING_ARGS:-} \
    --json "$OUT/gpu_timing.json" --markdown "$OUT/gpu_timing.md"
fi
if want bench gpu_timing_persistent; then
  stage gpu_timing_persistent "$PY" "$REPO/benchmarks/gpu_timing.py" --variants persistent \
    --json "$OUT/gpu_timing_persistent.json" --markdown "$OUT/gpu_timing_persistent.md"
fi
if want bench bench_suite_cuda; then
  # The shared benchmark suite's CUDA cases (pytest-benchmark), quick mode.
  stage bench_suite_cuda pytest_ok "${PYTEST[@]}" -q "$REPO/benchmarks" -k cuda --quick \
    --benchmark-json "$OUT/bench_suite_cuda.json"
fi

cd / && rm -rf "$RUN_DIR"
echo
echo "================ fastrnn GPU check ($(cat "$OUT/environment.txt" | grep '^gpu' || true))"
printf "%-18s %s\n" "stage" "result"
for n in "${ORDER[@]}"; do printf "%-18s %s\n" "$n" "${RESULT[$n]}"; done
for f in gpu_user.md gpu_timing.md gpu_timing_persistent.md; do
  if [ -f "$OUT/$f" ]; then echo; cat "$OUT/$f"; fi
done
for n in "${ORDER[@]}"; do [[ "${RESULT[$n]}" == FAIL* ]] && exit 1; done
for n in "${ORDER[@]}"; do [[ "${RESULT[$n]}" == SKIPPED* ]] && exit 3; done
exit 0
