"""Fused per-token entropy and log-prob for LLM reinforcement learning."""

from .entropy import entropy, logprobs_and_entropy
from .linear import linear_entropy, linear_logprobs_and_entropy, vocab_parallel_linear_logprobs_and_entropy
from .vocab_parallel import vocab_parallel_entropy, vocab_parallel_logprobs_and_entropy

__all__ = [
    "entropy",
    "linear_entropy",
    "linear_logprobs_and_entropy",
    "logprobs_and_entropy",
    "vocab_parallel_entropy",
    "vocab_parallel_linear_logprobs_and_entropy",
    "vocab_parallel_logprobs_and_entropy",
]
__version__ = "0.1.0"
