"""What every stage job does: read the resolved run file, execute the stage, report, exit.

Exit codes: 0 done or skipped, 2 the run file is invalid, 1 the stage failed (its message is the
last line on stderr, which Kubernetes shows as the container's termination message).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
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
        help="Which part of a fanned-out stage to run (the part count is probe.num_shards). Default: "
        "this pod's parts, from the Indexed Job's $JOB_COMPLETION_INDEX: pod i runs parts "
        "i·R … i·R + R − 1 (R = probe.replicas_per_node), each in a process of its own.",
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
            pod = _env_int("JOB_COMPLETION_INDEX")
            if pod is None:
                raise ValueError(f"{stage} runs as {count} parts: pass --part or run it as an Indexed Job")
            replicas = definition.replica_count(run.spec)
            if replicas == 1:
                args.part = pod
            else:
                return run_replicas(stage, argv, run, pod, replicas)
        part = (args.part, count) if count > 1 else None
        merge_missing_upstreams(definition, run, store, args.workdir)
        outcome = execute_stage(definition, run, store, args.workdir, args.force, not args.no_progress, part)
    except Exception as error:
        logging.getLogger(f"jobs.{stage}").exception("stage %s failed", stage)
        print(f"{stage} failed: {error}", file=sys.stderr)
        return 1
    print(f"{outcome.stage}: {outcome.state}; counts {outcome.manifest.counts}")
    if part is None and stage == run.spec.stages[-1]:
        publish_report(run, store, args.workdir)
    return 0


def publish_report(run, store, workdir: Path) -> None:
    """The run's last stage renders its report into the store, where `egt report` and people find it
    (on a cluster no one else would). A report that fails to render is logged, not a failed stage."""
    from egt.report import stored_report, write_report

    try:
        write_report(store, run, workdir / run.name / "report")
    except Exception:
        logging.getLogger("jobs").exception("the run's report could not be rendered")
        return
    print(f"report: {stored_report(store, run)}")


def run_replicas(stage: str, argv: list[str] | None, run, pod: int, replicas: int) -> int:
    """Run this pod's ``replicas`` parts at once, each a child process on its own slice of the GPUs.

    One vLLM engine per GPU (or per tensor-parallel group) is how a 7B judge fills an 8-GPU node:
    the model fits on one GPU, so replicas beat tensor parallelism for throughput. The parts are
    independent: a failed one does not stop the others, and the pod fails if any failed (a retry
    then runs only the parts without a manifest). SIGTERM (pod deletion) is passed on to them.
    """
    gpus = run.spec.cluster.resources_for(stage).gpus_per_node
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
    visible = [device for device in visible if device]
    if len(visible) % replicas:
        raise ValueError(f"{len(visible)} GPUs do not split into {replicas} replicas (replicas_per_node)")
    per = len(visible) // replicas
    tensor_parallel = run.spec.probe.vllm.tensor_parallel_size
    if per and run.spec.probe.engine == "vllm" and tensor_parallel != per:
        raise ValueError(
            f"each of the {replicas} replicas gets {per} GPUs but probe.vllm.tensor_parallel_size is "
            f"{tensor_parallel}: set it to {per}, or change probe.replicas_per_node"
        )
    log = logging.getLogger(f"jobs.{stage}")
    children = []
    for replica in range(replicas):
        env = dict(os.environ)
        if per:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[replica * per : (replica + 1) * per])
        part = pod * replicas + replica
        command = [sys.executable, "-m", f"jobs.{stage}", *(argv or sys.argv[1:]), "--part", str(part)]
        log.info("part %d on GPUs %s", part, env.get("CUDA_VISIBLE_DEVICES", "none"))
        children.append((part, subprocess.Popen(command, env=env)))

    def forward(signum, _frame):
        for _, child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    failed = [part for part, child in children if child.wait() != 0]
    if failed:
        print(f"{stage} failed: parts {failed} of pod {pod} failed (see their logs above)", file=sys.stderr)
        return 1
    return 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _store(run):
    from egt.storage.store import open_store

    return open_store(run.spec.store.uri, run.spec.store.endpoint_url)
