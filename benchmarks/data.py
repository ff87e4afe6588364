"""Random logits with a realistic spread, targets and upstream gradients."""

from __future__ import annotations

import torch

_GEN_ELEMENTS = 1 << 26  # fp32 scratch per generation chunk (256 MiB): big shapes fit beside the logits


def make_logits(n: int, v: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``[n, v]`` logits: rows with std in [2, 8], every 8th row peaked (one logit 30 above), every 8th+1 flat."""
    gen = torch.Generator(device).manual_seed(seed)
    std = torch.empty(n, 1, device=device).uniform_(2.0, 8.0, generator=gen)
    std[1::8] = 0.05
    x = torch.empty(n, v, dtype=dtype, device=device)
    rows = max(1, _GEN_ELEMENTS // v)
    for i in range(0, n, rows):
        j = min(n, i + rows)
        chunk = torch.randn(j - i, v, device=device, generator=gen).mul_(std[i:j])
        peaked = torch.arange(i, j, device=device) % 8 == 0
        spike = chunk.amax(-1) + 30.0
        cols = torch.arange(i, j, device=device) * 7919 % v
        chunk[peaked, cols[peaked]] = spike[peaked]
        x[i:j] = chunk
    return x


def make_targets(n: int, v: int, device: torch.device, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator(device).manual_seed(seed)
    return torch.randint(0, v, (n,), device=device, generator=gen)


def make_row_grads(n: int, count: int, device: torch.device, seed: int = 2) -> tuple[torch.Tensor, ...]:
    """``count`` fp32 upstream gradients of shape ``[n]`` (one per per-row output)."""
    gen = torch.Generator(device).manual_seed(seed)
    return tuple(torch.randn(n, device=device, generator=gen) for _ in range(count))
