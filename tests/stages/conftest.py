"""A whole run at the smallest size that still exercises every stage."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from egt.spec import EGTRun, dump_run, parse_run

SMALL_RUN = {
    "apiVersion": "egt.dev/v1alpha1",
    "kind": "EGTRun",
    "metadata": {"name": "small"},
    "spec": {
        "model": {"tiny": {"seed": 0}, "dtype": "float32", "device": "cpu"},
        "data": {"synthetic": {"seed": 1, "sft_size": 16, "rl_size": 12, "eval_size": 6}},
        "annotate": {"teacher": {"kind": "scripted", "style": "steps"}, "shard_size": 8},
        "sft": {
            "epochs": 1,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "learning_rate": 1e-3,
            "checkpoint_every_steps": 1,
        },
        "probe": {"max_new_tokens": 12, "batch_size": 4, "shard_size": 4},
        "curate": {"keep": 6},
        "rl": {
            "epochs": 1,
            "global_batch_size": 3,
            "micro_batch_size": 3,
            "learning_rate": 1e-4,
            "max_new_tokens": 12,
            "max_steps": 2,
            "updates_per_batch": 2,
            "checkpoint_every_steps": 1,
        },
        "scalar": {
            "epochs": 1,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "learning_rate": 1e-3,
            "checkpoint_every_steps": 1,
        },
        "evaluate": {"models": ["sft", "rl", "scalar"], "max_new_tokens": 12, "batch_size": 6},
    },
}


@pytest.fixture
def small_run_doc() -> dict:
    return copy.deepcopy(SMALL_RUN)


def make_run(doc: dict, store_uri: str, endpoint_url: str | None = None) -> EGTRun:
    doc = copy.deepcopy(doc)
    doc["spec"]["store"] = {"uri": store_uri, "endpoint_url": endpoint_url}
    return parse_run(doc, "test")


def start_stage_pod(stage: str, run: EGTRun, tmp_path: Path, **popen: Any) -> subprocess.Popen:
    """``python -m jobs.<stage>`` on the run's resolved spec, as a stage pod runs it (output
    discarded): what a fault test kills."""
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(dump_run(run))
    command = [sys.executable, "-m", f"jobs.{stage}", "--spec", str(spec_file),
               "--workdir", str(tmp_path / "pod"), "--no-progress"]  # fmt: skip
    return subprocess.Popen(
        command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen
    )


@pytest.fixture
def alternating_rewards(monkeypatch) -> None:
    """Rewards 0, 1, 0, 1, … for the rl stage's rollouts.

    A barely trained tiny model can earn the same reward on every rollout, which whitens to zero
    advantages and no update; alternating rewards make every step move the learner.
    """
    from egt.stages import rl as rl_stage

    real_score = rl_stage.score_rollouts

    def alternating(texts, labels, logic, spec):
        scored = real_score(texts, labels, logic, spec)
        for index, rollout in enumerate(scored):
            rollout.reward = float(index % 2)
        return scored

    monkeypatch.setattr(rl_stage, "score_rollouts", alternating)
