import math

import pytest
import torch

from egt.algorithms.preference import (
    bradley_terry_loss,
    pairwise_accuracy,
    pool,
    pool_last_token,
    pool_mean,
)


def test_bradley_terry_loss_by_hand():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 1.0])
    # −log σ(m) for margins 1, 0, −2
    expected = [math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(2))]
    per_pair = bradley_terry_loss(chosen, rejected, reduction="none")
    assert per_pair.tolist() == pytest.approx(expected)
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(sum(expected) / 3)
    assert float(bradley_terry_loss(chosen, rejected, reduction="sum")) == pytest.approx(sum(expected))


def test_bradley_terry_loss_is_finite_at_extreme_margins_and_its_gradient_is_sigma():
    chosen = torch.tensor([-200.0, 200.0], requires_grad=True)
    rejected = torch.tensor([200.0, -200.0])
    loss = bradley_terry_loss(chosen, rejected, reduction="sum")
    assert float(loss) == pytest.approx(400.0)  # −log σ(−400) = 400 + log(1 + e^−400)
    loss.backward()
    # dL/dr_w = −σ(r_l − r_w): −1 when badly wrong, 0 when right by far
    assert chosen.grad.tolist() == pytest.approx([-1.0, 0.0])


def test_last_token_pooling_with_padding_on_either_side():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    right_padded = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left_padded = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])  # a hole after the last token too
    assert pool_last_token(hidden, right_padded).tolist() == [[2.0, 3.0], [14.0, 15.0]]
    assert pool_last_token(hidden, left_padded).tolist() == [[6.0, 7.0], [12.0, 13.0]]


def test_mean_pooling_ignores_masked_positions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool_mean(hidden, mask).tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "last_token").tolist() == [[3.0, 4.0]]


def test_pooling_refuses_an_empty_row_and_an_unknown_name():
    hidden = torch.zeros(2, 3, 4)
    empty = torch.tensor([[1, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="no unmasked position"):
        pool_last_token(hidden, empty)
    with pytest.raises(ValueError, match="no unmasked position"):
        pool_mean(hidden, empty)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(hidden, torch.ones(2, 3), "max")


def test_pairwise_accuracy_counts_ties_as_half():
    chosen = torch.tensor([1.0, 0.0, 2.0, 5.0])
    rejected = torch.tensor([0.0, 0.0, 3.0, 1.0])
    assert pairwise_accuracy(chosen, rejected) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
