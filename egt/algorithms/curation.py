"""Entropy-guided curation and the paper's ablation baselines (method.md stage 4; EGT §2.3, Tables 3-5).

Records are plain dicts carrying an ``"id"`` (str), the probe's entropy columns (floats, ``+inf``
allowed: an unparseable answer), ``"probe_correct"`` (bool: the greedy answer was right) and, from
probes that score it, ``"correctness_score"`` (float in [0, 1]). Every strategy returns the kept
records themselves (not copies, not mutated). All but ``"all"`` return them sorted ascending by the
chosen entropy, ties by id; ``"all"`` keeps the pool's own order. The RL stage decides the order it
visits them in itself (``rl.order``; method.md stage 5).
"""

import math
from collections import Counter
from typing import Literal

import numpy as np

METRIC_COLUMNS = {"answer": "answer_entropy", "sentence": "sentence_entropy", "mix": "mix_entropy"}

Strategy = Literal["entropy", "random", "accuracy", "bucket", "all"]
Metric = Literal["answer", "sentence", "mix"]
Bucket = Literal["low", "mid", "high"]
AccuracyOrder = Literal["lowest_first", "highest_first"]
STRATEGIES = ("entropy", "random", "accuracy", "bucket", "all")
ACCURACY_ORDERS = ("lowest_first", "highest_first")


def _entropy(record: dict, column: str) -> float:
    value = float(record[column])
    if math.isnan(value):
        raise ValueError(f"record {record['id']!r} has NaN {column}")
    return value


def correctness_score(record: dict) -> float:
    """The probe's correctness score of a record, in [0, 1] (method.md stage 3).

    The share of the probe's sampled answers that were right (``"correctness_score"``); records
    probed before that column existed fall back to the greedy answer's ``float(probe_correct)``,
    which is what the score is with one answer.
    """
    if "correctness_score" in record:
        score = float(record["correctness_score"])
    elif "probe_correct" in record:
        score = float(record["probe_correct"])
    else:
        raise ValueError(
            f"record {record['id']!r} has no correctness label: neither correctness_score nor probe_correct"
        )
    if not 0.0 <= score <= 1.0:  # also rejects NaN
        raise ValueError(f"record {record['id']!r} has correctness score {score}, outside [0, 1]")
    return score


def _by_correctness(records: list[dict], column: str, order: AccuracyOrder) -> list[dict]:
    """Records ranked by correctness score (EGT Table 3), ties by ``column`` ascending, then id.

    ``lowest_first`` puts the lowest scores first ("selecting samples with the lowest correctness
    scores", the paper's Table 3 caption); ``highest_first`` the highest (correctly probed first).
    """
    sign = 1.0 if order == "lowest_first" else -1.0
    return sorted(records, key=lambda r: (sign * correctness_score(r), _entropy(r, column), r["id"]))


def _ascending(records: list[dict], column: str) -> list[dict]:
    """Records sorted by ``column`` ascending (``+inf`` last), ties broken by id."""
    return sorted(records, key=lambda r: (_entropy(r, column), r["id"]))


def _percentile(values: np.ndarray, percentile: float) -> float:
    """numpy's "linear" p-th percentile, extended to ``+inf`` values.

    ``+inf`` ranks above every finite value. numpy itself returns NaN whenever an infinite value is
    an interpolation end (``inf · 0``, ``inf - inf``); here the percentile is the value at the
    virtual index when that index is whole, else ``+inf`` when either end is infinite.
    """
    ranked = np.sort(values)
    index = (len(ranked) - 1) * (percentile / 100)
    lo = math.floor(index)
    hi = min(lo + 1, len(ranked) - 1)
    if index == lo:
        return float(ranked[lo])
    if math.isinf(ranked[hi]):
        return math.inf
    return float(np.percentile(values, percentile, method="linear"))


def _threshold(records: list[dict], column: str, percentile: float) -> list[dict]:
    """``D = {d_i : e_i < q_p}`` (EGT §2.3), ``q_p`` the p-th percentile of the pool (:func:`_percentile`).

    ``+inf`` entropies take part in the percentile, and the inequality is strict, so an infinite
    entropy is never kept (it does not pass even ``q_p = +inf``), and at p = 100 the pool's maximum
    is not kept either: use ``keep`` for the whole pool.
    """
    if not records:
        return []
    values = np.array([_entropy(r, column) for r in records], dtype=np.float64)
    q = _percentile(values, percentile)
    return [r for r, e in zip(records, values, strict=True) if e < q]


