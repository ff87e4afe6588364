"""Vocab-parallel log-probs + entropy against the single-GPU op on the same shard width.

    python -m benchmarks.bench_vocab_parallel                               # one process: world of one
    torchrun --nproc-per-node 8 -m benchmarks.bench_vocab_parallel          # NCCL: also the two all-reduces alone

Each rank holds ``[N, V / world]`` logits. ``single`` is ``logprobs_and_entropy`` on that shard alone,
``vocab_parallel`` the exact global op on it, ``collectives`` the all-reduce MAX of ``[N]`` plus the
all-reduce SUM of ``[4, N]`` fp32 that the global op adds (20 bytes a row). On CUDA, medians of
``triton.testing.do_bench`` (world of one) or of CUDA-event timings with a fixed repeat count (several
ranks: every rank must run the same number of collectives); on CPU, the reference path at small sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import torch
import torch.distributed as dist

import aer_kernels as ak

OP = "vocab_parallel_logprobs_and_entropy"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_FIXED_REPS = 50


def _cpu_median_ms(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _cuda_fixed_reps_ms(fn, reps: int = _FIXED_REPS) -> float:
    for _ in range(3):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def _timer(device: torch.device, world: int):
    if device.type != "cuda":
        return _cpu_median_ms
    if world > 1:
        return _cuda_fixed_reps_ms
    from triton.testing import do_bench

    return lambda fn: do_bench(fn, return_mode="median")


def _check(local, targets, vocab_start, group, world):
    """The global op on a few rows equals the single-GPU op on the gathered (concatenated) shards."""
    rows = local[:64]
    shards = [torch.empty_like(rows) for _ in range(world)] if world > 1 else [rows]
    if world > 1:
        dist.all_gather(shards, rows.contiguous(), group=group)
    logp, h = ak.vocab_parallel_logprobs_and_entropy(rows, targets[:64], vocab_start=vocab_start, group=group)
    logp_1, h_1 = ak.logprobs_and_entropy(torch.cat(shards, -1), targets[:64])
    torch.testing.assert_close((logp, h), (logp_1, h_1), rtol=1e-4, atol=1e-4)


def run(n: int | None = None, vocab: int | None = None, dtype: str = "bf16", device: str | None = None,
        group=None) -> list[dict]:
    """Rows ``{"op", "mode", "method", "N", "V", "dtype", "ms", "world"}``; ``V`` is this rank's shard width."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    n = n or (8192 if on_gpu else 256)
    vocab = vocab or (151936 if on_gpu else 4096)
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    width = vocab // world
    shard_gen, shared_gen = (torch.Generator(device=device).manual_seed(seed) for seed in (1 + rank, 0))
    local = (torch.randn(n, width, device=device, generator=shard_gen) * 4).to(_DTYPES[dtype]).requires_grad_(True)
    targets = torch.randint(0, world * width, (n,), device=device, generator=shared_gen)  # the same on every rank
    vocab_start = rank * width
    _check(local.detach(), targets, vocab_start, group, world)

    local_targets = (targets - vocab_start).clamp(0, width - 1)  # the single op needs ids of its own shard
    methods = {
        "single": lambda: ak.logprobs_and_entropy(local, local_targets),
        "vocab_parallel": lambda: ak.vocab_parallel_logprobs_and_entropy(local, targets, vocab_start=vocab_start,
                                                                         group=group),
    }
    timer = _timer(device, world)

    def fwd_bwd(method):
        def step():
            logp, h = method()
            torch.autograd.grad([logp, h], local, [torch.ones_like(logp), torch.ones_like(h)])
        return step

    rows = []
    for name, method in methods.items():
        for mode, fn in (("fwd", method), ("fwd+bwd", fwd_bwd(method))):
            rows.append(dict(op=OP, mode=mode, method=name, N=n, V=width, dtype=dtype, ms=timer(fn), world=world))
    if world > 1:
        row_max, sums = torch.zeros(n, device=device), torch.zeros(4, n, device=device)

        def collectives():
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            dist.all_reduce(sums, group=group)

        rows.append(dict(op=OP, mode="fwd", method="collectives", N=n, V=width, dtype="fp32", ms=timer(collectives),
                         world=world))
    return rows


def _describe(device: torch.device) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (reference path)"
    return f"{name}, torch {torch.__version__}, commit {commit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="rows (default 8192 on a GPU, 256 on CPU)")
    parser.add_argument("--vocab", type=int, default=None, help="global vocabulary (default 151936 / 4096)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    args = parser.parse_args()

    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        rows = run(args.rows, args.vocab, args.dtype, str(device))
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(_describe(device))
            if device.type != "cuda":
                print("CPU: the reference path at a small size; kernel figures need a GPU.")
            single = {r["mode"]: r["ms"] for r in rows if r["method"] == "single"}
            print(f"{'method':<16}{'mode':<9}{'N':>7}{'V shard':>9}{'world':>6}{'ms':>10}{'vs single':>11}")
            for r in rows:
                ratio = f"{r['ms'] / single[r['mode']]:.3f}" if r["method"] == "vocab_parallel" else ""
                print(f"{r['method']:<16}{r['mode']:<9}{r['N']:>7}{r['V']:>9}{r['world']:>6}{r['ms']:>10.3f}"
                      f"{ratio:>11}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
