"""A Kubernetes API server for operator tests: kmock's emulator, taught the API server's bookkeeping.

kmock 0.8 (by kopf's author) serves Kubernetes-shaped HTTP: URL parsing, discovery, an in-memory
object store with history, Status error bodies. It leaves out what an operator leans on, so
:class:`KubeEmulator` does every write itself, as the real API server does:

* ``uid``, ``creationTimestamp``, a cluster-wide ``resourceVersion`` bumped on every write (a no-op
  write bumps nothing), ``generation`` (1 on create, +1 when anything outside metadata and status
  changes, +1 when deletion starts) for the kinds that have one;
* the ``/status`` subresource: for kinds that have it, a write to the object ignores ``status``,
  a write to ``/status`` changes only ``status``, and create drops any status sent;
* merge patches (strategic merge for built-in kinds is treated as a merge patch; custom resources
  refuse it with 415, as the real server does), JSON patches (a failed ``test`` is a 422, which
  kopf's optimistic patches rely on), PUT, and ``resourceVersion`` preconditions (409);
* deletion with finalizers: ``deletionTimestamp`` is set and the object stays until an update
  removes the last finalizer; garbage collection by ownerReferences (background propagation: an
  object whose owner is gone is deleted);
* EGTRun admission from the CRD's openAPIV3Schema (``egt_operator.crd``): unknown fields are pruned,
  or refused with 400 under ``fieldValidation=Strict`` (what kubectl sends); nulls are pruned,
  defaults applied, and what is left validated with jsonschema, refused with 422 and a Status whose
  message reads like the real one (``spec.curate.strategy: Unsupported value: "lowest": ...``);
* list and watch with ``labelSelector``, ``fieldSelector`` (``metadata.name``/``.namespace``),
  ``timeoutSeconds``, and ``resourceVersion`` (a watch from a version replays every change after it,
  so nothing falls between a list and its watch: kmock's own watch can lose those);
* ``/api/v1/namespaces``, which kmock's URL parser cannot address, so kopf's namespace scanning
  works unchanged (only ``default`` exists unless a test creates more).

The server runs on 127.0.0.1 in a thread with its own event loop (:class:`KubeServer`), so the
operator under test runs as a subprocess (:class:`OperatorProcess`) exactly as in a pod: ``kopf run``
with a kubeconfig. :class:`Kubelet` plays the kubelet and the Job/KubeRay controllers, which do not
exist here: a test says when a child succeeds or fails.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import copy
import datetime
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import jsonschema
import kmock
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

import egt_operator
from egt_operator.children import RUN_LABEL
from egt_operator.crd import crd
from tests.fixtures.processes import free_ports, stop

__all__ = [
    "KINDS",
    "Kind",
    "KubeEmulator",
    "KubeServer",
    "Kubelet",
    "OperatorProcess",
    "api_client",
    "kube",
    "kube_client",
    "kubeconfig",
    "kubelet",
    "operator_process",
    "wait_for",
    "write_kubeconfig",
]

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
START_TIMEOUT_S = 30.0
HIDDEN_PACKAGES = ROOT / "tests" / "fixtures" / "hidden_packages"
NOT_IN_OPERATOR_IMAGE = ("kubernetes",)  # images/operator.Dockerfile installs egt[operator] only
REQUEST_HISTORY = 256  # requests kmock keeps for matching reactions (see KubeEmulator.__call__)
T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    """One served resource: what discovery says about it and how the server treats its writes."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool = True
    status: bool = False  # a /status subresource owns .status
    generation: bool = False  # metadata.generation tracks changes outside metadata and status
    builtin: bool = True  # custom resources refuse strategic merge patches
    schema: Mapping[str, Any] | None = None  # openAPIV3Schema: prune, default, validate
    short_names: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(group=self.group, version=self.version, plural=self.plural)

    @property
    def ref(self) -> str:
        """How the API server names the resource in messages: ``egtruns.egt.dev``, ``configmaps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        """The URL path of a collection, an object or its subresource."""
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"
        parts = [base, *(["namespaces", namespace] if self.namespaced and namespace else [])]
        return "/".join([*parts, self.plural, *[p for p in (name, subresource) if p]])


def _egtrun() -> Kind:
    spec = crd()["spec"]
    version = spec["versions"][0]
    return Kind(
        kind=spec["names"]["kind"],
        api_version=f"{spec['group']}/{version['name']}",
        plural=spec["names"]["plural"],
        status="status" in version.get("subresources", {}),
        generation=True,
        builtin=False,
        schema=version["schema"]["openAPIV3Schema"],
        short_names=tuple(spec["names"].get("shortNames", ())),
    )


def rayjob_crd() -> dict[str, Any]:
    """KubeRay's RayJob CRD, as far as the operator reads it (the fields of its spec and cluster
    spec): the ones egt's RayJob schema lists, which follow the KubeRay version it names."""
    schema = json.loads((Path(egt_operator.__file__).parent / "schemas" / "rayjob-v1.json").read_text())
    spec = schema["properties"]["spec"]["properties"]
    cluster = spec["rayClusterSpec"]["properties"]
    fields = {
        **{key: {"type": "object", "x-kubernetes-preserve-unknown-fields": True} for key in spec},
        "rayClusterSpec": {"type": "object", "properties": {key: {"type": "object"} for key in cluster}},
    }
    root = {"type": "object", "properties": {"spec": {"type": "object", "properties": fields}}}
    return {
        "metadata": {"name": "rayjobs.ray.io"},
        "spec": {
            "group": "ray.io",
            "names": {"kind": "RayJob", "plural": "rayjobs", "singular": "rayjob"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


EGTRUN = _egtrun()
NAMESPACES = Kind("Namespace", "v1", "namespaces", namespaced=False, status=True, short_names=("ns",))
CRDS = Kind(
    "CustomResourceDefinition",
    "apiextensions.k8s.io/v1",
    "customresourcedefinitions",
    namespaced=False,
    status=True,
    generation=True,
    short_names=("crd",),
)
# What the operator and kopf touch. Pods do not exist: nothing runs here (see Kubelet).
KINDS: tuple[Kind, ...] = (
    EGTRUN,
    Kind("Job", "batch/v1", "jobs", status=True, generation=True),
    Kind("RayJob", "ray.io/v1", "rayjobs", status=True, generation=True, builtin=False),
    Kind("Service", "v1", "services", status=True, short_names=("svc",)),
    Kind("ConfigMap", "v1", "configmaps", short_names=("cm",)),
    Kind("Event", "v1", "events", short_names=("ev",)),
    Kind("Event", "events.k8s.io/v1", "events", short_names=("ev",)),
    NAMESPACES,
    CRDS,
)
_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
# Metadata only the server writes: a client's value is ignored on every write.
_SERVER_METADATA = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)
_TRUE = {"1", "t", "T", "true", "True", "TRUE"}
_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?/?")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    """A failure as the API server words it: kmock renders it as a ``Status`` body."""
    return kmock.KubernetesError(
        status=code, reason=reason, message=message, details=details or {"code": code}
    )


# ---- merge patches, selectors -------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_REQUIREMENT = re.compile(r"\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


def _selected(obj: Mapping[str, Any], labels: str, fields: str) -> bool:
    """Whether an object passes a ``labelSelector`` and a ``fieldSelector`` (equality and set forms)."""
    meta = obj.get("metadata", {})
    have = meta.get("labels") or {}
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", labels):
        match = _REQUIREMENT.fullmatch(part)
        if match is None:
            raise _error(400, "BadRequest", f"unable to parse requirement: {part!r}")
        negated, key, op, value, set_op, values = match.groups()
        if op:
            ok = (have.get(key) == value) == (op != "!=")
        elif set_op:
            ok = (have.get(key) in {v.strip() for v in values.split(",")}) == (set_op == "in")
        else:
            ok = (key in have) != bool(negated)
        if not ok:
            return False
    for part in filter(None, (p.strip() for p in fields.split(","))):
        key, op, value = re.split(r"(!=|==|=)", part, maxsplit=1)
        actual = meta.get(key.removeprefix("metadata.")) if key.startswith("metadata.") else None
        if (actual == value) != (op != "!="):
            return False
    return True


# ---- EGTRun admission: prune, default, validate -------------------------------------------------


def _prune(value: Any, schema: Mapping[str, Any], path: str, unknown: list[str]) -> Any:
    """The structural-schema pruning: drops unknown fields (noting them) and nulls a field does not allow."""
    if isinstance(value, dict) and path != "metadata":  # ObjectMeta is the server's, not the schema's
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields")
        if props is None and not isinstance(extra, dict):
            return value if keep else {}
        out = {}
        for key, sub in value.items():
            where = f"{path}.{key}" if path else key
            sub_schema = (props or {}).get(key, extra if isinstance(extra, dict) else None)
            if sub_schema is None:
                if keep:
                    out[key] = sub
                else:
                    unknown.append(where)
            elif sub is not None or sub_schema.get("nullable"):
                out[key] = _prune(sub, sub_schema, where, unknown)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(item, schema["items"], f"{path}[{i}]", unknown) for i, item in enumerate(value)]
    return value


def _default(value: Any, schema: Mapping[str, Any]) -> Any:
    """Structural defaulting: an absent field with a ``default`` gets it, at every level that exists."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        out = {key: copy.deepcopy(sub["default"]) for key, sub in props.items() if "default" in sub}
        for key, sub in value.items():
            sub_schema = props.get(key, schema.get("additionalProperties"))
            out[key] = _default(sub, sub_schema) if isinstance(sub_schema, dict) else sub
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_default(item, schema["items"]) for item in value]
    return value


def _draft4(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI v3 schema as JSON Schema draft 4 (which shares its boolean exclusiveMinimum):
    ``nullable`` becomes a ``null`` type (and a ``null`` enum member)."""
    out = dict(schema)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _draft4(out[key])
    if "properties" in out:
        out["properties"] = {name: _draft4(sub) for name, sub in out["properties"].items()}
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def _field_errors(error: jsonschema.ValidationError) -> list[tuple[str, str, str]]:
    """(field, reason, message) as the API server reports a schema violation."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    value, rule, limit = error.instance, error.validator, error.validator_value
    shown = json.dumps(value)
    if rule == "required":
        return [
            (f"{where}.{name}".lstrip("."), "FieldValueRequired", "Required value")
            for name in limit
            if name not in value
        ]
    if rule == "enum":
        supported = ", ".join(json.dumps(v) for v in limit if v is not None)
        return [
            (where, "FieldValueNotSupported", f"Unsupported value: {shown}: supported values: {supported}")
        ]
    if rule == "type":
        got = _JSON_TYPES.get(type(value), "null")
        wanted = limit[0] if isinstance(limit, list) else limit
        return [
            (
                where,
                "FieldValueTypeInvalid",
                f'Invalid value: "{got}": {where} in body must be of type {wanted}: "{got}"',
            )
        ]
    exclusive = error.schema.get(f"exclusive{str(rule).capitalize()}")
    problems = {
        "minimum": f"should be greater than {'' if exclusive else 'or equal to '}{limit}",
        "maximum": f"should be less than {'' if exclusive else 'or equal to '}{limit}",
        "pattern": f"should match '{limit}'",
        "minLength": f"should be at least {limit} chars long",
        "maxLength": f"may not be longer than {limit}",
        "multipleOf": f"should be a multiple of {limit}",
    }
    problem = problems.get(str(rule), error.message)
    return [(where, "FieldValueInvalid", f"Invalid value: {shown}: {where} in body {problem}")]


def admit(kind: Kind, obj: dict[str, Any], strict: bool) -> dict[str, Any]:
    """What the API server stores for a write of ``obj``, or the 400/422 it answers instead."""
    if kind.schema is None:
        return obj
    name = obj.get("metadata", {}).get("name", "")
    unknown: list[str] = []
    obj = _default(_prune(obj, kind.schema, "", unknown), kind.schema)
    if unknown and strict:
        fields = ", ".join(f'unknown field "{where}"' for where in unknown)
        raise _error(
            400,
            "BadRequest",
            f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
            f"strict decoding error: {fields}",
        )
    validator = jsonschema.Draft4Validator(_draft4(kind.schema))
    causes = {cause for error in validator.iter_errors(obj) for cause in _field_errors(error)}
    if causes:
        ordered = sorted(causes)
        listed = [f"{where}: {message}" for where, _, message in ordered]
        summary = listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"
        raise _error(
            422,
            "Invalid",
            f'{kind.kind}.{kind.group} "{name}" is invalid: {summary}',
            name=name,
            group=kind.group,
            kind=kind.kind,
            causes=[{"reason": r, "message": m, "field": f} for f, r, m in ordered],
        )
    return obj


# ---- the emulator -------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the API server's own writes (see the module docstring).

    Reads (get, list, watch) and writes go through kmock's reaction DSL as its fallbacks, so a test
    can still put a reaction in front of any request (e.g. to fail Job creation with a 500) from the
    server's event loop. Every object lives in kmock's ``objects`` with its full history.
    """

    kinds: tuple[Kind, ...] = KINDS
    _by_resource: dict[tuple[str, str, str], Kind] = attrs.field(factory=dict, init=False)
    _revision: int = attrs.field(default=0, init=False)
    # Every change as (resourceVersion, kind, event): watches replay from it, then follow it.
    _log: list[tuple[int, Kind, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # Requests served, by User-Agent (the operator benchmark counts the operator's).
    requests_by_agent: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    # Fault injection: creates of these names are answered (code, reason, message), as admission
    # (a quota, a policy webhook) would answer them.
    refusals: dict[str, tuple[int, str, str]] = attrs.field(factory=dict, init=False)
    # (kind, name, propagationPolicy) of every delete request, for tests of how children go.
    deletions: list[tuple[str, str, str | None]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace
        for kind in self.kinds:
            self._by_resource[kind.group, kind.version, kind.plural] = kind
            self.resources[kind.resource] = kmock.ResourceInfo(
                kind=kind.kind,
                singular=kind.kind.lower(),
                namespaced=kind.namespaced,
                verbs=set(_VERBS),
                shortnames=set(kind.short_names),
                subresources={"status"} if kind.status else set(),
            )
        self._seed(NAMESPACES, {"metadata": {"name": NAMESPACE}, "spec": {"finalizers": ["kubernetes"]}})
        self._seed(CRDS, crd())
        self._seed(CRDS, rayjob_crd())

    def _seed(self, kind: Kind, obj: dict[str, Any]) -> None:
        obj = {"apiVersion": kind.api_version, "kind": kind.kind, **copy.deepcopy(obj)}
        obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        if kind.generation:
            obj["metadata"]["generation"] = 1
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)
        self.objects[kind.resource, None, obj["metadata"]["name"]] = obj

    async def close(self) -> None:
        """End every watch stream, so that the HTTP server can shut down without waiting on them."""
        async with self._changed:
            self._closing = True
            self._changed.notify_all()

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Two fixes to kmock's request parsing. ``watch=True`` (what the kubernetes client sends; Go's
        ParseBool takes it) becomes ``watch=true``, the only form kmock knows. ``/api/v1/namespaces``
        is served here: kmock reads ``namespaces`` there as the start of a namespaced path and fails,
        and kopf lists and watches namespaces at startup.

        kmock keeps every request and matches each new one against its history, which makes a
        request cost grow with the number served (4 ms → 41 ms over 1,800 list requests): only
        the latest ``REQUEST_HISTORY`` are kept, enough for the reactions tests put in front.
        """
        self.requests_by_agent[raw_request.headers.get("User-Agent", "")] += 1
        try:
            return await self._dispatch(raw_request)
        finally:
            del self._requests[:-REQUEST_HISTORY]

    async def _dispatch(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.query.get("watch") in _TRUE - {"true"}:
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.update_query(watch="true"))
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        await raw_request.read()
        name, method, params = match[1], raw_request.method.upper(), dict(raw_request.query)
        try:
            data = await raw_request.json() if raw_request.can_read_body else None
        except ValueError:
            data = None
        if method == "GET":
            action = "WATCH" if params.get("watch") == "true" else "FETCH" if name else "LIST"
        else:
            action = {"POST": "CREATE", "PATCH": "UPDATE", "DELETE": "DELETE"}.get(method)
        request = kmock.Request(
            id=len(self._requests),
            method=method,
            url=raw_request.url,
            params=params,
            headers=dict(raw_request.headers),
            data=data,
            action=kmock.action(action) if action else None,
            resource=NAMESPACES.resource,
            name=name,
            raw_request=raw_request,
        )
        self._requests.append(request)  # kmock's reactions match only the requests it has seen
        try:
            return await self._handle(request)
        except Exception as error:  # rendered as a Status, as kmock does for every other path
            return await self._render_error(error)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip KubernetesEmulator._handle: it stores every write before the reactions run, without
        # metadata, admission or subresources. The _serve_* fallbacks below do all writes instead.
        return await kmock.RawHandler._handle(self, request)

    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        found = await super()._serve_version(request)
        return {**found, "groupVersion": found["groupVersion"].lstrip("/")}  # kmock says "/v1" for core

    # -- lookups ------------------------------------------------------------------------------

    def _kind(self, request: kmock.Request) -> Kind:
        res = request.resource
        kind = self._by_resource.get((res.group, res.version, res.plural)) if res is not None else None
        if kind is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return kind

    def _live(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kind.resource, namespace if kind.namespaced else None, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _target(self, request: kmock.Request) -> tuple[Kind, dict[str, Any]]:
        """The kind and a copy of the object a request addresses, or the 404 the server answers."""
        kind = self._kind(request)
        if request.name is None or request.subresource not in (None, *(["status"] if kind.status else [])):
            raise _error(404, "NotFound", "the server could not find the requested resource")
        current = self._live(kind, request.namespace, request.name)
        if current is None:
            raise _error(
                404,
                "NotFound",
                f'{kind.ref} "{request.name}" not found',
                name=request.name,
                group=kind.group,
                kind=kind.plural,
            )
        return kind, current

    # -- writes -------------------------------------------------------------------------------

    async def _commit(self, kind: Kind, obj: dict[str, Any], event: str) -> dict[str, Any]:
        """Store a new version (or the deletion) under a new resourceVersion, and tell the watches."""
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)
        meta = obj["metadata"]
        key = (kind.resource, meta.get("namespace"), meta["name"])
        if event == "DELETED":
            self.objects[key].history.append(obj)  # the last state stays readable in the history
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        async with self._changed:
            self._log.append((self._revision, kind, {"type": event, "object": obj}))
            self._changed.notify_all()
        if event == "DELETED":
            await self._collect_garbage(meta["uid"])
        return copy.deepcopy(obj)

    async def _collect_garbage(self, owner: str) -> None:
        """Kubernetes' garbage collector (background propagation): objects owned by a deleted object
        go too, those with finalizers once their finalizers are removed."""
        kinds = {kind.resource: kind for kind in self.kinds}
        for key, stored in list(self.objects.items()):
            if stored.deleted or key[0] not in kinds:
                continue
            dependent = copy.deepcopy(stored.raw)
            meta = dependent["metadata"]
            if not any(ref.get("uid") == owner for ref in meta.get("ownerReferences") or []):
                continue
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    meta.update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
                    await self._commit(kinds[key[0]], dependent, "MODIFIED")
            else:
                await self._commit(kinds[key[0]], dependent, "DELETED")

    async def _serve_create(self, request: kmock.Request) -> kmock.Response:
        kind = self._kind(request)
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the body of the request must be an object")
        if kind.namespaced and request.namespace is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        obj = copy.deepcopy(request.data)
        meta = obj["metadata"] = dict(obj.get("metadata") or {})
        name = meta.get("name") or (
            meta["generateName"] + secrets.token_hex(3)[:5] if meta.get("generateName") else ""
        )
        if not name:
            raise _error(
                422,
                "Invalid",
                f'{kind.kind} "" is invalid: metadata.name: Required value: name or generateName is required',
            )
        if name in self.refusals:
            raise _error(*self.refusals[name], name=name, kind=kind.plural)
        namespace = request.namespace if kind.namespaced else None
        if kind.namespaced and meta.get("namespace", namespace) != namespace:
            raise _error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if namespace is not None and self._live(NAMESPACES, None, namespace) is None:
            raise _error(
                404, "NotFound", f'namespaces "{namespace}" not found', name=namespace, kind="namespaces"
            )
        if self._live(kind, namespace, name) is not None:
            raise _error(
                409,
                "AlreadyExists",
                f'{kind.ref} "{name}" already exists',
                name=name,
                group=kind.group,
                kind=kind.plural,
            )
        for key in _SERVER_METADATA:
            meta.pop(key, None)
        meta.update(name=name, **({"namespace": namespace} if namespace else {}))
        obj.update(apiVersion=kind.api_version, kind=kind.kind)
        if kind.status:
            obj.pop("status", None)
        obj = admit(kind, obj, strict=request.params.get("fieldValidation") == "Strict")
        obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        if kind.generation:
            obj["metadata"]["generation"] = 1
        return kmock.Response(status=201, payload=await self._commit(kind, obj, "ADDED"))

    async def _serve_update(self, request: kmock.Request) -> dict[str, Any]:
        kind, current = self._target(request)
        content_type = request.headers.get("Content-Type", "").partition(";")[0].strip()
        if content_type == "application/json-patch+json":
            if not isinstance(request.data, list):
                raise _error(400, "BadRequest", "the body of a JSON patch must be a list of operations")
            try:
                patched = jsonpatch.apply_patch(current, request.data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
                raise _error(
                    422, "Invalid", f"the server rejected our request due to an error in our request: {error}"
                ) from error
        elif content_type == "application/merge-patch+json" or (
            content_type == "application/strategic-merge-patch+json" and kind.builtin
        ):
            if not isinstance(request.data, dict):
                raise _error(400, "BadRequest", "the body of a merge patch must be an object")
            patched = merge_patch(current, request.data)
            patched.setdefault("metadata", {})  # a patch may not remove metadata
        else:
            raise _error(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: "
                f"application/json-patch+json, application/merge-patch+json"
                f"{', application/strategic-merge-patch+json' if kind.builtin else ''}",
            )
        return await self._update(kind, current, patched, request)

    async def _serve_replace(self, request: kmock.Request) -> dict[str, Any]:
        kind, current = self._target(request)
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the body of the request must be an object")
        return await self._update(kind, current, copy.deepcopy(request.data), request)

    async def _update(
        self, kind: Kind, current: dict[str, Any], new: dict[str, Any], request: kmock.Request
    ) -> dict[str, Any]:
        """Store ``new``, the object as the client wants it, with what the server keeps for itself."""
        old_meta = current["metadata"]
        wanted_version = (new.get("metadata") or {}).get("resourceVersion", old_meta["resourceVersion"])
        if wanted_version != old_meta["resourceVersion"]:
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.ref} "{old_meta["name"]}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name=old_meta["name"],
                group=kind.group,
                kind=kind.plural,
            )
        if request.subresource == "status":  # only status changes there, metadata included
            new = {**_without(current, "status"), **_only(new, "status")}
        elif kind.status:  # and status never changes here
            new = {**_without(new, "status"), **_only(current, "status")}
        meta = dict(new.get("metadata") or {})
        for key in _SERVER_METADATA:
            meta.pop(key, None)
            if key in old_meta:
                meta[key] = old_meta[key]
        new.update(apiVersion=kind.api_version, kind=kind.kind, metadata=meta)
        new = admit(kind, new, strict=request.params.get("fieldValidation") == "Strict")
        meta = new["metadata"]
        if _without_version(new) == _without_version(current):
            return current  # a no-op write changes nothing, not even the resourceVersion
        if kind.generation and _without(new, "metadata", "status") != _without(current, "metadata", "status"):
            meta["generation"] = old_meta.get("generation", 0) + 1
        gone = meta.get("deletionTimestamp") and not meta.get("finalizers")
        return await self._commit(kind, new, "DELETED" if gone else "MODIFIED")

    async def _serve_delete(self, request: kmock.Request) -> dict[str, Any]:
        kind, current = self._target(request)
        meta = current["metadata"]
        options = request.data if isinstance(request.data, dict) else {}
        self.deletions.append((kind.kind, meta["name"], options.get("propagationPolicy")))
        if meta.get("finalizers"):  # deletion starts; the finalizers' owners finish it
            if meta.get("deletionTimestamp"):
                return current
            meta.update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            if kind.generation:
                meta["generation"] = meta.get("generation", 0) + 1
            return await self._commit(kind, current, "MODIFIED")
        await self._commit(kind, current, "DELETED")
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Success",
            "details": {"name": meta["name"], "group": kind.group, "kind": kind.plural, "uid": meta["uid"]},
        }

    # -- reads --------------------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> dict[str, Any]:
        return self._target(request)[1]

    def _matching(self, request: kmock.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj["metadata"]
        return (request.namespace is None or meta.get("namespace") == request.namespace) and _selected(
            obj, request.params.get("labelSelector", ""), request.params.get("fieldSelector", "")
        )

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        kind = self._kind(request)
        items = [
            copy.deepcopy(found.raw)
            for (resource, _, _), found in self.objects.items()
            if resource == kind.resource and not found.deleted and self._matching(request, found.raw)
        ]
        items.sort(key=lambda obj: (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self._revision)},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """Changes after ``resourceVersion`` (else every object as ADDED), then each change as it
        happens, until ``timeoutSeconds``, the client leaves, or the server closes."""
        kind = self._kind(request)
        since = request.params.get("resourceVersion", "")
        timeout = float(request.params.get("timeoutSeconds") or 0)
        deadline = asyncio.get_running_loop().time() + timeout if timeout > 0 else None
        yield b""  # the headers go out now, even if nothing changes for a while
        if since in ("", "0"):
            position = len(self._log)
            current = (await self._serve_list(request))["items"]
            backlog: list[dict[str, Any]] = [{"type": "ADDED", "object": obj} for obj in current]
        else:
            position = bisect.bisect_right(self._log, int(since), key=lambda entry: entry[0])
            backlog = []
        for event in backlog:
            yield event
        while True:
            async with self._changed:
                while position >= len(self._log) and not self._closing:
                    left = None if deadline is None else deadline - asyncio.get_running_loop().time()
                    if left is not None and left <= 0:
                        return
                    try:
                        await asyncio.wait_for(self._changed.wait(), left)
                    except TimeoutError:
                        return
                if self._closing:
                    return
                entries, position = self._log[position:], len(self._log)
            for _, changed, event in entries:
                if changed is kind and self._matching(request, event["object"]):
                    yield event


def _without(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key not in keys}


def _only(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {key: obj[key]} if obj.get(key) is not None else {}


def _without_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {**obj, "metadata": _without(obj.get("metadata", {}), "resourceVersion")}


# ---- serving it ---------------------------------------------------------------------------------


class KubeServer:
    """The emulator on a real 127.0.0.1 port, served from a thread with its own event loop.

    Real HTTP because its clients are other processes (the operator under test) and synchronous
    code (the ``kubernetes`` client, the tests themselves). Starting takes milliseconds, so each
    test gets a fresh, empty cluster.
    """

    def __init__(self) -> None:
        self.port = 0
        self.emulator: KubeEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> KubeServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="kube-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or self._failure is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._failure!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as error:  # reported by start(), which waits on `ready`
            self._failure = error
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self.emulator = KubeEmulator()  # its asyncio primitives belong to this loop
        async with self.emulator:
            runner = aiohttp.web.ServerRunner(
                aiohttp.web.Server(self.emulator, handler_cancellation=True), shutdown_timeout=1.0
            )
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            ready.set()
            try:
                await self._stopping.wait()
            finally:
                await self.emulator.close()
                await runner.cleanup()


def write_kubeconfig(path: Path, url: str, namespace: str = NAMESPACE) -> Path:
    """A kubeconfig for plain http, read alike by ``kubernetes.config`` and kopf's own login."""
    context = {
        "name": "emulator",
        "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
    }
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "tester", "user": {"token": "egt-test"}}],  # any token passes
                "contexts": [context],
                "current-context": "emulator",
            }
        )
    )
    return path


