"""Scalar reward models: pooling a response's hidden states and the Bradley–Terry pairwise loss.

The scalar baselines the EGT paper compares against (method.md, "The scalar-head baselines"): a
linear head ``f`` on one hidden vector per (prompt, response) gives the reward ``r(x, y)``;

- Skywork-VL Reward (§3.3): the final hidden state after the response's last token
  (:func:`pool_last_token`);
- IXC-2.5-Reward (§3, "Reward Model"): the hidden states of all tokens, averaged (:func:`pool_mean`);

both trained on preference pairs with the Bradley–Terry loss (:func:`bradley_terry_loss`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Pooling = Literal["last_token", "mean"]


def pool_last_token(hidden: Tensor, mask: Tensor) -> Tensor:
    """The hidden state at each row's last unmasked position: ``[B, T, d], [B, T] -> [B, d]``.

    Padding may sit on either side (left-padded prompts, right-padded batches): the position is the
    highest index whose mask is 1. A row with no unmasked position is an error, not a zero vector.
    """
    if not bool(mask.any(dim=1).all()):
        raise ValueError("pool_last_token: a row has no unmasked position")
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.long() * (positions + 1)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pool_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """The mean of each row's unmasked hidden states: ``[B, T, d], [B, T] -> [B, d]``."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    count = weights.sum(dim=1)
    if not bool((count > 0).all()):
        raise ValueError("pool_mean: a row has no unmasked position")
    return (hidden * weights).sum(dim=1) / count


def pool(hidden: Tensor, mask: Tensor, how: Pooling) -> Tensor:
    """:func:`pool_last_token` or :func:`pool_mean`, by name (the spec's ``pooling``)."""
    if how == "last_token":
        return pool_last_token(hidden, mask)
    if how == "mean":
        return pool_mean(hidden, mask)
    raise ValueError(f"unknown pooling {how!r}; use 'last_token' or 'mean'")


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, reduction: str = "mean") -> Tensor:
    """``L = −log σ(r(x, y_w) − r(x, y_l))`` per pair (Skywork-VL Reward §3.4; IXC-2.5-Reward eq. 1,
    whose printed parentheses, ``log(σ(r_w)) − r_l``, are misplaced: the pairwise loss is meant).

    Computed as ``softplus(r_l − r_w)``, exact and finite for any margin (``−log σ(m)`` overflows
    for a large negative ``m`` when taken literally). ``reduction``: "mean", "sum" or "none".
    """
    losses = F.softplus(rejected.float() - chosen.float())
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> float:
    """Share of pairs whose chosen response scores higher; a tie counts as half (neither is preferred)."""
    if chosen.numel() == 0:
        raise ValueError("pairwise_accuracy: no pairs")
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return float(wins.mean())
