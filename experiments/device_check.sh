#!/usr/bin/env bash
# One script to run first on any GPU or TPU machine; on CPU a tiny fallback of each part.
#
#   bash experiments/device_check.sh [LOGFILE]        # PYTHON=... to pick the interpreter
#
# Prints the device and `RESULT name=value` lines (also appended to LOGFILE, default
# device_check.log) for:
#   1. members scaling, M = 1 ... 256, every strategy incl. gemm, CIFAR shapes (digits at M = 16),
#      with the autotuner's choice per M          (experiments/bench_members.py --autotune)
#   2. achieved TFLOP/s against the device's peak, memory per member, the extrapolated Figure-2
#      retraining hours, float32 (TF32 where XLA uses it) and bfloat16 under the autotuner's choice
#                                                  (experiments/bench_figure2.py)
#   3. LMC points batched against a per-point loop (experiments/bench_landscape.py --lmc-only)
# Every part runs under `timeout` (RESULT lines are printed as they are measured, so a part cut
# short still reports what it finished): on an accelerator the whole script takes <= 8 minutes; the
# CPU fallback (PreResNet-8, 8x8 digits, M = 2, one step, most optimisations off) about a minute on
# 2 free cores.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=${1:-device_check.log}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
T0=$(date +%s)

part() {  # part NAME SECONDS ARGS... : one bench under a time limit, output to stdout and LOG
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s): $PY $*" | tee -a "$LOG"
    timeout --signal=INT --kill-after=10 "$limit" "$PY" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "RESULT ${name}_exit_status=$rc" | tee -a "$LOG"
}

INFO=$("$PY" - <<'EOF' 2>/dev/null
import jax, tr_jax
d = jax.devices()[0]
print(f"tr_jax {tr_jax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}, "
      f"{jax.device_count()} x {d.device_kind}")
print(f"RESULT device={d.device_kind.replace(' ', '_')}")
print(f"RESULT backend={jax.default_backend()}")
print(f"RESULT device_count={jax.device_count()}")
print(f"BACKEND={jax.default_backend()}")
EOF
)
BACKEND=$(echo "$INFO" | sed -n 's/^BACKEND=//p')
if [ -z "$BACKEND" ]; then
    echo "device_check: '$PY' cannot import jax and tr_jax" >&2
    exit 1
fi
echo "$INFO" | grep -v '^BACKEND=' | tee -a "$LOG"

if [ "$BACKEND" = cpu ]; then
    # The CPU fallback: every part at a toy size, compiled with JAX's most optimisations off (it
    # shows the script and the code paths work; its numbers say nothing about CPU performance).
    # The limits only guard against hangs: on 2 free cores the whole fallback takes about a minute.
    export JAX_DISABLE_MOST_OPTIMIZATIONS=1
    part members 150 experiments/bench_members.py --shapes digits --members 2 --depth 8 \
        --strategies gemm --steps 1 --repeats 1 --min-time 0 --autotune --autotune-budget 0
    part figure2 100 experiments/bench_figure2.py --shape digits --depth 8 --members 2 \
        --strategy gemm --steps 1 --repeats 1
    part landscape 100 experiments/bench_landscape.py --shape digits --depth 8 --images 64 \
        --test-images 64 --pairs 1 --points 3 --repeats 1 --lmc-only
else
    part members 210 experiments/bench_members.py --shapes cifar --members 1 4 16 64 256 \
        --strategies loop vmap gemm map map_chunked:8 --steps 2 --repeats 2 --min-time 0.5 \
        --autotune --autotune-budget 30
    part members_digits 45 experiments/bench_members.py --shapes digits --members 16 \
        --strategies loop vmap gemm --repeats 2 --min-time 0.5
    CHOICE=$(grep -o 'RESULT cifar_M256_autotune=[^ ]*' "$LOG" | tail -1 | cut -d= -f2)
    CHOICE=${CHOICE:-$(grep -o 'RESULT cifar_M64_autotune=[^ ]*' "$LOG" | tail -1 | cut -d= -f2)}
    CHOICE=${CHOICE:-vmap}
    echo "figure2 strategy: $CHOICE (the autotuner's choice at the largest M measured)" | tee -a "$LOG"
    part figure2 80 experiments/bench_figure2.py --members 1 16 64 256 --strategy "$CHOICE" \
        --steps 4 --repeats 3
    part figure2_bf16 50 experiments/bench_figure2.py --members 256 --strategy "$CHOICE" \
        --steps 4 --repeats 3 --precision bfloat16
    part landscape 50 experiments/bench_landscape.py --shape cifar --depth 20 --images 2048 \
        --test-images 1024 --pairs 3 --repeats 2 --lmc-only
fi
echo "RESULT device_check_seconds=$(( $(date +%s) - T0 ))" | tee -a "$LOG"
