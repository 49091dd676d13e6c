"""The Kubernetes objects a stage of an EGTRun runs as: pure functions from the run to manifests.

Nothing here talks to a cluster. :func:`render` gives a stage's objects as plain dicts, ready for
the API (the reconcile loop creates them in order and watches the last one):

============ =================================================================================
stage         objects
============ =================================================================================
every stage   ConfigMap ``<run>-spec-<digest>``: the resolved run file, mounted at /etc/egt
prepare       Job ``<run>-prepare`` (one pod)
annotate      Job ``<run>-annotate`` (one pod: the stage parallelises over HTTP requests and
              resumes by shard; the jobs take no part of the annotate pool)
sft           headless Service + Indexed Job ``<run>-sft``: one pod per node under torchrun
probe         Indexed Job ``<run>-probe``: one completion per probe shard (``--part``)
curate        Job ``<run>-curate`` (one pod)
rl            RayJob ``<run>-rl`` (KubeRay ray.io/v1): a CPU head running the driver, GPU workers
evaluate      Job ``<run>-evaluate`` (one pod)
============ =================================================================================

Every child is named deterministically, owned by the run (deleting the run deletes them), labelled
with the run and stage, and reads the run file from the ConfigMap. Credentials reach pods only as
``secretKeyRef`` env vars naming the Secrets in ``spec.cluster``; no secret value is ever rendered.
Jobs never retry (``backoffLimit: 0``): the operator owns retries, and every stage resumes from its
finished shards or checkpoints, so a retry is a new child, not a restarted pod.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from egt.engines.distributed import DEFAULT_PORT, torchrun_command
from egt.spec import (
    API_VERSION,
    KIND,
    STAGES,
    EGTRun,
    EGTRunSpec,
    SpecError,
    StageResources,
    dump_run,
    parse_run,
)

SPEC_DIR = "/etc/egt"
SPEC_PATH = f"{SPEC_DIR}/run.yaml"
SPEC_VOLUME = "spec"  # the pod volume holding the run file
SCRATCH = "/scratch"
MANAGED_BY = "egt-operator"
RUN_LABEL = "egt.dev/run"
STAGE_LABEL = "egt.dev/stage"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
GPU = "nvidia.com/gpu"
RUN_AS = 1000  # the non-root user of the trainer image (uid 1000, as in Ray's own images)
# Ray inside the trainer image: the `ray` pin in pyproject.toml (a test keeps the two equal).
RAY_VERSION = "2.60.0"
# KubeRay validates RayJob names against this (its MaxRayJobNameLength: the RayCluster gets a suffix).
RAYJOB_NAME_LIMIT = 47
# How long a finished RL Ray cluster stays for `kubectl logs` before KubeRay deletes it.
RAY_CLUSTER_TTL_SECONDS = 300
# The Ray head runs the driver, GCS and dashboard, no actors; the spec's per-pod defaults fit it.
RAY_HEAD = StageResources(scratch="20Gi")
# The RayJob's submitter pod only runs `ray job submit` and follows the job's logs.
RAY_SUBMITTER = StageResources(cpu="500m", memory="1Gi", scratch="1Gi")


@dataclass(frozen=True)
class Run:
    """The EGTRun a child belongs to: what its name, labels and ownerReference are made from."""

    name: str
    namespace: str
    uid: str
    spec: EGTRunSpec


def run_from_resource(body: Mapping[str, Any]) -> Run:
    """The run of a custom resource as the API server returns it (validated like ``egt validate``).

    Raises :class:`egt.spec.SpecError` naming every invalid field.
    """
    meta = body["metadata"]
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta["name"]},
        "spec": body.get("spec"),
    }
    source = f"EGTRun {meta['namespace']}/{meta['name']}"
    parsed = parse_run(document, source)
    check_cluster_run(parsed.spec, source)
    return Run(meta["name"], meta["namespace"], meta["uid"], parsed.spec)


def check_cluster_run(spec: EGTRunSpec, source: str) -> None:
    """Raise :class:`egt.spec.SpecError` naming what a run needs on a cluster but not locally.

    The store must be S3: every stage pod has a filesystem of its own, so a path would leave each
    stage's outputs in a container that is gone when the next stage looks for them. An API key
    reaches pods only from a Secret: the teacher's (annotate) and the referee's (rl), when they are
    OpenAI-compatible endpoints, need ``cluster.teacher_secret``.
    """
    problems = []
    if not spec.store.uri.startswith("s3://"):
        problems.append(
            f"spec.store.uri: {spec.store.uri!r} is a path on one machine; on a cluster every stage pod "
            "has its own filesystem and would lose its outputs: use s3://bucket/prefix (with "
            "cluster.s3_secret)"
        )
    for where, endpoint in spec.keyed_endpoints().items():
        if not spec.cluster.teacher_secret:
            problems.append(
                f"spec.{where} calls an OpenAI-compatible endpoint whose key ({endpoint.api_key_env}) "
                "reaches pods only from a Secret: set spec.cluster.teacher_secret"
            )
    if problems:
        raise SpecError(f"{source} cannot run on a cluster:\n" + "\n".join(f"  - {p}" for p in problems))


def render(run: Run, stage: str) -> list[dict[str, Any]]:
    """Every object ``stage`` needs, in creation order; the last one is the one to watch."""
    if stage not in _RENDERERS:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return [config_map(run), *_RENDERERS[stage](run)]


def child_name(run: str, *parts: str, limit: int = 63) -> str:
    """``<run>-<parts>``, a DNS-1035 label of at most ``limit`` characters.

    Services and RayJobs need a letter first, so a run named like ``7b-run`` gets an ``egt-``
    prefix. A name over the limit keeps its stage suffix and trades the end of the run name for
    8 hex digits of the run name's hash, so two long run names never collide.
    """
    suffix = "-" + "-".join(parts)
    prefix = run if run[:1].isalpha() else f"egt-{run}"
    if len(prefix) + len(suffix) <= limit:
        return prefix + suffix
    digest = hashlib.sha256(run.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{prefix[:keep].rstrip('-')}-{digest}{suffix}"


def labels(run: Run, stage: str | None = None) -> dict[str, str]:
    """The labels of every child (and of its pods): who manages it, which run, which stage, in egt's
    own keys and Kubernetes' recommended ones (dashboards and cost reports group by those)."""
    found = {
        "app.kubernetes.io/name": "egt",
        "app.kubernetes.io/instance": run.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        RUN_LABEL: run.name,
    }
    return found | ({"app.kubernetes.io/component": stage, STAGE_LABEL: stage} if stage else {})


