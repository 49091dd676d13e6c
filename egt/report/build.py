"""The run report: one Markdown file with PNG plots, built only from what the stages stored.

Every number comes from a stage's manifest or output, as measured; nothing is recomputed from
settings. A stage that has not run (no manifest) gets a note instead of its section, so a partial run
still renders. Where a comparison goes against what the method expects (entropy curation removing
less noise than chance, RL below SFT, a loss that rose), the report says so in plain words.

Plots use matplotlib's ``Figure`` directly (rendered by the Agg canvas) rather than ``pyplot``, so
building a report neither needs a display nor changes the calling process's global backend.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from egt.algorithms.curation import METRIC_COLUMNS
from egt.report.benchmark_tables import TABLE1_FORMATS, benchmark_detail, table1, table2
from egt.report.effect import (
    CONFIDENT_ENTROPY,
    clean_accuracy,
    likely_flips,
    removed_share_by_lowest,
    reward_trend,
    separation,
)
from egt.report.markdown import table
from egt.scoring.benchmarks import VL_REWARDBENCH
from egt.spec import EGTRun
from egt.stages.base import ATTEMPT_FILE
from egt.storage.manifest import Manifest, manifest_digest, manifest_key, read_manifest
from egt.storage.records import read_records
from egt.storage.store import ArtifactStore

REPORT_NAME = "report.md"
# An AUROC below this is read as "does not separate" in the report's words (0.5 is chance).
SEPARATES = 0.6
EFFECT_FILE = "effect.json"  # the numbers of "What this run shows", for docs and comparisons
PLOTS = (
    "sft_loss.png",
    "entropy_histogram.png",
    "accuracy_by_entropy_bin.png",
    "curation_vs_random.png",
    "rl_curves.png",
)
# Truth kinds of the synthetic data; curation should keep clean pairs and remove the others.
NOISE_KINDS = ("ambiguous", "flipped")
KIND_ORDER = ("clean", *NOISE_KINDS)
RL_TOP = ("reward_mean", "accuracy", "format_ratio")
RL_BOTTOM = ("clip_fraction", "advantage_filtered_ratio")


@dataclass(frozen=True)
class StageView:
    """A stage as the report sees it: its manifest (None unless finished) and a one-line state."""

    name: str
    manifest: Manifest | None
    state: str


@dataclass(frozen=True)
class Context:
    store: ArtifactStore
    run: EGTRun
    out_dir: Path
    stages: dict[str, StageView]

    def manifest(self, stage: str) -> Manifest | None:
        """The stage's manifest; None unless finished (or when the run has no such stage)."""
        view = self.stages.get(stage)
        return view.manifest if view else None

    def output(self, stage: str, name: str) -> str:
        """The store key of a finished stage's output (manifests hold keys relative to the stage)."""
        return self.manifest(stage).output_key(self.run.name, name)

    @functools.cached_property
    def probed(self) -> list[dict]:
        """The probed pool, read once: two sections use it, and on a cluster it is a large S3 object."""
        return read_records(self.store, self.output("probe", "probed"))

    def not_run(self, stage: str) -> list[str]:
        return [f"_Stage `{stage}` {self.stages[stage].state}._", ""]


# --- formatting -------------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def num(x: float | None, digits: int = 3) -> str:
    """Fixed decimals; infinities and NaN spelled out so they never look like measurements."""
    if x is None:
        return "n/a"
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"


def points(x: float) -> str:
    """A difference of two shares, in percentage points with its sign."""
    return f"{100 * x:+.1f} points"


def duration(manifest: Manifest) -> str:
    seconds = datetime.fromisoformat(manifest.finished_at) - datetime.fromisoformat(manifest.started_at)
    seconds = seconds.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def kinds_in_order(kinds: Sequence[str]) -> list[str]:
    """clean, ambiguous, flipped first (the data's own order of severity), then any others sorted."""
    return [k for k in KIND_ORDER if k in kinds] + sorted(k for k in set(kinds) if k not in KIND_ORDER)


def finite_or_nan(value: Any) -> float:
    """Plot input: JSON null becomes NaN (a gap), not a crash."""
    return float("nan") if value is None else float(value)


# --- plots ------------------------------------------------------------------------------------------


def marker(n: int) -> str | None:
    """Dots on short series, so a run of one or two steps still shows its points."""
    return "." if n < 50 else None


def save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def plot_sft_loss(losses: list[float], path: Path) -> str:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses, marker=marker(len(losses)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="SFT loss per optimizer step", xlabel="step", ylabel="loss (mean NLL, nats/token)")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_entropy_histogram(records: list[dict], threshold: float | None, path: Path) -> str:
    """Answered samples only (+inf has no bin); stacked by truth kind when the data carries one."""
    finite = [r for r in records if math.isfinite(r["answer_entropy"])]
    values = [r["answer_entropy"] for r in finite]
    edges = np.histogram_bin_edges(values, bins=min(40, max(5, int(math.sqrt(len(values))))))
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    if any("truth_kind" in r for r in finite):
        kinds = kinds_in_order([str(r.get("truth_kind")) for r in finite])
        groups = [[r["answer_entropy"] for r in finite if str(r.get("truth_kind")) == k] for k in kinds]
        ax.hist(groups, bins=edges, stacked=True, label=kinds)
    else:
        ax.hist(values, bins=edges)
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="highest kept (curate)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.set(
        title="Answer-token entropy of the probed RL pool",
        xlabel="answer-token entropy (nats)",
        ylabel="samples",
    )
    return save(fig, path)


