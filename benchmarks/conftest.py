"""Fixtures for the pytest-benchmark suite in this folder."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_cpu_thread():
    # CPU shapes are tiny: a thread pool spinning on a shared machine would dominate every figure.
    if not torch.cuda.is_available():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)
    else:
        yield
