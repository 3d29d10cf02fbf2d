"""A loopback front that makes `moto_server` answer presigned STS calls the way real STS does.

moto routes a request by its `Authorization` header and checks no signature
(moto in docs/upstream-compat.md). A presigned `GET /?Action=GetCallerIdentity&X-Amz-...` has no
such header, so bare moto answers it as S3, and it would accept a token signed for another cluster.
This front, a plain threaded HTTP server in the test process, sits where STS would be:

- a presigned GET (`X-Amz-Signature` in the query): recompute the SigV4 query signature with the
  secret of its access key and answer 403 `SignatureDoesNotMatch` (or `InvalidClientTokenId` for
  an unknown key) as STS does; when it matches, add the `Authorization` header built from the
  query and forward to moto, which then names the caller;
- anything else (IAM, AssumeRole, instance metadata, ...) is forwarded unchanged;
- every answer passing through is read for `AccessKeyId` + `SecretAccessKey` pairs (IAM
  CreateAccessKey, AssumeRole*, instance-metadata credentials), which is how the front learns
  the secrets it verifies with. `learn()` adds one by hand.

Tests can make it refuse an action (`refusing("AssumeRole", code="AccessDenied")`), and read
`seen` to know which calls reached "STS". Code under test must not know the front exists: for it,
the front's URL is simply the STS endpoint (`AWS_ENDPOINT_URL_STS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from tests.fakes.loopback import LoopbackServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade"}
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """One request that reached the front."""

    method: str
    path: str
    action: str
    presigned: bool
    user_agent: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """An STS error the front answers instead of forwarding."""

    status: int
    code: str
    message: str


def error_xml(code: str, message: str) -> bytes:
    """An STS `ErrorResponse` document."""
    return (
        f'<ErrorResponse xmlns="{STS_NAMESPACE}"><Error><Type>Sender</Type>'
        f"<Code>{code}</Code><Message>{message}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    ).encode()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key for one day, region and service."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def query_signature(
    *, method: str, path: str, params: list[tuple[str, str]], headers: dict[str, str], secret: str
) -> str:
    """Recompute a SigV4 query signature as STS does (the canonical request under
    moto in docs/upstream-compat.md).

    `params` are the decoded query pairs, `headers` the received headers with lower-case names.
    """
    unsigned = sorted((k, v) for k, v in params if k != "X-Amz-Signature")
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in unsigned)
    values = dict(params)
    signed = values.get("X-Amz-SignedHeaders", "").split(";")
    canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join(
        [
            method,
            quote(path or "/", safe="/-_.~"),
            query,
            canonical_headers,
            ";".join(signed),
            EMPTY_SHA256,
        ]
    )
    credential = values.get("X-Amz-Credential", "")
    _, date, region, service, _ = (credential.split("/") + [""] * 5)[:5]
    scope = "/".join([date, region, service, "aws4_request"])
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            values.get("X-Amz-Date", ""),
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = signing_key(secret, date, region, service)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


class StsFront:
    """The front: `start()` binds 127.0.0.1 port 0; `url` is what clients use as STS."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._secrets: dict[str, str] = {}
        self._refusals: dict[str, Refusal] = {}
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self._server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`, the STS endpoint for code under test."""
        assert self._server is not None, "start() first"
        return self._server.url

    def start(self) -> None:
        """Bind a free loopback port and serve in a daemon thread."""
        front = self

        class Handler(_Handler):
            pass

        Handler.front = front
        self._server = LoopbackServer(Handler)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.stop()

    def learn(self, access_key_id: str, secret_access_key: str) -> None:
        """Remember a secret the front could not see pass through."""
        with self._lock:
            self._secrets[access_key_id] = secret_access_key

    def secret(self, access_key_id: str) -> str | None:
        """The secret learnt for an access key, if any."""
        with self._lock:
            return self._secrets.get(access_key_id)

    @contextlib.contextmanager
    def refusing(
        self, action: str, *, status: int = 403, code: str = "AccessDenied", message: str = ""
    ) -> Iterator[None]:
        """Answer every `action` call with an STS error while the block runs."""
        text = message or f"User is not authorized to perform: sts:{action}"
        with self._lock:
            self._refusals[action] = Refusal(status=status, code=code, message=text)
        try:
            yield
        finally:
            with self._lock:
                self._refusals.pop(action, None)

    def actions(self) -> list[str]:
        """The Action of every request seen so far, in order."""
        with self._lock:
            return [s.action for s in self.seen]

    def _record(self, seen: Seen) -> Refusal | None:
        with self._lock:
            self.seen.append(seen)
            return self._refusals.get(seen.action)

    def _learn_from(self, body: bytes) -> None:
        for key, secret in _credential_pairs(body):
            self.learn(key, secret)


class _Handler(BaseHTTPRequestHandler):
    front: StsFront
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest captures nothing useful from an access log."""

    def do_GET(self) -> None:
        """Presigned calls are checked; the rest forwarded."""
        self._handle()

    def do_POST(self) -> None:
        """Forwarded (IAM, AssumeRole, ...)."""
        self._handle()

    def do_PUT(self) -> None:
        """Forwarded (the IMDSv2 token request)."""
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        params = parse_qsl(parts.query, keep_blank_values=True)
        action = dict(params).get("Action", "")
        if not action and body:
            action = dict(parse_qsl(body.decode(errors="replace"))).get("Action", "")
        presigned = self.command == "GET" and any(k == "X-Amz-Signature" for k, _ in params)
        refusal = self.front._record(
            Seen(
                method=self.command,
                path=parts.path,
                action=action,
                presigned=presigned,
                user_agent=self.headers.get("User-Agent", ""),
            )
        )
        if refusal is not None:
            self._answer(
                refusal.status,
                {"Content-Type": "text/xml"},
                error_xml(refusal.code, refusal.message),
            )
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if presigned:
            problem = self._check_signature(parts.path, params)
            if problem is not None:
                self._answer(403, {"Content-Type": "text/xml"}, error_xml(*problem))
                return
            values = dict(params)
            headers["Authorization"] = (
                f"AWS4-HMAC-SHA256 Credential={values['X-Amz-Credential']}, "
                f"SignedHeaders={values['X-Amz-SignedHeaders']}, "
                f"Signature={values['X-Amz-Signature']}"
            )
        status, answer_headers, answer = self._forward(headers, body)
        self.front._learn_from(answer)
        self._answer(status, answer_headers, answer)

    def _check_signature(self, path: str, params: list[tuple[str, str]]) -> tuple[str, str] | None:
        values = dict(params)
        if values.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            return "IncompleteSignature", "Unsupported or missing X-Amz-Algorithm"
        access_key = values.get("X-Amz-Credential", "").split("/")[0]
        secret = self.front.secret(access_key)
        if secret is None:
            return "InvalidClientTokenId", "The security token included in the request is invalid."
        received = {k.lower(): v for k, v in self.headers.items()}
        expected = query_signature(
            method=self.command, path=path, params=params, headers=received, secret=secret
        )
        if not hmac.compare_digest(expected, values.get("X-Amz-Signature", "")):
            return (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None

    def _forward(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(
            self.front.upstream_host, self.front.upstream_port, timeout=30
        )
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            return response.status, kept, answer
        finally:
            connection.close()

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _credential_pairs(body: bytes) -> list[tuple[str, str]]:
    """Every (AccessKeyId, SecretAccessKey) pair in an XML or JSON answer."""
    text = body.strip()
    if text.startswith(b"{"):
        try:
            return list(_json_pairs(json.loads(text)))
        except ValueError:
            return []
    if not text.startswith(b"<"):
        return []
    try:
        root = ET.fromstring(text)  # noqa: S314 - answers of a local moto under test
    except ET.ParseError:
        return []
    pairs = []
    for element in root.iter():
        children = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in element}
        if children.get("AccessKeyId") and children.get("SecretAccessKey"):
            pairs.append((children["AccessKeyId"], children["SecretAccessKey"]))
    return pairs


def _json_pairs(node: object) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        key, secret = node.get("AccessKeyId"), node.get("SecretAccessKey")
        if isinstance(key, str) and isinstance(secret, str):
            yield key, secret
        for value in node.values():
            yield from _json_pairs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _json_pairs(value)
