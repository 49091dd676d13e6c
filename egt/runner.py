"""The local runner: ``egt run FILE --local`` runs every stage in order in this process.

It is the same stage code a cluster runs in containers (``jobs/``); only the orchestration differs.
Stages already done with the same config and inputs are skipped, so a rerun after a failure or an
edit picks up where it matters.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from egt.spec import EGTRun, EGTRunSpec
from egt.stages.base import StageOutcome, already_done, execute_stage, merge_parts
from egt.stages.pipeline import get_stage
from egt.storage.store import ArtifactStore, open_store

log = logging.getLogger(__name__)


def select_stages(spec: EGTRunSpec, start: str | None = None, stop: str | None = None) -> list[str]:
    """The run's stages (``spec.stages``: they depend on its kind) from ``start`` to ``stop``."""
    names = list(spec.stages)
    for given in (start, stop):
        if given is not None and get_stage(given).name not in names:
            raise ValueError(f"stage {given} is not part of this run (kind {spec.kind}: {', '.join(names)})")
    first = names.index(start) if start else 0
    last = names.index(stop) if stop else len(names) - 1
    if first > last:
        raise ValueError(f"--from {start} comes after --until {stop}")
    return names[first : last + 1]


def run_local(
    run: EGTRun,
    workdir: Path,
    start: str | None = None,
    stop: str | None = None,
    force: tuple[str, ...] = (),
    progress: bool = True,
    echo=print,
) -> tuple[ArtifactStore, list[StageOutcome]]:
    """Run the selected stages in order; returns the store and what happened to each stage."""
    store = open_store(run.spec.store.uri, run.spec.store.endpoint_url)
    outcomes = []
    for name in select_stages(run.spec, start, stop):
        began = time.monotonic()
        echo(f"▶ {name}")
        stage, forced = get_stage(name), name in force or "all" in force
        count = stage.part_count(run.spec)
        done = None if forced or count == 1 else already_done(stage, run, store)
        if done is not None:
            outcome = done
        elif count == 1:
            outcome = execute_stage(stage, run, store, workdir, forced, progress)
        else:  # what the cluster runs on N nodes, here one part after another
            for index in range(count):
                execute_stage(stage, run, store, workdir, forced, progress, part=(index, count))
            outcome = merge_parts(stage, run, store, workdir, forced, progress)
        outcomes.append(outcome)
        if outcome.reused_from:
            verb = f"skipped (reused {outcome.reused_from}: same config and inputs)"
        elif outcome.state == "skipped":
            verb = "skipped (up to date)"
        else:
            verb = f"done in {time.monotonic() - began:.1f}s"
        echo(f"  {name}: {verb}")
    return store, outcomes


def summary_table(outcomes: list[StageOutcome]) -> str:
    """A plain-text table: stage, state, seconds, counts, headline metrics."""
    rows = [("stage", "state", "seconds", "counts", "headline")]
    for outcome in outcomes:
        manifest = outcome.manifest
        counts = ", ".join(f"{k}={v}" for k, v in manifest.counts.items())
        headline = ", ".join(
            f"{k}={v:.3g}"
            for k, v in manifest.metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
        rows.append((outcome.stage, outcome.state, f"{outcome.seconds:.1f}", counts, headline))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)) for row in rows
    ]
    return "\n".join(lines)