def _workload_labels(run: Run, stage: str) -> dict[str, str]:
    """A Job's or RayJob's own labels: with ``cluster.queue``, Kueue's, which it admits by."""
    queue = run.spec.cluster.queue
    return labels(run, stage) | ({KUEUE_QUEUE: queue} if queue else {})


def owner_reference(run: Run) -> dict[str, Any]:
    """The run as controller of a child: deleting the run deletes the child (and its pods)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": run.name,
        "uid": run.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(run: Run, name: str, stage: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": run.namespace,
        "labels": labels(run, stage),
        "ownerReferences": [owner_reference(run)],
    }


def config_map(run: Run) -> dict[str, Any]:
    """The resolved run file (every default spelled out), as every stage pod reads it.

    Named after a digest of its content and immutable: a spec edited while a stage runs gets a new
    ConfigMap, so pods that start later (probe shards beyond the parallelism) never read a
    different run file from the pods already running. Rendering it again for the next stage gives
    the same object (create answers 409: it exists). Of the resource's metadata only the name goes
    into the file: the stages need nothing else (annotations and managed fields stay out).
    """
    text = dump_run(EGTRun(metadata={"name": run.name}, spec=run.spec))
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(run, child_name(run.name, "spec", digest), None),
        "immutable": True,
        "data": {"run.yaml": text},
    }


def resources(run: Run, stage: str) -> StageResources:
    """The stage's pod resources from ``cluster.resources``, the spec's defaults where unlisted.

    With RL off the rl stage only writes its manifest: one pod with the default (GPU-less) resources.
    """
    if stage == "rl" and not run.spec.rl.enabled:
        return StageResources()
    return run.spec.cluster.resources_for(stage)


def _env(run: Run, stage: str) -> list[dict[str, Any]]:
    """The container environment: scratch locations, then credentials as Secret references.

    HOME points at the scratch volume so every cache (the store's mirror under ~/.cache/egt,
    DeepSpeed's compiled ops, Triton) is writable whichever user the image declares. S3 keys go to
    every stage (they all read and write the store); an API key only to the stage that calls the
    endpoint: the teacher's to annotate, the referee's to rl. The key inside ``teacher_secret`` is
    the variable's own name (``api_key_env``). Metrics need no variable: stages read the
    Pushgateway address (``metrics.pushgateway``) from the run file.
    """
    env = [
        {"name": "HOME", "value": SCRATCH},
        {"name": "EGT_WORKDIR", "value": f"{SCRATCH}/work"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # progress reaches `kubectl logs` as it happens
    ]
    cluster = run.spec.cluster
    if cluster.s3_secret:
        env += [
            _secret_env(key, cluster.s3_secret, key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]
    endpoint = {"annotate": run.spec.annotate.teacher, "rl": run.spec.rl.referee}.get(stage)
    if endpoint is not None and endpoint.kind == "openai" and endpoint.api_key_env:  # see check_cluster_run
        env.append(_secret_env(endpoint.api_key_env, cluster.teacher_secret, endpoint.api_key_env))
    return env + [{"name": name, "value": value} for name, value in sorted(cluster.env.items())]


def _shm(run: Run) -> dict[str, Any]:
    size = run.spec.cluster.shm_size
    return {"medium": "Memory", **({"sizeLimit": size} if size else {})}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _container(run: Run, stage: str, name: str, res: StageResources, command: list[str] | None) -> dict:
    """One stage container: the trainer image, its resources, the run file and scratch mounted.

    No CPU limit: throttling would slow data loading and collectives, and the scheduler places by
    requests. Memory limit = request: a stage that outgrows its request fails on its own
    (OOMKilled, a clear reason) instead of pushing the node into memory pressure, where the
    kubelet evicts whichever pods use more than they requested.
    ``FallbackToLogsOnError`` makes the last log line, the stage's one-line failure message
    (jobs/entrypoint.py), the container's termination message, which the operator can report.
    """
    gpus = {GPU: str(res.gpus_per_node)} if res.gpus_per_node else {}
    return {
        "name": name,
        "image": run.spec.cluster.image,
        # No command for Ray containers: KubeRay supplies `ray start` itself.
        **({"command": command} if command is not None else {}),
        "env": _env(run, stage),
        "resources": {
            "requests": {"cpu": res.cpu, "memory": res.memory, "ephemeral-storage": res.scratch, **gpus},
            "limits": {"memory": res.memory, **gpus},
        },
        "volumeMounts": [
            {"name": SPEC_VOLUME, "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH},
            *([{"name": "shm", "mountPath": "/dev/shm"}] if res.gpus_per_node else []),
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod_template(
    run: Run, stage: str, container: dict, res: StageResources, volumes: bool = True, **extra: Any
) -> dict:
    """A pod template around one container: non-root, never restarted, placed on GPU nodes if it has GPUs.

    ``restartPolicy: Never``: a failed container fails its pod and so the child; the operator
    decides about retries. The pod runs as a non-root user with the restricted Pod Security
    profile, and without a service-account token (stages never call the Kubernetes API). GPU pods
    get the spec's nodeSelector and tolerations and a memory-backed /dev/shm (NCCL, DataLoader
    workers and Ray's object store need more than the runtime's 64 MiB default).
    """
    cluster = run.spec.cluster
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # No API token unless the pods run as a named account (workload identity for S3 needs it).
        "automountServiceAccountToken": cluster.service_account is not None,
        **({"serviceAccountName": cluster.service_account} if cluster.service_account else {}),
        **({"priorityClassName": cluster.priority_class} if cluster.priority_class else {}),
        **(
            {"imagePullSecrets": [{"name": name} for name in cluster.image_pull_secrets]}
            if cluster.image_pull_secrets
            else {}
        ),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **extra,
        "containers": [container],
    }
    if volumes:
        spec["volumes"] = [
            {"name": SPEC_VOLUME, "configMap": {"name": config_map(run)["metadata"]["name"]}},
            {"name": "scratch", "emptyDir": {"sizeLimit": res.scratch}},
            *([{"name": "shm", "emptyDir": _shm(run)}] if res.gpus_per_node else []),
        ]
    if res.gpus_per_node and cluster.node_selector:
        spec["nodeSelector"] = dict(cluster.node_selector)
    if res.gpus_per_node and cluster.tolerations:
        spec["tolerations"] = [toleration.model_dump(exclude_none=True) for toleration in cluster.tolerations]
    return {"metadata": {"labels": labels(run, stage)}, "spec": spec}


def stage_command(stage: str) -> list[str]:
    """What a one-process stage pod runs (jobs/<stage>.py)."""
    return ["python", "-m", f"jobs.{stage}", "--spec", SPEC_PATH]


def _job(
    run: Run,
    stage: str,
    name: str,
    command: list[str],
    job: Mapping[str, Any] | None = None,
    pod: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    res = resources(run, stage)
    container = _container(run, stage, stage, res, command)
    deadline = run.spec.cluster.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**_metadata(run, name, stage), "labels": _workload_labels(run, stage)},
        "spec": {
            **(job or {"backoffLimit": 0}),
            **({"activeDeadlineSeconds": deadline} if deadline else {}),
            "template": _pod_template(run, stage, container, res, **(pod or {})),
        },
    }


def single_job(run: Run, stage: str) -> list[dict[str, Any]]:
    """prepare, annotate, curate, evaluate, score, filter: one pod running the stage's entrypoint."""
    return [_job(run, stage, child_name(run.name, stage), stage_command(stage))]


