import math

import pytest
import torch
import torch.nn.functional as F

from egt.algorithms.losses import (
    IGNORE_INDEX,
    chunked_linear_nll_sum,
    sft_nll_loss,
    stable_reinforce_loss,
    token_logprobs,
)

LN3 = math.log(3.0)


def test_token_logprobs_hand_case_and_reference():
    logits = torch.tensor([[[0.0, LN3], [LN3, 0.0]]])  # p = [1/4, 3/4] then [3/4, 1/4]
    torch.testing.assert_close(
        token_logprobs(logits, torch.tensor([[1, 1]])), torch.tensor([[math.log(0.75), math.log(0.25)]])
    )
    logits = torch.randn(3, 5, 11, dtype=torch.bfloat16)
    tokens = torch.randint(0, 11, (3, 5))
    result = token_logprobs(logits, tokens)
    assert result.dtype == torch.float32
    expected = F.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(result, expected)


def test_token_logprobs_gradient():
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    token_logprobs(logits, torch.tensor([[2]])).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.25, -0.25, 0.75, -0.25]]]))


def _loss(log_ratio, advantages, mask=None, **kwargs):
    log_ratio = torch.tensor(log_ratio)
    mask = torch.ones_like(log_ratio) if mask is None else torch.tensor(mask)
    return stable_reinforce_loss(
        log_ratio, torch.zeros_like(log_ratio), torch.tensor(advantages), mask, **kwargs
    )


def test_loss_unclipped_and_clipped_tokens():
    # ratio 1.5, A = +1: min(1.5, 1.2) -> the clipped term, L = -1.2
    loss, stats = _loss([[math.log(1.5)]], [[1.0]])
    assert loss.item() == pytest.approx(-1.2)
    assert stats["clip_fraction"] == 1.0
    # ratio 1.5, A = -1: min(-1.5, -1.2) = -1.5 unclipped, L = 1.5
    loss, stats = _loss([[math.log(1.5)]], [[-1.0]])
    assert loss.item() == pytest.approx(1.5)
    assert stats["clip_fraction"] == 0.0


def test_loss_mixed_sequence_stats():
    # (ρ 1.5, A +1) -> -1.2 clipped; (ρ 1, A +1) -> -1; (ρ 0.5, A +1) -> -0.5 unclipped;
    # (ρ 0.5, A -1) -> min(-0.5, -0.8) = -0.8 clipped, L = 0.8
    log_ratio = [[math.log(1.5), 0.0, math.log(0.5), math.log(0.5)]]
    loss, stats = _loss(log_ratio, [[1.0, 1.0, 1.0, -1.0]])
    assert loss.item() == pytest.approx(-0.475)  # (-1.2 - 1 - 0.5 + 0.8) / 4
    assert stats["loss"] == pytest.approx(-0.475)
    assert stats["clip_fraction"] == 0.5
    assert stats["preclip_fraction"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(0.875)  # (1.5 + 1 + 0.5 + 0.5) / 4


def test_preclip_bounds_a_huge_ratio():
    # log ratio 50: exp(50) ≈ 5e21 without pre-clip; with it ρ = 1e3 and, for A = -1, L = 1e3
    log_ratio = torch.tensor([[50.0]], requires_grad=True)
    loss, stats = stable_reinforce_loss(
        log_ratio, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1)
    )
    assert loss.item() == pytest.approx(1000.0)
    assert stats["preclip_fraction"] == 1.0
    loss.backward()
    assert log_ratio.grad.item() == 0.0  # the clamp stops the gradient
    loss, _ = _loss([[-50.0]], [[1.0]])
    assert loss.item() == pytest.approx(-1e-3)


