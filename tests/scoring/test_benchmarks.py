"""Benchmark scoring against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import json

import pytest

from egt.scoring.benchmarks import score_benchmark
from egt.scoring.published import PUBLISHED

# An outcome per order: R right, W wrong, N unparseable (prediction None).
LABEL = {"original": 1, "swapped": 2}  # the swapped order's label is the other response


def judgement(outcome: str, order: str) -> dict:
    label = LABEL[order]
    prediction = {"R": label, "W": 3 - label, "N": None}[outcome]
    return {"prediction": prediction, "correct": prediction == label, "output": "", "well_formed": True}


def row(
    i: int,
    category: str | None,
    outcomes: str,
    subcategory: str | None = None,
    group: str | None = None,
) -> dict:
    """A pair judged in one order ("R") or two ("RW": original, swapped)."""
    r = {"id": f"pair-{i}", "label": 1, "category": category, "subcategory": subcategory, "group": group}
    return r | {
        order: judgement(o, order) for order, o in zip(("original", "swapped"), outcomes, strict=False)
    }


def rows_of(spec: list[tuple]) -> list[dict]:
    return [row(i, *s) for i, s in enumerate(spec)]


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-12)


# --- VL-RewardBench ---------------------------------------------------------------------------------

VL = rows_of(
    [
        # hallucination: right 2+1+1+0+0 = 4 of 10; answered 10-3 = 7
        ("hallucination", "RR"),
        ("hallucination", "RW"),
        ("hallucination", "RN"),
        ("hallucination", "WW"),
        ("hallucination", "NN"),
        # reasoning: right 2+2+1+1 = 6 of 8; answered 7
        ("reasoning", "RR"),
        ("reasoning", "RR"),
        ("reasoning", "WR"),
        ("reasoning", "NR"),
        # general: right 1+0+1 = 2 of 6; answered 5
        ("general", "RW"),
        ("general", "WW"),
        ("general", "RN"),
    ]
)


def test_vl_rewardbench_strict_and_official():
    r = score_benchmark("vl-rewardbench", VL)
    assert (r["benchmark"], r["pairs"], r["judgements"], r["unparseable"]) == ("vl-rewardbench", 12, 24, 5)
    assert list(r["categories"]) == ["reasoning", "hallucination", "general"]
    assert r["categories"]["reasoning"] == {"accuracy": 0.75, "pairs": 4, "judgements": 8, "correct": 6}
    assert r["categories"]["hallucination"] == {"accuracy": 0.4, "pairs": 5, "judgements": 10, "correct": 4}
    assert r["categories"]["general"]["accuracy"] == approx(1 / 3)  # 2 / 6
    assert r["overall"] == 0.5  # (6 + 4 + 2) / 24
    assert r["headline"] == r["overall"]
    assert r["macro"] == approx(89 / 180)  # (3/4 + 2/5 + 1/3) / 3 = (45 + 24 + 20) / 60 / 3

    official = r["official"]
    assert official["categories"]["reasoning"] == {"accuracy": approx(6 / 7), "answered": 7, "correct": 6}
    assert official["categories"]["hallucination"] == {"accuracy": approx(4 / 7), "answered": 7, "correct": 4}
    assert official["categories"]["general"] == {"accuracy": 0.4, "answered": 5, "correct": 2}
    assert official["overall"] == approx(12 / 19)  # (6 + 4 + 2) / (7 + 7 + 5)
    assert official["macro"] == approx(64 / 105)  # (6/7 + 4/7 + 2/5) / 3 = (50 + 14) / 35 / 3


def test_vl_rewardbench_other_rows_count_in_overall_not_in_macro():
    rows = rows_of([("reasoning", "R"), ("hallucination", "W"), ("general", "R"), ("mystery", "R")])
    r = score_benchmark("vl-rewardbench", rows)
    assert list(r["categories"]) == ["reasoning", "hallucination", "general", "other"]
    assert r["categories"]["other"] == {"accuracy": 1.0, "pairs": 1, "judgements": 1, "correct": 1}
    assert r["overall"] == 0.75  # 3 right of 4 judgements, the "other" one included
    assert r["macro"] == approx(2 / 3)  # (1 + 0 + 1) / 3
    assert r["official"]["overall"] == approx(2 / 3)  # cal.py sums its three categories only: 2 / 3


def test_vl_rewardbench_single_order_and_empty_category():
    rows = rows_of([("reasoning", "R"), ("reasoning", "N"), ("general", "W")])
    r = score_benchmark("vl-rewardbench", rows)
    assert (r["pairs"], r["judgements"], r["unparseable"]) == (3, 3, 1)
    assert r["categories"]["hallucination"] == {"accuracy": None, "pairs": 0, "judgements": 0, "correct": 0}
    assert r["official"]["categories"]["hallucination"]["accuracy"] is None
    assert r["overall"] == approx(1 / 3)  # 1 right of 3
    assert r["macro"] == 0.25  # (1/2 + 0) / 2: the empty category is not averaged
    assert r["official"]["overall"] == 0.5  # 1 right of 2 answered
    assert r["official"]["macro"] == 0.5  # (1/1 + 0/1) / 2


# --- Multimodal RewardBench -------------------------------------------------------------------------

MMRB = rows_of(
    [
        ("general/correctness", "RR"),  # 2/2 = 1
        ("general/preference", "RW"),  # 1/2 = 0.5
        ("knowledge", "WW"),  # 0/2 = 0
        ("reasoning/math", "RN"),  # 1/2 = 0.5
        ("reasoning/coding", "RR"),  # 3/4 = 0.75
        ("reasoning/coding", "RW"),
        ("safety", "RR", "bias"),  # safety 3/6 = 0.5; bias 2/2 = 1
        ("safety", "WW", "toxicity"),  # toxicity 1/4 = 0.25
        ("safety", "RN", "toxicity"),
        ("vqa", "RR"),  # 2/2 = 1
        ("unmapped", "WW"),  # other: 0/2
    ]
)


def test_multimodal_rewardbench_mean_of_seven_columns_and_micro():
    r = score_benchmark("multimodal-rewardbench", MMRB)
    assert list(r["categories"]) == [
        "general/correctness",
        "general/preference",
        "knowledge",
        "reasoning/math",
        "reasoning/coding",
        "safety",
        "vqa",
        "other",
    ]
    assert (r["pairs"], r["judgements"], r["unparseable"]) == (11, 22, 2)
    assert r["categories"]["reasoning/coding"] == {
        "accuracy": 0.75,
        "pairs": 2,
        "judgements": 4,
        "correct": 3,
    }
    assert r["categories"]["safety"] == {"accuracy": 0.5, "pairs": 3, "judgements": 6, "correct": 3}
    assert r["categories"]["other"] == {"accuracy": 0.0, "pairs": 1, "judgements": 2, "correct": 0}
    assert r["overall"] == approx(4.25 / 7)  # (1 + 0.5 + 0 + 0.5 + 0.75 + 0.5 + 1) / 7, no "other"
    assert r["headline"] == r["overall"]
    assert r["micro"] == approx(6 / 11)  # (2+1+0+1+3+3+2+0) = 12 right of 22, "other" included
    assert r["safety_breakdown"] == {
        "bias": {"accuracy": 1.0, "pairs": 1, "judgements": 2, "correct": 2},
        "toxicity": {"accuracy": 0.25, "pairs": 2, "judgements": 4, "correct": 1},
    }


def test_multimodal_rewardbench_missing_column_is_none_and_not_averaged():
    rows = [r for r in MMRB if r["category"] not in ("vqa", "unmapped")]
    r = score_benchmark("multimodal-rewardbench", rows)
    assert r["categories"]["vqa"] == {"accuracy": None, "pairs": 0, "judgements": 0, "correct": 0}
    assert "other" not in r["categories"]
    assert r["overall"] == approx(3.25 / 6)  # (1 + 0.5 + 0 + 0.5 + 0.75 + 0.5) / 6


# --- MM-RLHF-RewardBench ----------------------------------------------------------------------------

MMRLHF = rows_of(
    [
        # group A (mcq): every pair right in both orders
        ("mcq", "RR", None, "A"),
        ("mcq", "RR", None, "A"),
        ("mcq", "RR", None, "A"),
        # group B (mcq): one wrong pair sinks it in the swapped order
        ("mcq", "RR", None, "B"),
        ("mcq", "RW", None, "B"),
        # group C (long): right in the swapped order only
        ("long", "WR", None, "C"),
        ("long", "RR", None, "C"),
        # group D (short): an unparseable answer sinks it in the original order
        ("short", "RR", None, "D"),
        ("short", "NR", None, "D"),
        # group E (safety): wrong in both
        ("safety", "WW", None, "E"),
    ]
)


def test_mm_rlhf_rewardbench_acc_and_acc_plus_averaged_over_orders():
    r = score_benchmark("mm-rlhf-rewardbench", MMRLHF)
    assert list(r["categories"]) == ["mcq", "long", "short", "safety", "video"]
    assert (r["pairs"], r["judgements"], r["unparseable"], r["groups"]) == (10, 20, 1, 5)
    assert r["acc"] == 0.75  # A 6 + B 3 + C 3 + D 3 + E 0 = 15 right of 20
    assert r["headline"] == r["acc"]
    # all right: original A, B = 2 of 5; swapped A, C, D = 3 of 5
    assert r["acc_plus_by_order"] == {"original": 0.4, "swapped": 0.6}
    assert r["acc_plus"] == 0.5  # (0.4 + 0.6) / 2

    mcq = r["categories"]["mcq"]
    assert mcq["accuracy"] == 0.9  # 6 + 3 = 9 of 10
    assert mcq["groups"] == 2
    assert mcq["groups_all_right"] == {"original": 2, "swapped": 1}
    assert mcq["acc_plus"] == 0.75  # (2/2 + 1/2) / 2
    for name in ("long", "short"):
        stats = r["categories"][name]
        assert (stats["accuracy"], stats["groups"]) == (0.75, 1)  # 3 of 4
        assert stats["acc_plus"] == 0.5  # (0/1 + 1/1) / 2
    assert r["categories"]["safety"]["accuracy"] == 0.0
    assert r["categories"]["safety"]["acc_plus"] == 0.0
    video = r["categories"]["video"]
    assert (video["accuracy"], video["acc_plus"], video["pairs"], video["groups"]) == (None, None, 0, 0)


def test_mm_rlhf_rewardbench_single_order_is_the_official_acc_plus():
    rows = [{k: v for k, v in r.items() if k != "swapped"} for r in MMRLHF]
    r = score_benchmark("mm-rlhf-rewardbench", rows)
    assert (r["judgements"], r["unparseable"]) == (10, 1)
    assert r["acc"] == 0.7  # A 3 + B 2 + C 1 + D 1 + E 0 = 7 of 10
    assert r["acc_plus_by_order"] == {"original": 0.4}  # A and B of 5 groups
    assert r["acc_plus"] == 0.4
    assert r["categories"]["mcq"]["acc_plus"] == 1.0  # A and B of 2
    assert r["categories"]["long"]["acc_plus"] == 0.0  # C's first pair is wrong


def test_mm_rlhf_rewardbench_mixed_group_is_credited_like_the_official_script():
    rows = rows_of(
        [
            ("long", "R", None, "G"),  # G's first row is "long", but "mcq" comes first in the keywords
            ("mcq", "R", None, "G"),
            ("long", "W", None, "H"),
            ("mcq", "R"),  # no group: a group of its own
        ]
    )
    r = score_benchmark("mm-rlhf-rewardbench", rows)
    assert r["groups"] == 3  # G, H, the lone pair
    assert r["acc_plus"] == approx(2 / 3)  # G and the lone pair all right
    mcq, long = r["categories"]["mcq"], r["categories"]["long"]
    assert (mcq["groups"], mcq["groups_all_right"], mcq["acc_plus"]) == (2, {"original": 2}, 1.0)
    # G is in long's denominator (it has a long pair) but credited to mcq: 0 of {G, H}
    assert (long["groups"], long["groups_all_right"], long["acc_plus"]) == (2, {"original": 0}, 0.0)


def test_mm_rlhf_rewardbench_unknown_category_is_other():
    rows = rows_of([("mcq", "R", None, "A"), ("image-edit", "W", None, "B")])
    r = score_benchmark("mm-rlhf-rewardbench", rows)
    assert list(r["categories"])[-1] == "other"
    other = r["categories"]["other"]
    assert (other["pairs"], other["accuracy"], other["groups"], other["acc_plus"]) == (1, 0.0, 1, 0.0)
    assert r["acc"] == 0.5


# --- generic ----------------------------------------------------------------------------------------


def test_generic_without_categories():
    rows = rows_of([(None, "RR"), (None, "WN"), (None, "RW")])
    r = score_benchmark("egt", rows)
    assert r["benchmark"] == "egt"
    assert (r["pairs"], r["judgements"], r["unparseable"]) == (3, 6, 1)
    assert r["overall"] == 0.5  # 2 + 0 + 1 = 3 of 6
    assert r["headline"] == r["overall"]
    assert r["categories"] == {"all": {"accuracy": 0.5, "pairs": 3, "judgements": 6, "correct": 3}}


def test_generic_with_categories_sorted_and_uncategorised_last():
    rows = rows_of([("zeta", "R"), ("alpha", "W"), (None, "R"), ("alpha", "R")])
    r = score_benchmark("preference-pairs", rows)
    assert list(r["categories"]) == ["alpha", "zeta", "other"]
    assert r["categories"]["alpha"]["accuracy"] == 0.5  # 1 of 2
    assert r["overall"] == 0.75  # 3 of 4


@pytest.mark.parametrize(
    "fmt", ["vl-rewardbench", "multimodal-rewardbench", "mm-rlhf-rewardbench", "r1-reward-rl"]
)
def test_results_are_plain_json_without_nan_even_when_empty(fmt):
    for rows in ([], VL):
        r = score_benchmark(fmt, rows)
        json.dumps(r, allow_nan=False)
    assert score_benchmark(fmt, [])["headline"] is None


def test_published_rows_as_printed():
    table1, table2 = PUBLISHED["table1"], PUBLISHED["table2"]
    assert len(table1) == 9 and len(table2) == 4
    assert table1["GPT-4o (2024-08-06)"] == {
        "VL-Reward": 65.80,
        "Multimodal": 70.80,
        "MM-RLHF": 58.23,
        "Avg.": 64.94,
    }
    assert table1["EGT (Ours)"] == {"VL-Reward": 77.15, "Multimodal": 84.30, "MM-RLHF": 85.88, "Avg.": 82.44}
    assert table2["+ Selection & Sort"] == {
        "Reasoning": 88.33,
        "Hallu.": 76.50,
        "General": 60.20,
        "Overall": 77.15,
    }
    # The printed Avg. is the mean of the three printed numbers, to the printed precision.
    for values in table1.values():
        assert abs(sum(list(values.values())[:3]) / 3 - values["Avg."]) <= 0.005 + 1e-9
