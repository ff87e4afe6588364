"""Countdown problems, their tokens and their verifier.

A problem gives ``m`` numbers from 1 to 9 and a target; an answer is an expression over some of those numbers,
each used at most once, with ``+ - ×`` read left to right (no precedence, no brackets: ``3 + 4 × 2 = 14``). Any
expression that reaches the target scores 1, so a problem has many right answers and a policy that keeps
several of them in play can find more. The tier is ``m``; the target is the value of a random expression over
all ``m`` numbers, kept when it lies in ``[0, MAX_TARGET]``. Token layout of one sequence::

    BOS n_1 ... n_m = target SEP  a_1 op a_2 ... op a_j EOS        prompt = BOS..SEP, response = a_1..EOS
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass

import torch

PAD, BOS, SEP, EOS, EQUALS, PLUS, MINUS, TIMES = range(8)
OPERATIONS = {PLUS: operator.add, MINUS: operator.sub, TIMES: operator.mul}
FIRST_NUMBER = 8  # token of the number 0; number v is token FIRST_NUMBER + v
MAX_NUMBER = 9
MAX_TARGET = 99
VOCAB_SIZE = FIRST_NUMBER + MAX_TARGET + 1


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    target: int
    demonstration: tuple[int, ...]  # the expression the target came from: one right answer, for the warm start

    @property
    def tier(self) -> int:
        return len(self.numbers)

    @property
    def prompt(self) -> list[int]:
        return [BOS, *(FIRST_NUMBER + n for n in self.numbers), EQUALS, FIRST_NUMBER + self.target, SEP]

    @property
    def max_response(self) -> int:
        """Tokens of the longest answer: every number, an operation between each two, EOS."""
        return 2 * len(self.numbers)


def value(tokens: list[int] | tuple[int, ...]) -> int | None:
    """The left-to-right value of ``number op number ... op number`` (no EOS), None if not of that form."""
    if len(tokens) % 2 == 0 or any(not _is_number(t) for t in tokens[::2]):
        return None
    if any(t not in OPERATIONS for t in tokens[1::2]):
        return None
    total = tokens[0] - FIRST_NUMBER
    for op, number in zip(tokens[1::2], tokens[2::2]):
        total = OPERATIONS[op](total, number - FIRST_NUMBER)
    return total


def reward(problem: Problem, response: list[int]) -> float:
    """1.0 when ``response`` (the tokens after SEP, up to and including the first EOS) is an expression over a
    sub-multiset of the problem's numbers, followed by EOS, whose left-to-right value is the target; else 0.0."""
    if not response or response[-1] != EOS:
        return 0.0
    expression = response[:-1]
    used = Counter(t - FIRST_NUMBER for t in expression[::2])
    if used - Counter(problem.numbers):  # a number not given, or given fewer times
        return 0.0
    return float(value(expression) == problem.target)


def _is_number(token: int) -> bool:
    return FIRST_NUMBER <= token < VOCAB_SIZE


def draw(tier: int, generator: torch.Generator) -> Problem:
    """A problem with ``tier`` numbers: random numbers, then random operations over them, until the value lies
    in ``[0, MAX_TARGET]``."""
    while True:
        numbers = torch.randint(1, MAX_NUMBER + 1, (tier,), generator=generator).tolist()
        ops = torch.randint(0, len(OPERATIONS), (tier - 1,), generator=generator).tolist()
        expression = [FIRST_NUMBER + numbers[0]]
        for op, number in zip(ops, numbers[1:]):
            expression += [list(OPERATIONS)[op], FIRST_NUMBER + number]
        target = value(expression)
        if 0 <= target <= MAX_TARGET:
            order = torch.randperm(tier, generator=generator).tolist()  # the prompt does not give the order away
            return Problem(tuple(numbers[i] for i in order), target, tuple(expression))


class Countdown:
    """Held-out problems (``per_tier`` per tier, drawn from ``seed``) and a training stream that never repeats
    one of them."""

    def __init__(self, tiers: tuple[int, ...], per_tier: int, seed: int):
        self.tiers = tiers
        generator = torch.Generator().manual_seed(seed)
        self.held_out = [draw(tier, generator) for tier in tiers for _ in range(per_tier)]
        self._held_out_keys = {(p.numbers, p.target) for p in self.held_out}

    def sample(self, count: int, generator: torch.Generator) -> list[Problem]:
        """``count`` training problems cycling through the tiers, so every batch has the same mix."""
        problems = []
        for index in range(count):
            problem = draw(self.tiers[index % len(self.tiers)], generator)
            while (problem.numbers, problem.target) in self._held_out_keys:
                problem = draw(problem.tier, generator)
            problems.append(problem)
        return problems
