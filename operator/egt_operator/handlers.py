"""The kopf handlers: thin glue between Kubernetes and :func:`egt_operator.reconcile.reconcile`.

Run with ``kopf run -m egt_operator.handlers --all-namespaces`` (the chart's Deployment does; one
replica, see docs/operator.md). Every EGTRun is reconciled when it is created, changed or found at
start-up (resume after an operator restart), whenever one of its children changes, and every
``EGT_RECONCILE_SECONDS`` (default 30) as a safety net (one operator-wide task). The run and its
children are read from kopf's in-memory indexes (the EGTRuns, and the Jobs and RayJobs labelled
``egt.dev/run``, kept current by watch streams), so a pass makes no API request unless something
changed: then it creates or deletes children, patches the run's status and posts Events. Passes
over one run never overlap (a lock per run).

Runs carry no finalizer: deleting one never waits for the operator, and Kubernetes' garbage
collector deletes its children through their ownerReferences.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from egt_operator import kube, metrics
from egt_operator.children import RUN_LABEL, Run, kuberay_gaps
from egt_operator.crd import GROUP, PLURAL, VERSION
from egt_operator.reconcile import Plan, fail_stage, reconcile
from egt_operator.sharing import Claims
from egt_operator.store import stage_identity_of, store_verdict

log = logging.getLogger(__name__)
INTERVAL = float(os.environ.get("EGT_RECONCILE_SECONDS", "30"))
CRD_READ_SECONDS = 60.0
_locks: dict[str, threading.Lock] = {}
_following: list[asyncio.Task] = []  # the safety-net task (follow_runs)
_written: dict[str, dict[str, Any]] = {}  # per run, the status it wrote last: see _latest
_locks_guard = threading.Lock()
_kube: kube.Kube | None = None  # see _api
_claims = Claims()  # which run computes which stage identity (egt_operator.sharing)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Progress in annotations (the CRD's structural status has no room for kopf's own fields),
    a small worker pool, and /metrics."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="egt.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="egt.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # kopf's own handler chatter stays in the log
    settings.execution.max_workers = 4  # passes are short and serialised per run; few threads, less memory
    metrics.serve(int(os.environ.get("EGT_METRICS_PORT", "8080")))


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials, found as the operator's own requests find them (the service account, else
    the kubeconfig: :func:`egt_operator.kube.login`). Without this handler kopf logs in through the
    ``kubernetes`` package whenever it is installed, which the operator image leaves out."""
    found = kube.login()
    return kopf.ConnectionInfo(
        server=found.server,
        ca_data=found.ca_pem,
        insecure=found.insecure,
        token=found.token,
        certificate_data=found.cert_pem,
        private_key_data=found.key_pem,
        default_namespace=found.namespace,
        expiration=found.expires,
    )


# ---- the children, as the watch streams last saw them ---------------------------------------------


