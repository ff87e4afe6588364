"""One GRPO run, top to bottom: settings, policy, warm start, sampling, the GRPO step, evaluation, the loop."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import aer
import aer_kernels

from .tasks import EOS, PAD, VOCAB_SIZE, Countdown, Problem, reward


@dataclass(frozen=True)
class Config:
    """Every setting of one run but the arm; the study's JSON records them all."""

    seed: int = 0
    device: str = "cpu"
    # torch's CPU threads: the order of floating-point sums depends on it, and through sampling so does every
    # number after a few hundred steps. Fixed, never taken from the machine.
    threads: int = 1
    # Tasks: countdown with 2, 3 and 4 numbers; held-out problems per tier.
    tiers: tuple[int, ...] = (2, 3, 4)
    eval_per_tier: int = 128
    eval_samples: int = 32  # n of the unbiased pass@k estimator
    # Policy.
    width: int = 64
    layers: int = 2
    heads: int = 4
    # Warm start: supervised on one right answer per problem.
    warm_start_steps: int = 300
    warm_start_batch: int = 64
    warm_start_lr: float = 3e-3
    # GRPO.
    steps: int = 300
    prompts_per_step: int = 12
    group_size: int = 8
    temperature: float = 1.0
    lr: float = 6e-4
    epochs_per_step: int = 2
    clip_eps: float = 0.2
    # AER's α scale for this model (its defaults, 1e-4 and 5e-3, are for a 7B model at lr 1e-6).
    coef_step: float = 5e-3
    coef_max: float = 0.25


def quick(config: Config) -> Config:
    """A smaller run of the same pipeline, for the tests: seed, device and threads kept."""
    return Config(
        seed=config.seed,
        device=config.device,
        threads=config.threads,
        eval_per_tier=16,
        eval_samples=16,
        warm_start_steps=100,
        steps=30,
        lr=1e-3,
    )


@dataclass(frozen=True)
class Arm:
    """How the entropy coefficient is set: a fixed λ, or AER when ``target_ratio`` is given."""

    name: str
    coefficient: float = 0.0
    target_ratio: float | None = None
    weighting: str = "linear"


class FixedCoefficient:
    """``λ_i = coefficient`` for every response (0: no entropy term), with the controller's two methods."""

    def __init__(self, coefficient: float):
        self.coefficient = coefficient

    def coefficients(self, acc: torch.Tensor, *, group_size: int) -> torch.Tensor:
        return torch.full((acc.numel() * group_size,), self.coefficient, device=acc.device)

    def update(self, entropy_sum: torch.Tensor, token_count: torch.Tensor) -> None:
        """Nothing adapts."""


def coefficient_source(arm: Arm, config: Config) -> FixedCoefficient | aer.AERController:
    if arm.target_ratio is None:
        return FixedCoefficient(arm.coefficient)
    return aer.AERController(
        aer.AERConfig(
            weighting=arm.weighting,
            target_ratio=arm.target_ratio,
            coef_step=config.coef_step,
            coef_max=config.coef_max,
        )
    )


class Block(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, past: tuple | None) -> tuple[torch.Tensor, tuple]:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if past is not None:  # keys and values of the earlier tokens, from the cache
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [B, heads, S_new, width/heads]
        x = x + self.attn_out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.mlp_norm(x)), (k, v)


