"""One arm's GRPO run from the warm-started policy, with its per-step log."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm import tqdm

import aer

from .arms import AdaptiveCoefficient, FixedCoefficient
from .config import DemoConfig
from .evaluate import evaluate
from .grpo import group_advantages, grpo_loss, token_logprobs_and_entropy
from .sampling import rewards, sample
from .tasks import Problem, SortingTasks
from .warmstart import new_policy


@dataclass
class ArmLog:
    entropy: list[float] = field(default_factory=list)  # token-mean entropy of each step's rollouts
    coefficient: list[float] = field(default_factory=list)  # α used in each step
    reward: list[float] = field(default_factory=list)  # mean training reward of each step
    eval_steps: list[int] = field(default_factory=list)
    eval_correct: list[list[int]] = field(default_factory=list)  # per held-out problem, of pass_k samples


def prompt_schedule(config: DemoConfig, tasks: SortingTasks) -> list[list[Problem]]:
    """The prompts of every step, drawn once so every arm sees the same data in the same order."""
    generator = torch.Generator().manual_seed(config.seed + 2)
    return [tasks.sample(config.prompts_per_step, generator) for _ in range(config.steps)]


def train_arm(
    arm: FixedCoefficient | AdaptiveCoefficient,
    config: DemoConfig,
    tasks: SortingTasks,
    initial_state: dict[str, torch.Tensor],
    schedule: list[list[Problem]],
) -> ArmLog:
    """GRPO for ``config.steps`` steps. Each step: sample ``group_size`` responses per prompt, score them,
    take ``epochs_per_step`` Adam steps on the clipped objective, then give the entropy of the step's rollouts
    (measured before the update) to the arm. Evaluates every ``eval_every`` steps and at the end."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = new_policy(config).to(device)
    model.load_state_dict(initial_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator(device=device).manual_seed(config.seed + 3)
    log = ArmLog()

    def record_eval(step: int) -> None:
        log.eval_steps.append(step)
        log.eval_correct.append(
            evaluate(model, tasks, k=config.pass_k, temperature=config.temperature, seed=config.seed + 4, device=device)
        )

    progress = tqdm(range(config.steps), desc=f"{arm.name:>12}", unit="step", dynamic_ncols=True)
    for step in progress:
        if step % config.eval_every == 0:
            record_eval(step)
        problems = [problem for problem in schedule[step] for _ in range(config.group_size)]
        rollouts = sample(model, problems, temperature=config.temperature, generator=generator, device=device)
        step_rewards = rewards(problems, rollouts).to(device)
        advantages = group_advantages(step_rewards, config.group_size)
        coefficients = arm.coefficients(
            aer.group_accuracy(step_rewards, group_size=config.group_size), config.group_size
        )
        log.coefficient.append(arm.coefficient)
        for epoch in range(config.epochs_per_step):
            logp, entropy, mask = token_logprobs_and_entropy(model, rollouts, config.temperature)
            if epoch == 0:  # the rollout policy: its log-probs are the ratio's denominator, its entropy is logged
                old_logp = logp.detach()
                entropy_sum, token_count = aer.entropy_stats(entropy.detach(), mask)
            loss = grpo_loss(logp, old_logp, advantages, entropy, coefficients, mask, config.clip_eps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        arm.update(entropy_sum, token_count)
        log.entropy.append(float(entropy_sum) / float(token_count))
        log.reward.append(step_rewards.mean().item())
        progress.set_postfix(
            H=f"{log.entropy[-1]:.3f}", coef=f"{log.coefficient[-1]:.2g}", reward=f"{log.reward[-1]:.2f}"
        )
    record_eval(config.steps)
    return log
