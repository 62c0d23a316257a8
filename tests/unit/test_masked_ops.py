"""Masked reductions: hand-computed values, empty masks, and padding that must never leak in."""

import math

import pytest
import torch

from waltzlit.algorithms.masked_ops import masked_mean, masked_sum, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_sum_global_and_per_row():
    # valid: 1, 2 | 4 -> total 7, rows [3, 4]
    assert masked_sum(X, MASK).item() == pytest.approx(7.0)
    torch.testing.assert_close(masked_sum(X, MASK, dim=1), torch.tensor([3.0, 4.0]))


def test_masked_mean_global_and_per_row():
    # 7 / 3 valid elements; rows: (1+2)/2 = 1.5 and 4/1 = 4
    assert masked_mean(X, MASK).item() == pytest.approx(7.0 / 3.0)
    torch.testing.assert_close(masked_mean(X, MASK, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    zeros = torch.zeros_like(MASK)
    assert masked_mean(X, zeros).item() == 0.0
    # row 1 has no valid element: 0; row 0: (1+2)/2 = 1.5
    torch.testing.assert_close(masked_mean(X, torch.tensor([[1, 1, 0], [0, 0, 0]]), dim=1), torch.tensor([1.5, 0.0]))


def test_masked_var_population_and_unbiased():
    # valid 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    # population 42/9 / 3 = 14/9; unbiased 42/9 / 2 = 7/3
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_var(x, mask).item() == pytest.approx(14.0 / 9.0)
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(7.0 / 3.0)


def test_masked_var_degenerate_counts_are_zero():
    one = torch.tensor([[1, 0, 0], [0, 0, 0]])
    assert masked_var(X, one, unbiased=True).item() == 0.0
    assert masked_var(X, torch.zeros_like(MASK)).item() == 0.0


def test_masked_out_values_never_change_results_or_gradients():
    garbage = X.clone()
    garbage[MASK == 0] = float("nan")
    garbage[0, 2] = float("inf")
    for fn in (masked_sum, masked_mean):
        torch.testing.assert_close(fn(garbage, MASK), fn(X, MASK))
        torch.testing.assert_close(fn(garbage, MASK, dim=1), fn(X, MASK, dim=1))
    torch.testing.assert_close(masked_var(garbage, MASK), masked_var(X, MASK))
    torch.testing.assert_close(masked_whiten(garbage, MASK), masked_whiten(X, MASK))

    leaf = garbage.clone().requires_grad_(True)
    masked_whiten(leaf, MASK).pow(2).sum().backward()
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad[MASK == 0] == 0).all()


def test_masked_whiten_hand_computed():
    # valid 1, 2, 4 (from the var test): mean 7/3, population var 14/9
    # out = (x - 7/3) / sqrt(14/9 + 1e-8), masked positions 0
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    std = math.sqrt(14.0 / 9.0 + 1e-8)
    expected = torch.tensor([[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]])
    out = masked_whiten(x, mask)
    torch.testing.assert_close(out, expected)
    assert masked_mean(out, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(out, mask).item() == pytest.approx(1.0, abs=1e-5)


def test_masked_whiten_pools_all_rows():
    # each row is constant, so per-row whitening would give all zeros;
    # globally: mean (0+0+4+4)/4 = 2, var 4, std 2 -> [[-1, -1], [1, 1]]
    x = torch.tensor([[0.0, 0.0], [4.0, 4.0]])
    mask = torch.ones_like(x)
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    # shift_mean=False adds the mean (2) back: [[1, 1], [3, 3]]
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 1.0], [3.0, 3.0]]))


def test_masked_whiten_constant_or_empty_is_zero():
    x = torch.full((2, 3), 5.0)
    assert (masked_whiten(x, torch.ones_like(x)) == 0).all()
    out = masked_whiten(x, torch.zeros_like(x))
    assert torch.isfinite(out).all() and (out == 0).all()
