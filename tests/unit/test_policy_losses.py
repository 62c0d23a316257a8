"""Policy losses (eq. 4), loss aggregation and token entropy."""

import math

import pytest
import torch

from waltzlit.algorithms.advantages import AdvantageInputs
from waltzlit.algorithms.policy_losses import aggregate_loss, ppo_clip_loss, reinforce_loss, token_entropy
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES

# row 0: 3 tokens, row 1: 1 token, row 2: empty
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
AGG_MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_aggregate_seq_mean_token_mean():
    # row means: (1+2+3)/3 = 2, 4/1 = 4; the empty row is left out -> (2 + 4) / 2 = 3
    assert aggregate_loss(PER_TOKEN, AGG_MASK, "seq-mean-token-mean").item() == pytest.approx(3.0)


def test_aggregate_token_mean():
    # (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert aggregate_loss(PER_TOKEN, AGG_MASK, "token-mean").item() == pytest.approx(2.5)


def test_aggregate_seq_mean_token_sum():
    # row sums 6 and 4 over 2 non-empty rows -> 5
    assert aggregate_loss(PER_TOKEN, AGG_MASK, "seq-mean-token-sum").item() == pytest.approx(5.0)


def test_aggregate_normalizer_makes_micro_batches_add_up():
    # token-mean with a global count: row 0 gives 6/4, row 1 gives 4/4, sum 10/4 = 2.5 = full batch
    for mode, count in (("token-mean", 4), ("seq-mean-token-mean", 2), ("seq-mean-token-sum", 2)):
        full = aggregate_loss(PER_TOKEN, AGG_MASK, mode)
        parts = sum(aggregate_loss(PER_TOKEN[i : i + 1], AGG_MASK[i : i + 1], mode, normalizer=count) for i in range(3))
        assert parts.item() == pytest.approx(full.item())


def test_aggregate_empty_mask_is_zero_and_differentiable():
    x = torch.randn(2, 3, requires_grad=True)
    for mode in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum"):
        out = aggregate_loss(x, torch.zeros(2, 3), mode)
        assert out.item() == 0.0
        out.backward()
        assert (x.grad == 0).all()


def test_aggregate_unknown_mode_lists_allowed_names():
    with pytest.raises(ValueError, match="seq-mean-token-mean, token-mean, seq-mean-token-sum"):
        aggregate_loss(PER_TOKEN, AGG_MASK, "sum")


# one row, five tokens: ratios s = [1.5, 0.5, 1.1, 1.5, 0.5], advantages A = [1, -1, 2, -1, 1]
RATIOS = torch.tensor([[1.5, 0.5, 1.1, 1.5, 0.5]])
ADV = torch.tensor([[1.0, -1.0, 2.0, -1.0, 1.0]])
OLD = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5]])


def clip_case():
    logprobs = (OLD + RATIOS.log()).requires_grad_(True)
    out = ppo_clip_loss(logprobs, OLD, ADV, torch.ones_like(ADV), clip_eps=0.2)
    return logprobs, out


def test_ppo_clip_loss_value_and_clip_fraction():
    # token: min(s*A, clip(s, 0.8, 1.2)*A)
    #   0: s=1.5 A=+1 above band: min(1.5, 1.2) = 1.2   clipped
    #   1: s=0.5 A=-1 below band: min(-0.5, -0.8) = -0.8 clipped
    #   2: s=1.1 A=+2 inside:     min(2.2, 2.2) = 2.2   not clipped
    #   3: s=1.5 A=-1 above band: min(-1.5, -1.2) = -1.5 not clipped (pessimistic side)
    #   4: s=0.5 A=+1 below band: min(0.5, 0.8) = 0.5   not clipped
    # loss = -(1.2 - 0.8 + 2.2 - 1.5 + 0.5) / 5 = -1.6 / 5 = -0.32; clip_fraction = 2/5
    _, out = clip_case()
    assert out.loss.item() == pytest.approx(-0.32, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(0.4)


def test_ppo_clip_gradient_is_zero_only_where_clipped():
    # d(-s*A/5)/d logp = -s*A/5 on unclipped tokens: [0, 0, -2.2/5, 1.5/5, -0.5/5]
    logprobs, out = clip_case()
    out.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, -0.44, 0.3, -0.1]]))


def test_ppo_clip_approx_kl_is_k3_of_the_ratio():
    # (s - 1) - log s: s=1.5 -> 0.5 - 0.405465 = 0.094535; s=0.5 -> -0.5 + 0.693147 = 0.193147;
    # s=1.1 -> 0.1 - 0.095310 = 0.004690; mean = (2*0.094535 + 2*0.193147 + 0.004690) / 5 = 0.116011
    _, out = clip_case()
    expected = sum((s - 1) - math.log(s) for s in (1.5, 0.5, 1.1, 1.5, 0.5)) / 5
    assert out.approx_kl.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.116011, abs=1e-6)


