"""Best of N candidates with a pairwise judge (a reasoning reward model), as pure functions.

A reasoning reward model compares two responses; to pick the best of N it runs a tournament. Every
comparison is judged in both response orders (the evaluate stage's rule: a judge that favours a
position must not decide), so one comparison costs two model calls:

- ``round_robin``: every unordered pair once, N(N−1)/2 comparisons = N(N−1) calls; a candidate's
  score is its Copeland score, the sum of its comparison shares (a share is the fraction of the two
  orders in which it was preferred; an unparseable order counts for neither). Ranks all N.
- ``knockout``: single elimination, N−1 comparisons = 2(N−1) calls; a candidate's score is the
  number of rounds it went through (a bye counts), so the champion alone has the most. Finds a
  winner, ranks the rest only coarsely.

A scalar reward model needs no tournament: N scores in N passes.

The comparator is a callable over a batch of (i, j) index pairs returning, for each, the share in
which ``i`` won, so an engine judges a whole round in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Literal

Tournament = Literal["round_robin", "knockout"]
Comparator = Callable[[Sequence[tuple[int, int]]], Sequence[float]]


def calls_needed(n: int, tournament: Tournament) -> int:
    """Model calls to rank ``n`` candidates (two orders per comparison)."""
    comparisons = n * (n - 1) // 2 if tournament == "round_robin" else max(n - 1, 0)
    return 2 * comparisons


def order_share(verdicts: Sequence[bool | None]) -> float:
    """The share of orders in which the first candidate was preferred; unparseable orders (None) are
    left out, and with none left the comparison is a tie (0.5)."""
    counted = [v for v in verdicts if v is not None]
    return sum(counted) / len(counted) if counted else 0.5


def round_robin(n: int, compare: Comparator) -> list[float]:
    """Copeland scores of ``n`` candidates: every pair compared once (module docstring)."""
    pairs = list(combinations(range(n), 2))
    scores = [0.0] * n
    for (i, j), share in zip(pairs, compare(pairs) if pairs else [], strict=True):
        scores[i] += share
        scores[j] += 1.0 - share
    return scores


def knockout(n: int, compare: Comparator) -> list[float]:
    """Rounds each of ``n`` candidates went through in a single-elimination bracket in index order;
    an odd one out advances too (a bye). A tied comparison (share 0.5) goes to the lower index."""
    scores = [0.0] * n
    alive = list(range(n))
    while len(alive) > 1:
        pairs = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        winners = []
        for (i, j), share in zip(pairs, compare(pairs), strict=True):
            winner = i if share >= 0.5 else j
            scores[winner] += 1.0
            winners.append(winner)
        if len(alive) % 2:
            scores[alive[-1]] += 1.0
            winners.append(alive[-1])
        alive = winners
    return scores


def best(scores: Sequence[float]) -> int:
    """Index of the highest score; the first on a tie."""
    if not scores:
        raise ValueError("best: no candidates")
    return max(range(len(scores)), key=lambda k: (scores[k], -k))


def rank(n: int, compare: Comparator, tournament: Tournament) -> list[float]:
    if tournament == "round_robin":
        return round_robin(n, compare)
    if tournament == "knockout":
        return knockout(n, compare)
    raise ValueError(f"unknown tournament {tournament!r}; use 'round_robin' or 'knockout'")
