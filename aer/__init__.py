"""Adaptive Entropy Regularization: difficulty-aware, target-anchored entropy bonus for LLM RL."""

from aer.controller import AERConfig, AERController
from aer.loss import entropy_bonus, entropy_stats, group_accuracy

__all__ = ["AERConfig", "AERController", "entropy_bonus", "entropy_stats", "group_accuracy"]
