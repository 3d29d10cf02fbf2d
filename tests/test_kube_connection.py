"""connection_from and open_client: in-cluster, kubeconfig, --master, token files, client certs."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authd.server.kube import KubeError
from authd.server.kube.connection import BearerAuth, Connection, connection_from, open_client
from tests.fakes.loopback import LoopbackServer

ENV = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}


@dataclass(frozen=True)
class Pki:
    """A throwaway CA, a serving certificate for 127.0.0.1 and a client certificate, as PEM."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes

    def write(self, directory: Path) -> dict[str, Path]:
        """Every PEM in its own file under `directory`."""
        paths = {}
        for name in ("ca", "server_cert", "server_key", "client_cert", "client_key"):
            paths[name] = directory / f"{name}.pem"
            paths[name].write_bytes(getattr(self, name))
        return paths


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any], *, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def make_pki() -> Pki:
    """A new CA with one serving and one client certificate (CN `authd-client`)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca = _issue("test-ca", ca_key, (ca_name, ca_key), ca=True)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    server = _issue("127.0.0.1", server_key, (ca_name, ca_key), ca=False)
    client = _issue("authd-client", client_key, (ca_name, ca_key), ca=False)
    pem = serialization.Encoding.PEM
    return Pki(
        ca=ca.public_bytes(pem),
        server_cert=server.public_bytes(pem),
        server_key=_key_pem(server_key),
        client_cert=client.public_bytes(pem),
        client_key=_key_pem(client_key),
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    """One PKI for the module (key generation is the slow part)."""
    return make_pki()


def kubeconfig(path: Path, *, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    """Write a one-context kubeconfig; its path as a string."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c1", "cluster": cluster}],
        "users": [{"name": "u1", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c1", "user": "u1"}}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def b64(data: bytes) -> str:
    """Base64 text as kubeconfig `*-data` fields hold it."""
    return base64.b64encode(data).decode()


def test_in_cluster_reads_env_token_and_ca(tmp_path: Path, pki: Pki) -> None:
    """Both flags empty: the service host/port from env, the token and the CA from their files."""
    files = pki.write(tmp_path)
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    conn = connection_from(
        kubeconfig="", master="", env=ENV, token_file=str(token), ca_file=str(files["ca"])
    )
    assert (conn.server, conn.token_file, conn.token) == (
        "https://10.0.0.1:443",
        str(token),
        "sa-token",
    )
    assert [c["subject"] for c in conn.ssl_context.get_ca_certs()] == [
        ((("commonName", "test-ca"),),)
    ]
    ipv6 = connection_from(
        kubeconfig="",
        master="",
        env={"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"},
        token_file=str(token),
        ca_file=str(files["ca"]),
    )
    assert ipv6.server == "https://[fd00::1]:443"


def test_in_cluster_needs_env_and_token(tmp_path: Path) -> None:
    """Outside a cluster (no service env) or without a token file, the error names the gap."""
    with pytest.raises(KubeError, match="KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"):
        connection_from(kubeconfig="", master="", env={})
    with pytest.raises(KubeError, match="cannot read the token file"):
        connection_from(
            kubeconfig="", master="", env=ENV, token_file=str(tmp_path / "none"), ca_file=""
        )


def test_in_cluster_unreadable_ca_falls_back_to_system_roots(tmp_path: Path) -> None:
    """As client-go, an unreadable in-cluster CA is logged and the system's roots are used."""
    token = tmp_path / "token"
    token.write_text("t")
    conn = connection_from(
        kubeconfig="", master="", env=ENV, token_file=str(token), ca_file=str(tmp_path / "no-ca")
    )
    assert conn.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_kubeconfig_token_relative_ca_and_master_override(tmp_path: Path, pki: Pki) -> None:
    """Relative file names resolve against the kubeconfig's folder; --master replaces the server."""
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_bytes(pki.ca)
    (tmp_path / "tok").write_text("from-file\n")
    path = kubeconfig(
        tmp_path / "kc.yaml",
        cluster={"server": "https://api.example:6443", "certificate-authority": "certs/ca.crt"},
        user={"tokenFile": "tok"},
    )
    conn = connection_from(kubeconfig=path, master="", env={})
    assert (conn.server, conn.token, conn.token_file) == (
        "https://api.example:6443",
        "from-file",
        str(tmp_path / "tok"),
    )
    assert len(conn.ssl_context.get_ca_certs()) == 1
    over = connection_from(kubeconfig=path, master="https://other:443", env=ENV)
    assert over.server == "https://other:443"
    static = kubeconfig(tmp_path / "s.yaml", cluster={"server": "h:1"}, user={"token": "abc"})
    conn = connection_from(kubeconfig=static, master="", env={})
    assert (conn.server, conn.token, conn.token_file) == ("http://h:1", "abc", "")


def test_master_alone_is_the_whole_configuration() -> None:
    """--master without --kubeconfig: that URL, no credentials, the system's roots."""
    conn = connection_from(kubeconfig="", master="https://10.1.1.1:6443/", env=ENV)
    assert (conn.server, conn.token, conn.token_file) == ("https://10.1.1.1:6443", "", "")


@pytest.mark.parametrize(
    ("user", "what"),
    [
        ({"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}, "exec"),
        ({"auth-provider": {"name": "gcp"}}, "auth-provider"),
    ],
)
def test_plugin_users_are_refused(tmp_path: Path, user: dict[str, Any], what: str) -> None:
    """An exec-plugin or auth-provider user is refused, naming the kubeconfig and the user."""
    path = kubeconfig(tmp_path / "kc.yaml", cluster={"server": "https://h:1"}, user=user)
    with pytest.raises(KubeError) as caught:
        connection_from(kubeconfig=path, master="", env={})
    assert str(caught.value).startswith(f"kubeconfig {path}: user 'u1' gets its credentials from")
    assert what in str(caught.value)


def test_broken_kubeconfigs_name_the_problem(tmp_path: Path, pki: Pki) -> None:
    """Missing file, context, server, or CA with insecure: each error names the kubeconfig."""
    with pytest.raises(KubeError, match="cannot read"):
        connection_from(kubeconfig=str(tmp_path / "none.yaml"), master="", env={})
    (tmp_path / "noctx.yaml").write_text("apiVersion: v1\nkind: Config\ncurrent-context: x\n")
    with pytest.raises(KubeError, match="no context named 'x'"):
        connection_from(kubeconfig=str(tmp_path / "noctx.yaml"), master="", env={})
    path = kubeconfig(tmp_path / "k.yaml", cluster={}, user={"token": "t"})
    with pytest.raises(KubeError, match="cluster 'c1' has no server"):
        connection_from(kubeconfig=path, master="", env={})
    both = {"server": "https://h:1", "insecure-skip-tls-verify": True}
    path = kubeconfig(
        tmp_path / "i.yaml", cluster={**both, "certificate-authority-data": b64(pki.ca)}, user={}
    )
    with pytest.raises(KubeError, match="insecure-skip-tls-verify is not allowed"):
        connection_from(kubeconfig=path, master="", env={})
    path = kubeconfig(tmp_path / "j.yaml", cluster=both, user={})
    assert (
        connection_from(kubeconfig=path, master="", env={}).ssl_context.verify_mode == ssl.CERT_NONE
    )


def test_token_file_is_reread_when_it_rotates(tmp_path: Path) -> None:
    """A rotated token file is picked up by the next request; an unreadable one keeps the last."""
    token = tmp_path / "token"
    token.write_text("first")
    auth = BearerAuth(token="static", token_file=str(token))
    assert auth.current() == "first"
    token.write_text("second-token")
    assert auth.current() == "second-token"
    token.unlink()
    assert auth.current() == "second-token"
    assert BearerAuth(token="static").current() == "static"


async def test_open_client_sends_the_rotated_token(tmp_path: Path) -> None:
    """Over a client from open_client, the second request carries the token written in between."""
    token = tmp_path / "token"
    token.write_text("one")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(200, json={"kind": "ConfigMap"})

    ctx = ssl.create_default_context()
    conn = Connection(server="https://kube.test", ssl_context=ctx, token_file=str(token))
    async with open_client(conn, transport=httpx.MockTransport(handler)) as client:
        await client.get("/api/v1/namespaces/kube-system/configmaps/aws-auth")
        os.replace(_written(tmp_path / "new", "two"), token)
        await client.get("/api/v1/namespaces/kube-system/configmaps/aws-auth")
    assert seen == ["Bearer one", "Bearer two"]


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def mtls_server(tmp_path: Path, pki: Pki) -> Iterator[LoopbackServer]:
    """HTTPS on 127.0.0.1 that requires a client certificate from the PKI and echoes its CN."""
    files = pki.write(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files["ca"]))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(files["server_cert"], files["server_key"])

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def do_GET(self) -> None:
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            cn = dict(pair[0] for pair in peer["subject"])["commonName"]
            body = json.dumps({"cn": cn, "auth": self.headers.get("authorization", "")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = LoopbackServer(Echo, tls=context)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("form", ["data", "files"])
async def test_client_certificate_is_presented(
    tmp_path: Path, pki: Pki, mtls_server: LoopbackServer, form: str
) -> None:
    """A kubeconfig client certificate (inline data or files) passes a real mTLS handshake."""
    files = pki.write(tmp_path)
    if form == "data":
        cluster = {"server": mtls_server.url, "certificate-authority-data": b64(pki.ca)}
        user = {
            "client-certificate-data": b64(pki.client_cert),
            "client-key-data": b64(pki.client_key),
        }
    else:
        cluster = {"server": mtls_server.url, "certificate-authority": str(files["ca"])}
        user = {"client-certificate": "client_cert.pem", "client-key": "client_key.pem"}
    path = kubeconfig(tmp_path / "kc.yaml", cluster=cluster, user=user)
    async with open_client(connection_from(kubeconfig=path, master="", env={})) as client:
        assert await client.get("/api/v1/namespaces/default") == {"cn": "authd-client", "auth": ""}


def test_client_certificate_without_key_is_refused(tmp_path: Path, pki: Pki) -> None:
    """A certificate without its key is a configuration error naming the problem."""
    path = kubeconfig(
        tmp_path / "kc.yaml",
        cluster={"server": "https://h:1"},
        user={"client-certificate-data": b64(pki.client_cert)},
    )
    with pytest.raises(KubeError, match="needs both the certificate and the key"):
        connection_from(kubeconfig=path, master="", env={})
