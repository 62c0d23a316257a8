"""The update loop: global loss normalisation (micro-batch and device invariance), KL in the loss,
entropy bonus, the PPO epoch / mini-batch schedule, and the critic's loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.toy_policy import BigramAgent, FixedAgent, GradCapture, toy_batch, toy_critic
from waltzlit.algorithms.policy_losses import AGGREGATIONS, loss_denominator
from waltzlit.config import AlgorithmConfig
from waltzlit.training.critic_update import value_update
from waltzlit.training.update import _micro_loss, minibatch_schedule, policy_update, prepare_batch


def _gradients(agent, batch, algo, micro_batch_size, rows=None, **kwargs):
    """Gradient of the one optimizer step that ``policy_update`` takes on ``batch`` (or its ``rows``)."""
    algo = dataclasses.replace(algo, micro_batch_size=micro_batch_size)
    prepared, advantages, kl = prepare_batch(agent, batch, algo)
    if rows is not None:
        prepared, advantages, kl = prepared.select(rows), advantages[rows], kl[rows]
    capture = GradCapture(agent.trainable_parameters())
    policy_update(agent, prepared, advantages, kl, algo, capture, lambda loss: loss.backward(), lambda: 0.0,
                  torch.Generator().manual_seed(0), **kwargs)
    assert len(capture.steps) == 1
    return capture.steps[0][0]


# KL in the loss, an entropy bonus and dual clipping: every term of the loss is normalised.
FULL_LOSS = AlgorithmConfig(kl_placement="loss", kl_estimator="k2", kl_coef=0.1, entropy_coef=0.01, dual_clip=3.0)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_eight_micro_batches_of_one_give_the_gradient_of_one_batch_of_eight(mode):
    algo = dataclasses.replace(FULL_LOSS, loss_aggregation=mode)
    batch, agent = toy_batch(rows=8), BigramAgent()
    # Rows have 1..5 response tokens, so a local (per micro-batch) mean would weigh them wrongly.
    assert len(set(batch.response_mask.sum(1).tolist())) > 2
    full = _gradients(agent, batch, algo, micro_batch_size=8, max_response_tokens=6)
    accumulated = _gradients(agent, batch, algo, micro_batch_size=1, max_response_tokens=6)
    assert full.abs().sum() > 0
    torch.testing.assert_close(accumulated, full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_two_ranks_average_to_the_single_device_gradient(mode):
    # Rank r holds rows 4r..4r+3; the strategy averages the two ranks' gradients. reduce_sum
    # returns the count over both halves (an all-reduce), and the loss is scaled by world_size 2.
    algo = dataclasses.replace(FULL_LOSS, loss_aggregation=mode)
    batch, agent = toy_batch(rows=8), BigramAgent()
    single = _gradients(agent, batch, algo, micro_batch_size=3, max_response_tokens=6)
    halves = [torch.arange(0, 4), torch.arange(4, 8)]
    counts = [loss_denominator(batch.response_mask[h], mode, 6) for h in halves]
    total = counts[0] + counts[1]
    ranks = [
        _gradients(agent, batch, algo, micro_batch_size=3, rows=h, max_response_tokens=6,
                   reduce_sum=lambda local: total, world_size=2)
        for h in halves
    ]
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, single, rtol=1e-10, atol=1e-12)


def test_kl_in_the_loss_and_entropy_bonus_hand_computed():
    # One row, two tokens; pi = pi_old (ratio 1) and A = 0, so the policy term is 0 with 0 gradient.
    # delta = logp - ref = [-1 - (-1.5), -2 - (-1)] = [0.5, -1.0]; k2 = delta^2 / 2 = [0.125, 0.5]
    # KL term = beta * mean_tokens(k2) = 0.1 * 0.625 / 2 = 0.03125
    # entropy term = -0.01 * mean_tokens([1, 3]) = -0.02  -> loss = 0.01125
    # d loss / d logp = beta * delta / 2 = [0.025, -0.05]; d loss / d entropy = -0.01 / 2 = -0.005
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    agent = FixedAgent(logp, torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    batch = toy_batch(rows=1, width=2)
    batch.response_mask = torch.ones(1, 2)
    batch.old_logprobs, batch.ref_logprobs = logp.clone(), torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    algo = AlgorithmConfig(kl_placement="loss", kl_estimator="k2", kl_coef=0.1, entropy_coef=0.01)
    loss, diagnostics = _micro_loss(agent, batch, torch.zeros(1, 2), algo, torch.tensor(1.0))
    assert loss.item() == pytest.approx(0.01125)
    assert diagnostics["kl_loss"] == pytest.approx(0.3125)  # mean k2, before beta
    loss.backward()
    torch.testing.assert_close(agent.logprobs.grad, torch.tensor([[0.025, -0.05]], dtype=torch.float64))
    torch.testing.assert_close(agent.entropy.grad, torch.tensor([[-0.005, -0.005]], dtype=torch.float64))


def test_k3_in_the_loss_has_the_k3_gradient():
    # k3 = exp(-delta) - 1 + delta: [0.106531, 0.718282]; d k3 / d delta = 1 - exp(-delta)
    #   = [1 - 0.606531, 1 - 2.718282] = [0.393469, -1.718282]; times beta / 2 tokens = 0.05
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    agent = FixedAgent(logp, torch.zeros(1, 2, dtype=torch.float64))
    batch = toy_batch(rows=1, width=2)
    batch.response_mask = torch.ones(1, 2)
    batch.old_logprobs, batch.ref_logprobs = logp.clone(), torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    algo = AlgorithmConfig(kl_placement="loss", kl_estimator="k3", kl_coef=0.1)
    loss, _ = _micro_loss(agent, batch, torch.zeros(1, 2), algo, torch.tensor(1.0))
    assert loss.item() == pytest.approx(0.1 * (0.106531 + 0.718282) / 2, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(agent.logprobs.grad, torch.tensor([[0.0196735, -0.0859141]], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_kl_placement_loss_keeps_the_kl_out_of_the_advantages():
    batch, agent = toy_batch(rows=6), BigramAgent()
    in_loss = prepare_batch(agent, toy_batch(rows=6), AlgorithmConfig(kl_placement="loss", kl_estimator="k2"))
    no_kl = prepare_batch(agent, toy_batch(rows=6), AlgorithmConfig(kl_coef=0.0))
    in_reward = prepare_batch(agent, batch, AlgorithmConfig())
    torch.testing.assert_close(in_loss[1], no_kl[1])
    assert in_loss[0].ref_logprobs is not None  # kept for the loss
    assert not torch.allclose(in_reward[1], no_kl[1])  # k1 in the reward shapes the return


def test_schedule_epochs_mini_batches_and_micro_batches():
    # 8 samples, 2 epochs, mini-batches of 3, micro-batches of 2:
    # per epoch mini-batches of 3, 3, 2 rows -> micro-batches [2, 1], [2, 1], [2]; 6 optimizer steps
    algo = AlgorithmConfig(update_epochs=2, mini_batch_size=3, micro_batch_size=2)
    steps = list(minibatch_schedule(8, algo, torch.Generator().manual_seed(0)))
    assert [[len(m) for m in step] for step in steps] == [[2, 1], [2, 1], [2]] * 2
    for epoch in (steps[:3], steps[3:]):
        assert sorted(torch.cat([torch.cat(step) for step in epoch]).tolist()) == list(range(8))
    # policy_update takes exactly one optimizer step per mini-batch
    batch, agent = toy_batch(rows=8), BigramAgent()
    prepared, advantages, kl = prepare_batch(agent, batch, algo)
    capture = GradCapture(agent.trainable_parameters())
    stats = policy_update(agent, prepared, advantages, kl, algo, capture, lambda loss: loss.backward(), lambda: 0.0)
    assert len(capture.steps) == 6 and stats.extra["optimizer_steps"] == 6.0


def test_default_schedule_is_one_step_per_rollout_batch():
    steps = list(minibatch_schedule(5, AlgorithmConfig(micro_batch_size=2)))
    assert [[len(m) for m in step] for step in steps] == [[2, 2, 1]]


def _critic_gradients(micro_batch_size):
    torch.manual_seed(0)
    batch, agent, critic = toy_batch(rows=8), BigramAgent(), toy_critic()
    algo = AlgorithmConfig(advantage_estimator="gae", micro_batch_size=micro_batch_size, value_clip=0.05)
    prepared, _, _ = prepare_batch(agent, batch, algo, critic)
    with torch.no_grad():  # move the critic away from V_old so that some tokens are clipped
        critic.value_head.bias += 0.1
    capture = GradCapture(critic.trainable_parameters())
    stats = value_update(critic, prepared, algo, capture, lambda loss: loss.backward(), lambda: 0.0)
    return capture.steps[0], stats


def test_critic_micro_batches_of_one_match_one_batch_of_eight():
    full, stats = _critic_gradients(8)
    accumulated, _ = _critic_gradients(1)
    assert 0 < stats["value_clip_fraction"] < 1
    for a, b in zip(accumulated, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_gae_without_a_critic_is_refused():
    with pytest.raises(ValueError, match="needs a critic"):
        prepare_batch(BigramAgent(), toy_batch(), AlgorithmConfig(advantage_estimator="gae"))


def test_kl_in_the_reward_with_one_micro_batch_reads_pi_old_off_the_update_forward(monkeypatch):
    # REINFORCE++ with k1 folded into the reward needs pi_old before the advantages. With the whole
    # batch in one micro-batch, the loss forward (weights not yet stepped) is pi_old: the update
    # then estimates the advantages from it and takes the same step as with a separate pi_old forward.
    from waltzlit.training import update

    algo = AlgorithmConfig(kl_coef=0.1, kl_placement="reward", kl_estimator="k1", micro_batch_size=8)
    agent = BigramAgent()
    monkeypatch.setattr(update, "_dropout_free", lambda agent: True)  # the bigram table has no dropout
    calls = []
    original = agent.policy_logprobs
    agent.policy_logprobs = lambda *a, **k: calls.append(1) or original(*a, **k)
    prepared, advantages, _ = prepare_batch(agent, toy_batch(rows=8), algo)
    assert advantages is None and prepared.old_logprobs is None and not calls  # deferred: no pi_old forward
    deferred = _gradients(agent, toy_batch(rows=8), algo, micro_batch_size=8, max_response_tokens=6)
    assert len(calls) == 1  # one forward in all: the loss's
    original_rule = update.old_logprobs_from_update
    monkeypatch.setattr(update, "old_logprobs_from_update", lambda *args, **kwargs: False)
    separate = _gradients(agent, toy_batch(rows=8), algo, micro_batch_size=8, max_response_tokens=6)
    assert len(calls) == 3  # pi_old's own forward, then the loss's
    assert separate.abs().sum() > 0
    torch.testing.assert_close(deferred, separate, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(update, "old_logprobs_from_update", original_rule)
    # two micro-batches: the advantages cannot wait for a forward that covers half the batch
    algo = dataclasses.replace(algo, micro_batch_size=4)
    assert prepare_batch(agent, toy_batch(rows=8), algo)[1] is not None


@pytest.mark.parametrize("trainee", ["policy", "critic"])
def test_a_non_finite_loss_on_another_rank_skips_the_step_here_too(monkeypatch, trainee):
    # Rank 0's loss is finite, another rank's is not: max_over_ranks reports 1 for the
    # non-finite check, and this rank must drop its step too (a lone skip stalls the collectives).
    # The policy and the critic share the loop (update.optimizer_steps), so both must skip.
    import waltzlit.training.update as update

    calls = []

    def other_rank_non_finite(value: int) -> int:
        calls.append(value)
        return 1

    torch.manual_seed(0)
    batch, agent, critic = toy_batch(rows=8), BigramAgent(), toy_critic()
    algo = AlgorithmConfig(advantage_estimator="gae", micro_batch_size=8)
    prepared, advantages, kl = prepare_batch(agent, batch, algo, critic)
    monkeypatch.setattr(update, "max_over_ranks", other_rank_non_finite)
    if trainee == "policy":
        capture = GradCapture(agent.trainable_parameters())
        stats = policy_update(agent, prepared, advantages, kl, algo, capture, lambda loss: loss.backward(), lambda: 0.0)
        skipped, steps = stats.skipped_nonfinite, stats.extra["optimizer_steps"]
    else:
        capture = GradCapture(critic.trainable_parameters())
        stats = value_update(critic, prepared, algo, capture, lambda loss: loss.backward(), lambda: 0.0)
        skipped, steps = stats["critic_skipped_nonfinite"] == 1.0, float(len(capture.steps))
    assert calls and calls[-1] == 0  # this rank's own loss was finite
    assert skipped and steps == 0 and capture.steps == []
