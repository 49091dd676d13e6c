"""Entropy probing (method.md stage 3; EGT paper §2.3, eqs. 3-4 and Table 4).

Token entropies are exact over the whole vocabulary, in nats, from the model's raw next-token
distribution (temperature 1, no top-p/top-k). By convention ``token_entropies[j]`` is the entropy of
the distribution that emitted generated token ``t_j``, i.e. of the logits at sequence position
``prompt_len + j - 1``.
"""

import math

import torch
from torch import Tensor


def _entropy_float32_(logits: Tensor) -> Tensor:
    """Entropy over the last dim of a float32 tensor that the caller owns; it is overwritten.

    ``H = logsumexp(s) - Σ softmax(s)·s`` with ``s = z - max(z)``: both terms are non-negative
    (``s <= 0``), so there is no cancellation, and ``-inf`` logits (``p = 0``) contribute exactly 0.
    Peak extra memory is one buffer the size of ``logits``.
    """
    shifted = logits.sub_(logits.amax(dim=-1, keepdim=True))
    probs = shifted.exp()
    normalizer = probs.sum(dim=-1, keepdim=True)
    probs.div_(normalizer)
    # -inf -> most negative finite float: p·s is then 0·finite = 0 instead of 0·(-inf) = NaN.
    shifted.clamp_(min=torch.finfo(torch.float32).min)
    return normalizer.log_().squeeze(-1) - probs.mul_(shifted).sum(dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Exact entropy (nats) of ``softmax(logits)`` over the last dim, in float32 (method.md stage 3).

    Computed as ``logsumexp(z) - Σ softmax(z)·z`` on max-shifted logits, never as ``-Σ p log p``
    (NaN where ``p = 0``). ``-inf`` entries are allowed; a row that is entirely ``-inf`` is not a
    distribution and gives NaN. The input is not modified.
    """
    return _entropy_float32_(logits.to(torch.float32, copy=True))


@torch.no_grad()
def chunked_token_entropy(
    hidden: Tensor,
    lm_head_weight: Tensor,
    chunk_size: int = 256,
    lm_head_bias: Tensor | None = None,
) -> Tensor:
    """Per-position entropies ``H_j`` of ``softmax(hidden @ W.T + b)`` (EGT eqs. 3-4, method.md stage 3).

    Only ``chunk_size × |V|`` logits exist at a time (plus one float32 buffer of the same size), so
    memory does not grow with ``L × |V|``. The matmul runs in the inputs' dtype, as the model's own
    ``lm_head`` would; each logits chunk is then upcast to float32. Probing is inference only: no
    gradient is tracked.

    Args:
        hidden: ``[L, d]`` final hidden states (after the model's last norm).
        lm_head_weight: ``[V, d]`` output embedding.
        chunk_size: positions per chunk.
        lm_head_bias: optional ``[V]`` output bias.

    Returns:
        ``[L]`` float32 entropies in nats.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        logits = hidden[start : start + chunk_size] @ lm_head_weight.T
        if lm_head_bias is not None:
            logits += lm_head_bias
        out[start : start + chunk_size] = _entropy_float32_(logits.float())
    return out


def answer_entropy(token_entropies: Tensor, answer_index: int | None) -> float:
    """Answer-token entropy, EGT eq. 3: ``H`` at the position that emits the answer token.

    ``answer_index`` indexes the generated tokens (the first token after ``<answer>``). ``None`` means
    the output has no parseable answer: ``+inf``, the least reliable (method.md stage 3).
    """
    if answer_index is None:
        return math.inf
    if not 0 <= answer_index < token_entropies.shape[0]:
        raise IndexError(f"answer_index {answer_index} outside {token_entropies.shape[0]} generated tokens")
    return float(token_entropies[answer_index])


def sentence_entropy(token_entropies: Tensor) -> float:
    """Reasoning-sentence entropy, EGT eq. 4: mean of ``H_j`` over all L generated tokens (+inf if L = 0)."""
    if token_entropies.numel() == 0:
        return math.inf
    return float(token_entropies.double().mean())


def mix_entropy(answer: float, sentence: float) -> float:
    """Mix entropy, EGT Table 4: ``answer × sentence``; an infinite factor gives ``+inf`` (not ``inf·0``)."""
    if math.isinf(answer) or math.isinf(sentence):
        return math.inf
    return answer * sentence
