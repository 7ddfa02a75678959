#!/usr/bin/env bash
# The whole GPU check of fastrnn's CUDA backend, on a machine with a GPU:
#   build + install, CUDA tests, compute-sanitizer (memcheck, racecheck), benchmarks vs
#   cuDNN, and a summary table. Run from anywhere:
#
#     bash benchmarks/gpu_check.sh              # everything (about 10 minutes on an H100)
#     bash benchmarks/gpu_check.sh build test   # only some stages: build test sanitize bench
#
# Environment: PYTHON (default: python3), OUT (folder for logs and tables, default
# ./gpu_check_out), CUDA_ARCHS (default: the GPU's own compute capability, e.g. "90").
# Needs: torch with CUDA, nvcc, scikit-build-core, pybind11, pytest (no package registry:
# the install uses --no-build-isolation).
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
STAGES="${*:-build test sanitize bench}"
declare -A RESULT
ORDER=()

stage() {  # stage NAME COMMAND...: run, log to $OUT/NAME.log, record PASS/FAIL
  local name="$1"; shift
  ORDER+=("$name")
  echo "=== $name: $*"
  local t0=$SECONDS
  if "$@" > >(tee "$OUT/$name.log") 2>&1; then
    RESULT[$name]="PASS ($((SECONDS - t0)) s)"
  else
    RESULT[$name]="FAIL ($((SECONDS - t0)) s, see $OUT/$name.log)"
  fi
}

want() { [[ " $STAGES " == *" $1 "* ]]; }

pytest_ok() {  # pytest exit code 5 (nothing selected) is not a failure here
  "$@"; local rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ]
}

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
  stage build env CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${ARCHS}" \
    "$PY" -m pip install --no-build-isolation --no-deps -v "$REPO"
  stage import "$PY" -c "
import fastrnn, fastrnn._cuda as m
from fastrnn.backends import cuda as cb
print(fastrnn.__file__, m.__file__, 'device_count', m.device_count())
r = cb.unavailable_reason()
assert r is None, r
print('cuda backend available')"
fi

PYTEST=("$PY" -m pytest -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml")
if want test; then
  stage test_cuda "${PYTEST[@]}" -q -rs "$REPO/tests/test_cuda.py"
  stage tests_k_cuda pytest_ok "${PYTEST[@]}" -q -rs "$REPO/tests" -k "cuda and not test_cuda.py"
fi

if want sanitize; then
  if command -v compute-sanitizer >/dev/null; then
    # A representative subset (all cells, packed, reverse, both tiles) keeps it short.
    SUB="test_gpu_kernels_match_reference and float32 and packed"
    stage memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
      "${PYTEST[@]}" -q -x "$REPO/tests/test_cuda.py" -k "$SUB"
    stage racecheck compute-sanitizer --tool racecheck --error-exitcode 1 \
      "${PYTEST[@]}" -q -x "$REPO/tests/test_cuda.py" -k "$SUB and fwd"
    stage synccheck compute-sanitizer --tool synccheck --error-exitcode 1 \
      "${PYTEST[@]}" -q -x "$REPO/tests/test_cuda.py" -k "$SUB and fwd and small"
  else
    ORDER+=(sanitize); RESULT[sanitize]="SKIPPED (compute-sanitizer not on PATH)"
  fi
fi

if want bench; then
  stage gpu_timing "$PY" "$REPO/benchmarks/gpu_timing.py" --json "$OUT/gpu_timing.json" \
    --markdown "$OUT/gpu_timing.md"
  # The shared benchmark suite's CUDA cases (pytest-benchmark), quick mode.
  stage bench_suite_cuda pytest_ok "${PYTEST[@]}" -q "$REPO/benchmarks" -k cuda --quick \
    --benchmark-json "$OUT/bench_suite_cuda.json"
fi

cd / && rm -rf "$RUN_DIR"
echo
echo "================ fastrnn GPU check ($(cat "$OUT/environment.txt" | grep '^gpu' || true))"
printf "%-18s %s\n" "stage" "result"
for n in "${ORDER[@]}"; do printf "%-18s %s\n" "$n" "${RESULT[$n]}"; done
if [ -f "$OUT/gpu_timing.md" ]; then echo; cat "$OUT/gpu_timing.md"; fi
for n in "${ORDER[@]}"; do [[ "${RESULT[$n]}" == FAIL* ]] && exit 1; done
exit 0