def _snapshot(kind: str, body: kopf.Body) -> dict[str, Any]:
    return {
        "kind": kind,
        "apiVersion": body.get("apiVersion"),
        "metadata": {
            "name": body.metadata.name,
            "namespace": body.metadata.namespace,
            "annotations": dict(body.metadata.annotations),
        },
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


@kopf.index("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
def job_index(body: kopf.Body, namespace: str, labels: Mapping[str, str], **_: Any) -> dict:
    return {(namespace, labels[RUN_LABEL]): _snapshot("Job", body)}


@kopf.index("ray.io", "v1", "rayjobs", labels={RUN_LABEL: kopf.PRESENT})
def rayjob_index(body: kopf.Body, namespace: str, labels: Mapping[str, str], **_: Any) -> dict:
    return {(namespace, labels[RUN_LABEL]): _snapshot("RayJob", body)}


def _sharing(run: Run, stage: str, key: str, *indexes: kopf.Index) -> tuple[str | None, str | None]:
    """(identity, the other run computing it) for the stage; see egt_operator.sharing."""
    identity = stage_identity_of(run, stage)
    if identity is None:
        return None, None
    everyone = [
        (f"{ns}/{name}", child) for index in indexes for (ns, name), found in index.items() for child in found
    ]
    return identity, _claims.owner(identity, key, everyone)


def _children(namespace: str, name: str, *indexes: kopf.Index) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for index in indexes:
        for child in index.get((namespace, name), []):
            found[child["metadata"]["name"]] = child
    return found


# ---- reconcile ----------------------------------------------------------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
def run_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict:
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.on.create(GROUP, VERSION, PLURAL, id="on-create")
@kopf.on.resume(GROUP, VERSION, PLURAL, id="on-resume")
@kopf.on.update(GROUP, VERSION, PLURAL, id="on-update")
def drive(
    body: kopf.Body, name: str, namespace: str, job_index: kopf.Index, rayjob_index: kopf.Index, **_: Any
) -> None:
    """A pass when the run is created, changed or found at start-up."""
    reconcile_run(namespace, name, body, job_index, rayjob_index)


@kopf.on.startup()
async def follow_runs(
    run_index: kopf.Index,
    job_index: kopf.Index,
    rayjob_index: kopf.Index,
    settings: kopf.OperatorSettings,
    **_: Any,
) -> None:
    """A pass over every run every INTERVAL seconds, the safety net for a missed event.

    One operator-wide task, not kopf's per-object timer: a timer puts kopf's finalizer on every run,
    and deleting a run (or its namespace) then hangs whenever the operator is not running. Without a
    finalizer the run goes at once and Kubernetes' garbage collector takes its children (their
    ownerReferences), operator or not.
    """

    async def follow() -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            runs = [(key, body) for key, bodies in list(run_index.items()) for body in list(bodies)]
            for (namespace, name), body in runs:
                pass_over = functools.partial(reconcile_run, namespace, name, body, job_index, rayjob_index)
                try:  # in kopf's own worker threads, as every handler's pass: one pool, not two
                    await asyncio.get_running_loop().run_in_executor(settings.execution.executor, pass_over)
                except Exception:  # the next round tries again; one run's trouble stops no other
                    log.exception("%s/%s: reconcile pass failed", namespace, name)

    _following.append(asyncio.create_task(follow()))


@kopf.on.cleanup()
async def stop_following(**_: Any) -> None:
    for task in _following:
        task.cancel()


@kopf.on.event(GROUP, VERSION, PLURAL)
def forget_deleted(type: str, namespace: str, name: str, **_: Any) -> None:
    """A run gone from the cluster: its metrics, lock and remembered status go too."""
    if type == "DELETED":
        metrics.forget(namespace, name)
        _locks.pop(f"{namespace}/{name}", None)
        _written.pop(f"{namespace}/{name}", None)


@kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
@kopf.on.event("ray.io", "v1", "rayjobs", labels={RUN_LABEL: kopf.PRESENT})
def child_changed(
    namespace: str,
    labels: Mapping[str, str],
    run_index: kopf.Index,
    job_index: kopf.Index,
    rayjob_index: kopf.Index,
    **_: Any,
) -> None:
    """A pass over the child's run as soon as the child changes (kopf updates the indexes first),
    so a finished stage starts the next one without waiting for the timer."""
    name = labels[RUN_LABEL]
    for body in run_index.get((namespace, name), []):
        reconcile_run(namespace, name, body, job_index, rayjob_index)


def reconcile_run(
    namespace: str, name: str, body: Mapping[str, Any], job_index: kopf.Index, rayjob_index: kopf.Index
) -> None:
    """One reconcile pass; its plan carried out (children, then status, then Events)."""
    key = f"{namespace}/{name}"
    with _lock(namespace, name):
        run = _latest(key, body)
        try:
            plan = reconcile(
                run,
                _children(namespace, name, job_index, rayjob_index),
                store_verdict,
                _now(),
                lambda run, stage: _sharing(run, stage, f"{namespace}/{name}", job_index, rayjob_index),
                _preflight,
            )
            written = _apply(run, plan)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            raise
        if written is not None:
            _written[key] = written
        metrics.observe(run, plan)


def _preflight(objects: list[dict[str, Any]]) -> str | None:
    """Why this cluster cannot run these children: a RayJob needs a recent enough KubeRay."""
    for obj in objects:
        if obj["kind"] == "RayJob":
            installed = _rayjob_crd()
            return None if installed is _UNKNOWN else kuberay_gaps(obj, installed)
    return None


_UNKNOWN: Any = object()
_crd_cache: dict[str, Any] = {"at": -CRD_READ_SECONDS}  # the RayJob CRD as last read, and when


def _rayjob_crd() -> Any:
    """The installed rayjobs.ray.io CRD, read at most every CRD_READ_SECONDS (an upgraded KubeRay
    is seen on the next retry): None when not installed, _UNKNOWN when the operator may not read
    CRDs (namespaced RBAC without cluster read): then nothing is checked."""
    if time.monotonic() - _crd_cache["at"] < CRD_READ_SECONDS:
        return _crd_cache["crd"]
    try:
        found = _api().get("CustomResourceDefinition", "rayjobs.ray.io")
    except kube.KubeError as error:
        if error.status == 404:
            found = None
        elif error.status == 403:
            log.warning("may not read the rayjobs.ray.io CRD: the installed KubeRay version is not checked")
            found = _UNKNOWN
        else:
            raise
    _crd_cache.update(crd=found, at=time.monotonic())
    return found


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: a key ``new`` no longer has
    is sent as null, or the API server would keep it (a retried stage would still show the failed
    attempt's endTime and message, and artifact maps would only grow)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(old.get(key), Mapping):
            if value != old[key]:
                patch[key] = merge_patch(old[key], value)
        elif key not in old or old[key] != value:
            patch[key] = value
    return patch


def _latest(key: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The run as kopf last saw it, with the status this operator wrote last where kopf's copy is
    older: no API request.

    Watch events can arrive after the next pass has started, and kopf's own annotation patches make
    versions of the run this operator never saw, so resourceVersions cannot tell an old copy from a
    new one; the status's ``sequence``, counted up by every write of this operator, can.
    """
    run = copy.deepcopy(dict(body))
    written = _written.get(key)
    if written is not None and _sequence(run.get("status")) < _sequence(written):
        run["status"] = copy.deepcopy(written)
    return run


def _sequence(status: Mapping[str, Any] | None) -> int:
    return int((status or {}).get("sequence", 0))


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(f"{namespace}/{name}", threading.Lock())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _apply(run: dict[str, Any], plan: Plan) -> dict[str, Any] | None:
    """Carry out the plan; returns the status when it was written."""
    meta = run["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    for obj in plan.delete:
        _delete(obj["kind"], obj["metadata"]["name"], namespace)
    for obj in plan.create:
        try:
            _create(obj)
        except kube.KubeError as error:
            if not error.refused_for_good:
                raise  # kopf retries the pass
            kind, child = obj["kind"], obj["metadata"]["name"]
            why = f"CreateRefused: the API server refused {kind} {child}: {error.status} {error.message}"
            plan = fail_stage(plan, plan.status["currentStage"], why, _now())
            break
    if plan.create and any(state == "Running" for _, state in plan.transitions):  # a stage starts
        _delete_superseded_spec_maps(namespace, name, plan.create)
    written = None
    if plan.status != (run.get("status") or {}):
        written = {**plan.status, "sequence": _sequence(run.get("status")) + 1}
        patch = {"status": merge_patch(run.get("status") or {}, written)}
        _api().patch("EGTRun", name, namespace, patch, sub="status")
    for kind, reason, message in plan.events:
        _post_event(run, kind, reason, message)
        (log.warning if kind == "Warning" else log.info)("%s/%s %s: %s", namespace, name, reason, message)
    return written


def _post_event(run: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    """A core/v1 Event on the run (what `kubectl describe egtr` shows). Posted directly, not with
    kopf.event, which works only inside kopf's own handler context (not in the follow task); an
    Event that cannot be posted is logged and dropped, never a reason to redo the pass."""
    meta = run["metadata"]
    now = datetime.now(UTC)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "EGTRun",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "egt-operator"},
        "reportingComponent": "egt-operator",
        "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "count": 1,
    }
    try:
        _api().create(event)
    except kube.KubeError as error:
        log.warning("could not post the %s Event on %s: %s", reason, meta["name"], error.reason)


# ---- Kubernetes objects by kind -----------------------------------------------------------------


def _create(obj: dict[str, Any]) -> None:
    """Create one child; one that exists already is adopted (a pass cut short, an operator restart)."""
    try:
        _api().create(obj)
    except kube.KubeError as error:
        if error.status != 409:
            raise


def _delete_superseded_spec_maps(namespace: str, run: str, created: list[dict[str, Any]]) -> None:
    """Delete the run's spec ConfigMaps other than the one the stage just started reads.

    Safe when a stage starts: a run's stages run one at a time, and a stale child is gone before its
    replacement is created, so no running pod of the run reads an older run file.
    """
    current = {obj["metadata"]["name"] for obj in created if obj["kind"] == "ConfigMap"}
    for item in _api().list("ConfigMap", namespace, label_selector=f"{RUN_LABEL}={run}"):
        meta = item["metadata"]
        if meta["name"] not in current and (meta.get("labels") or {}).get(RUN_LABEL) == run:
            _delete("ConfigMap", meta["name"], namespace)


def _delete(kind: str, name: str, namespace: str) -> None:
    # Foreground: a Job stays until its pods are gone, so its replacement (same name, same pod
    # hostnames) is created only then: a new SFT pod 0 never resolves to a dying one.
    try:
        _api().delete(kind, name, namespace, propagation="Foreground" if kind == "Job" else None)
    except kube.KubeError as error:
        if error.status != 404:
            raise


def _api() -> kube.Kube:
    """One API client for all the operator's requests: thread-safe, one connection pool, made once."""
    global _kube
    with _locks_guard:
        if _kube is None:
            _kube = kube.Kube()
        return _kube
