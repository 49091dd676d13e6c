"""The sweep report: hand-computed percentages and standard errors in the rendered Markdown."""

from __future__ import annotations

import pytest

from egt.scoring.benchmarks import score_benchmark
from egt.spec import EGTRun, parse_run
from egt.sweep.report import arm_model, arm_row, choose_set, render_sweep_report, render_table
from egt.sweep.spec import EGTSweep

RIGHT, WRONG, UNPARSED = "R", "W", "N"


def judgement(outcome: str) -> dict:
    prediction = {"R": 1, "W": 2, "N": None}[outcome]
    return {"prediction": prediction, "correct": prediction == 1, "output": "", "well_formed": True}


def pair(i: int, category: str | None, original: str, swapped: str | None = None) -> dict:
    """A pair judged in the original order, and in the swapped one when ``swapped`` is given."""
    row = {"id": f"pair-{i}", "label": 1, "category": category, "original": judgement(original)}
    return row if swapped is None else {**row, "swapped": judgement(swapped)}


def vl_summary(reasoning: list[str], hallucination: list[str], general: list[str]) -> dict:
    """An evaluate summary on VL-RewardBench; each pair is "RW"-like: its original then swapped outcome."""
    outcomes = [("reasoning", o) for o in reasoning] + [("hallucination", o) for o in hallucination]
    outcomes += [("general", o) for o in general]
    rows = [pair(i, category, o[0], o[1]) for i, (category, o) in enumerate(outcomes)]
    return {"pairs": len(rows), "benchmark": score_benchmark("vl-rewardbench", rows)}


def egt_summary(outcomes: list[tuple[str, str]]) -> dict:
    """An evaluate summary on a synthetic ("egt" format) set, one order per pair."""
    rows = [pair(i, category, outcome) for i, (category, outcome) in enumerate(outcomes)]
    return {"pairs": len(rows), "benchmark": score_benchmark("egt", rows)}


# 8 pairs in both orders (16 judgements). entropy: reasoning 8/8, hallucination 3/4, general 2/4,
# overall 13/16 = 81.25, SE sqrt(.8125 · .1875 / 8) = 13.80 points.
ENTROPY = vl_summary(["RR"] * 4, ["RR", "RW"], ["RR", "WW"])
# random: reasoning 4/8, hallucination 4/4, general 2/4 (an unparsed pair is wrong): 10/16 = 62.50, SE 17.12
RANDOM = vl_summary(["RR", "RR", "WW", "WW"], ["RR", "RR"], ["RR", "NN"])
# sft: reasoning 2/8, hallucination 4/4, general 0/4: 6/16 = 37.50, SE 17.12
SFT = vl_summary(["RR", "WW", "WW", "WW"], ["RR", "RR"], ["WW", "WW"])
# synthetic: clean 2/3, noisy 0/1, overall 2/4 = 50.00, SE sqrt(.25 / 4) = 25.00
SYNTHETIC = egt_summary([("clean", RIGHT), ("clean", RIGHT), ("clean", WRONG), ("noisy", WRONG)])


def results(rl: dict | None, sft: dict) -> dict:
    """An arm's results.json; the synthetic set alongside VL-RewardBench, as a sweep may evaluate both."""
    out = {"sft": {"vl": sft, "synthetic": SYNTHETIC}}
    return out if rl is None else {**out, "rl": {"vl": rl, "synthetic": SYNTHETIC}}


RESULTS = {
    "sft": results(None, SFT),
    "entropy": results(ENTROPY, SFT),  # its own SFT model is the sft arm's: the rl model must be read
    "random": results(RANDOM, SFT),
}


def sweep(**spec) -> EGTSweep:
    return EGTSweep.model_validate(
        {
            "apiVersion": "egt.dev/v1alpha1",
            "kind": "EGTSweep",
            "metadata": {"name": "s"},
            "spec": {
                "base": {},
                "arms": [{"name": "sft"}, {"name": "entropy"}, {"name": "random"}, {"name": "mix"}],
                "tables": [
                    {
                        "name": "table3",
                        "title": "Selection strategies",
                        "published": "table3",
                        "rows": {"Random": "random", "Entropy": "entropy", "Mix": "mix"},
                    },
                    {
                        "name": "scale",
                        "kind": "curve",
                        "title": "Data scale",
                        "points": {0: "sft", 100: "entropy", 50: "mix"},
                    },
                ],
                **spec,
            },
        }
    )


