"""The GRPO objective with the entropy term, computed through ``aer_kernels`` and ``aer``."""

from __future__ import annotations

import torch

import aer
import aer_kernels

from .model import TinyTransformer
from .sampling import Rollouts


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """``A_i = (r_i - mean_g r) / (std_g r + eps)`` within each group of ``group_size`` responses; ``[B]``."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    return (centred / (grouped.std(1, keepdim=True) + eps)).view(-1)


def token_logprobs_and_entropy(
    model: TinyTransformer, rollouts: Rollouts, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp, H, mask)``, each ``[B, S-1]``: log-prob of each response token and the full-vocabulary entropy
    at that position, both at the rollout temperature; ``mask`` marks response tokens. Computed from the hidden
    states and the LM head's weight: the ``[B, S, V]`` logits are never formed."""
    hidden = model.hidden_states(rollouts.tokens)[:, :-1]  # position t predicts token t + 1
    targets = rollouts.tokens[:, 1:]
    mask = rollouts.response_mask[:, 1:]
    logp, entropy = aer_kernels.linear_logprobs_and_entropy(
        hidden, model.head.weight, targets, bias=model.head.bias, temperature=temperature, mask=mask
    )
    return logp, entropy, mask


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    coefficients: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """Token-mean clipped surrogate plus the entropy term::

    ρ_it = exp(logp_it - old_logp_it)
    L = Σ_it -min(ρ_it A_i, clip(ρ_it, 1-ε, 1+ε) A_i) · mask_it / Σ_it mask_it
        + aer.entropy_bonus(H, λ, mask)            (= -Σ_it λ_i H_it mask_it / Σ_it mask_it)
    """
    ratio = torch.exp(logp - old_logp)
    advantage = advantages[:, None]
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage)
    weights = mask.float()
    policy_loss = -(surrogate * weights).sum() / weights.sum()
    return policy_loss + aer.entropy_bonus(entropy, coefficients, mask, reduction="token-mean")
