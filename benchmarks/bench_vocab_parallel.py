"""Vocab-parallel log-probs + entropy against the single-GPU op on the same shard width.

    python -m benchmarks.bench_vocab_parallel                               # one process: world of one
    torchrun --nproc-per-node 8 -m benchmarks.bench_vocab_parallel          # NCCL: also the two all-reduces alone

Each rank holds ``[N, V / world]`` logits. ``logprobs_and_entropy`` is the single-GPU op on that shard alone,
``vocab_parallel_logprobs_and_entropy`` the exact global op on it, ``collectives`` the all-reduce MAX of ``[N]``
plus the all-reduce SUM of ``[4, N]`` fp32 that the global op adds (20 bytes a row). On CUDA, medians of
``triton.testing.do_bench`` (world of one) or of CUDA-event timings with a fixed repeat count (several
ranks: every rank must run the same number of collectives); on CPU, the reference path at small sizes.
``python -m benchmarks`` times the world-of-one case through ``call`` beside the other ops.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist

import aer_kernels as ak

from .data import make_logits, make_row_grads, make_targets
from .names import VOCAB_PARALLEL_OP
from .results import git_commit
from .timing import fixed_reps_ms, median_ms

OP = VOCAB_PARALLEL_OP
SINGLE_OP = "logprobs_and_entropy"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def call(
    local: torch.Tensor, targets: torch.Tensor, *, vocab_start: int = 0, group=None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global op on this rank's shard, ``(logp, H)`` as ``logprobs_and_entropy`` returns them."""
    return ak.vocab_parallel_logprobs_and_entropy(local, targets, vocab_start=vocab_start, group=group, backend=backend)


def ratios(rows) -> dict:
    """``{(method, N, V, mode): vocab-parallel ms / single-GPU ms}`` wherever a run timed both."""
    single = {(r["method"], r["N"], r["V"], r["mode"]): r["ms"] for r in rows if r["op"] == SINGLE_OP}
    return {
        key: r["ms"] / single[key]
        for r in rows
        if r["op"] == OP
        for key in [(r["method"], r["N"], r["V"], r["mode"])]
        if key in single
    }


def _check(local, targets, vocab_start, group, world):
    """The global op on a few rows equals the single-GPU op on the gathered (concatenated) shards."""
    rows = local[:64].contiguous()
    shards = [torch.empty_like(rows) for _ in range(world)] if world > 1 else [rows]
    if world > 1:
        dist.all_gather(shards, rows, group=group)
    logp, h = call(rows, targets[:64], vocab_start=vocab_start, group=group)
    logp_1, h_1 = ak.logprobs_and_entropy(torch.cat(shards, -1), targets[:64])
    torch.testing.assert_close((logp, h), (logp_1, h_1), rtol=1e-4, atol=1e-4)


def run(
    n: int | None = None, vocab: int | None = None, dtype: str = "bf16", device: str | None = None, group=None
) -> list[dict]:
    """Rows ``{"op", "mode", "method", "N", "V", "dtype", "ms", "world"}``; ``V`` is this rank's shard width."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    n = n or (8192 if on_gpu else 256)
    vocab = vocab or (151936 if on_gpu else 4096)
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    width = vocab // world
    local = make_logits(n, width, _DTYPES[dtype], device, seed=rank)  # each rank its own shard
    targets = make_targets(n, world * width, device)  # one seed: the same global ids on every rank
    vocab_start = rank * width
    _check(local, targets, vocab_start, group, world)

    local_targets = (targets - vocab_start).clamp(0, width - 1)  # the single op needs ids of its own shard
    ops = {
        SINGLE_OP: lambda x: ak.logprobs_and_entropy(x, local_targets),
        OP: lambda x: call(x, targets, vocab_start=vocab_start, group=group),
    }
    grads = make_row_grads(n, 2, device)  # made once: allocating them would be timed with each step
    xg = local.detach().requires_grad_(True)
    # Collectives deadlock unless every rank calls them equally often: time-based repeat counts only for one rank.
    timer = (lambda fn: median_ms(fn, device)) if world == 1 else (lambda fn: fixed_reps_ms(fn, device))

    rows = []
    for op, fn in ops.items():
        # fwd on logits that need no gradient (nothing saved), as the suite times it.
        steps = {"fwd": lambda fn=fn: fn(local), "fwd+bwd": lambda fn=fn: torch.autograd.grad(fn(xg), xg, grads)}
        for mode, step in steps.items():
            rows.append(
                dict(op=op, mode=mode, method="aer_kernels", N=n, V=width, dtype=dtype, ms=timer(step), world=world)
            )
    if world > 1:
        row_max, sums = torch.zeros(n, device=device), torch.zeros(4, n, device=device)

        def collectives():
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            dist.all_reduce(sums, group=group)

        rows.append(
            dict(
                op=OP, mode="fwd", method="collectives", N=n, V=width, dtype="fp32", ms=timer(collectives), world=world
            )
        )
    return rows


def _describe(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (reference path)"
    return f"{name}, torch {torch.__version__}, commit {git_commit(Path(__file__).resolve().parent.parent)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="rows (default 8192 on a GPU, 256 on CPU)")
    parser.add_argument("--vocab", type=int, default=None, help="global vocabulary (default 151936 / 4096)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    args = parser.parse_args()

    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        rows = run(args.rows, args.vocab, args.dtype, str(device))
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(_describe(device))
            if device.type != "cuda":
                print("CPU: the reference path at a small size; kernel figures need a GPU.")
            vs_single = ratios(rows)
            print(f"{'op':<37}{'method':<13}{'mode':<9}{'N':>7}{'V shard':>9}{'world':>6}{'ms':>10}{'vs single':>11}")
            for r in rows:
                ratio = vs_single.get((r["method"], r["N"], r["V"], r["mode"])) if r["op"] == OP else None
                print(
                    f"{r['op']:<37}{r['method']:<13}{r['mode']:<9}{r['N']:>7}{r['V']:>9}{r['world']:>6}"
                    f"{r['ms']:>10.3f}{'' if ratio is None else f'{ratio:.3f}':>11}"
                )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
