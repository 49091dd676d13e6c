"""The EGT-effect diagnostics against independent computations and hand cases."""

from __future__ import annotations

import math
import random

import pytest

from egt.report.effect import (
    CONFIDENT_ENTROPY,
    auroc,
    clean_accuracy,
    likely_flips,
    removed_share_by_lowest,
    reward_trend,
    separation,
)


def _pairwise_auroc(positives, negatives):
    """The definition, pair by pair."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_auroc_hand_cases():
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auroc([1.0], [1.0]) == 0.5
    assert auroc([math.inf], [5.0, math.inf]) == 0.75  # no answer ranks above every finite entropy
    assert auroc([], [1.0]) is None and auroc([1.0], []) is None


def test_auroc_matches_the_pairwise_definition_with_ties():
    rng = random.Random(0)
    for _ in range(50):
        positives = [
            rng.choice([0.1, 0.2, 0.3, math.inf]) + rng.choice([0, 0.05]) for _ in range(rng.randint(1, 9))
        ]
        negatives = [rng.choice([0.1, 0.2, 0.3, math.inf]) for _ in range(rng.randint(1, 9))]
        assert auroc(positives, negatives) == pytest.approx(_pairwise_auroc(positives, negatives))


def _record(kind: str, entropy: float, correct: bool, label: int = 1) -> dict:
    prediction = label if correct else 3 - label
    return {
        "truth_kind": kind,
        "answer_entropy": entropy,
        "sentence_entropy": 1.0,
        "label": label,
        "probe_prediction": prediction,
        "probe_correct": correct,
    }


def test_clean_accuracy_and_separation():
    records = [_record("clean", e / 10, e < 8) for e in range(10)]  # right below 0.8 nats, wrong above
    assert clean_accuracy(records) == 0.8
    records += [_record("ambiguous", 2.0, True), _record("ambiguous", 0.05, False)]
    # 2.0 beats all 10 clean entropies, 0.05 beats one (0.0): (10 + 1) / 20
    assert separation(records, "answer_entropy") == pytest.approx(11 / 20)
    assert separation(records, "sentence_entropy") == 0.5  # all tied
    assert clean_accuracy([_record("ambiguous", 0.1, True)]) is None


def test_likely_flips_counts_confident_disagreements_against_the_truth():
    records = [
        _record("flipped", 0.01, correct=False),  # confident, against its (wrong) label: flagged, a true flip
        _record("flipped", 0.69, correct=False),  # against the label but unsure: not flagged
        _record("flipped", 0.01, correct=True),  # the probe agreed with the wrong label
        _record("clean", 0.02, correct=False),  # a confident mistake: flagged, not a flip
        _record("clean", 0.02, correct=True),
        {**_record("clean", math.inf, correct=False), "probe_prediction": None},  # no answer
    ]
    flags = likely_flips(records)
    assert (flags.flagged, flags.true_flips, flags.flips, flags.flips_answered_against_label) == (2, 1, 3, 2)
    assert flags.precision == 0.5 and flags.recall == pytest.approx(1 / 3)
    assert likely_flips(records, max_entropy=1.0).flagged == 3
    assert round(CONFIDENT_ENTROPY, 4) == 0.3251


def test_reward_trend_compares_the_first_and_last_quarters():
    history = [{"reward_mean": float(v)} for v in (0, 1, 2, 3, 4, 5, 6, 7)]
    assert reward_trend(history) == (0.5, 6.5)
    assert reward_trend([{"reward_mean": 1.0}]) is None
    assert reward_trend([{"reward_mean": 1.0}, {"reward_mean": float("nan")}, {"reward_mean": 2.0}]) == (
        1.0,
        2.0,
    )


def test_removed_share_by_lowest():
    records = [_record("clean", 0.1, True), _record("ambiguous", 0.9, True), _record("ambiguous", 0.05, True)]
    records[2]["sentence_entropy"] = 2.0
    assert removed_share_by_lowest(records, "answer_entropy", 2, "ambiguous") == 0.5
    assert removed_share_by_lowest(records, "sentence_entropy", 2, "ambiguous") == 0.5
    assert removed_share_by_lowest(records, "sentence_entropy", 1, "ambiguous") == 1.0  # a tie: record order
    assert removed_share_by_lowest(records, "answer_entropy", 1, "flipped") is None