class Policy(nn.Module):
    """Causal Transformer over token ids. Sequences are left-padded; PAD is invisible to every other position
    and positions count real tokens only, so a prompt's tokens look the same whatever the padding."""

    def __init__(self, config: Config):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB_SIZE, config.width)
        self.position_embedding = nn.Embedding(4 * max(config.tiers) + 4, config.width)  # prompt + response
        self.blocks = nn.ModuleList(Block(config.width, config.heads) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, VOCAB_SIZE)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, S, V]``; position ``t`` predicts token ``t + 1``."""
        return self.head(self.hidden_states(tokens))

    def hidden_states(self, tokens: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        """Final hidden states, the LM head's input. With ``cache`` (a list, empty at first and filled here),
        only the tokens after those already cached are run: ``[B, S_new, width]``."""
        real = tokens != PAD
        positions = (real.long().cumsum(-1) - 1).clamp_min(0)
        length = tokens.shape[1]
        start = cache[0][0].shape[2] if cache else 0
        square = torch.ones(length, length, dtype=torch.bool, device=tokens.device)
        # A query sees earlier real keys and always itself (so a PAD row is never empty, never NaN).
        allowed = (square.tril() & real[:, None, :]) | torch.eye(length, dtype=torch.bool, device=tokens.device)
        x = self.token_embedding(tokens[:, start:]) + self.position_embedding(positions[:, start:])
        for index, block in enumerate(self.blocks):
            x, past = block(x, allowed[:, None, start:], cache[index] if start else None)
            if cache is not None:
                cache[index : index + 1] = [past]
        return self.final_norm(x)


def _cache_path(config: Config, output_dir: Path) -> Path:
    fields = ("seed", "threads", "tiers", "eval_per_tier", "width", "layers", "heads")
    settings = {name: getattr(config, name) for name in fields}
    settings |= {name: value for name, value in asdict(config).items() if name.startswith("warm_start")}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return output_dir / "cache" / f"warm_start_{key}.pt"


def warm_start(config: Config, tasks: Countdown, output_dir: Path) -> dict[str, torch.Tensor]:
    """Policy weights after ``warm_start_steps`` Adam steps on the cross-entropy of one right answer per problem
    (the expression its target came from), on CPU; cached under ``<output_dir>/cache/`` per settings."""
    path = _cache_path(config, output_dir)
    if path.exists():
        return torch.load(path, weights_only=True)
    torch.manual_seed(config.seed)
    model = Policy(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.warm_start_lr)
    generator = torch.Generator().manual_seed(config.seed + 1)
    for _ in range(config.warm_start_steps):
        problems = tasks.sample(config.warm_start_batch, generator)
        sequences = [[*p.prompt, *p.demonstration, EOS] for p in problems]
        width = max(len(s) for s in sequences)
        tokens = torch.tensor([s + [PAD] * (width - len(s)) for s in sequences])
        targets = tokens[:, 1:].clone()
        for row, problem in enumerate(problems):
            targets[row, : len(problem.prompt) - 1] = -100  # the prompt is given, not learned
        targets[targets == PAD] = -100
        loss = F.cross_entropy(model(tokens)[:, :-1].reshape(-1, VOCAB_SIZE), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.state_dict()


@torch.no_grad()
def sample(
    model: Policy, problems: list[Problem], temperature: float, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One response per problem, ``y_t ~ softmax(logits_t / temperature)`` (temperature 0: argmax), until EOS or
    the problem's longest answer. Returns ``tokens`` ``[B, S]`` (left-padded prompt, response, right PAD) and
    ``response_mask`` ``[B, S]`` (True on response tokens, the first EOS included)."""
    width = max(len(p.prompt) for p in problems)
    tokens = torch.tensor([[PAD] * (width - len(p.prompt)) + p.prompt for p in problems], device=device)
    limit = torch.tensor([p.max_response for p in problems], device=device)
    finished = torch.zeros(len(problems), dtype=torch.bool, device=device)
    response_mask = torch.zeros_like(tokens, dtype=torch.bool)
    cache: list = []
    for length in range(1, int(limit.max()) + 1):
        logits = model.head(model.hidden_states(tokens, cache)[:, -1]).float()
        if temperature == 0:
            next_token = logits.argmax(-1)
        else:
            next_token = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
        next_token = torch.where(finished, PAD, next_token)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        response_mask = torch.cat([response_mask, ~finished[:, None]], dim=1)
        finished |= (next_token == EOS) | (length >= limit)
        if bool(finished.all()):
            break
    return tokens, response_mask


