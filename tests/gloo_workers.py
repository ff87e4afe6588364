"""Spawned gloo workers on loopback, with a deadline so a test can never hang."""

import contextlib
import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(worker, nprocs: int, *args, timeout_s: float) -> None:
    """Run ``worker(rank, port, *args)`` on ``nprocs`` processes; a rank's failure, or any rank still
    running after ``timeout_s``, fails the test."""
    ctx = mp.start_processes(worker, args=(free_port(), *args), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):  # returns as each rank ends
            if time.monotonic() >= deadline:
                pytest.fail(f"workers still running after {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


@contextlib.contextmanager
def gloo_group(rank: int, port: int, world_size: int, timeout_s: float):
    """The default process group of a worker for the block: ``world_size`` ranks on loopback, one torch thread
    each (the ranks share the machine's cores)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def kernel_device(backend: str) -> str:
    """Where a worker's tensors live: a GPU for compiled Triton kernels, the CPU for the reference path and the
    interpreter (which workers inherit through the environment)."""
    if backend == "triton":
        assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available(), "TRITON_INTERPRET not inherited"
        return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    return "cpu"
