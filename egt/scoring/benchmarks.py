"""Official scoring of the multimodal reward benchmarks, as pure functions of the evaluate stage's rows.

A row is one preference pair judged in one or two orders::

    {"id", "label", "category", "subcategory", "group",
     "original": {"prediction", "correct", ...}, "swapped": {...}}   # "swapped" absent: one order

Each (pair, order) is a *judgement*. Accuracies are shares of judgements: the benchmarks' scripts
score one answer per pair, and a pair judged in both orders is two answers here, each scored by the
script's rule.

Scoring is *strict* everywhere unless a block says otherwise: an unparseable judgement (prediction
None) counts as wrong, VLMEvalKit's convention. The benchmarks' scripts differ here (VL-RewardBench's
``cal.py`` leaves unparsed answers out; Multimodal RewardBench's ``2_get_accuracy.py`` replaces them by
a coin flip), so strict scores are the comparable ones; VL-RewardBench's ``official`` block also gives
its script's own number.

Every result has ``benchmark``, ``headline`` (the benchmark's number in the EGT paper's Table 1),
``pairs``, ``judgements``, ``unparseable`` and ``categories`` (name -> :func:`category_stats`, in the
benchmark's documented order, then ``other`` for rows of an unknown category when there are any).
Shares are fractions in [0, 1]; a share with a zero denominator is None, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from statistics import fmean

from egt.formats import mm_rlhf_rewardbench, multimodal_rewardbench, vl_rewardbench

ORDERS = ("original", "swapped")
OTHER = "other"  # rows whose category is not one of the benchmark's reported categories

VL_REWARDBENCH = "vl-rewardbench"
MULTIMODAL_REWARDBENCH = "multimodal-rewardbench"
MM_RLHF_REWARDBENCH = "mm-rlhf-rewardbench"

# Category names and orders are the readers' (egt.formats), which take them from the official scripts.
VL_CATEGORIES = vl_rewardbench.CATEGORIES
MMRB_COLUMNS = multimodal_rewardbench.COLUMNS
MMRB_SAFETY = multimodal_rewardbench.SAFETY
MMRLHF_CATEGORIES = mm_rlhf_rewardbench.CATEGORIES


# --- shared pieces ----------------------------------------------------------------------------------


def judgements(row: dict) -> list[dict]:
    """The row's judgements, one per scored order."""
    return [row[order] for order in ORDERS if order in row]


def is_right(judgement: dict) -> bool:
    """Strict: an unparseable answer is wrong whatever its ``correct`` says (VLMEvalKit's convention)."""
    return judgement["prediction"] is not None and bool(judgement["correct"])


def ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def mean(values: Iterable[float | None]) -> float | None:
    """Unweighted mean of the values that exist; None when none does."""
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def category_stats(rows: Sequence[dict]) -> dict:
    """``{"accuracy", "pairs", "judgements", "correct"}`` of some rows, strict."""
    marks = [is_right(j) for row in rows for j in judgements(row)]
    return {
        "accuracy": ratio(sum(marks), len(marks)),
        "pairs": len(rows),
        "judgements": len(marks),
        "correct": sum(marks),
    }


def category_of(row: dict, names: Sequence[str]) -> str:
    """The row's category if it is one of ``names``, else ``other``."""
    category = row.get("category")
    return category if category in names else OTHER


def split(rows: Iterable[dict], names: Sequence[str]) -> dict[str, list[dict]]:
    """Rows by category: every name in order (empty ones too), then ``other`` only if some row has it."""
    parts: dict[str, list[dict]] = {name: [] for name in names}
    for row in rows:
        parts.setdefault(category_of(row, names), []).append(row)
    return parts


def totals(rows: Sequence[dict], parts: dict[str, list[dict]]) -> dict:
    """The keys every result has, less ``benchmark`` and ``headline``."""
    marks = [j for row in rows for j in judgements(row)]
    return {
        "pairs": len(rows),
        "judgements": len(marks),
        "unparseable": sum(j["prediction"] is None for j in marks),
        "categories": {name: category_stats(part) for name, part in parts.items()},
    }


# --- VL-RewardBench ---------------------------------------------------------------------------------


