"""Load this module to train with AER in verl 0.9: it registers the V1 trainer mode "aer_sync".

    export VERL_USE_EXTERNAL_MODULES=aer.integrations.verl_trainer   # verl imports it in each of its processes
    python -m verl.trainer.main_ppo trainer.v1.trainer_mode=aer_sync \\
        actor_rollout_ref.actor.entropy_coeff=0 actor_rollout_ref.actor.calculate_entropy=True \\
        +aer.weighting=linear +aer.target_ratio=0.5 ...

"aer_sync" is verl's "sync" trainer plus `AERTrainerMixin`: after verl computes the advantages, the driver reads
each sample's uid, score (`rm_scores` summed) and rollout entropy from the TransferQueue, computes λ and updates
the controller (`aer.integrations.verl.AERDriver`), and writes λ back per token as `aer_coefficients`; the actor's
loss is `aer.integrations.verl.ppo_loss`. The `aer` config group holds `AERConfig`'s fields. The controller's
state is saved as `aer_controller.json` in each `global_step_N` checkpoint folder and restored on resume, and its
metrics join verl's as `aer/*`. Other trainer modes: `register_trainer("name")(type("X", (AERTrainerMixin, Mode), {}))`.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import partial
from typing import Any

import transfer_queue as tq
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.trainer.distillation import is_distillation_enabled
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.padding import response_to_nested

from aer.controller import AERConfig
from aer.integrations.verl import COEFFICIENTS_KEY, AERDriver, ppo_loss

STATE_FILE = "aer_controller.json"


class AERTrainerMixin:
    """Adds AER to a verl V1 trainer class; its settings are the config's `aer` group (`AERConfig` fields).

    Raises:
        ValueError: when `actor.entropy_coeff` is not 0, `actor.calculate_entropy` is off, the rollout-correction
            bypass mode skips the old-log-prob pass (no rollout entropy), distillation replaces the actor's loss, or
            the `aer` group is not a valid `AERConfig`.
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        _check_config(config)
        self.aer = AERDriver(AERConfig(**OmegaConf.to_container(config.get("aer") or {}, resolve=True)))
        super().__init__(config, *args, **kwargs)

    def _setup(self) -> None:
        super()._setup()
        # The workers built verl's ppo_loss; give them AER's, with the actor config they use (as verl's critic does).
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(partial(ppo_loss, config=actor_config))

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        batch = super()._compute_advantage(batch, metrics=metrics)
        if self.config.trainer.critic_warmup > self.global_steps:
            return batch  # no actor update this step: no coefficients, no controller update
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["uid", "rm_scores", "entropy", "response_mask"],
        )
        response_mask = data["response_mask"]
        padded = data.to_padded_tensor()
        coefficients = self.aer.step(
            scores=padded["rm_scores"].sum(dim=-1),
            uids=padded.pop("uid").tolist(),
            entropy=padded["entropy"],
            response_mask=padded["response_mask"],
            is_padding=[bool(tag.get("is_padding", False)) for tag in batch.tags],
        )
        per_token = coefficients[:, None].expand(padded["response_mask"].shape).contiguous()
        fields = TensorDict({COEFFICIENTS_KEY: response_to_nested(per_token, response_mask)}, batch_size=len(batch))
        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
        metrics.update(self.aer.controller.metrics())
        return batch

    def _save_checkpoint(self) -> None:
        # Before verl's save, which writes latest_checkpointed_iteration.txt last: a resumable folder has the state.
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, STATE_FILE), "w") as f:
            json.dump(self.aer.controller.state_dict(), f)
        super()._save_checkpoint()

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        if self.global_steps == 0:  # trained from scratch
            return
        trainer = self.config.trainer
        if trainer.resume_mode == "resume_path":
            folder = trainer.resume_from_path
        else:
            folder = os.path.join(trainer.default_local_dir, f"global_step_{self.global_steps}")
        path = os.path.join(os.path.abspath(folder), STATE_FILE)
        if not os.path.exists(path):
            warnings.warn(
                f"{path} does not exist (a checkpoint saved without AER): the AER controller starts "
                "afresh and anchors its target on the next step",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        with open(path) as f:
            self.aer.controller.load_state_dict(json.load(f))


@register_trainer("aer_sync")
class AERPPOTrainerSync(AERTrainerMixin, PPOTrainerSync):
    """verl's synchronous PPO trainer with AER's entropy term."""


def _check_config(config: Any) -> None:
    actor = config.actor_rollout_ref.actor
    if actor.entropy_coeff != 0:
        raise ValueError(
            f"actor_rollout_ref.actor.entropy_coeff must be 0 with AER (AER's coefficients replace it), "
            f"got {actor.entropy_coeff!r}"
        )
    if not actor.calculate_entropy:
        raise ValueError("actor_rollout_ref.actor.calculate_entropy must be True with AER (its loss needs the entropy)")
    correction = config.algorithm.get("rollout_correction") or {}
    if correction.get("bypass_mode", False):
        raise ValueError(
            "algorithm.rollout_correction.bypass_mode must be off with AER: it skips the old-log-prob "
            "pass, which computes the rollout entropy the controller reads"
        )
    if is_distillation_enabled(config.get("distillation")):
        raise ValueError("distillation must be off with AER: it replaces the actor's loss")
