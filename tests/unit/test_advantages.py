"""Advantage estimators: REINFORCE++ (eq. 4), its baseline variant, GRPO and RLOO."""

import math

import pytest
import torch

from waltzlit.algorithms.advantages import AdvantageInputs, AdvantageOutput
from waltzlit.algorithms.masked_ops import masked_whiten
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS

ALL = ("reinforce_plus_plus", "reinforce_plus_plus_baseline", "grpo", "dr_grpo", "rloo")


def make(rewards, kl, mask, kl_coef=0.0, group_ids=None) -> AdvantageInputs:
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return AdvantageInputs(
        rewards=rewards,
        kl=torch.tensor(kl, dtype=torch.float32),
        response_mask=torch.tensor(mask),
        kl_coef=kl_coef,
        group_ids=torch.arange(len(rewards)) if group_ids is None else torch.tensor(group_ids),
    )


def run(name: str, inputs: AdvantageInputs) -> AdvantageOutput:
    return ADVANTAGE_ESTIMATORS[name](inputs)


# Row 0: R = 1, kl [0.2, 0.1, pad 99], mask [1, 1, 0]
# Row 1: R = 0, kl [0.3, 0.0, 0.1],     mask [1, 1, 1]
RPP = make([1.0, 0.0], [[0.2, 0.1, 99.0], [0.3, 0.0, 0.1]], [[1, 1, 0], [1, 1, 1]], kl_coef=0.01)


def test_reinforce_pp_returns_hand_computed():
    # A_{x,i} = R - beta * sum_{t>=i} kl_t
    # row 0: [1 - 0.01*(0.2+0.1), 1 - 0.01*0.1, pad] = [0.997, 0.999, 0]
    # row 1: [0 - 0.01*(0.3+0+0.1), -0.01*(0+0.1), -0.01*0.1] = [-0.004, -0.001, -0.001]
    out = run("reinforce_plus_plus", RPP)
    torch.testing.assert_close(out.returns, torch.tensor([[0.997, 0.999, 0.0], [-0.004, -0.001, -0.001]]))


def test_reinforce_pp_advantages_are_globally_whitened_returns():
    # 5 valid returns: mean = (0.997 + 0.999 - 0.004 - 0.001 - 0.001) / 5 = 1.99 / 5 = 0.398
    valid = torch.tensor([0.997, 0.999, -0.004, -0.001, -0.001], dtype=torch.float64)
    mean, std = valid.mean().item(), math.sqrt(valid.var(unbiased=False).item() + 1e-8)
    assert mean == pytest.approx(0.398)
    expected = [[(0.997 - mean) / std, (0.999 - mean) / std, 0.0], [(v - mean) / std for v in (-0.004, -0.001, -0.001)]]
    out = run("reinforce_plus_plus", RPP)
    torch.testing.assert_close(out.advantages, torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_reinforce_pp_return_does_not_reset_across_masked_gap():
    # mask [1, 0, 1], kl [0.1, 5.0 (not the agent's token), 0.2], R = 1, beta = 0.1
    # r = [-0.01, 0, 1 - 0.02] -> G = [-0.01 + 0 + 0.98, pad, 0.98] = [0.97, 0, 0.98]
    # (a reset at the gap would leave G_0 = -0.01 and the outcome would never reach token 0)
    inputs = make([1.0], [[0.1, 5.0, 0.2]], [[1, 0, 1]], kl_coef=0.1)
    torch.testing.assert_close(run("reinforce_plus_plus", inputs).returns, torch.tensor([[0.97, 0.0, 0.98]]))


def test_reinforce_pp_whitens_across_the_batch_not_per_row():
    # beta = 0: G = [[1, 1], [0, 0]]; batch mean 0.5, std 0.5 -> [[1, 1], [-1, -1]]
    # (per-row whitening of constant rows would give all zeros)
    inputs = make([1.0, 0.0], [[0.0, 0.0], [0.0, 0.0]], [[1, 1], [1, 1]])
    torch.testing.assert_close(
        run("reinforce_plus_plus", inputs).advantages, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), atol=1e-6, rtol=0
    )


def test_masked_tokens_never_change_any_estimator():
    base = make([1.0, 0.0, 0.5], [[0.2, 0.1, 0.0], [0.3, 0.0, 0.1], [0.4, 0.0, 0.0]], [[1, 1, 0], [1, 0, 1], [1, 0, 0]],
                kl_coef=0.05, group_ids=[0, 0, 0])
    noisy_kl = base.kl.clone()
    noisy_kl[base.response_mask == 0] = float("nan")
    noisy = AdvantageInputs(base.rewards, noisy_kl, base.response_mask, base.kl_coef, base.group_ids)
    for name in ALL:
        a, b = run(name, base), run(name, noisy)
        torch.testing.assert_close(a.advantages, b.advantages)
        torch.testing.assert_close(a.returns, b.returns)
        assert (a.advantages[base.response_mask == 0] == 0).all()
        assert (a.returns[base.response_mask == 0] == 0).all()


