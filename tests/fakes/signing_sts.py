"""An STS stand-in that checks signatures: it answers an identity only to tokens it signed.

tests/fakes/sts_standin.py answers any signature, which is right for fault tests but cannot tell
a false accept from a real one. The fuzzers need an STS whose "yes" means something, without
moto's cost per request: this one signs with an HMAC key only it and `sign` know. A request is
answered with Alice's identity only when its `X-Amz-Signature` is the HMAC of the Host header,
the `x-k8s-aws-id` header and the rest of the raw query, as a real signature covers them; any
other request gets STS's 403 `SignatureDoesNotMatch`.

It is a plain threaded HTTP/1.1 server on 127.0.0.1, port 0 (tests/fakes/loopback.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer
from tests.fakes.sts_standin import ALICE, MISMATCH_BODY

_KEY = b"fuzzing stand-in signing key"
SIGNATURE_PARAM = "X-Amz-Signature="


def sign(*, host: str, cluster_id: str, query: str) -> str:
    """The signature this stand-in expects for `query` (without the signature) sent to `host`."""
    message = f"{host}\n{cluster_id}\n{query}".encode()
    return hmac.new(_KEY, message, hashlib.sha256).hexdigest()


def split_signature(query: str) -> tuple[str, str] | None:
    """(the query without its one `X-Amz-Signature=` piece, that signature); None unless exactly
    one piece starts with it, spelled exactly so."""
    pieces = query.split("&")
    found = [index for index, piece in enumerate(pieces) if piece.startswith(SIGNATURE_PARAM)]
    if len(found) != 1:
        return None
    signature = pieces.pop(found[0]).removeprefix(SIGNATURE_PARAM)
    return "&".join(pieces), signature


def genuine(token_url: str, *, host: str, cluster_id: str) -> bool:
    """Whether a presigned URL carries this stand-in's signature for `host` and `cluster_id`."""
    scheme, sep, rest = token_url.partition("://")
    if not sep or scheme.lower() != "http":
        return False
    authority, _, target = rest.partition("/")
    if authority != host or not target.startswith("?"):
        return False
    parts = split_signature(target[1:].partition("#")[0])
    if parts is None:
        return False
    expected = sign(host=host, cluster_id=cluster_id, query=parts[0])
    return hmac.compare_digest(expected, parts[1])


def decode_url(token: str) -> str | None:
    """A token's URL, decoded with the standard library alone; None when it is no token."""
    prefix = "k8s-aws-v1."
    if not token.startswith(prefix):
        return None
    body = token[len(prefix) :].replace("\r", "").replace("\n", "")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return raw.decode("utf-8")
    except (ValueError, UnicodeError):
        return None


class SigningSts:
    """The stand-in; `start()` binds, `netloc` is `127.0.0.1:<port>`, `url` its origin."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: LoopbackServer | None = None
        self.accepted: set[str] = set()  # raw queries answered with an identity
        self.rejected = 0

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        assert self._server is not None, "start() first"
        return self._server.url

    @property
    def netloc(self) -> str:
        """`127.0.0.1:<port>`."""
        return self.url.removeprefix("http://")

    def start(self) -> SigningSts:
        """Serve from a daemon thread; returns self."""
        handler = type("Handler", (_Handler,), {"sts": self})
        self._server = LoopbackServer(handler)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.stop()

    def accepted_count(self) -> int:
        """How many distinct queries were answered with an identity."""
        with self._lock:
            return len(self.accepted)

    def was_accepted(self, query: str) -> bool:
        """Whether a request with this raw query was answered with an identity."""
        with self._lock:
            return query in self.accepted

    def judge(self, *, host: str, cluster_id: str, query: str) -> bool:
        """Check one request's signature and record the verdict."""
        parts = split_signature(query)
        ok = parts is not None and hmac.compare_digest(
            sign(host=host, cluster_id=cluster_id, query=parts[0]), parts[1]
        )
        with self._lock:
            if ok:
                self.accepted.add(query)
            else:
                self.rejected += 1
        return ok


class _Handler(BaseHTTPRequestHandler):
    sts: SigningSts
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """Answer an identity to a request it signed, 403 to any other."""
        path, _, query = self.path.partition("?")
        ok = path == "/" and self.sts.judge(
            host=self.headers.get("host", ""),
            cluster_id=self.headers.get("x-k8s-aws-id", ""),
            query=query,
        )
        if ok:
            answer = {"GetCallerIdentityResponse": {"GetCallerIdentityResult": ALICE}}
            self._send(200, json.dumps(answer).encode(), "application/json")
        else:
            self._send(403, MISMATCH_BODY, "text/xml")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True
