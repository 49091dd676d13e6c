"""The sweep report: the sweep's tables and curves, one row or point per arm, in the EGT paper's layout.

Pure rendering: ``results_by_arm`` maps an arm name to its run's evaluate ``results.json``
(``{model: {set_name: summary}}``, see egt.stages.evaluate); reading the store is the caller's
business. An arm absent from ``results_by_arm`` has not finished and is shown so, never guessed.

Every arm is read on one evaluation set (:func:`choose_set`) and on one model (:func:`arm_model`): the
RL model, or the SFT model of an arm without RL. Numbers are the set's official strict scores
(egt.scoring.benchmarks), in percent with two decimals as the paper prints them, each with a binomial
standard error so that differences between arms can be read against the evaluation's size. The paper's
rows (egt.scoring.published) are shown only beside VL-RewardBench results, always marked "(published)".
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from egt.report.benchmark_tables import DASH, NAMES, percent, published
from egt.report.markdown import table as markdown_table
from egt.scoring.benchmarks import VL_CATEGORIES, VL_REWARDBENCH
from egt.scoring.published import PUBLISHED, TABLE2_COLUMNS
from egt.spec import EGTRun
from egt.sweep.spec import EGTSweep, Table

REPORT_FILE = "sweep-report.md"
OVERALL = "Overall"
SE = "± 1 SE"
NOT_FINISHED = "not finished"
# VL-RewardBench's categories under the paper's column names (Table 2 onwards), in its order.
VL_COLUMNS = dict(zip(VL_CATEGORIES, TABLE2_COLUMNS[:3], strict=True))


# --- what is read ------------------------------------------------------------------------------------


def arm_model(run: EGTRun) -> str:
    """The model whose evaluation is the arm's result: "rl", "sft" when the arm runs no RL, "scalar"
    for a kind 'scalar' arm (a sweep can set the two kinds side by side)."""
    if run.spec.kind == "scalar":
        return "scalar"
    return "rl" if run.spec.rl.enabled else "sft"


def set_formats(results_by_arm: dict[str, dict]) -> dict[str, str]:
    """Every evaluation set in the arms' results (any model) → its benchmark format."""
    return {
        set_name: summary["benchmark"]["benchmark"]
        for results in results_by_arm.values()
        for by_set in results.values()
        for set_name, summary in by_set.items()
    }


def choose_set(sweep: EGTSweep, results_by_arm: dict[str, dict]) -> str:
    """The evaluation set the report reads: ``spec.evaluate_set`` when given; else the (first, sorted)
    set scored as VL-RewardBench, the paper's ablation benchmark; else the first set, sorted.

    Raises ValueError when no arm has results, or when an arm with results lacks the set: arms read on
    different sets would not be comparable.
    """
    formats = set_formats(results_by_arm)
    if sweep.spec.evaluate_set is not None:
        chosen = sweep.spec.evaluate_set
    elif formats:
        vl_sets = sorted(name for name, fmt in formats.items() if fmt == VL_REWARDBENCH)
        chosen = (vl_sets or sorted(formats))[0]
    else:
        raise ValueError(f"sweep {sweep.name!r}: no arm has evaluation results, so there is no set to read")
    missing = [
        arm
        for arm, results in results_by_arm.items()
        if not any(chosen in by_set for by_set in results.values())
    ]
    if missing:
        raise ValueError(
            f"sweep {sweep.name!r}: evaluation set {chosen!r} is missing from the results of arm(s) "
            f"{', '.join(missing)}; evaluate every arm on it, or set spec.evaluate_set to a set they share"
        )
    return chosen


def arm_summary(arm: str, run: EGTRun, results: dict, set_name: str) -> dict:
    """The arm's summary on ``set_name`` for its model (:func:`arm_model`); ValueError if absent."""
    model = arm_model(run)
    try:
        return results[model][set_name]
    except KeyError:
        raise ValueError(
            f"arm {arm!r} (run {run.name}): its results have no {model!r} model on set {set_name!r}"
        ) from None


def standard_error(share: float | None, pairs: int) -> float | None:
    """Binomial standard error sqrt(p(1 − p)/n) of a share over ``pairs``; None when undefined."""
    return None if share is None or not pairs else math.sqrt(share * (1 - share) / pairs)