def test_ppo_clip_on_policy_is_minus_mean_advantage():
    # s = 1 everywhere: loss = -mean over rows of each row's mean A
    # rows: mean(1, 3) = 2 and mean(-1) = -1 -> -(2 - 1)/2 = -0.5; nothing clipped, KL 0
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -7.0]])
    adv = torch.tensor([[1.0, 3.0], [-1.0, 50.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = ppo_clip_loss(logp, logp, adv, mask)
    assert out.loss.item() == pytest.approx(-0.5)
    assert out.clip_fraction.item() == 0.0 and out.approx_kl.item() == 0.0


def test_masked_tokens_never_change_the_loss_or_get_gradient():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    logprobs = torch.cat([OLD + RATIOS.log(), torch.tensor([[float("nan")]])], dim=1).requires_grad_(True)
    old = torch.cat([OLD, torch.tensor([[float("-inf")]])], dim=1)
    adv = torch.cat([ADV, torch.tensor([[1e6]])], dim=1)
    for fn in (ppo_clip_loss, reinforce_loss):
        out = fn(logprobs, old, adv, mask)
        ref = fn(OLD + RATIOS.log(), OLD, ADV, torch.ones_like(ADV))
        torch.testing.assert_close(out.loss, ref.loss)
        torch.testing.assert_close(out.clip_fraction, ref.clip_fraction)
        torch.testing.assert_close(out.approx_kl, ref.approx_kl)
        logprobs.grad = None
        out.loss.backward()
        assert torch.isfinite(logprobs.grad).all() and logprobs.grad[0, 5] == 0


def test_reinforce_loss_is_unclipped():
    # s = 1.5, A = 1: -s*A = -1.5 (ppo_clip would give -1.2); gradient -s*A = -1.5
    old = torch.tensor([[-1.0]])
    logprobs = (old + math.log(1.5)).requires_grad_(True)
    out = reinforce_loss(logprobs, old, torch.tensor([[1.0]]), torch.ones(1, 1))
    assert out.loss.item() == pytest.approx(-1.5)
    assert out.clip_fraction.item() == 0.0
    out.loss.backward()
    assert logprobs.grad.item() == pytest.approx(-1.5)


@pytest.mark.parametrize("loss_name", ["ppo_clip", "reinforce"])
def test_reinforce_pp_gradient_step_moves_logprobs_the_right_way(loss_name):
    # Two sampled responses of 2 tokens from independent softmax policies over 3 tokens.
    # R = [1, 0] -> after whitening row 0 has positive advantages and row 1 negative ones;
    # one SGD step must raise row 0's log-probs and lower row 1's.
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, requires_grad=True)
    tokens = torch.tensor([[0, 2], [1, 1]])
    mask = torch.ones(2, 2)

    def logprobs():
        return torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)

    old = logprobs().detach()
    inputs = AdvantageInputs(torch.tensor([1.0, 0.0]), torch.zeros(2, 2), mask, 0.01, torch.zeros(2, dtype=torch.long))
    adv = ADVANTAGE_ESTIMATORS["reinforce_plus_plus"](inputs).advantages
    assert (adv[0] > 0).all() and (adv[1] < 0).all()

    out = POLICY_LOSSES[loss_name](logprobs(), old, adv, mask)
    out.loss.backward()
    with torch.no_grad():
        logits -= 0.1 * logits.grad
    new = logprobs().detach()
    assert (new[0] > old[0]).all() and (new[1] < old[1]).all()


def test_policy_loss_registry_rejects_unknown_names():
    assert {"ppo_clip", "reinforce"} <= set(POLICY_LOSSES.names())
    with pytest.raises(ValueError, match="allowed values: .*ppo_clip.*reinforce"):
        POLICY_LOSSES["dpo"]


def test_token_entropy_hand_computed():
    # uniform over 4: log 4 = 1.386294; two live tokens of 4: log 2 = 0.693147; one live token: 0
    inf = float("inf")
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [3.0, 3.0, -inf, -inf], [1.0, -inf, -inf, -inf]]], requires_grad=True)
    h = token_entropy(logits)
    torch.testing.assert_close(h, torch.tensor([[math.log(4), math.log(2), 0.0]]))
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_token_entropy_is_stable_and_float32():
    # huge logits would overflow a naive softmax; [1000, 1000] is uniform over 2 -> log 2
    h = token_entropy(torch.tensor([[[1000.0, 1000.0]]], dtype=torch.bfloat16))
    assert h.dtype == torch.float32
    assert h.item() == pytest.approx(math.log(2), abs=1e-6)


def test_training_forward_entropy_has_the_zero_probability_guard():
    # The entropy the update logs comes from agents/logprobs.py; with a -inf logit (a masked
    # token, p = 0) it must be finite: here two equal logits and one -inf give H = ln 2 = 0.6931.
    from waltzlit.agents.logprobs import _token_statistics

    logits = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    _, entropy = _token_statistics(logits, torch.tensor([[0]]), with_entropy=True, entropy_grad=False)
    assert torch.allclose(entropy, torch.tensor([[0.6931472]]))
