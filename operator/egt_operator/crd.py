"""The EGTRun CustomResourceDefinition, generated from the one pydantic spec (egt/spec.py).

``python -m egt_operator.crd`` prints it as YAML; ``operator/egt_operator/crd.yaml`` is that output,
checked in, and a test fails when the two drift apart.

The API server accepts only *structural* schemas (OpenAPI v3 subset): every node typed, no
``$ref``, no ``anyOf`` for optional fields, no ``additionalProperties`` beside ``properties``.
:func:`structural` rewrites pydantic's JSON schema into that form and refuses any construct it does
not know, so a new kind of field in the spec fails here instead of producing a CRD the API server
rejects. Unknown fields are still rejected on ``kubectl apply``: kubectl asks for strict field
validation, which fails on any field a structural schema does not list (the pydantic schema's
``additionalProperties: false`` says the same thing in JSON-schema terms).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from egt.spec import _DNS_LABEL, API_VERSION, KIND, STAGES, EGTRun

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "egtruns"
SINGULAR = "egtrun"
SHORT_NAMES = ["egtr"]
STAGE_STATES = ("Pending", "Running", "Succeeded", "Failed", "Skipped")
REGENERATE = "python -m egt_operator.crd > operator/egt_operator/crd.yaml"

# Keywords that pass through unchanged: the JSONSchemaProps fields pydantic emits for egt/spec.py.
_PLAIN = {
    "type",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "multipleOf",
    "required",
    "pattern",
    "maxLength",
    "minLength",
}


class UnsupportedSchema(ValueError):
    """A pydantic construct with no structural equivalent (the message names the field)."""


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema (with ``$defs``) as a Kubernetes structural schema."""
    return _convert(schema, schema.get("$defs", {}), "")


