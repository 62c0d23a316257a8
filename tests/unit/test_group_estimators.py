"""GRPO, Dr.GRPO, RLOO and REINFORCE++-baseline: hand-computed numbers, a KL in the reward, and
equivalence of the vectorised estimators with plain per-group loops on random batches."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from waltzlit.algorithms.advantages import GRPO_STD_EPS, AdvantageInputs
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS


def run(name, rewards, kl, mask, kl_coef=0.0, group_ids=None):
    rewards = torch.tensor(rewards, dtype=torch.float32)
    inputs = AdvantageInputs(
        rewards=rewards,
        kl=torch.tensor(kl, dtype=torch.float32),
        response_mask=torch.tensor(mask),
        kl_coef=kl_coef,
        group_ids=torch.arange(len(rewards)) if group_ids is None else torch.tensor(group_ids),
    )
    return ADVANTAGE_ESTIMATORS[name](inputs)


def test_dr_grpo_subtracts_the_group_mean_only():
    # group 0: R [1, 0, 0.5], mean 0.5 -> A = [0.5, -0.5, 0]; group 1 is a singleton -> 2 - 2 = 0
    out = run("dr_grpo", [1.0, 0.0, 0.5, 2.0], [[0.0, 0.0]] * 4, [[1, 1], [1, 0], [1, 1], [1, 1]],
              group_ids=[0, 0, 0, 1])
    torch.testing.assert_close(out.advantages, torch.tensor([[0.5, 0.5], [-0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, 0.5], [2.0, 2.0]]))


# One group of two: R = [1, 0], kl = [[0.2, 0.4], [0.1, pad 9]], beta = 0.5
# scores s = R - beta * sum of valid kl = [1 - 0.5 * 0.6, 0 - 0.5 * 0.1] = [0.7, -0.05]
KL_CASE = {"rewards": [1.0, 0.0], "kl": [[0.2, 0.4], [0.1, 9.0]], "mask": [[1, 1], [1, 0]], "kl_coef": 0.5,
           "group_ids": [0, 0]}


def test_grpo_with_the_kl_in_the_reward_uses_the_sequence_sum():
    # mean 0.325, centered [0.375, -0.375], unbiased std = sqrt(2 * 0.375^2 / 1) = 0.530330
    # A = +-0.375 / (0.530330 + 1e-6) = +-0.707106
    out = run("grpo", **KL_CASE)
    a = 0.375 / (0.375 * math.sqrt(2) + GRPO_STD_EPS)
    torch.testing.assert_close(out.advantages, torch.tensor([[a, a], [-a, 0.0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[0.7, 0.7], [-0.05, 0.0]]))


def test_dr_grpo_and_rloo_with_the_kl_in_the_reward():
    # Dr.GRPO: s - mean = [0.375, -0.375]
    # RLOO: s_0 - s_1 = 0.7 + 0.05 = 0.75 and s_1 - s_0 = -0.75 (each minus the other's score)
    torch.testing.assert_close(run("dr_grpo", **KL_CASE).advantages, torch.tensor([[0.375, 0.375], [-0.375, 0.0]]))
    torch.testing.assert_close(run("rloo", **KL_CASE).advantages, torch.tensor([[0.75, 0.75], [-0.75, 0.0]]))


def test_rloo_equals_verl_form_n_over_n_minus_1_times_centered():
    # verl: A = n / (n - 1) * (s - mean). group R [1, 0, 0.5]: 3/2 * [0.5, -0.5, 0] = [0.75, -0.75, 0]
    out = run("rloo", [1.0, 0.0, 0.5], [[0.0]] * 3, [[1]] * 3, group_ids=[4, 4, 4])
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([0.75, -0.75, 0.0]))


def _random_case(seed: int, batch: int = 12, width: int = 5):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, width, generator=g) > 0.3).long()
    mask[0] = 0  # an empty response
    return AdvantageInputs(
        rewards=torch.randn(batch, generator=g),
        kl=torch.rand(batch, width, generator=g),
        response_mask=mask,
        kl_coef=0.1,
        group_ids=torch.randint(0, 4, (batch,), generator=g) * 10,  # ids need not be 0..G-1
    )


def _loop_scores(inputs):
    return [
        float(inputs.rewards[i]) - inputs.kl_coef * sum(float(inputs.kl[i, t]) for t in range(inputs.kl.shape[1])
                                                         if inputs.response_mask[i, t])
        for i in range(len(inputs.rewards))
    ]


def _loop_group_advantage(name, inputs):
    scores, ids = _loop_scores(inputs), inputs.group_ids.tolist()
    out = []
    for i, s in enumerate(scores):
        group = [scores[j] for j in range(len(ids)) if ids[j] == ids[i]]
        n, mean = len(group), sum(group) / len(group)
        if name == "grpo":
            out.append((s - mean) / (statistics.stdev(group) + GRPO_STD_EPS) if n > 1 else 0.0)
        elif name == "dr_grpo":
            out.append(s - mean)
        else:  # rloo
            out.append(s - (sum(group) - s) / (n - 1) if n > 1 else 0.0)
    return out


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_group_estimators_match_a_loop(name, seed):
    inputs = _random_case(seed)
    expected = _loop_group_advantage(name, inputs)
    out = ADVANTAGE_ESTIMATORS[name](inputs)
    for i in range(len(expected)):
        for t in range(inputs.kl.shape[1]):
            want = expected[i] if inputs.response_mask[i, t] else 0.0
            assert out.advantages[i, t].item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_reinforce_pp_baseline_matches_a_loop(seed):
    # OpenRLHF's reinforce_baseline: R - group mean of R, then G_t = R' - beta * sum_{s>=t} kl_s over
    # valid tokens, then (G - mean) / sqrt(var + 1e-8) over all valid tokens (population variance).
    inputs = _random_case(seed)
    rewards, ids, mask, kl = inputs.rewards.tolist(), inputs.group_ids.tolist(), inputs.response_mask, inputs.kl
    B, T = mask.shape
    returns = {}
    for i in range(B):
        group = [rewards[j] for j in range(B) if ids[j] == ids[i]]
        baselined = rewards[i] - sum(group) / len(group)
        for t in range(T):
            if mask[i, t]:
                returns[i, t] = baselined - inputs.kl_coef * sum(float(kl[i, s]) for s in range(t, T) if mask[i, s])
    values = list(returns.values())
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    out = ADVANTAGE_ESTIMATORS["reinforce_plus_plus_baseline"](inputs)
    for i in range(B):
        for t in range(T):
            want = (returns[i, t] - mean) / math.sqrt(var + 1e-8) if (i, t) in returns else 0.0
            assert out.advantages[i, t].item() == pytest.approx(want, abs=1e-4)
            assert out.returns[i, t].item() == pytest.approx(returns.get((i, t), 0.0), abs=1e-5)
