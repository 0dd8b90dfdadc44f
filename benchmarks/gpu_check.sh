#!/usr/bin/env bash
# The one command for the GPU machine: the most telling numbers first (a torch.profiler profile
# of one timm Swin-T 224 training step, eager, fused and timm's SDPA, which says whether the step
# is bound by the GPU or the host; the op's forward+backward at Swin-T stage 1 with every impl but
# FlexAttention; Swin-T 224 training uncompiled, fused also replayed from one CUDA graph), then
# what a first call must also bring back (the kernels alone, the GPU tests of the kernels and
# model families), then FlexAttention and the compiled Swin-T 224 training cases, the other op and
# model cases, the CLI tests, the remaining compiled cases, the op with windows over 64 tokens
# (Swin-B 384, Swin V2-T 256), and last the 3-D cases (video Swin, SwinUNETR), which a first call
# cuts for time. Each stage runs under its own timeout
# inside one time budget and leaves its results in the folder before the next starts; a stage past
# its timeout is interrupted (SIGINT: pytest still prints which tests failed and why); a failed
# stage, or one cut because the budget could not hold it, is recorded in stages.txt, never fatal.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]   # or OUT_DIR=...; default benchmarks/results
#   QUICK=1            a rerun within 3 minutes: fewer rounds and cases
#   STAGES="op1 train224"  run only these stage families (env profile-step op1 train224 profile
#                      tests op models bias-grad compiled tiled op3d video unetr) or exact stage
#                      names from stages.txt; STAGES="env op3d video unetr": the 3-D cases;
#                      STAGES="env profile tiled": the kernels alone and the tiled op cases
#   BUDGET_S=290       the whole script's budget in seconds (QUICK=1: 170)
#
# Writes at most 8 files: env.txt tests.log bench.log bench.json profile.txt summary.md chart.png
# stages.txt (the profile-step summaries are appended to profile.txt, before the kernel profile).
# Every call starts its folder afresh: give a second call (e.g. with the STAGES that stages.txt
# says were cut) another folder, and merge the two bench.json with summarize.py.
#
# Budget, as measured on an H200 machine with 16 cores and no compile caches (2026-11-28, torch
# 2.11, benchmarks/results/2026-11-28-h200): env 22 s (nvidia-smi and the imports); op1 34 s;
# profile 48 s (before it also timed each case in a CUDA graph and took the tiled cases);
# train224 41 s; op1:compiled 45 s; op1:flex 41 s; a compiled Swin-T training case over 80 s;
# op 60 s; the whole tests folder over 235 s in one process, the kernel and family tests (all but
# tests/cli) over 120 s in 8: they get 90 s, the CLI tests the same later.
# Not yet measured (estimates): profile-step ~100 (eager ~25, fused ~50 with the first Triton
# compilation of the bf16 kernels, which later stages then find cached, sdpa ~25); the two
# fused+cudagraph cases train224 now holds, ~30 more; profile ~100 (twice the timings, and the
# tiled kernels of three more shapes to compile); tiled ~60 (the op at Swin-B 384 and Swin V2-T
# 256 stage 1, uncompiled: 16 cases, the tiled kernels compiled for two new windows), then its
# compiled and FlexAttention cases ~60-90 per group.
#   env 22, profile-step ~100, op1 34, op1:compiled 45, train224 ~70   -> ~270 of 290
#   so the kernel profile (~100) and the tests (90) no longer fit a first call; they, op1:flex
#   (~41), the compiled Swin-T 224 training cases (80+ s each: more than a call
#   can hold beside the rest), op, models, tests:cli, bias-grad, the remaining compiled cases and
#   tiled: a second call, with the STAGES that stages.txt prints
#   3-D, last: op3d (the op at swin3d_t and SwinUNETR stage 1, uncompiled, ~40), video (swin3d_t
#   16x224x224 training and inference at batch 8, uncompiled, ~90), unetr (SwinUNETR 96^3, skipped
#   with the reason where MONAI is not installed), then their compiled and FlexAttention cases
#   (~60-90 each): a call of their own
# QUICK=1 (170 s) gets profile-step and op1, estimated, and cuts the rest.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT_DIR:-benchmarks/results}}
export QUICK=${QUICK:-0}
[ "$QUICK" = 1 ] && default_budget=170 || default_budget=290
BUDGET_S=${BUDGET_S:-$default_budget}
ALL_STAGES="env profile-step op1 train224 profile tests op models bias-grad compiled tiled op3d"
ALL_STAGES="$ALL_STAGES video unetr"
STAGES=${STAGES:-$ALL_STAGES}
PYTHON=${PYTHON:-python}
export PYTHONUNBUFFERED=1  # a stage killed at its timeout still leaves its log
RESERVE_S=10  # kept for the final summary
START=$SECONDS