def test_sequence_then_batch_mean():
    # ρ = 1, so L_t = -A_t. Sequences: 4 tokens of A = 1 (mean -1), 1 token of A = 4 (mean -4), one empty.
    # Method: mean over sequences = -2.5 (a token mean would be -8/5 = -1.6).
    logprobs = torch.zeros(3, 4, requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    loss, _ = stable_reinforce_loss(logprobs, torch.zeros(3, 4), advantages, mask)
    assert loss.item() == pytest.approx(-2.5)
    assert loss.item() != pytest.approx(-1.6)
    loss.backward()
    # dL/dlogπ_t = -A_t · ρ / (len · n_sequences)
    expected = torch.tensor([[-0.125] * 4, [-2.0, 0.0, 0.0, 0.0], [0.0] * 4])
    torch.testing.assert_close(logprobs.grad, expected)


def test_padding_with_inf_logprobs_stays_finite():
    logprobs = torch.tensor([[-1.0, -math.inf]], requires_grad=True)
    old = torch.tensor([[-1.0, -math.inf]])
    loss, stats = stable_reinforce_loss(logprobs, old, torch.tensor([[2.0, 1.0]]), torch.tensor([[1, 0]]))
    assert loss.item() == -2.0
    loss.backward()
    assert torch.isfinite(logprobs.grad).all()
    assert stats["ratio_mean"] == 1.0


def test_all_masked_loss_is_zero_with_gradient():
    logprobs = torch.zeros(2, 3, requires_grad=True)
    loss, stats = stable_reinforce_loss(logprobs, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0 and stats["clip_fraction"] == 0.0
    loss.backward()
    assert torch.equal(logprobs.grad, torch.zeros(2, 3))


def test_sft_nll_loss():
    # rows: p(target) = 3/4, 1/4, ignored -> mean(-log 0.75, -log 0.25) = 0.8369882
    logits = torch.tensor([[0.0, LN3], [LN3, 0.0], [5.0, -5.0]], requires_grad=True)
    loss = sft_nll_loss(logits, torch.tensor([1, 1, IGNORE_INDEX]))
    assert loss.item() == pytest.approx(0.8369882)
    loss.backward()
    assert torch.equal(logits.grad[2], torch.zeros(2))
    assert IGNORE_INDEX == -100


def test_sft_nll_loss_matches_cross_entropy_and_handles_no_targets():
    logits = torch.randn(7, 13, dtype=torch.bfloat16)
    targets = torch.tensor([1, -100, 3, 12, -100, 0, 5])
    torch.testing.assert_close(sft_nll_loss(logits, targets), F.cross_entropy(logits.float(), targets))
    assert sft_nll_loss(logits, torch.full((7,), IGNORE_INDEX)).item() == 0.0


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_chunked_linear_nll_sum_equals_cross_entropy_and_its_gradients(chunk_size):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 10, 3, 3, 7, 1, 9])
    expected = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    expected_grads = torch.autograd.grad(expected * 2.5, (hidden, weight))

    got = chunked_linear_nll_sum(hidden, weight, targets, chunk_size)
    torch.testing.assert_close(got, expected.float())
    assert got.dtype == torch.float32
    grads = torch.autograd.grad(got * 2.5, (hidden, weight))  # the upstream gradient scales both
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_chunked_linear_nll_sum_follows_requires_grad_and_no_grad():
    hidden, weight = torch.randn(4, 3), torch.randn(6, 3, requires_grad=True)
    targets = torch.tensor([1, 2, 3, 4])
    loss = chunked_linear_nll_sum(hidden, weight, targets, 2)
    (weight_grad,) = torch.autograd.grad(loss, (weight,))
    torch.testing.assert_close(
        weight_grad,
        torch.autograd.grad(F.cross_entropy(hidden @ weight.T, targets, reduction="sum"), weight)[0],
    )
    with torch.no_grad():
        assert not chunked_linear_nll_sum(hidden, weight, targets, 2).requires_grad
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_linear_nll_sum(hidden, weight, targets, 0)
    with pytest.raises(ValueError, match="4 hidden rows but 3 targets"):
        chunked_linear_nll_sum(hidden, weight, targets[:3], 2)
