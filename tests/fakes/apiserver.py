"""A stand-in for kube-apiserver's authentication path, speaking its real wire protocol.

kube-apiserver cannot run here. This fake does what it does with a bearer token when
`--authentication-token-webhook-config-file` is set: it reads the webhook kubeconfig (server URL
and CA data), POSTs a `TokenReview` (authentication.k8s.io/v1) to the webhook, and treats an
answer of 200 with `status.authenticated: true` as the user; anything else is 401 Unauthorized.
It serves `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`, which is what
`kubectl auth whoami` calls, so kubectl shows exactly the user the webhook returned.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.loopback import LoopbackServer

UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}
SELF_SUBJECT_REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def serving_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost / 127.0.0.1: (cert path, key path)."""
    import datetime
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "apiserver.crt", directory / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class WebhookClient:
    """kube-apiserver's side of the token webhook, configured from the webhook kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        doc = yaml.safe_load(kubeconfig.read_text())
        cluster = doc["clusters"][0]["cluster"]
        self.url = cluster["server"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self._context = ssl.create_default_context(cadata=ca)
        self.reviews: list[dict[str, Any]] = []

    def review(self, token: str) -> dict[str, Any] | None:
        """The user the webhook vouches for, or None when it refuses."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token},
        }
        with httpx.Client(verify=self._context, timeout=30) as client:
            response = client.post(self.url, json=body)
        answer = response.json() if response.status_code == 200 else {}
        self.reviews.append({"status": response.status_code, "answer": answer})
        status = answer.get("status", {})
        return status.get("user") if status.get("authenticated") else None


class FakeApiServer:
    """HTTPS on 127.0.0.1 port 0; `start()` then use `url` and `ca_file` in a kubeconfig."""

    def __init__(self, webhook_kubeconfig: Path) -> None:
        self.webhook = WebhookClient(webhook_kubeconfig)
        self._dir = tempfile.TemporaryDirectory(prefix="fake-apiserver-")
        self.ca_file, key_file = serving_cert(Path(self._dir.name))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ca_file, key_file)
        self._context = context
        self._server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        """`https://127.0.0.1:<port>`."""
        assert self._server is not None, "start() first"
        return self._server.url

    def start(self) -> None:
        """Serve in a background thread."""
        self._server = LoopbackServer(_handler_for(self), tls=self._context)

    def stop(self) -> None:
        """Stop serving and remove the certificate files."""
        if self._server is not None:
            self._server.stop()
        self._dir.cleanup()


def _handler_for(api: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            auth = self.headers.get("authorization", "")
            user = api.webhook.review(auth[7:]) if auth.startswith("Bearer ") else None
            if user is None:
                self._json(401, UNAUTHORIZED)
            elif self.command == "POST" and self.path.split("?")[0] == SELF_SUBJECT_REVIEW:
                # kubectl sends this request as protobuf; its spec is empty, so it is not read.
                self._json(201, _self_subject_review(user))
            else:
                self._json(
                    404,
                    {
                        **UNAUTHORIZED,
                        "reason": "NotFound",
                        "code": 404,
                        "message": "the server could not find the requested resource",
                    },
                )

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _self_subject_review(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": user},
    }
