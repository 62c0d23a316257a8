"""pi_old from the update's own forward: used only where exact, and then the same update."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tiny_agents import tiny_agent
from tests.toy_policy import BigramAgent, GradCapture
from waltzlit.config import AlgorithmConfig, LoRAConfig, SamplingConfig
from waltzlit.rollout.samples import collate_generations
from waltzlit.training import update
from waltzlit.training.update import old_logprobs_from_update, policy_update, prepare_batch

# GRPO as in conf/single_agent_tiny.yaml: group baseline, k3 KL in the loss, one on-policy step
GRPO = AlgorithmConfig(advantage_estimator="grpo", samples_per_prompt=4, kl_placement="loss", kl_estimator="k3",
                       loss_aggregation="token-mean", micro_batch_size=3)


@pytest.fixture(scope="module")
def agent():
    agent = tiny_agent("conversation")
    agent.reference = tiny_agent("conversation", seed=1).model  # a reference that differs: KL > 0
    return agent


def _batch(agent):
    torch.manual_seed(0)
    contexts = [agent.encode([{"role": "user", "content": f"question number {i}"}]) for i in range(8)]
    turns = agent.generate(contexts, SamplingConfig(max_new_tokens=6), batch_size=8, with_logprobs=False)
    return collate_generations(turns, [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0], [i // 4 for i in range(8)],
                               agent.tokenizer.pad_token_id)


def test_exact_only_for_one_on_policy_step_without_dropout(agent):
    assert old_logprobs_from_update(agent, 8, GRPO)
    for change in ({"kl_placement": "reward", "kl_estimator": "k1"}, {"update_epochs": 2}, {"mini_batch_size": 4},
                   {"recompute_old_logprobs": False}, {"advantage_estimator": "gae", "samples_per_prompt": 1}):
        assert not old_logprobs_from_update(agent, 8, dataclasses.replace(GRPO, **change)), change
    assert old_logprobs_from_update(agent, 8, dataclasses.replace(GRPO, mini_batch_size=8))
    assert not old_logprobs_from_update(BigramAgent(), 8, GRPO), "agents without a model keep the forward pass"
    dropout = tiny_agent("conversation")
    dropout.model.config.attention_dropout = 0.1
    assert not old_logprobs_from_update(dropout, 8, GRPO)
    from waltzlit.agents.loading import add_lora

    lora = tiny_agent("conversation")
    lora.model = add_lora(lora.model, LoRAConfig(r=2, dropout=0.1))
    assert not old_logprobs_from_update(lora, 8, GRPO)


def test_same_gradient_and_logged_kl_as_the_extra_forward_pass(agent, monkeypatch):
    def run(shortcut: bool):
        monkeypatch.setattr(update, "old_logprobs_from_update", lambda *args: shortcut)
        batch, advantages, kl = prepare_batch(agent, _batch(agent), GRPO)
        assert (batch.old_logprobs is None) == shortcut
        capture = GradCapture(agent.trainable_parameters())
        stats = policy_update(agent, batch, advantages, kl, GRPO, capture, lambda loss: loss.backward(), lambda: 0.0)
        return capture.steps[0], stats, batch

    (grads_fast, stats_fast, batch_fast), (grads_ref, stats_ref, batch_ref) = run(True), run(False)
    for fast, ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(batch_fast.old_logprobs, batch_ref.old_logprobs, rtol=1e-5, atol=1e-6)
    assert stats_fast.kl == pytest.approx(stats_ref.kl, rel=1e-4) and stats_ref.kl > 0
    assert stats_fast.loss == pytest.approx(stats_ref.loss, rel=1e-4, abs=1e-7)
    assert stats_fast.clip_fraction == 0.0