def torchrun_stage(run: Run, stage: str) -> list[dict[str, Any]]:
    """A trainer (sft, scalar) over ``nodes`` pods: a headless Service, then an Indexed Job running
    torchrun on each.

    Pod ``i`` is node ``i`` (``--node-rank=$(JOB_COMPLETION_INDEX)``) and resolves as
    ``<job>-<i>.<service>`` through the Service named in its ``subdomain``; pod 0 hosts the
    rendezvous. ``publishNotReadyAddresses`` publishes those names before any pod is ready (these
    pods have no readiness to report). torchrun starts one process per GPU (one on CPU-only
    pods). Job and Service share one name; a single node gets the same shape, so there is one
    code path. ``backoffLimit: 0`` fails the Job, and stops the other nodes, at the first failed
    pod: one torchrun world cannot continue without a member.
    """
    res = resources(run, stage)
    # Pod hostnames are <job>-<index>: leave room for the index within a 63-character label.
    name = child_name(run.name, stage, limit=62 - len(str(res.nodes - 1)))
    command = torchrun_command(
        res.nodes,
        max(res.gpus_per_node, 1),
        f"{name}-0.{name}",
        DEFAULT_PORT,
        SPEC_PATH,
        module=f"jobs.{stage}",
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(run, name, stage),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {RUN_LABEL: run.name, STAGE_LABEL: stage},
            "ports": [{"name": "rendezvous", "port": DEFAULT_PORT, "targetPort": DEFAULT_PORT}],
        },
    }
    indexed = {
        "completionMode": "Indexed",
        "completions": res.nodes,
        "parallelism": res.nodes,
        "backoffLimit": 0,
    }
    return [service, _job(run, stage, name, command, indexed, {"subdomain": name})]


