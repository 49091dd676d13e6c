import copy
import math

import numpy as np
import pytest

from egt.algorithms.curation import METRIC_COLUMNS, correctness_score, curate, removal_report

INF = math.inf


def _record(id_, answer, sentence, correct, truth_kind=None):
    record = {
        "id": id_,
        "answer_entropy": answer,
        "sentence_entropy": sentence,
        "mix_entropy": answer * sentence,
        "probe_correct": correct,
    }
    if truth_kind is not None:
        record["truth_kind"] = truth_kind
    return record


# answer ascending:   b 0.1, e 0.3, a 0.5, f 0.5 (tie: by id), c 0.9, d inf
# sentence ascending: f 0.2, d 0.5, c 1.0, a 2.0, b 3.0, e 4.0
# mix ascending:      f 0.1, b 0.3, c 0.9, a 1.0, e 1.2, d inf
POOL = [
    _record("a", 0.5, 2.0, True, "clean"),
    _record("b", 0.1, 3.0, False, "flipped"),
    _record("c", 0.9, 1.0, True, "ambiguous"),
    _record("d", INF, 0.5, False, "flipped"),
    _record("e", 0.3, 4.0, True, "clean"),
    _record("f", 0.5, 0.2, False),
]


def ids(records):
    return [r["id"] for r in records]


def test_metric_columns():
    assert METRIC_COLUMNS == {
        "answer": "answer_entropy",
        "sentence": "sentence_entropy",
        "mix": "mix_entropy",
    }


@pytest.mark.parametrize(
    ("metric", "keep", "expected"),
    [
        ("answer", 3, ["b", "e", "a"]),
        ("answer", 4, ["b", "e", "a", "f"]),
        ("answer", 100, ["b", "e", "a", "f", "c", "d"]),
        ("answer", 0, []),
        ("sentence", 2, ["f", "d"]),
        ("mix", 3, ["f", "b", "c"]),
    ],
)
def test_entropy_keeps_lowest(metric, keep, expected):
    assert ids(curate(POOL, "entropy", metric=metric, keep=keep)) == expected


@pytest.mark.parametrize(
    ("percentile", "expected"),
    [
        (20, ["b"]),  # q = 0.3 exactly: strict inequality drops e
        (30, ["b", "e"]),  # q = 0.4
        (50, ["b", "e"]),  # q = 0.5: both 0.5 ties are dropped
        (80, ["b", "e", "a", "f"]),  # q = 0.9 exactly (numpy would say NaN: 0.9 + inf·0)
        (90, ["b", "e", "a", "f", "c"]),  # q between 0.9 and inf: +inf, which inf itself does not pass
        (100, ["b", "e", "a", "f", "c"]),
    ],
)
def test_entropy_percentile_with_inf(percentile, expected):
    assert ids(curate(POOL, "entropy", percentile=percentile)) == expected


@pytest.mark.parametrize("percentile", [1, 10, 15, 33.3, 50, 72.5, 99, 100])
def test_entropy_percentile_matches_numpy_on_finite_pools(percentile):
    values = np.random.default_rng(0).exponential(size=57)
    pool = [{"id": f"s{i:02d}", "answer_entropy": float(v)} for i, v in enumerate(values)]
    q = np.percentile(values, percentile, method="linear")
    expected = sorted((r for r in pool if r["answer_entropy"] < q), key=lambda r: r["answer_entropy"])
    assert ids(curate(pool, "entropy", percentile=percentile)) == ids(expected)
    if percentile == 100:
        assert len(expected) == 56  # the maximum itself is not < q_100


def test_entropy_percentile_on_empty_pool():
    assert curate([], "entropy", percentile=50) == []


def test_random_is_seeded_uniform_and_sorted():
    chosen = np.random.default_rng(7).choice(6, size=3, replace=False)
    expected = sorted((POOL[i] for i in chosen), key=lambda r: (r["answer_entropy"], r["id"]))
    assert ids(curate(POOL, "random", keep=3, seed=7)) == ids(expected)
    assert curate(POOL, "random", keep=3, seed=7) == curate(POOL, "random", keep=3, seed=7)
    assert len({tuple(ids(curate(POOL, "random", keep=3, seed=s))) for s in range(10)}) > 1
    assert ids(curate(POOL, "random", keep=10, seed=3)) == ["b", "e", "a", "f", "c", "d"]


