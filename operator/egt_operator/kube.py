"""The Kubernetes API as the operator and ``egt submit`` use it: a handful of JSON requests.

Not the ``kubernetes`` package: importing it costs ~58 MiB of resident memory (its generated model
classes), more than a third of the operator's budget, for about ten calls whose answers are plain
JSON anyway. kopf itself logs in with :func:`login` (``egt_operator.handlers.login``), so neither
needs the package; the operator image does not install it.

Credentials, in this order: the pod's service account (in a cluster), else the current context of
the kubeconfig (``KUBECONFIG``, else ``~/.kube/config``): a bearer token (``token``/``tokenFile``),
a client certificate, or an ``exec`` credential plugin (``aws eks get-token``,
``gke-gcloud-auth-plugin``, ``kubelogin``). A 401 logs in again once (service-account tokens rotate;
exec tokens expire) before it is an error.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import yaml

from egt_operator.crd import GROUP, PLURAL, VERSION

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# kind → (API path prefix, resource plural) for every kind egt reads or writes.
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("api/v1", "configmaps"),
    "Service": ("api/v1", "services"),
    "Event": ("api/v1", "events"),
    "Job": ("apis/batch/v1", "jobs"),
    "RayJob": ("apis/ray.io/v1", "rayjobs"),
    "EGTRun": (f"apis/{GROUP}/{VERSION}", PLURAL),
    "CustomResourceDefinition": ("apis/apiextensions.k8s.io/v1", "customresourcedefinitions"),
}


class LoginError(RuntimeError):
    """No credentials could be found or made; the message says where egt looked."""


class KubeError(Exception):
    """An API request answered with an error status."""

    def __init__(self, status: int, reason: str, body: bytes | str = b"") -> None:
        self.status, self.reason = status, reason
        self.body = body.decode(errors="replace") if isinstance(body, bytes) else body
        super().__init__(f"{status} {reason}: {self.message}")

    @property
    def message(self) -> str:
        """The API server's own message (its Status body's), else the HTTP reason."""
        try:
            return json.loads(self.body)["message"]
        except (TypeError, ValueError, KeyError):
            return self.reason

    @property
    def refused_for_good(self) -> bool:
        """A 4xx that a repeat of the same request would get again: invalid, forbidden (over quota,
        a policy webhook), not found. 409 (exists: adopted) and 429 (throttled) are not."""
        return 400 <= self.status < 500 and self.status not in (409, 429)


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are; PEM text, not paths, for the TLS parts."""

    server: str
    namespace: str = "default"
    token: str | None = None
    ca_pem: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    insecure: bool = False
    expires: datetime | None = None  # an exec plugin's token: log in again after it


def login() -> Credentials:
    """The service account's credentials inside a pod, else the kubeconfig's current context."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if host and port and (SERVICE_ACCOUNT / "token").exists():
        host = f"[{host}]" if ":" in host else host
        namespace = SERVICE_ACCOUNT / "namespace"
        return Credentials(
            server=f"https://{host}:{port}",
            namespace=namespace.read_text().strip() if namespace.exists() else "default",
            token=(SERVICE_ACCOUNT / "token").read_text().strip(),
            ca_pem=(SERVICE_ACCOUNT / "ca.crt").read_text(),
        )
    return kubeconfig_credentials()


def kubeconfig_credentials(paths: str | None = None) -> Credentials:
    """The current context of the kubeconfig files in ``paths`` (``KUBECONFIG``'s syntax: the first
    file naming a context, cluster or user wins), relative file names read beside their file."""
    listed = paths if paths is not None else os.environ.get("KUBECONFIG", "")
    files = [Path(p).expanduser() for p in listed.split(os.pathsep) if p] or [
        Path("~/.kube/config").expanduser()
    ]
    current, found = None, {"contexts": {}, "clusters": {}, "users": {}}
    for file in files:
        if not file.exists():
            continue
        config = yaml.safe_load(file.read_text()) or {}
        current = current or config.get("current-context")
        for section, entries in found.items():
            for entry in config.get(section) or []:
                value = entry.get(section[:-1]) or {}
                entries.setdefault(entry["name"], (value, file.parent))
    if not current:
        where = ", ".join(str(f) for f in files)
        raise LoginError(f"no Kubernetes credentials: not in a pod, and no current context in {where}")
    if current not in found["contexts"]:
        raise LoginError(f"kubeconfig: the current context {current!r} is not defined")
    context, _ = found["contexts"][current]
    for part in ("cluster", "user"):
        if context.get(part) not in found[f"{part}s"]:
            raise LoginError(
                f"kubeconfig: context {current!r} names {part} {context.get(part)!r}, not defined"
            )
    cluster, cluster_dir = found["clusters"][context["cluster"]]
    user, user_dir = found["users"][context["user"]]
    token = user.get("token")
    if user.get("tokenFile"):
        token = (user_dir / user["tokenFile"]).read_text().strip()
    cert, key = _pem(user, "client-certificate", user_dir), _pem(user, "client-key", user_dir)
    expires = None
    if user.get("auth-provider") and not (token or user.get("exec")):
        provider = user["auth-provider"].get("name")
        raise LoginError(
            f"kubeconfig user {context['user']!r} logs in with auth-provider {provider!r}, which egt does "
            "not read (Kubernetes deprecated it): use the provider's exec credential plugin"
        )
    if user.get("exec"):
        issued = _exec_credential(user["exec"], context["user"])
        token = issued.get("token") or token
        cert, key = issued.get("clientCertificateData") or cert, issued.get("clientKeyData") or key
        if issued.get("expirationTimestamp"):
            expires = datetime.fromisoformat(issued["expirationTimestamp"].replace("Z", "+00:00"))
    return Credentials(
        server=cluster["server"],
        namespace=context.get("namespace") or "default",
        token=token,
        ca_pem=_pem(cluster, "certificate-authority", cluster_dir),
        cert_pem=cert,
        key_pem=key,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        expires=expires,
    )


def _pem(entry: Mapping[str, Any], field: str, folder: Path) -> str | None:
    """A kubeconfig's ``field-data`` (base64) or ``field`` (a file path), as PEM text."""
    if entry.get(f"{field}-data"):
        return base64.b64decode(entry[f"{field}-data"]).decode()
    if entry.get(field):
        return (folder / entry[field]).read_text()
    return None


