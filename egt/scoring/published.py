"""The EGT paper's published results, transcribed as printed (percent, two decimals).

Source: Yang et al., "Entropy-Guided Data-Efficient Training for Multimodal Reasoning Reward Models"
(/work/shared/papers/egt-entropy-guided-training.txt):

- ``PUBLISHED["table1"]``: Table 1, "Results on three multimodal reward benchmarks", the columns
  VL-Reward, Multimodal, MM-RLHF and Avg. of every model row (``# Param`` and ``Avg. Gain`` are left
  out; the reference markers such as "[16]" are dropped from the model names).
- ``PUBLISHED["table2"]``: Table 2, "Ablation study of different training strategies on
  VL-RewardBench", the columns Reasoning, Hallu., General and Overall.
- ``PUBLISHED["table3"]``: Table 3, "Ablation study of data selection strategies" (Random, Accuracy,
  Entropy); ``PUBLISHED["table4"]``: Table 4, "Impact of entropy-based selection criteria" (Sentence,
  Answer, Mix); ``PUBLISHED["table5"]``: Table 5, "Performance under different entropy levels"
  (Low-, Mid-, High-Entropy). All three on VL-RewardBench, in Table 2's columns. Figure 4 (the
  data-scale curve) is not here: the paper gives it only as a plot, without its values.

These are the paper's figures, not measurements of this project; reports must label them so.
"""

from __future__ import annotations

TABLE1_COLUMNS = ("VL-Reward", "Multimodal", "MM-RLHF", "Avg.")
TABLE2_COLUMNS = ("Reasoning", "Hallu.", "General", "Overall")


def _rows(columns: tuple[str, ...], rows: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    return {label: dict(zip(columns, values, strict=True)) for label, values in rows.items()}


PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "table1": _rows(
        TABLE1_COLUMNS,
        {
            # Proprietary models
            "GPT-4o (2024-08-06)": (65.80, 70.80, 58.23, 64.94),
            "Claude-3.7-Sonnet (2025-02-24)": (66.31, 71.90, 82.35, 73.52),
            # Open-source models
            "SLiME": (19.04, 42.00, 17.10, 26.05),
            "VITA-1.5": (16.48, 53.60, 20.58, 30.22),
            "Qwen2-VL-72B": (39.50, 70.90, 48.23, 52.88),
            # Specialized reward models
            "MM-RLHF-Reward": (50.15, 67.10, 82.00, 66.42),
            "IXC-2.5-Reward": (65.80, 66.60, 71.18, 67.86),
            "R1-Reward": (72.89, 82.20, 80.59, 78.56),
            "EGT (Ours)": (77.15, 84.30, 85.88, 82.44),
        },
    ),
    "table2": _rows(
        TABLE2_COLUMNS,
        {
            "SFT": (63.72, 74.23, 58.56, 69.29),
            "+ Full RL": (68.77, 76.50, 54.70, 71.37),
            "+ Selection": (84.54, 68.49, 58.56, 71.13),
            "+ Selection & Sort": (88.33, 76.50, 60.20, 77.15),
        },
    ),
    "table3": _rows(
        TABLE2_COLUMNS,
        {
            "Random": (66.88, 75.03, 53.04, 69.77),
            "Accuracy": (67.19, 73.16, 53.59, 68.61),
            "Entropy": (88.33, 76.50, 60.20, 77.15),
        },
    ),
    "table4": _rows(
        TABLE2_COLUMNS,
        {
            "Sentence": (73.19, 72.76, 48.62, 69.37),
            "Answer": (88.33, 76.50, 60.20, 77.15),
            "Mix": (84.23, 74.23, 57.46, 74.34),
        },
    ),
    "table5": _rows(
        TABLE2_COLUMNS,
        {
            "Low-Entropy": (88.33, 76.50, 60.20, 77.15),
            "Mid-Entropy": (65.30, 73.43, 50.28, 68.00),
            "High-Entropy": (65.30, 73.56, 56.35, 68.97),
        },
    ),
}
