"""Build the Grafana dashboard and the Prometheus alert rules; ``python -m egt.dashboards.build`` writes them.

Plain dicts rather than a dashboard SDK: the JSON is what Grafana imports and what the tests read, so
building it directly keeps one representation and no extra dependency. Every query selects
``job="egt"`` (the Pushgateway job of ``egt.metrics.StageMetrics``) and one run through the ``$run``
variable; the stages' gauges stay in the Pushgateway after a stage ends, so a finished run's panels
keep their last values. Prometheus must scrape the Pushgateway with ``honor_labels: true`` so that
the pushed ``job``, ``run``, ``stage`` and ``shard`` labels survive.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_PATH = ROOT / "charts" / "egt" / "files" / "egt-dashboard.json"
ALERT_RULES_PATH = ROOT / "charts" / "egt" / "files" / "alert-rules.yaml"
REGENERATE = "python -m egt.dashboards.build"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RUN_VARIABLE_QUERY = 'label_values(push_time_seconds{job="egt"}, run)'
PANEL_HEIGHT = 8

# Alert thresholds (docs/dashboards.md says why each).
STALL_SECONDS = 1800
STALL_FOR = "5m"
REWARD_WINDOW = "15m"
REWARD_LOOKBACK = "3h"
REWARD_COLLAPSE_FACTOR = 0.5
REWARD_FOR = "10m"


def selector(metric: str, **labels: str) -> str:
    """``metric{job="egt", run="$run", …}``: one run's series of a stage metric."""
    matchers = ['job="egt"', 'run="$run"', *(f'{name}="{value}"' for name, value in labels.items())]
    return f"{metric}{{{', '.join(matchers)}}}"


def target(ref: str, expr: str, legend: str, instant: bool = False, fmt: str = "time_series") -> dict:
    """A Prometheus query of a panel; instant queries for panels that show the latest values only."""
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "instant": instant,
        "range": not instant,
        "format": fmt,
    }


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    width: int = 12,
    options: dict | None = None,
    overrides: list[dict] | None = None,
    transformations: list[dict] | None = None,
) -> dict:
    """A panel without its id and position, which :func:`layout` assigns."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": PANEL_HEIGHT, "w": width, "x": 0, "y": 0},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides or []},
        "options": options or {},
        "targets": targets,
        "transformations": transformations or [],
    }


def timeseries(title: str, description: str, targets: list[dict], unit: str, width: int = 12) -> dict:
    """Per-step values over time; points drawn because the stages push once per step, not continuously."""
    spec = panel("timeseries", title, description, targets, unit, width)
    spec["fieldConfig"]["defaults"]["custom"] = {"showPoints": "always"}
    spec["options"] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "none"},
    }
    return spec


def bargauge(title: str, description: str, targets: list[dict], unit: str, width: int = 12) -> dict:
    """Latest values side by side, one bar per series."""
    options = {"orientation": "vertical", "displayMode": "basic", "showUnfilled": True}
    return panel("bargauge", title, description, targets, unit, width, options)


def column(name: str, unit: str) -> dict:
    """A table column's unit, by the column's (renamed) header."""
    return {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}


def stage_timeline() -> dict:
    """When each stage (and each shard of a fanned-out stage) started and ended, and its wall time.

    A stage pushes ``egt_stage_duration_seconds`` once, when it ends, and the Pushgateway stamps that
    push with ``push_time_seconds``: end = push time, start = end − wall time. A stage still running
    has no duration yet; its row shows its last progress push (the rl stage pushes every step).
    """
    duration = selector("egt_stage_duration_seconds")
    pushed = selector("push_time_seconds")
    targets = [
        target("A", f"({pushed} - {duration}) * 1000", "", instant=True, fmt="table"),
        target("B", f"{pushed} * 1000", "", instant=True, fmt="table"),
        target("C", duration, "", instant=True, fmt="table"),
    ]
    columns = {"Value #A": "started", "Value #B": "ended / last push", "Value #C": "wall time"}
    transformations = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True, "job": True, "run": True},
                "renameByName": columns,
                "indexByName": {"stage": 0, "shard": 1, "Value #A": 2, "Value #B": 3, "Value #C": 4},
            },
        },
        {"id": "sortBy", "options": {"sort": [{"field": "started"}]}},
    ]
    overrides = [
        column("started", "dateTimeAsIso"),
        column("ended / last push", "dateTimeAsIso"),
        column("wall time", "s"),
    ]
    return panel(
        "table",
        "Stage timeline",
        "Start, end and wall time of each stage of the run (shard: a part of a fanned-out stage, "
        "'all' for the whole stage). From egt_stage_duration_seconds and the Pushgateway's "
        "push_time_seconds.",
        targets,
        "none",
        24,
        {"showHeader": True},
        overrides,
        transformations,
    )


def probe_panels() -> list[dict]:
    """The probe's answer-entropy histogram and its accuracy per entropy bin (EGT Figure 2)."""
    buckets = f"sum by (le) ({selector('egt_probe_answer_entropy_nats_bucket', shard='all')})"
    histogram = bargauge(
        "Probe answer-entropy distribution",
        "Samples of the RL pool per answer-token entropy bucket (nats, eq. 3), from the histogram "
        "egt_probe_answer_entropy_nats of the whole pool (shard 'all'). '+Inf': no parseable answer.",
        [target("A", buckets, "{{le}}", instant=True, fmt="heatmap")],
        "none",
    )
    accuracy = bargauge(
        "Probe accuracy per answer-entropy bin",
        "Share of samples the SFT model answered right, per answer-entropy quantile bin (bin 0: "
        "the lowest entropies; a last extra bin holds unanswered samples), and over the whole pool. "
        "From egt_probe_bin_accuracy_ratio and egt_probe_accuracy_ratio.",
        [
            target("A", selector("egt_probe_bin_accuracy_ratio", shard="all"), "bin {{bin}}", instant=True),
            target("B", selector("egt_probe_accuracy_ratio", shard="all"), "all samples", instant=True),
        ],
        "percentunit",
    )
    return [histogram, accuracy]


