"""AER in TRL's GRPOTrainer (trl >= 1.9, < 1.17), in place of TRL's own entropy bonus.

Instead of `GRPOTrainer(..., args=GRPOConfig(entropy_coef=0.01))`, write
`AERGRPOTrainer(..., args=GRPOConfig(), aer_config=AERConfig(...))`. Per rollout batch:

1. `_calculate_rewards` returns the rewards of the whole batch (all processes, prompt-major groups of
   `num_generations`); the group accuracy of the chosen reward gives each completion its λ_i = α·w(acc), and each
   process keeps its own slice under the batch key `aer_coefficients`, so TRL's shuffling and splitting into
   gradient-accumulation micro-batches carry λ with its completion.
2. `_compute_loss` adds -Σ λ_i H_it m_it with TRL's own aggregation of its entropy term: the micro-batch's token
   mean over the completion mask (times the top-entropy mask when `top_entropy_quantile < 1`), divided by the
   gradient accumulation steps; TRL 1.9 divided by its global token normaliser instead for the cispo, dapo and
   vespo loss types.
3. The entropy of every completion token (each counted once, on its first pass) is summed over the rollout
   batch's micro-batches, and after its last micro-batch the controller takes one update, all-reduced over
   processes so α is identical everywhere.

TRL up to 1.14 computes the entropies without gradient unless its own bonus is on, so an added term would train
nothing, silently; the trainer switches that flag on (its own coefficient stays 0). The controller's state is
saved as `aer_controller.json` in each checkpoint and restored on resume; its metrics join TRL's logs as `aer/*`
(TRL's `entropy_coef`, always 0 here, is left out).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from typing import Any

import torch
import trl
from packaging.version import Version
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from aer.controller import AERConfig, AERController
from aer.loss import entropy_bonus, entropy_stats, group_accuracy

COEFFICIENTS_KEY = "aer_coefficients"
STATE_FILE = "aer_controller.json"

TRL_VERSION = Version(trl.__version__)
if Version("1.9") > TRL_VERSION:
    raise ImportError(f"aer.integrations.trl needs trl>=1.9 (pip install 'aer-kernels[trl]'), found {trl.__version__}")
if Version("1.17") <= TRL_VERSION:
    warnings.warn(f"aer.integrations.trl is tested with trl 1.9 to 1.16, found {trl.__version__}", stacklevel=2)
# Loss types whose entropy term TRL 1.9 divided by the global token normaliser rather than a per-micro-batch mean.
_GLOBAL_TOKEN_LOSS_TYPES = frozenset({"cispo", "dapo", "vespo"}) if Version("1.10") > TRL_VERSION else frozenset()


class AERTrainerMixin:
    """Adds AER to a GRPOTrainer class: `class MyTrainer(AERTrainerMixin, GRPOTrainer)`.

    The trainer's `aer_controller` holds α and the target entropy. Every other argument is the trainer's own.

    Args:
        aer_config: the controller's settings (default `AERConfig()`).
        aer_reward: name of the reward function (as in `trainer.reward_func_names`) whose group accuracy sets
            each completion's weight; None: the weighted sum of all reward functions, as TRL's advantages use.
            A reward counts as correct when >= `aer_config.success_threshold`; a missing (None/NaN) one does not.

    Raises:
        ValueError: for `entropy_coef != 0` or `use_adaptive_entropy=True` (TRL's own bonus; AER replaces it),
            `use_liger_kernel=True` on TRL < 1.14 (its loss bypasses `_compute_loss`), a bad `aer_config`, or an
            `aer_reward` that names no reward function.
    """

    def __init__(
        self, *args: Any, aer_config: AERConfig | None = None, aer_reward: str | None = None, **kwargs: Any
    ) -> None:
        if aer_config is not None and not isinstance(aer_config, AERConfig):
            raise ValueError(f"aer_config must be an AERConfig, got {type(aer_config).__name__}")
        if aer_reward is not None and not isinstance(aer_reward, str):
            raise ValueError(f"aer_reward must be a reward function's name or None, got {type(aer_reward).__name__}")
        _check_grpo_args(inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments.get("args"))
        self.aer_controller = AERController(aer_config)
        self._aer_reward = aer_reward
        self._aer_batch_rewards: torch.Tensor | None = None
        self._aer_captured: dict[str, torch.Tensor] | None = None
        self._aer_entropy_sums: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(*args, **kwargs)
        _check_grpo_args(self.args)  # again: a subclass's __init__(*args, **kwargs) hides `args` from the first check
        if aer_reward is not None and aer_reward not in self.reward_func_names:
            raise ValueError(
                f"aer_reward must name one of the reward functions {self.reward_func_names}, got {aer_reward!r}"
            )
        if not hasattr(self, "_entropy_bonus_enabled"):
            raise RuntimeError(
                f"trl {trl.__version__} has no GRPOTrainer._entropy_bonus_enabled: AER cannot make it "
                "compute entropies with gradient"
            )
        self._entropy_bonus_enabled = True

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)
        self._aer_batch_rewards = rewards_per_func  # [B_all, F], gathered over processes
        return rewards_per_func

    def _generate_and_score_completions(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._aer_batch_rewards = None
        output = super()._generate_and_score_completions(*args, **kwargs)
        if self._aer_batch_rewards is None:
            raise RuntimeError("GRPOTrainer scored completions without _calculate_rewards: AER has no rewards")
        rewards, self._aer_batch_rewards = self._aer_rewards(self._aer_batch_rewards), None
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        acc = group_accuracy(
            rewards, group_size=group_size, success_threshold=self.aer_controller.config.success_threshold
        )
        coefficients = self.aer_controller.coefficients(acc, group_size=group_size)
        local = output["completion_ids"].size(0)
        start = self.accelerator.process_index * local  # TRL's own slice of the gathered batch
        output[COEFFICIENTS_KEY] = coefficients[start : start + local].to(output["completion_ids"].device)
        return output

    def _aer_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        if self._aer_reward is not None:
            return rewards_per_func[:, self.reward_func_names.index(self._aer_reward)]
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        # A completion no reward function scored is not a success (nansum would make it 0, maybe above threshold).
        return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), math.nan)

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        output = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._aer_captured is not None and output[1] is not None:
            self._aer_captured["entropies"] = output[1]
        return output

    def get_high_entropy_mask(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        mask = super().get_high_entropy_mask(*args, **kwargs)
        if self._aer_captured is not None:
            self._aer_captured["entropy_mask"] = mask
        return mask

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if COEFFICIENTS_KEY not in inputs:
            raise KeyError(
                f"the batch has no {COEFFICIENTS_KEY!r}: it did not come from this trainer's "
                "_generate_and_score_completions"
            )
        self._aer_captured = {}
        try:
            loss = super()._compute_loss(model, inputs)
            captured = self._aer_captured
        finally:
            self._aer_captured = None
        if "entropies" not in captured:
            raise RuntimeError("GRPOTrainer._compute_loss computed no entropies: AER has no term to add")
        entropies = captured["entropies"]
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        bonus_mask = mask * captured["entropy_mask"] if "entropy_mask" in captured else mask
        training = self.model.training
        loss = loss + self._aer_term(entropies, inputs[COEFFICIENTS_KEY], bonus_mask, inputs, training)
        if training and self._aer_first_pass():
            total, count = entropy_stats(entropies, mask)
            if self._aer_entropy_sums is not None:
                total, count = total + self._aer_entropy_sums[0], count + self._aer_entropy_sums[1]
            self._aer_entropy_sums = (total, count)
        return loss

    def _aer_term(
        self,
        entropies: torch.Tensor,
        coefficients: torch.Tensor,
        mask: torch.Tensor,
        inputs: dict[str, Any],
        training: bool,
    ) -> torch.Tensor:
        """-Σ λ_i H_it m_it, normalised as TRL normalises its own `entropy_coef` term."""
        token_mean = entropy_bonus(entropies, coefficients, mask, reduction="token-mean")
        if self.loss_type in _GLOBAL_TOKEN_LOSS_TYPES:
            normaliser = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            return token_mean * mask.sum().clamp(min=1.0) / normaliser
        return token_mean / (self.current_gradient_accumulation_steps if training else 1.0)

    def _aer_rollout_steps(self) -> int:
        return self.args.steps_per_generation * self.num_iterations

    def _aer_first_pass(self) -> bool:
        # TRL trains on a rollout batch num_iterations times; count its tokens on the first pass only.
        return self._step % self._aer_rollout_steps() < self.args.steps_per_generation

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        if self._step % self._aer_rollout_steps() == 0:  # TRL counted the rollout batch's last micro-batch
            sums, self._aer_entropy_sums = self._aer_entropy_sums, None
            if sums is None:
                raise RuntimeError("a rollout batch ended with no entropy recorded: AER cannot update α")
            self.aer_controller.update(*sums)
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.model.training:
            self._metrics["train"].pop("entropy_coef", None)
            # None where undefined, as TRL logs a metric with no value (JSON loggers reject NaN).
            logs = {**logs, **{k: None if math.isnan(v) else v for k, v in self.aer_controller.metrics().items()}}
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if self.args.should_save:
            checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), checkpoint)
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(self.aer_controller.state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            warnings.warn(
                f"{path} does not exist (a checkpoint saved without AER): the AER controller starts "
                "afresh and anchors its target on the next rollout",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        with open(path) as f:
            self.aer_controller.load_state_dict(json.load(f))


class AERGRPOTrainer(AERTrainerMixin, GRPOTrainer):
    """TRL's GRPOTrainer with AER's entropy term (see `AERTrainerMixin` for `aer_config` and `aer_reward`)."""


def _check_grpo_args(args: Any) -> None:
    """Refuse the settings under which TRL's own entropy bonus or loss path would sidestep AER."""
    if args is None:  # TRL builds a default GRPOConfig: no entropy bonus
        return
    if getattr(args, "entropy_coef", 0.0) != 0.0:
        raise ValueError(
            f"GRPOConfig.entropy_coef must be 0 with AER (AER's coefficients replace TRL's entropy "
            f"bonus; set its initial α with AERConfig(coef_init=...)), got {args.entropy_coef!r}"
        )
    if getattr(args, "use_adaptive_entropy", False):
        raise ValueError("GRPOConfig.use_adaptive_entropy must be False with AER (AER adapts α itself)")
    if getattr(args, "use_liger_kernel", False) and Version("1.14") > TRL_VERSION:
        raise ValueError(
            f"GRPOConfig.use_liger_kernel must be False with AER on trl {trl.__version__}: its Liger loss "
            "does not go through GRPOTrainer._compute_loss (trl >= 1.14 lifts this)"
        )