@pytest.mark.parametrize(
    ("order", "metric", "keep", "expected"),
    [
        # lowest first: the wrong ones b, d, f ranked by entropy (answer: b 0.1, f 0.5, d inf)
        ("lowest_first", "answer", 2, ["b", "f"]),
        ("lowest_first", "answer", 3, ["b", "f", "d"]),
        ("lowest_first", "answer", 4, ["b", "e", "f", "d"]),  # + the lowest-entropy right one, e
        ("lowest_first", "sentence", 2, ["f", "d"]),  # sentence: f 0.2, d 0.5, b 3.0
        # highest first: the right ones a, c, e ranked by entropy (answer: e 0.3, a 0.5, c 0.9)
        ("highest_first", "answer", 3, ["e", "a", "c"]),
        ("highest_first", "answer", 4, ["b", "e", "a", "c"]),  # + the lowest-entropy wrong one, b
        ("highest_first", "sentence", 4, ["f", "c", "a", "e"]),  # right c, a, e + wrong f
    ],
)
def test_accuracy_on_greedy_correctness(order, metric, keep, expected):
    assert ids(curate(POOL, "accuracy", metric=metric, keep=keep, accuracy_order=order)) == expected


def test_accuracy_lowest_first_is_the_default():
    assert curate(POOL, "accuracy", keep=3) == curate(POOL, "accuracy", keep=3, accuracy_order="lowest_first")


# Scores from K = 4 sampled answers, next to answer entropies:
#   p 0.25 (e 0.2), q 0.75 (e 0.1), r 0.5 (e 0.4), s 0.25 (e 0.3), t 1.0 (e 0.05), u 0.0 (e 0.6)
SCORED = [
    {**_record(id_, answer, 1.0, False), "correctness_score": score, "correctness_samples": 4}
    for id_, score, answer in [
        ("p", 0.25, 0.2),
        ("q", 0.75, 0.1),
        ("r", 0.5, 0.4),
        ("s", 0.25, 0.3),
        ("t", 1.0, 0.05),
        ("u", 0.0, 0.6),
    ]
]


@pytest.mark.parametrize(
    ("order", "keep", "expected"),
    [
        ("lowest_first", 1, ["u"]),
        ("lowest_first", 2, ["p", "u"]),  # u 0.0, then p (0.25, entropy 0.2 before s's 0.3)
        ("lowest_first", 3, ["p", "s", "u"]),
        ("lowest_first", 4, ["p", "s", "r", "u"]),  # returned by entropy ascending
        ("highest_first", 1, ["t"]),
        ("highest_first", 2, ["t", "q"]),
        ("highest_first", 4, ["t", "q", "p", "r"]),  # t 1.0, q 0.75, r 0.5, p (0.25, entropy 0.2)
    ],
)
def test_accuracy_on_fractional_scores(order, keep, expected):
    # probe_correct is False everywhere: the score, not the greedy answer, ranks the samples.
    assert ids(curate(SCORED, "accuracy", keep=keep, accuracy_order=order)) == expected


def test_accuracy_falls_back_to_probe_correct_for_older_probes():
    # p, q, t scored; a, b (no correctness_score) count as 1.0 and 0.0
    mixed = [SCORED[0], SCORED[1], SCORED[4], POOL[0], POOL[1]]
    assert ids(curate(mixed, "accuracy", keep=2, accuracy_order="lowest_first")) == ["b", "p"]
    assert ids(curate(mixed, "accuracy", keep=2, accuracy_order="highest_first")) == ["t", "a"]
    assert correctness_score(POOL[0]) == 1.0 and correctness_score(POOL[1]) == 0.0
    assert correctness_score(SCORED[2]) == 0.5


def test_accuracy_needs_labels():
    unlabeled = [{k: v for k, v in r.items() if k != "probe_correct"} for r in POOL]
    with pytest.raises(ValueError, match="probe_correct"):
        curate(unlabeled, "accuracy", keep=2)