def test_empty_rows_give_zeros_without_nan():
    # row 1 has an empty response; row 0 alone: G = [1, 1] constant -> whitened 0
    inputs = make([1.0, 1.0], [[0.0, 0.0], [0.0, 0.0]], [[1, 1], [0, 0]], group_ids=[0, 0])
    all_empty = make([1.0, 0.0], [[0.0, 0.0], [0.0, 0.0]], [[0, 0], [0, 0]], group_ids=[0, 0])
    for name in ALL:
        for case in (inputs, all_empty):
            out = run(name, case)
            assert torch.isfinite(out.advantages).all() and torch.isfinite(out.returns).all()
            assert (out.advantages[case.response_mask == 0] == 0).all()


def test_reinforce_pp_baseline_subtracts_group_mean():
    # groups [0, 0, 1], R [1, 0, 5] -> R - mean_g = [1 - 0.5, 0 - 0.5, 5 - 5] = [0.5, -0.5, 0]
    # one token each, beta = 0 -> G = [0.5, -0.5, 0]; mean 0, var (0.25 + 0.25 + 0) / 3 = 1/6
    # A = G * sqrt(6) = [1.224745, -1.224745, 0]
    inputs = make([1.0, 0.0, 5.0], [[0.0], [0.0], [0.0]], [[1], [1], [1]], group_ids=[0, 0, 1])
    out = run("reinforce_plus_plus_baseline", inputs)
    torch.testing.assert_close(out.returns, torch.tensor([[0.5], [-0.5], [0.0]]))
    torch.testing.assert_close(out.advantages, torch.tensor([[0.5 * math.sqrt(6)], [-0.5 * math.sqrt(6)], [0.0]]))


def test_grpo_group_normalised_with_unbiased_std():
    # group 7: R [1, 0, 0], mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3) = 0.577350
    # A = [(2/3) / 0.577350, (-1/3) / 0.577350, same] = [1.154700, -0.577350, -0.577350]
    # group 3 is a singleton -> 0. beta = 0 (KL in the loss): the kl values play no part.
    inputs = make([1.0, 0.0, 0.0, 1.0], [[0.5, 0.5]] * 4, [[1, 1], [1, 0], [1, 1], [1, 1]], kl_coef=0.0,
                  group_ids=[7, 7, 7, 3])
    out = run("grpo", inputs)
    s = math.sqrt(1 / 3) + 1e-6
    expected = torch.tensor([[2 / 3 / s] * 2, [-1 / 3 / s, 0.0], [-1 / 3 / s] * 2, [0.0, 0.0]])
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(out.returns, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))


def test_grpo_identical_rewards_give_zero():
    # R - mean = 0 and std = 0 -> 0 / 1e-6 = 0, not NaN
    out = run("grpo", make([1.0, 1.0], [[0.0], [0.0]], [[1], [1]], group_ids=[0, 0]))
    assert (out.advantages == 0).all()


def test_rloo_leave_one_out_baseline():
    # group 0: R [1, 0, 0.5]
    #   A_0 = 1 - (0 + 0.5)/2 = 0.75; A_1 = 0 - (1 + 0.5)/2 = -0.75; A_2 = 0.5 - (1 + 0)/2 = 0
    # group 1 is a singleton -> 0
    inputs = make([1.0, 0.0, 0.5, 2.0], [[0.0, 0.0]] * 4, [[1, 1], [1, 1], [1, 1], [1, 0]], group_ids=[0, 0, 0, 1])
    out = run("rloo", inputs)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.75, 0.75], [-0.75, -0.75], [0.0, 0.0], [0.0, 0.0]]))


def test_reinforce_pp_equals_whiten_of_closed_form_on_random_batch():
    # A_{x,i} = R - beta * sum_{t>=i, valid} kl_t, computed with an explicit loop
    g = torch.Generator().manual_seed(0)
    B, T, beta = 4, 6, 0.3
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    kl, rewards = torch.rand(B, T, generator=g), torch.randn(B, generator=g)
    inputs = AdvantageInputs(rewards, kl, mask, beta, torch.zeros(B, dtype=torch.long))
    expected = torch.zeros(B, T)
    for b in range(B):
        for i in range(T):
            if mask[b, i]:
                expected[b, i] = rewards[b] - beta * sum(kl[b, t] for t in range(i, T) if mask[b, t])
    out = run("reinforce_plus_plus", inputs)
    torch.testing.assert_close(out.returns, expected)
    torch.testing.assert_close(out.advantages, masked_whiten(expected, mask))


def test_registry_lists_builtins_and_rejects_unknown_names():
    assert set(ALL) <= set(ADVANTAGE_ESTIMATORS.names())
    with pytest.raises(ValueError, match="allowed values: dr_grpo, gae, grpo, reinforce_plus_plus, .*rloo"):
        ADVANTAGE_ESTIMATORS["ppo_magic"]


def test_inputs_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="kl shape"):
        AdvantageInputs(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 4), 0.0, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="rewards"):
        AdvantageInputs(torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3), 0.0, torch.zeros(2, dtype=torch.long))
