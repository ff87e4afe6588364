"""The benchmark's inputs by seed: ``aer_kernels.testing``'s realistic logits, targets and upstream gradients,
drawn on the CPU so every device times the same numbers."""

from __future__ import annotations

import torch

from aer_kernels.testing import random_row_grads, random_targets, realistic_logits


def make_logits(n: int, v: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``[n, v]`` logits: rows with std in [2, 8], every 32nd row from row 0 nearly flat, from row 1 peaked."""
    return realistic_logits((n, v), dtype, torch.Generator().manual_seed(seed), device=device)


def make_targets(n: int, v: int, device: torch.device, seed: int = 1) -> torch.Tensor:
    return random_targets((n,), v, torch.Generator().manual_seed(seed), device=device)


def make_row_grads(n: int, count: int, device: torch.device, seed: int = 2) -> tuple[torch.Tensor, ...]:
    """``count`` fp32 upstream gradients of shape ``[n]`` (one per per-row output)."""
    return random_row_grads((n,), count, torch.Generator().manual_seed(seed), device=device)
