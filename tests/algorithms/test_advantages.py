import math

import pytest
import torch

from egt.algorithms.advantages import (
    filter_advantages,
    kl_penalty,
    masked_moments,
    reinforce_pp_returns,
    whiten,
)


def test_returns_put_reward_on_last_valid_token():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    returns = reinforce_pp_returns(torch.tensor([1.0, 2.0, 5.0]), mask)
    assert torch.equal(returns, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))


def test_returns_with_kl():
    # token rewards: -0.5·[0.1, 0.2, 0.3] + [0, 0, 1] = [-0.05, -0.1, 0.85]; padding's kl (5.0) is ignored.
    # return-to-go: [0.70, 0.75, 0.85, 0]
    returns = reinforce_pp_returns(
        torch.tensor([1.0]),
        torch.tensor([[1, 1, 1, 0]]),
        kl=torch.tensor([[0.1, 0.2, 0.3, 5.0]]),
        kl_coef=0.5,
    )
    torch.testing.assert_close(returns, torch.tensor([[0.70, 0.75, 0.85, 0.0]]))


def test_returns_with_discount():
    returns = reinforce_pp_returns(torch.tensor([4.0]), torch.ones(1, 3), gamma=0.5)
    assert torch.equal(returns, torch.tensor([[1.0, 2.0, 4.0]]))
    # token rewards [-0.2, -0.2, 0.8]: G2 = 0.8, G1 = -0.2 + 0.4 = 0.2, G0 = -0.2 + 0.1 = -0.1
    returns = reinforce_pp_returns(
        torch.tensor([1.0]), torch.ones(1, 3), kl=torch.full((1, 3), 0.2), kl_coef=1.0, gamma=0.5
    )
    torch.testing.assert_close(returns, torch.tensor([[-0.1, 0.2, 0.8]]))


def test_returns_reject_bad_inputs():
    with pytest.raises(ValueError, match="right-padded"):
        reinforce_pp_returns(torch.tensor([1.0]), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="kl"):
        reinforce_pp_returns(torch.tensor([1.0]), torch.ones(1, 2), kl_coef=0.1)


def test_masked_moments_ignore_padding():
    values = torch.tensor([[1.0, 2.0, 99.0], [3.0, math.nan, math.inf]])
    total, total_sq, count = masked_moments(values, torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert (total.item(), total_sq.item(), count.item()) == (6.0, 14.0, 3.0)
    assert total.dtype == total_sq.dtype == count.dtype == torch.float64
    assert total.dim() == 0


def test_whiten_hand_case():
    # valid 1, 2, 3, 4: mean 2.5, population variance 1.25, std 1.1180340
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    expected = torch.tensor([[-1.3416408, -0.4472136, 0.4472136], [1.3416408, 0.0, 0.0]])
    torch.testing.assert_close(whiten(values, mask), expected)


def test_whiten_with_summed_moments_equals_whiten_of_concatenation():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(6, 8, generator=gen) * 3 + 1
    lengths = torch.tensor([8, 5, 1, 3, 7, 2])
    mask = (torch.arange(8) < lengths[:, None]).long()
    parts = [(values[:2], mask[:2]), (values[2:], mask[2:])]
    moments = [masked_moments(v, m) for v, m in parts]
    summed = tuple(sum(m[i] for m in moments) for i in range(3))
    whole = whiten(values, mask)
    torch.testing.assert_close(torch.cat([whiten(v, m, moments=summed) for v, m in parts]), whole)
    assert whole[mask.bool()].mean().abs() < 1e-6
    assert whole[mask.bool()].std(correction=0) == pytest.approx(1.0, abs=1e-6)
    assert (whole[~mask.bool()] == 0).all()


def test_filter_keeps_exactly_sigma():
    advantages = torch.tensor([[3.0, -3.0, 3.0001, -3.5, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    filtered, kept = filter_advantages(advantages, mask)
    assert torch.equal(filtered, torch.tensor([[3.0, -3.0, 0.0, 0.0, 0.5, 0.0]]))
    assert kept.tolist() == [[True, True, False, False, True, False]]
    filtered, kept = filter_advantages(advantages, mask, sigma=1.0)
    assert kept.tolist() == [[False, False, False, False, True, False]]


def test_filter_removes_r1_reward_outlier():
    # R1-Reward §3.3: 255 rewards of 1 and one of 0 whiten to about -15.96 for the 0; the filter drops it.
    rewards = torch.ones(256)
    rewards[0] = 0.0
    mask = torch.ones(256, 1)
    advantages = whiten(reinforce_pp_returns(rewards, mask), mask)
    assert advantages[0, 0].item() == pytest.approx(-math.sqrt(255), abs=1e-4)  # -15.969
    filtered, kept = filter_advantages(advantages, mask)
    assert kept[:, 0].tolist() == [False] + [True] * 255
    assert filtered[0, 0] == 0.0


def test_kl_penalty_k1():
    torch.testing.assert_close(
        kl_penalty(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])), torch.tensor([0.5, -1.0])
    )
