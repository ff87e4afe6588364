"""pytest-benchmark suite: ``pytest benchmarks/ --benchmark-only``.

Every method x op x mode at the headline shapes (a tiny shape on a CPU), checked against float64
before it is timed. pytest-benchmark's own timer sees synchronised calls; the do_bench median (CUDA
events), GB/s and % of copy bandwidth go into ``extra_info`` (shown with ``--benchmark-json``).
"""

from __future__ import annotations

import functools

import pytest
import torch

from benchmarks.byte_model import gbps, minimal_bytes
from benchmarks.check import check_backward, check_forward
from benchmarks.data import make_logits, make_targets
from benchmarks.methods import build_methods
from benchmarks.names import METHOD_NAMES, MODES, OPS
from benchmarks.suite import make_case, measure_ceilings
from benchmarks.timing import median_ms, synchronised

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16
SHAPES = [(8192, 151936), (2048, 151936)] if CUDA else [(64, 1000)]
KERNEL_METHODS = {
    "torch_compile",
    "trl",
    "liger_ce",
}  # CPU timings of these say nothing (aer_kernels: its reference path)


@functools.lru_cache(maxsize=len(SHAPES))  # the shape varies fastest over the tests: keep each one's logits
def _inputs(n: int, v: int):
    x = make_logits(n, v, DTYPE, DEVICE)
    return x, make_targets(n, v, DEVICE), measure_ceilings(x, DEVICE)["copy_gbps"]


@functools.cache
def _method(name: str):
    methods, skipped = build_methods([name], DTYPE, DEVICE)
    return (methods[0], None) if methods else (None, skipped[0])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bench(benchmark, name, op, mode, shape):
    if not CUDA and name in KERNEL_METHODS:
        pytest.skip(f"{name}: kernel figures need a CUDA GPU")
    method, why = _method(name)
    if method is None:
        pytest.skip(why)
    if op not in method.ops:
        pytest.skip(f"{name} does not implement {op}")
    if mode not in method.modes:
        pytest.skip(f"{name} is timed in {', '.join(method.modes)} only")
    n, v = shape
    if method.max_elements is not None and n * v > method.max_elements:
        pytest.skip(f"{name} cannot address {n} x {v}")
    x, y, copy_gbps = _inputs(n, v)
    grads = method.upstream(op, n, DEVICE)
    failed = check_forward(method, op, x, y) if mode == "fwd" else check_backward(method, op, x, y, grads)
    assert failed is None, failed
    case = make_case(method, op, mode, x, y, grads)
    ms = median_ms(case, DEVICE)
    rate = gbps(minimal_bytes(op, mode, n, v, x.element_size()), ms)
    benchmark.extra_info.update(median_ms=ms, gbps=rate, pct_copy=100.0 * rate / copy_gbps)
    benchmark.pedantic(synchronised(case, DEVICE), rounds=10 if CUDA else 3, warmup_rounds=1)