def probe(run: Run) -> list[dict[str, Any]]:
    """Probing as an Indexed Job: completion ``i`` is pod ``i``, which runs parts ``i·R … i·R + R − 1``
    of ``probe.num_shards`` (R = ``probe.replicas_per_node``, each part a process on its own GPUs).

    ``python -m jobs.probe`` takes its pod from ``JOB_COMPLETION_INDEX``. At most ``nodes`` pods
    run at once. Parts are independent, so a failed pod does not stop the others
    (``backoffLimitPerIndex: 0``, no retry of any index, the Job fails when all have ended): a
    retry by the operator then runs only the parts whose manifests are missing.
    """
    res = resources(run, "probe")
    pods = run.spec.probe.pods
    name = child_name(run.name, "probe", limit=62 - len(str(pods - 1)))
    indexed = {
        "completionMode": "Indexed",
        "completions": pods,
        "parallelism": min(res.nodes, pods),
        "backoffLimitPerIndex": 0,
    }
    return [_job(run, "probe", name, stage_command("probe"), indexed)]


def rl(run: Run) -> list[dict[str, Any]]:
    """The RL stage as a KubeRay RayJob: the driver on a CPU head, actors on ``nodes`` GPU workers.

    ``K8sJobMode`` with a submitter pod template of egt's own: KubeRay's SidecarMode (v1.5 to 1.7)
    injects a submitter container without a securityContext, which a namespace enforcing the
    restricted Pod Security Standard refuses, leaving the head pod, and the stage, waiting for
    ever. KubeRay fills the submitter's ``ray job submit`` command (the container names none). The
    submitter is never retried (``submitterConfig.backoffLimit: 0``): a second submission would
    collide with the running job; an evicted submitter fails the stage, and the operator's retry
    resumes rl from its last checkpoint. Ray runs the entrypoint on the head, where the run file and
    credentials are, and sets ``RAY_ADDRESS`` for it, so ``jobs.rl`` joins this cluster. The head
    starts with ``num-cpus: 0`` and ``num-gpus: 0``: no actor lands beside the driver. Workers
    advertise the GPUs and CPUs of their limits and requests (KubeRay derives ``ray start``
    resources from them). ``backoffLimit: 0``: the operator owns retries. A Ray cluster that does
    not get to run the job within ``cluster.start_deadline_seconds`` fails with KubeRay's reason.
    The Ray cluster is deleted ``ttlSecondsAfterFinished`` after the job ends, freeing the GPUs.
    """
    res = resources(run, "rl")
    cluster = run.spec.cluster
    head = _container(run, "rl", "ray-head", RAY_HEAD, None)
    worker = _container(run, "rl", "ray-worker", res, None)
    submitter = {
        "name": "ray-job-submitter",
        "image": cluster.image,
        "resources": {
            "requests": {
                "cpu": RAY_SUBMITTER.cpu,
                "memory": RAY_SUBMITTER.memory,
                "ephemeral-storage": RAY_SUBMITTER.scratch,
            },
            "limits": {"memory": RAY_SUBMITTER.memory},
        },
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    deadlines = {
        "activeDeadlineSeconds": cluster.active_deadline_seconds,
        "preRunningDeadlineSeconds": cluster.start_deadline_seconds,
    }
    return [
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {
                **_metadata(run, child_name(run.name, "rl", limit=RAYJOB_NAME_LIMIT), "rl"),
                "labels": _workload_labels(run, "rl"),
            },
            "spec": {
                "entrypoint": " ".join(stage_command("rl")),
                "submissionMode": "K8sJobMode",
                "submitterPodTemplate": _pod_template(run, "rl", submitter, RAY_SUBMITTER, volumes=False),
                "submitterConfig": {"backoffLimit": 0},
                "backoffLimit": 0,
                **{key: value for key, value in deadlines.items() if value},
                "shutdownAfterJobFinishes": True,
                "ttlSecondsAfterFinished": RAY_CLUSTER_TTL_SECONDS,
                "rayClusterSpec": {
                    "rayVersion": RAY_VERSION,
                    "headGroupSpec": {
                        "rayStartParams": {"num-cpus": "0", "num-gpus": "0"},
                        "template": _pod_template(run, "rl", head, RAY_HEAD),
                    },
                    "workerGroupSpecs": [
                        {
                            "groupName": "workers",
                            "replicas": res.nodes,
                            "minReplicas": res.nodes,
                            "maxReplicas": res.nodes,
                            "rayStartParams": {},
                            "template": _pod_template(run, "rl", worker, res),
                        }
                    ],
                },
            },
        }
    ]


