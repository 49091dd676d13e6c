"""``egt submit`` and ``egt status``: a run on a cluster from CI or a terminal.

``egt submit FILE --wait`` validates the run file locally (exit 2 with every invalid field named),
creates the EGTRun (or updates the spec of an existing one), then follows its status until the
``Succeeded`` condition of the submitted generation is True (exit 0) or False (exit 1, with the
failing stage's message), or ``--timeout`` passes (exit 3; the run goes on). Credentials and the
namespace come from the kubeconfig (``KUBECONFIG``) or the pod's service account.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from egt.spec import STAGES, EGTRun, SpecError, dump_run, parse_run
from egt_operator.children import check_cluster_run
from egt_operator.crd import GROUP, VERSION
from egt_operator.kube import Kube, KubeError

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT = 0, 1, 2, 3


def kube_client(namespace: str | None) -> tuple[Kube, str]:
    """The API client and the namespace: ``namespace``, else the pod's or kubeconfig context's."""
    api = Kube()
    return api, namespace or api.credentials.namespace


def submit(
    path: Path,
    *,
    name: str | None = None,
    namespace: str | None = None,
    wait: bool = False,
    timeout: float | None = None,
    poll_seconds: float = 2.0,
    out: TextIO = sys.stdout,
) -> int:
    """Create or update the run in ``path`` (renamed to ``name`` if given); follow it with ``wait``."""

    document = yaml.safe_load(path.read_text())
    if name:
        document.setdefault("metadata", {})["name"] = name
    try:
        run = parse_run(document, str(path))  # exactly what is sent
        check_cluster_run(run.spec, str(path))
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    api, namespace = kube_client(namespace)
    code, created = apply_run(api, namespace, run.name, document, out)
    if created is None:
        return code
    if not wait:
        return EXIT_OK
    generation = int(created["metadata"].get("generation") or 1)
    return follow(
        lambda: api.get("EGTRun", run.name, namespace),
        generation,
        timeout,
        poll_seconds,
        out,
    )


def apply_run(
    api: Kube, namespace: str, name: str, document: Mapping[str, Any], out: TextIO
) -> tuple[int, Mapping[str, Any] | None]:
    """Create the EGTRun, or update the spec of an existing one: (exit code, the object as stored)."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EGTRun", **document}
    body["metadata"] = {**document.get("metadata", {}), "name": name, "namespace": namespace}
    try:
        created = api.create(body)
        print(f"egtrun/{name} created in {namespace}", file=out)
    except KubeError as error:
        if error.status == 422:
            print(f"egt submit: the cluster rejected the run: {error.message}", file=sys.stderr)
            return EXIT_INVALID, None
        if error.status != 409:
            raise
        created = api.patch("EGTRun", name, namespace, {"spec": body["spec"]})
        print(f"egtrun/{name} updated in {namespace}", file=out)
    return EXIT_OK, created


def submit_sweep(
    runs: Mapping[str, EGTRun],
    namespace: str | None = None,
    wait: bool = False,
    timeout: float | None = None,
    poll_seconds: float = 2.0,
    out: TextIO = sys.stdout,
) -> int:
    """One EGTRun per arm (labelled with the sweep and arm); with ``wait``, follow them all.

    The operator shares stages between the runs (a stage another run is computing with the same
    identity is waited for, then reused), so SFT and probing run once for the sweep. The exit code
    is the worst of the arms': 0 all succeeded, 1 one failed, 3 timed out.
    """
    try:
        for run in runs.values():
            check_cluster_run(run.spec, f"arm run {run.name}")
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    api, namespace = kube_client(namespace)
    generations = {}
    for run in runs.values():
        document = yaml.safe_load(dump_run(run))
        code, created = apply_run(api, namespace, run.name, document, out)
        if created is None:
            return code
        generations[run.name] = int(created["metadata"].get("generation") or 1)
    if not wait:
        return EXIT_OK
    deadline = None if timeout is None else time.monotonic() + timeout
    codes = []
    for name, generation in generations.items():
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        read = lambda name=name: api.get("EGTRun", name, namespace)  # noqa: E731
        codes.append(follow(read, generation, left, poll_seconds, out))
    return max(codes)


def follow(
    read: Callable[[], Mapping[str, Any]],
    generation: int,
    timeout: float | None,
    poll_seconds: float,
    out: TextIO,
) -> int:
    """Print each stage transition until the run of ``generation`` ends; the exit code says how."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        run = read()
        status = run.get("status") or {}
        current = int(status.get("observedGeneration") or 0) >= generation
        if current:
            for stage in STAGES:
                entry = (status.get("stages") or {}).get(stage) or {}
                state = entry.get("state", "Pending")
                if seen.get(stage, "Pending") != state:
                    seen[stage] = state
                    child = f" ({entry['child']})" if entry.get("child") else ""
                    print(f"{time.strftime('%H:%M:%S')} {stage}: {state}{child}", file=out, flush=True)
            succeeded = _condition(status, "Succeeded")
            if succeeded.get("status") == "True":
                print(f"egtrun/{run['metadata']['name']} succeeded", file=out)
                return EXIT_OK
            if succeeded.get("status") == "False":
                print(f"egtrun/{run['metadata']['name']} failed: {succeeded.get('message')}", file=sys.stderr)
                return EXIT_FAILED
        if deadline is not None and time.monotonic() > deadline:
            where = status.get("currentStage") if current else "not yet seen by the operator"
            print(
                f"egt submit: timed out after {timeout:g} s; the run goes on (at {where}); "
                f"follow it with `egt status {run['metadata']['name']}`",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        time.sleep(poll_seconds)


def status(name: str, namespace: str | None = None, out: TextIO = sys.stdout) -> int:
    """Print the run's stages and conditions; exit 1 when it failed, 0 otherwise."""
    api, namespace = kube_client(namespace)
    try:
        run = api.get("EGTRun", name, namespace)
    except KubeError as error:
        if error.status == 404:
            print(f"egt status: no egtrun/{name} in namespace {namespace}", file=sys.stderr)
            return EXIT_FAILED
        raise
    print(render_status(run), file=out)
    return (
        EXIT_FAILED if _condition(run.get("status") or {}, "Succeeded").get("status") == "False" else EXIT_OK
    )


def render_status(run: Mapping[str, Any]) -> str:
    """A plain-text table of the run's stages, then its conditions."""
    status = run.get("status") or {}
    rows = [("STAGE", "STATE", "CHILD", "STARTED", "ENDED", "MESSAGE")]
    listed = status.get("stages") or {}
    for stage in [name for name in STAGES if name in listed]:  # the run's own stages (its kind's)
        entry = (status.get("stages") or {}).get(stage) or {}
        rows.append(
            (
                stage,
                entry.get("state", "Pending"),
                entry.get("child", ""),
                entry.get("startTime", ""),
                entry.get("endTime", ""),
                entry.get("message", ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5] for row in rows
    ]
    lines.append("")
    for condition in status.get("conditions") or []:
        lines.append(
            f"{condition['type']}={condition['status']} ({condition['reason']}): {condition['message']}"
        )
    return "\n".join(line.rstrip() for line in lines)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})
