"""egt_operator.kube, the operator's and ``egt submit``'s own API client, against a real TLS server.

The operator tests drive it end to end against the API emulator over plain http; here the parts the
emulator cannot show: certificates (a CA, a server certificate and a client certificate made with
openssl), kubeconfig resolution, exec credential plugins and logging in again after a 401.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from egt_operator import kube
from egt_operator.kube import Credentials, Kube, KubeError, LoginError, kubeconfig_credentials


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt; server.crt/key for 127.0.0.1; client.crt/key (CN egt-client), all signed by the CA."""
    folder = tmp_path_factory.mktemp("pki")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req",
        "-x509",
        *key,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=egt-ca",
        cwd=folder,
    )
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req",
            *key,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=egt-{name}",
            cwd=folder,
        )
        (folder / f"{name}.ext").write_text(extension + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=folder,
        )  # fmt: skip
    return folder


class ApiServer(http.server.ThreadingHTTPServer):
    """Answers every request with ``reply`` (status, JSON) when its bearer token is accepted, else 401;
    records (method, path, Authorization, client certificate CN, body) of each."""

    def __init__(self, pki: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
        context.load_cert_chain(pki / "server.crt", pki / "server.key")
        context.verify_mode = ssl.CERT_OPTIONAL  # a token alone may do
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.accepted: set[str | None] = {None}
        self.reply: tuple[int, dict] = (200, {"kind": "EGTRun", "metadata": {"name": "r"}})
        self.seen: list[tuple[str, str, str | None, str | None, dict | None]] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ApiServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        peer = self.connection.getpeercert()
        subject = dict(item[0] for item in peer["subject"])["commonName"] if peer else None
        token = self.headers.get("Authorization")
        self.server.seen.append((self.command, self.path, token, subject, body))
        status, reply = (
            self.server.reply if token in self.server.accepted else (401, {"message": "Unauthorized"})
        )
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server(pki: Path) -> Iterator[ApiServer]:
    api = ApiServer(pki)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    yield api
    api.shutdown()
    api.server_close()


def write_kubeconfig(
    path: Path, server: str, user: dict, cluster: dict | None = None, **context: str
) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", **context}}],
                "current-context": "ctx",
            }
        )
    )
    return path


def test_client_certificate_and_ca_from_a_kubeconfig(server: ApiServer, pki: Path, tmp_path: Path):
    # Files relative to the kubeconfig's folder, and inline base64 data, as kubectl reads them.
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (tmp_path / "certs" / "client.key").write_bytes((pki / "client.key").read_bytes())
    user = {
        "client-certificate-data": base64.b64encode((pki / "client.crt").read_bytes()).decode(),
        "client-key": "certs/client.key",
    }
    path = write_kubeconfig(
        tmp_path / "config", server.url, user, {"certificate-authority": "certs/ca.crt"}, namespace="team-a"
    )
    credentials = kubeconfig_credentials(str(path))
    assert credentials.namespace == "team-a" and credentials.token is None

    answer = Kube(credentials).get("EGTRun", "r", "team-a")

    assert answer["metadata"]["name"] == "r"
    assert server.seen == [
        ("GET", "/apis/egt.dev/v1alpha1/namespaces/team-a/egtruns/r", None, "egt-client", None)
    ]


def test_a_server_the_ca_does_not_vouch_for_is_refused(server: ApiServer, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=someone-else", cwd=other
    )
    strict = Kube(Credentials(server=server.url, ca_pem=(other / "ca.crt").read_text()))
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        strict.get("EGTRun", "r", "default")
    insecure = Kube(Credentials(server=server.url, insecure=True))  # insecure-skip-tls-verify
    assert insecure.get("EGTRun", "r", "default")["kind"] == "EGTRun"


PLUGIN = """
import json, os, pathlib, sys
counter = pathlib.Path(sys.argv[1])
issued = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(issued))
assert json.loads(os.environ["KUBERNETES_EXEC_INFO"])["kind"] == "ExecCredential"
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": os.environ["PREFIX"] + str(issued),
                             "expirationTimestamp": "2099-01-01T00:00:00Z"}}))
"""


