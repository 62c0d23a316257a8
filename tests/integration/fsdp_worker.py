"""One clipped policy update on a fixed batch, on one process or sharded with FSDP2 over several
(gloo, CPU). Used by test_fsdp.py through ``torch.multiprocessing.spawn``."""

from __future__ import annotations

import os

import torch

from waltzlit.agents.agent import Agent
from waltzlit.agents.loading import load_causal_lm, load_tokenizer
from waltzlit.agents.messages import conversation_messages
from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
from waltzlit.algorithms.advantages import AdvantageInputs
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS
from waltzlit.config import AgentConfig, AlgorithmConfig
from waltzlit.data.builtin import builtin_prompts
from waltzlit.rollout.samples import collate_generations
from waltzlit.types import Generation

ROWS = 8


def fixed_batch(agent: Agent):
    """8 (context, response) pairs with fixed random responses and rewards; identical everywhere."""
    generator = torch.Generator().manual_seed(0)
    turns = []
    for i, record in enumerate(builtin_prompts()[:ROWS]):
        context = agent.encode(conversation_messages("", record.prompt))
        length = 3 + i % 4
        response = torch.randint(10, 500, (length,), generator=generator)
        turns.append(Generation(context, response, None, "", False))
    rewards = [float(i % 2) for i in range(ROWS)]
    return collate_generations(turns, rewards, list(range(ROWS)), agent.tokenizer.pad_token_id)


def run(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny", lr=1e-2)
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tokenizer)  # seeded: the same weights on every rank
    agent = Agent("conversation", model, tokenizer, "", reference=None)
    batch = fixed_batch(agent)
    batch.old_logprobs = agent.policy_logprobs(batch)[0].detach()
    # Advantages of the whole batch (REINFORCE++ whitening is over the agent's full batch).
    advantages = ADVANTAGE_ESTIMATORS["reinforce_plus_plus"](
        AdvantageInputs(batch.rewards, torch.zeros_like(batch.response_mask), batch.response_mask, 0.0, batch.group_ids)
    ).advantages
    rows = torch.arange(rank, ROWS, world)
    local = batch.select(rows)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        from waltzlit.training.sharding import shard_agent_models

        shard_agent_models([model], init_device_mesh("cpu", (world,)))
    from waltzlit.training.update import policy_update

    # Plain SGD: the weight change is the gradient itself, so the comparison checks gradients exactly
    # (Adam's normalisation would turn float noise in near-zero gradients into full-size steps).
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    params = list(model.parameters())
    stats = policy_update(
        agent, local, advantages[rows], torch.zeros_like(local.response_mask), AlgorithmConfig(micro_batch_size=2),
        optimizer, lambda loss: loss.backward(), lambda: 0.0 * float(torch.nn.utils.clip_grad_norm_(params, 1e9)),
    )
    weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()}
    losses = torch.tensor([stats.loss])
    if world > 1:
        torch.distributed.all_reduce(losses)
        losses /= world
    if rank == 0:
        torch.save({"weights": weights, "loss": float(losses)}, out)
    if world > 1:
        torch.distributed.destroy_process_group()


def run_mixed(rank: int, world: int, port: int, out: str) -> None:
    """One AdamW step at the paper's lr (5e-7) under FSDP2 with the bf16-mixed policy: records the
    dtype layers compute in, the dtype of the sharded masters, and the share of master weights
    that moved."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    from waltzlit.training.sharding import mixed_precision_policy, shard_agent_models
    from waltzlit.training.update import policy_update

    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny")
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tokenizer)
    agent = Agent("conversation", model, tokenizer, "", reference=None)
    batch = fixed_batch(agent)
    batch.old_logprobs = agent.policy_logprobs(batch)[0].detach()
    shard_agent_models([model], init_device_mesh("cpu", (world,)), mp_policy=mixed_precision_policy("bf16-mixed"))
    seen = {}
    projection = model.model.layers[0].self_attn.q_proj
    projection.register_forward_hook(lambda m, i, o: seen.update(weight=str(m.weight.dtype), output=str(o.dtype)))
    before = {n: p.to_local().detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-7)
    rows = torch.arange(rank, ROWS, world)
    local = batch.select(rows)
    advantages = torch.linspace(-1, 1, ROWS)[rows, None].expand_as(local.response_mask).contiguous()
    params = list(model.parameters())
    policy_update(agent, local, advantages, torch.zeros_like(local.response_mask), AlgorithmConfig(micro_batch_size=2),
                  optimizer, lambda loss: loss.backward(), lambda: float(torch.nn.utils.clip_grad_norm_(params, 1e9)))
    # weights that received a gradient: all but the embedding rows of tokens absent from the batch
    moved = total = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        moved += int((p.to_local().detach() != before[name]).sum())
        total += before[name].numel()
    counts = torch.tensor([moved, total])
    torch.distributed.all_reduce(counts)
    if rank == 0:
        master = next(model.parameters())
        torch.save({"compute": seen, "master_dtype": str(master.dtype), "sharded": type(master).__name__,
                    "moved_share": float(counts[0] / counts[1])}, out)
    torch.distributed.destroy_process_group()
