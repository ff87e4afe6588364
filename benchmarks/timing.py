"""Medians of a call's time, and the extra memory it allocates at its peak."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device, *, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """CUDA: ``triton.testing.do_bench`` median (CUDA events, L2 flushed). CPU: median wall time."""
    if device.type == "cuda":
        from triton.testing import do_bench

        # A float for a scalar return_mode in every Triton 3.x; float() pins it should a release return a tensor.
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    return _cpu_median_ms(fn)


def _cpu_median_ms(fn, *, budget_s: float = 0.02, min_reps: int = 3, max_reps: int = 50) -> float:
    """CPU figures are a smoke check of the suite: a few repetitions suffice."""
    fn()
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def fixed_reps_ms(fn: Callable[[], object], device: torch.device, reps: int = 50, warmup: int = 3) -> float:
    """Median of exactly ``warmup + reps`` calls: where ``fn`` runs collectives, every rank must call it
    equally often, which time-based repeat counts (``do_bench``, the CPU budget) do not guarantee."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak allocated during one call minus what was allocated before it (outputs included); None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return int(peak)


def synchronised(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` that waits for the GPU before returning, for timers that read the host clock (pytest-benchmark)."""
    if device.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call
