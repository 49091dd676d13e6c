"""The Kubernetes API emulator, its clients and the operator process (tests/operator/cluster.py)."""

from tests.operator.cluster import kube, kube_client, kubeconfig, kubelet, operator_process  # noqa: F401
