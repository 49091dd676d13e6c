"""The paper-layout benchmark tables: hand-computed numbers in the rendered Markdown."""

from __future__ import annotations

from egt.report.benchmark_tables import benchmark_detail, table1, table2
from egt.scoring.benchmarks import score_benchmark


def row(
    i: int, category: str, outcome: str, subcategory: str | None = None, group: str | None = None
) -> dict:
    """A pair judged in the original order only: R right, W wrong, N unparseable."""
    prediction = {"R": 1, "W": 2, "N": None}[outcome]
    judgement = {"prediction": prediction, "correct": prediction == 1, "output": "", "well_formed": True}
    return {
        "id": f"pair-{i}",
        "label": 1,
        "category": category,
        "subcategory": subcategory,
        "group": group,
        "original": judgement,
    }


def rows_of(spec: list[tuple]) -> list[dict]:
    return [row(i, *s) for i, s in enumerate(spec)]


# reasoning 2/2 = 1; hallucination 1/2 = 0.5 strict, 1/1 official; general 1/2 = 0.5
# overall 4/6 = 66.67 strict, 4/5 = 80.00 official; macro (1 + .5 + .5)/3 = 66.67, (1 + 1 + .5)/3 = 83.33
VL = score_benchmark(
    "vl-rewardbench",
    rows_of(
        [
            ("reasoning", "R"),
            ("reasoning", "R"),
            ("hallucination", "R"),
            ("hallucination", "N"),
            ("general", "R"),
            ("general", "W"),
        ]
    ),
)
# columns 1, 1, 1, 1, 0, 1 (safety, bias), 0.5 (vqa: 1 of 2): mean 5.5/7 = 78.57; micro 6/8 = 75.00
MMRB = score_benchmark(
    "multimodal-rewardbench",
    rows_of(
        [
            ("general/correctness", "R"),
            ("general/preference", "R"),
            ("knowledge", "R"),
            ("reasoning/math", "R"),
            ("reasoning/coding", "W"),
            ("safety", "R", "bias"),
            ("vqa", "R"),
            ("vqa", "W"),
        ]
    ),
)
# acc 2/3 = 66.67; Acc+ 1 of 2 groups (g1 right, g2 wrong) = 50.00
MMRLHF_ROWS = rows_of([("mcq", "R", None, "g1"), ("mcq", "R", None, "g1"), ("long", "W", None, "g2")])
MMRLHF = score_benchmark("mm-rlhf-rewardbench", MMRLHF_ROWS)


def test_table1_run_rows_then_marked_published_rows():
    lines = table1(
        {
            "this run: rl": {
                "vl-rewardbench": VL,
                "multimodal-rewardbench": MMRB,
                "mm-rlhf-rewardbench": MMRLHF,
            },
            "this run: sft": {"vl-rewardbench": VL},
        }
    )
    assert "published" in lines[0] and "not measured here" in lines[0]
    assert lines[2] == "| Model | VL-Reward | Multimodal | MM-RLHF | Avg. |"
    # Avg. = (2/3 + 5.5/7 + 2/3) / 3 = (28 + 16.5 + 28) / 21 / 3 = 0.70635
    assert lines[4] == "| this run: rl | 66.67 | 78.57 | 66.67 | 70.63 |"
    assert lines[5] == "| this run: sft | 66.67 | — | — | — |"
    assert lines[6] == "| GPT-4o (2024-08-06) (published) | 65.80 | 70.80 | 58.23 | 64.94 |"
    assert "| Claude-3.7-Sonnet (2025-02-24) (published) | 66.31 | 71.90 | 82.35 | 73.52 |" in lines
    assert "| EGT (Ours) (published) | 77.15 | 84.30 | 85.88 | 82.44 |" in lines
    assert sum(line.endswith("|") and "(published)" in line for line in lines) == 9


def test_table2_strict_with_official_overall_beside():
    lines = table2({"this run: rl": VL})
    assert "published" in lines[0] and "not measured here" in lines[0]
    assert lines[2] == "| Method | Reasoning | Hallu. | General | Overall | Overall (official script) |"
    assert lines[4] == "| this run: rl | 100.00 | 50.00 | 50.00 | 66.67 | 80.00 |"
    assert lines[5] == "| SFT (published) | 63.72 | 74.23 | 58.56 | 69.29 | — |"
    assert lines[8] == "| + Selection & Sort (published) | 88.33 | 76.50 | 60.20 | 77.15 | — |"


def test_vl_rewardbench_detail():
    lines = benchmark_detail(VL)
    assert lines[0] == "**VL-RewardBench**: 6 pairs, 6 judgements, 1 unparseable (counted wrong)."
    assert "| hallucination | 2 | 2 | 50.00 | 1 | 100.00 |" in lines
    assert "| overall | 6 | 6 | 66.67 | 5 | 80.00 |" in lines
    assert "| macro (mean of categories) |  |  | 66.67 |  | 83.33 |" in lines


def test_multimodal_rewardbench_detail():
    lines = benchmark_detail(MMRB)
    body = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0][2:] for line in body] == [
        "general/correctness",
        "general/preference",
        "knowledge",
        "reasoning/math",
        "reasoning/coding",
        "safety",
        "vqa",
        "overall (mean of 7 columns)",
        "micro (all judgements)",
    ]
    assert "| vqa | 2 | 2 | 50.00 |" in lines
    assert "| overall (mean of 7 columns) |  |  | 78.57 |" in lines
    assert "| micro (all judgements) | 8 | 8 | 75.00 |" in lines
    assert "Safety by subset: bias 100.00% (judgements: 1), toxicity — (judgements: 0)." in lines


def test_mm_rlhf_rewardbench_detail():
    lines = benchmark_detail(MMRLHF)
    assert "| category | pairs | groups | judgements | Acc (%) | Acc+ (%) |" in lines
    assert "| mcq | 2 | 1 | 2 | 100.00 | 100.00 |" in lines
    assert "| long | 1 | 1 | 1 | 0.00 | 0.00 |" in lines
    assert "| overall | 3 | 2 | 3 | 66.67 | 50.00 |" in lines
    assert not any(line.startswith("| video") for line in lines)  # no pairs, no row
    assert not any(line.startswith("Acc+ is the mean") for line in lines)  # one order


def test_mm_rlhf_rewardbench_detail_gives_each_order_acc_plus():
    both = [r | {"swapped": {**r["original"], "prediction": 1, "correct": False}} for r in MMRLHF_ROWS]
    lines = benchmark_detail(score_benchmark("mm-rlhf-rewardbench", both))
    # swapped: every answer wrong, so no group is all right there: (1/2 + 0/2) / 2 = 25.00
    assert "| overall | 3 | 2 | 6 | 33.33 | 25.00 |" in lines  # acc 2 of 6
    assert "Acc+ is the mean over the orders of each order's Acc+: original 50.00%, swapped 0.00%." in lines


def test_generic_detail():
    lines = benchmark_detail(score_benchmark("egt", rows_of([("a", "R"), ("a", "W"), ("b", "R")])))
    assert lines[0].startswith("**egt**: 3 pairs")
    assert "| a | 2 | 2 | 50.00 |" in lines
    assert "| overall | 3 | 3 | 66.67 |" in lines  # 2 of 3