def _bucket(ranked: list[dict], keep: int, bucket: Bucket) -> list[dict]:
    """Low / mid / high entropy bucket of ``keep`` ranked records (EGT Table 5).

    ``mid`` is centred on the median rank: ranks ``(n - keep) // 2`` onwards (when the window cannot
    be centred exactly it sits half a rank lower).
    """
    n = len(ranked)
    start = {"low": 0, "mid": (n - keep) // 2, "high": n - keep}[bucket]
    return ranked[start : start + keep]


def curate(
    records: list[dict],
    strategy: Strategy,
    metric: Metric = "answer",
    keep: int | None = None,
    percentile: float | None = None,
    bucket: Bucket = "low",
    seed: int = 0,
    accuracy_order: AccuracyOrder = "lowest_first",
) -> list[dict]:
    """Select the RL training set from the probed pool (method.md stage 4).

    Strategies:
        entropy: the ``keep`` lowest entropies (``+inf`` last), or with ``percentile`` p the set
            ``{e_i < q_p}`` (see :func:`_threshold`). EGT's method; unsupervised.
        random: a uniform sample of ``keep`` drawn with ``numpy.random.Generator(seed)`` (Table 3).
        accuracy: the supervised baseline of Table 3; it needs labels (:func:`correctness_score`).
            The ``keep`` samples with the lowest correctness scores (``accuracy_order``
            ``"lowest_first"``, the paper's caption) or the highest (``"highest_first"``); equal
            scores are taken by entropy ascending, then id.
        bucket: the low / mid / high entropy bucket of ``keep`` samples (Table 5).
        all: the whole pool in its given order (the paper's "+ Full RL"); ``keep``, ``percentile``
            and the entropies are not read.

    Exactly one of ``keep`` and ``percentile`` is given (except for ``all``). ``keep`` above the pool
    size keeps the whole pool. ``percentile`` p is in (0, 100]; except for the entropy strategy it
    means ``keep = round(p / 100 · n)`` (Python's round, half to even). ``bucket`` is read only by
    the bucket strategy, ``accuracy_order`` only by the accuracy strategy.

    Returns:
        The kept records sorted ascending by the chosen entropy, ties broken by id; for ``all``, the
        pool's records in the pool's order.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    if metric not in METRIC_COLUMNS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRIC_COLUMNS)}")
    if bucket not in ("low", "mid", "high"):
        raise ValueError(f"unknown bucket {bucket!r}; expected 'low', 'mid' or 'high'")
    if accuracy_order not in ACCURACY_ORDERS:
        raise ValueError(
            f"unknown accuracy_order {accuracy_order!r}; expected one of {list(ACCURACY_ORDERS)}"
        )
    if strategy == "all":
        return list(records)
    if (keep is None) == (percentile is None):
        raise ValueError("give exactly one of keep and percentile")
    if keep is not None and keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if percentile is not None and not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    column = METRIC_COLUMNS[metric]

    if strategy == "entropy" and percentile is not None:
        return _ascending(_threshold(records, column, percentile), column)
    n = len(records)
    keep = min(n, round(percentile / 100 * n) if keep is None else keep)

    if strategy == "entropy":
        return _ascending(records, column)[:keep]
    if strategy == "random":
        chosen = np.random.default_rng(seed).choice(n, size=keep, replace=False)
        return _ascending([records[i] for i in chosen], column)
    if strategy == "accuracy":
        return _ascending(_by_correctness(records, column, accuracy_order)[:keep], column)
    return _ascending(_bucket(_ascending(records, column), keep, bucket), column)


def removal_report(pool: list[dict], kept: list[dict], column: str = "truth_kind") -> dict[str, dict]:
    """What curation removed, per value of ``column`` in the pool (e.g. clean / ambiguous / flipped).

    Returns ``{value: {"in_pool": n, "kept": k, "removed_share": 1 - k / n}}``, values sorted; records
    without ``column`` count as ``"unknown"``. Kept records are matched to the pool by id.
    """
    pool_ids = {r["id"] for r in pool}
    kept_ids = {r["id"] for r in kept}
    stray = kept_ids - pool_ids
    if stray:
        raise ValueError(f"kept records not in the pool: {sorted(stray)[:5]}")
    in_pool = Counter(str(r.get(column, "unknown")) for r in pool)
    kept_count = Counter(str(r.get(column, "unknown")) for r in pool if r["id"] in kept_ids)
    return {
        value: {"in_pool": n, "kept": kept_count[value], "removed_share": 1 - kept_count[value] / n}
        for value, n in sorted(in_pool.items())
    }