def bin_label(row: dict) -> str:
    return "no answer" if row["low"] is None else f"{row['low']:.3g}–{row['high']:.3g}"


def plot_accuracy_by_bin(bins: list[dict], path: Path) -> str:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    x = np.arange(len(bins))
    bars = ax.bar(x, [row["accuracy"] for row in bins])
    ax.bar_label(bars, labels=[f"n={row['count']}" for row in bins], fontsize="small")
    ax.set_xticks(x, [bin_label(row) for row in bins], fontsize="small")
    ax.set_ylim(0, 1.1)
    ax.set(
        title="Probe accuracy per answer-entropy bin",
        xlabel="answer-token entropy bin (nats)",
        ylabel="accuracy",
    )
    return save(fig, path)


def plot_curation(kinds: list[str], entropy: dict, random: dict, strategy: str, path: Path) -> str:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    x = np.arange(len(kinds))
    width = 0.38
    ax.bar(x - width / 2, [entropy[k]["removed_share"] for k in kinds], width, label=f"{strategy} (this run)")
    ax.bar(x + width / 2, [random[k]["removed_share"] for k in kinds], width, label="random, same size")
    ax.set_xticks(x, kinds)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize="small")
    ax.set(
        title="Share of each truth kind removed by curation",
        xlabel="truth kind",
        ylabel="share removed from the pool",
    )
    return save(fig, path)