def arm_row(summary: dict) -> dict:
    """One arm's columns on the chosen set: ``{"columns": {name: share}, "pairs", "se"}``.

    VL-RewardBench: Reasoning, Hallu., General and Overall, strict (the paper's Table 2 columns). Any
    other format: its categories that have pairs, then Overall = the benchmark's headline. Shares are
    fractions (None where a category has no pairs); Overall is always the last column.

    ``se`` is the binomial standard error of Overall with n = pairs, not judgements: a pair judged in
    both response orders is the same comparison twice, and its two verdicts are strongly correlated,
    so counting them as 2n independent trials would understate the error by up to √2.
    """
    scored = summary["benchmark"]
    if scored["benchmark"] == VL_REWARDBENCH:
        columns = {label: scored["categories"][name]["accuracy"] for name, label in VL_COLUMNS.items()}
    else:
        columns = {name: stats["accuracy"] for name, stats in scored["categories"].items() if stats["pairs"]}
    overall = scored["headline"]  # VL-RewardBench's headline is its strict overall
    return {
        "columns": {**columns, OVERALL: overall},
        "pairs": scored["pairs"],
        "se": standard_error(overall, scored["pairs"]),
    }


# --- tables and curves -------------------------------------------------------------------------------


def columns_of(benchmark: str, rows: dict[str, dict]) -> list[str]:
    """The table's value columns: the paper's for VL-RewardBench, else every arm's categories (in
    order of first appearance, since arms may differ in which categories have pairs), then Overall."""
    if benchmark == VL_REWARDBENCH:
        return list(TABLE2_COLUMNS)
    names = dict.fromkeys(name for row in rows.values() for name in row["columns"] if name != OVERALL)
    return [*names, OVERALL]


def published_rows(table: Table) -> dict[str, dict[str, float]]:
    """The paper's rows named by ``table.published``: one of its VL-RewardBench ablation tables (those
    in Table 2's columns; Table 1 compares benchmarks, not arms). ValueError for any other name."""
    ablations = {
        name: paper
        for name, paper in PUBLISHED.items()
        if all(tuple(values) == TABLE2_COLUMNS for values in paper.values())
    }
    if table.published not in ablations:
        raise ValueError(
            f"table {table.name!r}: published {table.published!r} is not one of the paper's ablation "
            f"tables transcribed here ({', '.join(ablations)})"
        )
    return ablations[table.published]


def render_table(table: Table, rows: dict[str, dict], benchmark: str) -> list[str]:
    """A sweep table as Markdown lines: one row per arm in the table's order, then the paper's rows.

    ``rows`` maps an arm name to its :func:`arm_row` (an arm not in it is shown as not finished);
    ``benchmark`` is the chosen set's format. The paper's rows (``table.published``) are added only
    when that is VL-RewardBench, the benchmark they were measured on; otherwise a sentence says why
    they are absent.
    """
    columns = columns_of(benchmark, rows)
    lines = []
    body = []
    for label, arm in table.rows.items():
        if arm in rows:
            row = rows[arm]
            values = [percent(row["columns"].get(name)) for name in columns]
            body.append([label, *values, percent(row["se"]), row["pairs"]])
        else:
            body.append([f"{label} ({NOT_FINISHED})", *[DASH] * (len(columns) + 2)])
    if table.published is not None:
        paper = published_rows(table)
        source = f"its {table.published.replace('table', 'Table ')}"
        if benchmark == VL_REWARDBENCH:
            lines += [
                f"Rows marked (published) are the EGT paper's figures ({source}), not measured here.",
                "",
            ]
            body += [
                [f"{label} (published)", *(published(values[name]) for name in columns), DASH, DASH]
                for label, values in paper.items()
            ]
        else:
            lines += [
                f"The EGT paper's values ({source}) are not shown: they are VL-RewardBench scores, and this "
                "sweep does not evaluate VL-RewardBench.",
                "",
            ]
    return lines + markdown_table(("Method", *columns, SE, "Pairs"), body)


def curve_points(table: Table) -> list[tuple[float, str]]:
    """The curve's (x, arm) points in ascending x."""
    return sorted(table.points.items())


def x_text(x: float) -> str:
    """An x value as written in the sweep file (100, not 100.0)."""
    return f"{x:g}"


