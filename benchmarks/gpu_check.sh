#!/usr/bin/env bash
# One pass on a lent GPU machine, under 8 minutes on an H100/H200: the GPU tests, the kernels' IR,
# the launch sweep at the headline shapes, then the benchmark at the default shapes (headline first).
# Everything lands in $OUT (default benchmarks/results/), 6 files:
#   gpu_check.log, entropy_{fwd,bwd}_kernel.asm.txt, sweep-<card>-<date>.json, <card>-<date>.{json,png}
#
#   OUT=/path bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run             # here: every step at CPU sizes, into a temp folder
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: OUT=dir $0 [--dry-run]" >&2; exit 2 ;;
esac
if [[ $DRY_RUN == 1 ]]; then OUT="${OUT:-$(mktemp -d)}"; else OUT="${OUT:-benchmarks/results}"; fi
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# Seconds per step; the timeouts add up to 460 s (480 with every -k grace). The sweep and the benchmark stop
# themselves at their budgets and write what they measured; the timeouts only catch a hang, and -k kills a
# step that a TERM does not stop (a compile in C++ only sees the signal when it returns). A failed step
# does not end the pass: each later step checks its own results, and the device time is spent either way.
if [[ $DRY_RUN == 1 ]]; then
  SWEEP=(env TRITON_INTERPRET=1 python -m benchmarks --sweep --shapes 4x300 --sweep-budget-s 60)
  BENCH=(python -m benchmarks --quick)
else
  SWEEP=(python -m benchmarks --sweep --sweep-budget-s 90)
  BENCH=(python -m benchmarks --budget-s 135)
fi

step() { printf '\n=== %s (%s, %ss in)\n' "$1" "$(date -u +%H:%M:%S)" "$SECONDS"; }

main() {
  step "environment"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv \
    || echo "nvidia-smi: not available"
  python -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"triton", triton.__version__, "cuda", torch.cuda.is_available())'

  step "1/4 GPU tests: kernels against float64, int64 offsets, peak memory"
  timeout -k 5 150 python -m pytest -x -q -m cuda tests/test_gpu.py -p no:cacheprovider \
    || echo "GPU tests: FAILED (exit $?); the benchmark still checks each method against float64 before timing it"

  step "2/4 TTGIR and PTX of the forward and backward kernels"
  timeout -k 5 30 python -m benchmarks --dump-ir --output-dir "$OUT" || echo "dump-ir: failed (exit $?), going on"

  step "3/4 launch sweep (block_v x warps, stages, splits)"
  timeout -k 5 110 "${SWEEP[@]}" --output-dir "$OUT" || echo "sweep: failed (exit $?), going on"

  step "4/4 benchmark"
  timeout -k 5 170 "${BENCH[@]}" --output-dir "$OUT" || echo "benchmark: stopped (exit $?), rows so far written"
  python -m benchmarks --readme-table --output-dir "$OUT" || echo "readme-table: no results file"

  step "done"
  ls -l "$OUT"
}

main 2>&1 | tee "$OUT/gpu_check.log"
