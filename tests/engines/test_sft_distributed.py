"""SFT (and the scalar stage, its loop) across processes, for real: torchrun, gloo, DeepSpeed ZeRO on
CPU, checkpoints in a file store.

The sft stage runs in subprocesses: one plain process (no torchrun, as ``egt run --local`` runs it)
and two-process torchrun launches on the command line an Indexed Job would run
(``torchrun_command``). At the same global batch (4 sequences: 1 process × 4 micro-batches, or
2 processes × 2) both must log the same losses and pre-clip gradient norms step by step; so must
ZeRO-3 with gradient checkpointing; and a launch killed with SIGKILL after a checkpoint must
resume from it and end with the uninterrupted run's losses.

Run as a module, this file is the driver each process executes (``main`` at the bottom): it builds
the stage context the way ``execute_stage`` does and calls the stage's ``run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest
import yaml

from egt.engines.distributed import NODE_RANK_FROM_JOB_INDEX, World, torchrun_command, world

REPO = Path(__file__).resolve().parents[2]
RUN_NAME = "dist"
# The scripted teacher keeps 13 of the 14 pairs; × 1.62 epochs = 21 sequences: 5 full global batches
# of 4, then one of 1 (in two processes rank 1 has nothing of it and runs padding micro-batches only).
RUN_DOC = {
    "apiVersion": "egt.dev/v1alpha1",
    "kind": "EGTRun",
    "metadata": {"name": RUN_NAME},
    "spec": {
        "model": {"tiny": {"seed": 0}, "dtype": "float32", "device": "cpu"},
        "data": {"synthetic": {"seed": 3, "sft_size": 14, "rl_size": 2, "eval_size": 2}},
        "annotate": {"teacher": {"kind": "scripted", "style": "steps"}, "shard_size": 8},
        "sft": {
            "epochs": 1.62,
            "global_batch_size": 4,
            "micro_batch_size": 1,
            "learning_rate": 3e-3,
            "warmup_ratio": 0.34,  # 2 of the 6 steps
            "seed": 7,
            "checkpoint_every_steps": 1,
            "gradient_checkpointing": False,
        },
        # The scalar stage on the 14 pool pairs: 2 epochs of 4-pair steps = 7 steps, the last of 4.
        "scalar": {
            "epochs": 2,
            "global_batch_size": 4,
            "micro_batch_size": 1,
            "learning_rate": 3e-3,
            "seed": 7,
            "freeze": [],
            "checkpoint_every_steps": 1,
            "gradient_checkpointing": False,
        },
    },
}
STEPS = 6
# Measured here: 1 vs 2 processes (ZeRO-2) agree to 1.7e-8 relative in the loss and 6.3e-8 in the grad
# norm, ZeRO-3 vs ZeRO-2 to 1.9e-8 and 5.5e-8; a resumed run matches the uninterrupted one exactly.
# The bound leaves room for other CPUs' float reductions.
TOLERANCE = 1e-5


# ---- fast checks of the launch plumbing ---------------------------------------------------------


def test_world_reads_torchrun_environment():
    assert world({}) == World(0, 1, 0)
    assert world({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == World(5, 8, 1)
    assert world({"RANK": "0", "WORLD_SIZE": "2"}).is_main
    assert not world({"RANK": "1", "WORLD_SIZE": "2"}).is_main
    with pytest.raises(ValueError, match="RANK=2 WORLD_SIZE=2"):
        world({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not an integer"):
        world({"RANK": "zero"})


def test_torchrun_command_of_an_indexed_job_node():
    command = torchrun_command(4, 8, "sft-abc-0.sft-abc", 29500, "/etc/egt/run.yaml")
    assert command == [
        "torchrun",
        "--nnodes=4",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--nproc-per-node=8",
        "--master-addr=sft-abc-0.sft-abc",
        "--master-port=29500",
        "--max-restarts=0",
        "-m",
        "jobs.sft",
        "--spec",
        "/etc/egt/run.yaml",
    ]
    assert NODE_RANK_FROM_JOB_INDEX in command[2]
    by_hand = torchrun_command(2, 1, "10.0.0.1", 29400, "run.yaml", node_rank=1, module="jobs.rl")
    assert "--node-rank=1" in by_hand and by_hand[-3:] == ["jobs.rl", "--spec", "run.yaml"]
    with pytest.raises(ValueError, match="node rank 2"):
        torchrun_command(2, 1, "a", 29500, "r.yaml", node_rank=2)
    with pytest.raises(ValueError, match="process per node"):
        torchrun_command(1, 0, "a", 29500, "r.yaml")


# ---- launches ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return env


class Launch:
    """One sft launch on its own copy of the prepared store."""

    def __init__(
        self, prepared: Path, root: Path, processes: int, zero_stage: int = 2, stage: str = "sft", **sft
    ) -> None:
        self.root, self.processes, self.stage = root, processes, stage
        self.store = root / "store"
        if not self.store.exists():
            shutil.copytree(prepared, self.store)
        doc = json.loads(json.dumps(RUN_DOC))
        doc["spec"]["store"] = {"uri": str(self.store)}
        doc["spec"]["sft"] |= sft
        self.spec = root / "run.yaml"
        self.spec.write_text(yaml.safe_dump(doc))
        self.out = root / "out"
        args = ["--workdir", str(root / "work"), "--out", str(self.out), "--zero-stage", str(zero_stage)]
        args += ["--stage", stage]
        module = "tests.engines.test_sft_distributed"
        if processes == 1:  # no torchrun at all: the process is a world of 1
            self.command = [sys.executable, "-m", module, "--spec", str(self.spec), *args]
        else:
            command = torchrun_command(
                1, processes, "127.0.0.1", _free_port(), str(self.spec), node_rank=0, module=module
            )
            self.command = [sys.executable, "-m", "torch.distributed.run", *command[1:], *args]

    def start(self) -> subprocess.Popen:
        self.log = (self.root / "log.txt").open("w")
        return subprocess.Popen(
            self.command,
            cwd=REPO,
            env=_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, timeout: float = 240) -> dict:
        process = self.start()
        try:
            code = process.wait(timeout)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            self.log.close()
        assert code == 0, self.output()[-4000:]
        return self.results()

    def output(self) -> str:
        return (self.root / "log.txt").read_text()

    def key(self, *parts: str) -> Path:
        return self.store.joinpath(RUN_NAME, self.stage, *parts)

    def results(self) -> dict:
        """What each rank's stage run returned, and the history rank 0 wrote."""
        ranks = [json.loads((self.out / f"rank-{r}.json").read_text()) for r in range(self.processes)]
        for other in ranks[1:]:
            assert other == ranks[0]  # every rank returns the same result
        history = json.loads(self.key("history.json").read_text())
        assert ranks[0]["outputs"]["history"] == "history.json"
        return {"result": ranks[0], "history": history}


