"""RL on a local Ray cluster: rollout workers in sync with the learner, and resume in curriculum order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from egt.metrics import StageMetrics
from egt.runner import run_local
from egt.stages import rl as rl_stage
from egt.stages.base import StageContext
from egt.storage.records import read_records
from egt.storage.store import open_store
from tests.stages.conftest import make_run, start_stage_pod

pytestmark = pytest.mark.slow


def quiet(*_):
    return None


@pytest.fixture
def rl_doc(small_run_doc):
    small_run_doc["spec"]["rl"].update(
        {
            "rollout_workers": 2,
            "epochs": 2,
            "max_steps": None,
            "global_batch_size": 3,
            "checkpoint_every_steps": 1,
        }
    )
    return small_run_doc


# One learner rank (ZeRO-2), and two under ZeRO-3, whose synced weights are gathered from both shards.
@pytest.mark.parametrize("learners,zero_stage", [(1, 2), (2, 3)])
def test_rollout_weights_equal_the_learners_after_every_sync(
    rl_doc, tmp_path: Path, alternating_rewards, learners: int, zero_stage: int
) -> None:
    rl_doc["spec"]["rl"].update({"learner_workers": learners, "zero_stage": zero_stage})
    run = make_run(rl_doc, str(tmp_path / "store"))
    store, _ = run_local(run, tmp_path / "work", stop="curate", progress=False, echo=quiet)
    ctx = StageContext(run, store, "rl", StageMetrics(run.name, "rl", None), tmp_path / "rl")
    curated = read_records(store, "small/curate/curated.jsonl")
    driver = rl_stage.RLDriver(ctx)
    ray = driver.ray
    try:
        for step in range(2):
            before, *others = driver.on_learners("weights")
            assert others == [None] * (learners - 1)  # only rank 0 returns the weights
            driver.step(rl_stage.batch_for_step(curated, step, 3), step)
            learner = driver.on_learners("weights")[0]
            assert any(not torch.equal(before[name], learner[name]) for name in learner), "no update"
            for worker in driver.workers:
                rollout = ray.get(worker.weights.remote())
                assert rollout.keys() == learner.keys()
                assert all(torch.equal(rollout[name], learner[name]) for name in learner)
    finally:
        driver.close()


def test_a_killed_run_resumes_with_the_same_batches_and_results(rl_doc, tmp_path: Path, monkeypatch) -> None:
    uninterrupted = make_run(rl_doc, str(tmp_path / "a"))
    run_local(uninterrupted, tmp_path / "work-a", progress=False, echo=quiet, stop="rl")
    reference = open_store(str(tmp_path / "a")).read_json("small/rl/history.json")

    run = make_run(rl_doc, str(tmp_path / "b"))
    run_local(run, tmp_path / "work-b", stop="curate", progress=False, echo=quiet)
    batches: list[list[str]] = []
    real_step = rl_stage.RLDriver.step
    kill = [True]

    def step(self, batch, index):
        batches.append([r["id"] for r in batch])
        if index == 2 and kill:
            kill.pop()
            raise RuntimeError("pod evicted")
        return real_step(self, batch, index)

    monkeypatch.setattr(rl_stage.RLDriver, "step", step)
    with pytest.raises(RuntimeError, match="pod evicted"):
        run_local(run, tmp_path / "work-b", start="rl", stop="rl", progress=False, echo=quiet)
    run_local(run, tmp_path / "work-b", start="rl", stop="rl", progress=False, echo=quiet)

    curated = read_records(open_store(str(tmp_path / "b")), "small/curate/curated.jsonl")
    order = [[r["id"] for r in rl_stage.batch_for_step(curated, s, 3)] for s in range(4)]
    # Steps 0-2 before the kill (2 failed), then the resumed run starts again at step 2.
    assert batches == [order[0], order[1], order[2], order[2], order[3]]
    resumed = open_store(str(tmp_path / "b")).read_json("small/rl/history.json")
    assert [h["step"] for h in resumed] == [1, 2, 3, 4]
    assert [h["reward_mean"] for h in resumed] == [h["reward_mean"] for h in reference]


def test_an_rl_driver_killed_with_sigkill_resumes_to_the_same_history(
    rl_doc, tmp_path: Path, monkeypatch
) -> None:
    """A lost node: the rl entrypoint and its local Ray cluster (driver, learner, rollout workers)
    killed with SIGKILL after a checkpoint, with no chance to clean up. The rerun takes over the
    dead runner's lease once it expires, resumes from the checkpoint, and its history equals an
    uninterrupted run's."""
    import json
    import os
    import signal
    import time

    uninterrupted = make_run(rl_doc, str(tmp_path / "a"))
    run_local(uninterrupted, tmp_path / "work-a", progress=False, echo=quiet, stop="rl")
    reference = open_store(str(tmp_path / "a")).read_json("small/rl/history.json")

    run = make_run(rl_doc, str(tmp_path / "b"))
    run_local(run, tmp_path / "work-b", stop="curate", progress=False, echo=quiet)
    monkeypatch.setenv("EGT_LEASE_SECONDS", "3")
    pod = start_stage_pod("rl", run, tmp_path, start_new_session=True)  # its Ray cluster in its session
    latest = tmp_path / "b" / "small" / "rl" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 600
    try:
        while pod.poll() is None and time.monotonic() < deadline:
            if latest.is_file() and json.loads(latest.read_text())["step"] >= 2:
                break
            time.sleep(0.05)
    finally:
        os.killpg(pod.pid, signal.SIGKILL)  # the driver and every Ray process it started
        pod.wait()
    store = open_store(str(tmp_path / "b"))
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at >= 2 and not store.exists("small/rl/manifest.json"), killed_at

    run_local(run, tmp_path / "work-b", start="rl", stop="rl", progress=False, echo=quiet)
    resumed = store.read_json("small/rl/history.json")
    assert [h["step"] for h in resumed] == [h["step"] for h in reference]
    assert [h["reward_mean"] for h in resumed] == [h["reward_mean"] for h in reference]
