"""The probe's correctness score on the vLLM engine (probe.correctness_samples K; runs in .venv-vllm).

As in test_probe_correctness.py, outputs are read as answers from their tokens, so scores vary with
the tokens vLLM samples. vLLM samples with other generators than transformers, so the two engines'
answers differ; what must hold is the same contract: shares of K seeded answers, drawn from the
sample's id whatever else is in the call.

    .venv-vllm/bin/pytest -q -m vllm tests/engines/test_vllm_probe_correctness.py
"""

from __future__ import annotations

import pytest

from egt.engines.probe import correctness_seed
from egt.engines.vllm_engine import vllm_available
from egt.engines.vllm_probe import VLLMProbe, probe_records_vllm
from egt.judge import parse_answer
from tests.engines.test_probe_correctness import read_answers

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_available(), reason="vllm is not importable here: run it in .venv-vllm"),
]

MAX_NEW = 6
K = 4
TEMPERATURE = 1.5


@pytest.fixture(scope="module")
def probe(sharp_dir):
    with VLLMProbe(
        sharp_dir, device="cpu", enforce_eager=True, max_model_len=1024, max_images=2, max_num_seqs=8
    ) as engine:
        yield engine


@pytest.fixture
def reading(probe, monkeypatch) -> VLLMProbe:
    read_answers(monkeypatch)  # vLLM's outputs become Generations through HFJudge.to_generation
    return probe


@pytest.fixture(scope="module")
def records(items) -> list[dict]:
    """Each pair twice, labelled 1 and 2."""
    return [
        {"id": f"rl-{index:06d}", "label": label, "item": index % len(items)}
        for index, label in enumerate([1, 1, 1, 2, 2, 2])
    ]


def _probe(engine, items, records, samples=K):
    return probe_records_vllm(
        engine,
        records,
        lambda r: items[r["item"]],
        batch_size=4,
        max_new_tokens=MAX_NEW,
        chunk_size=4,
        correctness_samples=samples,
        correctness_temperature=TEMPERATURE,
    )


def _correctness(out: list[dict]) -> dict[str, tuple]:
    return {r["id"]: (r["probe_correct"], r["correctness_score"], r["correctness_samples"]) for r in out}


def test_one_sample_scores_the_greedy_answer(reading, items, records):
    out = _probe(reading, items, records, samples=1)
    assert [r["correctness_score"] for r in out] == [float(r["probe_correct"]) for r in out]
    assert all(r["correctness_samples"] == 1 for r in out)
    assert {r["probe_correct"] for r in out} == {True, False}


def test_scores_are_the_share_of_k_seeded_answers(reading, items, records):
    out = _probe(reading, items, records)
    for record in out:
        assert record["correctness_samples"] == K
        assert record["correctness_score"] in {k / K for k in range(K + 1)}
        # Re-derived one sample at a time through the engine's seeded generate (the same per-request
        # seeds, drawn from the id's seed): the shard-wide call gave each sample its own answers.
        item = items[record["item"]]
        sampled = reading.generate([item] * K, MAX_NEW, TEMPERATURE, seed=correctness_seed(record["id"]))
        assert (
            record["correctness_score"] == sum(parse_answer(g.text) == record["label"] for g in sampled) / K
        )
    assert len({r["correctness_score"] for r in out}) >= 2  # not vacuous


def test_scores_reproduce_across_calls_shards_and_order(reading, items, records):
    first = _correctness(_probe(reading, items, records))
    assert _correctness(_probe(reading, items, records)) == first
    assert _correctness(_probe(reading, items, records[::-1])) == first
    assert _correctness(_probe(reading, items, records[2:5])) == {
        r["id"]: first[r["id"]] for r in records[2:5]
    }
