"""Data parallelism: every gloo rank, holding a shard of each batch, ends with exactly the single-process state."""

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from gloo_workers import gloo_group, run_workers

from aer import AERConfig, AERController, entropy_stats, group_accuracy

pytestmark = pytest.mark.distributed

CONFIG = AERConfig(
    update="proportional",
    anchor_steps=2,
    target_ratio=1.0,
    coef_init=0.05,
    coef_step=0.1,
    coef_max=1.0,
    weighting="signed",
)
PROMPTS, GROUP, TOKENS, STEPS = 7, 4, 6, 8
NAN_STEP = 5  # a NaN entropy on one rank's shard: every rank must skip together
EMPTY_STEP = 3  # prompts 0-2 without tokens: with 3 ranks, rank 0 contributes nothing, and no rank skips
TIMEOUT_S = 120


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rewards [P*G], entropy [P*G, T] and mask [P*G, T] of one step; entropies are multiples of 1/256 so any
    summation order gives the same fp64 sums."""
    gen = torch.Generator().manual_seed(step)
    n = PROMPTS * GROUP
    rewards = torch.randint(0, 2, (n,), generator=gen).float()
    entropy = torch.randint(0, 1024, (n, TOKENS), generator=gen).float() / 256
    lengths = torch.randint(0, TOKENS + 1, (n,), generator=gen)
    mask = torch.arange(TOKENS) < lengths[:, None]
    if step == EMPTY_STEP:
        mask[: 3 * GROUP] = False
    if step == NAN_STEP:
        entropy[0, 0], mask[0, 0] = float("nan"), True
    return rewards, entropy, mask


def shard(world_size: int, rank: int) -> torch.Tensor:
    """Response indices of `rank`'s prompts (whole groups; 7 prompts do not split evenly)."""
    prompts = torch.tensor_split(torch.arange(PROMPTS), world_size)[rank]
    return (prompts[:, None] * GROUP + torch.arange(GROUP)).flatten()


def run(ctrl: AERController, responses: torch.Tensor, **update_kwargs) -> dict:
    """Train-loop skeleton: coefficients, then one update per step, on the given responses only."""
    coefs, lambdas = [], []
    for step in range(STEPS):
        rewards, entropy, mask = (t[responses] for t in batch(step))
        acc = group_accuracy(rewards, group_size=GROUP)
        lambdas.append(ctrl.coefficients(acc, group_size=GROUP).tolist())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctrl.update(*entropy_stats(entropy, mask), **update_kwargs)
        coefs.append(ctrl.coefficient)
    return {"state": ctrl.state_dict(), "coefs": coefs, "lambdas": lambdas}


def worker(rank: int, port: int, world_size: int, out_dir: str) -> None:
    with gloo_group(rank, port, world_size, timeout_s=60):
        calls = []
        all_reduce = dist.all_reduce

        def recording_all_reduce(tensor, *args, **kwargs):
            calls.append([list(tensor.shape), str(tensor.dtype), str(tensor.device)])
            return all_reduce(tensor, *args, **kwargs)

        dist.all_reduce = recording_all_reduce
        result = {"world": run(AERController(CONFIG), shard(world_size, rank)), "calls": calls}
        dist.all_reduce = all_reduce
        # A sub-group: ranks 0 and 1 reduce only over each other; the other ranks do not take part.
        subgroup = dist.new_group([0, 1])
        if rank in (0, 1):
            result["subgroup"] = run(AERController(CONFIG), shard(world_size, rank), group=subgroup)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_matches_a_single_process_on_the_concatenated_batch(world_size, tmp_path):
    run_workers(worker, world_size, world_size, str(tmp_path), timeout_s=TIMEOUT_S)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world_size)]

    single = run(AERController(CONFIG), torch.arange(PROMPTS * GROUP))
    assert single["state"]["skipped_updates"] == 1 and single["state"]["initial_entropy"] is not None
    assert len(set(single["coefs"])) > 3  # the trajectory moves
    for rank, result in enumerate(results):
        world = result["world"]
        assert world["state"] == single["state"], f"rank {rank}"
        assert world["coefs"] == single["coefs"], f"rank {rank}"
        # One all-reduce per update, of a 2-element fp64 CPU tensor under gloo.
        assert result["calls"] == [[[2], "torch.float64", "cpu"]] * STEPS
    for step in range(STEPS):  # the ranks' coefficients, concatenated, are the single-process ones
        assert [c for r in results for c in r["world"]["lambdas"][step]] == single["lambdas"][step]

    pair = run(AERController(CONFIG), torch.cat([shard(world_size, 0), shard(world_size, 1)]))
    for rank in (0, 1):
        assert results[rank]["subgroup"]["state"] == pair["state"]
        assert results[rank]["subgroup"]["coefs"] == pair["coefs"]
    if world_size == 3:
        assert pair["coefs"] != single["coefs"]  # the sub-group really reduced over fewer ranks
