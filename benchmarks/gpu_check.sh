#!/usr/bin/env bash
# One pass on a lent GPU machine, under 8 minutes on an H100/H200: the GPU tests, the launch sweep at the
# headline shapes, the benchmark at the default shapes (headline first), the fused LM-head op at three of its
# shapes, then the vocab-parallel combine's Triton kernels against PyTorch. (The kernels' SASS needs no GPU:
# python -m benchmarks --ptx-report.) Everything lands in $OUT (default benchmarks/results/): gpu_check.log,
# sweep-<card>-<date>.json, <card>-<date>.{json,png}, linear/linear-<card>-<date>.json,
# combine/combine-<card>-<date>.json
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
# The project's environment when `make` built one, else the python on PATH (a GPU box with torch installed).
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

# Seconds per step; the timeouts add up to 450 s (480 with every -k grace). The sweep and the benchmark stop
# themselves at their budgets and write what they measured; the timeouts only catch a hang, and -k kills a
# step that a TERM does not stop (a compile in C++ only sees the signal when it returns). A failed step
# does not end the pass: each later step checks its own results, and the device time is spent either way.
if [[ $DRY_RUN == 1 ]]; then
  SWEEP=(env TRITON_INTERPRET=1 "$PYTHON" -m benchmarks --sweep --shapes 4x300 --sweep-budget-s 60)
  BENCH=("$PYTHON" -m benchmarks --quick)
  LINEAR=("$PYTHON" -m benchmarks.bench_linear --budget-s 45)
else
  SWEEP=("$PYTHON" -m benchmarks --sweep --sweep-budget-s 80)
  BENCH=("$PYTHON" -m benchmarks --budget-s 100)
  LINEAR=("$PYTHON" -m benchmarks.bench_linear --shapes 8192x4096x151936,2048x4096x151936,16384x2560x151936
    --workspaces-mib 256 --budget-s 45)
fi

step() { printf '\n=== %s (%s, %ss in)\n' "$1" "$(date -u +%H:%M:%S)" "$SECONDS"; }

main() {
  step "environment"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv \
    || echo "nvidia-smi: not available"
  "$PYTHON" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"triton", triton.__version__, "cuda", torch.cuda.is_available())'

  step "1/5 GPU tests: kernels against float64 at real sizes, int64 offsets, peak memory; then every numerics"
  echo "test of the CPU suite (the Triton-backend cases, marked interpreter) on the real GPU kernels"
  timeout -k 5 85 "$PYTHON" -m pytest -q -m cuda tests/test_gpu.py -p no:cacheprovider \
    || echo "GPU tests: FAILED (exit $?); the benchmark still checks each method against float64 before timing it"
  timeout -k 5 45 "$PYTHON" -m pytest -q -m interpreter tests/test_entropy.py tests/test_large_logits.py \
    tests/test_properties.py -p no:cacheprovider || echo "numerics suite on the GPU: FAILED (exit $?)"

  step "2/5 launch sweep (warps x unroll, then splits)"
  timeout -k 5 100 "${SWEEP[@]}" --output-dir "$OUT" || echo "sweep: failed (exit $?), going on"

  step "3/5 benchmark"
  timeout -k 5 125 "${BENCH[@]}" --output-dir "$OUT" || echo "benchmark: stopped (exit $?), rows so far written"
  "$PYTHON" -m benchmarks --readme-table --output-dir "$OUT" || echo "readme-table: no results file"

  step "4/5 fused LM-head op against its bare GEMMs (LINEAR.md section 5)"
  timeout -k 5 65 "${LINEAR[@]}" --output-dir "$OUT/linear" || echo "linear benchmark: stopped (exit $?)"

  step "5/5 vocab-parallel combine: Triton kernels against PyTorch eager and compiled"
  timeout -k 5 30 "$PYTHON" -m benchmarks.bench_combine --output-dir "$OUT/combine" || echo "combine: failed (exit $?)"

  step "done"
  ls -l "$OUT"
}

main 2>&1 | tee "$OUT/gpu_check.log"
