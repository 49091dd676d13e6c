import math

import pytest
import torch
from torch.distributions import Categorical

from egt.algorithms.entropy import (
    answer_entropy,
    chunked_token_entropy,
    entropy_from_logits,
    mix_entropy,
    sentence_entropy,
)


def _reference(logits: torch.Tensor) -> torch.Tensor:
    return Categorical(logits=logits.double()).entropy().float()


def test_entropy_matches_categorical_on_random_logits():
    logits = torch.randn(5, 7, 300, generator=torch.Generator().manual_seed(0)) * 4
    torch.testing.assert_close(entropy_from_logits(logits), _reference(logits), atol=1e-5, rtol=1e-5)


def test_entropy_with_neg_inf_entries_is_finite_and_exact():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    logits[:, 1::3] = -math.inf
    logits[0, 1:] = -math.inf  # a single possible token: entropy 0
    result = entropy_from_logits(logits)
    assert torch.isfinite(result).all()
    assert result[0] == 0.0
    torch.testing.assert_close(result, _reference(logits), atol=1e-5, rtol=1e-5)
    assert entropy_from_logits(torch.full((3,), -math.inf)).isnan()  # not a distribution


def test_entropy_of_peaked_and_uniform_distributions():
    peaked = torch.zeros(3, 1000)
    peaked[0, 0] = 30.0
    peaked[1, 0] = 1e4
    peaked[2, :2] = 50.0
    torch.testing.assert_close(entropy_from_logits(peaked), _reference(peaked), atol=1e-6, rtol=1e-4)
    assert entropy_from_logits(peaked)[1] == 0.0
    assert entropy_from_logits(peaked)[2] == pytest.approx(math.log(2), abs=1e-6)
    assert entropy_from_logits(torch.full((151_936,), 3.0)).item() == pytest.approx(
        math.log(151_936), rel=1e-6
    )


def test_entropy_is_float32_and_leaves_input_alone():
    logits = torch.randn(4, 64, dtype=torch.bfloat16)
    before = logits.clone()
    result = entropy_from_logits(logits)
    assert result.dtype == torch.float32
    assert torch.equal(logits, before)
    torch.testing.assert_close(result, _reference(logits.float()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 256])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_equals_unchunked(chunk_size, with_bias):
    gen = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(13, 8, generator=gen), torch.randn(50, 8, generator=gen)
    bias = torch.randn(50, generator=gen) if with_bias else None
    full = hidden @ weight.T + (bias if with_bias else 0.0)
    result = chunked_token_entropy(hidden, weight, chunk_size=chunk_size, lm_head_bias=bias)
    assert result.shape == (13,) and result.dtype == torch.float32
    torch.testing.assert_close(result, entropy_from_logits(full), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result, _reference(full), atol=1e-5, rtol=1e-5)


def test_chunked_accepts_bf16_and_upcasts_logits():
    gen = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(10, 16, generator=gen), torch.randn(40, 16, generator=gen)
    result = chunked_token_entropy(hidden.bfloat16(), weight.bfloat16(), chunk_size=4)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, entropy_from_logits(hidden.bfloat16() @ weight.bfloat16().T))
    torch.testing.assert_close(result, _reference(hidden @ weight.T), atol=0.05, rtol=0.02)


def test_chunked_rejects_empty_chunks_and_handles_empty_input():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_entropy(torch.randn(2, 4), torch.randn(5, 4), chunk_size=0)
    assert chunked_token_entropy(torch.randn(0, 4), torch.randn(5, 4)).shape == (0,)


def test_answer_entropy_eq3():
    token_entropies = torch.tensor([0.5, 1.25, 0.125])
    assert answer_entropy(token_entropies, 1) == 1.25
    assert answer_entropy(token_entropies, None) == math.inf
    with pytest.raises(IndexError):
        answer_entropy(token_entropies, 3)
    with pytest.raises(IndexError):
        answer_entropy(token_entropies, -1)


def test_sentence_entropy_eq4():
    assert sentence_entropy(torch.tensor([0.5, 1.25, 0.125, 2.125])) == 1.0
    assert sentence_entropy(torch.tensor([])) == math.inf


def test_mix_entropy_table4():
    assert mix_entropy(0.5, 3.0) == 1.5
    assert mix_entropy(math.inf, 0.0) == math.inf
    assert mix_entropy(0.0, math.inf) == math.inf