def rewards(problems: list[Problem], tokens: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` fp32, 1 for a right response."""
    responses = [row[mask].tolist() for row, mask in zip(tokens.cpu(), response_mask.cpu())]
    return torch.tensor([reward(p, r) for p, r in zip(problems, responses)], dtype=torch.float32)


def grpo_loss(
    model: Policy,
    tokens: torch.Tensor,
    response_mask: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    coefficients: torch.Tensor,
    config: Config,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, logp, entropy, mask)``: the token-mean clipped surrogate plus the entropy term::

        r_it = exp(logp_it - old_logp_it)      (old_logp None: the rollout policy itself, r = 1)
        L = -Σ_it min(r_it A_i, clip(r_it, 1-ε, 1+ε) A_i) mask_it / Σ mask + aer.entropy_bonus(H, λ, mask)

    Log-probs and full-vocabulary entropies at the rollout temperature come from the hidden states and the LM
    head's weight through ``aer_kernels``: the ``[B, S, V]`` logits are never formed."""
    hidden = model.hidden_states(tokens)[:, :-1]  # position t predicts token t + 1
    mask = response_mask[:, 1:]
    logp, entropy = aer_kernels.linear_logprobs_and_entropy(
        hidden, model.head.weight, tokens[:, 1:], bias=model.head.bias, temperature=config.temperature, mask=mask
    )
    ratio = torch.exp(logp - (logp.detach() if old_logp is None else old_logp))
    advantage = advantages[:, None]
    clipped = ratio.clamp(1 - config.clip_eps, 1 + config.clip_eps)
    surrogate = torch.minimum(ratio * advantage, clipped * advantage)
    policy_loss = -(surrogate * mask).sum() / mask.sum()
    return policy_loss + aer.entropy_bonus(entropy, coefficients, mask), logp, entropy, mask


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """``A_i = (r_i - mean_g r) / (std_g r + eps)`` within each group of ``group_size`` responses."""
    grouped = rewards.view(-1, group_size)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)).view(-1)


def evaluate(model: Policy, tasks: Countdown, config: Config, device: torch.device) -> dict[str, list[int]]:
    """Per held-out problem: ``correct``, right answers among ``eval_samples`` samples at the run's temperature,
    and ``greedy``, 1 if the argmax answer is right. The sampling generator is seeded from the run's seed, so
    every arm of a seed is scored on the same problems with the same random draws."""
    generator = torch.Generator(device=device).manual_seed(config.seed + 4)
    n = config.eval_samples
    problems = [p for p in tasks.held_out for _ in range(n)]
    correct = torch.cat(
        [
            rewards(chunk, *sample(model, chunk, config.temperature, generator, device))
            for chunk in (problems[i : i + 4096] for i in range(0, len(problems), 4096))
        ]
    )
    greedy = rewards(tasks.held_out, *sample(model, tasks.held_out, 0.0, generator, device))
    return {"correct": correct.view(-1, n).sum(1).long().tolist(), "greedy": greedy.long().tolist()}


def train(
    config: Config,
    arm: Arm,
    initial_state: dict[str, torch.Tensor],
    tasks: Countdown,
    on_step: Callable[[], None] = lambda: None,
) -> dict:
    """GRPO for ``config.steps`` steps from the warm-started weights, then the held-out evaluation.

    Each step: ``group_size`` responses to each of ``prompts_per_step`` prompts (the same prompts, in the same
    order, for every arm of a seed), 0/1 rewards, ``epochs_per_step`` Adam steps on the clipped objective with
    the arm's entropy term, then the entropy of the step's rollouts (measured before the update) goes to the
    arm's ``update``. Returns the per-step log (entropy, coefficient α, mean reward) and ``evaluate``'s counts."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = Policy(config).to(device)
    model.load_state_dict(initial_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    prompts = torch.Generator().manual_seed(config.seed + 2)
    generator = torch.Generator(device=device).manual_seed(config.seed + 3)
    source = coefficient_source(arm, config)
    log: dict[str, list] = {"entropy": [], "coefficient": [], "reward": []}
    for _ in range(config.steps):
        problems = [p for p in tasks.sample(config.prompts_per_step, prompts) for _ in range(config.group_size)]
        tokens, response_mask = sample(model, problems, config.temperature, generator, device)
        step_rewards = rewards(problems, tokens, response_mask).to(device)
        advantages = group_advantages(step_rewards, config.group_size)
        acc = aer.group_accuracy(step_rewards, group_size=config.group_size)
        coefficients = source.coefficients(acc, group_size=config.group_size)
        log["coefficient"].append(source.coefficient)
        old_logp = None
        for _ in range(config.epochs_per_step):
            loss, logp, entropy, mask = grpo_loss(
                model, tokens, response_mask, old_logp, advantages, coefficients, config
            )
            if old_logp is None:  # the rollout policy: the ratio's denominator, and the entropy the arm is fed
                old_logp = logp.detach()
                entropy_sum, token_count = aer.entropy_stats(entropy.detach(), mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        source.update(entropy_sum, token_count)
        log["entropy"].append(float(entropy_sum) / float(token_count))
        log["reward"].append(step_rewards.mean().item())
        on_step()
    log["target_entropy"] = getattr(source, "target_entropy", None)
    return log | evaluate(model, tasks, config, device)


def evaluate_warm_start(config: Config, initial_state: dict[str, torch.Tensor], tasks: Countdown) -> dict:
    """``evaluate`` of the warm-started policy itself."""
    device = torch.device(config.device)
    model = Policy(config).to(device)
    model.load_state_dict(initial_state)
    return evaluate(model, tasks, config, device)
