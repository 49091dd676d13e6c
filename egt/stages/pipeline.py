"""The stages in order, with what each depends on: the one list the runner and the operator read."""

from __future__ import annotations

from pathlib import Path

from egt.spec import EGTRun
from egt.stages import annotate, curate, evaluate, prepare, probe, rl, sft
from egt.stages.base import Stage, merge_parts
from egt.storage.manifest import read_manifest
from egt.storage.store import ArtifactStore

PIPELINE: tuple[Stage, ...] = (
    Stage("prepare", (), prepare.fingerprint, prepare.run),
    Stage("annotate", ("prepare",), annotate.fingerprint, annotate.run),
    Stage("sft", ("prepare", "annotate"), sft.fingerprint, sft.run),
    Stage(
        "probe",
        ("prepare", "sft"),
        probe.fingerprint,
        probe.run,
        parts=lambda s: s.probe.num_shards,
        merge=probe.merge,
        replicas=lambda s: s.probe.replicas_per_node,
    ),
    Stage("curate", ("probe",), curate.fingerprint, curate.run),
    Stage("rl", ("sft", "curate"), rl.fingerprint, rl.run),
    Stage("evaluate", ("prepare", "sft", "rl"), evaluate.fingerprint, evaluate.run),
)
STAGES = {stage.name: stage for stage in PIPELINE}


def merge_missing_upstreams(stage: Stage, run: EGTRun, store: ArtifactStore, workdir: Path) -> None:
    """Join a fanned-out upstream's finished parts (on a cluster, the next stage's job does this)."""
    for name in stage.inputs:
        upstream = STAGES[name]
        if upstream.part_count(run.spec) > 1 and read_manifest(store, run.name, name) is None:
            merge_parts(upstream, run, store, workdir, progress=False)


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    return STAGES[name]
