"""Held-out pass@1 and pass@k per tier."""

from __future__ import annotations

import torch

from .model import TinyTransformer
from .sampling import rewards, sample
from .tasks import SortingTasks


def evaluate(
    model: TinyTransformer, tasks: SortingTasks, *, k: int, temperature: float, seed: int, device: torch.device
) -> list[int]:
    """Number of correct answers among ``k`` samples, for each held-out problem (in ``tasks.held_out`` order).

    The sampling generator is re-seeded from ``seed`` on every call, so all arms are scored on the same draws.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    problems = [problem for problem in tasks.held_out for _ in range(k)]
    correct = rewards(problems, sample(model, problems, temperature=temperature, generator=generator, device=device))
    return correct.view(-1, k).sum(1).long().tolist()


def pass_at_k(correct: list[int], tiers: list[int], k: int) -> dict[str, dict[str, float]]:
    """With ``c`` of ``k`` samples correct: ``pass@1 = mean(c / k)`` and ``pass@k = mean(1[c > 0])`` over a
    tier's problems (``"tier1"``, ...) and over all of them (``"all"``)."""
    counts = torch.tensor(correct, dtype=torch.float64)
    tier_of = torch.tensor(tiers)
    groups = {f"tier{t + 1}": tier_of == t for t in sorted(set(tiers))}
    groups["all"] = torch.ones_like(tier_of, dtype=torch.bool)
    return {
        "pass@1": {name: (counts[selected] / k).mean().item() for name, selected in groups.items()},
        f"pass@{k}": {name: (counts[selected] > 0).double().mean().item() for name, selected in groups.items()},
    }
