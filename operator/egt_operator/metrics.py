"""The operator's own Prometheus metrics, served on /metrics (the stages push theirs separately).

- ``egt_operator_runs{state}``: runs by state (Running, Succeeded, Failed, Suspended, Invalid);
- ``egt_operator_stage_duration_seconds{stage,state}``: how long stages took, from their child's
  creation to its end, observed once per finished stage;
- ``egt_operator_reconcile_errors_total``: passes that raised (kopf retries them).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from egt_operator.reconcile import Plan

RUN_STATES = ("Running", "Succeeded", "Failed", "Suspended", "Invalid")
RUNS = Gauge("egt_operator_runs", "EGTRuns by state", ["state"])
STAGE_SECONDS = Histogram(
    "egt_operator_stage_duration_seconds",
    "Wall time of finished stages, child creation to end",
    ["stage", "state"],
    buckets=(10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800),
)
RECONCILE_ERRORS = Counter("egt_operator_reconcile_errors_total", "Reconcile passes that raised")

_states: dict[str, str] = {}
_guard = threading.Lock()


def serve(port: int) -> None:
    start_http_server(port)


def run_state(status: Mapping[str, Any]) -> str:
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    succeeded = conditions.get("Succeeded", {})
    reason = succeeded.get("reason")
    if succeeded.get("status") == "True":
        return "Succeeded"
    if reason == "InvalidSpec":
        return "Invalid"
    if succeeded.get("status") == "False":
        return "Failed"
    if conditions.get("Progressing", {}).get("reason") == "Suspended":
        return "Suspended"
    return "Running"


def observe(run: Mapping[str, Any], plan: Plan) -> None:
    """Record the run's state after a pass, and the duration of each stage that just ended."""
    meta = run["metadata"]
    with _guard:
        _states[f"{meta['namespace']}/{meta['name']}"] = run_state(plan.status)
        _publish()
    for stage, state in plan.transitions:
        entry = plan.status["stages"][stage]
        if state in ("Succeeded", "Failed") and entry.get("startTime") and entry.get("endTime"):
            seconds = (_time(entry["endTime"]) - _time(entry["startTime"])).total_seconds()
            STAGE_SECONDS.labels(stage, state).observe(seconds)


def forget(namespace: str, name: str) -> None:
    with _guard:
        _states.pop(f"{namespace}/{name}", None)
        _publish()


def _publish() -> None:
    counts = dict.fromkeys(RUN_STATES, 0)
    for state in _states.values():
        counts[state] += 1
    for state, count in counts.items():
        RUNS.labels(state).set(count)


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
