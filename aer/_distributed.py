"""Summing one step's entropy statistics over data-parallel ranks with a single collective and host read."""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch
import torch.distributed as dist


def reduce_entropy_stats(
    entropy_sum: float | torch.Tensor,
    token_count: float | torch.Tensor,
    *,
    group: Any = None,
) -> tuple[float, float]:
    """(Σ entropy_sum, Σ token_count) over the ranks of `group` as Python floats.

    Both numbers travel as one 2-element fp64 tensor: one all-reduce when torch.distributed is initialised,
    then one host read. The tensor lives where the backend communicates: for NCCL, the inputs' own CUDA device
    (else the current CUDA device); CPU otherwise (gloo).
    """
    pair = _as_pair(entropy_sum, token_count)
    if dist.is_available() and dist.is_initialized():
        pair = pair.to(_communication_device(pair.device, group))
        dist.all_reduce(pair, op=dist.ReduceOp.SUM, group=group)
    elif group is not None:
        raise ValueError("group was given but torch.distributed is not initialised")
    total_sum, total_count = pair.tolist()
    return total_sum, total_count


def _as_pair(entropy_sum: float | torch.Tensor, token_count: float | torch.Tensor) -> torch.Tensor:
    values = {"entropy_sum": entropy_sum, "token_count": token_count}
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"{name} must be a number or a 1-element tensor, got shape {tuple(value.shape)}")
        elif isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"{name} must be a number or a 1-element tensor, got {type(value).__name__}")
    # Stack on the inputs' own device so a device -> host move happens once, for both numbers together.
    device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    return torch.stack([_to_scalar_tensor(v, device) for v in values.values()])


def _to_scalar_tensor(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).to(device=device, dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _communication_device(device: torch.device, group: Any) -> torch.device:
    """Where the all-reduce runs, given the device the inputs are on.

    NCCL needs a CUDA tensor on this rank's GPU: inputs already on a CUDA device stay there (that is the rank's
    GPU even when the caller never called torch.cuda.set_device, where the current device is cuda:0 on every
    rank and NCCL would fail or hang); only CPU inputs go to the current CUDA device. Other backends get CPU.
    """
    if dist.get_backend(group) != dist.Backend.NCCL:
        return torch.device("cpu")
    if device.type == "cuda":
        return device
    return torch.device("cuda", torch.cuda.current_device())
