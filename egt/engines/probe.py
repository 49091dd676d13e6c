"""Entropy probing on transformers (method.md stage 3; EGT eqs. 3-4, Table 4).

Generation and entropy are separate passes: the model generates greedily, then one teacher-forced
pass over (prompt, output) yields the hidden states that predicted each output token, and the exact
full-vocabulary entropies are computed from them chunk by chunk. The two agree with generation-time
logits (tests/engines), and the split lets any engine do the generating.

Correctness score (``probe.correctness_samples`` K): with K = 1 it is the greedy answer's
correctness (0 or 1, ``probe_correct``); with K > 1 the probe also samples K answers at
``probe.correctness_temperature`` and scores the share that parses to the label (an unparseable
answer counts wrong). The greedy answer alone gives the entropies. The K answers are drawn from a
seed made of the sample's id (:func:`correctness_seed`), never from its position in a batch, shard or
part, so a resumed or differently partitioned probe draws the same answers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch

from egt.algorithms.entropy import answer_entropy, chunked_token_entropy, mix_entropy, sentence_entropy
from egt.engines.hf import Generation, HFJudge, JudgeInput
from egt.judge import answer_token_index, is_well_formed, parse_answer

# Fixed: the correctness answers of a sample depend on its id alone (module docstring).
CORRECTNESS_SEED = 0


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


def correctness_seed(record_id: str, seed: int = CORRECTNESS_SEED) -> int:
    """The 63-bit seed of one sample's K correctness answers, from ``seed`` and the sample id.

    A hash, not Python's ``hash`` (salted per process): every process and resume gets the same seed.
    """
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def correctness_columns(label: int, greedy: int | None, sampled: Sequence[int | None]) -> dict:
    """``probe_correct`` (the greedy answer), ``correctness_score`` and ``correctness_samples`` K.

    ``sampled`` are the parsed answers of the K sampled outputs (None: unparseable, counted wrong);
    empty means K = 1, whose score is the greedy answer's correctness.
    """
    correct = greedy == label
    if not sampled:
        return {"probe_correct": correct, "correctness_score": float(correct), "correctness_samples": 1}
    score = sum(prediction == label for prediction in sampled) / len(sampled)
    return {"probe_correct": correct, "correctness_score": score, "correctness_samples": len(sampled)}


def sampled_answers(
    judge: HFJudge, record_id: str, item: JudgeInput, samples: int, temperature: float, max_new_tokens: int
) -> list[int | None]:
    """The parsed answers of ``samples`` outputs sampled at ``temperature`` for one sample.

    One batch of ``samples`` copies of the prompt, seeded by :func:`correctness_seed`: transformers
    samples a batch from one global generator, so only a batch of this sample alone draws the same
    answers whatever else is probed with it.
    """
    generations = judge.generate([item] * samples, max_new_tokens, temperature, correctness_seed(record_id))
    return [parse_answer(g.text) for g in generations]


def probe_batch(
    judge: HFJudge,
    records: Sequence[dict],
    items: Sequence[JudgeInput],
    max_new_tokens: int,
    chunk_size: int,
    correctness_samples: int = 1,
    correctness_temperature: float = 1.0,
) -> list[dict]:
    """Greedy outputs, their entropies and the correctness columns of a batch of samples."""
    if correctness_samples > 1 and correctness_temperature <= 0:
        raise ValueError(f"correctness_temperature must be > 0, got {correctness_temperature}")
    generations = judge.generate(items, max_new_tokens, temperature=0.0)
    entropies = token_entropies(judge, items, generations, chunk_size)
    out = []
    for record, item, generation, entropy in zip(records, items, generations, entropies, strict=True):
        columns = entropy_columns(entropy, generation)
        sampled: list[int | None] = []
        if correctness_samples > 1:
            sampled = sampled_answers(
                judge, record["id"], item, correctness_samples, correctness_temperature, max_new_tokens
            )
        columns |= correctness_columns(record["label"], columns["probe_prediction"], sampled)
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
    correctness_samples: int = 1,
    correctness_temperature: float = 1.0,
) -> list[dict]:
    """:func:`probe_batch` over ``records`` in batches of ``batch_size``."""
    out: list[dict] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        items = [to_input(r) for r in batch]
        out.extend(
            probe_batch(
                judge, batch, items, max_new_tokens, chunk_size, correctness_samples, correctness_temperature
            )
        )
        if progress:
            progress(len(batch))
    return out


def finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]
