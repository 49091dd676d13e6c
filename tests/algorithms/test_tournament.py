import pytest

from egt.algorithms.tournament import best, calls_needed, knockout, order_share, rank, round_robin


def strength_judge(strengths, log=None):
    """A comparator that prefers the stronger candidate (a tie when equal), recording its batches."""

    def compare(pairs):
        if log is not None:
            log.append(list(pairs))
        return [
            1.0 if strengths[i] > strengths[j] else 0.0 if strengths[i] < strengths[j] else 0.5
            for i, j in pairs
        ]

    return compare


def test_round_robin_gives_copeland_scores_in_one_batch():
    log = []
    scores = round_robin(4, strength_judge([2, 9, 5, 5], log))
    # 1 beats all three; 2 and 3 beat 0 and tie each other; 0 loses all
    assert scores == [0.0, 3.0, 1.5, 1.5]
    assert len(log) == 1 and len(log[0]) == 6
    assert best(scores) == 1


def test_knockout_plays_rounds_and_an_odd_one_out_advances():
    log = []
    scores = knockout(5, strength_judge([1, 4, 3, 2, 9], log))
    # round 1: (0,1) → 1, (2,3) → 2, 4 advances; round 2: (1,2) → 1, 4 advances; final (1,4) → 4
    assert log == [[(0, 1), (2, 3)], [(1, 2)], [(1, 4)]]
    assert scores == [0.0, 2.0, 1.0, 0.0, 3.0]  # rounds gone through, byes included
    assert best(scores) == 4
    assert sum(len(batch) for batch in log) == 4 == calls_needed(5, "knockout") // 2


def test_a_tied_knockout_comparison_goes_to_the_lower_index():
    assert knockout(2, lambda pairs: [0.5]) == [1.0, 0.0]


def test_calls_needed_counts_both_orders():
    assert calls_needed(4, "round_robin") == 12
    assert calls_needed(4, "knockout") == 6
    assert calls_needed(1, "round_robin") == calls_needed(1, "knockout") == 0


def test_order_share_leaves_unparseable_orders_out():
    assert order_share([True, True]) == 1.0
    assert order_share([True, False]) == 0.5
    assert order_share([False, None]) == 0.0
    assert order_share([None, None]) == 0.5


def test_one_candidate_and_bad_names():
    assert round_robin(1, strength_judge([1])) == [0.0]
    assert knockout(1, strength_judge([1])) == [0.0]
    with pytest.raises(ValueError, match="unknown tournament 'swiss'"):
        rank(3, strength_judge([1, 2, 3]), "swiss")
    with pytest.raises(ValueError, match="no candidates"):
        best([])
