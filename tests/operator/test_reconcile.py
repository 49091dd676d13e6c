"""The reconcile pass as a pure function: each rule of egt_operator.reconcile on hand-made observations.

``Cluster`` plays the API server and the kubelet in the simplest way: it keeps the children a plan
creates, deletes the ones it deletes, and the run's status between passes.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

from egt.spec import STAGES
from egt_operator.reconcile import RETRY_ANNOTATION, SPEC_ANNOTATION, StoreVerdict, child_phase, reconcile
from tests.operator.cluster import HIDDEN_PACKAGES, NOT_IN_OPERATOR_IMAGE

TINY = yaml.safe_load(Path("examples/egtrun-tiny.yaml").read_text())
TINY["spec"]["store"]["uri"] = "s3://egt-artifacts/runs"  # a cluster run's store (check_cluster_run)
NOW = "2026-11-22T06:00:00Z"


class Cluster:
    def __init__(self, spec_changes: dict | None = None) -> None:
        self.body = copy.deepcopy(TINY)
        self.body["metadata"] |= {"namespace": "ml", "uid": "u-1", "generation": 1}
        self.children: dict[str, dict] = {}
        self.created: list[str] = []
        self.current: set[str] = set()  # stages whose outputs the store holds
        self.events: list[tuple[str, str, str]] = []

    def verdict(self, run, stage):
        return (
            StoreVerdict({"model": f"s3://b/{stage}/model"}, {"loss": 0.5}) if stage in self.current else None
        )

    def step(self):
        plan = reconcile(self.body, self.children, self.verdict, NOW)
        for obj in plan.delete:
            self.children.pop(obj["metadata"]["name"], None)
        for obj in plan.create:
            if obj["kind"] in ("Job", "RayJob"):
                self.children[obj["metadata"]["name"]] = copy.deepcopy(obj)
                self.created.append(obj["metadata"]["name"])
        self.body["status"] = plan.status
        self.events += plan.events
        return plan

    def finish(
        self, name: str, ok: bool = True, reason: str = "BackoffLimitExceeded", message: str = "pod failed"
    ):
        child = self.children[name]
        if child["kind"] == "RayJob":
            child["status"] = {
                "jobDeploymentStatus": "Complete" if ok else "Failed",
                "jobStatus": "SUCCEEDED" if ok else "FAILED",
                "message": message,
            }
        else:
            kind = "Complete" if ok else "Failed"
            child["status"] = {
                "conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]
            }

    def state(self, stage: str) -> str:
        return self.body["status"]["stages"][stage]["state"]

    def condition(self, kind: str) -> dict:
        return next(c for c in self.body["status"]["conditions"] if c["type"] == kind)


def test_a_run_walks_every_stage_in_order_one_child_at_a_time():
    cluster = Cluster()
    # Every stage there is: the model's applications after evaluate too.
    cluster.body["spec"]["score"] = {"candidates": "s3://egt-artifacts/candidates.jsonl"}
    cluster.body["spec"]["filter"] = {"enabled": True, "model": "scalar"}
    for stage in STAGES:
        plan = cluster.step()
        assert cluster.state(stage) == "Running"
        assert cluster.condition("Succeeded")["status"] == "Unknown"
        assert cluster.condition("Progressing")["status"] == "True"
        [watched] = [o for o in plan.create if o["kind"] in ("Job", "RayJob")]
        assert watched["metadata"]["annotations"][SPEC_ANNOTATION]
        assert cluster.step().create == []  # a pass with nothing new does nothing
        cluster.finish(watched["metadata"]["name"])
        cluster.current.add(stage)  # the job wrote the stage's manifest
    cluster.step()
    assert [cluster.state(s) for s in STAGES] == ["Succeeded"] * len(STAGES)
    assert cluster.condition("Succeeded")["status"] == "True"
    assert cluster.created == ["tiny-demo-" + s for s in STAGES]
    assert cluster.body["status"]["stages"]["rl"]["child"] == "tiny-demo-rl"
    sft = cluster.body["status"]["stages"]["sft"]
    assert sft["artifacts"] == {"model": "s3://b/sft/model"} and sft["metrics"] == {"loss": 0.5}
    assert [e[1] for e in cluster.events].count("RunSucceeded") == 1
    cluster.step()
    assert [e[1] for e in cluster.events].count("RunSucceeded") == 1  # no repeat on later passes


def test_a_scalar_run_walks_its_own_stages_and_lists_only_them():
    cluster = Cluster()
    cluster.body["spec"]["kind"] = "scalar"
    cluster.body["spec"]["evaluate"].pop("models")
    for stage in ("prepare", "scalar", "evaluate"):
        plan = cluster.step()
        assert cluster.state(stage) == "Running"
        [watched] = [o for o in plan.create if o["kind"] in ("Job", "RayJob")]
        cluster.finish(watched["metadata"]["name"])
        cluster.current.add(stage)
    cluster.step()
    assert cluster.created == ["tiny-demo-prepare", "tiny-demo-scalar", "tiny-demo-evaluate"]
    assert list(cluster.body["status"]["stages"]) == ["prepare", "scalar", "evaluate"]
    assert cluster.condition("Succeeded")["status"] == "True"


def test_current_stages_are_skipped_without_a_child():
    cluster = Cluster()
    cluster.current = {"prepare", "annotate"}
    plan = cluster.step()
    assert cluster.state("prepare") == cluster.state("annotate") == "Skipped"
    assert cluster.body["status"]["stages"]["prepare"]["artifacts"] == {"model": "s3://b/prepare/model"}
    assert cluster.state("sft") == "Running" and cluster.created == ["tiny-demo-sft"]
    assert ("Normal", "StageSkipped", "prepare: outputs already in the store") in plan.events


def test_a_failed_child_fails_the_run_until_a_retry():
    cluster = Cluster()
    cluster.step()
    cluster.finish("tiny-demo-prepare", ok=False, reason="DeadlineExceeded", message="took too long")
    cluster.step()
    assert cluster.state("prepare") == "Failed"
    failed = cluster.condition("Succeeded")
    assert failed["status"] == "False" and failed["reason"] == "StageFailed"
    assert "prepare failed: DeadlineExceeded: took too long" in failed["message"]
    assert cluster.step().create == []  # stays failed
    cluster.body["metadata"]["annotations"] = {RETRY_ANNOTATION: "1"}
    plan = cluster.step()
    assert [o["metadata"]["name"] for o in plan.delete] == ["tiny-demo-prepare"]
    assert plan.create == []  # the old child must be gone first
    cluster.step()
    assert cluster.state("prepare") == "Running" and cluster.created.count("tiny-demo-prepare") == 2
    assert cluster.condition("Succeeded")["status"] == "Unknown"
    assert cluster.step().delete == []  # the same retry value is acted on once


def test_a_failed_rayjob_reports_its_message():
    cluster = Cluster()
    cluster.current = {"prepare", "annotate", "sft", "probe", "curate"}
    cluster.step()
    cluster.finish("tiny-demo-rl", ok=False, message="actor died")
    cluster.step()
    assert "rl failed: RayJobFailed: actor died" in cluster.condition("Succeeded")["message"]


def test_suspend_starts_nothing_new():
    cluster = Cluster()
    cluster.body["spec"]["suspend"] = True
    assert cluster.step().create == []
    assert cluster.condition("Progressing")["reason"] == "Suspended"
    cluster.body["spec"]["suspend"] = False
    cluster.body["metadata"]["generation"] = 2
    cluster.step()
    assert cluster.state("prepare") == "Running"


def test_a_spec_change_replaces_a_stale_child_and_rechecks_finished_stages():
    cluster = Cluster()
    cluster.step()
    cluster.finish("tiny-demo-prepare")
    cluster.step()  # prepare done, annotate running
    cluster.body["spec"]["annotate"]["shard_size"] = 32
    cluster.body["metadata"]["generation"] = 2
    cluster.current = {"prepare"}  # the change does not touch prepare's outputs
    plan = cluster.step()
    assert cluster.state("prepare") == "Skipped"
    assert [o["metadata"]["name"] for o in plan.delete] == ["tiny-demo-annotate"]
    cluster.step()
    assert cluster.state("annotate") == "Running" and cluster.created.count("tiny-demo-annotate") == 2
    assert cluster.body["status"]["observedGeneration"] == 2


def test_an_invalid_spec_is_reported_not_raised():
    cluster = Cluster()
    cluster.body["spec"]["curate"]["strategy"] = "lowest"
    plan = cluster.step()
    assert plan.create == []
    failed = cluster.condition("Succeeded")
    assert failed["reason"] == "InvalidSpec" and "curate.strategy" in failed["message"]


def test_child_phases():
    job = {"kind": "Job", "status": {"active": 2}}
    assert child_phase(job)[0] == "Running"
    done = {"kind": "Job", "status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}}
    assert child_phase(done)[0] == "Succeeded"
    indexed = {
        "kind": "Job",
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "FailedIndexes",
                    "message": "Job has failed indexes",
                }
            ]
        },
    }
    assert child_phase(indexed) == ("Failed", "FailedIndexes", "Job has failed indexes")
    assert child_phase({"kind": "RayJob", "status": {"jobDeploymentStatus": "Running"}})[0] == "Running"
    stopped = {"kind": "RayJob", "status": {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}}
    assert child_phase(stopped)[:2] == ("Failed", "RayJobStopped")
    # KubeRay >= 1.5 never leaves ValidationFailed: it must not read as running (issue 12, defect 4)
    invalid = {
        "kind": "RayJob",
        "status": {
            "jobDeploymentStatus": "ValidationFailed",
            "reason": "ValidationFailed",
            "message": "The RayJob spec is invalid: activeDeadlineSeconds must be a positive integer",
        },
    }
    assert child_phase(invalid) == (
        "Failed",
        "ValidationFailed",
        "The RayJob spec is invalid: activeDeadlineSeconds must be a positive integer",
    )
    late = {
        "kind": "RayJob",
        "status": {
            "jobDeploymentStatus": "Failed",
            "reason": "PreRunningDeadlineExceeded",
            "message": "RayJob did not reach Running within 1800 seconds",
        },
    }
    assert child_phase(late)[:2] == ("Failed", "PreRunningDeadlineExceeded")


def test_the_operator_imports_no_engine():
    # The operator image is slim: deciding what to skip reads the pipeline's fingerprints, not its engines
    # (nor pyarrow, ~40 MiB resident: the operator reads only JSON manifests), and it has no
    # `kubernetes` package (~58 MiB), hidden here as the image lacks it.
    heavy = "{'torch', 'transformers', 'ray', 'pyarrow'}"
    imports = "import sys, egt_operator.handlers, egt_operator.submit"
    code = f"{imports}; print(sorted({heavy} & set(sys.modules)))"
    hidden = {"EGT_HIDDEN_PACKAGES": ",".join(NOT_IN_OPERATOR_IMAGE), "PYTHONPATH": str(HIDDEN_PACKAGES)}
    env = os.environ | hidden
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_run_being_deleted_starts_nothing():
    cluster = Cluster()
    cluster.body["metadata"]["deletionTimestamp"] = NOW
    plan = cluster.step()
    assert plan.create == [] and plan.events == []


def test_a_child_not_yet_seen_is_created_again_without_a_new_start():
    cluster = Cluster()
    cluster.step()
    cluster.children.clear()  # the watch has not delivered the new Job yet
    plan = cluster.step()
    assert [o["kind"] for o in plan.create][-1] == "Job"  # idempotent: a 409 adopts it
    assert plan.events == [] and plan.transitions == []


def test_a_stage_another_run_is_computing_waits_then_is_skipped_with_its_outputs():
    cluster = Cluster()
    cluster.current = {"prepare", "annotate"}
    owner = {"sft": "ml/other-run"}
    stamped_with = []

    def sharing(run, stage):
        stamped_with.append(stage)
        return f"id-{stage}", owner.get(stage)

    def step():
        plan = reconcile(cluster.body, cluster.children, cluster.verdict, NOW, sharing)
        for obj in plan.create:
            if obj["kind"] in ("Job", "RayJob"):
                cluster.children[obj["metadata"]["name"]] = copy.deepcopy(obj)
        cluster.body["status"] = plan.status
        return plan

    plan = step()
    assert not plan.create and cluster.state("sft") == "Pending"
    assert "waiting for run other-run, which is computing the same sft" in cluster.body["status"]["message"]
    assert [e[1] for e in plan.events] == ["StageSkipped", "StageSkipped", "StageShared"]
    assert not [e for e in step().events if e[1] == "StageShared"]  # said once, not every pass
    cluster.current.add("sft")  # the other run finished: its outputs are reused here
    plan = step()
    assert cluster.state("sft") == "Skipped" and cluster.state("probe") == "Running"
    [probe] = [o for o in plan.create if o["kind"] == "Job"]
    assert probe["metadata"]["annotations"]["egt.dev/identity"] == "id-probe"
    assert SPEC_ANNOTATION in probe["metadata"]["annotations"]


def test_claims_one_run_computes_an_identity_the_others_wait_until_it_is_done():
    from egt_operator.sharing import CLAIM_SECONDS, Claims

    claims = Claims()
    assert claims.owner("x", "ns/a", [], now=0.0) is None  # a claims it, creates its child
    assert claims.owner("x", "ns/b", [], now=1.0) == "ns/a"  # a's child not in view yet: b waits
    assert claims.owner("x", "ns/a", [], now=2.0) is None  # a itself never waits for itself
    running = {"metadata": {"annotations": {"egt.dev/identity": "x"}}, "status": {"active": 1}}
    assert claims.owner("x", "ns/b", [("ns/a", running)], now=3.0) == "ns/a"
    done = {**running, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    assert claims.owner("x", "ns/b", [("ns/a", done)], now=4.0) is None  # a failed: b computes
    assert claims.owner("x", "ns/c", [("ns/a", done)], now=5.0) == "ns/b"
    assert claims.owner("x", "ns/c", [("ns/a", done)], now=5.0 + CLAIM_SECONDS) is None  # b never made it
    assert claims.owner("y", "ns/b", [("ns/a", running)], now=6.0) is None  # another identity


def test_a_pass_plans_from_the_operators_last_write_when_kopfs_copy_is_older():
    # The flaky-sweep bug: a watch event from before the operator's last write (a version made by
    # kopf's own annotation patch, never seen superseded) showed probe Pending after this run had
    # started it; with its outputs in the store by then, the pass marked this run's own probe Skipped.
    from egt_operator import handlers

    key = "ns/lagging"
    handlers._written[key] = {"sequence": 3, "stages": {"probe": {"state": "Running"}}}
    try:
        older = {"metadata": {"resourceVersion": "17"}, "status": {"sequence": 2, "stages": {}}}
        assert handlers._latest(key, older)["status"]["stages"]["probe"]["state"] == "Running"
        assert handlers._latest(key, {"metadata": {}})["status"]["sequence"] == 3  # not yet written
        caught_up = {"metadata": {}, "status": {"sequence": 3, "stages": {"probe": {"state": "Succeeded"}}}}
        assert handlers._latest(key, caught_up)["status"]["stages"]["probe"]["state"] == "Succeeded"
    finally:
        handlers._written.pop(key)


def running_sft() -> Cluster:
    cluster = Cluster()
    for stage in ("prepare", "annotate"):
        cluster.step()
        cluster.finish(f"tiny-demo-{stage}")
    cluster.step()
    assert cluster.state("sft") == "Running"
    cluster.current = {"prepare", "annotate"}
    return cluster


def edit(cluster: Cluster, change) -> None:
    change(cluster.body["spec"])
    cluster.body["metadata"]["generation"] += 1


def test_an_edit_elsewhere_in_the_spec_or_suspend_leaves_the_running_stage_alone():
    # The ConfigMap every pod mounts is named after the whole run file: it must not make every edit
    # look like a change to the running stage (issue 12, defect 1).
    cluster = running_sft()
    edit(cluster, lambda spec: spec["rl"].update(alpha=0.9))
    plan = cluster.step()
    assert plan.delete == [] and cluster.state("sft") == "Running"
    edit(cluster, lambda spec: spec.update(suspend=True))
    plan = cluster.step()
    assert plan.delete == [] and plan.create == [] and cluster.state("sft") == "Running"
    cluster.finish("tiny-demo-sft")
    plan = cluster.step()  # the running stage finishes; nothing new starts while suspended
    assert cluster.state("sft") == "Succeeded" and plan.create == []
    assert cluster.condition("Progressing")["reason"] == "Suspended"
    assert cluster.created.count("tiny-demo-sft") == 1


def test_an_edit_to_the_running_stages_settings_replaces_it_but_not_while_suspended():
    cluster = running_sft()
    edit(cluster, lambda spec: spec.update(suspend=True) or spec["sft"].update(learning_rate=1e-5))
    plan = cluster.step()
    assert plan.delete == [] and cluster.state("sft") == "Running"
    assert "suspended; sft runs on as started" in cluster.body["status"]["message"]
    edit(cluster, lambda spec: spec.update(suspend=False))
    plan = cluster.step()
    assert [o["metadata"]["name"] for o in plan.delete] == ["tiny-demo-sft"]
    cluster.step()
    assert cluster.created.count("tiny-demo-sft") == 2 and cluster.state("sft") == "Running"


def test_status_patches_clear_what_no_longer_holds():
    # Custom objects take JSON merge patches: a key left out is kept (issue 12, defect 5).
    from egt_operator.handlers import merge_patch
    from tests.operator.cluster import merge_patch as apply

    failed = {
        "message": "prepare failed",
        "stages": {
            "prepare": {"state": "Failed", "startTime": "t0", "endTime": "t1", "message": "OOMKilled"},
            "sft": {"state": "Succeeded", "artifacts": {"model": "a", "old": "b"}},
        },
    }
    retried = {
        "message": "prepare: running",
        "stages": {
            "prepare": {"state": "Running", "startTime": "t2", "child": "c"},
            "sft": {"state": "Succeeded", "artifacts": {"model": "a"}},
        },
    }
    patch = merge_patch(failed, retried)
    assert patch["stages"]["prepare"]["endTime"] is None and patch["stages"]["sft"] == {
        "artifacts": {"old": None}
    }
    assert apply(failed, patch) == retried
    assert merge_patch(retried, retried) == {}
