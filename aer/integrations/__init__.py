"""AER inside RL trainers: `aer.integrations.trl` (TRL's GRPOTrainer) and `aer.integrations.verl` (verl's PPO).

Each module imports its trainer, so import the one you use; this package itself imports neither.
"""