def _exec_credential(plugin: Mapping[str, Any], user: str) -> dict[str, Any]:
    """Run a kubeconfig ``exec`` plugin (client.authentication.k8s.io ExecCredential) for its status."""
    command = [plugin["command"], *(plugin.get("args") or [])]
    env = {**os.environ, **{item["name"]: item["value"] for item in plugin.get("env") or []}}
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": plugin.get("apiVersion"), "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LoginError(
            f"kubeconfig user {user!r}: credential plugin {command[0]!r} did not run: {error}"
        ) from None
    if done.returncode != 0:
        raise LoginError(
            f"kubeconfig user {user!r}: credential plugin {command[0]!r} exited {done.returncode}: "
            f"{done.stderr.strip()[-500:]}"
        )
    try:
        return json.loads(done.stdout)["status"]
    except (ValueError, KeyError):
        raise LoginError(
            f"kubeconfig user {user!r}: credential plugin {command[0]!r} printed no ExecCredential"
        ) from None


def resource_path(
    kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None
) -> str:
    """The API path of a kind's collection, or of one object (and one of its subresources)."""
    if kind not in RESOURCES:
        raise ValueError(f"no API path known for kind {kind}")
    prefix, plural = RESOURCES[kind]
    parts = [prefix] + (["namespaces", namespace] if namespace else []) + [plural]
    parts += [quote(name, safe="")] if name else []
    parts += [sub] if sub else []
    return "/" + "/".join(parts)


class Kube:
    """A thread-safe JSON client of one API server: one connection pool, credentials renewed on a
    401 or when an exec plugin's token has expired."""

    def __init__(self, credentials: Credentials | None = None, timeout: float = 60.0) -> None:
        self._guard = threading.Lock()
        self._timeout = urllib3.Timeout(connect=10.0, read=timeout)
        self._use(credentials or login())

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def _use(self, credentials: Credentials) -> None:
        self._credentials = credentials
        # Connection errors are retried (nothing was sent); a request that reached the server is not.
        retries = urllib3.Retry(connect=3, read=0, redirect=0, status=0, other=0)
        context = _tls_context(credentials) if credentials.server.startswith("https") else None
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=4, ssl_context=context, retries=retries)

    def _fresh(self) -> Credentials:
        with self._guard:
            expires = self._credentials.expires
            if expires is not None and expires <= datetime.now(UTC):
                self._use(login())
            return self._credentials

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request; the answer's JSON (None when ``method`` is DELETE or the answer is empty).
        An error status raises :class:`KubeError`."""
        for attempt in (1, 2):
            credentials = self._fresh()
            headers = {"Accept": "application/json", "User-Agent": "egt"}
            if body is not None:
                headers["Content-Type"] = content_type
            if credentials.token:
                headers["Authorization"] = f"Bearer {credentials.token}"
            url = credentials.server.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
            payload = None if body is None else json.dumps(body).encode()
            response = self._pool.request(method, url, body=payload, headers=headers, timeout=self._timeout)
            if response.status == 401 and attempt == 1:
                with self._guard:
                    if self._credentials is credentials:
                        self._use(login())
                continue
            if response.status >= 400:
                raise KubeError(response.status, response.reason or "", response.data)
            if method == "DELETE" or not response.data:
                return None
            return json.loads(response.data)
        raise AssertionError("unreachable")

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.request("GET", resource_path(kind, namespace, name))

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return self.request("GET", resource_path(kind, namespace), query=query).get("items") or []

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", resource_path(obj["kind"], obj["metadata"]["namespace"]), obj)

    def patch(
        self, kind: str, name: str, namespace: str, patch: Mapping[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        path = resource_path(kind, namespace, name, sub)
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, kind: str, name: str, namespace: str, propagation: str | None = None) -> None:
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        self.request("DELETE", resource_path(kind, namespace, name), options if propagation else None)


def _tls_context(credentials: Credentials) -> ssl.SSLContext:
    context = (
        ssl.create_default_context(cadata=credentials.ca_pem)
        if credentials.ca_pem
        else ssl.create_default_context()
    )
    if credentials.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if credentials.cert_pem and credentials.key_pem:
        # ssl reads a client certificate only from files: written private (0600), read, removed.
        with tempfile.TemporaryDirectory(prefix="egt-kube-") as folder:
            cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            for path, text in ((cert, credentials.cert_pem), (key, credentials.key_pem)):
                path.touch(mode=0o600)
                path.write_text(text)
            context.load_cert_chain(cert, key)
    return context
