"""The order RL visits the curated samples in."""

from __future__ import annotations

import math

import pytest

from egt.algorithms.curriculum import batch_for_step, epoch_order

RECORDS = [{"id": f"s{i}", "answer_entropy": e} for i, e in enumerate([0.5, math.inf, 0.1, 0.5, 0.3])]


def ids(records):
    return [r["id"] for r in records]


def test_ascending_sorts_by_the_metric_with_infinity_last_and_ties_by_id():
    assert ids(epoch_order(RECORDS, "ascending", "answer_entropy", 0, 0)) == ["s2", "s4", "s0", "s3", "s1"]


def test_as_curated_keeps_the_given_order():
    assert ids(epoch_order(RECORDS, "as_curated", "answer_entropy", 0, 3)) == ids(RECORDS)


def test_shuffled_is_a_seeded_permutation_drawn_anew_each_epoch():
    epochs = [ids(epoch_order(RECORDS, "shuffled", "answer_entropy", 7, e)) for e in range(4)]
    assert all(sorted(order) == sorted(ids(RECORDS)) for order in epochs)
    assert len({tuple(order) for order in epochs}) > 1  # the epochs do not all repeat one order
    assert epochs == [ids(epoch_order(RECORDS, "shuffled", "answer_entropy", 7, e)) for e in range(4)]
    other_seed = [ids(epoch_order(RECORDS, "shuffled", "answer_entropy", 8, e)) for e in range(4)]
    assert other_seed != epochs


def test_steps_slice_their_epochs_order_and_wrap():
    # 5 records, batches of 2: three steps per epoch (the last holds one record).
    steps = [ids(batch_for_step(RECORDS, s, 2, "ascending")) for s in range(4)]
    assert steps == [["s2", "s4"], ["s0", "s3"], ["s1"], ["s2", "s4"]]
    shuffled = [ids(batch_for_step(RECORDS, s, 2, "shuffled", seed=3)) for s in range(6)]
    first, second = [i for b in shuffled[:3] for i in b], [i for b in shuffled[3:] for i in b]
    assert sorted(first) == sorted(second) == sorted(ids(RECORDS))  # each epoch visits every record once
    assert first == ids(epoch_order(RECORDS, "shuffled", "answer_entropy", 3, 0))
    assert second == ids(epoch_order(RECORDS, "shuffled", "answer_entropy", 3, 1))


def test_an_unknown_order_is_named():
    with pytest.raises(ValueError, match="unknown order 'random'"):
        epoch_order(RECORDS, "random", "answer_entropy", 0, 0)