def plot_rl(history: list[dict], path: Path) -> str:
    fig = Figure(figsize=(6, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = [row["step"] for row in history]
    for ax, names in ((top, RL_TOP), (bottom, RL_BOTTOM)):
        for name in names:
            if any(name in row for row in history):
                values = [finite_or_nan(row.get(name)) for row in history]
                ax.plot(steps, values, marker=marker(len(steps)), label=name)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.set(title="RL reward, accuracy and format per step", ylabel="mean over the batch")
    bottom.set(title="Clipped and advantage-filtered shares per step", xlabel="step", ylabel="share")
    return save(fig, path)


# --- sections ---------------------------------------------------------------------------------------


def stage_view(store: ArtifactStore, run: str, stage: str) -> StageView:
    """Finished, finished-but-stale (an upstream manifest changed since), started, invalid, or not run."""
    try:
        manifest = read_manifest(store, run, stage)
    except ValueError as e:
        first_line = str(e).splitlines()[0]  # the rest is pydantic's per-field detail, too long for a table
        return StageView(stage, None, f"has a manifest that does not validate ({first_line})")
    if manifest is None:
        started = store.exists(f"{run}/{stage}/{ATTEMPT_FILE}")
        state = "has started but not finished (no manifest)" if started else "has not run"
        return StageView(stage, None, state)
    changed = [
        up
        for up, digest in manifest.inputs.items()
        if not store.exists(manifest_key(run, up)) or manifest_digest(store, run, up) != digest
    ]
    if changed:
        names = ", ".join(f"`{up}`" for up in changed)
        return StageView(stage, manifest, f"finished, but stale: {names} changed since it ran")
    return StageView(stage, manifest, "finished")


def summary_section(ctx: Context) -> list[str]:
    rows = [
        (
            f"`{v.name}`",
            v.state,
            v.manifest.finished_at if v.manifest else "—",
            duration(v.manifest) if v.manifest else "—",
        )
        for v in ctx.stages.values()
    ]
    lines = [f"## 1. Run summary: `{ctx.run.name}`", "", f"Store: `{ctx.store.uri_for(ctx.run.name)}`", ""]
    lines += table(("stage", "state", "finished at", "duration"), rows)
    lines += [
        "Durations are from each manifest's start and finish times: the stage's last actual run (a "
        "skipped stage keeps the times of the run that produced its outputs).",
        "",
    ]
    prepare = ctx.manifest("prepare")
    if prepare is None:
        return lines + ctx.not_run("prepare")
    lines += ["Data sizes: " + ", ".join(f"{k} {v}" for k, v in prepare.counts.items()) + ".", ""]
    suffix = "_truth_kinds"
    pools = {k.removesuffix(suffix): v for k, v in prepare.metrics.items() if k.endswith(suffix)}
    if pools:
        kinds = kinds_in_order([k for counts in pools.values() for k in counts])
        source = (
            "injected by the synthetic data"
            if ctx.run.spec.data.synthetic is not None
            else "from the datasets' truth_kind columns"
        )
        lines += [f"Truth kinds {source} (pairs per pool):", ""]
        lines += table(("pool", *kinds), [(p, *(c.get(k, 0) for k in kinds)) for p, c in pools.items()])
    return lines


def effect_numbers(ctx: Context) -> dict[str, Any] | None:
    """The EGT-effect measurements (egt.report.effect) of this run; None without probe truth columns."""
    if ctx.manifest("probe") is None:
        return None
    records = ctx.probed
    if not any("truth_kind" in r for r in records):
        return None
    # The probe's own equal-count answer-entropy bins (ACCURACY_BINS = 5: fifths), answered samples only.
    answered_bins = [
        b for b in ctx.manifest("probe").metrics.get("accuracy_by_entropy_bin", []) if b["low"] is not None
    ]
    flags = likely_flips(records)
    numbers: dict[str, Any] = {
        "probe_clean_accuracy": clean_accuracy(records),
        "auroc_answer_entropy": separation(records, "answer_entropy"),
        "auroc_sentence_entropy": separation(records, "sentence_entropy"),
        "accuracy_lowest_fifth": answered_bins[0]["accuracy"] if answered_bins else None,
        "accuracy_highest_fifth": answered_bins[-1]["accuracy"] if answered_bins else None,
        "flagged_likely_flips": flags.flagged,
        "flagged_true_flips": flags.true_flips,
        "flipped_in_pool": flags.flips,
        "flipped_answered_against_label": flags.flips_answered_against_label,
    }
    curate = ctx.manifest("curate")
    removed = curate.metrics.get("removed_by_truth_kind", {}) if curate else {}
    chance = curate.metrics.get("random_removed_by_truth_kind", {}) if curate else {}
    for kind in NOISE_KINDS:
        if kind in removed and kind in chance:
            numbers[f"{kind}_removed"] = removed[kind]["removed_share"]
            numbers[f"{kind}_removed_random"] = chance[kind]["removed_share"]
    if curate is not None and "ambiguous" in removed:
        # What each entropy would have removed at the size curation kept (the paper's Table 4 choice).
        for metric, column in METRIC_COLUMNS.items():
            numbers[f"ambiguous_removed_by_lowest_{metric}"] = removed_share_by_lowest(
                records, column, curate.counts["kept"], "ambiguous"
            )
    if ctx.manifest("rl") is not None and "history" in ctx.manifest("rl").outputs:
        trend = reward_trend(ctx.store.read_json(ctx.output("rl", "history")))
        if trend:
            numbers["rl_reward_first_quarter"], numbers["rl_reward_last_quarter"] = trend
    if ctx.manifest("evaluate") is not None:
        results = ctx.store.read_json(ctx.output("evaluate", "results"))
        for model, sets in results.items():
            for name, scores in sets.items():
                numbers[f"eval_{model}_{name}_accuracy"] = scores.get("accuracy")
                numbers[f"eval_{model}_{name}_pairs"] = scores.get("pairs")
    return numbers


def reward_sentence(first: float, last: float) -> str:
    """Whether RL's reward rose, from the first and last quarter of its steps (egt.report.effect)."""
    verdict = "rose" if last > first else "did not rise"
    quarters = f"{num(first)} over the first quarter of steps, {num(last)} over the last"
    return f"RL's mean reward {verdict}: {quarters}."


def effect_section(ctx: Context) -> list[str]:
    """What the run shows about the method, in plain words, from the probe's and curate's outputs."""
    lines = ["## What this run shows", ""]
    numbers = effect_numbers(ctx)
    if numbers is None:
        return [
            *lines,
            "The probed pool has no truth columns (or probing has not run): the EGT effect cannot be "
            "checked against known noise here. Sections 4 and 5 show the entropies and curation.",
            "",
        ]
    (ctx.out_dir / EFFECT_FILE).write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    answer, sentence = numbers["auroc_answer_entropy"], numbers["auroc_sentence_entropy"]
    low, high = numbers["accuracy_lowest_fifth"], numbers["accuracy_highest_fifth"]
    rows = [
        (
            "probe accuracy on clean pairs",
            pct(numbers["probe_clean_accuracy"]),
            "well above 50%: the task was learned",
        ),
        ("AUROC, answer-token entropy (eq. 3), ambiguous vs clean", num(answer), "above 0.5"),
        ("AUROC, mean token entropy (eq. 4), ambiguous vs clean", num(sentence), "above 0.5"),
        ("accuracy, lowest-entropy fifth / highest fifth", f"{pct(low)} / {pct(high)}", "first above second"),
    ]
    if "ambiguous_removed" in numbers and not varies(ctx.probed, "answer_entropy"):
        rows.append(("ambiguous pairs removed: entropy curation / random", "n/a: no entropy varies", "—"))
    elif "ambiguous_removed" in numbers:
        mine, chance = numbers["ambiguous_removed"], numbers["ambiguous_removed_random"]
        rows.append(
            (
                "ambiguous pairs removed: entropy curation / random",
                f"{pct(mine)} / {pct(chance)}",
                "first above second",
            )
        )
    by_metric = {m: numbers.get(f"ambiguous_removed_by_lowest_{m}") for m in METRIC_COLUMNS}
    if any(v is not None for v in by_metric.values()):
        shares = ", ".join(f"{m} {pct(v)}" for m, v in by_metric.items())
        rows.append(("ambiguous removed keeping the same number by each entropy", shares, "—"))
    lines += table(("measure", "this run", "what the method expects"), rows)
    if answer is not None and sentence is not None:
        if answer < SEPARATES <= sentence:
            lines += [
                f"The answer-token entropy does not separate ambiguous pairs here (AUROC {num(answer)}), "
                f"while the mean token entropy does ({num(sentence)}): the reasoning settles the "
                "uncertainty before the answer is written, so the answer token is confident either way.",
                "",
            ]
        elif answer >= SEPARATES:
            lines += [
                "Answer-token entropy is higher on ambiguous pairs than on clean ones "
                f"(AUROC {num(answer)}).",
                "",
            ]
        else:
            lines += [
                "Neither entropy separates ambiguous from clean pairs in this run "
                f"(AUROC below {SEPARATES}).",
                "",
            ]
    flips = numbers["flipped_in_pool"]
    if flips:
        against = numbers["flipped_answered_against_label"]
        flagged, true = numbers["flagged_likely_flips"], numbers["flagged_true_flips"]
        share = f" ({pct(true / flagged)} of them truly flipped)" if flagged else ""
        lines += [
            f"Flipped pairs: the probe answered {against} of the pool's {flips} flipped pairs against "
            "their (wrong) label; entropy is not meant to remove these, a judge that learned the task is "
            f"confident on them. Confident answers (answer entropy ≤ {CONFIDENT_ENTROPY:.3f} nats, a 90/10 "
            f"choice) that disagree with the label were flagged as likely flips: {flagged}{share}, "
            f"catching {true} of the {flips} flips.",
            "",
        ]
    if "rl_reward_first_quarter" in numbers:
        lines += [reward_sentence(numbers["rl_reward_first_quarter"], numbers["rl_reward_last_quarter"]), ""]
    return lines


def annotation_section(ctx: Context) -> list[str]:
    lines = ["## 2. Annotation (teacher trajectories for SFT)", ""]
    m = ctx.manifest("annotate")
    if m is None:
        return lines + ctx.not_run("annotate")
    pairs, kept = m.counts.get("pairs", 0), m.counts.get("kept", 0)
    discarded = m.counts.get("discarded", pairs - kept)
    share = (lambda n: pct(n / pairs)) if pairs else (lambda n: "n/a")
    lines += [
        f"Of {pairs} SFT pairs, the teacher agreed with the label on {kept} ({share(kept)}), "
        f"which were kept; {discarded} ({share(discarded)}) were discarded after "
        f"{ctx.run.spec.annotate.max_attempts} attempts. Teacher request errors: "
        f"{m.counts.get('teacher_errors', 0)}.",
        "",
    ]
    attempts = m.metrics.get("attempts_needed", {})
    if attempts:
        lines += ["Attempts needed by the kept pairs:", ""]
        lines += table(
            ("attempts", "pairs", "share of kept"),
            [(a, n, pct(n / kept) if kept else "n/a") for a, n in attempts.items()],
        )
    by_kind = m.metrics.get("kept_share_by_truth_kind", {})
    if set(by_kind) - {"unknown"}:
        prepare = ctx.manifest("prepare")
        in_pool = prepare.metrics.get("sft_truth_kinds", {}) if prepare else {}
        lines += [
            "Kept share by truth kind (a kept `flipped` pair is a trajectory agreeing with a swapped label):",
            "",
        ]
        lines += table(
            ("truth kind", "pairs in SFT pool", "kept share"),
            [(k, in_pool.get(k, "—"), pct(by_kind[k])) for k in kinds_in_order(list(by_kind))],
        )
    return lines


def sft_section(ctx: Context) -> list[str]:
    lines = ["## 3. SFT (cold start)", ""]
    m = ctx.manifest("sft")
    if m is None:
        return lines + ctx.not_run("sft")
    losses = [finite_or_nan(x) for x in ctx.store.read_json(ctx.output("sft", "losses"))]
    first, final = m.metrics.get("first_loss"), m.metrics.get("final_loss")
    lines += [
        f"{m.counts.get('examples', 'n/a')} examples, {m.counts.get('steps', len(losses))} optimizer "
        f"steps. Loss of the first step {num(first, 4)} → last step {num(final, 4)}.",
        "",
    ]
    if isinstance(first, float | int) and isinstance(final, float | int) and final >= first:
        lines += ["The last step's loss is not below the first step's: the loss did not decrease.", ""]
    bad = sum(not math.isfinite(x) for x in losses)
    if bad:
        lines += [f"{bad} of {len(losses)} step losses are not finite (gaps in the plot).", ""]
    if losses:
        lines += [f"![SFT loss]({plot_sft_loss(losses, ctx.out_dir / 'sft_loss.png')})", ""]
    return lines


def kind_rows(records: list[dict]) -> list[tuple]:
    """Per truth kind: samples, unanswered, median answer entropy of the answered, probe accuracy."""
    rows = []
    for kind in kinds_in_order([str(r.get("truth_kind")) for r in records]):
        group = [r for r in records if str(r.get("truth_kind")) == kind]
        answered = [r["answer_entropy"] for r in group if math.isfinite(r["answer_entropy"])]
        median = num(float(np.median(answered))) if answered else "n/a"
        rows.append(
            (
                kind,
                len(group),
                len(group) - len(answered),
                median,
                pct(sum(bool(r["probe_correct"]) for r in group) / len(group)),
            )
        )
    return rows


def bin_trend(bins: list[dict]) -> str:
    """Whether accuracy falls as answer entropy rises (the EGT paper's Figure 2), stated as measured."""
    answered = [row["accuracy"] for row in bins if row["low"] is not None]
    if len(answered) < 2:
        return "Fewer than two answered bins: no trend to read."
    low, high = answered[0], answered[-1]
    if low <= high:
        return (
            f"Accuracy in the lowest-entropy bin ({pct(low)}) is not above the highest-entropy bin's "
            f"({pct(high)}): the EGT paper's Figure 2 pattern (accuracy falling as entropy rises) "
            "does not appear in this run."
        )
    monotone = all(a >= b for a, b in itertools.pairwise(answered))
    how = "falls or stays level at every bin" if monotone else "is not monotone across the bins"
    return (
        f"Accuracy in the lowest-entropy bin ({pct(low)}) is above the highest-entropy bin's "
        f"({pct(high)}), as in the EGT paper's Figure 2; it {how}."
    )


def probe_section(ctx: Context) -> list[str]:
    lines = ["## 4. Entropy probing (SFT model on the RL pool)", ""]
    m = ctx.manifest("probe")
    if m is None:
        return lines + ctx.not_run("probe")
    records = ctx.probed
    unanswered = sum(not math.isfinite(r["answer_entropy"]) for r in records)
    lines += [
        f"{len(records)} samples probed. Accuracy {pct(m.metrics.get('accuracy'))}, well-formed "
        f"outputs {pct(m.metrics.get('well_formed'))}. Median answer-token entropy of answered "
        f"samples: {num(m.metrics.get('answer_entropy_median'))} nats.",
        "",
        f"{unanswered} samples had no parseable answer (answer entropy +∞); they are counted here and "
        "not plotted.",
        "",
    ]
    answers = {r.get("probe_prediction") for r in records if r.get("probe_prediction") is not None}
    if len(answers) == 1 and len(records) - unanswered > 1:
        [answer] = answers
        lines += [
            f"Every answered sample got the same answer ({answer}): the probe's accuracy is the share of "
            f"labels that say {answer}, not a measure of judgement.",
            "",
        ]
    if len(records) > unanswered:
        curate = ctx.manifest("curate")
        same_metric = ctx.run.spec.curate.metric == "answer"
        threshold = curate.metrics.get("kept_max_entropy") if curate and same_metric else None
        image = plot_entropy_histogram(records, threshold, ctx.out_dir / "entropy_histogram.png")
        lines += [f"![Answer-entropy histogram]({image})", ""]
    if any("truth_kind" in r for r in records):
        header = ("truth kind", "samples", "unanswered", "median answer entropy (nats)", "probe accuracy")
        lines += table(header, kind_rows(records))
    bins = m.metrics.get("accuracy_by_entropy_bin", [])
    if not bins:
        return [*lines, "Accuracy per entropy bin was not recorded.", ""]
    image = plot_accuracy_by_bin(bins, ctx.out_dir / "accuracy_by_entropy_bin.png")
    lines += [
        "Accuracy per answer-entropy bin (equal-count bins of the answered samples; the EGT paper's "
        "Figure 2):",
        "",
        f"![Accuracy per entropy bin]({image})",
        "",
    ]
    rows = [(i + 1, bin_label(row), row["count"], pct(row["accuracy"])) for i, row in enumerate(bins)]
    lines += table(("bin", "answer entropy (nats)", "samples", "accuracy"), rows)
    return [*lines, bin_trend(bins), ""]


def varies(records: list[dict], column: str) -> bool:
    """Whether a column takes two or more values in the pool (all +∞: every answer unparseable)."""
    return len({r.get(column) for r in records}) > 1


def removal_sentence(kind: str, mine: float, chance: float, strategy: str) -> str:
    """Compare with random selection in the direction curation should go for this kind, plainly."""
    shares = f"({pct(mine)} vs {pct(chance)})"
    if mine == chance:
        return f"- `{kind}`: {strategy} curation removed the same share as random selection {shares}."
    more = mine > chance
    comparison = "a larger" if more else "a smaller"
    sentence = f"- `{kind}`: {strategy} curation removed {comparison} share than random selection {shares}"
    if kind == "clean":
        return sentence + (": it discarded more clean pairs than chance would." if more else ".")
    if kind in NOISE_KINDS:
        return sentence + ("." if more else ": it removed less of this noise than chance would.")
    return sentence + "."


def curation_section(ctx: Context) -> list[str]:
    lines = ["## 5. Curation", ""]
    m = ctx.manifest("curate")
    if m is None:
        return lines + ctx.not_run("curate")
    spec = ctx.run.spec.curate
    size = f"spec keep {spec.keep}" if spec.keep is not None else f"spec percentile {spec.percentile}"
    pool, kept = m.counts.get("pool"), m.counts.get("kept")
    share = f" ({pct(kept / pool)})" if pool and kept is not None else ""
    column = METRIC_COLUMNS[spec.metric]
    highest = "Kept threshold (highest kept)" if spec.strategy == "entropy" else f"Highest kept {column}"
    kept_acc, pool_acc = m.metrics.get("kept_accuracy"), m.metrics.get("pool_accuracy")
    lines += [
        f"Strategy `{spec.strategy}` on `{column}`, {size}: kept {kept} of {pool} probed "
        f"samples{share}. {highest}: {num(m.metrics.get('kept_max_entropy'))} nats.",
        "",
        f"Probe accuracy of the kept samples {pct(kept_acc)} vs the whole pool {pct(pool_acc)} "
        "(measured against the pool's labels, noise included).",
        "",
    ]
    if isinstance(kept_acc, float | int) and isinstance(pool_acc, float | int) and kept_acc < pool_acc:
        lines += ["The kept samples were probed less accurately than the pool as a whole.", ""]
    mine, chance = m.metrics.get("removed_by_truth_kind"), m.metrics.get("random_removed_by_truth_kind")
    ranked_by = {"entropy": column, "bucket": column}.get(spec.strategy)
    if ranked_by is not None and not varies(ctx.probed, ranked_by):
        return [
            *lines,
            f"Every probed sample has the same {column} ({num(ctx.probed[0].get(column))}): "
            f"{spec.strategy} curation had nothing to rank and chose by id, so what it kept or removed "
            "says nothing about entropy.",
            "",
        ]
    if not mine or not chance:
        return [
            *lines,
            "The pool has no truth columns (real data): what curation removed cannot be checked "
            "against injected noise.",
            "",
        ]
    kinds = kinds_in_order([k for k in mine if k in chance])
    image = plot_curation(kinds, mine, chance, spec.strategy, ctx.out_dir / "curation_vs_random.png")
    lines += [
        f"What curation removed, per injected truth kind, next to a seeded random selection of the "
        f"same size ({kept} kept):",
        "",
        f"![Curation vs random]({image})",
        "",
    ]
    header = (
        "truth kind",
        "in pool",
        f"kept ({spec.strategy})",
        f"removed ({spec.strategy})",
        "kept (random)",
        "removed (random)",
        "difference",
    )
    rows = [
        (
            k,
            mine[k]["in_pool"],
            mine[k]["kept"],
            pct(mine[k]["removed_share"]),
            chance[k]["kept"],
            pct(chance[k]["removed_share"]),
            points(mine[k]["removed_share"] - chance[k]["removed_share"]),
        )
        for k in kinds
    ]
    lines += table(header, rows)
    lines += [
        removal_sentence(k, mine[k]["removed_share"], chance[k]["removed_share"], spec.strategy)
        for k in kinds
    ]
    return [*lines, ""]


def rl_section(ctx: Context) -> list[str]:
    lines = ["## 6. RL (StableReinforce)", ""]
    m = ctx.manifest("rl")
    if m is None:
        return lines + ctx.not_run("rl")
    if "history" not in m.outputs:
        return [*lines, "RL was off (`rl.enabled: false`): the SFT model is this run's result.", ""]
    history = ctx.store.read_json(ctx.output("rl", "history"))
    if not history:
        return [*lines, "The RL stage finished with no steps recorded.", ""]
    spec = ctx.run.spec.rl
    lines += [
        f"{len(history)} steps over {m.counts.get('curated', 'n/a')} curated samples; each step is one "
        f"batch of up to {spec.global_batch_size} prompts × {spec.rollouts_per_prompt} rollout(s), so "
        "single-step values are noisy.",
        "",
        f"![RL curves]({plot_rl(history, ctx.out_dir / 'rl_curves.png')})",
        "",
    ]
    first, last = history[0], history[-1]
    names = [k for k in first if k != "step"]
    rows = [(n, num(finite_or_nan(first.get(n)), 4), num(finite_or_nan(last.get(n)), 4)) for n in names]
    lines += table(("metric", f"step {first['step']}", f"step {last['step']}"), rows)
    trend = reward_trend(history)
    if trend:  # the same reading as "What this run shows": single steps are too noisy to compare
        lines += [reward_sentence(*trend), ""]
    return lines


def eval_row(model: str, name: str, s: dict) -> tuple:
    bias = s.get("position_bias")
    shares = ("accuracy", "accuracy_original", "accuracy_swapped")
    rates = ("order_consistency", "well_formed_original", "well_formed_swapped", "answered_ratio")
    return (
        model,
        name,
        s.get("pairs"),
        *(pct(s.get(k)) for k in shares),
        "n/a" if bias is None else points(bias),
        *(pct(s.get(k)) for k in rates),
    )


def compare_models(name: str, base: tuple[str, dict], other: tuple[str, dict]) -> str:
    """``other`` against ``base`` on one set, with a binomial standard error for scale, so small gaps
    are not read as gains."""
    (base_label, base_scores), (label, scores) = base, other
    a, b, n = base_scores["accuracy"], scores["accuracy"], base_scores.get("pairs") or 0
    p = (a + b) / 2
    if n and 0 < p < 1:
        error = 100 * math.sqrt(p * (1 - p) / n)
        scale = f"; one binomial standard error at {n} pairs is about {error:.1f} points"
    elif n:  # every answer right (or wrong): the standard error is 0 and says nothing
        scale = (
            f"; at {n} pairs a rate seen as {pct(p)} could be {300 / n:.1f} points off (the rule of three)"
        )
    else:
        scale = ""
    if b == a:
        return f"- `{name}`: {label} and {base_label} have the same accuracy ({pct(a)}){scale}."
    gap = f"{'below' if b < a else 'above'} {base_label} by {100 * abs(a - b):.1f} points"
    return f"- `{name}`: {label} is {gap} ({pct(b)} vs {pct(a)}){scale}."


def scalar_section(ctx: Context) -> list[str]:
    lines = ["## Scalar reward model (Bradley–Terry)", ""]
    m = ctx.manifest("scalar")
    if m is None:
        return lines + ctx.not_run("scalar")
    spec = ctx.run.spec.scalar
    frozen = ", ".join(spec.freeze) or "nothing"
    first, final = m.metrics.get("first_loss"), m.metrics.get("final_loss")
    extra = (
        f" plus {m.counts['extra_pairs']} extra pairs in the second phase"
        if m.counts.get("extra_pairs")
        else ""
    )
    lines += [
        f"A linear head on the base model ({spec.pooling} pooling; frozen: {frozen}) "
        f"trained on {m.counts.get('pairs', 'n/a')} labelled pairs of the SFT pool{extra}, "
        f"{m.counts.get('steps', 'n/a')} optimizer steps. BT loss of the first step {num(first, 4)} "
        f"(log 2 = {num(math.log(2), 4)}: no preference) → last step {num(final, 4)}.",
        "",
    ]
    return lines


def evaluation_section(ctx: Context) -> list[str]:
    lines = ["## 7. Evaluation", ""]
    m = ctx.manifest("evaluate")
    if m is None:
        return lines + ctx.not_run("evaluate")
    results = ctx.store.read_json(ctx.output("evaluate", "results"))
    lines += [
        "Accuracy is the mean over the scored orders (as given, and with the responses swapped). "
        'Position bias is the share of answers "1" minus one half (positive: prefers the first '
        "response). Order consistency is the share of pairs judged the same way in both orders.",
        "",
    ]
    lines += table(
        (
            "model",
            "set",
            "pairs",
            "accuracy",
            "acc. original",
            "acc. swapped",
            "position bias",
            "order consistency",
            "well-formed original",
            "well-formed swapped",
            "answered",
        ),
        [eval_row(model, name, s) for model, sets in results.items() for name, s in sets.items()],
    )
    shared = [n for n in results.get("sft", {}) if n in results.get("rl", {})]
    if shared:
        lines += ["RL against SFT:", ""]
        lines += [compare_models(n, ("SFT", results["sft"][n]), ("RL", results["rl"][n])) for n in shared]
        lines.append("")
    reasoning = "rl" if "rl" in results else "sft"
    shared = [n for n in results.get("scalar", {}) if n in results.get(reasoning, {})]
    if shared:  # the scalar baseline beside the reasoning model, on the same sets
        lines += [f"The scalar reward model (Bradley–Terry) against the reasoning model ({reasoning}):", ""]
        label = f"the reasoning model ({reasoning})"
        pairs = [
            (n, (label, results[reasoning][n]), ("the scalar model", results["scalar"][n])) for n in shared
        ]
        lines += [compare_models(*pair) for pair in pairs]
        lines.append("")
    return lines + truth_kind_lines(results) + benchmark_lines(results)


def truth_kind_lines(results: dict[str, dict[str, dict]]) -> list[str]:
    """Accuracy per truth kind, where an evaluation set carries one besides clean (against the set's
    labels: a flipped pair's label is the wrong response, so accuracy there is agreeing with noise)."""
    rows = [
        (model, name, kind, pct(accuracy))
        for model, sets in results.items()
        for name, summary in sets.items()
        if set(summary.get("accuracy_by_truth_kind", {})) - {"clean"}
        for kind, accuracy in summary["accuracy_by_truth_kind"].items()
    ]
    if not rows:
        return []
    return [
        "Accuracy by truth kind (against each set's labels: on a flipped pair that means agreeing with "
        "the wrong label):",
        "",
        *table(("model", "set", "truth kind", "accuracy"), rows),
    ]


def benchmark_lines(results: dict[str, dict[str, dict]]) -> list[str]:
    """The public benchmarks by their official scoring, in the EGT paper's table layouts."""
    by_model = {
        f"this run: {model}": {
            s["benchmark"]["benchmark"]: s["benchmark"] for s in sets.values() if "benchmark" in s
        }
        for model, sets in results.items()
    }
    if not any(fmt in TABLE1_FORMATS for scored in by_model.values() for fmt in scored):
        return []
    lines = ["### Public benchmarks", "", *table1(by_model)]
    vl = {label: scored[VL_REWARDBENCH] for label, scored in by_model.items() if VL_REWARDBENCH in scored}
    if vl:
        lines += ["VL-RewardBench by category (the layout of the paper's Table 2):", "", *table2(vl)]
    for model, sets in results.items():
        for name, summary in sets.items():
            if summary.get("benchmark", {}).get("benchmark") in TABLE1_FORMATS:
                lines += [f"#### {model} on `{name}`", "", *benchmark_detail(summary["benchmark"])]
    return lines


def model_named(name: str, kind: str) -> str:
    """'scalar model', or 'rl model (reasoning (knockout))': the run's model and how it judges."""
    return f"{name} model" if kind == name else f"{name} model ({kind})"


def score_section(ctx: Context) -> list[str]:
    lines = ["## Best of N (score)", ""]
    m = ctx.manifest("score")
    if m is None:
        return lines + ctx.not_run("score")
    x, where = m.metrics, ctx.store.uri_for(ctx.output("score", "scores"))
    return [
        *lines,
        f"The {model_named(x['model'], x['kind'])} scored {x['prompts']} prompts, "
        f"{x['candidates']} candidate responses, in {x['model_calls']} model calls and "
        f"{x['seconds']:.1f} s; the scores and each prompt's best candidate are in `{where}`.",
        "",
    ]


def filter_section(ctx: Context) -> list[str]:
    lines = ["## Data filtering (filter)", ""]
    m = ctx.manifest("filter")
    if m is None:
        return lines + ctx.not_run("filter")
    x = m.metrics["filter"]
    lines += [
        f"The {model_named(x['model_name'], x['model'])} flagged {x['flagged']} of the {x['pairs']} pairs of "
        f"the {x['pool']} pool ({x['rule']}); kept and flagged records are in "
        f"`{ctx.store.uri_for(ctx.output('filter', 'flagged'))}` and its `kept.jsonl`.",
        "",
    ]
    kinds = x["by_truth_kind"]
    if not kinds:
        return [*lines, "The pool has no truth columns: what was flagged cannot be checked.", ""]
    lines += [
        "What was flagged per injected truth kind, next to a random flagger of the same size (which "
        "flags every kind at the pool's flagged share):",
        "",
    ]
    order = kinds_in_order(list(kinds))
    lines += table(
        ("truth kind", "pairs", "flagged", "flagged share", "random flagger", "difference"),
        [
            (
                k,
                kinds[k]["pairs"],
                kinds[k]["flagged"],
                pct(kinds[k]["share"]),
                pct(kinds[k]["random_share"]),
                points(kinds[k]["share"] - kinds[k]["random_share"]),
            )
            for k in order
        ],
    )
    for k in order:
        share, chance = kinds[k]["share"], kinds[k]["random_share"]
        relation = "more than" if share > chance else "fewer than" if share < chance else "as many as"
        lines.append(
            f"- {k}: flagged {pct(share)}, {relation} a random flagger ({pct(chance)})"
            + (" (flagging clean pairs is a cost)." if k == "clean" else ".")
        )
    return [*lines, ""]


# Each section, with the stage it reports on: a section whose stage is not part of the run (a kind
# 'scalar' run has no annotate, sft, probe, curate or rl) is left out.
SECTIONS: tuple[tuple[Callable[[Context], list[str]], str], ...] = (
    (summary_section, "prepare"),
    (effect_section, "probe"),
    (annotation_section, "annotate"),
    (sft_section, "sft"),
    (probe_section, "probe"),
    (curation_section, "curate"),
    (rl_section, "rl"),
    (scalar_section, "scalar"),
    (evaluation_section, "evaluate"),
    (score_section, "score"),
    (filter_section, "filter"),
)


def stored_report(store: ArtifactStore, run: EGTRun) -> str:
    """Where the report lives with the run's artifacts: ``<store>/<run>/report/report.md``."""
    return store.uri_for(f"{run.name}/report/{REPORT_NAME}")


def write_report(store: ArtifactStore, run: EGTRun, out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` and its plots, upload them to ``<run>/report``, return the local path.

    Plots of stages that have not run are deleted locally and in the store, so an old plot never sits
    beside a report that no longer describes it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*PLOTS, EFFECT_FILE):
        (out_dir / name).unlink(missing_ok=True)
    stages = {name: stage_view(store, run.name, name) for name in run.spec.stages}
    ctx = Context(store, run, out_dir, stages)
    lines = [f"# EGT run report: `{run.name}`", ""]
    for section, stage in SECTIONS:
        if stage in run.spec.stages:
            lines += section(ctx)
    path = out_dir / REPORT_NAME
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    prefix = f"{run.name}/report"
    for name in (*PLOTS, EFFECT_FILE):
        if not (out_dir / name).exists():
            store.delete(f"{prefix}/{name}")
    store.upload_dir(out_dir, prefix)
    return path
