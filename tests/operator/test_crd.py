"""The EGTRun CRD: generated from egt/spec.py, structural, in step with its checked-in copy.

There is no API server here, so the tests check what it would: the structural-schema rules the
API server enforces on a CRD, the CRD object itself against Kubernetes' schema, and run files
against the openAPIV3Schema the way the API server validates them (nullable fields, unknown fields
rejected as `kubectl apply`'s strict field validation does).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import egt_operator
from egt.spec import STAGES, EGTRun, load_run
from egt_operator.crd import REGENERATE, STAGE_STATES, UnsupportedSchema, crd, crd_yaml, structural

CRD_FILE = Path(egt_operator.__file__).parent / "crd.yaml"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = ("egtrun.yaml", "egtrun-tiny.yaml")
# The keywords a structural schema may hold (apiextensions.k8s.io/v1 JSONSchemaProps we use).
ALLOWED = {
    "type", "description", "default", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minLength", "maxLength", "pattern", "format", "required", "properties", "items",
    "additionalProperties", "nullable", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}  # fmt: skip


def open_api() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def spec_schema() -> dict[str, Any]:
    return open_api()["properties"]["spec"]


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (properties by name, list items as [], map values as *)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.*")


def api_server_view(schema: dict[str, Any], root: bool = True) -> dict[str, Any]:
    """The schema as the API server applies it, in draft-4 terms jsonschema understands.

    ``nullable`` admits null; an object with listed properties rejects others (strict field
    validation); metadata is the API server's own business beyond the name rules.
    """
    out = copy.deepcopy(schema)
    if out.get("nullable"):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in out:
        out["properties"] = {
            name: sub if root and name == "metadata" else api_server_view(sub, root=False)
            for name, sub in out["properties"].items()
        }
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if "items" in out:
        out["items"] = api_server_view(out["items"], root=False)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = api_server_view(out["additionalProperties"], root=False)
    return out


def validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(api_server_view(open_api()))


def errors(document: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(document)]


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


# --- generation and drift ----------------------------------------------------------------------------


def test_checked_in_crd_matches_the_spec():
    assert CRD_FILE.read_text() == crd_yaml(), (
        f"{CRD_FILE} is out of date with egt/spec.py; regenerate it with `{REGENERATE}`"
    )


def test_module_prints_the_crd_as_yaml(tmp_path):
    # From another directory: the installed package, not the checkout's folder, must provide it.
    printed = subprocess.run(
        [sys.executable, "-m", "egt_operator.crd"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert printed == crd_yaml()
    assert yaml.safe_load(printed) == crd()


def test_crd_is_a_valid_kubernetes_object():
    kubernetes_validate.validate(crd(), "1.33", strict=True)


def test_names_group_scope_and_status_subresource():
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == "egtruns.egt.dev"
    assert spec["group"] == "egt.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "EGTRun",
        "listKind": "EGTRunList",
        "plural": "egtruns",
        "singular": "egtrun",
        "shortNames": ["egtr"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns():
    columns = {c["name"]: c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Stage"]["jsonPath"] == ".status.currentStage"
    assert columns["Succeeded"]["jsonPath"] == '.status.conditions[?(@.type=="Succeeded")].status'
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert columns["Message"]["jsonPath"] == ".status.message" and columns["Message"]["priority"] == 1
    assert all("priority" not in c for name, c in columns.items() if name != "Message")


# --- structural ---------------------------------------------------------------------------------------


def test_schema_is_structural():
    problems = []
    for path, node in nodes(open_api()):
        if path == ".metadata":
            continue  # checked below: the API server allows only name restrictions there
        if unknown := set(node) - ALLOWED:
            problems.append(f"{path}: keywords {sorted(unknown)} have no place in a structural schema")
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties beside additionalProperties")
        if isinstance(node.get("additionalProperties"), bool):
            problems.append(f"{path}: boolean additionalProperties")
        fields = {"properties", "additionalProperties", "x-kubernetes-preserve-unknown-fields"}
        if node.get("type") == "object" and not fields & set(node):
            problems.append(f"{path}: an object with no fields (the API server would prune everything)")
        if node.get("x-kubernetes-list-type") == "map":
            missing = set(node["x-kubernetes-list-map-keys"]) - set(node["items"].get("required", []))
            if missing:
                problems.append(f"{path}: list-map keys {missing} not required")
    assert not problems, "\n".join(problems)


def test_metadata_restricts_only_the_name():
    metadata = open_api()["properties"]["metadata"]
    assert set(metadata) == {"type", "properties"} and set(metadata["properties"]) == {"name"}
    name = jsonschema.Draft4Validator(metadata["properties"]["name"])
    assert name.is_valid("egt-qwen25vl-7b") and name.is_valid("a" * 63)
    for bad in ("Upper", "under_score", "a.b", "-lead", "a" * 64):
        assert not name.is_valid(bad), bad


def test_every_default_is_valid_where_it_stands():
    # The API server rejects a CRD whose defaults do not validate (and prunes unknown fields from them).
    checked = 0
    for path, node in nodes(spec_schema()):
        if "default" in node:
            schema = api_server_view(node, root=False)
            assert not list(jsonschema.Draft4Validator(schema).iter_errors(node["default"])), path
            checked += 1
    assert checked > 50


def test_every_spec_field_keeps_its_description():
    missing = [
        path
        for path, node in nodes(spec_schema())
        if not path.endswith(("*", "[]")) and not node.get("description")  # map values, list items
    ]
    assert not missing, f"fields kubectl explain would show without a description: {missing}"


def test_types_enums_bounds_and_optionals_survive_conversion():
    spec = spec_schema()["properties"]
    sft, rl, curate = spec["sft"]["properties"], spec["rl"]["properties"], spec["curate"]["properties"]
    assert spec["sft"]["properties"]["zero_stage"] == {
        "type": "integer",
        "description": sft["zero_stage"]["description"],
        "default": 2,
        "enum": [1, 2, 3],
    }
    assert curate["strategy"]["enum"] == ["entropy", "random", "accuracy", "bucket", "all"]
    # `PositiveInt | None = 2500`: nullable, bounded, default kept
    assert curate["keep"] | {"description": ""} == {
        "type": "integer", "description": "", "minimum": 1, "maximum": 10_000_000, "default": 2500,
        "nullable": True,
    }  # fmt: skip
    # gt / lt become OpenAPI v3's flag form
    assert (rl["clip_epsilon"]["minimum"], rl["clip_epsilon"]["exclusiveMinimum"]) == (0, True)
    assert (rl["clip_epsilon"]["maximum"], rl["clip_epsilon"]["exclusiveMaximum"]) == (1, True)
    # an optional section: nullable object, its own fields listed
    tiny = spec["model"]["properties"]["tiny"]
    assert tiny["nullable"] and tiny["type"] == "object" and "hidden_size" in tiny["properties"]
    assert spec["model"]["properties"]["tiny"]["properties"]["hidden_size"]["multipleOf"] == 32
    assert spec["evaluate"]["properties"]["models"]["items"]["enum"] == ["sft", "rl", "scalar"]
    assert spec_schema()["required"] == ["model", "data", "store"]


def test_cluster_section_shapes():
    cluster = spec_schema()["properties"]["cluster"]["properties"]
    assert cluster["node_selector"]["additionalProperties"]["maxLength"] == 63  # a label value
    toleration = cluster["tolerations"]["items"]["properties"]
    assert toleration["operator"]["enum"] == ["Equal", "Exists"] and "tolerationSeconds" in toleration
    # dict[StageName, StageResources]: one explainable property per stage, no free keys
    assert list(cluster["resources"]["properties"]) == list(STAGES)
    assert "additionalProperties" not in cluster["resources"]
    assert cluster["s3_secret"]["nullable"] and "default" not in cluster["s3_secret"]


def test_unsupported_constructs_fail_loudly():
    with pytest.raises(UnsupportedSchema, match="unions"):
        union = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
        structural({"type": "object", "properties": {"x": union}})
    with pytest.raises(UnsupportedSchema, match="const"):
        structural({"type": "object", "properties": {"x": {"type": "string", "const": "a"}}})
    with pytest.raises(UnsupportedSchema, match="no type"):
        structural({"type": "object", "properties": {"x": {"description": "anything"}}})


# --- run files against the schema ------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_examples_validate(name):
    document = example(name)
    if name == "egtrun-tiny.yaml":  # the local demo: admission refuses its local store for a cluster
        assert errors(document) == ["spec.store.uri: 'runs' does not match '^s3://'"]
        document["spec"]["store"]["uri"] = "s3://egt-artifacts/runs"
    assert errors(document) == []
    del document["spec"]["store"]
    assert errors(document) == ["spec: 'store' is a required property"]


def test_resolved_run_validates():
    # What `egt validate --resolved` prints (every default spelled out, nulls included) is valid too.
    assert errors(load_run(EXAMPLES / "egtrun.yaml").model_dump(mode="json")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["spec"]["curate"].update(strategy="entropi"), "is not one of"),
        (lambda d: d["spec"]["sft"].update(zero_stage=4), "is not one of"),
        (lambda d: d["spec"]["sft"].update(epoch=1), "Additional properties"),
        (lambda d: d["spec"].update(trainer={}), "Additional properties"),
        (lambda d: d["spec"]["cluster"]["resources"].update(train={"nodes": 2}), "Additional properties"),
        (lambda d: d["spec"]["probe"].update(num_shards=0), "less than the minimum"),
        (lambda d: d["spec"]["rl"].update(clip_epsilon=1), "greater than or equal to the maximum"),
        (lambda d: d["spec"]["sft"].update(learning_rate="fast"), "is not of type"),
        # What the API server would refuse only when the operator creates the stage's pods:
        (lambda d: d["spec"]["cluster"]["resources"]["sft"].update(memory="512GB"), "does not match"),
        (lambda d: d["spec"]["cluster"]["tolerations"][0].update(effect="NoSchedul"), "is not one of"),
        (lambda d: d["spec"]["cluster"]["node_selector"].update(pool="h20 nodes"), "does not match"),
        (lambda d: d["spec"]["cluster"].update(shm_size="16 GiB"), "does not match"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "does not match"),
        (lambda d: d.pop("spec"), "'spec' is a required property"),
    ],
)
def test_invalid_runs_are_rejected(change, message):
    document = example("egtrun.yaml")
    change(document)
    found = errors(document)
    assert any(message in error for error in found), found


def test_schema_and_model_agree_on_the_examples():
    # The CRD is generated from the model; both must accept the same example files.
    for name in EXAMPLE_FILES:
        EGTRun.model_validate(example(name))


# --- status ---------------------------------------------------------------------------------------------


def test_status_schema():
    status = open_api()["properties"]["status"]["properties"]
    assert set(status) == {
        "observedGeneration",
        "currentStage",
        "message",
        "retry",
        "sequence",
        "conditions",
        "stages",
    }
    assert list(status["stages"]["properties"]) == list(STAGES)
    stage = status["stages"]["properties"]["sft"]["properties"]
    assert set(stage) == {"state", "startTime", "endTime", "child", "artifacts", "metrics", "message"}
    assert stage["state"]["enum"] == list(STAGE_STATES)
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_a_status_the_operator_writes_validates():
    document = example("egtrun.yaml")
    document["status"] = {
        "observedGeneration": 2,
        "currentStage": "sft",
        "message": "sft: running on 1 node",
        "sequence": 7,
        "conditions": [
            {
                "type": "Succeeded",
                "status": "Unknown",
                "reason": "Running",
                "message": "sft is running",
                "lastTransitionTime": "2026-11-20T10:00:00Z",
                "observedGeneration": 2,
            }
        ],
        "stages": {
            "prepare": {
                "state": "Succeeded",
                "startTime": "2026-11-20T09:58:00Z",
                "endTime": "2026-11-20T09:59:00Z",
                "child": "tiny-demo-prepare",
                "artifacts": {"model": "runs/tiny-demo/prepare/model"},
                "metrics": {"sft_pairs": 320, "accuracy": None},
            },
            "sft": {"state": "Running", "child": "tiny-demo-sft"},
        },
    }
    assert errors(document) == []
    document["status"]["stages"]["sft"]["state"] = "Done"
    document["status"]["conditions"][0]["reason"] = "not camel case"
    assert len(errors(document)) == 2
