"""Benchmark scores as Markdown, in the EGT paper's layouts and beside its published figures.

Pure rendering: every number comes from :func:`egt.scoring.benchmarks.score_benchmark` results
(fractions, shown here in percent with two decimals, as the paper prints them) or from
:data:`egt.scoring.published.PUBLISHED`. Published rows are always marked "(published)": they are the
paper's figures, not measurements of this project. A number that does not exist is shown as "—".
"""

from __future__ import annotations

from statistics import fmean

from egt.report.markdown import table
from egt.scoring.benchmarks import (
    MM_RLHF_REWARDBENCH,
    MMRB_COLUMNS,
    MMRB_SAFETY,
    MULTIMODAL_REWARDBENCH,
    VL_CATEGORIES,
    VL_REWARDBENCH,
)
from egt.scoring.published import PUBLISHED, TABLE1_COLUMNS, TABLE2_COLUMNS

DASH = "—"
# The formats whose headlines fill Table 1's columns VL-Reward, Multimodal and MM-RLHF, in that order.
TABLE1_FORMATS = (VL_REWARDBENCH, MULTIMODAL_REWARDBENCH, MM_RLHF_REWARDBENCH)
NAMES = {
    VL_REWARDBENCH: "VL-RewardBench",
    MULTIMODAL_REWARDBENCH: "Multimodal RewardBench",
    MM_RLHF_REWARDBENCH: "MM-RLHF-RewardBench",
}


def percent(value: float | None) -> str:
    """A measured share in percent, two decimals as the paper prints; "—" when there is none."""
    return DASH if value is None else f"{100 * value:.2f}"


def share(value: float | None) -> str:
    """A measured share in a sentence: with its percent sign, or "—"."""
    return DASH if value is None else f"{percent(value)}%"


def published(value: float) -> str:
    """A published figure, already in percent."""
    return f"{value:.2f}"


# --- Table 1 ----------------------------------------------------------------------------------------


def table1_run_row(label: str, results: dict[str, dict]) -> list[str]:
    """One run's headlines; Avg. only when all three exist, since a mean of fewer is not comparable."""
    headlines = [results[fmt]["headline"] if fmt in results else None for fmt in TABLE1_FORMATS]
    average = None if None in headlines else fmean(headlines)
    return [label, *(percent(h) for h in headlines), percent(average)]


def table1(run_rows: dict[str, dict[str, dict]]) -> list[str]:
    """The EGT paper's Table 1 (Model | VL-Reward | Multimodal | MM-RLHF | Avg.): the run's rows, then
    the paper's. ``run_rows`` maps a row label to ``{format: score_benchmark result}``."""
    rows = [table1_run_row(label, results) for label, results in run_rows.items()]
    rows += [
        [f"{model} (published)", *(published(values[c]) for c in TABLE1_COLUMNS)]
        for model, values in PUBLISHED["table1"].items()
    ]
    return [
        "Rows marked (published) are the EGT paper's figures (its Table 1), not measured here; "
        "a run's Avg. is left out (—) unless it has all three benchmarks.",
        "",
        *table(("Model", *TABLE1_COLUMNS), rows),
    ]


# --- Table 2 ----------------------------------------------------------------------------------------


def table2(run_rows: dict[str, dict]) -> list[str]:
    """The EGT paper's Table 2 (Method | Reasoning | Hallu. | General | Overall) from VL-RewardBench
    results (strict), then the paper's ablation rows. A last column gives the run's overall as the
    benchmark's cal.py computes it (unparseable answers left out); the paper gives none ("—")."""
    rows = [
        [
            label,
            *(percent(result["categories"][c]["accuracy"]) for c in VL_CATEGORIES),
            percent(result["overall"]),
            percent(result["official"]["overall"]),
        ]
        for label, result in run_rows.items()
    ]
    rows += [
        [f"{method} (published)", *(published(values[c]) for c in TABLE2_COLUMNS), DASH]
        for method, values in PUBLISHED["table2"].items()
    ]
    return [
        "Rows marked (published) are the EGT paper's figures (its Table 2), not measured here.",
        "",
        *table(("Method", *TABLE2_COLUMNS, "Overall (official script)"), rows),
    ]


