"""Losses: StableReinforce (method.md stage 5; R1-Reward §3.4) and the SFT NLL (stage 2; EGT eq. 2)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """``log softmax(logits)[token]`` per position, float32: ``[B, T, V], [B, T] -> [B, T]``.

    Rows are upcast to float32 one sequence at a time, so no float32 copy of the whole ``B × T × V``
    logits is made in the forward pass. ``tokens`` must be valid vocabulary ids (mask padding
    afterwards, do not pass -100).
    """
    return torch.stack([_row_logprobs(row.float(), ids) for row, ids in zip(logits, tokens, strict=True)])


def _row_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def stable_reinforce_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    log_ratio_min: float = math.log(1e-3),
    log_ratio_max: float = math.log(1e3),
) -> tuple[Tensor, dict[str, float]]:
    """StableReinforce clipped policy loss with pre-clip (R1-Reward §3.4 and Algorithm 1, method.md stage 5).

    ``Δ = clamp(log π - log π_old, log_ratio_min, log_ratio_max)``, ``ρ = exp(Δ)``,
    ``L_t = -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A)``; the loss is the mean over each sequence's valid tokens,
    then the mean over sequences that have at least one valid token (0 if none has). Pre-clip keeps
    ``exp`` finite and zeroes the gradient of tokens whose log-ratio left the window.

    Args:
        logprobs: ``[B, T]`` log-probabilities of the taken tokens under the current policy.
        old_logprobs: ``[B, T]`` the same under the policy that generated the rollouts.
        advantages: ``[B, T]`` filtered advantages (:func:`egt.algorithms.advantages.filter_advantages`).
        mask: ``[B, T]`` 1 on the tokens to average over.

    Returns:
        ``(loss, stats)``; stats: ``loss``, ``clip_fraction`` (share of valid tokens where the clipped
        term is the active minimum), ``preclip_fraction`` (share where the clamp bit) and ``ratio_mean``
        (mean ``ρ`` after pre-clip), all over valid tokens.
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)
    clamped = log_ratio.clamp(min=log_ratio_min, max=log_ratio_max)
    ratio = clamped.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    token_loss = torch.where(valid, -torch.minimum(unclipped, clipped), 0.0)

    lengths = valid.sum(dim=1)
    has_tokens = lengths > 0
    seq_loss = token_loss.sum(dim=1) / lengths.clamp(min=1)
    loss = seq_loss[has_tokens].mean() if has_tokens.any() else token_loss.sum() * 0.0

    with torch.no_grad():
        n = valid.sum().clamp(min=1).float()
        stats = {
            "loss": float(loss),
            "clip_fraction": float(((clipped < unclipped) & valid).sum() / n),
            "preclip_fraction": float(((clamped != log_ratio) & valid).sum() / n),
            "ratio_mean": float(torch.where(valid, ratio, 0.0).sum() / n),
        }
    return loss, stats


def sft_nll_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean NLL of the target tokens, EGT eq. 2 ``L(θ) = -E log p_θ(r_i, l_i | d_i)`` (method.md stage 2).

    ``logits`` ``[N, V]`` (upcast to float32), ``targets`` ``[N]``; rows whose target is
    :data:`IGNORE_INDEX` (prompt and image tokens) are left out. No target row gives 0.
    """
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
