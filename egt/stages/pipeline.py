"""The stages in order, with what each depends on: the one list the runner and the operator read."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from egt.spec import EGTRun
from egt.stages import fingerprints
from egt.stages.base import Stage, already_done, merge_parts
from egt.storage.manifest import read_manifest
from egt.storage.store import ArtifactStore


def _in(stage: str, function: str = "run") -> Callable[..., Any]:
    """``egt.stages.<stage>.<function>``, imported on first call: reading the pipeline (the operator
    deciding what to skip) needs no engine, running a stage does."""

    def call(*args: Any) -> Any:
        return getattr(import_module(f"egt.stages.{stage}"), function)(*args)

    return call


PIPELINE: tuple[Stage, ...] = (
    Stage("prepare", (), fingerprints.prepare, _in("prepare")),
    Stage("annotate", ("prepare",), fingerprints.annotate, _in("annotate")),
    Stage("sft", ("prepare", "annotate"), fingerprints.sft, _in("sft")),
    Stage(
        "probe",
        ("prepare", "sft"),
        fingerprints.probe,
        _in("probe"),
        parts=lambda s: s.probe.num_shards,
        merge=_in("probe", "merge"),
        replicas=lambda s: s.probe.replicas_per_node,
    ),
    Stage("curate", ("probe",), fingerprints.curate, _in("curate")),
    Stage("rl", ("sft", "curate"), fingerprints.rl, _in("rl")),
    Stage("scalar", ("prepare",), fingerprints.scalar, _in("scalar")),
    # evaluate depends on the models it evaluates (each stage of evaluate.models) and the eval sets.
    Stage("evaluate", lambda s: ("prepare", *s.evaluate.models), fingerprints.evaluate, _in("evaluate")),
    # Applications of a trained model (when the spec asks for them): they read the model they use.
    Stage("score", lambda s: (s.model_applied(s.score),), fingerprints.score, _in("score")),
    Stage("filter", lambda s: ("prepare", s.model_applied(s.filter)), fingerprints.filter, _in("filter")),
)
STAGES = {stage.name: stage for stage in PIPELINE}


def merge_missing_upstreams(stage: Stage, run: EGTRun, store: ArtifactStore, workdir: Path) -> None:
    """Join a fanned-out upstream's finished parts (on a cluster, the next stage's job does this)."""
    for name in stage.upstreams(run.spec):
        upstream = STAGES[name]
        unmerged = upstream.part_count(run.spec) > 1 and read_manifest(store, run.name, name) is None
        if unmerged and already_done(upstream, run, store) is None:
            merge_parts(upstream, run, store, workdir, progress=False)


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    return STAGES[name]
