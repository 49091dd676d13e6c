"""The paper's ablation Tables 3–5 as transcribed, checked against the paper's text where it is at hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from egt.scoring.published import PUBLISHED, TABLE2_COLUMNS

PAPER = Path("/work/shared/papers/egt-entropy-guided-training.txt")
HEADER = "Method\t" + "\t".join(TABLE2_COLUMNS)


def printed_table(lines: list[str], number: int) -> dict[str, dict[str, float]]:
    """Table ``number`` of the paper's text: the tab-separated rows after its caption's header line."""
    caption = next(i for i, line in enumerate(lines) if line.startswith(f"Table {number}."))
    start = lines.index(HEADER, caption) + 1
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        label, *values = line.split("\t")
        rows[label] = dict(zip(TABLE2_COLUMNS, map(float, values), strict=True))
    return rows


def test_ablation_tables_as_printed():
    assert PUBLISHED["table3"] == {
        "Random": {"Reasoning": 66.88, "Hallu.": 75.03, "General": 53.04, "Overall": 69.77},
        "Accuracy": {"Reasoning": 67.19, "Hallu.": 73.16, "General": 53.59, "Overall": 68.61},
        "Entropy": {"Reasoning": 88.33, "Hallu.": 76.50, "General": 60.20, "Overall": 77.15},
    }
    assert PUBLISHED["table4"] == {
        "Sentence": {"Reasoning": 73.19, "Hallu.": 72.76, "General": 48.62, "Overall": 69.37},
        "Answer": {"Reasoning": 88.33, "Hallu.": 76.50, "General": 60.20, "Overall": 77.15},
        "Mix": {"Reasoning": 84.23, "Hallu.": 74.23, "General": 57.46, "Overall": 74.34},
    }
    assert PUBLISHED["table5"] == {
        "Low-Entropy": {"Reasoning": 88.33, "Hallu.": 76.50, "General": 60.20, "Overall": 77.15},
        "Mid-Entropy": {"Reasoning": 65.30, "Hallu.": 73.43, "General": 50.28, "Overall": 68.00},
        "High-Entropy": {"Reasoning": 65.30, "Hallu.": 73.56, "General": 56.35, "Overall": 68.97},
    }


def test_egt_row_is_the_same_model_in_every_ablation():
    # Entropy (Table 3), Answer (Table 4) and Low-Entropy (Table 5) are the full EGT recipe, Table 2's
    # "+ Selection & Sort": the paper prints the same numbers for all four.
    egt = PUBLISHED["table2"]["+ Selection & Sort"]
    assert PUBLISHED["table3"]["Entropy"] == PUBLISHED["table4"]["Answer"] == egt
    assert PUBLISHED["table5"]["Low-Entropy"] == egt


@pytest.mark.skipif(not PAPER.exists(), reason="the paper's text is not on this machine")
@pytest.mark.parametrize("number", [2, 3, 4, 5])
def test_tables_match_the_papers_text(number):
    assert PUBLISHED[f"table{number}"] == printed_table(PAPER.read_text().splitlines(), number)