mkdir -p "$OUT"
rm -f "$OUT"/{env.txt,tests.log,bench.log,bench.json,profile.txt,summary.md,chart.png,stages.txt}
PARTS=$(mktemp -d)
trap 'rm -rf "$PARTS"' EXIT
CUT=()

record() {  # record STAGE STATUS SECONDS
    printf '%-50s %-44s %4ss\n' "$1" "$2" "$3" | tee -a "$OUT/stages.txt"
}

selected() {  # selected NAME: the stage's family or its exact name is in STAGES
    case " $STAGES " in *" ${1%%:*} "* | *" $1 "*) return 0 ;; *) return 1 ;; esac
}

stage() {  # stage NAME MIN_S MAX_S LOG COMMAND...: under min(MAX_S, time left); cut below MIN_S
    local name=$1 min=$2 max=$3 log=$4 t0=$SECONDS rc status counts
    shift 4
    selected "$name" || return 0
    local left=$((BUDGET_S - (SECONDS - START) - RESERVE_S))
    local limit=$((left < max ? left : max))
    if ((limit < min)); then
        record "$name" "CUT: needs ${min}s, ${left}s left" 0
        CUT+=("$name")
        return 0
    fi
    echo "=== $name (limit ${limit}s): $*" >>"$log"
    timeout -s INT -k 10 "$limit" "$@" >>"$log" 2>&1
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

bench() {  # bench NAME MIN_S MAX_S PYTEST_ARGS...: one pytest-benchmark process, merged at once
    local name=$1 min=$2 max=$3
    shift 3
    stage "$name" "$min" "$max" "$OUT/bench.log" "$PYTHON" -m pytest -q -rs --benchmark-only \
        --benchmark-json "$PARTS/${name//[^a-z0-9-]/_}.json" "$@"
    summarize >/dev/null
}

ids() {  # ids FILE GROUP IMPL...: the pytest node ids of these cases
    local file=$1 group=$2 test=test_model
    shift 2
    [ "$file" = benchmarks/test_op.py ] && test=test_op
    for impl in "$@"; do echo "$file::$test[$group-$impl]"; done
}

compiled_cases() {  # compiled_cases FILE GROUP IMPL...: one process for these compiled cases
    local file=$1 group=$2
    # shellcheck disable=SC2046  # node ids hold no spaces
    bench "compiled:$group" 50 180 $(ids "$@")
}

ENV_PY='
import sys, torch, torchvision, triton
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("triton", triton.__version__)
print("torchvision", torchvision.__version__)
for name in ("timm", "monai", "einops", "transformers"):
    try:
        print(name, __import__(name).__version__)
    except ImportError as e:
        print(f"{name}: not installed:", e)
import swin_fused
print("swin_fused", swin_fused.__version__, "from", swin_fused.__file__)
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch")
p = torch.cuda.get_device_properties(0)
print(f"device {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
      f"{p.total_memory / 2**30:.0f} GiB")
'
OP1=op-fwdbwd-swin_t-stage1
[ "$QUICK" = 1 ] && tests_max=60 || tests_max=90
# kernel compilation dominates the suite on a fresh machine: spread it over 8 processes if we can
"$PYTHON" -c "import xdist" 2>/dev/null && xdist=(-n 8) || xdist=()
# the 2-D cases with windows over 64 tokens and the 3-D cases run last, in stages of their own
TILED="swin_b_384 or swinv2_t_w16"
THREE_D="swin3d_t or swin_unetr"
# the cases op1 and train224 already ran, left out of the later stages
op_rest="not compiled and not flex and not ($TILED) and not ($THREE_D)"
models_rest="not compiled and not ($THREE_D)"
selected op1 && op_rest="$op_rest and not $OP1"
TRAIN224="train-224-swin_t or train-224-timm_swin_t"
selected train224 && models_rest="$models_rest and not ($TRAIN224)"

# the checkout itself, not an install: pip install -e needs the network for its build tools
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the kernels' own tests first, then the families' and the top-level ones; the CLI tests later
KERNEL_TESTS=(tests/op tests/families tests/test_*.py)
pytest_tests() {  # pytest_tests NAME MAX_S FILES...: the GPU tests, strict, failures listed
    local name=$1 max=$2
    shift 2
    stage "$name" 30 "$max" "$OUT/tests.log" env SWIN_FUSED_STRICT=1 "$PYTHON" -m pytest -q \
        "${xdist[@]}" --tb=short -rfE "$@"
}

echo "gpu_check: results in $OUT, budget ${BUDGET_S}s, QUICK=$QUICK, stages: $STAGES"
stage env 5 30 "$OUT/env.txt" bash -c 'nvidia-smi; "$0" -c "$1"' "$PYTHON" "$ENV_PY"

# 0. one timm Swin-T 224 training step at batch 128 under torch.profiler: eager, fused, and the
# best peer, timm's SDPA; each summary is appended to profile.txt (its own file stays in $PARTS)
for impl in eager fused sdpa; do
    [ $impl = fused ] && max=90 || max=45
    stage "profile-step:$impl" 20 $max "$OUT/profile.txt" "$PYTHON" -m benchmarks.profile_step \
        timm_swin_t $impl --mode train --batch 128 --out "$PARTS"
done

# 1. the op at Swin-T stage 1, forward + backward, every impl but FlexAttention; Swin-T 224
# training, uncompiled (fused+cudagraph included); the kernels alone; the GPU tests
bench op1 15 60 benchmarks/test_op.py -k "$OP1 and not compiled and not flex"
bench op1:compiled 20 60 $(ids benchmarks/test_op.py $OP1 compiled)
bench train224 25 90 benchmarks/test_models.py -k "($TRAIN224) and not compiled"
stage profile 20 150 "$OUT/profile.txt" "$PYTHON" -m benchmarks.profile_kernels
pytest_tests tests "$tests_max" "${KERNEL_TESTS[@]}"

# 2. FlexAttention at Swin-T stage 1, then each compiled Swin-T 224 training case, one process each
bench op1:flex 25 75 $(ids benchmarks/test_op.py $OP1 flex)
for c in swin_t:compiled swin_t:fused+compiled timm_swin_t:sdpa+compiled \
    timm_swin_t:fused+compiled timm_swin_t:compiled; do
    # shellcheck disable=SC2046
    bench "train224:${c/:/-}" 60 150 $(ids benchmarks/test_models.py "train-224-${c%%:*}" "${c#*:}")
done

# 3. the rest: the other op and model cases, the CLI tests, the other compiled cases
bench op 40 150 benchmarks/test_op.py -k "$op_rest"
bench models 40 180 benchmarks/test_models.py -k "$models_rest"
pytest_tests tests:cli 120 tests/cli
stage bias-grad 10 60 "$OUT/tests.log" "$PYTHON" -m benchmarks.check_bias_grad
M=benchmarks/test_models.py
compiled_cases $M infer-224-swin_t compiled fused+compiled fused+compiled-ro
compiled_cases $M train-224-swin_t fused+compiled-ro
compiled_cases $M train-224-timm_swin_t fused+compiled-ro
compiled_cases $M train-224-hf_swin_t compiled sdpa+compiled fused+compiled
compiled_cases $M latency-224-swin_t-b1 compiled fused+compiled
compiled_cases $M latency-224-swin_t-b8 compiled fused+compiled
[ "$QUICK" = 1 ] || compiled_cases $M train-cifar-swin_cifar-b64 compiled fused+compiled
selected op1 || compiled_cases benchmarks/test_op.py $OP1 compiled flex
for group in op-fwdbwd-swin_t-stage{2,3,4} op-fwdbwd-swin_cifar-stage{1,2,3} \
    op-fwd-swin_t-stage{1,2,3,4} op-fwd-swin_cifar-stage{1,2,3}; do
    compiled_cases benchmarks/test_op.py "$group" compiled flex
done
compiled_cases $M train-224-tv_swin_t compiled fused+compiled
compiled_cases $M infer-224-timm_swin_t compiled sdpa+compiled fused+compiled fused+compiled-ro
compiled_cases $M latency-224-timm_swin_t-b1 compiled fused+compiled
compiled_cases $M latency-224-timm_swin_t-b8 compiled fused+compiled
compiled_cases $M infer-224-tv_swin_t compiled fused+compiled
compiled_cases $M infer-224-hf_swin_t compiled sdpa+compiled fused+compiled
if [ "$QUICK" != 1 ]; then  # QUICK=1 skips the compiled CIFAR cases (common.skip_reason)
    compiled_cases $M train-cifar-swin_cifar compiled fused+compiled
    compiled_cases $M infer-cifar-swin_cifar compiled fused+compiled
    compiled_cases $M infer-cifar-swin_cifar-b64 compiled fused+compiled
fi

# 4. windows over 64 tokens in 2-D (the tiled kernels): the op at Swin-B 384 and Swin V2-T 256
# (cosine attention) stage 1, uncompiled, then their compiled and FlexAttention cases
bench tiled 30 150 benchmarks/test_op.py -k "($TILED) and not compiled and not flex"
for group in op-fwdbwd-swin_b_384-stage1 op-fwdbwd-swinv2_t_w16-stage1 op-fwd-swin_b_384-stage1 \
    op-fwd-swinv2_t_w16-stage1; do
    # shellcheck disable=SC2046
    bench "tiled:$group" 50 180 $(ids benchmarks/test_op.py "$group" compiled flex)
done

# 5. 3-D windows: the op at swin3d_t and SwinUNETR stage 1, swin3d_t training and inference,
# SwinUNETR (skipped with the reason without MONAI), then their compiled and FlexAttention cases
bench op3d 30 150 benchmarks/test_op.py -k "($THREE_D) and not compiled and not flex"
bench video 40 180 $M -k "video-swin3d_t and not compiled"
bench unetr 10 180 $M -k "swin_unetr"
for group in op-fwdbwd-swin3d_t-stage1 op-fwdbwd-swin_unetr-stage1 op-fwd-swin3d_t-stage1 \
    op-fwd-swin_unetr-stage1; do
    # shellcheck disable=SC2046
    bench "op3d:$group" 50 180 $(ids benchmarks/test_op.py "$group" compiled flex)
done
# shellcheck disable=SC2046
bench video:train-compiled 60 180 $(ids $M train-video-swin3d_t compiled fused+compiled)

if ((${#CUT[@]})); then
    printf 'cut for time: %d stages; rerun them on another call with\n  STAGES="%s"\n' \
        ${#CUT[@]} "${CUT[*]}" | tee -a "$OUT/stages.txt"
fi
echo "--- summary"
summarize --png "$OUT/chart.png"
echo "--- stages"
cat "$OUT/stages.txt"
echo "--- $((SECONDS - START))s in all; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
