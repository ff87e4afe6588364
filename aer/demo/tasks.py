"""Sorting tasks with exact answers, their tokenizer and the 0/1 reward.

A problem is a random string over the 36 symbols ``0-9a-z``; its answer is the same symbols in sorted order
(``"b3a9" -> "39ab"``). The difficulty tier is the string's length. Token layout of one sequence::

    BOS x_1 ... x_L SEP y_1 ... y_L EOS        prompt = BOS..SEP, response = y_1..EOS

The reward is 1 when the response is exactly ``sorted(x)`` followed by EOS, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"
PAD, BOS, SEP, EOS = 0, 1, 2, 3
FIRST_SYMBOL = 4
VOCAB_SIZE = FIRST_SYMBOL + len(SYMBOLS)  # 40


@dataclass(frozen=True)
class Problem:
    tier: int  # index into the tier lengths
    symbols: tuple[int, ...]  # token ids of x_1..x_L

    @property
    def prompt(self) -> list[int]:
        return [BOS, *self.symbols, SEP]

    @property
    def answer(self) -> list[int]:
        return [*sorted(self.symbols), EOS]


class SortingTasks:
    """Problem generator over tiers of list lengths; the held-out set never appears in training draws."""

    def __init__(self, tier_lengths: tuple[int, ...], eval_per_tier: int, seed: int):
        self.tier_lengths = tier_lengths
        generator = torch.Generator().manual_seed(seed)
        self.held_out = [self._draw(tier, generator) for tier in range(len(tier_lengths)) for _ in range(eval_per_tier)]
        self._held_out_keys = {problem.symbols for problem in self.held_out}

    def _draw(self, tier: int, generator: torch.Generator) -> Problem:
        ids = torch.randint(FIRST_SYMBOL, VOCAB_SIZE, (self.tier_lengths[tier],), generator=generator)
        return Problem(tier, tuple(ids.tolist()))

    def sample(self, count: int, generator: torch.Generator) -> list[Problem]:
        """``count`` training problems cycling through the tiers (equal shares of the mix in every batch, so a
        batch's mean entropy does not swing with how many hard prompts it happened to draw)."""
        problems = []
        for tier in (index % len(self.tier_lengths) for index in range(count)):
            problem = self._draw(tier, generator)
            while problem.symbols in self._held_out_keys:
                problem = self._draw(tier, generator)
            problems.append(problem)
        return problems


def reward(problem: Problem, response: list[int]) -> float:
    """1.0 when ``response`` (tokens after SEP, up to and including the first EOS) equals the answer, else 0.0."""
    return float(response == problem.answer)