def curation_panels() -> list[dict]:
    """How much of the probed pool curation kept for RL, and the entropy it stopped at."""
    split = panel(
        "piechart",
        "Curation: kept vs pruned",
        "Samples of the probed pool kept for RL and pruned by curation. From egt_curate_kept_total "
        "and egt_curate_pruned_total.",
        [
            target("A", selector("egt_curate_kept_total"), "kept", instant=True),
            target("B", selector("egt_curate_pruned_total"), "pruned", instant=True),
        ],
        "none",
        options={
            "pieType": "pie",
            "legend": {"displayMode": "table", "placement": "right", "values": ["value", "percent"]},
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    )
    threshold = panel(
        "stat",
        "Curation threshold",
        "The highest entropy among the kept samples (nats). From egt_curate_threshold_nats.",
        [target("A", selector("egt_curate_threshold_nats"), "threshold", instant=True)],
        "suffix: nats",
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    )
    return [split, threshold]


def sft_panels() -> list[dict]:
    return [
        timeseries(
            "SFT loss",
            "Mean NLL of the assistant tokens of the last SFT step, as pushed. From egt_sft_loss.",
            [target("A", selector("egt_sft_loss"), "loss")],
            "none",
            12,
        ),
        timeseries(
            "Scalar reward model loss",
            "Bradley-Terry loss of the scalar stage's last step, per phase (the scalar baseline, or a "
            "kind: scalar run; log 2 = no preference). From egt_scalar_loss.",
            [target("A", selector("egt_scalar_loss"), "phase {{phase}}")],
            "none",
            12,
        ),
    ]


def rl_panels() -> list[dict]:
    """StableReinforce, one point per step: the reward and its parts, then the update's health."""

    def rl(metric: str, legend: str, ref: str = "A") -> dict:
        return target(ref, selector(f"egt_rl_{metric}"), legend)

    return [
        timeseries(
            "RL reward: total and parts",
            "Batch means of the reward R = R_acc·(1 + α·R_logic) + β·R_format and of its parts. From "
            "egt_rl_reward_mean, egt_rl_accuracy, egt_rl_logic_mean and egt_rl_format_ratio.",
            [
                rl("reward_mean", "reward R"),
                rl("accuracy", "accuracy R_acc", "B"),
                rl("logic_mean", "logic R_logic", "C"),
                rl("format_ratio", "format R_format", "D"),
            ],
            "none",
        ),
        timeseries(
            "RL accuracy",
            "Share of rollouts whose answer matches the label, against the SFT model's probe accuracy on "
            "the RL pool as the baseline. From egt_rl_accuracy and egt_probe_accuracy_ratio.",
            [
                rl("accuracy", "rollouts"),
                target("B", selector("egt_probe_accuracy_ratio", shard="all"), "SFT model (probe)"),
            ],
            "percentunit",
        ),
        timeseries(
            "RL response length",
            "Mean generated tokens per rollout. From egt_rl_response_tokens_mean.",
            [rl("response_tokens_mean", "tokens")],
            "none",
        ),
        timeseries(
            "RL clip fraction",
            "Share of valid tokens where the ε-clipped term is the active minimum, and where the "
            "log-ratio pre-clip bit. From egt_rl_clip_fraction and egt_rl_preclip_fraction.",
            [rl("clip_fraction", "clipped"), rl("preclip_fraction", "pre-clipped", "B")],
            "percentunit",
        ),
        timeseries(
            "RL advantages filtered",
            "Share of valid tokens whose whitened advantage the 3-sigma filter zeroed. From "
            "egt_rl_advantage_filtered_ratio.",
            [rl("advantage_filtered_ratio", "filtered")],
            "percentunit",
        ),
        timeseries(
            "RL KL",
            "Mean per-token KL estimate between the policy and the reference model (0 when "
            "rl.kl_coef is 0, the paper's setting). From egt_rl_kl.",
            [rl("kl", "KL")],
            "none",
        ),
    ]


def evaluation_panels() -> list[dict]:
    """Accuracy of each evaluated model on each benchmark, in both response orders and each alone."""
    legend = "{{model}} · {{benchmark}}"
    return [
        bargauge(
            "Evaluation accuracy",
            "Accuracy per model and benchmark: over both response orders, with the original order and "
            "with the responses swapped. From egt_eval_accuracy, egt_eval_accuracy_original and "
            "egt_eval_accuracy_swapped.",
            [
                target("A", selector("egt_eval_accuracy"), f"{legend} · both orders", instant=True),
                target("B", selector("egt_eval_accuracy_original"), f"{legend} · original", instant=True),
                target("C", selector("egt_eval_accuracy_swapped"), f"{legend} · swapped", instant=True),
            ],
            "percentunit",
            24,
        )
    ]


def row(title: str, y: int) -> dict:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
    }


