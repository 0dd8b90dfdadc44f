#!/usr/bin/env bash
# The one command for the GPU machine: install, versions, GPU tests, op benchmarks, kernel profile,
# model benchmarks, compiled cases, summary. Each stage runs under its own timeout inside one time
# budget and leaves its results in the folder before the next starts; a failed stage is recorded
# in stages.txt, never fatal.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]   # or OUT_DIR=...; default benchmarks/results
#   QUICK=1            a rerun within 3 minutes: fewer rounds, cases and profile shapes
#   STAGES="op models" run only these of: install env tests bias-grad op profile models compiled
#   BUDGET_S=290       the whole script's budget in seconds (QUICK=1: 170)
#
# Writes at most 8 files: env.txt tests.log bench.log bench.json profile.txt summary.md chart.png
# stages.txt. The compiled cases run last, one pytest process each (pytest-benchmark writes its
# JSON only when a process ends), most wanted first, for as long as the budget lasts.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT_DIR:-benchmarks/results}}
export QUICK=${QUICK:-0}
[ "$QUICK" = 1 ] && default_budget=170 || default_budget=290
BUDGET_S=${BUDGET_S:-$default_budget}
STAGES=${STAGES:-install env tests bias-grad op profile models compiled}
PYTHON=${PYTHON:-python}
export PYTHONUNBUFFERED=1  # a stage killed at its timeout still leaves its log
RESERVE_S=10  # kept for the final summary
START=$SECONDS

mkdir -p "$OUT"
rm -f "$OUT"/{env.txt,tests.log,bench.log,bench.json,profile.txt,summary.md,chart.png,stages.txt}
PARTS=$(mktemp -d)
trap 'rm -rf "$PARTS"' EXIT

record() {  # record STAGE STATUS SECONDS
    printf '%-42s %-44s %4ss\n' "$1" "$2" "$3" | tee -a "$OUT/stages.txt"
}

stage() {  # stage NAME MIN_S MAX_S LOG COMMAND...: runs under min(MAX_S, time left), skips below MIN_S
    local name=$1 min=$2 max=$3 log=$4 t0=$SECONDS rc status counts
    shift 4
    case " $STAGES " in *" ${name%%:*} "*) ;; *) return 0 ;; esac
    local left=$((BUDGET_S - (SECONDS - START) - RESERVE_S))
    local limit=$((left < max ? left : max))
    if ((limit < min)); then
        record "$name" "skipped: ${left}s left" 0
        return 0
    fi
    echo "=== $name (limit ${limit}s): $*" >>"$log"
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    if ((rc == 0)); then status=ok
    elif ((rc == 124 || rc == 137)); then status="TIMEOUT after ${limit}s"
    else status="FAILED rc=$rc"; fi
    # a pytest stage also says what its cases did
    counts=$(tail -n 1 "$log" | grep -Eo '[0-9]+ (passed|failed|skipped|errors?|deselected)' | paste -sd, -)
    record "$name" "$status${counts:+ ($counts)}" $((SECONDS - t0))
}

summarize() {  # merge the JSON parts into bench.json and summary.md; any extra args: the chart too
    timeout 60 "$PYTHON" benchmarks/summarize.py "$PARTS"/*.json --merged "$OUT/bench.json" \
        --md "$OUT/summary.md" --stages "$OUT/stages.txt" "$@"
}

bench() {  # bench NAME MIN_S MAX_S PYTEST_ARGS...: one pytest-benchmark run, merged at once
    local name=$1 min=$2 max=$3
    shift 3
    stage "$name" "$min" "$max" "$OUT/bench.log" "$PYTHON" -m pytest -q -rs --benchmark-only \
        --benchmark-json "$PARTS/${name//[^a-z0-9-]/_}.json" "$@"
    summarize >/dev/null
}

ENV_PY='
import sys, torch, torchvision, triton
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("triton", triton.__version__)
print("torchvision", torchvision.__version__)
try:
    import timm
    print("timm", timm.__version__)
except ImportError as e:
    print("timm: not installed:", e)
import swin_fused
print("swin_fused", swin_fused.__version__, "from", swin_fused.__file__)
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch")
p = torch.cuda.get_device_properties(0)
print(f"device {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
      f"{p.total_memory / 2**30:.0f} GiB")
'

if [ "$QUICK" = 1 ]; then
    COMPILED="train-224-swin_t infer-224-swin_t"
else
    COMPILED="train-224-swin_t infer-224-swin_t train-cifar-swin_cifar train-224-tv_swin_t
              infer-cifar-swin_cifar infer-224-tv_swin_t"
fi
[ "$QUICK" = 1 ] && tests_max=100 || tests_max=120

echo "gpu_check: results in $OUT, budget ${BUDGET_S}s, QUICK=$QUICK"
stage install 5 120 "$OUT/env.txt" "$PYTHON" -m pip install -q -e . --no-deps --no-build-isolation
stage env 5 60 "$OUT/env.txt" bash -c 'nvidia-smi; "$0" -c "$1"' "$PYTHON" "$ENV_PY"
# kernel compilation dominates the suite on a fresh machine: spread it over 8 processes
stage tests 20 "$tests_max" "$OUT/tests.log" env SWIN_FUSED_STRICT=1 "$PYTHON" -m pytest tests -q \
    -n 8 --tb=short -rfE
stage bias-grad 10 60 "$OUT/tests.log" "$PYTHON" -m benchmarks.check_bias_grad
bench op 20 90 benchmarks/test_op.py
stage profile 10 90 "$OUT/profile.txt" "$PYTHON" -m benchmarks.profile_kernels
bench models 30 150 benchmarks/test_models.py -k "not compiled"
for group in $COMPILED; do
    for impl in compiled fused+compiled; do
        bench "compiled:$group-$impl" 50 180 "benchmarks/test_models.py::test_model[$group-$impl]"
    done
done

echo "--- summary"
summarize --png "$OUT/chart.png"
echo "--- stages"
cat "$OUT/stages.txt"
echo "--- $((SECONDS - START))s in all; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
