"""A sweep on a cluster: ``egt sweep FILE --submit --wait`` against the API emulator, the operator in a
subprocess, the test playing the kubelet and each stage job's last act (writing its manifest).

Three arms differ only in curation, so everything up to probing has one identity: the operator
must create one child for each of those stages in all, the other runs waiting and then Skipped
with the first run's outputs.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from egt.stages.base import stage_identity
from egt.stages.pipeline import get_stage
from egt.storage.manifest import Manifest, register, write_manifest
from egt.storage.store import open_store
from egt.sweep.spec import load_sweep
from tests.fixtures.processes import free_ports
from tests.operator.cluster import Kubelet

pytestmark = pytest.mark.slow

TINY = yaml.safe_load(Path("examples/egtrun-tiny.yaml").read_text())
ARMS = {"keep-60": 60, "keep-90": 90, "keep-120": 120}


@pytest.fixture
def operator(operator_process, store_uri):  # the store's S3 credentials reach its environment
    env = {"EGT_RECONCILE_SECONDS": "0.3", "EGT_METRICS_PORT": str(free_ports()[0])}
    return operator_process("egt_operator.handlers", env)


def write_sweep(tmp_path: Path, store_uri: str) -> Path:
    base = copy.deepcopy(TINY)
    base["spec"]["store"]["uri"] = store_uri
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "apiVersion": "egt.dev/v1alpha1",
        "kind": "EGTSweep",
        "metadata": {"name": "abl"},
        "spec": {
            "base": "base.yaml",
            "arms": [{"name": arm, "set": {"curate": {"keep": keep}}} for arm, keep in ARMS.items()],
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def stage_job_finishes(run, stage: str) -> None:
    """What a stage's job does last: its manifest, for this run's identity of the stage."""
    store = open_store(run.spec.store.uri)
    chash, inputs = stage_identity(get_stage(stage), run, store)
    now = datetime.now(UTC).isoformat()
    manifest = Manifest(
        stage=stage,
        config_hash=chash,
        inputs=inputs,
        outputs={"model": "model"},
        started_at=now,
        finished_at=now,
        prefix=f"{run.name}/{stage}",
    )
    write_manifest(store, run.name, stage, manifest)
    register(store, manifest)


def play(kubelet: Kubelet, runs: dict, stop: threading.Event, created: Counter) -> None:
    """Finish every child that appears, after writing its stage's manifest."""
    by_name = {run.name: run for run in runs.values()}
    finished: set[str] = set()
    while not stop.is_set():
        for kind in ("Job", "RayJob"):
            for child in kubelet.list(kind):
                name, labels = child["metadata"]["name"], child["metadata"]["labels"]
                if name in finished:
                    continue
                run, stage = by_name[labels["egt.dev/run"]], labels["egt.dev/stage"]
                created[stage] += 1
                stage_job_finishes(run, stage)
                (kubelet.complete_rayjob if kind == "RayJob" else kubelet.complete_job)(name)
                finished.add(name)
        stop.wait(0.1)


def test_a_sweep_computes_each_shared_stage_once(
    kubelet, operator, kube_client, kubeconfig, tmp_path, store_uri
) -> None:
    path = write_sweep(tmp_path, store_uri)
    _, runs = load_sweep(path)
    created: Counter = Counter()
    stop = threading.Event()
    player = threading.Thread(target=play, args=(kubelet, runs, stop, created), daemon=True)
    player.start()
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"} | {
        "KUBECONFIG": str(kubeconfig)
    }
    egt = [str(Path(sys.executable).parent / "egt"), "sweep", str(path), "--submit", "--wait"]
    try:
        done = subprocess.run(
            [*egt, "--timeout", "120", "--poll", "0.2"], capture_output=True, text=True, env=env, timeout=180
        )
    finally:
        stop.set()
        player.join()
    assert done.returncode == 0, done.stdout + done.stderr
    for run in runs.values():
        assert f"egtrun/{run.name} succeeded" in done.stdout

    # One child per shared stage in all (the scalar baseline reads only prepare's pools); curation,
    # rl and evaluate once per arm.
    shared = ("prepare", "annotate", "sft", "probe", "scalar")
    assert created == dict.fromkeys(shared, 1) | {"curate": 3, "rl": 3, "evaluate": 3}
    runs_api = k8s.CustomObjectsApi(kube_client)
    states = {}
    for run in runs.values():
        body = runs_api.get_namespaced_custom_object("egt.dev", "v1alpha1", "default", "egtruns", run.name)
        states[run.name] = {s: body["status"]["stages"][s]["state"] for s in run.spec.stages}
        assert body["metadata"]["labels"] == {
            "egt.dev/sweep": "abl",
            "egt.dev/arm": run.name.removeprefix("abl-"),
        }
    # Each shared stage: computed by one run (whichever got there first), Skipped in the others,
    # which point at that run's outputs: referenced, not copied.
    store = open_store(store_uri)
    for stage in shared:
        computed = [name for name, s in states.items() if s[stage] == "Succeeded"]
        assert len(computed) == 1 and sorted(s[stage] for s in states.values()) == [
            "Skipped",
            "Skipped",
            "Succeeded",
        ]
        for name in states:
            assert store.read_json(f"{name}/{stage}/manifest.json")["prefix"] == f"{computed[0]}/{stage}"
    for s in states.values():
        assert [s[stage] for stage in ("curate", "rl", "evaluate")] == ["Succeeded"] * 3
