"""Entropy probing on transformers (method.md stage 3; EGT eqs. 3-4, Table 4).

Generation and entropy are separate passes: the model generates greedily, then one teacher-forced
pass over (prompt, output) yields the hidden states that predicted each output token, and the exact
full-vocabulary entropies are computed from them chunk by chunk. The two agree with generation-time
logits (tests/engines), and the split lets any engine do the generating.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from egt.algorithms.entropy import answer_entropy, chunked_token_entropy, mix_entropy, sentence_entropy
from egt.engines.hf import Generation, HFJudge, JudgeInput
from egt.judge import answer_token_index, is_well_formed, parse_answer


def entropy_columns(token_entropies: torch.Tensor, generation: Generation) -> dict:
    """The probe's per-sample columns: entropies, prediction, format (infinite without an answer)."""
    prediction = parse_answer(generation.text)
    index = answer_token_index(generation.pieces) if prediction is not None else None
    answer = answer_entropy(token_entropies, index)
    sentence = sentence_entropy(token_entropies)
    return {
        "probe_output": generation.text,
        "probe_prediction": prediction,
        "probe_well_formed": is_well_formed(generation.text),
        "probe_tokens": len(generation.token_ids),
        "answer_entropy": answer,
        "sentence_entropy": sentence,
        "mix_entropy": mix_entropy(answer, sentence),
    }


@torch.no_grad()
def token_entropies(
    judge: HFJudge, items: Sequence[JudgeInput], generations: Sequence[Generation], chunk_size: int
) -> list[torch.Tensor]:
    """Exact entropy of every generated token, per sample, from one teacher-forced pass."""
    hidden, mask = judge.completion_hidden(items, [g.token_ids for g in generations])
    lengths = mask.sum(dim=1).tolist()
    weight = judge.lm_head_weight
    return [
        chunked_token_entropy(hidden[row, :length], weight, chunk_size) for row, length in enumerate(lengths)
    ]


def probe_batch(
    judge: HFJudge, records: Sequence[dict], items: Sequence[JudgeInput], max_new_tokens: int, chunk_size: int
) -> list[dict]:
    generations = judge.generate(items, max_new_tokens, temperature=0.0)
    entropies = token_entropies(judge, items, generations, chunk_size)
    out = []
    for record, generation, entropy in zip(records, generations, entropies, strict=True):
        columns = entropy_columns(entropy, generation)
        columns["probe_correct"] = columns["probe_prediction"] == record["label"]
        out.append({**record, **columns})
    return out


def probe_records(
    judge: HFJudge,
    records: Sequence[dict],
    to_input: Callable[[dict], JudgeInput],
    batch_size: int,
    max_new_tokens: int,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    out: list[dict] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        out.extend(probe_batch(judge, batch, [to_input(r) for r in batch], max_new_tokens, chunk_size))
        if progress:
            progress(len(batch))
    return out


def finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]