def _relative_gap(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (a, b)
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True))


def _series(run: dict, name: str) -> list[float]:
    return [h[name] for h in run["history"]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A file store where prepare (the tiny model, synthetic data) and annotate have run."""
    from egt.runner import run_local
    from egt.spec import parse_run

    root = tmp_path_factory.mktemp("prepared")
    doc = json.loads(json.dumps(RUN_DOC))
    doc["spec"]["store"] = {"uri": str(root / "store")}
    run_local(parse_run(doc, "test"), root / "work", stop="annotate", progress=False, echo=lambda *_: None)
    return root / "store"


@pytest.fixture(scope="module")
def two_processes(prepared, tmp_path_factory) -> tuple[Launch, dict]:
    launch = Launch(prepared, tmp_path_factory.mktemp("two"), processes=2)
    return launch, launch.run()


@pytest.mark.slow
def test_two_processes_train_like_one_at_the_same_global_batch(prepared, two_processes, tmp_path):
    one = Launch(prepared, tmp_path, processes=1).run()
    launch, two = two_processes
    assert one["result"]["counts"] == {"examples": 13, "dropped_too_long": 0, "steps": STEPS, "processes": 1}
    assert two["result"]["counts"]["processes"] == 2 and two["result"]["counts"]["steps"] == STEPS
    losses, norms = _series(two, "loss"), _series(two, "grad_norm")
    gaps = _relative_gap(losses, _series(one, "loss")), _relative_gap(norms, _series(one, "grad_norm"))
    print(f"1 vs 2 processes: max relative gap of losses {gaps[0]:.2e}, of grad norms {gaps[1]:.2e}")
    assert max(gaps) < TOLERANCE
    assert json.loads(launch.key("losses.json").read_text()) == losses
    # The runs learn (so equal losses are not equal by standing still): loss falls, lr warms and decays.
    assert losses[-2] < losses[0] - 0.5, losses
    lrs = _series(two, "lr")
    assert lrs[0] < lrs[1] and lrs[1] > lrs[-1]

    # The newest checkpoint only (step 5; none after the last step), one optimizer shard per rank,
    # latest.json naming it; the final model is a Hugging Face folder.
    checkpoints = launch.key("checkpoints")
    assert json.loads((checkpoints / "latest.json").read_text()) == {
        "tag": "step-0000005",
        "step": 5,
        "world_size": 2,
    }
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest.json", "step-0000005"]
    files = {p.name for p in (checkpoints / "step-0000005").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= files
    assert "mp_rank_00_model_states.pt" in files
    assert (launch.key("model") / "model.safetensors").is_file()


@pytest.mark.slow
def test_zero3_with_gradient_checkpointing_matches_zero2(prepared, two_processes, tmp_path):
    zero2_launch, zero2 = two_processes
    launch = Launch(prepared, tmp_path, processes=2, zero_stage=3, gradient_checkpointing=True)
    zero3 = launch.run()
    gaps = (
        _relative_gap(_series(zero3, "loss"), _series(zero2, "loss")),
        _relative_gap(_series(zero3, "grad_norm"), _series(zero2, "grad_norm")),
    )
    print(f"ZeRO-3 + checkpointing vs ZeRO-2: max relative gaps {gaps[0]:.2e} (loss), {gaps[1]:.2e} (norm)")
    assert max(gaps) < TOLERANCE
    # ZeRO-3 gathers its sharded parameters to write the final model: the same weights as ZeRO-2's
    # (measured max |Δ| 3e-6), while training moved them far more than that.
    from safetensors.torch import load_file

    def weights(store: Path, stage: str) -> dict:
        return load_file(store / RUN_NAME / stage / "model" / "model.safetensors")

    zero2_model, zero3_model = weights(zero2_launch.store, "sft"), weights(launch.store, "sft")
    initial = weights(launch.store, "prepare")
    assert zero3_model.keys() == zero2_model.keys() == initial.keys()
    assert max((zero3_model[k] - zero2_model[k]).abs().max().item() for k in initial) < 1e-4
    assert max((zero3_model[k] - initial[k]).abs().max().item() for k in initial) > 1e-2


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(prepared, two_processes, tmp_path):
    _, uninterrupted = two_processes
    launch = Launch(prepared, tmp_path, processes=2)
    latest = launch.key("checkpoints", "latest.json")
    process = launch.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if latest.is_file() and json.loads(latest.read_text())["step"] >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, launch.output()[-4000:]
        # A lost node: torchrun and both ranks die at once, with no chance to clean up. torchrun starts
        # each rank in a session of its own, so they are killed by pid, not by process group.
        processes = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        assert len(processes) >= 3
        for each in processes:
            each.kill()
        psutil.wait_procs(processes, timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        launch.log.close()
    killed_at = json.loads(latest.read_text())["step"]
    assert 2 <= killed_at < STEPS
    assert not launch.key("losses.json").exists()  # it did not finish

    resumed = launch.run()
    assert f"sft: resuming after step {killed_at}" in launch.output()
    # Exactly the uninterrupted run's steps, including the ones restored from the checkpoint.
    gaps = (
        _relative_gap(_series(resumed, "loss"), _series(uninterrupted, "loss")),
        _relative_gap(_series(resumed, "grad_norm"), _series(uninterrupted, "grad_norm")),
    )
    print(f"resumed after step {killed_at} vs uninterrupted: max relative gaps {gaps[0]:.2e}, {gaps[1]:.2e}")
    assert max(gaps) < 1e-6


@pytest.mark.slow
def test_the_scalar_stage_trains_alike_on_one_or_two_processes_and_under_zero3(prepared, tmp_path):
    # The scalar head is a module of the engine beside the backbone: DeepSpeed must average its
    # gradient over ranks and ZeRO-3 must shard and gather it like every other parameter.
    runs = {
        name: Launch(prepared, tmp_path / name, processes, zero_stage, stage="scalar").run()
        for name, processes, zero_stage in (("one", 1, 2), ("two", 2, 2), ("zero3", 2, 3))
    }
    assert runs["one"]["result"]["counts"]["steps"] == runs["two"]["result"]["counts"]["steps"] == 7
    losses = {name: _series(run, "loss") for name, run in runs.items()}
    assert losses["one"][0] == pytest.approx(math.log(2), abs=1e-6)  # the zero head ties every pair
    assert losses["one"][-1] < losses["one"][0] - 0.005, losses["one"]  # it moves: equal runs are not idle
    for name in ("two", "zero3"):
        gaps = (
            _relative_gap(losses[name], losses["one"]),
            _relative_gap(_series(runs[name], "grad_norm"), _series(runs["one"], "grad_norm")),
        )
        print(f"scalar, {name} vs one process: max relative gaps {gaps[0]:.2e} (loss), {gaps[1]:.2e} (norm)")
        # Measured: losses 1.1e-7 (two) and 1.5e-7 (ZeRO-3), grad norms 7.6e-6 and 1.0e-5: the first
        # steps' norms are small (the head starts at zero), so float reduction order shows more there.
        assert gaps[0] < TOLERANCE and gaps[1] < 10 * TOLERANCE


# ---- the driver each launched process runs -------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a trainer stage in this process (test driver).")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--stage", choices=["sft", "scalar"], default="sft")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from egt.metrics import StageMetrics
    from egt.spec import load_run
    from egt.stages.base import StageContext
    from egt.stages.pipeline import get_stage
    from egt.storage.store import open_store

    torch.set_num_threads(1)
    run = load_run(args.spec)
    section = getattr(run.spec, args.stage)
    setattr(run.spec, args.stage, section.model_copy(update={"zero_stage": args.zero_stage}))
    store = open_store(run.spec.store.uri)
    workdir = args.workdir / run.name / args.stage
    workdir.mkdir(parents=True, exist_ok=True)
    metrics = StageMetrics(run.name, args.stage, None)
    ctx = StageContext(run, store, args.stage, metrics, workdir, progress=False)
    result = get_stage(args.stage).run(ctx)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank-{world().rank}.json").write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