def api_client(kubeconfig: Path) -> k8s.ApiClient:
    """A ``kubernetes`` client for that kubeconfig, leaving the library's global default alone."""
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll until ``predicate()`` is truthy and return that value; fail the test with the last one
    seen otherwise (controllers converge eventually, so tests wait for a state, never for a time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or predicate}; last: {value!r}"
            )
        time.sleep(interval)


# ---- the operator under test --------------------------------------------------------------------


class OperatorProcess:
    """``kopf run --standalone --namespace <ns> -m <module>`` against the emulator, as in a pod.

    A subprocess, not an in-process kopf: the operator's module state, threads and signal handling
    are its own, and a restart is a real restart. Credentials come from ``KUBECONFIG``. The packages
    in ``hidden`` cannot be imported (tests/fixtures/hidden_packages): the egt operator runs without
    ``kubernetes``, as in its image (NOT_IN_OPERATOR_IMAGE). ``start`` returns once kopf's liveness
    endpoint answers, i.e. its startup handlers are done and it is watching. Output of every start
    goes, appended, to one log file.
    """

    def __init__(
        self,
        module: str,
        kubeconfig: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        namespace: str = NAMESPACE,
        hidden: Sequence[str] = (),
    ) -> None:
        self.module = module
        self.hidden = tuple(hidden)
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = dict(env or {})
        self.namespace = namespace
        self.liveness = f"http://127.0.0.1:{free_ports()[0]}/healthz"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "kopf", "run", "--standalone", "--verbose",
            "--namespace", self.namespace, f"--liveness={self.liveness}", "-m", self.module,
        ]  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> OperatorProcess:
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        if self.hidden:
            env |= {"EGT_HIDDEN_PACKAGES": ",".join(self.hidden), "PYTHONPATH": str(HIDDEN_PACKAGES)}
        env.pop("KUBERNETES_SERVICE_HOST", None)  # never log in to a real cluster from a test
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not _answers(self.liveness):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kopf did not start ({self.command}); log:\n{self.logs()[-20000:]}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (kopf's graceful exit), a kill if that takes longer than ``timeout``."""
        if self.running:
            assert self.proc is not None
            stop(self.proc, timeout)
        return None if self.proc is None else self.proc.returncode

    def restart(self) -> OperatorProcess:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


# ---- the kubelet and the controllers ------------------------------------------------------------


_COMPLETED = "Reached expected number of succeeded pods"


class Kubelet:
    """The kubelet and the Job and KubeRay controllers, which this cluster lacks: no pod ever runs,
    so a test decides when a child finishes and how. Status goes through the /status subresource,
    as those controllers write it, with the fields and conditions they set (Kubernetes 1.31+,
    KubeRay v1).
    """

    def __init__(self, api: k8s.ApiClient, namespace: str = NAMESPACE) -> None:
        self.api = api
        self.namespace = namespace

    def _kind(self, kind: str) -> Kind:
        for candidate in KINDS:
            if candidate.kind == kind:
                return candidate
        raise ValueError(f"no such kind here: {kind} (served: {sorted({k.kind for k in KINDS})})")

    def _call(
        self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None
    ) -> Any:
        return self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": "application/merge-patch+json"},
            body=body,
            response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object as the API server has it now, or None."""
        try:
            return self._call("GET", self._kind(kind).path(self.namespace, name))
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: str, run: str | None = None) -> list[dict[str, Any]]:
        """Objects of a kind, only one run's children (by the run label) if ``run`` is given."""
        query = [("labelSelector", f"{RUN_LABEL}={run}")] if run else []
        return self._call("GET", self._kind(kind).path(self.namespace), query=query)["items"]

    def jobs(self, run: str | None = None) -> list[dict[str, Any]]:
        return self.list("Job", run)

    def _set_status(self, kind: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", self._kind(kind).path(self.namespace, name, "status"), {"status": status})

    def _job_status(self, name: str, *conditions: dict[str, Any], **fields: Any) -> dict[str, Any]:
        job = self.get("Job", name)
        if job is None:
            raise LookupError(f"no Job {name} in {self.namespace}")
        status = job.get("status") or {}
        now = _now()
        kept = [c for c in status.get("conditions", []) if c["type"] not in {c["type"] for c in conditions}]
        stamped = [
            {"status": "True", "lastProbeTime": now, "lastTransitionTime": now, **c} for c in conditions
        ]
        return self._set_status(
            "Job",
            name,
            {"startTime": status.get("startTime", now), "active": 0, "ready": 0, "terminating": 0,
             **fields, "conditions": kept + stamped},
        )  # fmt: skip

    def complete_job(self, name: str) -> dict[str, Any]:
        """Every completion succeeded: SuccessCriteriaMet, then Complete (terminal)."""
        job = self.get("Job", name) or {}
        completions = (job.get("spec") or {}).get("completions") or 1
        return self._job_status(
            name,
            {"type": "SuccessCriteriaMet", "reason": "CompletionsReached", "message": _COMPLETED},
            {"type": "Complete", "reason": "CompletionsReached", "message": _COMPLETED},
            succeeded=completions,
            completionTime=_now(),
        )  # fmt: skip

    def fail_job(
        self,
        name: str,
        reason: str = "BackoffLimitExceeded",
        message: str = "Job has reached the specified backoff limit",
    ) -> dict[str, Any]:
        """A pod failed past the backoff limit: FailureTarget, then Failed (terminal), with ``reason``."""
        return self._job_status(
            name,
            {"type": "FailureTarget", "reason": reason, "message": message},
            {"type": "Failed", "reason": reason, "message": message},
            failed=1,
        )

    def _rayjob_status(self, name: str, **status: Any) -> dict[str, Any]:
        rayjob = self.get("RayJob", name)
        if rayjob is None:
            raise LookupError(f"no RayJob {name} in {self.namespace}")
        now = _now()
        started = (rayjob.get("status") or {}).get("startTime", now)
        return self._set_status(
            "RayJob",
            name,
            {"jobId": f"{name}-{secrets.token_hex(4)}", "rayClusterName": f"{name}-raycluster",
             "startTime": started, "endTime": now, **status},
        )  # fmt: skip

    def complete_rayjob(self, name: str, message: str = "Job finished successfully.") -> dict[str, Any]:
        """The entrypoint exited 0: jobDeploymentStatus Complete, jobStatus SUCCEEDED."""
        return self._rayjob_status(
            name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", message=message
        )

    def fail_rayjob(self, name: str, message: str) -> dict[str, Any]:
        """The entrypoint failed: jobDeploymentStatus Failed, jobStatus FAILED, reason AppFailed."""
        return self._rayjob_status(
            name, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message=message
        )


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    """A fresh, empty Kubernetes API (namespace ``default``, the EGTRun CRD) for one test."""
    server = KubeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(kube: KubeServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", kube.url)


@pytest.fixture
def kube_client(kubeconfig: Path) -> Iterator[k8s.ApiClient]:
    api = api_client(kubeconfig)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def kubelet(kube_client: k8s.ApiClient) -> Kubelet:
    return Kubelet(kube_client)


@pytest.fixture
def operator_process(kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """``operator_process(module, env=None)`` starts an operator; all are stopped at teardown, and
    their logs printed (pytest shows them only when the test failed). The egt operator runs without
    the packages its image lacks."""
    started: list[OperatorProcess] = []

    def start(module: str, env: Mapping[str, str] | None = None) -> OperatorProcess:
        hidden = NOT_IN_OPERATOR_IMAGE if module.startswith("egt_operator") else ()
        log = tmp_path / f"operator-{len(started)}.log"
        operator = OperatorProcess(module, kubeconfig, log, env, hidden=hidden)
        started.append(operator)
        return operator.start()

    yield start
    for operator in started:
        operator.stop()
        print(f"---- {operator.log_path} ----\n{operator.logs()[-20000:]}")
