"""The Kubernetes API emulator, its clients and the operator process (tests/operator/cluster.py)."""

import uuid

import pytest

from tests.operator.cluster import kube, kube_client, kubeconfig, kubelet, operator_process  # noqa: F401


@pytest.fixture
def store_uri(s3_server) -> str:
    """A fresh S3 prefix for a cluster run's store (a cluster run's pods share nothing else); the
    session's S3 credentials are in the environment every operator process inherits."""
    return f"{s3_server.uri}/{uuid.uuid4().hex}"
