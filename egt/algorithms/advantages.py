"""Reinforce++ advantages with StableReinforce's advantage filter (method.md stage 5; R1-Reward §3.2-3.4).

Tensors are ``[B, T]`` over response tokens, right-padded; ``mask`` is 1 on valid tokens.
"""

import torch
from torch import Tensor


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL estimate ``log π(t) - log π_ref(t)`` (the k1 estimator used by Reinforce++)."""
    return logprobs - ref_logprobs


def reinforce_pp_returns(
    rewards: Tensor,
    mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> Tensor:
    """Reinforce++ returns (R1-Reward §3.2, method.md stage 5).

    Per-token reward ``r_t = -kl_coef · kl_t`` on every valid token, plus the sequence reward ``R``
    on the last valid token; the return is the discounted return-to-go ``G_t = r_t + γ G_{t+1}``.

    Args:
        rewards: ``[B]`` sequence rewards.
        mask: ``[B, T]`` 1 on valid response tokens, right-padded.
        kl: ``[B, T]`` per-token KL estimates (:func:`kl_penalty`); needed when ``kl_coef != 0``.
        kl_coef: ``β_KL``; 0 in the R1-Reward paper.
        gamma: discount; 1 in the method.

    Returns:
        ``[B, T]`` float32 returns, 0 on padding (and everywhere in a row with no valid token).
    """
    valid = mask.bool()
    if (valid[:, 1:] & ~valid[:, :-1]).any():
        raise ValueError("mask must be right-padded: a valid token follows padding")
    if kl is None and kl_coef != 0:
        raise ValueError("kl_coef is non-zero but no kl was given")
    token_rewards = torch.zeros(valid.shape, dtype=torch.float32, device=rewards.device)
    if kl is not None:
        token_rewards = torch.where(valid, -kl_coef * kl.float(), token_rewards)
    lengths = valid.sum(dim=1)
    rows = torch.nonzero(lengths > 0).squeeze(1)
    token_rewards[rows, lengths[rows] - 1] += rewards.float()[rows]

    returns = torch.zeros_like(token_rewards)
    running = torch.zeros(valid.shape[0], dtype=torch.float32, device=rewards.device)
    for t in reversed(range(valid.shape[1])):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * valid


def masked_moments(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(Σ x, Σ x², n)`` over valid tokens as 0-dim float64 tensors.

    They add across data-parallel ranks: all-reduce (sum) them, then pass them to :func:`whiten`
    to whiten with global statistics (method.md stage 5).
    """
    valid = mask.bool()
    x = torch.where(valid, values.double(), 0.0)
    return x.sum(), (x * x).sum(), valid.sum().double()


def whiten(
    values: Tensor,
    mask: Tensor,
    moments: tuple[Tensor, Tensor, Tensor] | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Global advantage whitening ``A' = (A - mean) / (std + eps)`` over all valid tokens (method.md stage 5).

    ``std`` is the population standard deviation. ``moments`` (from :func:`masked_moments`, summed over
    ranks) replaces the local statistics. Padding stays 0; the result has ``values``' dtype.
    """
    total, total_sq, count = masked_moments(values, mask) if moments is None else moments
    mean = total / count
    std = (total_sq / count - mean * mean).clamp(min=0.0).sqrt()
    whitened = (values.double() - mean) / (std + eps)
    return torch.where(mask.bool(), whitened, 0.0).to(values.dtype)


def filter_advantages(advantages: Tensor, mask: Tensor, sigma: float = 3.0) -> tuple[Tensor, Tensor]:
    """StableReinforce advantage filter, the 3-sigma rule (R1-Reward §3.4, method.md stage 5).

    ``advantages`` are already standardized (:func:`whiten`); valid tokens with ``|A'| > sigma`` are set
    to 0, the window ``[-sigma, sigma]`` being centred on 0 as in the paper. The published R1-Reward
    code instead centres the window on the raw (pre-whitening) advantage mean, which contradicts its
    paper; this project follows the paper.

    Returns:
        ``(filtered, kept_mask)``: the filtered advantages (0 on padding and on filtered tokens) and the
        bool mask of valid tokens that survived.
    """
    kept = mask.bool() & (advantages.abs() <= sigma)
    return torch.where(kept, advantages, 0.0), kept
