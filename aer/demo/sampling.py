"""Prompt batching, token-by-token sampling with temperature, and rewards of a sampled batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import TinyTransformer
from .tasks import EOS, PAD, Problem, reward


@dataclass
class Rollouts:
    """Sampled sequences: ``tokens`` ``[B, S]`` (left-padded prompt, response, right PAD) and
    ``response_mask`` ``[B, S]`` (True on response tokens, the first EOS included)."""

    tokens: torch.Tensor
    response_mask: torch.Tensor

    def responses(self) -> list[list[int]]:
        return [row[mask].tolist() for row, mask in zip(self.tokens.cpu(), self.response_mask.cpu())]


def encode_prompts(problems: list[Problem], device: torch.device) -> torch.Tensor:
    """Prompts left-padded with PAD to the longest, ``[B, S_prompt]``."""
    width = max(len(problem.prompt) for problem in problems)
    rows = [[PAD] * (width - len(problem.prompt)) + problem.prompt for problem in problems]
    return torch.tensor(rows, dtype=torch.long, device=device)


@torch.no_grad()
def sample(
    model: TinyTransformer,
    problems: list[Problem],
    *,
    temperature: float,
    generator: torch.Generator,
    device: torch.device,
) -> Rollouts:
    """One response per problem: ``y_t ~ softmax(logits_t / temperature)`` until EOS or ``len(answer)`` tokens."""
    tokens = encode_prompts(problems, device)
    max_new = max(len(problem.answer) for problem in problems)
    finished = torch.zeros(len(problems), dtype=torch.bool, device=device)
    response_mask = torch.zeros_like(tokens, dtype=torch.bool)
    for _ in range(max_new):
        logits = model(tokens)[:, -1].float() / temperature
        next_token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
        next_token = torch.where(finished, torch.full_like(next_token, PAD), next_token)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        response_mask = torch.cat([response_mask, ~finished[:, None]], dim=1)
        finished |= next_token == EOS
        if bool(finished.all()):
            break
    return Rollouts(tokens, response_mask)


def rewards(problems: list[Problem], rollouts: Rollouts) -> torch.Tensor:
    """``[B]`` fp32 rewards, 1 for an exactly right response."""
    return torch.tensor([reward(p, r) for p, r in zip(problems, rollouts.responses())], dtype=torch.float32)
