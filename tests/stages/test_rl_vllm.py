"""The rl stage with vLLM rollout workers on a local Ray cluster (runs in .venv-vllm)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from egt.engines.rl import RolloutWorker
from egt.engines.vllm_engine import vllm_available
from egt.metrics import StageMetrics
from egt.spec import dump_run
from egt.stages import rl as rl_stage
from egt.stages.base import StageContext
from egt.stages.sft import judge_input
from egt.storage.records import read_records
from egt.storage.store import open_store
from tests.stages.conftest import make_run

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_available(), reason="vllm is not importable here: run it in .venv-vllm"),
]


def test_vllm_rollout_workers_follow_the_learner(small_run_doc, tmp_path: Path, alternating_rewards) -> None:
    small_run_doc["spec"]["rl"].update(
        {"rollout_engine": "vllm", "vllm": {"enforce_eager": True}, "learning_rate": 1e-2}
    )
    run = make_run(small_run_doc, str(tmp_path / "store"))
    # The upstream stages in a process of their own, as on a cluster: DeepSpeed (sft) cannot start in
    # a process where an earlier test's in-process vLLM engine has already torn down the default group.
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(dump_run(run))
    egt = str(Path(sys.executable).parent / "egt")
    command = [egt, "run", str(spec_file), "--local", "--until", "curate", "-q", "--no-report"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    store = open_store(run.spec.store.uri)
    ctx = StageContext(run, store, "rl", StageMetrics(run.name, "rl", None), tmp_path / "rl")
    curated = read_records(store, "small/curate/curated.jsonl")
    driver = rl_stage.RLDriver(ctx)
    ray = driver.ray
    try:
        batch = rl_stage.batch_for_step(curated, 0, 3)
        items = [judge_input(r, driver.images) for r in batch]
        [worker] = driver.workers
        before = ray.get(worker.generate.remote(items, 12, 0.0, 0))
        record = driver.step(batch, 0)
        assert record["step"] == 1 and record["grad_norm"] > 0
        # After the sync the vLLM engine decodes greedily what the learner's weights decode.
        learner = RolloutWorker(driver.policy, "float32", "cpu", threads=1)
        learner.set_weights(driver.on_learners("weights")[0])
        expected = [g.token_ids for g in learner.generate(items, 12, temperature=0.0, seed=0)]
        after = [g.token_ids for g in ray.get(worker.generate.remote(items, 12, 0.0, 0))]
        assert after == expected
        assert after != [g.token_ids for g in before], "the update did not change the greedy rollouts"
    finally:
        driver.close()