def layout(sections: list[tuple[str, list[dict]]]) -> list[dict]:
    """Number the panels and place them left to right, a new line when a panel does not fit."""
    placed: list[dict] = []
    y = 0
    for title, panels in sections:
        placed.append(row(title, y))
        y, x = y + 1, 0
        for spec in panels:
            width = spec["gridPos"]["w"]
            if x + width > 24:
                y, x = y + PANEL_HEIGHT, 0
            spec["gridPos"] = {"h": PANEL_HEIGHT, "w": width, "x": x, "y": y}
            placed.append(spec)
            x += width
        y += PANEL_HEIGHT
    for number, spec in enumerate(placed, start=1):
        spec["id"] = number
    return placed


def variables() -> list[dict]:
    """The Prometheus data source, and the run: every run that pushed metrics, newest name last."""
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
        {
            "name": "run",
            "label": "Run",
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": RUN_VARIABLE_QUERY, "refId": "run"},
            "definition": RUN_VARIABLE_QUERY,
            "refresh": 2,
            "sort": 1,
        },
    ]


def dashboard() -> dict:
    sections = [
        ("Stages", [stage_timeline()]),
        ("Probe", probe_panels()),
        ("Curation", curation_panels()),
        ("SFT", sft_panels()),
        ("RL", rl_panels()),
        ("Evaluation", evaluation_panels()),
    ]
    return {
        "uid": "egt-run",
        "title": "EGT run",
        "description": "One EGT run's stages, from the metrics they push (docs/dashboards.md).",
        "tags": ["egt"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "schemaVersion": 39,
        "time": {"from": "now-24h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "links": [],
        "panels": layout(sections),
    }


def panel_targets(spec: dict) -> list[tuple[dict, dict]]:
    """Every (panel, target) of a dashboard, rows skipped."""
    return [(p, t) for p in spec["panels"] if p["type"] != "row" for t in p["targets"]]


def run_failed() -> dict:
    """A run the operator reports Failed (a stage's child failed) or Invalid (a spec that cannot run).

    Both states last until a person retries, fixes or deletes the run, so the alert fires at once.
    """
    return {
        "alert": "EGTRunFailed",
        "expr": 'max by (state) (egt_operator_runs{state=~"Failed|Invalid"}) > 0',
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "{{ $value }} EGTRun(s) {{ $labels.state }}",
            "description": "`kubectl get egtrun` names the run; `egt status NAME` shows the failing "
            "stage's message.",
        },
    }


def stage_stalled() -> dict:
    """A stage that pushed progress, then neither pushed again nor finished, while a run is Running.

    A group without ``egt_stage_duration_seconds`` is a stage that has not finished (the duration is
    pushed last); ``push_time_seconds`` says when it last pushed. Only stages that push while they
    run (rl, every step) can be seen stalling this way.
    """
    return {
        "alert": "EGTStageStalled",
        "expr": f'(time() - push_time_seconds{{job="egt"}}) > {STALL_SECONDS}\n'
        'unless on (job, run, stage, shard) egt_stage_duration_seconds{job="egt"}\n'
        'and on () (max(egt_operator_runs{state="Running"}) > 0)\n',
        "for": STALL_FOR,
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "Stage {{ $labels.stage }} of run {{ $labels.run }} has not pushed for "
            "{{ $value | humanizeDuration }}",
            "description": "The stage has not finished and has not pushed progress for "
            f"{STALL_SECONDS // 60} minutes: its pod may hang or be gone.",
        },
    }


