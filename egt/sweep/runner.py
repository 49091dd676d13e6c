"""Running a sweep's arms here, one after another, sharing every stage whose identity matches.

Each arm is an ordinary run (egt.runner.run_local); stages an earlier arm finished with the same
config and inputs are reused by reference (egt.storage.manifest.reuse), so SFT and probing run once
for the whole sweep when the arms differ only downstream of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from egt.runner import run_local
from egt.spec import EGTRun
from egt.stages.base import StageOutcome
from egt.storage.manifest import read_manifest
from egt.storage.store import open_store


def run_sweep_local(
    runs: dict[str, EGTRun], workdir: Path, progress: bool = True, echo: Callable[[str], None] = print
) -> dict[str, list[StageOutcome]]:
    """Every arm's run in order; what happened to each arm's stages."""
    outcomes = {}
    for arm, run in runs.items():
        echo(f"■ arm {arm} (run {run.name})")
        _, outcomes[arm] = run_local(run, workdir, progress=progress, echo=echo)
    return outcomes


def executions(outcomes: dict[str, list[StageOutcome]]) -> Counter[str]:
    """How many times each stage ran (was not skipped or reused) across the sweep."""
    return Counter(o.stage for arm in outcomes.values() for o in arm if o.state == "succeeded")


def collect_results(runs: dict[str, EGTRun]) -> dict[str, dict]:
    """Each finished arm's evaluation results (``evaluate/results.json``); unfinished arms are left out."""
    results = {}
    for arm, run in runs.items():
        store = open_store(run.spec.store.uri, run.spec.store.endpoint_url)
        manifest = read_manifest(store, run.name, "evaluate")
        if manifest is not None:
            results[arm] = store.read_json(manifest.output_key(run.name, "results"))
    return results
