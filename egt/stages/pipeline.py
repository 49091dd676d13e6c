"""The stages in order, with what each depends on: the one list the runner and the operator read."""

from __future__ import annotations

from egt.stages import annotate, curate, evaluate, prepare, probe, rl, sft
from egt.stages.base import Stage

PIPELINE: tuple[Stage, ...] = (
    Stage("prepare", (), prepare.fingerprint, prepare.run),
    Stage("annotate", ("prepare",), annotate.fingerprint, annotate.run),
    Stage("sft", ("prepare", "annotate"), sft.fingerprint, sft.run),
    Stage("probe", ("prepare", "sft"), probe.fingerprint, probe.run),
    Stage("curate", ("probe",), curate.fingerprint, curate.run),
    Stage("rl", ("sft", "curate"), rl.fingerprint, rl.run),
    Stage("evaluate", ("prepare", "sft", "rl"), evaluate.fingerprint, evaluate.run),
)
STAGES = {stage.name: stage for stage in PIPELINE}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    return STAGES[name]
