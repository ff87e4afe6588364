"""Fused per-token entropy and log-prob for LLM reinforcement learning."""

from . import reference
from .entropy import entropy, logprobs_and_entropy

__all__ = ["entropy", "logprobs_and_entropy", "reference"]
__version__ = "0.1.0"
