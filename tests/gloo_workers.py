"""Spawned gloo workers on loopback, with a deadline so a test can never hang."""

import socket
import time

import pytest
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