def test_an_exec_plugin_logs_in_and_again_after_a_401(
    server: ApiServer, pki: Path, tmp_path: Path, monkeypatch
):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    counter = tmp_path / "issued"
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(tmp_path / "plugin.py"), str(counter)],
            "env": [{"name": "PREFIX", "value": "token-"}],
        }
    }
    ca = {"certificate-authority-data": base64.b64encode((pki / "ca.crt").read_bytes()).decode()}
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", server.url, user, ca)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    server.accepted = {"Bearer token-2"}  # the first token was revoked

    api = Kube()
    assert api.credentials.token == "token-1" and api.credentials.expires.year == 2099
    api.create({"kind": "EGTRun", "metadata": {"name": "r", "namespace": "default"}})

    assert [(method, token) for method, _, token, _, _ in server.seen] == [
        ("POST", "Bearer token-1"),
        ("POST", "Bearer token-2"),
    ]
    assert counter.read_text() == "2"
    server.accepted = set()  # a second 401 in a row is the caller's error, not a loop
    with pytest.raises(KubeError) as refused:
        api.get("EGTRun", "r", "default")
    assert refused.value.status == 401 and counter.read_text() == "3"


def test_api_errors_carry_the_servers_message(server: ApiServer, pki: Path):
    api = Kube(Credentials(server=server.url, ca_pem=(pki / "ca.crt").read_text()))
    cases = {422: True, 403: True, 404: True, 409: False, 429: False, 500: False}
    for status, for_good in cases.items():
        server.reply = (status, {"kind": "Status", "message": f"said {status}"})
        with pytest.raises(KubeError) as caught:
            api.create({"kind": "Job", "metadata": {"name": "j", "namespace": "ns"}})
        assert caught.value.status == status and caught.value.message == f"said {status}"
        assert caught.value.refused_for_good is for_good
    assert KubeError(502, "Bad Gateway", b"<html>").message == "Bad Gateway"


def test_requests_name_their_paths_queries_and_options(server: ApiServer, pki: Path):
    api = Kube(Credentials(server=server.url, ca_pem=(pki / "ca.crt").read_text(), token="t"))
    server.accepted = {"Bearer t"}
    server.reply = (200, {"items": [{"metadata": {"name": "m"}}]})
    assert api.list("ConfigMap", "ns", label_selector="egt.dev/run=a") == [{"metadata": {"name": "m"}}]
    api.delete("Job", "a-sft", "ns", propagation="Foreground")
    api.patch("EGTRun", "a", "ns", {"status": {"x": None}}, sub="status")
    assert [(method, path, body) for method, path, _, _, body in server.seen] == [
        ("GET", "/api/v1/namespaces/ns/configmaps?labelSelector=egt.dev%2Frun%3Da", None),
        ("DELETE", "/apis/batch/v1/namespaces/ns/jobs/a-sft",
         {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}),
        ("PATCH", "/apis/egt.dev/v1alpha1/namespaces/ns/egtruns/a/status", {"status": {"x": None}}),
    ]  # fmt: skip


def test_kubeconfig_problems_are_named(tmp_path: Path):
    with pytest.raises(LoginError, match="no current context"):
        kubeconfig_credentials(str(tmp_path / "absent"))
    path = write_kubeconfig(tmp_path / "config", "https://x", {"token": "t"})
    broken = yaml.safe_load(path.read_text())
    broken["contexts"][0]["context"]["user"] = "nobody"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(LoginError, match="names user 'nobody', not defined"):
        kubeconfig_credentials(str(path))
    oidc = {"auth-provider": {"name": "oidc", "config": {}}}
    path = write_kubeconfig(tmp_path / "config", "https://x", oidc)
    with pytest.raises(LoginError, match=r"auth-provider 'oidc'.*exec credential plugin"):
        kubeconfig_credentials(str(path))
    failing = {
        "exec": {
            "command": sys.executable,
            "args": ["-c", "import sys; sys.exit('token expired: run sso login')"],
        }
    }
    path = write_kubeconfig(tmp_path / "config", "https://x", failing)
    with pytest.raises(LoginError, match="exited 1: token expired: run sso login"):
        kubeconfig_credentials(str(path))


def test_the_first_kubeconfig_to_name_a_thing_wins(tmp_path: Path):
    first = write_kubeconfig(tmp_path / "first", "https://first", {"tokenFile": "token"}, namespace="one")
    (tmp_path / "token").write_text("from-file\n")
    second = write_kubeconfig(tmp_path / "second", "https://second", {"token": "t2"})
    found = kubeconfig_credentials(os.pathsep.join([str(first), str(second)]))
    assert (found.server, found.token, found.namespace) == ("https://first", "from-file", "one")


def test_in_a_pod_the_service_account_is_used(tmp_path: Path, monkeypatch):
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text("PEM")
    (tmp_path / "namespace").write_text("egt-system")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    found = kube.login()
    assert found == Credentials(
        server="https://[fd00::1]:443", namespace="egt-system", token="sa-token", ca_pem="PEM"
    )
