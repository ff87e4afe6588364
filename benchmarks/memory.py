"""What a call runs and allocates, on any device: every op with its output shapes, every tensor the ops
create, and the peak of their live total.

CPU builds of torch keep no allocator statistics, so this follows tensors instead: a ``TorchDispatchMode`` sees
each op's outputs; a storage that is not one of the op's inputs (views, in-place and ``out=`` results are) is a
new allocation, counted until Python frees it. ``aer_kernels`` custom ops are entered, so what their
implementations allocate counts too. Memory that numpy or a GEMM library allocates internally is not seen.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_OWN_NAMESPACE = "aer_kernels"


class Allocation(NamedTuple):
    op: str
    nbytes: int
    shape: tuple
    dtype: torch.dtype


class Call(NamedTuple):
    op: str
    shapes: tuple  # of the tensors it returned


def _storages(tree) -> list:
    return [t.untyped_storage() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class AllocationTracker(TorchDispatchMode):
    """``with AllocationTracker() as tracker: fn()``, then ``tracker.calls`` and ``tracker.allocations`` (in
    order) and ``tracker.peak_bytes``, the most bytes of those allocations alive at once."""

    def __init__(self):
        super().__init__()
        self.calls: list[Call] = []
        self.allocations: list[Allocation] = []
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == _OWN_NAMESPACE:
            with self:  # run the implementation itself under this mode, not the op again
                out = func._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, *args, **kwargs)
        else:
            out = func(*args, **kwargs)
        inputs = {s.data_ptr() for s in _storages((args, kwargs))}
        returned = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.calls.append(Call(str(func), tuple(tuple(t.shape) for t in returned)))
        for t in returned:
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in inputs or key in self._live:
                continue
            self._live[key] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            self.allocations.append(Allocation(str(func), nbytes, tuple(t.shape), t.dtype))
            weakref.finalize(storage, self._release, key)
        return out


def peak_bytes(fn) -> int:
    """The peak live bytes of the tensors allocated while ``fn()`` runs (its outputs included)."""
    with AllocationTracker() as tracker:
        fn()
    return tracker.peak_bytes
