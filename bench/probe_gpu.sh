#!/usr/bin/env bash
# The probe's GPU checks in one call, on a machine with one or more CUDA GPUs:
#   1. bench/probe_throughput.py --device cuda   images/s and busy fraction of the probe loop on a
#      LLaVA-1.5-7B-shaped model with random bf16 weights (goals: >= 45 img/s, busy >= 0.9), the
#      per-image loop, and the choice scorer against generate;
#   2. pytest -m gpu tests/integration/test_gpu.py   the CUDA target, the scorer against generate on
#      CUDA, the probe on CUDA ranks (two when there are two GPUs); the step fails unless at least
#      one test passed (pytest exits 0 when every test skips, e.g. when no GPU is visible to it);
#   3. bench/target_load_memory.py   host memory of loading the 7B shape straight onto the GPU vs.
#      via the CPU (what the probe pod's memory request follows from); fails unless straight onto
#      the GPU peaks lower.
# Each step has its own time limit; a failed step does not stop the next. Results go to $OUT (or
# ./probe-gpu-results): probe_gpu.log, probe_throughput.json, pytest_gpu.txt, load_memory.json.
# Exit status: 0 when every step passed, else 1.
#
# The GPU image has torch but not every package the project pins, and no network. So, once, on a
# machine that reaches PyPI, in the repository root:
#     bash bench/probe_gpu.sh --fetch-wheels      # Python 3.12 wheels (24 MB) into .whl/, git-ignored
# then on the GPU machine, in the repository root, with .whl carried along (an ignored folder):
#     bash bench/probe_gpu.sh                     # ~8 minutes on one H200
# Environment: STEPS (default "bench tests memory"), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# What the GPU image lacks or has too old (checked against its package list, 2026-11): the
# project's transformers pin, google-genai and its dependencies, pydantic. Versions as in the
# project's CPU venv.
WHEELS=(
  transformers==5.24.0 regex==2026.11.19
  google-genai==3.6.1 google-auth==2.63.0 pyasn1==0.6.5 pyasn1-modules==0.4.2
  cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
  httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 h11==0.16.0 anyio==4.16.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 tenacity==9.1.4 websockets==17.4 distro==1.9.0 sniffio==1.3.1
)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p .whl
  echo '*' >.whl/.gitignore  # the folder ignores itself: git never tracks the wheels
  for w in "${WHEELS[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
      -d .whl "$w" || { echo "could not fetch $w" >&2; exit 1; }
  done
  du -sh .whl
  exit 0
fi

OUT=${OUT:-$PWD/probe-gpu-results}
mkdir -p "$OUT"
LOG="$OUT/probe_gpu.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
echo "== $(date -u +%FT%TZ) probe_gpu.sh on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl \
    || { echo "could not install the carried wheels"; exit 1; }
fi
# The project itself, editable, so that the console scripts torchrun starts (vlmprobe) exist.
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  || { echo "could not install vlmprobe"; exit 1; }
"$PYTHON" - <<'EOF' || exit 1
import torch, transformers, pydantic, google.genai, vlmprobe.vlm.llava  # noqa: F401
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
assert torch.cuda.is_available(), "no CUDA GPU visible"
EOF

failed=()
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local started=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - started))s"
  [[ $rc -eq 0 ]] || failed+=("$name")
}

for s in ${STEPS:-bench tests memory}; do
  case $s in
    bench) step bench 270 "$PYTHON" bench/probe_throughput.py --device cuda ;;
    tests) rm -f "$OUT/pytest_gpu.xml"
           step tests 150 "$PYTHON" -m pytest -m gpu tests/integration/test_gpu.py -q -rA -p no:cacheprovider \
             -W default --junitxml="$OUT/pytest_gpu.xml"
           # pytest passes when every test skips: count the passed ones in its report
           step tests-passed 30 "$PYTHON" bench/junit_passed.py "$OUT/pytest_gpu.xml" ;;
    memory) step memory 150 "$PYTHON" bench/target_load_memory.py ;;
    *) echo "unknown step $s"; failed+=("$s") ;;
  esac
done
grep -hE "passed|failed|skipped" "$LOG" | tail -1 >"$OUT/pytest_gpu.txt" || true
if ((${#failed[@]})); then
  echo "== probe_gpu.sh: FAILED steps: ${failed[*]}"
  exit 1
fi
echo "== probe_gpu.sh: all steps passed"
