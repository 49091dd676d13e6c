"""The probe's correctness score on the transformers engine (probe.correctness_samples K).

The tiny models write no parseable answer, so every score would be 0 and every check trivial.
``reading`` gives the sharp model's outputs an answer read from their tokens (the parity of the sum
of their ids): the tokens are still the engine's own greedy or seeded samples, and the answer moves
with them, so scores spread over {0, 1/K, …, 1} and depend on exactly which tokens were drawn.
"""

from __future__ import annotations

import pytest

from egt.engines.hf import Generation, HFJudge
from egt.engines.probe import (
    correctness_columns,
    correctness_seed,
    probe_batch,
    probe_records,
    sampled_answers,
)
from egt.judge import parse_answer

MAX_NEW = 6
K = 4
TEMPERATURE = 1.5


def read_answer(generation: Generation) -> Generation:
    """The same tokens, written as ``<answer>N</answer>`` with N from their ids (module docstring).

    The digit sits in the last token's piece, so the answer token is a real generated position.
    """
    text = f"<answer>{1 + sum(generation.token_ids) % 2}</answer>"
    return Generation(generation.token_ids, text, [""] * (len(generation.token_ids) - 1) + [text])


def read_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``HFJudge`` output (greedy or sampled) names an answer read from its tokens."""
    real = HFJudge.to_generation
    monkeypatch.setattr(HFJudge, "to_generation", lambda self, ids: read_answer(real(self, ids)))


@pytest.fixture
def reading(judge, monkeypatch) -> HFJudge:
    read_answers(monkeypatch)
    return judge


@pytest.fixture(scope="module")
def records(items) -> list[dict]:
    """Each pair twice, labelled 1 and 2: every greedy answer is right for exactly one of the two."""
    return [
        {"id": f"rl-{index:06d}", "label": label, "item": index % len(items)}
        for index, label in enumerate([1, 1, 1, 2, 2, 2])
    ]


def _inputs(items, records):
    return [items[r["item"]] for r in records]


def _probe(judge, items, records, batch_size, samples=K):
    return probe_records(
        judge,
        records,
        lambda r: items[r["item"]],
        batch_size,
        MAX_NEW,
        chunk_size=4,
        correctness_samples=samples,
        correctness_temperature=TEMPERATURE,
    )


def _correctness(out: list[dict]) -> dict[str, tuple]:
    return {r["id"]: (r["probe_correct"], r["correctness_score"], r["correctness_samples"]) for r in out}


def test_correctness_columns():
    assert correctness_columns(1, 1, []) == {
        "probe_correct": True,
        "correctness_score": 1.0,
        "correctness_samples": 1,
    }
    assert correctness_columns(2, None, []) == {
        "probe_correct": False,
        "correctness_score": 0.0,
        "correctness_samples": 1,
    }
    # An unparseable answer (None) counts wrong; the greedy answer is not among the K.
    assert correctness_columns(1, 2, [1, None, 2, 1]) == {
        "probe_correct": False,
        "correctness_score": 0.5,
        "correctness_samples": 4,
    }


def test_correctness_seed_depends_on_the_id_alone():
    # Pinned: a changed derivation would change the answers of an unchanged spec (same fingerprint).
    assert correctness_seed("rl-000000") == 6858036164256616310
    assert correctness_seed("rl-000000") != correctness_seed("rl-000001")
    assert correctness_seed("rl-000000", seed=1) != correctness_seed("rl-000000")
    assert 0 <= correctness_seed("x") < 2**63


def test_one_sample_scores_the_greedy_answer_without_sampling(reading, items, records, monkeypatch):
    temperatures = []
    real = HFJudge.generate

    def spy(self, batch, max_new_tokens, temperature=0.0, seed=None):
        temperatures.append(temperature)
        return real(self, batch, max_new_tokens, temperature, seed)

    monkeypatch.setattr(HFJudge, "generate", spy)
    out = _probe(reading, items, records, batch_size=3, samples=1)
    assert temperatures == [0.0, 0.0]  # two greedy batches, nothing sampled
    assert [r["correctness_score"] for r in out] == [float(r["probe_correct"]) for r in out]
    assert all(r["correctness_samples"] == 1 for r in out)
    assert {r["probe_correct"] for r in out} == {True, False}


def test_scores_are_the_share_of_k_sampled_answers_matching_the_label(reading, items, records):
    out = _probe(reading, items, records, batch_size=3)
    for record, item in zip(out, _inputs(items, records), strict=True):
        assert record["correctness_samples"] == K
        assert record["correctness_score"] in {k / K for k in range(K + 1)}
        # Re-derived from the engine's own seeded sampling: K copies of the prompt, the id's seed.
        sampled = reading.generate([item] * K, MAX_NEW, TEMPERATURE, seed=correctness_seed(record["id"]))
        answers = [parse_answer(g.text) for g in sampled]
        assert answers == sampled_answers(reading, record["id"], item, K, TEMPERATURE, MAX_NEW)
        assert record["correctness_score"] == sum(a == record["label"] for a in answers) / K
        # The greedy answer is not one of the K: probe_correct stays the greedy answer's.
        greedy = reading.generate([item], MAX_NEW)[0]
        assert record["probe_correct"] == (parse_answer(greedy.text) == record["label"])
    # The checks above are not vacuous: the scores differ from sample to sample, and from greedy.
    assert len({r["correctness_score"] for r in out}) >= 3
    assert any(r["correctness_score"] != float(r["probe_correct"]) for r in out)


def test_scores_reproduce_across_runs_batch_sizes_and_order(reading, items, records):
    first = _correctness(_probe(reading, items, records, batch_size=3))
    assert _correctness(_probe(reading, items, records, batch_size=3)) == first
    assert _correctness(_probe(reading, items, records, batch_size=1)) == first
    assert _correctness(_probe(reading, items, records[::-1], batch_size=4)) == first
    # A shard holding only some of the samples: the same answers for those.
    assert _correctness(_probe(reading, items, records[2:5], batch_size=2)) == {
        r["id"]: first[r["id"]] for r in records[2:5]
    }


def test_unparseable_sampled_answers_count_wrong(judge, items, records):
    out = _probe(judge, items, records[:3], batch_size=3, samples=3)  # the plain model: no answers
    assert [(r["correctness_score"], r["correctness_samples"]) for r in out] == [(0.0, 3)] * 3


def test_sampling_needs_a_positive_temperature(judge, items, records):
    with pytest.raises(ValueError, match="correctness_temperature"):
        probe_batch(judge, records[:1], _inputs(items, records[:1]), MAX_NEW, 4, 2, 0.0)