def run(name: str, rl: bool = True) -> EGTRun:
    spec = {"model": {"tiny": {}}, "data": {"synthetic": {}}}
    if not rl:
        spec |= {"rl": {"enabled": False}, "evaluate": {"models": ["sft"]}}
    return parse_run(
        {"apiVersion": "egt.dev/v1alpha1", "kind": "EGTRun", "metadata": {"name": name}, "spec": spec}
    )


RUNS = {
    "sft": run("s-sft", rl=False),
    "entropy": run("s-entropy"),
    "random": run("s-random"),
    "mix": run("s-mix"),
}


def test_arm_model_is_rl_unless_rl_is_disabled_or_the_arm_is_a_scalar_model():
    assert arm_model(RUNS["entropy"]) == "rl"
    assert arm_model(RUNS["sft"]) == "sft"
    scalar = {"model": {"tiny": {}}, "data": {"synthetic": {}}, "kind": "scalar"}
    document = {"apiVersion": "egt.dev/v1alpha1", "kind": "EGTRun", "metadata": {"name": "s-scalar"}}
    assert arm_model(parse_run(document | {"spec": scalar})) == "scalar"


def test_choose_set_prefers_the_given_set_then_vl_rewardbench_then_the_first_sorted():
    assert choose_set(sweep(evaluate_set="synthetic"), RESULTS) == "synthetic"
    # "vl" sorts after "synthetic" but is scored as VL-RewardBench
    assert choose_set(sweep(), RESULTS) == "vl"
    generic_only = {"sft": {"sft": {"b-set": SYNTHETIC, "a-set": SYNTHETIC}}}
    assert choose_set(sweep(), generic_only) == "a-set"


def test_choose_set_names_the_arms_missing_the_set():
    partial = {**RESULTS, "random": {"rl": {"synthetic": SYNTHETIC}}}
    with pytest.raises(ValueError, match=r"'vl' is missing from the results of arm\(s\) random"):
        choose_set(sweep(evaluate_set="vl"), partial)
    with pytest.raises(ValueError, match="no arm has evaluation results"):
        choose_set(sweep(), {})


def test_arm_row_vl_rewardbench_strict_with_se_over_pairs():
    row = arm_row(ENTROPY)
    assert row["columns"] == {"Reasoning": 1.0, "Hallu.": 0.75, "General": 0.5, "Overall": 0.8125}
    assert row["pairs"] == 8  # pairs, not the 16 judgements
    assert row["se"] == pytest.approx((0.8125 * 0.1875 / 8) ** 0.5)


def test_arm_row_other_formats_keep_categories_with_pairs_and_the_headline():
    assert arm_row(SYNTHETIC)["columns"] == {"clean": 2 / 3, "noisy": 0.0, "Overall": 0.5}
    assert arm_row(SYNTHETIC)["se"] == pytest.approx(0.25)
    # Multimodal RewardBench lists all seven columns; only those with pairs are shown.
    mmrb = {"benchmark": score_benchmark("multimodal-rewardbench", [pair(0, "knowledge", RIGHT)])}
    assert arm_row(mmrb)["columns"] == {"knowledge": 1.0, "Overall": 1.0}


def test_vl_table_shows_arms_then_published_rows():
    table = sweep().spec.tables[0]
    rows = {"entropy": arm_row(ENTROPY), "random": arm_row(RANDOM)}
    lines = render_table(table, rows, "vl-rewardbench")
    assert lines[0] == "Rows marked (published) are the EGT paper's figures (its Table 3), not measured here."
    assert lines[2] == "| Method | Reasoning | Hallu. | General | Overall | ± 1 SE | Pairs |"
    assert lines[4] == "| Random | 50.00 | 100.00 | 50.00 | 62.50 | 17.12 | 8 |"
    assert lines[5] == "| Entropy | 100.00 | 75.00 | 50.00 | 81.25 | 13.80 | 8 |"
    assert lines[6] == "| Mix (not finished) | — | — | — | — | — | — |"
    assert lines[7] == "| Random (published) | 66.88 | 75.03 | 53.04 | 69.77 | — | — |"
    assert lines[9] == "| Entropy (published) | 88.33 | 76.50 | 60.20 | 77.15 | — | — |"
    assert lines[10] == ""


