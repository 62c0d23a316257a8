"""A token-mean policy update and a critic update, on one process or sharded with FSDP2 over
several (gloo, CPU), with loss denominators summed over ranks. Used by test_global_normalisation.py."""

from __future__ import annotations

import os

import torch

from tests.integration.fsdp_worker import ROWS, fixed_batch
from waltzlit.agents.agent import Agent
from waltzlit.agents.critic import build_critic, shard_critic
from waltzlit.agents.loading import load_causal_lm, load_tokenizer
from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
from waltzlit.config import AgentConfig, AlgorithmConfig
from waltzlit.training.critic_update import value_update
from waltzlit.training.update import policy_update


def _full(model) -> dict[str, torch.Tensor]:
    full = {n: p.full_tensor() if hasattr(p, "full_tensor") else p for n, p in model.named_parameters()}
    return {n: p.detach().clone() for n, p in full.items()}


def run(rank: int, world: int, port: int, out: str, reduce_over_ranks: bool = True) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny")
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tokenizer)  # seeded: the same weights on every rank
    critic = build_critic(model)
    agent = Agent("conversation", model, tokenizer, "", reference=None)
    batch = fixed_batch(agent)  # responses of 3..6 tokens: the ranks hold 16 and 20 tokens
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        batch.old_logprobs = agent.policy_logprobs(batch)[0]
        batch.old_values = critic.values(batch)
    advantages = torch.randn(batch.response_mask.shape, generator=generator) * batch.response_mask
    noise = torch.randn(batch.response_mask.shape, generator=generator)
    batch.returns = (batch.old_values + noise) * batch.response_mask
    rows = torch.arange(rank, ROWS, world)
    local = batch.select(rows)
    reduce_sum = None
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        from waltzlit.training.sharding import shard_agent_models

        mesh = init_device_mesh("cpu", (world,))
        shard_agent_models([model], mesh)
        shard_critic(critic, mesh)

        def reduce_sum(count: torch.Tensor) -> torch.Tensor:
            count = count.clone()
            torch.distributed.all_reduce(count)
            return count

    scale = {"reduce_sum": reduce_sum, "world_size": world} if reduce_over_ranks else {}
    algo = AlgorithmConfig(loss_aggregation="token-mean", micro_batch_size=2, kl_coef=0.0, advantage_estimator="gae")
    # Plain SGD: the weight change is the gradient itself.
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    policy_update(agent, local, advantages[rows], torch.zeros_like(local.response_mask), algo, optimizer,
                  lambda loss: loss.backward(), lambda: 0.0, **scale)
    critic_optimizer = torch.optim.SGD(critic.parameters(), lr=1.0)
    value_update(critic, local, algo, critic_optimizer, lambda loss: loss.backward(), lambda: 0.0, **scale)
    result = {"policy": _full(model), "critic": _full(critic)}
    if rank == 0:
        torch.save(result, out)
    if world > 1:
        torch.distributed.destroy_process_group()