# --- one benchmark in detail ------------------------------------------------------------------------


def scored(result: dict) -> list[tuple[str, dict]]:
    """The categories that have pairs, in the result's order."""
    return [(name, stats) for name, stats in result["categories"].items() if stats["pairs"]]


def vl_detail(result: dict) -> list[str]:
    official = result["official"]
    rows = [
        (
            name,
            s["pairs"],
            s["judgements"],
            percent(s["accuracy"]),
            official["categories"][name]["answered"],
            percent(official["categories"][name]["accuracy"]),
        )
        for name, s in scored(result)
    ]
    answered = sum(official["categories"][name]["answered"] for name in VL_CATEGORIES)
    rows += [
        (
            "overall",
            result["pairs"],
            result["judgements"],
            percent(result["overall"]),
            answered,
            percent(official["overall"]),
        ),
        ("macro (mean of categories)", "", "", percent(result["macro"]), "", percent(official["macro"])),
    ]
    header = ("category", "pairs", "judgements", "accuracy (%)", "answered", "accuracy, official script (%)")
    note = "The official-script columns leave unparseable judgements out, as the benchmark's cal.py does."
    return [*table(header, rows), note, ""]


def multimodal_detail(result: dict) -> list[str]:
    rows = [(name, s["pairs"], s["judgements"], percent(s["accuracy"])) for name, s in scored(result)]
    rows += [
        (f"overall (mean of {len(MMRB_COLUMNS)} columns)", "", "", percent(result["overall"])),
        ("micro (all judgements)", result["pairs"], result["judgements"], percent(result["micro"])),
    ]
    lines = table(("column", "pairs", "judgements", "accuracy (%)"), rows)
    subsets = result["safety_breakdown"]
    if result["categories"]["safety"]["pairs"]:
        parts = [
            f"{name} {share(subsets[name]['accuracy'])} (judgements: {subsets[name]['judgements']})"
            for name in MMRB_SAFETY
        ]
        lines += [f"Safety by subset: {', '.join(parts)}.", ""]
    return lines


def mm_rlhf_detail(result: dict) -> list[str]:
    rows = [
        (name, s["pairs"], s["groups"], s["judgements"], percent(s["accuracy"]), percent(s["acc_plus"]))
        for name, s in scored(result)
    ]
    rows.append(
        (
            "overall",
            result["pairs"],
            result["groups"],
            result["judgements"],
            percent(result["acc"]),
            percent(result["acc_plus"]),
        )
    )
    lines = table(("category", "pairs", "groups", "judgements", "Acc (%)", "Acc+ (%)"), rows)
    by_order = result["acc_plus_by_order"]
    if len(by_order) > 1:
        parts = [f"{order} {share(value)}" for order, value in by_order.items()]
        lines += [f"Acc+ is the mean over the orders of each order's Acc+: {', '.join(parts)}.", ""]
    return lines


def generic_detail(result: dict) -> list[str]:
    rows = [(name, s["pairs"], s["judgements"], percent(s["accuracy"])) for name, s in scored(result)]
    rows.append(("overall", result["pairs"], result["judgements"], percent(result["overall"])))
    return table(("category", "pairs", "judgements", "accuracy (%)"), rows)


DETAILS = {
    VL_REWARDBENCH: vl_detail,
    MULTIMODAL_REWARDBENCH: multimodal_detail,
    MM_RLHF_REWARDBENCH: mm_rlhf_detail,
}


def benchmark_detail(result: dict) -> list[str]:
    """One benchmark's categories (those with pairs) with pairs, judgements and accuracy, strict, then
    its summary rows: for VL-RewardBench also the official script's columns, for MM-RLHF-RewardBench
    groups and Acc+, for Multimodal RewardBench the mean of the columns and the micro accuracy."""
    benchmark = result["benchmark"]
    intro = (
        f"**{NAMES.get(benchmark, benchmark)}**: {result['pairs']} pairs, {result['judgements']} judgements, "
        f"{result['unparseable']} unparseable (counted wrong)."
    )
    return [intro, "", *DETAILS.get(benchmark, generic_detail)(result)]
