"""AER inside RL trainers.

- `aer.integrations.trl`: `AERGRPOTrainer` / `AERTrainerMixin` for TRL's GRPOTrainer.
- `aer.integrations.verl`: the actor loss, group accuracy by uid and the driver's step for verl.
- `aer.integrations.verl_trainer`: the module verl loads to get the trainer mode "aer_sync".

Each module imports its trainer, so import the one you use; this package itself imports neither.
"""
