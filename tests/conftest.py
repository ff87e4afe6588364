import os
import tempfile

import pytest
import torch
import torch._dynamo.trace_rules

# Inductor's on-disk cache does not key on a custom op's implementation: a cache left by another version of
# this package can replay a stale graph. Each test session compiles into a cache of its own.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="aer-inductor-"))

INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        needs_cuda = item.get_closest_marker("cuda") is not None
        if needs_cuda and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        elif item.get_closest_marker("interpreter") and not (INTERPRETER or torch.cuda.is_available()):
            item.add_marker(pytest.mark.skip(reason="Triton on CPU needs TRITON_INTERPRET=1 (run: make test)"))


def _device_for(backend):
    return "cuda" if backend == "triton" and not INTERPRETER else "cpu"


@pytest.fixture(params=["reference", pytest.param("triton", marks=pytest.mark.interpreter)])
def backend(request):
    """Each numerics test runs on the reference path and, in the interpreter session, on Triton."""
    return request.param


@pytest.fixture
def device(backend):
    return _device_for(backend)


@pytest.fixture
def nan_poisoned_empty(monkeypatch):
    """Every ``torch.empty`` returns NaN-filled memory, so an output element never written fails."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    # Dynamo builds its table of torch functions once, on first use: built while torch.empty is patched, it would
    # refuse the real torch.empty in every later compiled test of the session.
    torch._dynamo.trace_rules.get_torch_obj_rule_map()
    monkeypatch.setattr(torch, "empty", empty)