_RENDERERS = {
    "prepare": lambda run: single_job(run, "prepare"),
    "annotate": lambda run: single_job(run, "annotate"),
    "sft": lambda run: torchrun_stage(run, "sft"),
    "probe": probe,
    "curate": lambda run: single_job(run, "curate"),
    # With RL off the stage only records that; a plain Job, no Ray cluster.
    "rl": lambda run: rl(run) if run.spec.rl.enabled else single_job(run, "rl"),
    "scalar": lambda run: torchrun_stage(run, "scalar"),
    "evaluate": lambda run: single_job(run, "evaluate"),
    "score": lambda run: single_job(run, "score"),
    "filter": lambda run: single_job(run, "filter"),
}


def kuberay_gaps(rayjob: Mapping[str, Any], crd: Mapping[str, Any] | None) -> str | None:
    """Why the cluster's KubeRay cannot run ``rayjob`` as rendered, or None.

    ``crd`` is the installed ``rayjobs.ray.io`` CustomResourceDefinition (None: not installed). An
    older KubeRay's CRD lacks fields egt sets, and the API server prunes unknown fields without a
    word: the deadline (``preRunningDeadlineSeconds``, KubeRay >= 1.6) would silently not apply.
    """
    if crd is None:
        return "KubeRay is not installed: the cluster has no rayjobs.ray.io CustomResourceDefinition"
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"] or [None]
    if served is None:
        return "the installed KubeRay serves no ray.io/v1 RayJob: KubeRay >= 1.6 is needed"
    spec = served.get("schema", {}).get("openAPIV3Schema", {}).get("properties", {}).get("spec", {})
    known = spec.get("properties", {})
    missing = [f"spec.{key}" for key in rayjob["spec"] if key not in known]
    cluster = known.get("rayClusterSpec", {}).get("properties", {})
    missing += [f"spec.rayClusterSpec.{k}" for k in rayjob["spec"]["rayClusterSpec"] if k not in cluster]
    if missing:
        return (
            f"the installed KubeRay's RayJob CRD has no {', '.join(missing)}: KubeRay >= 1.6 is needed "
            "(upgrade its CRDs too: `helm upgrade` leaves a chart's crds/ alone)"
        )
    return None
