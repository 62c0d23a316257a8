"""KL estimators k1 / k2 / k3 with the peers' float32 and clamping conventions."""

import math

import pytest
import torch

from waltzlit.algorithms.kl import kl_penalty

LOGP = torch.tensor([[-1.0, -2.0]])
REF = torch.tensor([[-1.5, -1.0]])  # delta = logp - ref = [0.5, -1.0]


def test_k1_is_the_log_ratio():
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k1"), torch.tensor([[0.5, -1.0]]))


def test_k2_is_half_the_squared_log_ratio():
    # 0.5 * 0.5^2 = 0.125; 0.5 * (-1)^2 = 0.5
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k2"), torch.tensor([[0.125, 0.5]]))


def test_k3_low_variance_estimator():
    # exp(-0.5) - 1 + 0.5 = 0.606531 - 0.5 = 0.106531; exp(1) - 1 - 1 = 0.718282
    expected = torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0]])
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k3"), expected)


def test_identical_policies_give_zero():
    for estimator in ("k1", "k2", "k3"):
        assert (kl_penalty(LOGP, LOGP, estimator) == 0).all()


def test_k2_and_k3_are_nonnegative():
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(4, 7, generator=g) * 3, torch.randn(4, 7, generator=g) * 3
    assert (kl_penalty(logp, ref, "k2") >= 0).all()
    assert (kl_penalty(logp, ref, "k3") >= 0).all()


def test_clamps_input_and_output():
    # delta = 30 -> 20 (input clamp) -> k1 = 20 -> 10 (output clamp)
    # delta = -30 -> -20 -> k3 = exp(20) - 1 - 20 ~ 4.9e8 -> 10, finite
    # delta = 5 -> k2 = 12.5 -> 10
    logp = torch.tensor([[30.0, -30.0, 5.0]])
    ref = torch.zeros_like(logp)
    assert kl_penalty(logp, ref, "k1")[0, 0].item() == 10.0
    assert kl_penalty(logp, ref, "k1")[0, 1].item() == -10.0
    assert kl_penalty(logp, ref, "k3")[0, 1].item() == 10.0
    assert kl_penalty(logp, ref, "k2")[0, 2].item() == 10.0
    # -inf log-probs (e.g. padding) stay finite thanks to the input clamp
    inf = torch.tensor([[float("-inf")]])
    assert torch.isfinite(kl_penalty(inf, torch.zeros_like(inf), "k3")).all()


def test_output_is_float32_for_low_precision_inputs():
    out = kl_penalty(LOGP.bfloat16(), REF.bfloat16(), "k1")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.5, -1.0]]))


def test_unknown_estimator_lists_allowed_names():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(LOGP, REF, "k4")
