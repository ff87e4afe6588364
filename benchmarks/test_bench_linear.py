"""pytest-benchmark suite of the fused LM-head op: ``pytest benchmarks/ --benchmark-only``.

The bare GEMMs, the materialised logits and the fused op at the LINEAR.md section 5 headline shapes (two small
ones on a CPU), each method checked against float64 before it is timed. The do_bench median, TF/s over the
bare GEMMs' FLOPs and the ratio to the bare GEMMs of the same shape go into ``extra_info``.
"""

from __future__ import annotations

import functools

import pytest
import torch

from benchmarks.bench_linear import GEMM_COUNT, build_methods, check, gemm_case, inputs, method_case, upstream
from benchmarks.names import MODES
from benchmarks.timing import median_ms, synchronised

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16
SHAPES = [(8192, 4096, 151936), (2048, 4096, 151936)] if CUDA else [(256, 64, 4096)]
WORKSPACE_MIB = 256 if CUDA else 1
METHODS, SKIPPED = build_methods([WORKSPACE_MIB], DEVICE)
NAMES = ["gemms", *(m.name for m in METHODS), *(line.split(":")[0] for line in SKIPPED)]


@functools.lru_cache(maxsize=1)  # the shape varies slowest: keep one shape's inputs and its GEMM times
def _shape_inputs(n: int, d: int, v: int):
    h, w, y = inputs(n, d, v, DTYPE, DEVICE)
    gemm_ms = {mode: median_ms(gemm_case(mode, h, w), DEVICE) for mode in MODES}
    return h, w, y, gemm_ms


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bench_linear(benchmark, shape, mode, name):
    skipped = [line for line in SKIPPED if line.startswith(f"{name}:")]
    if skipped:
        pytest.skip(skipped[0])
    n, d, v = shape
    h, w, y, gemm_ms = _shape_inputs(n, d, v)
    if name == "gemms":
        case = gemm_case(mode, h, w)
    else:
        (method,) = [m for m in METHODS if m.name == name]
        if mode not in method.modes:
            pytest.skip(f"{name} is timed in {', '.join(method.modes)} only")
        failed = check(method, h, w, y)
        assert failed is None, failed
        case = method_case(method, mode, h, w, y, upstream(method, n, DEVICE))
    ms = median_ms(case, DEVICE)
    tflops = 2 * GEMM_COUNT[mode] * n * d * v / ms / 1e9
    benchmark.extra_info.update(median_ms=ms, tflops=tflops, vs_gemms=ms / gemm_ms[mode])
    benchmark.pedantic(synchronised(case, DEVICE), rounds=10 if CUDA else 3, warmup_rounds=1)
