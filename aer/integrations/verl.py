"""AER in verl 0.9 (V1 trainer, engine workers): the worker's loss and the driver's coefficients.

Worker side, `ppo_loss`: verl's `ppo_loss` minus `agg_loss(λ·H)`, aggregated by verl's own `agg_loss` with the
batch's global token / sequence counts over data-parallel ranks (which `aer.entropy_bonus`, normalising locally,
would get wrong there). λ arrives per token in the batch field `aer_coefficients`, shaped like `advantages`, so it
follows every sample through verl's balancing, mini- and micro-batching. Without that field it is verl's
`ppo_loss`, unchanged.

Driver side, `AERDriver.step`: each sample's λ = α·w(acc) from the accuracy of its `uid` group (groups are found
by uid, in any order and of any size; verl's padding samples belong to none and get λ = 0), then one controller
update per step from the rollout entropy the driver already holds (the old-log-prob pass, before the update).

`aer.integrations.verl_trainer` wires both into verl's trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils.metric import Metric
from verl.workers.utils import losses as verl_losses
from verl.workers.utils.padding import no_padding_2_padding

from aer.controller import AERConfig, AERController
from aer.loss import _describe, entropy_stats
from aer.loss import group_accuracy as _group_accuracy

COEFFICIENTS_KEY = "aer_coefficients"


def ppo_loss(config: Any, model_output: dict[str, torch.Tensor], data: Any, dp_group: Any = None) -> tuple:
    """verl's `ppo_loss` plus AER's term: loss - agg_loss(λ_i·H_it, response_mask, loss_agg_mode, global counts).

    With λ = c for every token this is `ppo_loss` with `entropy_coeff=c`, in every `loss_agg_mode`. The term is
    also reported as the metric `actor/aer_entropy_bonus` (aggregated like `actor/pg_loss`).

    Args:
        config: the actor's `ActorConfig`, as verl passes it; its `entropy_coeff` must be 0 when the batch
            carries coefficients (AER replaces it).
        model_output: the engine's output; needs `entropy` (set `actor.calculate_entropy=True`).
        data: the micro-batch TensorDict; AER's term is added when it holds `aer_coefficients`.
        dp_group: the data-parallel group, passed on to verl's `ppo_loss`.

    Returns:
        (loss, metrics) as verl's `ppo_loss` returns them.
    """
    if COEFFICIENTS_KEY not in data:
        return verl_losses.ppo_loss(config, model_output, data, dp_group)
    if config.entropy_coeff != 0:
        raise ValueError(
            f"actor.entropy_coeff must be 0 when the batch carries {COEFFICIENTS_KEY} (AER's coefficients "
            f"replace it), got {config.entropy_coeff!r}"
        )
    if model_output.get("entropy") is None:
        raise ValueError("the model output has no entropy: set actor_rollout_ref.actor.calculate_entropy=True for AER")
    loss, metrics = verl_losses.ppo_loss(config, model_output, data, dp_group)
    entropy = no_padding_2_padding(model_output["entropy"], data)
    padded = data.select("response_mask", COEFFICIENTS_KEY).to_padded_tensor()
    # ppo_loss has just set global_batch_info (dp size, global token and sequence counts) for this micro-batch.
    bonus = agg_loss(
        loss_mat=padded[COEFFICIENTS_KEY] * entropy,
        loss_mask=padded["response_mask"].to(bool),
        loss_agg_mode=config.loss_agg_mode,
        **config.global_batch_info,
    )
    metrics["actor/aer_entropy_bonus"] = Metric(value=bonus.detach(), aggregation=metrics["actor/pg_loss"].aggregation)
    return loss - bonus, metrics


def group_accuracy(
    scores: torch.Tensor,
    uids: Sequence[Any] | np.ndarray,
    *,
    is_padding: Sequence[bool] | np.ndarray | torch.Tensor | None = None,
    success_threshold: float = 0.5,
) -> torch.Tensor:
    """Each sample's group accuracy: the fraction of the non-padding samples sharing its uid with a score >= threshold.

    Args:
        scores: [N] one score per sample (verl's `rm_scores` summed over the response); NaN counts as not correct.
        uids: N group ids (verl's `uid` field: equal uid, same prompt), in any order, groups of any size.
        is_padding: N flags marking verl's padding samples (`tag["is_padding"]`), left out of every group.
        success_threshold: a score s counts as correct when s >= success_threshold.

    Returns:
        [N] fp32 on the scores' device; NaN for padding samples.
    """
    keep = _real_samples(scores, uids, is_padding)
    _, group = np.unique(np.asarray(uids, dtype=object)[keep.numpy()], return_inverse=True)
    group = torch.as_tensor(group.reshape(-1), dtype=torch.int64, device=scores.device)
    acc = torch.full(scores.shape, torch.nan, dtype=torch.float32, device=scores.device)
    keep = keep.to(scores.device)
    acc[keep] = _group_accuracy(scores[keep], group_ids=group, success_threshold=success_threshold)[group]
    return acc


class AERDriver:
    """The driver's half of AER in verl: per-sample coefficients and one controller update per training step.

    Args:
        config: the controller's settings (default `AERConfig()`); the controller is `driver.controller`.
    """

    def __init__(self, config: AERConfig | None = None) -> None:
        self.controller = AERController(config)

    def step(
        self,
        *,
        scores: torch.Tensor,
        uids: Sequence[Any] | np.ndarray,
        entropy: torch.Tensor,
        response_mask: torch.Tensor,
        is_padding: Sequence[bool] | np.ndarray | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """λ_i = α·w(acc of i's uid group) for this step's samples (0 for padding), then the controller update.

        The coefficients use α as it stands (set by the previous steps); the update then feeds the token-mean
        entropy of this step's real response tokens, so the new α applies from the next step.

        Args:
            scores: [N] sequence scores (`rm_scores` summed over the response).
            uids: N group ids (the `uid` field).
            entropy: [N, T] the rollout's per-token entropy (the `entropy` field of the old-log-prob pass).
            response_mask: [N, T] marks response tokens.
            is_padding: N flags for verl's padding samples.

        Returns:
            [N] fp32 coefficients on the scores' device.
        """
        if not isinstance(entropy, torch.Tensor) or entropy.dim() != 2 or entropy.shape[0] != len(uids):
            raise ValueError(
                f"entropy must be a tensor [N, T] with N = len(uids) = {len(uids)}, got {_describe(entropy)}"
            )
        acc = group_accuracy(
            scores, uids, is_padding=is_padding, success_threshold=self.controller.config.success_threshold
        )
        keep = _real_samples(scores, uids, is_padding).to(scores.device)
        coefficients = torch.zeros(scores.shape, dtype=torch.float32, device=scores.device)
        coefficients[keep] = self.controller.coefficients(acc[keep], group_size=1).to(scores.device)
        self.controller.update(
            *entropy_stats(entropy[keep.to(entropy.device)], response_mask[keep.to(response_mask.device)])
        )
        return coefficients


def _real_samples(scores: Any, uids: Any, is_padding: Any) -> torch.Tensor:
    """[N] bool CPU mask of the non-padding samples, after checking the three arguments agree."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError(f"scores must be a 1-D tensor [N], got {_describe(scores)}")
    if isinstance(uids, (str, bytes)) or not hasattr(uids, "__len__") or len(uids) != scores.numel():
        raise ValueError(
            f"uids must hold one id per sample ({scores.numel()}), got {type(uids).__name__}"
            + (f" of length {len(uids)}" if hasattr(uids, "__len__") else "")
        )
    if is_padding is None:
        return torch.ones(scores.numel(), dtype=torch.bool)
    padding = torch.as_tensor(np.asarray(is_padding.cpu() if isinstance(is_padding, torch.Tensor) else is_padding))
    if padding.dtype != torch.bool or padding.shape != scores.shape:
        raise ValueError(f"is_padding must hold one bool per sample ({scores.numel()}), got {_describe(padding)}")
    return ~padding
