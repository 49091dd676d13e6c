"""What every stage shares: its context, its contract with the store, and the skip/resume rules.

A stage is a plain function ``run(ctx) -> StageResult`` plus the spec sections and upstream stages
it depends on. ``execute_stage`` wraps it the same way for the local runner and for a container job:

1. the stage's identity is (hash of its config, digests of its upstream manifests);
2. if ``<run>/<stage>/manifest.json`` already has that identity, the stage is skipped;
3. if an earlier attempt with the same identity was interrupted, its finished shards and
   checkpoints are kept and the stage resumes; with another identity they are cleared first, but
   the earlier finished result (manifest and outputs) stays until the new attempt starts writing
   its outputs (egt.storage.replacing), so a failed attempt costs nothing already done;
4. the stage writes its outputs, then the manifest last, then pushes its metrics.

A stage that fans out over nodes (probe) runs as parts: part i of N processes its slice of the pool
under ``<run>/<stage>/part-i-of-N/`` with its own attempt and manifest, following the same rules;
``merge_parts`` then joins the finished parts into the stage's own outputs and manifest. The local
runner merges right after the last part; on a cluster the next stage's job merges before it starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from egt import __version__
from egt.engines.distributed import world
from egt.metrics import StageMetrics
from egt.spec import EGTRun, EGTRunSpec
from egt.storage.lease import LEASE_FILE, hold
from egt.storage.manifest import (
    Manifest,
    config_hash,
    is_up_to_date,
    manifest_digest,
    manifest_key,
    read_manifest,
    register,
    reuse,
    write_manifest,
)
from egt.storage.replacing import ReplacingStore, earlier_outputs, remove_output
from egt.storage.store import ArtifactStore

log = logging.getLogger(__name__)

ATTEMPT_FILE = "attempt.json"


@dataclass
class StageResult:
    """What a stage reports: output keys (relative to the stage), counts and summary metrics."""

    outputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    unfinished: int = 0  # inputs to retry on the next run (egt.storage.manifest.Manifest.unfinished)


@dataclass
class StageContext:
    run: EGTRun
    store: ArtifactStore
    stage: str
    metrics: StageMetrics
    workdir: Path
    progress: bool = True
    part: tuple[int, int] | None = None  # (index, count) when the stage runs as one of several parts

    @property
    def spec(self) -> EGTRunSpec:
        return self.run.spec

    @property
    def run_name(self) -> str:
        return self.run.name

    def key(self, *parts: str, stage: str | None = None) -> str:
        """Store key ``<run>/<stage>[/part-i-of-N]/<parts…>`` (another stage's when ``stage`` is given)."""
        return "/".join([self.run_name, stage or unit_name(self.stage, self.part), *parts])

    def upstream(self, stage: str) -> Manifest:
        manifest = read_manifest(self.store, self.run_name, stage)
        if manifest is None:
            raise MissingUpstreamError(self.stage, stage, self.store.uri_for(self.key(stage=stage)))
        return manifest

    def upstream_output(self, stage: str, name: str) -> str:
        """The store key of output ``name`` of an upstream stage."""
        return self.upstream(stage).output_key(self.run_name, name)


class MissingUpstreamError(RuntimeError):
    def __init__(self, stage: str, upstream: str, where: str) -> None:
        super().__init__(
            f"stage {stage} needs the output of stage {upstream}, but {where} has no manifest; "
            f"run {upstream} first"
        )


@dataclass(frozen=True)
class Stage:
    name: str
    # Upstream stages whose manifests are part of this stage's identity; a function of the spec when
    # they depend on it (evaluate reads the models evaluate.models names).
    inputs: tuple[str, ...] | Callable[[EGTRunSpec], tuple[str, ...]]
    # Everything besides the upstream manifests that determines the stage's output: spec sections,
    # and for the prepare stage the digests of external datasets.
    fingerprint: Callable[[EGTRunSpec], Any]
    run: Callable[[StageContext], StageResult]
    # Stages that fan out over nodes: how many parts the spec asks for, and how to join them.
    parts: Callable[[EGTRunSpec], int] | None = None
    merge: Callable[[StageContext, list[Manifest]], StageResult] | None = None
    # How many of those parts one pod runs at once (each a process on its own GPUs).
    replicas: Callable[[EGTRunSpec], int] | None = None

    def upstreams(self, spec: EGTRunSpec) -> tuple[str, ...]:
        return self.inputs(spec) if callable(self.inputs) else self.inputs

    def part_count(self, spec: EGTRunSpec) -> int:
        return self.parts(spec) if self.parts else 1

    def replica_count(self, spec: EGTRunSpec) -> int:
        return self.replicas(spec) if self.replicas else 1


def unit_name(stage: str, part: tuple[int, int] | None) -> str:
    """Where a stage (or one part of it) keeps its attempt, outputs and manifest, below the run."""
    return stage if part is None else f"{stage}/part-{part[0]:05d}-of-{part[1]:05d}"


@dataclass
class StageOutcome:
    stage: str
    state: str  # "succeeded" | "skipped"
    manifest: Manifest
    seconds: float
    reused_from: str | None = None  # skipped because another run computed this identity: its prefix


def stage_identity(stage: Stage, run: EGTRun, store: ArtifactStore) -> tuple[str, dict[str, str]]:
    """(config hash, upstream manifest digests): equal identities produce equal outputs."""
    inputs = {}
    for upstream in stage.upstreams(run.spec):
        if read_manifest(store, run.name, upstream) is None:
            raise MissingUpstreamError(stage.name, upstream, store.uri_for(f"{run.name}/{upstream}"))
        inputs[upstream] = manifest_digest(store, run.name, upstream)
    return config_hash(stage.fingerprint(run.spec)), inputs


def execute_stage(
    stage: Stage,
    run: EGTRun,
    store: ArtifactStore,
    workdir: Path,
    force: bool = False,
    progress: bool = True,
    part: tuple[int, int] | None = None,
) -> StageOutcome:
    """Run one stage, or one part of it, with the skip / resume / manifest-last contract."""
    if part is not None and not 0 <= part[0] < part[1]:
        raise ValueError(f"part {part[0]} of {part[1]}: the index must be in [0, {part[1]})")
    return _execute(stage, run, store, workdir, force, progress, part, lambda ctx: stage.run(ctx))


def _same_result(old: Manifest | None, new: Manifest) -> bool:
    fields = ("config_hash", "inputs", "outputs", "counts", "unfinished", "metrics", "prefix")
    return old is not None and all(getattr(old, name) == getattr(new, name) for name in fields)


def already_done(stage: Stage, run: EGTRun, store: ArtifactStore) -> StageOutcome | None:
    """The stage's result when nothing needs to run: its own current manifest, or another run's
    finished stage of the same identity (reused). For fanned-out stages, asked before any part runs."""
    return done_with_identity(store, run.name, stage.name, *stage_identity(stage, run, store))


def done_with_identity(
    store: ArtifactStore, run: str, stage: str, config_hash: str, inputs: dict[str, str]
) -> StageOutcome | None:
    """:func:`already_done` for an identity the caller has computed (it digests the datasets)."""
    if is_up_to_date(store, run, stage, config_hash, inputs):
        return StageOutcome(stage, "skipped", read_manifest(store, run, stage), 0.0)
    reused = reuse(store, run, stage, config_hash, inputs)
    if reused is None:
        return None
    log.info("%s: reused the outputs of %s (same config and inputs)", stage, reused.prefix)
    return StageOutcome(stage, "skipped", reused, 0.0, reused_from=reused.prefix)


def merge_parts(
    stage: Stage, run: EGTRun, store: ArtifactStore, workdir: Path, force: bool = False, progress: bool = True
) -> StageOutcome:
    """Join the finished parts of a fanned-out stage into its own outputs and manifest."""
    chash, inputs = stage_identity(stage, run, store)
    count = stage.part_count(run.spec)
    manifests = []
    for index in range(count):
        unit = unit_name(stage.name, (index, count))
        if not is_up_to_date(store, run.name, unit, chash, inputs):
            raise MissingUpstreamError(
                stage.name, f"{stage.name} part {index} of {count}", store.uri_for(f"{run.name}/{unit}")
            )
        manifests.append(read_manifest(store, run.name, unit))
    return _execute(
        stage, run, store, workdir, force, progress, None, lambda ctx: stage.merge(ctx, manifests)
    )


def _execute(stage, run, store, workdir, force, progress, part, body) -> StageOutcome:
    started = time.monotonic()
    unit = unit_name(stage.name, part)
    chash, inputs = stage_identity(stage, run, store)
    done = None if force else _done(store, run.name, unit, part, chash, inputs)
    if done is not None:
        return done
    if not world().is_main:  # rank 0 holds the lease for the whole launch
        return _attempt(stage, run, store, workdir, force, progress, part, body, started, chash, inputs)
    with hold(store, f"{run.name}/{unit}/{LEASE_FILE}", f"stage {unit} of run {run.name}"):
        # Whoever held the lease before may have just finished the stage.
        done = None if force else _done(store, run.name, unit, part, chash, inputs)
        if done is not None:
            return done
        return _attempt(stage, run, store, workdir, force, progress, part, body, started, chash, inputs)


def _done(store, run: str, unit: str, part, chash: str, inputs: dict[str, str]) -> StageOutcome | None:
    if part is None:
        return done_with_identity(store, run, unit, chash, inputs)
    if is_up_to_date(store, run, unit, chash, inputs):
        log.info("%s: up to date, skipped", unit)
        return StageOutcome(unit, "skipped", read_manifest(store, run, unit), 0.0)
    return None


def _attempt(stage, run, store, workdir, force, progress, part, body, started, chash, inputs) -> StageOutcome:
    unit = unit_name(stage.name, part)
    # In a multi-process launch (torchrun) only rank 0 clears, writes the manifest and pushes metrics;
    # the stage joins its process group before reading anything, so no rank sees a half-cleared prefix.
    main = world().is_main
    attempt_key = f"{run.name}/{unit}/{ATTEMPT_FILE}"
    identity = {"config_hash": chash, "inputs": inputs}
    previous = store.read_json(attempt_key) if store.exists(attempt_key) else None
    # The earlier finished result stays until this attempt starts writing its outputs
    # (egt.storage.replacing): a failed attempt must not cost it.
    try:
        standing_bytes = store.read_bytes(manifest_key(run.name, unit))
    except FileNotFoundError:
        standing_bytes = None
    standing = None if standing_bytes is None else Manifest.model_validate_json(standing_bytes)
    earlier = earlier_outputs(standing, run.name, unit)
    kept = {f"{run.name}/{unit}/{LEASE_FILE}", manifest_key(run.name, unit)}
    if main and (force or previous != identity):
        # Shards and checkpoints of another config or other inputs must not leak into this attempt;
        # a merge keeps the parts it is about to join.
        stale = [
            k
            for k in store.list(f"{run.name}/{unit}")
            if (part is not None or "/part-" not in k)
            and k not in kept
            and not any(k == out or k.startswith(f"{out}/") for out in earlier)
        ]
        for key in stale:
            store.delete(key)
        store.write_json(attempt_key, identity)
    elif previous == identity:
        log.info("%s: resuming an interrupted attempt", unit)
    stage_store = ReplacingStore(store, run.name, unit, earlier) if earlier else store

    shard = "all" if part is None else str(part[0])
    metrics = StageMetrics(run.name, stage.name, run.spec.metrics.pushgateway, shard)
    workdir = workdir / run.name / unit
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(run, stage_store, stage.name, metrics, workdir, progress, part)
    started_at = datetime.now(UTC).isoformat()
    result = body(ctx)
    seconds = time.monotonic() - started
    metrics.set("stage_duration_seconds", seconds, "Wall time of the stage's last run")
    manifest = Manifest(
        stage=unit,
        config_hash=chash,
        inputs=inputs,
        outputs=result.outputs,
        counts=result.counts,
        unfinished=result.unfinished,
        metrics=result.metrics,
        started_at=started_at,
        finished_at=datetime.now(UTC).isoformat(),
        egt_version=__version__,
        prefix=f"{run.name}/{unit}",
    )
    if main:
        if _same_result(standing, manifest):
            # A retry that changed nothing (the teacher still down for the same pairs): the earlier
            # manifest stays, byte for byte, so downstream stages, named by its digest, do not run
            # again for nothing.
            log.info("%s: the rerun changed nothing; the earlier result stands", unit)
            store.write_bytes(manifest_key(run.name, unit), standing_bytes)
            manifest = standing
        else:
            write_manifest(store, run.name, unit, manifest)
            if not manifest.unfinished:
                register(store, manifest)
            current = {manifest.output_key(run.name, name) for name in manifest.outputs}
            for out in set(earlier) - current:  # earlier outputs this result no longer has
                remove_output(store, out)
        metrics.push(wait=True)  # the stage's last values, before its process exits
    return StageOutcome(unit, "succeeded", manifest, seconds)
