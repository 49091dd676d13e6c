"""A stage's children: valid Kubernetes objects, named, owned and labelled, and free of secret values.

Built-in kinds are checked against Kubernetes' own schemas (kubernetes-validate, strict: unknown
fields fail); the RayJob against the ray.io/v1 subset kept in egt_operator/schemas, and its pod
templates against Kubernetes' PodTemplate schema.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import egt_operator
from egt.engines.distributed import DEFAULT_PORT
from egt.spec import API_VERSION, STAGES, EGTRunSpec, SpecError, load_run, parse_run
from egt_operator.children import (
    RAY_VERSION,
    SPEC_PATH,
    Run,
    child_name,
    config_map,
    kuberay_gaps,
    render,
    run_from_resource,
)
from egt_operator.reconcile import reconcile
from tests.fixtures.pss import restricted_violations

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = "1.33"
RAYJOB_SCHEMA = json.loads((Path(egt_operator.__file__).parent / "schemas" / "rayjob-v1.json").read_text())
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
UID = "6f1c1e52-3d2c-4d7e-9a57-0c1d2e3f4a5b"
SPEC_MOUNT = {"name": "spec", "mountPath": "/etc/egt", "readOnly": True}
NOW = "2026-12-05T00:00:00Z"
SUCCEEDED = {
    "Job": {"conditions": [{"type": "Complete", "status": "True"}]},
    "RayJob": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
}


def example_spec(name: str) -> EGTRunSpec:
    return load_run(ROOT / "examples" / name).spec


def multi_node() -> EGTRunSpec:
    """The paper's run spread out: SFT on 4 nodes, 8 probe shards on 3 nodes (one engine per pod,
    transformers), RL on 2 worker nodes."""
    spec = example_spec("egtrun.yaml").model_dump(mode="json")
    spec["probe"].update(engine="hf", replicas_per_node=1)
    resources = spec["cluster"]["resources"]
    resources["sft"]["nodes"], resources["probe"]["nodes"], resources["rl"]["nodes"] = 4, 3, 2
    return EGTRunSpec.model_validate(spec)


def tiny_on_a_cluster() -> EGTRunSpec:
    """The demo run with its store on S3, as a cluster needs (check_cluster_run)."""
    spec = example_spec("egtrun-tiny.yaml").model_dump(mode="json")
    spec["store"]["uri"] = "s3://egt-artifacts/runs"
    return EGTRunSpec.model_validate(spec)


RUNS = {
    "tiny": lambda: Run("tiny-demo", "default", UID, tiny_on_a_cluster()),
    "paper": lambda: Run("egt-qwen25vl-7b", "egt", UID, example_spec("egtrun.yaml")),
    # a 63-character name (the longest a run may have) that starts with a digit
    "multi-node": lambda: Run("7b-" + "x" * 58 + "-1", "egt", UID, multi_node()),
}


@pytest.fixture(params=list(RUNS))
def run(request) -> Run:
    return RUNS[request.param]()


def everything(run: Run) -> list[dict[str, Any]]:
    """Every child exactly as the operator creates it (stamped, annotated): reconcile passes over a
    run whose children all succeed."""
    body = {
        "apiVersion": API_VERSION,
        "kind": "EGTRun",
        "metadata": {"name": run.name, "namespace": run.namespace, "uid": run.uid, "generation": 1},
        "spec": run.spec.model_dump(mode="json"),
    }
    children: dict[str, dict] = {}
    created = []
    for _ in range(len(STAGES) + 1):  # the last pass sees evaluate succeed
        plan = reconcile(body, children, lambda *_: None, NOW, lambda run, stage: (f"id-{stage}", None))
        created += plan.create
        for obj in plan.create:
            if obj["kind"] in ("Job", "RayJob"):
                children[obj["metadata"]["name"]] = {**obj, "status": SUCCEEDED[obj["kind"]]}
        body["status"] = plan.status
    assert body["status"]["message"] == "done"
    return created


def only(objects: list[dict], kind: str) -> dict:
    [found] = [obj for obj in objects if obj["kind"] == kind]
    return found


def pod_templates(obj: dict) -> list[dict]:
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]]
    if obj["kind"] == "RayJob":
        cluster = obj["spec"]["rayClusterSpec"]
        return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return []


def containers(obj: dict) -> list[dict]:
    return [c for template in pod_templates(obj) for c in template["spec"]["containers"]]


def env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container["env"]}


# --- valid objects ---------------------------------------------------------------------------------------


def test_every_child_validates(run):
    for obj in everything(run):
        if obj["apiVersion"] == "ray.io/v1":
            jsonschema.validate(obj, RAYJOB_SCHEMA)
            for template in pod_templates(obj):
                pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
                kubernetes_validate.validate({**pod_template, "template": template}, KUBERNETES, strict=True)
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_the_validators_reject_unknown_fields():
    # Guards the test above: strict validation and the RayJob schema both refuse fields they do not know.
    run = RUNS["paper"]()
    job = only(render(run, "curate"), "Job")
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="gpus"):
        kubernetes_validate.validate(job, KUBERNETES, strict=True)
    rayjob = only(render(run, "rl"), "RayJob")
    rayjob["spec"]["clusterSelector"] = {"ray.io/cluster": "shared"}
    with pytest.raises(jsonschema.ValidationError, match="clusterSelector"):
        jsonschema.validate(rayjob, RAYJOB_SCHEMA)


def test_children_per_stage_in_creation_order(run):
    kinds = {stage: [obj["kind"] for obj in render(run, stage)] for stage in STAGES}
    assert kinds == {
        "prepare": ["ConfigMap", "Job"],
        "annotate": ["ConfigMap", "Job"],
        "sft": ["ConfigMap", "Service", "Job"],
        "probe": ["ConfigMap", "Job"],
        "curate": ["ConfigMap", "Job"],
        "rl": ["ConfigMap", "RayJob"],
        "scalar": ["ConfigMap", "Service", "Job"],  # a trainer like sft: torchrun on every node
        "evaluate": ["ConfigMap", "Job"],
        "score": ["ConfigMap", "Job"],
        "filter": ["ConfigMap", "Job"],
    }


def test_the_trainers_run_their_own_module_under_torchrun():
    run = RUNS["tiny"]()
    for stage in ("sft", "scalar"):
        job = only(render(run, stage), "Job")
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[0] == "torchrun" and command[command.index("-m") + 1] == f"jobs.{stage}"
        assert job["metadata"]["name"] == f"{run.name}-{stage}"


def test_unknown_stage():
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        render(RUNS["tiny"](), "train")


# --- names, owners, labels -------------------------------------------------------------------------------


def test_names_are_deterministic_dns_labels(run):
    first, again = everything(run), everything(run)
    assert first == again
    for obj in first:
        name = obj["metadata"]["name"]
        assert DNS_1035.match(name) and len(name) <= 63, name
        assert obj["metadata"]["namespace"] == run.namespace
    assert len(only(render(run, "rl"), "RayJob")["metadata"]["name"]) <= 47  # KubeRay's limit
    for stage in ("sft", "probe"):
        job = only(render(run, stage), "Job")  # pod hostnames <job>-<index> are labels too
        assert len(f"{job['metadata']['name']}-{job['spec']['completions'] - 1}") <= 63


def test_child_names():
    assert child_name("tiny-demo", "sft") == "tiny-demo-sft"
    assert child_name("7b", "rl") == "egt-7b-rl"  # Services and RayJobs need a letter first
    long_a, long_b = "a" * 60 + "-one", "a" * 60 + "-two"
    name_a, name_b = child_name(long_a, "probe"), child_name(long_b, "probe")
    assert len(name_a) == len(name_b) == 63 and name_a != name_b
    assert name_a.endswith("-probe") and name_a.startswith("a" * 40)
    assert len(child_name(long_a, "rl", limit=47)) == 47


def test_owned_by_the_run_and_labelled(run):
    owner = {
        "apiVersion": API_VERSION,
        "kind": "EGTRun",
        "name": run.name,
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for stage in STAGES:
        for obj in render(run, stage):
            assert obj["metadata"]["ownerReferences"] == [owner]
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "egt-operator"
            assert labels["egt.dev/run"] == labels["app.kubernetes.io/instance"] == run.name
            assert labels["app.kubernetes.io/name"] == "egt"
            if obj["kind"] != "ConfigMap":
                assert labels["app.kubernetes.io/component"] == stage
            if obj["kind"] != "ConfigMap":  # shared by the stages
                assert labels["egt.dev/stage"] == stage
            for template in pod_templates(obj):
                assert template["metadata"]["labels"] == labels


# --- the run file and credentials ---------------------------------------------------------------------------


def test_config_map_holds_the_resolved_run(run):
    cm = config_map(run)
    assert cm["immutable"] is True
    resolved = parse_run(yaml.safe_load(cm["data"]["run.yaml"]))
    assert resolved.name == run.name and resolved.spec == run.spec
    assert SPEC_PATH == "/etc/egt/run.yaml"
    for stage in STAGES:
        for obj in render(run, stage)[1:]:
            for template in pod_templates(obj):
                volumes = {v["name"]: v for v in template["spec"]["volumes"]}
                assert volumes["spec"]["configMap"]["name"] == cm["metadata"]["name"]
                for container in template["spec"]["containers"]:
                    assert SPEC_MOUNT in container["volumeMounts"]


def test_an_edited_spec_gets_a_new_config_map():
    run, same = RUNS["paper"](), RUNS["paper"]()  # parsed twice from the file
    assert config_map(same)["metadata"]["name"] == config_map(run)["metadata"]["name"]
    spec = run.spec.model_dump(mode="json")
    spec["curate"]["keep"] = 2000
    changed = Run(run.name, run.namespace, run.uid, EGTRunSpec.model_validate(spec))
    assert config_map(changed)["metadata"]["name"] != config_map(run)["metadata"]["name"]


def test_no_secret_value_is_ever_rendered(run, monkeypatch):
    fakes = {
        "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE0001",
        "AWS_SECRET_ACCESS_KEY": "fake-s3-secret-value-0123456789",
        "TEACHER_API_KEY": "sk-fake-teacher-key-0123456789",
        "REFEREE_API_KEY": "sk-fake-referee-key-0123456789",
        "OPENAI_API_KEY": "sk-fake-openai-key-0123456789",
    }
    for name, value in fakes.items():
        monkeypatch.setenv(name, value)
    text = yaml.safe_dump_all(everything(run))
    for value in fakes.values():
        assert value not in text
    for obj in everything(run):
        for container in containers(obj):
            for name, item in env(container).items():
                if name in fakes:
                    assert set(item) == {"name", "valueFrom"} and "secretKeyRef" in item["valueFrom"], item


def test_credentials_come_from_the_named_secrets():
    run = RUNS["paper"]()
    s3 = {"name": "egt-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    for stage in STAGES:
        for container in containers(render(run, stage)[-1]):
            variables = env(container)
            assert variables["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == s3
            # an API key only where its endpoint is called
            assert ("TEACHER_API_KEY" in variables) == (stage == "annotate")
            assert ("REFEREE_API_KEY" in variables) == (stage == "rl")
    [annotate] = containers(render(run, "annotate")[-1])
    teacher = {"name": "egt-teacher", "key": "TEACHER_API_KEY"}
    assert env(annotate)["TEACHER_API_KEY"]["valueFrom"]["secretKeyRef"] == teacher
    # the tiny demo names no Secret, and needs none
    for obj in everything(RUNS["tiny"]()):
        for container in containers(obj):
            assert not any("valueFrom" in item for item in container["env"])


def test_a_cluster_run_needs_an_s3_store_and_a_secret_for_each_api_key():
    body = yaml.safe_load((ROOT / "examples" / "egtrun.yaml").read_text())
    body["metadata"] |= {"namespace": "egt", "uid": UID}
    run_from_resource(body)
    body["spec"]["cluster"]["teacher_secret"] = None
    body["spec"]["store"]["uri"] = "runs"
    # A local path leaves every stage's outputs in its own container (issue 12, defect 7).
    with pytest.raises(SpecError) as refused:
        run_from_resource(body)
    message = str(refused.value)
    assert "spec.store.uri: 'runs' is a path on one machine" in message
    assert "spec.annotate.teacher calls an OpenAI-compatible endpoint" in message
    assert "spec.rl.referee calls an OpenAI-compatible endpoint" in message
    # Keyless endpoints (a vLLM server in the cluster) need no Secret, and none is mounted.
    body["spec"]["store"]["uri"] = "s3://egt-artifacts/runs"
    for endpoint in (body["spec"]["annotate"]["teacher"], body["spec"]["rl"]["referee"]):
        endpoint["api_key_env"] = None
    keyless = run_from_resource(body)
    annotate = only(render(keyless, "annotate"), "Job")
    names = {item["name"] for item in containers(annotate)[0]["env"]}
    assert "OPENAI_API_KEY" not in names and not any("KEY" in n and "AWS" not in n for n in names)


# --- placement, resources, pods ----------------------------------------------------------------------------


def test_gpu_stages_get_gpus_placement_and_shared_memory():
    run = RUNS["paper"]()
    for stage in ("sft", "probe", "evaluate"):
        template = pod_templates(render(run, stage)[-1])[0]
        [container] = template["spec"]["containers"]
        memory = run.spec.cluster.resources[stage].memory
        assert container["resources"]["limits"] == {"memory": memory, "nvidia.com/gpu": "8"}
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
        assert template["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H20"}
        assert template["spec"]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in template["spec"][
            "volumes"
        ]
        [container] = template["spec"]["containers"]
        assert {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"} in container["env"]  # cluster.env
    for stage in ("prepare", "annotate", "curate"):  # CPU stages stay off the GPU nodes
        template = pod_templates(render(run, stage)[-1])[0]
        assert "nodeSelector" not in template["spec"] and "tolerations" not in template["spec"]
        [container] = template["spec"]["containers"]
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
    annotate = pod_templates(render(run, "annotate")[-1])[0]["spec"]["containers"][0]
    # from cluster.resources; scratch (ephemeral storage) the default
    assert annotate["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "100Gi"}
    curate = pod_templates(render(run, "curate")[-1])[0]
    assert curate["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "2",
        "memory": "8Gi",
        "ephemeral-storage": "100Gi",
    }  # unlisted: the defaults
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "100Gi"}} in curate["spec"]["volumes"]


def test_scheduling_settings_reach_every_pod_and_kueue_sees_every_workload():
    spec = example_spec("egtrun.yaml").model_dump(mode="json")
    spec["cluster"] |= {
        "priority_class": "training-high",
        "image_pull_secrets": ["registry"],
        "service_account": "egt-stage",
        "queue": "team-a",
        "active_deadline_seconds": 86400,
    }
    run = Run("paper", "egt", UID, EGTRunSpec.model_validate(spec))
    for obj in everything(run):
        if obj["kind"] in ("Job", "RayJob"):  # Kueue admits workloads by this label
            assert obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
            assert obj["spec"]["activeDeadlineSeconds"] == 86400
        for template in pod_templates(obj):
            pod = template["spec"]
            assert pod["priorityClassName"] == "training-high"
            assert pod["imagePullSecrets"] == [{"name": "registry"}]
            assert pod["serviceAccountName"] == "egt-stage" and pod["automountServiceAccountToken"] is True
            assert "kueue.x-k8s.io/queue-name" not in template["metadata"]["labels"]  # the workload's only


def test_pods_are_non_root_and_never_restarted(run):
    for obj in everything(run):
        if obj["kind"] == "Job":
            assert obj["spec"].get("backoffLimit", 0) == 0 and obj["spec"].get("backoffLimitPerIndex", 0) == 0
        for template in pod_templates(obj):
            pod = template["spec"]
            assert pod["restartPolicy"] == "Never"
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
            for container in pod["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
                assert container["image"] == run.spec.cluster.image


def test_every_pod_passes_the_restricted_pod_security_standard(run):
    # The RayJob's submitter included: KubeRay's SidecarMode injected one without a securityContext,
    # which a restricted namespace refuses (issue 12, defect 3); egt now supplies its own template.
    rayjob = only(render(run, "rl"), "RayJob")
    assert rayjob["spec"]["submissionMode"] == "K8sJobMode"
    assert rayjob["spec"]["submitterConfig"] == {"backoffLimit": 0}  # a second submission would collide
    submitter = rayjob["spec"]["submitterPodTemplate"]["spec"]
    assert "command" not in submitter["containers"][0]  # KubeRay writes `ray job submit`
    templates = [t for obj in everything(run) for t in pod_templates(obj)]
    templates.append(rayjob["spec"]["submitterPodTemplate"])
    for template in templates:
        assert restricted_violations(template["spec"]) == []


def test_one_pod_stages_run_their_entrypoints(run):
    for stage in ("prepare", "annotate", "curate", "evaluate", "score", "filter"):
        job = only(render(run, stage), "Job")
        assert "completionMode" not in job["spec"] and job["spec"]["backoffLimit"] == 0
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", f"jobs.{stage}", "--spec", SPEC_PATH]
        assert importlib.util.find_spec(f"jobs.{stage}") is not None


# --- sft: torchrun over an Indexed Job --------------------------------------------------------------------


def test_sft_indexed_job_and_headless_service():
    run = RUNS["multi-node"]()
    service, job = render(run, "sft")[1:]
    name = job["metadata"]["name"]
    assert service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    pod = job["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["subdomain"] == name
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "torchrun"
    # MASTER_ADDR: pod 0 of the Indexed Job, through the headless Service
    assert f"--master-addr={name}-0.{name}" in command
    assert f"--master-port={DEFAULT_PORT}" in command
    assert {"--nnodes=4", "--nproc-per-node=8", "--node-rank=$(JOB_COMPLETION_INDEX)"} <= set(command)
    assert command[-4:] == ["-m", "jobs.sft", "--spec", SPEC_PATH]


def test_sft_on_cpu_runs_one_process():
    command = render(RUNS["tiny"](), "sft")[-1]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--nnodes=1" in command and "--nproc-per-node=1" in command


# --- probe: one completion per shard ------------------------------------------------------------------------


def test_probe_indexed_job():
    run = RUNS["multi-node"]()
    job = only(render(run, "probe"), "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == run.spec.probe.num_shards == 8
    assert job["spec"]["parallelism"] == 3
    assert job["spec"]["backoffLimitPerIndex"] == 0 and "backoffLimit" not in job["spec"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    # the part comes from JOB_COMPLETION_INDEX, which jobs/entrypoint.py reads itself
    assert container["command"] == ["python", "-m", "jobs.probe", "--spec", SPEC_PATH]
    one_shard = only(render(RUNS["tiny"](), "probe"), "Job")
    assert one_shard["spec"]["completions"] == one_shard["spec"]["parallelism"] == 1
    # Replicas: each pod runs several parts (one vLLM engine per GPU), so fewer pods complete.
    replicated = RUNS["paper"]()  # 8 parts, 8 vLLM replicas on the one 8-GPU pod
    job = only(render(replicated, "probe"), "Job")
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1


# --- rl: a RayJob ------------------------------------------------------------------------------------


def test_rl_rayjob():
    run = RUNS["multi-node"]()
    rayjob = only(render(run, "rl"), "RayJob")
    spec = rayjob["spec"]
    assert spec["entrypoint"] == f"python -m jobs.rl --spec {SPEC_PATH}"
    assert spec["backoffLimit"] == 0 and spec["preRunningDeadlineSeconds"] == 1800
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    head = spec["rayClusterSpec"]["headGroupSpec"]
    [workers] = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert head["template"]["spec"]["restartPolicy"] == "Never"
    assert head["rayStartParams"] == {"num-cpus": "0", "num-gpus": "0"}  # no actor beside the driver
    [head_container] = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    assert "command" not in head_container  # KubeRay writes `ray start`
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 2
    [worker] = workers["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert workers["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H20"}
    # the driver runs on the head: the run file is mounted there
    assert SPEC_MOUNT in head_container["volumeMounts"]


def test_kuberay_gaps_name_what_the_installed_crd_lacks():
    from tests.operator.cluster import rayjob_crd

    rayjob = only(render(RUNS["tiny"](), "rl"), "RayJob")
    installed = rayjob_crd()
    assert kuberay_gaps(rayjob, installed) is None
    assert "not installed" in kuberay_gaps(rayjob, None)
    spec = installed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    del spec["submitterConfig"], spec["rayClusterSpec"]["properties"]["rayVersion"]
    gaps = kuberay_gaps(rayjob, installed)
    assert "has no spec.submitterConfig, spec.rayClusterSpec.rayVersion: KubeRay >= 1.6" in gaps


def test_ray_version_is_the_pinned_ray():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [p for p in pyproject["project"]["optional-dependencies"]["train"] if p.startswith("ray==")]
    assert pins == [f"ray=={RAY_VERSION}"]
    assert RAYJOB_SCHEMA["x-kuberay-version"] in RAYJOB_SCHEMA["$comment"]


# --- from the custom resource -------------------------------------------------------------------------------


def test_run_from_resource():
    body = yaml.safe_load((ROOT / "examples" / "egtrun.yaml").read_text())
    body["metadata"] |= {"namespace": "egt", "uid": UID, "generation": 3, "annotations": {"a": "b"}}
    run = run_from_resource(body)
    assert (run.name, run.namespace, run.uid) == ("egt-qwen25vl-7b", "egt", UID)
    assert run.spec == example_spec("egtrun.yaml")
    assert "annotations" not in config_map(run)["data"]["run.yaml"]
    body["spec"]["curate"]["strategy"] = "entropi"
    with pytest.raises(SpecError, match=r"curate\.strategy"):
        run_from_resource(body)


def test_rl_off_is_one_gpu_less_job_not_a_ray_cluster():
    spec = example_spec("egtrun.yaml").model_dump(mode="json")
    spec["rl"]["enabled"], spec["evaluate"]["models"] = False, ["sft"]
    run = Run("egt-sft-only", "egt", UID, EGTRunSpec.model_validate(spec))
    job = only(render(run, "rl"), "Job")
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    [container] = containers(job)
    assert container["command"][-3:] == ["jobs.rl", "--spec", SPEC_PATH]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