def _convert(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    if "$ref" in node:
        # The field's own description beats the class docstring: it says what the field is for.
        target = defs[node["$ref"].removeprefix("#/$defs/")]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:
        return _convert(_optional(node, where), defs, where)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "default" and value is None:
            continue  # absent means None to pydantic; an explicit null would only clutter stored objects
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON schema 2020-12 gives the bound; OpenAPI v3 (draft 4) a flag beside minimum/maximum.
            out[key.replace("exclusiveM", "m")] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _convert(sub, defs, f"{where}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{where}[]")
        elif key == "additionalProperties":
            out.update(_map(node, defs, where))
        elif key == "propertyNames":
            continue  # handled with additionalProperties
        elif key in _PLAIN or key == "nullable":
            out[key] = value
        else:
            raise UnsupportedSchema(f"spec{where}: JSON-schema keyword {key!r} has no structural form")
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise UnsupportedSchema(f"spec{where}: no type")
    # type and description first, as people write schemas (and as kubectl explain reads them)
    return {**{key: out[key] for key in ("type", "description") if key in out}, **out}


def _optional(node: dict[str, Any], where: str) -> dict[str, Any]:
    """``X | None`` (``anyOf: [X, null]``) → X with ``nullable: true``; other unions are refused."""
    branches = [branch for branch in node["anyOf"] if branch != {"type": "null"}]
    if len(branches) != 1 or len(node["anyOf"]) != 2:
        raise UnsupportedSchema(f"spec{where}: only 'X | None' unions have a structural form")
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    return {**branches[0], **outer, "nullable": True}


def _map(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    """The structural form of a pydantic ``additionalProperties``.

    ``false`` (extra="forbid") beside ``properties`` is dropped: the API server forbids the pair,
    and strict field validation rejects unknown fields anyway. ``true`` is a free-form object
    (``dict[str, Any]``, e.g. a toleration). A dict keyed by a Literal (``propertyNames: {enum}``,
    the per-stage resources) becomes one property per key, which ``kubectl explain`` can show.
    """
    value = node["additionalProperties"]
    if value is False:
        return {}
    if value is True:
        return {"x-kubernetes-preserve-unknown-fields": True}
    if "propertyNames" in node:
        keys = node["propertyNames"].get("enum")
        if keys is None:
            raise UnsupportedSchema(f"spec{where}: propertyNames without an enum")
        return {"properties": {key: _convert(value, defs, f"{where}.{key}") for key in keys}}
    return {"additionalProperties": _convert(value, defs, f"{where}.*")}


def status_schema() -> dict[str, Any]:
    """What the operator reports: a summary per stage (details stay in the store's manifests).

    Kept small on purpose: an object's status lives in etcd beside its spec, with a ~1 MB limit.
    ``conditions`` is the metav1.Condition list that ``kubectl wait --for=condition=Succeeded``
    reads; ``currentStage`` and ``message`` feed the printer columns.
    """
    timestamp = {"type": "string", "format": "date-time"}
    stage = {
        "type": "object",
        "description": "One stage's outcome.",
        "properties": {
            "state": {"type": "string", "enum": list(STAGE_STATES), "description": "Where the stage is."},
            "startTime": {**timestamp, "description": "When its child was created."},
            "endTime": {**timestamp, "description": "When it finished (succeeded, failed or skipped)."},
            "child": {"type": "string", "description": "Name of the Job or RayJob running the stage."},
            "artifacts": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Artifact URIs by name (from the stage's manifest).",
            },
            "metrics": {
                "type": "object",
                "additionalProperties": {"type": "number", "nullable": True},
                "description": "Summary metrics from the stage's manifest (null where not a number).",
            },
            "message": {"type": "string", "description": "Why the stage is in this state."},
        },
    }
    condition = {
        "type": "object",
        "description": "A metav1.Condition.",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {"type": "string", "maxLength": 316, "description": "Condition type, e.g. Succeeded."},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "Its status."},
            "reason": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
                "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                "description": "CamelCase reason for the last transition.",
            },
            "message": {"type": "string", "maxLength": 32768, "description": "Human-readable details."},
            "lastTransitionTime": {**timestamp, "description": "When the status last changed."},
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "minimum": 0,
                "description": "The .metadata.generation the condition was set for.",
            },
        },
    }
    return {
        "type": "object",
        "description": "What the operator observed; written by the operator only.",
        "properties": {
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "description": "The .metadata.generation this status describes.",
            },
            "currentStage": {
                "type": "string",
                "enum": list(STAGES),
                "description": "The stage running now, or the last one that ran.",
            },
            "message": {"type": "string", "description": "The latest progress or failure, in one line."},
            "retry": {
                "type": "string",
                "description": "The last egt.dev/retry annotation value acted on (see docs/operator.md).",
            },
            "sequence": {
                "type": "integer",
                "format": "int64",
                "description": "Writes of this status by the operator; a lower number is an older copy.",
            },
            "conditions": {
                "type": "array",
                "description": "Succeeded is True when every stage is done, False when the run failed.",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "stages": {
                "type": "object",
                "description": "Each stage's outcome, by stage name.",
                "properties": {name: copy.deepcopy(stage) for name in STAGES},  # no YAML aliases
            },
        },
    }


def open_api_schema() -> dict[str, Any]:
    """The openAPIV3Schema of an EGTRun: spec from egt/spec.py, the status the operator writes."""
    run = EGTRun.model_json_schema()
    fields = run["properties"]
    spec = structural({**fields["spec"], "$defs": run["$defs"]})
    # A cluster run's pods share nothing but the store (egt_operator.children.check_cluster_run).
    store = spec["properties"]["store"]
    store["properties"]["uri"].pop("default")  # the local default, a path, is no store for a cluster
    store["properties"]["uri"].update(
        pattern="^s3://",
        description="Artifact root, s3://bucket/prefix on a cluster (pods share no filesystem). "
        "A run writes <uri>/<run>/<stage>/…",
    )
    store.pop("default", None)
    store["required"] = ["uri"]
    spec["required"] = [*spec.get("required", []), "store"]
    return {
        "type": "object",
        "description": run["description"],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": fields["apiVersion"]["description"]},
            "kind": {"type": "string", "description": fields["kind"]["description"]},
            # Only name restrictions are allowed here; the run name becomes child names and labels,
            # so it must be a DNS label (the rule egt.spec enforces locally).
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL.pattern}},
            },
            "spec": spec,
            "status": status_schema(),
        },
    }


PRINTER_COLUMNS = [
    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
    {"name": "Succeeded", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Succeeded")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) of EGTRun."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML file kubectl and Helm take, with a header naming its generator."""
    header = f"# Generated from egt/spec.py by `{REGENERATE}`; do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__":
    print(crd_yaml(), end="")