def plot_curve(table: Table, rows: dict[str, dict], path: Path) -> str:
    """The curve as a PNG at ``path``: x = the point values, y = Overall in %, error bars ± 1 SE.

    Points whose arm has no result (or no Overall) are left out. Returns the file name.
    """
    done = [(x, rows[arm]) for x, arm in curve_points(table) if arm in rows]
    done = [(x, row) for x, row in done if row["columns"][OVERALL] is not None]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.errorbar(
        [x for x, _ in done],
        [100 * row["columns"][OVERALL] for _, row in done],
        yerr=[100 * row["se"] for _, row in done],
        marker="o",
        capsize=3,
    )
    ax.set(title=table.title, xlabel=table.x_label, ylabel="Overall accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def render_points(table: Table, rows: dict[str, dict]) -> list[str]:
    """The curve's points as a small Markdown table (x, arm, Overall, ± 1 SE, pairs)."""
    body = []
    for x, arm in curve_points(table):
        if arm in rows:
            row = rows[arm]
            body.append([x_text(x), arm, percent(row["columns"][OVERALL]), percent(row["se"]), row["pairs"]])
        else:
            body.append([x_text(x), f"{arm} ({NOT_FINISHED})", DASH, DASH, DASH])
    return markdown_table((table.x_label, "Arm", OVERALL, SE, "Pairs"), body)


def render_curve(table: Table, rows: dict[str, dict], out_dir: Path) -> list[str]:
    """A curve section's body: its PNG (when a point has a result), then its points as a table."""
    lines = []
    if any(arm in rows and rows[arm]["columns"][OVERALL] is not None for arm in table.points.values()):
        name = plot_curve(table, rows, out_dir / f"{table.name}.png")
        lines += [f"![{table.title}]({name})", ""]
    else:
        lines += ["No point of this curve has finished yet.", ""]
    if table.published is not None:
        # The paper's data-scale curve (Figure 4) is a plot whose values its text does not give.
        lines += [
            "The EGT paper's curve is not shown: the paper gives it only as a plot, without values.",
            "",
        ]
    return lines + render_points(table, rows)


# --- the report ----------------------------------------------------------------------------------------


def se_range(errors: list[float]) -> str:
    """The smallest and largest standard errors in points ("13.80–17.12"), or one when they agree."""
    low, high = percent(min(errors)), percent(max(errors))
    return low if low == high else f"{low}–{high}"


def render_arms(sweep: EGTSweep, runs: dict[str, EGTRun], rows: dict[str, dict]) -> list[str]:
    """The per-arm table (arm, run, model evaluated, pairs, Overall ± SE) and how to read differences."""
    body = []
    for arm in sweep.spec.arms:
        run = runs[arm.name]
        if arm.name in rows:
            row = rows[arm.name]
            overall = f"{percent(row['columns'][OVERALL])} ± {percent(row['se'])}"
            body.append([arm.name, run.name, arm_model(run), row["pairs"], overall])
        else:
            body.append([arm.name, run.name, arm_model(run), DASH, NOT_FINISHED])
    errors = [row["se"] for row in rows.values() if row["se"] is not None]
    size = f" Here one SE is {se_range(errors)} points." if errors else ""
    return [
        *markdown_table(("Arm", "Run", "Model evaluated", "Pairs", f"{OVERALL} {SE}"), body),
        "± 1 SE is the binomial standard error of Overall over the set's pairs (a pair's two response "
        "orders are not independent, so they count once). Two arms whose Overall differ by less than "
        f"about two SEs are not distinguishable at this size.{size}",
        "",
    ]


def render_sweep_report(
    sweep: EGTSweep, runs: dict[str, EGTRun], results_by_arm: dict[str, dict], out_dir: Path
) -> Path:
    """Write ``out_dir/sweep-report.md`` (and a PNG per curve) and return its path.

    ``runs`` maps every arm to its run (egt.sweep.spec.load_sweep); ``results_by_arm`` maps the arms
    that have finished to their evaluate ``results.json``. Raises ValueError when a finished arm lacks
    the chosen set or its model's results.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Sweep {sweep.name}", ""]
    rows: dict[str, dict] = {}
    if results_by_arm:
        set_name = choose_set(sweep, results_by_arm)
        summaries = {
            arm: arm_summary(arm, runs[arm], results, set_name) for arm, results in results_by_arm.items()
        }
        rows = {arm: arm_row(summary) for arm, summary in summaries.items()}
        benchmark = next(iter(summaries.values()))["benchmark"]["benchmark"]
        lines += [
            f"Evaluation set: `{set_name}` (scored as {NAMES.get(benchmark, benchmark)}). Each arm is "
            "read on its RL model, or on its SFT model when it runs no RL. Values are strict accuracies "
            f"in percent; {SE} is in percentage points.",
            "",
        ]
        for table in sweep.spec.tables:
            lines += [f"## {table.title}", ""]
            if table.kind == "curve":
                lines += render_curve(table, rows, out_dir)
            else:
                lines += render_table(table, rows, benchmark)
    else:
        lines += ["No arm has finished yet: the tables appear once arms have evaluation results.", ""]
    lines += ["## Arms", "", *render_arms(sweep, runs, rows)]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(lines))
    return path
