"""The compared ways of setting the entropy coefficient: none, fixed, and AER."""

from __future__ import annotations

import torch

import aer

from .config import DemoConfig


class FixedCoefficient:
    """``λ_i = value`` for every response (``value = 0``: no entropy term)."""

    def __init__(self, name: str, value: float):
        self.name = name
        self.coefficient = value

    def coefficients(self, group_accuracy: torch.Tensor, group_size: int) -> torch.Tensor:
        return torch.full((group_accuracy.numel() * group_size,), self.coefficient, device=group_accuracy.device)

    def update(self, entropy_sum: torch.Tensor, token_count: torch.Tensor) -> None:
        """Nothing adapts."""


class AdaptiveCoefficient:
    """``λ_i = α · w(acc_b)`` from an ``aer.AERController``, fed the step's measured entropy."""

    def __init__(self, name: str, config: aer.AERConfig):
        self.name = name
        self.controller = aer.AERController(config)

    @property
    def coefficient(self) -> float:
        return self.controller.coefficient

    @property
    def target_entropy(self) -> float | None:
        return self.controller.target_entropy

    @property
    def initial_entropy(self) -> float | None:
        return self.controller.initial_entropy

    def coefficients(self, group_accuracy: torch.Tensor, group_size: int) -> torch.Tensor:
        return self.controller.coefficients(group_accuracy, group_size=group_size)

    def update(self, entropy_sum: torch.Tensor, token_count: torch.Tensor) -> None:
        self.controller.update(entropy_sum, token_count)


def all_arms(config: DemoConfig) -> list[FixedCoefficient | AdaptiveCoefficient]:
    """The five arms, in table order.

    AER keeps its defaults except the scale of α: ``coef_step`` and ``coef_max`` are sized for this model
    (the defaults, 1e-4 and 5e-3, are for a 7B model at lr 1e-6; here α must reach ~0.1 to move entropy).
    ``target_ratio`` is the default 0.5 in the default run; ``--quick`` raises it (see ``config.quick``).
    """
    overrides = {
        "coef_step": config.aer_coef_step,
        "coef_max": config.aer_coef_max,
        "target_ratio": config.aer_target_ratio,
    }
    return [
        FixedCoefficient("no-entropy", 0.0),
        FixedCoefficient(f"fixed-{config.small_coef:g}", config.small_coef),
        FixedCoefficient(f"fixed-{config.large_coef:g}", config.large_coef),
        AdaptiveCoefficient("aer", aer.AERConfig(**overrides)),
        AdaptiveCoefficient("aer-uniform", aer.AERConfig(weighting="uniform", **overrides)),
    ]
