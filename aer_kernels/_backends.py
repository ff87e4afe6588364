"""The one place a resolved backend name becomes its row kernels.

Each backend is a module with the same functions and arguments: ``forward`` and ``backward`` (the per-row
entropy / log-prob passes over ``[N, V]`` logits) and ``partials`` and ``combine`` (the per-row steps of the
vocab-parallel combine). The entropy, vocab-parallel and fused LM-head ops all pick theirs here.
"""

from __future__ import annotations

from types import ModuleType

from . import reference


def backend_module(name: str) -> ModuleType:
    """``_triton`` for ``"triton"`` (imported on first use: triton is optional), ``reference`` for ``"reference"``."""
    if name == "triton":
        from . import _triton

        return _triton
    if name == "reference":
        return reference
    raise ValueError(f"backend_module takes a resolved backend, 'triton' or 'reference', got {name!r}")
