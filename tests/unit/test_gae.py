"""PPO pieces: GAE (verl's multi-turn-aware recursion), the clipped value loss, dual clip, and the
Dr.GRPO aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from waltzlit.algorithms.advantages import AdvantageInputs
from waltzlit.algorithms.masked_ops import masked_whiten
from waltzlit.algorithms.policy_losses import aggregate_loss, loss_denominator, ppo_clip_loss
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS
from waltzlit.algorithms.value_loss import clipped_value_loss

gae = ADVANTAGE_ESTIMATORS["gae"]


def inputs(rewards, values, mask, kl=None, kl_coef=0.0, gamma=1.0, lam=1.0):
    values = torch.tensor(values, dtype=torch.float32)
    return AdvantageInputs(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        kl=torch.zeros_like(values) if kl is None else torch.tensor(kl, dtype=torch.float32),
        response_mask=torch.tensor(mask),
        kl_coef=kl_coef,
        group_ids=torch.arange(len(rewards)),
        values=values,
        gamma=gamma,
        lam=lam,
    )


# R = 1 on the last token, gamma = 1, lambda = 0.5
# row 0, mask [1, 1, 1], V = [0.5, 0.2, 0.4], r = [0, 0, 1]:
#   delta_2 = 1 + 0 - 0.4 = 0.6            A_2 = 0.6
#   delta_1 = 0 + 0.4 - 0.2 = 0.2          A_1 = 0.2 + 0.5 * 0.6 = 0.5
#   delta_0 = 0 + 0.2 - 0.5 = -0.3         A_0 = -0.3 + 0.5 * 0.5 = -0.05
#   returns = A + V = [0.45, 0.7, 1.0]
# row 1, mask [1, 0, 1] (a gap), V = [0.5, 99 (masked), 0.4]:
#   A_2 = 0.6; the gap keeps the carry (A = 0.6, next V = 0.4)
#   delta_0 = 0 + 0.4 - 0.5 = -0.1         A_0 = -0.1 + 0.5 * 0.6 = 0.2;  returns [0.7, 0, 1.0]
CASE = inputs([1.0, 1.0], [[0.5, 0.2, 0.4], [0.5, 99.0, 0.4]], [[1, 1, 1], [1, 0, 1]], lam=0.5)


def test_gae_returns_hand_computed_and_carried_across_a_gap():
    out = gae(CASE)
    torch.testing.assert_close(out.returns, torch.tensor([[0.45, 0.7, 1.0], [0.7, 0.0, 1.0]]))


def test_gae_advantages_whitened_with_the_unbiased_variance():
    # valid A = [-0.05, 0.5, 0.6, 0.2, 0.6]; mean = 1.85 / 5 = 0.37
    # squared deviations 0.1764 + 0.0169 + 0.0529 + 0.0289 + 0.0529 = 0.328; verl's var = 0.328 / 4 = 0.082
    std = math.sqrt(0.082 + 1e-8)
    expected = torch.tensor([[(-0.05 - 0.37) / std, (0.5 - 0.37) / std, (0.6 - 0.37) / std],
                             [(0.2 - 0.37) / std, 0.0, (0.6 - 0.37) / std]])
    torch.testing.assert_close(gae(CASE).advantages, expected)


def test_gae_with_kl_reward_and_discount():
    # one row, 2 tokens, R = 1, kl = [0.5, 1.0], beta = 0.2 -> r = [-0.1, 1 - 0.2] = [-0.1, 0.8]
    # gamma = 0.9, lambda = 1, V = [0.3, 0.6]:
    #   delta_1 = 0.8 - 0.6 = 0.2                   A_1 = 0.2
    #   delta_0 = -0.1 + 0.9 * 0.6 - 0.3 = 0.14     A_0 = 0.14 + 0.9 * 0.2 = 0.32
    #   returns = [0.62, 0.8] (= discounted reward-to-go: -0.1 + 0.9 * 0.8 = 0.62)
    out = gae(inputs([1.0], [[0.3, 0.6]], [[1, 1]], kl=[[0.5, 1.0]], kl_coef=0.2, gamma=0.9, lam=1.0))
    torch.testing.assert_close(out.returns, torch.tensor([[0.62, 0.8]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_the_closed_form_on_random_batches(seed):
    # A_k = sum_{l >= 0} (gamma * lambda)^l delta_{k+l} over the row's valid tokens only, with
    # delta_k = r_k + gamma * V_{k+1} - V_k and V after the last valid token = 0.
    g = torch.Generator().manual_seed(seed)
    B, T, gamma, lam, beta = 5, 6, 0.9, 0.8, 0.1
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    mask[0] = 0
    case = AdvantageInputs(torch.randn(B, generator=g), torch.rand(B, T, generator=g), mask, beta,
                           torch.arange(B), torch.randn(B, T, generator=g), gamma, lam)
    expected = torch.zeros(B, T)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        r = [-beta * float(case.kl[b, t]) for t in idx]
        if idx:
            r[-1] += float(case.rewards[b])
        v = [float(case.values[b, t]) for t in idx] + [0.0]
        deltas = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(idx))]
        for k, t in enumerate(idx):
            expected[b, t] = sum((gamma * lam) ** (l - k) * deltas[l] for l in range(k, len(idx)))
    out = gae(case)
    torch.testing.assert_close(out.returns, torch.where(mask.bool(), expected + case.values, 0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.advantages, masked_whiten(expected, mask, unbiased=True), atol=1e-4, rtol=0)


def test_gae_needs_values():
    case = AdvantageInputs(torch.zeros(1), torch.zeros(1, 2), torch.ones(1, 2), 0.0, torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="critic values"):
        gae(case)


# V = [1.0, 0.0, 2.0], V_old = 0.5, G = [1.5, 0.0, 0.0], clip 0.2 (V_clip = 0.5 + clip(V - 0.5, +-0.2)):
#   t0: (1 - 1.5)^2 = 0.25; V_clip = 0.7, (0.7 - 1.5)^2 = 0.64 -> 0.64 (clipped)
#   t1: (0 - 0)^2 = 0;      V_clip = 0.3, 0.3^2 = 0.09         -> 0.09 (clipped)
#   t2: (2 - 0)^2 = 4;      V_clip = 0.7, 0.49                 -> 4    (unclipped)
# loss = 0.5 * (0.64 + 0.09 + 4) / 3 = 0.788333; clip fraction 2/3
# gradient only through t2: 0.5 * 2 * (2 - 0) / 3 = 0.666667 (the clamps saturate at t0 and t1)
V = torch.tensor([[1.0, 0.0, 2.0]])
V_OLD, G = torch.full((1, 3), 0.5), torch.tensor([[1.5, 0.0, 0.0]])


def test_clipped_value_loss_hand_computed():
    values = V.clone().requires_grad_(True)
    out = clipped_value_loss(values, V_OLD, G, torch.ones(1, 3), value_clip=0.2)
    assert out.loss.item() == pytest.approx(0.788333, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(2 / 3)
    out.loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.0, 2 / 3]]))


def test_value_loss_without_clipping_is_half_the_squared_error():
    # 0.5 * (0.25 + 0 + 4) / 3 = 0.708333
    out = clipped_value_loss(V, V_OLD, G, torch.ones(1, 3), value_clip=None)
    assert out.loss.item() == pytest.approx(0.708333, abs=1e-6) and out.clip_fraction.item() == 0.0


def test_dual_clip_caps_the_loss_of_negative_advantages():
    # ratios s = [5, 0.5, 5], A = [-1, -1, +1], eps 0.2, c = 3
    #   t0: min(-5, -1.2) = -5; dual: max(-5, 3 * -1) = -3 (capped, no gradient)
    #   t1: min(-0.5, -0.8) = -0.8; max(-0.8, -3) = -0.8 (ratio clip)
    #   t2: A > 0: min(5, 1.2) = 1.2 (ratio clip; the dual clip never touches A > 0)
    # loss = -(-3 - 0.8 + 1.2) / 3 = 0.866667 (plain PPO: -(-5 - 0.8 + 1.2) / 3 = 1.533333)
    old = torch.tensor([[-1.0, -2.0, -1.5]])
    logp = (old + torch.tensor([[5.0, 0.5, 5.0]]).log()).requires_grad_(True)
    adv, mask = torch.tensor([[-1.0, -1.0, 1.0]]), torch.ones(1, 3)
    plain = ppo_clip_loss(logp, old, adv, mask)
    dual = ppo_clip_loss(logp, old, adv, mask, dual_clip=3.0)
    assert plain.loss.item() == pytest.approx(4.6 / 3) and plain.clip_fraction.item() == pytest.approx(2 / 3)
    assert dual.loss.item() == pytest.approx(2.6 / 3) and dual.clip_fraction.item() == pytest.approx(1.0)
    dual.loss.backward()
    assert logp.grad[0, 0] == 0  # capped token
    assert logp.grad[0, 1] == 0 and logp.grad[0, 2] == 0  # ratio-clipped tokens


# row 0: 3 tokens [1, 2, 3], row 1: 1 token [4], row 2: empty
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_seq_mean_token_sum_norm_divides_by_sequences_times_a_constant():
    # sum 10 over 2 non-empty sequences * padded width 3 = 10 / 6; with L = 5: 10 / (2 * 5) = 1
    assert aggregate_loss(PER_TOKEN, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(10 / 6)
    denominator = loss_denominator(MASK, "seq-mean-token-sum-norm", max_tokens=5)
    assert denominator.item() == 10.0
    normalised = aggregate_loss(PER_TOKEN, MASK, "seq-mean-token-sum-norm", normalizer=denominator)
    assert normalised.item() == pytest.approx(1.0)


def test_loss_denominators():
    # tokens 4; non-empty sequences 2 for both seq-mean modes
    assert loss_denominator(MASK, "token-mean").item() == 4
    assert loss_denominator(MASK, "seq-mean-token-mean").item() == 2
    assert loss_denominator(MASK, "seq-mean-token-sum").item() == 2
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        loss_denominator(MASK, "sum")
