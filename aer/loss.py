"""Tensor helpers around the controller: group accuracy in, entropy statistics out, the entropy loss term.

Shapes: P prompts, G responses each, N = P·G responses of T tokens; `mask` [N, T] marks response tokens.
None of these functions reads a value back to the host, except `group_accuracy` given `group_ids` (the number of
groups depends on the data).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def group_accuracy(
    rewards: torch.Tensor,
    *,
    group_size: int | None = None,
    group_ids: torch.Tensor | None = None,
    success_threshold: float = 0.5,
) -> torch.Tensor:
    """acc_b = mean_j 1[r_bj >= success_threshold] over the responses of prompt b: [P] fp32.

    Give exactly one of `group_size` (responses laid out prompt-major, G per prompt) or `group_ids` (one id per
    response, any order, any number of responses per prompt: for trainers that shuffle or pad the batch). With
    `group_ids`, acc[k] belongs to the k-th smallest id, and `torch.unique(group_ids, return_inverse=True)[1]`
    maps each response to its prompt's entry. A NaN reward counts as not correct.

    Args:
        rewards: [P * G] (prompt 0's responses first) or [P, G] with `group_size`; [N] with `group_ids`.
        group_size: G, the number of responses per prompt, an int >= 1.
        group_ids: [N] integer tensor, the prompt of each response (equal ids, same prompt).
        success_threshold: a reward r counts as correct when r >= success_threshold.
    """
    if (group_size is None) == (group_ids is None):
        given = "neither" if group_size is None else "both"
        raise ValueError(
            f"give exactly one of group_size (prompt-major responses) or group_ids (one id per response), got {given}"
        )
    if not isinstance(rewards, torch.Tensor):
        raise ValueError(f"rewards must be a tensor, got {type(rewards).__name__}")
    if group_ids is not None:
        return _accuracy_by_id(rewards, group_ids, success_threshold)
    _check_group_size(group_size)
    if rewards.dim() == 1:
        if rewards.numel() % group_size:
            raise ValueError(f"rewards has {rewards.numel()} elements, not a multiple of group_size={group_size}")
        rewards = rewards.view(-1, group_size)
    elif rewards.dim() != 2 or rewards.shape[1] != group_size:
        raise ValueError(
            f"rewards must be [P * G] or [P, G] with G = group_size = {group_size}, got shape {tuple(rewards.shape)}"
        )
    return (rewards.detach() >= success_threshold).float().mean(dim=1)


def _accuracy_by_id(rewards: torch.Tensor, group_ids: torch.Tensor, success_threshold: float) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be [N] (one reward per response) with group_ids, got shape {tuple(rewards.shape)}"
        )
    if (
        not isinstance(group_ids, torch.Tensor)
        or group_ids.shape != rewards.shape
        or group_ids.is_floating_point()
        or group_ids.is_complex()
        or group_ids.dtype == torch.bool
    ):
        raise ValueError(
            f"group_ids must be an integer tensor of the rewards' shape {tuple(rewards.shape)}, "
            f"got {_describe(group_ids)}"
        )
    ids, group = torch.unique(group_ids.to(rewards.device), return_inverse=True)  # group [N] in 0..P-1
    groups = ids.numel()
    correct = (rewards.detach() >= success_threshold).float()
    hits = torch.zeros(groups, device=rewards.device).index_add_(0, group, correct)
    sizes = torch.zeros(groups, device=rewards.device).index_add_(0, group, torch.ones_like(correct))
    return hits / sizes


def entropy_stats(entropy: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ entropy·mask, Σ mask) as 0-d fp64 tensors on the input's device, for `AERController.update`.

    fp64 keeps the token count exact beyond 2^24 tokens and the sum order-independent enough to agree
    across data-parallel shardings.

    Args:
        entropy: per-token entropy, any float dtype, e.g. ``aer_kernels.entropy``'s output ``[N, T]``; only
            its masked-in entries are read (NaN elsewhere is ignored).
        mask: bool or 0/1 tensor of ``entropy``'s shape: the response tokens that count.

    Returns:
        ``(entropy_sum, token_count)``, 0-d float64 tensors, detached.
    """
    _check_entropy_and_mask(entropy, mask)
    mask = mask.detach().to(torch.float64)
    return _masked(entropy.detach().to(torch.float64), mask).sum(), mask.sum()


def entropy_bonus(
    entropy: torch.Tensor,
    coef: torch.Tensor,
    mask: torch.Tensor,
    reduction: str = "token-mean",
) -> torch.Tensor:
    """The loss term -Σ_i Σ_t λ_i · H_it · mask_it / normaliser, a differentiable fp32 scalar (λ detached).

    entropy [N, T], coef λ [N], mask [N, T] (bool or 0/1). With n_i = Σ_t mask_it and S the responses with
    n_i > 0:
      token-mean:           -Σ_i λ_i Σ_t H_it m_it / max(Σ_i n_i, 1)
      seq-mean-token-mean:  -(1/max(|S|, 1)) Σ_{i∈S} λ_i Σ_t H_it m_it / n_i
      seq-mean-token-sum:   -(1/max(|S|, 1)) Σ_{i∈S} λ_i Σ_t H_it m_it
    Adding it to the loss raises entropy where λ_i > 0 and lowers it where λ_i < 0.

    Args:
        entropy: per-token entropy ``[N, T]`` with its graph (e.g. ``aer_kernels.entropy(logits)``).
        coef: ``[N]`` per-response coefficients λ_i, e.g. ``AERController.coefficients``; used detached.
        mask: ``[N, T]`` bool or 0/1: the response tokens that count.
        reduction: ``"token-mean"`` (default), ``"seq-mean-token-mean"`` or ``"seq-mean-token-sum"``: match
            the policy loss's own aggregation so the bonus keeps its scale against it.

    Returns:
        A 0-d fp32 tensor to add to the loss.
    """
    _check_entropy_and_mask(entropy, mask)
    if not isinstance(coef, torch.Tensor) or coef.shape != entropy.shape[:1]:
        raise ValueError(
            f"coef must be a tensor [N] = [{entropy.shape[0]}] (one λ per response), got {_describe(coef)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    mask = mask.detach().float()
    per_response = _masked(entropy.float(), mask).sum(dim=1)  # [N] Σ_t H·m
    tokens = mask.sum(dim=1)  # [N] n_i
    weighted = coef.detach().float() * per_response  # [N]
    if reduction == "token-mean":
        return -weighted.sum() / tokens.sum().clamp_min(1.0)
    has_tokens = tokens > 0
    if reduction == "seq-mean-token-mean":
        weighted = weighted / tokens.clamp_min(1.0)
    return -weighted.sum() / has_tokens.sum().clamp_min(1).float()


def _masked(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where() first: padding positions may hold NaN/garbage, and NaN * 0 is NaN.
    return torch.where(mask != 0, entropy, 0.0) * mask


def _check_entropy_and_mask(entropy: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(entropy, torch.Tensor) or entropy.dim() != 2 or not entropy.is_floating_point():
        raise ValueError(f"entropy must be a floating tensor [N, T], got {_describe(entropy)}")
    if not isinstance(mask, torch.Tensor) or mask.shape != entropy.shape:
        raise ValueError(f"mask must be a tensor of the entropy's shape {tuple(entropy.shape)}, got {_describe(mask)}")


def _check_group_size(group_size: object) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
