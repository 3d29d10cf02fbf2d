"""A local STS stand-in that can be told to be slow, fail, reset connections or throttle.

moto (behind tests/fakes/sts_front.py) is the STS for tests about identities; this stand-in is
the STS for fault tests, where what matters is how the server copes with a bad answer. It is a
plain threaded HTTP/1.1 server on 127.0.0.1, port 0, answering `GET /?Action=GetCallerIdentity`
(no signature check) with a configurable identity as JSON, as real STS does when asked for
JSON. Tell it what to do next with `script(...)`: each request takes the next `Fault` (or `OK`
once the script is used up), so a test says "reset, then 503, then answer" exactly.

- `OK`: 200 and the identity.
- `Fault.status(code, body)`: that status and body (`THROTTLE` is STS's 400 `Throttling`).
- `RESET`: close the connection with a TCP reset, no answer.
- `Fault.hold()`: answer only once `release()` is called (or the client gives up).
- `Fault.slow(seconds)`: answer after a delay.
- `Fault.answer(body, content_type, encoding)`: 200 with that body (bad JSON or XML, an ARN
  that does not parse, a gzip bomb with `encoding="gzip"`, ...).
- `Fault.trickle(interval)`: 200 and its headers at once, then the identity one byte every
  `interval` seconds (a body that outlasts any deadline).
- `Fault.huge(size)`: 200 announcing `size` bytes and sending them until the client hangs up;
  `body_bytes_sent` records how many got out.
- `fault.gated(event)`: the same fault, applied only once `event` is set (a fault "holds" while
  the test does something else through the same client).

`script_for(signature, ...)` scripts only the requests whose `X-Amz-Signature` is that one, so
a test can fault one token while reviews of other tokens go through the same server.

`accept_cluster_ids` makes it answer 403 `SignatureDoesNotMatch` to any other `x-k8s-aws-id`, as
STS does for a token signed for another cluster. `requests` records each request's cluster ID
and the fault it got; `calls_for(signature)` counts one token's requests.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import struct
import threading
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.loopback import LoopbackServer

ALICE = {
    "Arn": "arn:aws:iam::123456789012:user/Alice",
    "Account": "123456789012",
    "UserId": "AIDAALICE",
}
THROTTLING_BODY = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
    b"<Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
    b"<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
)
MISMATCH_BODY = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
    b"<Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>The request signature "
    b"we calculated does not match the signature you provided.</Message></Error>"
    b"</ErrorResponse>"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """What the stand-in does with one request."""

    kind: str  # "ok", "status", "reset", "hold", "slow", "answer", "trickle", "huge"
    status: int = 200
    body: bytes = b""
    content_type: str = "text/xml"
    encoding: str = ""
    delay: float = 0.0
    size: int = 0
    gate: threading.Event | None = None

    @staticmethod
    def with_status(status: int, body: bytes = b"stand-in failure") -> Fault:
        """Answer `status` with `body`."""
        return Fault(kind="status", status=status, body=body)

    @staticmethod
    def hold() -> Fault:
        """Answer (OK) only after `StsStandIn.release()`."""
        return Fault(kind="hold")

    @staticmethod
    def slow(seconds: float) -> Fault:
        """Answer (OK) after `seconds`."""
        return Fault(kind="slow", delay=seconds)

    @staticmethod
    def answer(body: bytes, content_type: str = "application/json", encoding: str = "") -> Fault:
        """Answer 200 with `body` (sent with `Content-Encoding: encoding` if given)."""
        return Fault(kind="answer", body=body, content_type=content_type, encoding=encoding)

    @staticmethod
    def trickle(interval: float) -> Fault:
        """Answer 200 at once, then send the identity's body one byte per `interval` seconds."""
        return Fault(kind="trickle", delay=interval)

    @staticmethod
    def huge(size: int) -> Fault:
        """Answer 200 announcing a `size`-byte body, and send it until the client hangs up."""
        return Fault(kind="huge", size=size)

    def gated(self, gate: threading.Event) -> Fault:
        """This fault, applied only once `gate` is set (or the stand-in stops)."""
        return replace(self, gate=gate)


OK = Fault(kind="ok")
RESET = Fault(kind="reset")
THROTTLE = Fault.with_status(400, THROTTLING_BODY)
UNAVAILABLE = Fault.with_status(503, b"Service Unavailable")


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """One request the stand-in got: the cluster ID header and the fault applied."""

    cluster_id: str
    fault: str
    signature: str = ""
    accept_encoding: str = ""


