"""Supervised warm-start of the policy, cached on disk so every arm starts from the same weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import DemoConfig
from .model import TinyTransformer
from .tasks import PAD, VOCAB_SIZE, SortingTasks


def new_policy(config: DemoConfig) -> TinyTransformer:
    max_len = 2 * max(config.tier_lengths) + 3  # BOS, x, SEP, y, EOS
    return TinyTransformer(VOCAB_SIZE, max_len, config.width, config.layers, config.heads)


def _cache_path(config: DemoConfig, output_dir: Path) -> Path:
    fields = {name: getattr(config, name) for name in config.WARM_START_FIELDS}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return output_dir / "cache" / f"warm_start_{key}.pt"


def _teacher_forced_loss(model: TinyTransformer, sequences: list[list[int]], prompt_lengths: list[int]) -> torch.Tensor:
    """Cross-entropy of the answer tokens given the prompt, mean over answer tokens."""
    width = max(len(seq) for seq in sequences)
    tokens = torch.tensor([seq + [PAD] * (width - len(seq)) for seq in sequences])
    is_answer = torch.zeros_like(tokens, dtype=torch.bool)
    for row, (seq, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        is_answer[row, prompt_length : len(seq)] = True
    logits = model(tokens)[:, :-1]
    targets = tokens[:, 1:].masked_fill(~is_answer[:, 1:], -100)
    return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1), ignore_index=-100)


def warm_started_policy(config: DemoConfig, tasks: SortingTasks, output_dir: Path) -> dict[str, torch.Tensor]:
    """State dict after ``warm_start_steps`` Adam steps of supervised sorting (on CPU, minimising the
    answer tokens' cross-entropy); loaded from ``<output_dir>/cache/`` when a run with the same settings made it."""
    path = _cache_path(config, output_dir)
    if path.exists():
        return torch.load(path, weights_only=True)
    torch.manual_seed(config.seed)
    model = new_policy(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.warm_start_lr)
    generator = torch.Generator().manual_seed(config.seed + 1)
    for _ in range(config.warm_start_steps):
        problems = tasks.sample(config.warm_start_batch, generator)
        sequences = [problem.prompt + problem.answer for problem in problems]
        loss = _teacher_forced_loss(model, sequences, [len(problem.prompt) for problem in problems])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state