@pytest.mark.parametrize("score", [-0.25, 1.5, math.nan])
def test_accuracy_rejects_scores_outside_the_unit_interval(score):
    with pytest.raises(ValueError, match="correctness score"):
        curate([*SCORED, {**SCORED[0], "id": "v", "correctness_score": score}], "accuracy", keep=2)


def test_all_keeps_the_pool_in_its_order():
    shuffled = [POOL[3], POOL[0], POOL[5], POOL[1], POOL[4], POOL[2]]
    kept = curate(shuffled, "all", keep=2)
    assert ids(kept) == ["d", "a", "f", "b", "e", "c"]
    assert all(k is p for k, p in zip(kept, shuffled, strict=True))
    assert kept is not shuffled
    assert ids(curate(shuffled, "all", percentile=10)) == ids(shuffled)
    assert ids(curate(shuffled, "all")) == ids(shuffled)  # keep and percentile are not read
    assert curate([], "all", keep=3) == []


@pytest.mark.parametrize(
    ("bucket", "keep", "expected"),
    [
        ("low", 2, ["b", "e"]),
        ("mid", 2, ["a", "f"]),  # ranks 2-3 of 0-5: centred on the median rank 2.5
        ("mid", 3, ["e", "a", "f"]),  # ranks 1-3: half a rank below centre
        ("high", 2, ["c", "d"]),
        ("high", 9, ["b", "e", "a", "f", "c", "d"]),
    ],
)
def test_bucket(bucket, keep, expected):
    assert ids(curate(POOL, "bucket", keep=keep, bucket=bucket)) == expected


def test_percentile_means_share_for_other_strategies():
    assert ids(curate(POOL, "bucket", percentile=50, bucket="high")) == ["f", "c", "d"]  # round(3.0)
    assert ids(curate(POOL, "bucket", percentile=25)) == ["b", "e"]  # round(1.5) = 2
    assert len(curate(POOL, "random", percentile=100)) == 6


@pytest.mark.parametrize("strategy", ["entropy", "random", "accuracy", "bucket"])
@pytest.mark.parametrize("metric", ["answer", "sentence", "mix"])
@pytest.mark.parametrize("order", ["lowest_first", "highest_first"])
def test_output_sorted_and_records_untouched(strategy, metric, order):
    pool = copy.deepcopy(POOL)
    kept = curate(pool, strategy, metric=metric, keep=4, bucket="mid", seed=1, accuracy_order=order)
    column = METRIC_COLUMNS[metric]
    keys = [(r[column], r["id"]) for r in kept]
    assert keys == sorted(keys)
    assert pool == POOL
    assert all(any(r is p for p in pool) for r in kept)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "entropy"}, "exactly one"),
        ({"strategy": "entropy", "keep": 2, "percentile": 10}, "exactly one"),
        ({"strategy": "entropy", "percentile": 0}, "percentile"),
        ({"strategy": "entropy", "percentile": 100.5}, "percentile"),
        ({"strategy": "entropy", "keep": -1}, "keep"),
        ({"strategy": "best", "keep": 2}, "strategy"),
        ({"strategy": "entropy", "metric": "length", "keep": 2}, "metric"),
        ({"strategy": "bucket", "bucket": "top", "keep": 2}, "bucket"),
        ({"strategy": "accuracy", "accuracy_order": "worst_first", "keep": 2}, "accuracy_order"),
        ({"strategy": "all", "accuracy_order": "ascending"}, "accuracy_order"),
        ({"strategy": "full", "keep": 2}, "strategy"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        curate(POOL, **kwargs)


def test_nan_entropy_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        curate([*POOL, _record("g", math.nan, 1.0, True)], "entropy", keep=2)


def test_removal_report():
    kept = curate(POOL, "entropy", keep=3)  # b, e, a
    assert removal_report(POOL, kept) == {
        "ambiguous": {"in_pool": 1, "kept": 0, "removed_share": 1.0},
        "clean": {"in_pool": 2, "kept": 2, "removed_share": 0.0},
        "flipped": {"in_pool": 2, "kept": 1, "removed_share": 0.5},
        "unknown": {"in_pool": 1, "kept": 0, "removed_share": 1.0},
    }
    with pytest.raises(ValueError, match="not in the pool"):
        removal_report(POOL, [{"id": "z"}])