class StsStandIn:
    """The stand-in server; `start()` binds 127.0.0.1 port 0, `url` is the STS origin."""

    def __init__(self, *, identity: dict[str, str] | None = None) -> None:
        self.identity = dict(identity or ALICE)
        self.accept_cluster_ids: set[str] | None = None
        self._script: deque[Fault] = deque()
        self._scripts: dict[str, deque[Fault]] = {}
        self.body_bytes_sent: list[int] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._closing = threading.Event()
        self.requests: list[Seen] = []
        self._server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        """`http(s)://127.0.0.1:<port>`."""
        assert self._server is not None, "start() first"
        return self._server.url

    def start(self, *, tls: ssl.SSLContext | None = None) -> StsStandIn:
        """Serve in a daemon thread (https with `tls`); returns self."""
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = LoopbackServer(handler, tls=tls)
        return self

    def stop(self) -> None:
        """Release held requests, stop serving, close the socket."""
        self._closing.set()
        self._released.set()
        if self._server is not None:
            self._server.stop()

    def script(self, *faults: Fault) -> None:
        """Apply `faults` to the next requests, in order; then answer OK again."""
        with self._lock:
            self._script.extend(faults)

    def script_for(self, signature: str, *faults: Fault) -> None:
        """Apply `faults`, in order, to the next requests whose X-Amz-Signature is `signature`."""
        with self._lock:
            self._scripts.setdefault(signature, deque()).extend(faults)

    def calls_for(self, signature: str) -> int:
        """How many requests carrying `signature` arrived so far."""
        with self._lock:
            return sum(1 for seen in self.requests if seen.signature == signature)

    def release(self) -> None:
        """Let every held request answer."""
        self._released.set()

    def calls(self) -> int:
        """How many GetCallerIdentity requests arrived so far."""
        with self._lock:
            return len(self.requests)

    def token(
        self,
        *,
        signed: datetime | None = None,
        signature: str = "ab" * 32,
        origin: str | None = None,
    ) -> str:
        """A well-formed token naming this stand-in, or `origin` (it checks no signature)."""
        stamp = (signed or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        url = (
            f"{origin or self.url}/?Action=GetCallerIdentity&Version=2011-06-15"
            "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=AKIAALICE%2F{stamp[:8]}%2Fus-east-1%2Fsts%2Faws4_request"
            f"&X-Amz-Date={stamp}&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"
            f"&X-Amz-Signature={signature}"
        )
        return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")

    def _next(self, cluster_id: str, signature: str, accept_encoding: str) -> Fault:
        with self._lock:
            accepted = self.accept_cluster_ids
            own = self._scripts.get(signature)
            if accepted is not None and cluster_id not in accepted:
                fault = Fault.with_status(403, MISMATCH_BODY)
            elif own:
                fault = own.popleft()
            else:
                fault = self._script.popleft() if self._script else OK
            seen = Seen(
                cluster_id=cluster_id,
                fault=fault.kind,
                signature=signature,
                accept_encoding=accept_encoding,
            )
            self.requests.append(seen)
            return fault


class _Handler(BaseHTTPRequestHandler):
    standin: StsStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """Answer one GetCallerIdentity as the script says."""
        query = dict(parse_qsl(urlsplit(self.path).query))
        if query.get("Action", "") != "GetCallerIdentity":
            self._send(400, b"stand-in answers GetCallerIdentity only")
            return
        fault = self.standin._next(
            self.headers.get("x-k8s-aws-id", ""),
            query.get("X-Amz-Signature", ""),
            self.headers.get("accept-encoding", ""),
        )
        if fault.gate is not None:
            while not (fault.gate.wait(0.05) or self.standin._closing.is_set()):
                pass
        if fault.kind == "reset":
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault.kind == "hold":
            self.standin._released.wait()
        elif fault.kind == "slow":
            self.standin._closing.wait(fault.delay)
        if fault.kind == "status":
            self._send(fault.status, fault.body, content_type=fault.content_type)
            return
        if fault.kind == "answer":
            self._send(200, fault.body, content_type=fault.content_type, encoding=fault.encoding)
            return
        answer = {"GetCallerIdentityResponse": {"GetCallerIdentityResult": self.standin.identity}}
        body = json.dumps(answer).encode()
        if fault.kind == "trickle":
            self._trickle(body, fault.delay)
        elif fault.kind == "huge":
            self._huge(fault.size)
        else:
            self._send(200, body, content_type="application/json")

    def _headers(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.flush()

    def _trickle(self, body: bytes, interval: float) -> None:
        """Headers now, then one byte per `interval` until done, stopped or hung up on."""
        self.close_connection = True
        try:
            self._headers(len(body))
            for index in range(len(body)):
                if self.standin._closing.wait(interval):
                    return
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
        except OSError:
            pass  # the client gave up, as it should

    def _huge(self, size: int) -> None:
        """Headers for `size` bytes, then spaces until all are sent or the client hangs up."""
        self.close_connection = True
        chunk = b" " * 65536
        sent = 0
        try:
            self._headers(size)
            while sent < size and not self.standin._closing.is_set():
                piece = chunk[: size - sent]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            pass  # the client hung up: what a reader with a cap does
        finally:
            with self.standin._lock:
                self.standin.body_bytes_sent.append(sent)

    def _send(
        self, status: int, body: bytes, *, content_type: str = "text/plain", encoding: str = ""
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client gave up waiting
