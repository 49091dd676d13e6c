"""The operator test harness (tests/operator/cluster.py) does what operators rely on in a cluster:
server-owned metadata, the status subresource, admission by the CRD's schema, watches, finalizers,
a kopf operator in a subprocess that reacts and survives restarts, and Jobs that end on cue."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from egt_operator.crd import GROUP, PLURAL, VERSION
from tests.operator.cluster import Kubelet, OperatorProcess, wait_for

ECHO = "tests.operator.echo_operator"
NS = "default"
SPEC = {
    "model": {"tiny": {}},
    "data": {"synthetic": {}},
    "store": {"uri": "s3://b/runs"},
}  # the smallest the CRD admits
StartOperator = Callable[..., OperatorProcess]


@pytest.fixture
def runs(kube_client: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(kube_client)


def create_run(
    runs: k8s.CustomObjectsApi,
    name: str,
    spec: dict | None = None,
    status: dict | None = None,
    **options: Any,
) -> dict:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EGTRun",
        "metadata": {"name": name},
        "spec": spec or SPEC,
    }
    body |= {"status": status} if status else {}
    return runs.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body, **options)


def get_run(runs: k8s.CustomObjectsApi, name: str) -> dict | None:
    try:
        return runs.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    except k8s.ApiException as error:
        if error.status == 404:
            return None
        raise


def patch_run(runs: k8s.CustomObjectsApi, name: str, body: Any, status: bool = False, **options: Any) -> dict:
    patch = runs.patch_namespaced_custom_object_status if status else runs.patch_namespaced_custom_object
    return patch(GROUP, VERSION, NS, PLURAL, name, body, **options)


def rejection(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, dict]:
    """The HTTP status and the Status body of a refused request."""
    with pytest.raises(k8s.ApiException) as caught:
        call(*args, **kwargs)
    return caught.value.status, json.loads(caught.value.body)


def test_server_stamps_metadata_and_defaults(runs: k8s.CustomObjectsApi) -> None:
    created = create_run(runs, "r1")
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    # The CRD's defaults apply wherever their parent object exists, as structural defaulting does.
    assert created["spec"]["model"]["tiny"]["num_layers"] == 4 and created["spec"]["suspend"] is False
    assert "curate" not in created["spec"]

    version = int(meta["resourceVersion"])
    labelled = patch_run(runs, "r1", {"metadata": {"labels": {"team": "a"}}})["metadata"]
    assert labelled["generation"] == 1 and int(labelled["resourceVersion"]) > version
    assert patch_run(runs, "r1", {"metadata": {"labels": {"team": "a"}}})["metadata"] == labelled  # no-op

    respecced = patch_run(runs, "r1", {"spec": {"suspend": True}})["metadata"]
    assert respecced["generation"] == 2
    reported = patch_run(runs, "r1", {"status": {"message": "hi"}}, status=True)["metadata"]
    assert reported["generation"] == 2 and int(reported["resourceVersion"]) > int(
        respecced["resourceVersion"]
    )
    assert reported["uid"] == meta["uid"] and reported["creationTimestamp"] == meta["creationTimestamp"]


def test_status_changes_only_through_its_subresource(runs: k8s.CustomObjectsApi) -> None:
    assert "status" not in create_run(runs, "r1", status={"message": "made up"})

    patched = patch_run(runs, "r1", {"spec": {"suspend": True}, "status": {"message": "sneaked in"}})
    assert patched["spec"]["suspend"] is True and "status" not in patched

    both = {"spec": {"suspend": False}, "status": {"currentStage": "sft"}}
    reported = patch_run(runs, "r1", both, status=True)
    assert reported["spec"]["suspend"] is True and reported["status"] == {"currentStage": "sft"}

    # Status is pruned and validated by the schema like the spec: kopf's own status fields vanish.
    pruned = patch_run(runs, "r1", {"status": {"kopf": {"progress": {}}, "message": "ok"}}, status=True)
    assert pruned["status"] == {"currentStage": "sft", "message": "ok"}
    code, status = rejection(patch_run, runs, "r1", {"status": {"currentStage": "echo"}}, status=True)
    assert code == 422 and 'status.currentStage: Unsupported value: "echo"' in status["message"]


def test_invalid_runs_are_rejected_with_the_field_named(runs: k8s.CustomObjectsApi) -> None:
    code, status = rejection(create_run, runs, "bad", {**SPEC, "curate": {"strategy": "lowest"}})
    assert (code, status["kind"], status["reason"]) == (422, "Status", "Invalid")
    assert status["message"] == (
        'EGTRun.egt.dev "bad" is invalid: spec.curate.strategy: Unsupported value: "lowest": '
        'supported values: "entropy", "random", "accuracy", "bucket", "all"'
    )
    assert status["details"]["causes"][0]["field"] == "spec.curate.strategy"

    code, status = rejection(create_run, runs, "bad", {**SPEC, "curate": {"keep": 0, "seed": "x"}})
    assert code == 422
    assert (
        "spec.curate.keep: Invalid value: 0: spec.curate.keep in body should be greater than or equal to 1"
        in (status["message"])
    )
    assert (
        'spec.curate.seed: Invalid value: "string": spec.curate.seed in body must be of type integer'
        in (status["message"])
    )
    assert get_run(runs, "bad") is None

    # Unknown fields: refused under strict field validation (what kubectl sends), else pruned.
    unknown = {**SPEC, "curate": {"bogus": 1}}
    code, status = rejection(create_run, runs, "bad", unknown, field_validation="Strict")
    assert code == 400 and 'strict decoding error: unknown field "spec.curate.bogus"' in status["message"]
    assert "bogus" not in create_run(runs, "lenient", unknown)["spec"]["curate"]

    code, status = rejection(patch_run, runs, "lenient", {"spec": {"curate": {"strategy": "lowest"}}})
    assert code == 422 and "spec.curate.strategy: Unsupported value" in status["message"]


def test_patches_conflicts_and_media_types(runs: k8s.CustomObjectsApi) -> None:
    version = create_run(runs, "r1")["metadata"]["resourceVersion"]
    patch_run(runs, "r1", {"spec": {"suspend": True}})

    stale = {"metadata": {"resourceVersion": version}, "spec": {"suspend": False}}
    assert rejection(patch_run, runs, "r1", stale)[0] == 409
    json_patch = {"_content_type": "application/json-patch+json"}
    failed_test = [{"op": "test", "path": "/metadata/resourceVersion", "value": version}]
    assert rejection(patch_run, runs, "r1", failed_test, **json_patch)[0] == 422  # kopf retries on this
    ops = [{"op": "replace", "path": "/spec/suspend", "value": False}]
    assert patch_run(runs, "r1", ops, **json_patch)["spec"]["suspend"] is False
    strategic = {"_content_type": "application/strategic-merge-patch+json"}
    assert rejection(patch_run, runs, "r1", {"spec": {}}, **strategic)[0] == 415  # not for custom resources

    current = get_run(runs, "r1")
    assert current is not None
    current["spec"]["suspend"] = True
    replaced = runs.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "r1", current)
    assert replaced["spec"]["suspend"] is True and replaced["metadata"]["generation"] == 4


def test_watch_delivers_every_change_after_a_list(runs: k8s.CustomObjectsApi) -> None:
    create_run(runs, "before")
    listed = runs.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["before"]

    create_run(runs, "r1")
    patch_run(runs, "r1", {"spec": {"suspend": True}})
    runs.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "r1")
    stream = watch.Watch().stream(
        runs.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
        resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=1,
    )  # fmt: skip
    events = [(event["type"], event["object"]["metadata"]) for event in stream]
    assert [kind for kind, _ in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert len({meta["uid"] for _, meta in events}) == 1
    versions = [int(meta["resourceVersion"]) for _, meta in events]
    assert versions == sorted(versions) and [meta["generation"] for _, meta in events] == [1, 2, 2]

    # Without a version, a watch starts with every object as ADDED; selectors filter it.
    create_run(runs, "unlabelled")
    patch_run(runs, "before", {"metadata": {"labels": {"egt.dev/run": "before"}}})
    fresh = watch.Watch().stream(
        runs.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
        label_selector="egt.dev/run=before", timeout_seconds=1,
    )  # fmt: skip
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in fresh] == [("ADDED", "before")]


def test_deletion_waits_for_finalizers(runs: k8s.CustomObjectsApi) -> None:
    create_run(runs, "held")
    patch_run(runs, "held", {"metadata": {"finalizers": ["egt.dev/test"]}})
    runs.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "held")
    terminating = get_run(runs, "held")
    assert terminating is not None and terminating["metadata"]["deletionTimestamp"]
    assert terminating["metadata"]["generation"] == 2  # as the real server counts it

    patch_run(runs, "held", {"metadata": {"finalizers": None}})
    assert get_run(runs, "held") is None


def test_echo_operator_reacts_within_seconds(
    operator_process: StartOperator, runs: k8s.CustomObjectsApi, kubelet: Kubelet
) -> None:
    operator_process(ECHO)
    created = time.monotonic()
    create_run(runs, "r1")
    run = wait_for(lambda: (got := get_run(runs, "r1")) and got.get("status") and got, 5, what="r1's status")
    assert time.monotonic() - created < 5
    assert run["status"] == {"currentStage": "prepare", "message": "echoed r1"}
    assert run["metadata"]["finalizers"]  # kopf's, because echo_operator has a deletion handler
    config_map = kubelet.get("ConfigMap", "r1")
    assert config_map is not None and config_map["data"] == {"uid": run["metadata"]["uid"]}
    event = wait_for(lambda: kubelet.list("Event"), 5, what="an Event")[0]
    assert (event["reason"], event["involvedObject"]["uid"]) == ("Echoed", run["metadata"]["uid"])


def test_operator_restarts_and_finishes_a_deletion(
    operator_process: StartOperator, runs: k8s.CustomObjectsApi, kubelet: Kubelet
) -> None:
    operator = operator_process(ECHO)
    create_run(runs, "a")
    wait_for(lambda: kubelet.get("ConfigMap", "a"), 5, what="ConfigMap a")

    operator.stop()
    create_run(runs, "b")
    runs.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    assert (get_run(runs, "a") or {})["metadata"]["deletionTimestamp"]  # held by kopf's finalizer

    operator.start()
    wait_for(lambda: kubelet.get("ConfigMap", "b"), 5, what="ConfigMap b, created while kopf was down")
    wait_for(lambda: get_run(runs, "a") is None and kubelet.get("ConfigMap", "a") is None, 5, what="a gone")

    operator.restart()
    create_run(runs, "c")
    wait_for(lambda: kubelet.get("ConfigMap", "c"), 5, what="ConfigMap c")
    assert operator.logs().count("Handler 'echo' succeeded") == 3  # a, b, c: each once across restarts


def test_kubelet_ends_jobs_and_rayjobs(kubelet: Kubelet, kube_client: k8s.ApiClient) -> None:
    batch = k8s.BatchV1Api(kube_client)
    pod = {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}
    for name, run in (("r1-prepare", "r1"), ("r1-curate", "r1"), ("r2-prepare", "r2")):
        job = {
            "metadata": {"name": name, "labels": {"egt.dev/run": run}},
            "spec": {"template": {"spec": pod}},
            "status": {"succeeded": 9},  # dropped: a Job's status belongs to its controller
        }
        assert batch.create_namespaced_job(NS, job).status is None
    assert sorted(job["metadata"]["name"] for job in kubelet.jobs(run="r1")) == ["r1-curate", "r1-prepare"]

    kubelet.complete_job("r1-prepare")
    done = batch.read_namespaced_job("r1-prepare", NS).status
    assert [(c.type, c.status) for c in done.conditions] == [
        ("SuccessCriteriaMet", "True"),
        ("Complete", "True"),
    ]
    assert done.succeeded == 1 and done.completion_time >= done.start_time

    kubelet.fail_job("r1-curate", reason="DeadlineExceeded", message="Job was active longer than specified")
    failed = batch.read_namespaced_job("r1-curate", NS).status
    assert [(c.type, c.status, c.reason) for c in failed.conditions][-1] == (
        "Failed",
        "True",
        "DeadlineExceeded",
    )
    assert failed.conditions[-1].message == "Job was active longer than specified" and failed.failed == 1

    rayjobs = k8s.CustomObjectsApi(kube_client)
    for name in ("r1-rl", "r2-rl"):
        body = {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": name},
            "spec": {"entrypoint": "x"},
        }
        rayjobs.create_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", body)
    kubelet.complete_rayjob("r1-rl")
    kubelet.fail_rayjob("r2-rl", "entrypoint exited with 1")
    ok = (kubelet.get("RayJob", "r1-rl") or {})["status"]
    bad = (kubelet.get("RayJob", "r2-rl") or {})["status"]
    assert (ok["jobDeploymentStatus"], ok["jobStatus"]) == ("Complete", "SUCCEEDED")
    assert (bad["jobDeploymentStatus"], bad["jobStatus"], bad["message"]) == (
        "Failed", "FAILED", "entrypoint exited with 1"
    )  # fmt: skip
