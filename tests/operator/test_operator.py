"""The operator (egt_operator.handlers) in a subprocess against the API emulator, the tests playing
the kubelet: a whole run with a restart in every stage, a failure and its retry, deletion, an invalid
run, and ``egt submit --wait``."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from egt.runner import run_local
from egt.spec import STAGES, parse_run
from egt.storage.store import open_store
from egt_operator.crd import GROUP, PLURAL, VERSION
from tests.fixtures.processes import free_ports
from tests.operator.cluster import Kubelet, wait_for

pytestmark = pytest.mark.slow

NS = "default"
TINY = yaml.safe_load(Path("examples/egtrun-tiny.yaml").read_text())
WATCHED = {"rl": "RayJob"}  # every other stage is watched as a Job


def run_document(store_uri: str, name: str = "tiny-demo") -> dict:
    document = copy.deepcopy(TINY)
    document["metadata"]["name"] = name
    document["spec"]["store"]["uri"] = store_uri
    return document


@pytest.fixture
def operator(operator_process, store_uri):  # the store's S3 credentials reach its environment
    env = {"EGT_RECONCILE_SECONDS": "0.3", "EGT_METRICS_PORT": str(free_ports()[0])}
    return operator_process("egt_operator.handlers", env)


@pytest.fixture
def kube_env(kubeconfig: Path) -> dict[str, str]:
    """The environment of a CLI pointed at the emulator."""
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    return env | {"KUBECONFIG": str(kubeconfig)}


def operator_metrics(operator) -> str:
    port = operator.env["EGT_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def runs(kube_client) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(kube_client)


def get_run(kube_client, name: str) -> dict:
    return runs(kube_client).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def create_run(kube_client, document: dict) -> dict:
    return runs(kube_client).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, document)


def stage_state(kube_client, name: str, stage: str) -> str | None:
    return ((get_run(kube_client, name).get("status") or {}).get("stages") or {}).get(stage, {}).get("state")


def condition(kube_client, name: str, kind: str = "Succeeded") -> dict:
    status = get_run(kube_client, name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def child(kubelet: Kubelet, run: str, stage: str) -> dict:
    kind = WATCHED.get(stage, "Job")
    return wait_for(lambda: kubelet.get(kind, f"{run}-{stage}"), timeout=15, what=f"{kind} {run}-{stage}")


def finish(kubelet: Kubelet, run: str, stage: str) -> None:
    name = f"{run}-{stage}"
    (kubelet.complete_rayjob if stage == "rl" else kubelet.complete_job)(name)


def test_a_whole_run_with_a_restart_in_every_stage(
    store_uri, kube_client, kubelet, operator, tmp_path: Path
) -> None:
    document = run_document(store_uri)
    # Every stage there is, the trained model's applications (score, filter) too.
    document["spec"]["score"] = {"candidates": f"{store_uri}/candidates.jsonl"}
    document["spec"]["filter"] = {"enabled": True}
    open_store(store_uri).write_bytes("candidates.jsonl", b'{"id": "a", "query": "q", "candidates": ["x"]}\n')
    assert parse_run(document).spec.stages == STAGES
    # prepare's outputs are already in the store for this spec: the operator skips it.
    run_local(parse_run(document), tmp_path / "work", stop="prepare", progress=False, echo=lambda *_: None)
    create_run(kube_client, document)
    for stage in STAGES[1:]:
        created = child(kubelet, "tiny-demo", stage)
        assert created["metadata"]["ownerReferences"][0]["kind"] == "EGTRun"
        assert created["metadata"]["labels"]["egt.dev/stage"] == stage
        wait_for(lambda s=stage: stage_state(kube_client, "tiny-demo", s) == "Running", timeout=15)
        operator.restart()  # the operator goes away mid-stage and comes back
        finish(kubelet, "tiny-demo", stage)
        wait_for(lambda s=stage: stage_state(kube_client, "tiny-demo", s) == "Succeeded", timeout=15)
    wait_for(lambda: condition(kube_client, "tiny-demo").get("status") == "True", timeout=15)

    status = get_run(kube_client, "tiny-demo")["status"]
    assert status["stages"]["prepare"]["state"] == "Skipped"
    assert status["stages"]["prepare"]["artifacts"]["model"].endswith("tiny-demo/prepare/model")
    assert status["observedGeneration"] == 1
    # Adopted, never duplicated: one child per stage through a restart in each.
    assert sorted(j["metadata"]["name"] for j in kubelet.jobs(run="tiny-demo")) == sorted(
        f"tiny-demo-{s}" for s in STAGES[1:] if s != "rl"
    )
    assert [r["metadata"]["name"] for r in kubelet.list("RayJob", run="tiny-demo")] == ["tiny-demo-rl"]
    reasons = {e.get("reason") for e in kubelet.list("Event")}
    assert {"StageSkipped", "StageStarted", "StageSucceeded", "RunSucceeded"} <= reasons
    # The last operator saw filter (the last stage) run from start to end, and the run succeed.
    exported = operator_metrics(operator)
    assert 'egt_operator_runs{state="Succeeded"} 1.0' in exported
    assert 'egt_operator_stage_duration_seconds_count{stage="filter",state="Succeeded"} 1.0' in exported
    assert "egt_operator_reconcile_errors_total 0.0" in exported


def test_a_failed_stage_fails_the_run_and_a_retry_resumes_it(
    store_uri, kube, kube_client, kubelet, operator, kube_env, tmp_path
) -> None:
    create_run(kube_client, run_document(store_uri))
    child(kubelet, "tiny-demo", "prepare")
    kubelet.fail_job(
        "tiny-demo-prepare", reason="DeadlineExceeded", message="Job was active longer than allowed"
    )
    wait_for(lambda: condition(kube_client, "tiny-demo").get("status") == "False", timeout=15)
    failed = condition(kube_client, "tiny-demo")
    assert failed["reason"] == "StageFailed"
    assert "prepare failed: DeadlineExceeded: Job was active longer than allowed" in failed["message"]
    assert 'egt_operator_runs{state="Failed"} 1.0' in operator_metrics(operator)
    egt = [str(Path(sys.executable).parent / "egt"), "status", "tiny-demo"]
    shown = subprocess.run(egt, capture_output=True, text=True, env=kube_env, timeout=60)
    assert shown.returncode == 1 and "DeadlineExceeded" in shown.stdout

    runs(kube_client).patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "tiny-demo", {"metadata": {"annotations": {"egt.dev/retry": "1"}}}
    )
    wait_for(lambda: stage_state(kube_client, "tiny-demo", "prepare") == "Running", timeout=15)
    retried = child(kubelet, "tiny-demo", "prepare")
    assert "conditions" not in (retried.get("status") or {})  # a new Job, not the failed one
    # deleted in the foreground: the new Job is created only once the old one's pods are gone
    assert ("Job", "tiny-demo-prepare", "Foreground") in kube.emulator.deletions
    # nothing of the failed attempt is left in the stage's status
    assert set(get_run(kube_client, "tiny-demo")["status"]["stages"]["prepare"]) == {
        "state",
        "startTime",
        "child",
    }
    kubelet.complete_job("tiny-demo-prepare")
    wait_for(lambda: stage_state(kube_client, "tiny-demo", "annotate") == "Running", timeout=15)
    assert condition(kube_client, "tiny-demo")["status"] == "Unknown"


def test_a_child_the_api_server_refuses_fails_its_stage_with_the_servers_message(
    store_uri, kube, kube_client, kubelet, operator, tmp_path
) -> None:
    quota = (
        'jobs.batch "tiny-demo-prepare" is forbidden: exceeded quota: gpu-quota, requested: '
        "requests.memory=8Gi, used: requests.memory=60Gi, limited: requests.memory=64Gi"
    )
    kube.emulator.refusals["tiny-demo-prepare"] = (403, "Forbidden", quota)
    create_run(kube_client, run_document(store_uri))
    wait_for(lambda: condition(kube_client, "tiny-demo").get("status") == "False", timeout=15)
    stage = get_run(kube_client, "tiny-demo")["status"]["stages"]["prepare"]
    assert stage["state"] == "Failed"
    assert stage["message"] == f"CreateRefused: the API server refused Job tiny-demo-prepare: 403 {quota}"
    assert condition(kube_client, "tiny-demo")["reason"] == "StageFailed"
    events = [e for e in kubelet.list("Event") if e.get("reason") == "StageFailed"]
    assert events and "exceeded quota" in events[0]["message"]
    assert not [e for e in kubelet.list("Event") if e.get("reason") == "StageStarted"]

    del kube.emulator.refusals["tiny-demo-prepare"]  # the quota raised: a retry starts the stage
    runs(kube_client).patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "tiny-demo", {"metadata": {"annotations": {"egt.dev/retry": "1"}}}
    )
    child(kubelet, "tiny-demo", "prepare")
    wait_for(lambda: stage_state(kube_client, "tiny-demo", "prepare") == "Running", timeout=15)


def test_an_rl_stage_on_a_kuberay_too_old_for_its_rayjob_fails_saying_so(
    store_uri, kube_client, kubelet, operator, tmp_path
) -> None:
    # KubeRay before 1.6 has no preRunningDeadlineSeconds: the API server would prune it silently.
    crds = k8s.ApiextensionsV1Api(kube_client)
    old = crds.read_custom_resource_definition("rayjobs.ray.io")
    old.spec.versions[0].schema.open_apiv3_schema.properties["spec"].properties.pop(
        "preRunningDeadlineSeconds"
    )
    crds.replace_custom_resource_definition("rayjobs.ray.io", old)
    create_run(kube_client, run_document(store_uri))
    for stage in STAGES[: STAGES.index("rl")]:
        child(kubelet, "tiny-demo", stage)
        finish(kubelet, "tiny-demo", stage)
    wait_for(lambda: stage_state(kube_client, "tiny-demo", "rl") == "Failed", timeout=15)
    message = get_run(kube_client, "tiny-demo")["status"]["stages"]["rl"]["message"]
    assert message.startswith("ClusterUnsupported: the installed KubeRay's RayJob CRD has no ")
    assert "spec.preRunningDeadlineSeconds: KubeRay >= 1.6 is needed" in message
    assert kubelet.list("RayJob") == []


def test_a_run_is_deleted_with_its_children_even_without_the_operator(
    store_uri, kube_client, kubelet, operator, tmp_path
) -> None:
    # kopf's per-object timer put a finalizer on every run: with the operator scaled to 0 or
    # uninstalled, deleting a run or its namespace hung (issue 12, defect 6).
    create_run(kube_client, run_document(store_uri))
    child(kubelet, "tiny-demo", "prepare")
    wait_for(lambda: stage_state(kube_client, "tiny-demo", "prepare") == "Running", timeout=15)
    assert kubelet.list("ConfigMap", run="tiny-demo")
    assert not get_run(kube_client, "tiny-demo")["metadata"].get("finalizers")
    operator.stop()
    runs(kube_client).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "tiny-demo")
    assert not kubelet.list("EGTRun")  # at once: nothing waits for an operator
    # the garbage collector takes the children through their ownerReferences
    assert kubelet.jobs(run="tiny-demo") == [] and kubelet.list("ConfigMap", run="tiny-demo") == []


def test_an_edit_keeps_the_running_stage_and_the_next_stage_leaves_no_old_run_file(
    store_uri, kube_client, kubelet, operator
) -> None:
    create_run(kube_client, run_document(store_uri))
    first = child(kubelet, "tiny-demo", "prepare")
    [old_map] = [m["metadata"]["name"] for m in kubelet.list("ConfigMap", run="tiny-demo")]
    runs(kube_client).patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "tiny-demo", {"spec": {"rl": {"alpha": 0.9}, "suspend": False}}
    )
    wait_for(lambda: get_run(kube_client, "tiny-demo")["status"].get("observedGeneration") == 2, timeout=15)
    # the edit touches rl only: prepare runs on, in the same Job, reading the run file it started with
    assert child(kubelet, "tiny-demo", "prepare")["metadata"]["uid"] == first["metadata"]["uid"]
    finish(kubelet, "tiny-demo", "prepare")
    child(kubelet, "tiny-demo", "annotate")
    maps = lambda: [m["metadata"]["name"] for m in kubelet.list("ConfigMap", run="tiny-demo")]  # noqa: E731
    wait_for(lambda: len(maps()) == 1, timeout=15, what="the superseded run file deleted")
    assert maps() != [old_map]


def test_an_invalid_run_is_rejected_with_its_field(store_uri, kube_client, tmp_path) -> None:
    document = run_document(store_uri)
    document["spec"]["curate"]["strategy"] = "lowest"
    with pytest.raises(k8s.ApiException) as rejected:
        create_run(kube_client, document)
    assert rejected.value.status == 422 and "spec.curate.strategy" in rejected.value.body
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    egt = [str(Path(sys.executable).parent / "egt"), "submit", str(path)]
    refused = subprocess.run(egt, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "spec.curate.strategy" in refused.stderr


def play_kubelet(kubelet: Kubelet, run: str, fail: str | None, stop: threading.Event) -> None:
    """Complete each stage's child when it appears (fail the one named ``fail``)."""
    done: set[str] = set()
    while not stop.is_set() and len(done) < len(STAGES):
        for stage in STAGES:
            kind = WATCHED.get(stage, "Job")
            if stage not in done and kubelet.get(kind, f"{run}-{stage}"):
                if stage == fail:
                    kubelet.fail_job(f"{run}-{stage}", reason="BackoffLimitExceeded", message="OOMKilled")
                    return
                finish(kubelet, run, stage)
                done.add(stage)
        stop.wait(0.1)


@pytest.mark.parametrize("fail", [None, "sft"])
def test_egt_submit_waits_for_the_outcome(store_uri, kubelet, operator, kube_env, tmp_path, fail) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_document(store_uri, name="placeholder")))
    stop = threading.Event()
    player = threading.Thread(target=play_kubelet, args=(kubelet, "ci-1234", fail, stop), daemon=True)
    player.start()
    egt = [str(Path(sys.executable).parent / "egt"), "submit", str(path), "--name", "ci-1234", "--wait"]
    try:
        done = subprocess.run(
            [*egt, "--timeout", "60", "--poll", "0.2"],
            capture_output=True,
            text=True,
            env=kube_env,
            timeout=120,
        )
    finally:
        stop.set()
        player.join()
    if fail is None:
        assert done.returncode == 0, done.stderr
        assert "egtrun/ci-1234 succeeded" in done.stdout and "rl: Succeeded (ci-1234-rl)" in done.stdout
    else:
        assert done.returncode == 1
        assert "sft failed: BackoffLimitExceeded: OOMKilled" in done.stderr