def answered_stats(rows: Sequence[dict]) -> dict:
    """``{"accuracy", "answered", "correct"}`` over the parsed judgements only, as cal.py counts.

    cal.py's accuracy is agree / (agree + reject): a "doesntMatch" (unparsed) answer is in neither.
    """
    answered = [j for row in rows for j in judgements(row) if j["prediction"] is not None]
    correct = sum(is_right(j) for j in answered)
    return {"accuracy": ratio(correct, len(answered)), "answered": len(answered), "correct": correct}


def vl_official(parts: dict[str, list[dict]]) -> dict:
    """VL-RewardBench's own numbers, as ``cal.py`` (github.com/vl-rewardbench/VL_RewardBench) computes.

    Unparseable judgements are left out of every denominator. ``overall`` sums cal.py's
    ``task_list`` (the three categories) only, so ``other`` rows are not in it, as in the script.
    """
    stats = {name: answered_stats(part) for name, part in parts.items()}
    named = [stats[name] for name in VL_CATEGORIES]
    return {
        "overall": ratio(sum(s["correct"] for s in named), sum(s["answered"] for s in named)),
        "macro": mean(s["accuracy"] for s in named),
        "categories": stats,
    }


def score_vl_rewardbench(rows: Sequence[dict]) -> dict:
    """VL-RewardBench, after ``cal.py`` of github.com/vl-rewardbench/VL_RewardBench.

    ``overall`` (the headline) is the strict accuracy over all judgements, ``other`` rows included;
    ``macro`` the unweighted mean of the three category accuracies (over those with pairs), as cal.py's
    "Macro Average Acc"; ``official`` the same numbers with unparseable judgements left out
    (:func:`vl_official`).
    """
    parts = split(rows, VL_CATEGORIES)
    base = totals(rows, parts)
    overall = category_stats(rows)["accuracy"]
    return {
        "headline": overall,
        **base,
        "overall": overall,
        "macro": mean(base["categories"][name]["accuracy"] for name in VL_CATEGORIES),
        "official": vl_official(parts),
    }


# --- Multimodal RewardBench -------------------------------------------------------------------------


def score_multimodal_rewardbench(rows: Sequence[dict]) -> dict:
    """Multimodal RewardBench, after ``scripts/2_get_accuracy.py`` of facebookresearch/multimodal_rewardbench.

    The script prints an accuracy per category and over all answers (``micro`` here). The R1-Reward and
    EGT tables report ``overall`` (the headline): the unweighted mean of the seven columns of
    :data:`MMRB_COLUMNS` that have pairs. The script splits safety into bias and toxicity;
    ``safety_breakdown`` gives both (a safety row without a subcategory is in neither). ``other`` rows
    count in ``micro``, not in the mean.
    """
    parts = split(rows, MMRB_COLUMNS)
    base = totals(rows, parts)
    overall = mean(base["categories"][name]["accuracy"] for name in MMRB_COLUMNS)
    safety = parts["safety"]
    return {
        "headline": overall,
        **base,
        "overall": overall,
        "micro": category_stats(rows)["accuracy"],
        "safety_breakdown": {
            name: category_stats([row for row in safety if row.get("subcategory") == name])
            for name in MMRB_SAFETY
        },
    }


# --- MM-RLHF-RewardBench ----------------------------------------------------------------------------


def groups_of(rows: Iterable[dict]) -> list[list[dict]]:
    """Rows by ``group`` (the benchmark's original ``id``), in order of first appearance.

    A row without a group is a group of its own, keyed apart so it cannot merge with a named group.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        key = ("group", row["group"]) if row.get("group") is not None else ("pair", row["id"])
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def scored_orders(rows: Sequence[dict]) -> list[str]:
    """The orders every row was judged in: Acc+ needs a group's pairs all judged in the order."""
    return [order for order in ORDERS if all(order in row for row in rows)]


def all_right(group: Sequence[dict], order: str) -> bool:
    """The official "all_correct": every pair of the group has its chosen response winning."""
    return all(is_right(row[order]) for row in group)