def test_other_formats_show_no_published_rows_and_say_why():
    table = sweep().spec.tables[0]
    lines = render_table(table, {"entropy": arm_row(SYNTHETIC)}, "egt")
    assert "not shown" in lines[0] and "does not evaluate VL-RewardBench" in lines[0]
    assert lines[2] == "| Method | clean | noisy | Overall | ± 1 SE | Pairs |"
    assert lines[5] == "| Entropy | 66.67 | 0.00 | 50.00 | 25.00 | 4 |"
    assert not any("(published)" in line for line in lines)


def test_unknown_published_table_is_a_clear_error():
    for name in ("table9", "table1"):  # Table 1 is the paper's, but compares benchmarks, not arms
        table = sweep().spec.tables[0].model_copy(update={"published": name})
        with pytest.raises(ValueError, match=f"'{name}' is not one of the paper's ablation tables"):
            render_table(table, {}, "vl-rewardbench")


def test_sweep_report_on_vl_rewardbench(tmp_path):
    path = render_sweep_report(sweep(), RUNS, RESULTS, tmp_path)
    text = path.read_text()
    assert path == tmp_path / "sweep-report.md"
    assert "Evaluation set: `vl` (scored as VL-RewardBench)" in text
    assert text.index("## Selection strategies") < text.index("## Data scale") < text.index("## Arms")
    assert "| Entropy (published) | 88.33 | 76.50 | 60.20 | 77.15 | — | — |" in text
    # the curve: its PNG, then its points in ascending x, the unfinished one marked
    assert "![Data scale](scale.png)" in text
    assert (tmp_path / "scale.png").read_bytes().startswith(b"\x89PNG")
    assert "| share of the pool (%) | Arm | Overall | ± 1 SE | Pairs |" in text
    points = text[text.index("| share of the pool (%)") :].splitlines()
    assert points[2:5] == [
        "| 0 | sft | 37.50 | 17.12 | 8 |",
        "| 50 | mix (not finished) | — | — | — |",
        "| 100 | entropy | 81.25 | 13.80 | 8 |",
    ]
    # the arms: the sft arm read on its SFT model, the others on RL; mix not finished
    assert "| sft | s-sft | sft | 8 | 37.50 ± 17.12 |" in text
    assert "| entropy | s-entropy | rl | 8 | 81.25 ± 13.80 |" in text
    assert "| random | s-random | rl | 8 | 62.50 ± 17.12 |" in text
    assert "| mix | s-mix | rl | — | not finished |" in text
    assert "less than about two SEs are not distinguishable" in text
    assert "Here one SE is 13.80–17.12 points." in text


def test_sweep_report_on_another_set_has_no_published_rows(tmp_path):
    text = render_sweep_report(sweep(evaluate_set="synthetic"), RUNS, RESULTS, tmp_path).read_text()
    assert "Evaluation set: `synthetic` (scored as egt)" in text
    assert "(published)" not in text
    assert "does not evaluate VL-RewardBench" in text
    assert "| entropy | s-entropy | rl | 4 | 50.00 ± 25.00 |" in text


def test_sweep_report_before_any_arm_finished(tmp_path):
    text = render_sweep_report(sweep(), RUNS, {}, tmp_path).read_text()
    assert "No arm has finished yet" in text
    assert "| sft | s-sft | sft | — | not finished |" in text
    assert "| entropy | s-entropy | rl | — | not finished |" in text
    assert not list(tmp_path.glob("*.png"))


def test_one_se_when_the_arms_agree(tmp_path):
    same = {"entropy": results(ENTROPY, SFT), "random": results(ENTROPY, SFT)}
    text = render_sweep_report(sweep(), RUNS, same, tmp_path).read_text()
    assert "Here one SE is 13.80 points." in text
