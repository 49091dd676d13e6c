"""What every stage job does: read the resolved run file, execute the stage, report, exit.

Exit codes: 0 done or skipped, 2 the run file is invalid, 1 the stage failed (its message is the
last line on stderr, which Kubernetes shows as the container's termination message).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from egt.spec import SpecError, load_run
from egt.stages.base import execute_stage
from egt.stages.pipeline import get_stage, merge_missing_upstreams


def stage_main(stage: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--spec", required=True, type=Path, help="EGTRun file (YAML) with the resolved spec.")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("EGT_WORKDIR", "/tmp/egt")),
        help="Local scratch directory (default $EGT_WORKDIR or /tmp/egt).",
    )
    parser.add_argument(
        "--force", action="store_true", help="Run even if the stage's manifest is up to date."
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars (logs only).")
    parser.add_argument(
        "--part",
        type=int,
        default=_env_int("JOB_COMPLETION_INDEX"),
        help="Which part of a fanned-out stage this pod runs (default $JOB_COMPLETION_INDEX, "
        "the Indexed Job's index); the part count comes from the spec (probe.num_shards).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run = load_run(args.spec)
    except SpecError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        definition, store = get_stage(stage), _store(run)
        count = definition.part_count(run.spec)
        if count > 1 and args.part is None:
            raise ValueError(f"{stage} runs as {count} parts: pass --part or run it as an Indexed Job")
        part = (args.part, count) if count > 1 else None
        merge_missing_upstreams(definition, run, store, args.workdir)
        outcome = execute_stage(definition, run, store, args.workdir, args.force, not args.no_progress, part)
    except Exception as error:
        logging.getLogger(f"jobs.{stage}").exception("stage %s failed", stage)
        print(f"{stage} failed: {error}", file=sys.stderr)
        return 1
    print(f"{outcome.stage}: {outcome.state}; counts {outcome.manifest.counts}")
    return 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _store(run):
    from egt.storage.store import open_store

    return open_store(run.spec.store.uri, run.spec.store.endpoint_url)