def home(group: Sequence[dict], names: Sequence[str]) -> str:
    """The category a group's Acc+ success is credited to, as the official script does.

    cal_performance_mmreweard_bench.py credits an all-correct group to the first keyword, in
    ``category_keywords`` order, that any of its items has (it breaks after that one).
    """
    categories = {row["category"] for row in group}
    return next(name for name in names if name in categories)


def acc_plus_stats(
    groups: Sequence[list[dict]], name: str, names: Sequence[str], orders: Sequence[str]
) -> dict:
    """``{"acc_plus", "groups", "groups_all_right"}`` of one category, after the official script.

    The denominator counts every group with a pair of the category (the script's ``any(keyword in ...)``),
    the numerator only all-right groups credited to it (:func:`home`). In the benchmark's data a group's
    pairs share one image, hence one category, and a group is simply in its pairs' category.
    """
    members = [g for g in groups if any(row["category"] == name for row in g)]
    right = {order: sum(home(g, names) == name and all_right(g, order) for g in members) for order in orders}
    return {
        "acc_plus": mean(ratio(n, len(members)) for n in right.values()),
        "groups": len(members),
        "groups_all_right": right,
    }


def score_mm_rlhf_rewardbench(rows: Sequence[dict]) -> dict:
    """MM-RLHF-RewardBench, after MM-RLHF's ``cal_performance_mmreweard_bench.py`` and R1-Reward's
    ``inference/MM-RLHF-Reward/get_acc.py`` (the same rules).

    A pair is right when the chosen response wins; a tie or an unparseable answer is wrong.
    ``acc`` (the headline) is the accuracy over judgements. ``acc_plus`` is the share of groups (pairs
    sharing the benchmark's ``id``) whose pairs are all right. The official script scores one order;
    with two orders Acc+ is computed per order (a group counts in an order when all its pairs are right
    in that order) and averaged over the orders (``acc_plus_by_order`` gives each). With one order it is
    the official definition. Each category adds ``acc_plus``, ``groups`` and ``groups_all_right``
    (per order) to its :func:`category_stats`, per :func:`acc_plus_stats`.
    """
    parts = split(rows, MMRLHF_CATEGORIES)
    # Groups see the reported category names (unknown ones as "other"), so they agree with ``parts``.
    groups = groups_of({**row, "category": category_of(row, MMRLHF_CATEGORIES)} for row in rows)
    names = (*MMRLHF_CATEGORIES, OTHER)
    orders = scored_orders(rows)
    right = {order: sum(all_right(g, order) for g in groups) for order in orders}
    base = totals(rows, parts)
    accuracy = category_stats(rows)["accuracy"]
    return {
        "headline": accuracy,
        **base,
        "categories": {
            name: {**stats, **acc_plus_stats(groups, name, names, orders)}
            for name, stats in base["categories"].items()
        },
        "acc": accuracy,
        "acc_plus": mean(ratio(n, len(groups)) for n in right.values()),
        "acc_plus_by_order": {order: ratio(n, len(groups)) for order, n in right.items()},
        "groups": len(groups),
    }


# --- anything else ----------------------------------------------------------------------------------


def score_generic(rows: Sequence[dict]) -> dict:
    """Strict accuracy over all judgements, and per category when rows have categories.

    Categories are in alphabetical order, rows without one under ``other`` (last); when no row has a
    category there is one entry, ``all``.
    """
    names = sorted({row["category"] for row in rows if row.get("category") is not None})
    parts = split(rows, names) if names else {"all": list(rows)}
    overall = category_stats(rows)["accuracy"]
    return {"headline": overall, **totals(rows, parts), "overall": overall}


SCORERS: dict[str, Callable[[Sequence[dict]], dict]] = {
    VL_REWARDBENCH: score_vl_rewardbench,
    MULTIMODAL_REWARDBENCH: score_multimodal_rewardbench,
    MM_RLHF_REWARDBENCH: score_mm_rlhf_rewardbench,
}


def score_benchmark(format: str, rows: list[dict]) -> dict:
    """Score evaluate's rows by the rules of benchmark ``format``; any other format gets
    :func:`score_generic`. The result is plain JSON (see the module docstring for its keys)."""
    return {"benchmark": format, **SCORERS.get(format, score_generic)(rows)}
