"""The demo's settings: the default run and the ``--quick`` run."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DemoConfig:
    """Every setting of one demo run; ``summary.json`` records them all."""

    seed: int = 0
    device: str = "cpu"
    # torch's CPU threads. The order of floating-point sums depends on it, and so do the results in their last
    # digits and, through 300 steps of sampling, everything after: fixed, not taken from the machine.
    threads: int = 1
    # Tasks: sorting strings of these lengths (easy, medium, hard).
    tier_lengths: tuple[int, ...] = (4, 7, 10)
    eval_per_tier: int = 64
    # Policy.
    width: int = 64
    layers: int = 2
    heads: int = 4
    # Warm-start.
    warm_start_steps: int = 200
    warm_start_batch: int = 64
    warm_start_lr: float = 3e-3
    # GRPO.
    steps: int = 300
    prompts_per_step: int = 12
    group_size: int = 8
    temperature: float = 1.0
    lr: float = 6e-4
    epochs_per_step: int = 2
    clip_eps: float = 0.2
    # Arms.
    small_coef: float = 0.05
    large_coef: float = 0.2
    aer_coef_step: float = 5e-3
    aer_coef_max: float = 0.25
    aer_target_ratio: float = 0.5  # AER's default
    # Evaluation.
    eval_every: int = 50
    pass_k: int = 8

    WARM_START_FIELDS = (
        "seed",
        "threads",
        "tier_lengths",
        "eval_per_tier",
        "width",
        "layers",
        "heads",
        "warm_start_steps",
        "warm_start_batch",
        "warm_start_lr",
    )


def quick(config: DemoConfig) -> DemoConfig:
    """A smaller run of the same pipeline, about a minute on 2 CPU cores.

    50 steps only see the start of the entropy collapse, so they run at a higher learning rate and with the
    AER target closer to the initial entropy (ρ = 0.75 instead of AER's default 0.5), where the collapse does
    cross it.

    Args:
        config: the run to shrink; its seed, device and threads are kept.
    """
    return replace(config, steps=50, lr=1e-3, eval_per_tier=16, eval_every=25, aer_target_ratio=0.75)
