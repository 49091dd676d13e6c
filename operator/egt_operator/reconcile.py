"""One reconcile pass of an EGTRun: from what is observed to what to do. Pure: no API calls.

The operator's handlers (egt_operator.handlers) gather the observations (the run, its children from
an in-memory index, the store's verdict on a stage) and carry out the returned :class:`Plan`
(create and delete children, patch the status, post Events). Every decision lives here, so it can
be read and tested without a cluster.

The walk, in stage order (the run's own stages, ``EGTRunSpec.stages``: they depend on its kind):

- a stage already Succeeded or Skipped is passed;
- a Failed stage fails the run (condition Succeeded=False, reason StageFailed) until a retry;
- a stage without a child is Skipped when the store already holds its outputs for this spec and
  these inputs (the local runner's rule), otherwise its children are created and it is Running;
  with ``spec.suspend`` nothing new is created;
- a stage with a child follows it: Running, then Succeeded (the next stage starts in the same
  pass) or Failed with the child's reason and message;
- a child rendered from another version of the spec (its ``egt.dev/spec`` annotation: the child as
  rendered and the settings its stage's outputs depend on) is deleted and, once gone, created again
  from the current spec; an edit that touches neither leaves it running. Under ``spec.suspend`` a
  running child is never deleted: the replacement waits until the run resumes.

Spec changes (a new ``metadata.generation``): every stage that is not running goes back to
Pending, so the walk re-checks it against the store: stages the change does not touch are Skipped
at once, the others run again. The running stage's child is replaced if its own rendering changed.

Retry: a new value of the ``egt.dev/retry`` annotation puts Failed stages back to Pending and
deletes their children; the walk then starts them again, and they resume from their finished shards
and checkpoints in the store.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from egt.spec import STAGES, SpecError
from egt.stages.fingerprints import settings
from egt_operator.children import SPEC_VOLUME, Run, render, run_from_resource

RETRY_ANNOTATION = "egt.dev/retry"
SPEC_ANNOTATION = "egt.dev/spec"  # digest of the rendered child, on every child
IDENTITY_ANNOTATION = "egt.dev/identity"  # the stage identity a child computes (egt_operator.sharing)
DONE = ("Succeeded", "Skipped")
RAYJOB_TERMINAL = ("Complete", "Failed", "ValidationFailed")  # KubeRay's final jobDeploymentStatus


@dataclass
class StoreVerdict:
    """What the store says about a stage: its outputs are current (with their URIs and metrics)."""

    artifacts: dict[str, str]
    metrics: dict[str, float | None]


@dataclass
class Plan:
    """What one reconcile pass wants done, in order: deletions, creations, then the status."""

    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)  # the objects, as observed
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    transitions: list[tuple[str, str]] = field(default_factory=list)  # (stage, new state)


def child_phase(child: Mapping[str, Any]) -> tuple[str, str, str]:
    """(Running | Succeeded | Failed, reason, message) of a Job or a KubeRay RayJob.

    A Job is done when its Complete (or SuccessCriteriaMet) or Failed condition is True. A RayJob
    has no conditions: a terminal ``jobDeploymentStatus`` (Complete, Failed, and ValidationFailed,
    which KubeRay >= 1.5 never leaves) ends it, then ``jobStatus`` says whether the Ray job itself
    SUCCEEDED; KubeRay's ``reason`` (DeadlineExceeded, PreRunningDeadlineExceeded, SubmissionFailed,
    AppFailed, ...) and ``message`` say why not.
    """
    status = child.get("status") or {}
    if child.get("kind") == "RayJob":
        deployment = status.get("jobDeploymentStatus")
        if deployment not in RAYJOB_TERMINAL:
            return "Running", "RayJobRunning", f"RayJob {deployment or 'starting'}"
        job_status = status.get("jobStatus")
        if deployment == "Complete" and job_status == "SUCCEEDED":
            return "Succeeded", "RayJobSucceeded", "the Ray job succeeded"
        reason = status.get("reason") or f"RayJob{(job_status or deployment).title()}"
        return "Failed", _camel(reason), status.get("message") or f"Ray job {job_status or deployment}"
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded", "JobComplete", condition.get("message") or "the Job completed"
        if condition.get("type") == "Failed":
            return (
                "Failed",
                _camel(condition.get("reason") or "JobFailed"),
                condition.get("message") or "the Job failed",
            )
    return "Running", "JobRunning", f"{status.get('active', 0)} pods active"


def _camel(reason: str) -> str:
    """A condition reason: CamelCase letters and digits only (metav1.Condition's pattern)."""
    cleaned = "".join(part[:1].upper() + part[1:] for part in reason.replace("-", "_").split("_"))
    cleaned = "".join(c for c in cleaned if c.isalnum())
    return cleaned if cleaned[:1].isalpha() else f"Reason{cleaned}"


def digest(obj: Mapping[str, Any], stage_settings: Mapping[str, Any] | None = None) -> str:
    """Digest of a rendered child (without the annotation that carries it) and of the stage settings
    its outputs depend on.

    The spec ConfigMap a child mounts is named after the whole run file, so its name is left out: an
    edit elsewhere in the spec (another stage's settings, ``suspend``) leaves a running child alone;
    pods keep reading the run file they started with, whose settings for their stage are unchanged.
    """
    plain = _without_spec_volume(copy.deepcopy(dict(obj)))
    plain.get("metadata", {}).get("annotations", {}).pop(SPEC_ANNOTATION, None)
    text = json.dumps({"object": plain, "settings": stage_settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_spec_volume(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("name") == SPEC_VOLUME and "configMap" in value:
            return {**value, "configMap": {**value["configMap"], "name": "<spec>"}}
        return {key: _without_spec_volume(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_spec_volume(item) for item in value]
    return value


def stamped(
    objects: list[dict[str, Any]], stage_settings: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The rendered objects, each annotated with its digest (how a stale child is recognized)."""
    out = []
    for obj in objects:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("annotations", {})[SPEC_ANNOTATION] = digest(obj, stage_settings)
        out.append(obj)
    return out


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The list with condition ``kind`` set; lastTransitionTime changes only when the status does."""
    previous = next((c for c in conditions if c["type"] == kind), None)
    changed = previous is None or previous["status"] != status
    condition = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": now if changed else previous["lastTransitionTime"],
        "observedGeneration": generation,
    }
    return [c for c in conditions if c["type"] != kind] + [condition]


def reconcile(
    body: Mapping[str, Any],
    children: Mapping[str, Mapping[str, Any]],
    store_verdict: Callable[[Run, str], StoreVerdict | None],
    now: str,
    sharing: Callable[[Run, str], tuple[str | None, str | None]] = lambda run, stage: (None, None),
    preflight: Callable[[list[dict[str, Any]]], str | None] = lambda objects: None,
) -> Plan:
    """The plan for one pass over the run ``body``.

    ``children``: the run's Jobs and RayJobs by name, as last observed. ``store_verdict(run, stage)``
    says whether the store already holds the stage's outputs for this spec, its own or another
    run's with the same identity (None: no, or unknown). ``sharing(run, stage)``, asked just before
    a stage's children would be created, gives the stage's identity (stamped on the children) and
    the other run already computing that identity, if any: then the stage waits for it, Pending,
    and is Skipped once that run's outputs are in the store (egt_operator.sharing).
    ``preflight(objects)``, asked before a stage's children are created, says why this cluster
    cannot run them (e.g. a KubeRay too old for the RayJob): the stage fails with that, until a retry.
    """
    meta = body["metadata"]
    generation = int(meta.get("generation") or 1)
    status = copy.deepcopy(dict(body.get("status") or {}))
    if meta.get("deletionTimestamp"):  # being deleted: its children go, nothing new starts
        return Plan(status=status)
    stages = {name: dict(status.get("stages", {}).get(name) or {"state": "Pending"}) for name in STAGES}
    conditions = list(status.get("conditions") or [])
    plan = Plan(status=status)

    def condition(kind: str, value: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, kind, value, reason, message, generation, now)

    def finish(message: str) -> Plan:
        status.update(stages=stages, conditions=conditions, observedGeneration=generation, message=message)
        return plan

    try:
        run = run_from_resource(body)
    except SpecError as error:
        condition("Succeeded", "False", "InvalidSpec", str(error))
        condition("Progressing", "False", "InvalidSpec", "the spec is invalid")
        plan.events.append(("Warning", "InvalidSpec", str(error)))
        return finish(str(error).splitlines()[0])
    stages = {name: stages[name] for name in run.spec.stages}  # the status lists this run's stages only

    if status.get("observedGeneration") not in (None, generation):
        for name, stage in stages.items():
            if stage["state"] != "Running":
                stages[name] = {"state": "Pending"}
        plan.events.append(("Normal", "SpecChanged", f"generation {generation}: re-checking every stage"))

    retry = (meta.get("annotations") or {}).get(RETRY_ANNOTATION)
    if retry is not None and retry != status.get("retry"):
        status["retry"] = retry
        for name, stage in stages.items():
            if stage["state"] == "Failed":
                stages[name] = {"state": "Pending"}
                if stage.get("child") in children:
                    plan.delete.append(dict(children[stage["child"]]))
                plan.events.append(("Normal", "Retry", f"{name}: retrying ({RETRY_ANNOTATION}={retry})"))
    deleting = {child["metadata"]["name"] for child in plan.delete}

    for name in run.spec.stages:
        stage = stages[name]
        if stage["state"] in DONE:
            continue
        status["currentStage"] = name
        if stage["state"] == "Failed":
            message = f"{name} failed: {stage.get('message', '')} (retry: annotate {RETRY_ANNOTATION})"
            condition("Succeeded", "False", "StageFailed", message)
            condition("Progressing", "False", "StageFailed", message)
            return finish(message)
        objects = stamped(render(run, name), settings(name, run.spec))
        watched = objects[-1]
        child_name = watched["metadata"]["name"]
        child = children.get(child_name) if child_name not in deleting else None

        if child_name in deleting:
            return _progressing(plan, condition, finish, f"{name}: waiting for the old child to go")
        if stage["state"] == "Pending":  # not started for this generation: maybe nothing to do
            verdict = store_verdict(run, name)
            if verdict is not None:
                stages[name] = _ended("Skipped", now, "outputs already in the store for this spec", verdict)
                plan.transitions.append((name, "Skipped"))
                plan.events.append(("Normal", "StageSkipped", f"{name}: outputs already in the store"))
                continue
        if child is None:
            if run.spec.suspend:
                condition("Progressing", "False", "Suspended", f"suspended before {name}")
                return finish(f"suspended before {name}")
            if stage["state"] != "Running":
                identity, owner = sharing(run, name)
                if owner is not None:
                    message = (
                        f"{name}: waiting for run {owner.split('/')[-1]}, which is computing the same {name} "
                        "(same config and inputs); its outputs will be reused"
                    )
                    if stage.get("message") != message:
                        stages[name] = {"state": "Pending", "message": message}
                        plan.events.append(("Normal", "StageShared", message))
                    return _progressing(plan, condition, finish, message)
                if identity is not None:
                    for obj in objects:
                        obj["metadata"]["annotations"][IDENTITY_ANNOTATION] = identity
                problem = preflight(objects)
                if problem is not None:
                    finish("")
                    return fail_stage(plan, name, f"ClusterUnsupported: {problem}", now)
            plan.create.extend(objects)
            # Running without a child in view: created by an earlier pass and not yet seen through
            # the watch (the create then answers 409, harmless), or deleted by hand (made again).
            if stage["state"] != "Running":
                stages[name] = {"state": "Running", "startTime": now, "child": child_name}
                plan.transitions.append((name, "Running"))
                plan.events.append(
                    ("Normal", "StageStarted", f"{name}: created {watched['kind']} {child_name}")
                )
            return _progressing(plan, condition, finish, f"{name}: running")

        observed_digest = (child["metadata"].get("annotations") or {}).get(SPEC_ANNOTATION)
        if observed_digest != watched["metadata"]["annotations"][SPEC_ANNOTATION]:
            if run.spec.suspend:  # suspend never interrupts: the child is replaced on resuming
                message = f"suspended; {name} runs on as started, and is redone with the new spec on resuming"
                condition("Progressing", "False", "Suspended", message)
                return finish(message)
            plan.delete.append(dict(child))
            plan.events.append(("Normal", "SpecChanged", f"{name}: replacing {child_name} (spec changed)"))
            return _progressing(plan, condition, finish, f"{name}: replacing its child after a spec change")

        phase, reason, message = child_phase(child)
        if phase == "Running":
            if stage["state"] != "Running":  # adopted: created before a restart or by an earlier pass
                stages[name] = {
                    "state": "Running",
                    "startTime": stage.get("startTime", now),
                    "child": child_name,
                }
                plan.transitions.append((name, "Running"))
            return _progressing(plan, condition, finish, f"{name}: {message}")
        if phase == "Succeeded":
            verdict = store_verdict(run, name)
            stages[name] = _ended("Succeeded", now, message, verdict, stage, child_name)
            plan.transitions.append((name, "Succeeded"))
            plan.events.append(("Normal", "StageSucceeded", f"{name}: {child_name} succeeded"))
            continue
        finish("")
        return fail_stage(plan, name, f"{reason}: {message}", now)

    was_done = any(c["type"] == "Succeeded" and c["status"] == "True" for c in status.get("conditions") or [])
    condition("Succeeded", "True", "AllStagesDone", "every stage succeeded or was skipped")
    condition("Progressing", "False", "AllStagesDone", "done")
    if not was_done:
        plan.events.append(("Normal", "RunSucceeded", "every stage succeeded or was skipped"))
    return finish("done")


def fail_stage(plan: Plan, stage: str, why: str, now: str) -> Plan:
    """``plan`` changed to fail ``stage`` (and so the run) for the reason ``why``; nothing it would
    have started for the stage is announced. Also how the handlers report a child the API server
    refused to create: a retry or a spec edit starts the stage again."""
    status = plan.status
    previous = status["stages"][stage]
    status["stages"][stage] = _ended("Failed", now, why, None, previous, previous.get("child"))
    failure = f"{stage} failed: {why}"
    generation = status["observedGeneration"]
    for kind in ("Succeeded", "Progressing"):
        status["conditions"] = set_condition(
            status["conditions"], kind, "False", "StageFailed", failure, generation, now
        )
    status["message"] = failure
    plan.transitions = [t for t in plan.transitions if t[0] != stage] + [(stage, "Failed")]
    plan.events = [e for e in plan.events if e[1] != "StageStarted"]
    plan.events.append(("Warning", "StageFailed", f"{stage}: {why}"))
    return plan


def _progressing(plan: Plan, condition, finish, message: str) -> Plan:
    condition("Succeeded", "Unknown", "Running", message)
    condition("Progressing", "True", "StageRunning", message)
    return finish(message)


def _ended(
    state: str,
    now: str,
    message: str,
    verdict: StoreVerdict | None,
    previous: Mapping[str, Any] | None = None,
    child: str | None = None,
) -> dict[str, Any]:
    ended: dict[str, Any] = {"state": state, "endTime": now, "message": message}
    ended["startTime"] = (previous or {}).get("startTime", now)
    if child:
        ended["child"] = child
    if verdict is not None:
        ended["artifacts"] = verdict.artifacts
        ended["metrics"] = verdict.metrics
    return ended
