"""Two gloo ranks run one critic update; rank 1's loss is non-finite. Used by test_critic_skip.py."""

from __future__ import annotations

import json
import os

import torch


def run(rank: int, world: int, port: int, out: str) -> None:
    from tests.toy_policy import BigramAgent, GradCapture, toy_batch, toy_critic
    from waltzlit.config import AlgorithmConfig
    from waltzlit.training.critic_update import value_update
    from waltzlit.training.update import prepare_batch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        batch, agent, critic = toy_batch(rows=8), BigramAgent(), toy_critic()
        algo = AlgorithmConfig(advantage_estimator="gae", micro_batch_size=4)
        prepared, _, _ = prepare_batch(agent, batch, algo, critic)
        if rank == 1:
            prepared.returns = prepared.returns.clone()
            prepared.returns[0, 0] = float("nan")  # only this rank's loss is non-finite

        def reduce_sum(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            torch.distributed.all_reduce(t)
            return t

        capture = GradCapture(critic.trainable_parameters())
        stats = value_update(critic, prepared, algo, capture, lambda loss: loss.backward(), lambda: 0.0,
                             reduce_sum=reduce_sum, world_size=world)
        torch.distributed.barrier()  # a rank that stepped alone would hang in its next collective
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"steps": len(capture.steps), "skipped": stats["critic_skipped_nonfinite"]}, f)
    finally:
        torch.distributed.destroy_process_group()