def reward_collapsing() -> dict:
    """The RL reward's recent mean fell below a fraction of its best recent mean."""
    reward = f'avg_over_time(egt_rl_reward_mean{{job="egt"}}[{REWARD_WINDOW}])'
    best = f"max_over_time({reward}[{REWARD_LOOKBACK}:1m])"
    return {
        "alert": "EGTRLRewardCollapsing",
        "expr": f"{reward}\n< {REWARD_COLLAPSE_FACTOR} * {best}\n",
        "for": REWARD_FOR,
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": 'RL reward of run {{ $labels.run }} fell to {{ $value | printf "%.3f" }}',
            "description": f"Its {REWARD_WINDOW} mean is below {REWARD_COLLAPSE_FACTOR:g} × its best "
            f"{REWARD_WINDOW} mean of the last {REWARD_LOOKBACK}: compare the reward's parts on the "
            "dashboard.",
        },
    }


def alert_rules() -> dict:
    """A Prometheus rule file (``groups:``); the chart wraps it in a PrometheusRule."""
    return {"groups": [{"name": "egt", "rules": [run_failed(), stage_stalled(), reward_collapsing()]}]}


class _BlockStrings(yaml.SafeDumper):
    """Dump multi-line strings (the alert expressions) as literal blocks, readable in the chart."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStrings.add_representer(str, _string)


def render_dashboard() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def render_alert_rules() -> str:
    header = f"# Generated by `{REGENERATE}` (egt/dashboards/build.py): edit the builder, not this file.\n"
    body = yaml.dump(alert_rules(), Dumper=_BlockStrings, sort_keys=False, width=1_000, allow_unicode=True)
    return header + body


def main() -> None:
    DASHBOARD_PATH.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_PATH.write_text(render_dashboard())
    ALERT_RULES_PATH.write_text(render_alert_rules())
    print(f"wrote {DASHBOARD_PATH.relative_to(ROOT)} and {ALERT_RULES_PATH.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
