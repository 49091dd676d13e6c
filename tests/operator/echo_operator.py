"""A throwaway kopf operator for the harness's own tests (tests/operator/test_cluster.py).

On an EGTRun's creation it creates a ConfigMap of the same name, reports through the status
subresource and posts an Event; on deletion (kopf's finalizer holds the run until then) it deletes
the ConfigMap.
Run by ``kopf run -m tests.operator.echo_operator`` against the emulator, like the real operator.
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from egt_operator.children import RUN_LABEL
from egt_operator.crd import GROUP, PLURAL, VERSION


@kopf.on.startup()
def login(**_: Any) -> None:
    """The ``kubernetes`` client reads the same KUBECONFIG kopf logged in with."""
    config.load_kube_config()


@kopf.on.create(GROUP, VERSION, PLURAL)
def echo(body: kopf.Body, name: str, namespace: str, uid: str, patch: kopf.Patch, **_: Any) -> None:
    """A child to show the operator acted, a status to show it can write one (``currentStage`` must
    be a stage the CRD lists: the API server validates status too), and an Event, as the real
    operator reports progress."""
    config_map = {"metadata": {"name": name, "labels": {RUN_LABEL: name}}, "data": {"uid": uid}}
    client.CoreV1Api().create_namespaced_config_map(namespace, config_map)
    patch.status["currentStage"] = "prepare"
    patch.status["message"] = f"echoed {name}"
    kopf.event(body, type="Normal", reason="Echoed", message=f"ConfigMap {name} created")


@kopf.on.delete(GROUP, VERSION, PLURAL)
def unecho(name: str, namespace: str, **_: Any) -> None:
    """Delete the child: the harness's API server has no garbage collector either."""
    try:
        client.CoreV1Api().delete_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
