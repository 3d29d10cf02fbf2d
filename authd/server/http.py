"""A small HTTP/1.1 server: h11 driven directly on trio streams (TLS or plain), with limits.

One task per connection reads a request head and body, awaits the handler, and writes the
response; keep-alive and pipelining follow h11's state machine. The limits of
authd 8 in docs/upstream-compat.md are enforced here, so a handler only ever sees a complete,
bounded request:

- head larger than `max_head_bytes` -> 431; body larger than `max_body_bytes` -> 413 (checked
  from Content-Length before reading, and while reading chunked bodies);
- a head not complete `header_timeout` after the connection opened or its first byte arrived,
  or a body stalled past `body_timeout` -> 408 (when it can still be written) and close;
- answering a request (handler and write) and then waiting for the next request share
  `idle_timeout`: a client that neither reads nor sends for that long is closed;
- at most `max_connections` at once: beyond that, new connections wait in the listen backlog;
  at most `max_connections_per_client` from one client address: beyond that, a new connection
  from it is closed at once, so one caller cannot take every slot;
- a request with both Content-Length and Transfer-Encoding -> 400 and close: two framings are
  how requests are smuggled past a proxy that reads the other one;
- TLS handshake failures, garbage and protocol errors (400) end one connection, never the server;
  a handler that raises answers 500 and is logged.

Graceful shutdown (the `shutdown` event): stop accepting, close idle connections, let requests in
flight finish within `shutdown_grace` (their responses say `Connection: close`), then cancel.
No per-request logging happens here: the application logs one line per review.
"""

from __future__ import annotations

import contextlib
import errno
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import h11
import structlog
import trio

from authd.errors import ConfigError

__all__ = [
    "Handler",
    "Limits",
    "Request",
    "Response",
    "serve_http",
    "serve_https",
    "serve_stream",
]

RECEIVE_SIZE = 65536
# After refusing a request whose body is still arriving, read and drop this much (at most) so
# the client gets to read the refusal instead of a connection reset.
LINGER_BYTES = 8 * 1024 * 1024
CLOSE_TIMEOUT = 1.0
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

_log = structlog.get_logger("authd.server.http")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on what one client can make the server hold. Seconds, bytes.

    See authd 8 in docs/upstream-compat.md.
    """

    max_head_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 30.0
    max_connections: int = 1000
    max_connections_per_client: int = 500
    shutdown_grace: float = 10.0
    linger_timeout: float = 2.0

    def __post_init__(self) -> None:
        """Reject limits that would make the server unusable.

        Raises:
            ConfigError: a size or count below 1, or a duration not above 0.
        """
        for name in (
            "max_head_bytes",
            "max_body_bytes",
            "max_connections",
            "max_connections_per_client",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"http limits: {name} must be at least 1")
        for name in ("header_timeout", "idle_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"http limits: {name} must be more than 0 seconds")
        for name in ("shutdown_grace", "linger_timeout"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"http limits: {name} must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A complete request. `path` is the raw target before `?`; header names are lower case."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What a handler answers. The server adds Content-Length, Date and, when closing,
    `Connection: close`; handlers must not set those (nor Transfer-Encoding)."""

    status: int
    headers: Sequence[tuple[bytes | str, bytes | str]] = ()
    body: bytes = b""


Handler = Callable[[Request], Awaitable[Response]]

_TEXT = ((b"content-type", b"text/plain; charset=utf-8"),)
_ERROR_BODIES = {
    400: b"400 Bad Request\n",
    408: b"408 Request Timeout\n",
    413: b"413 Request Entity Too Large\n",
    431: b"431 Request Header Fields Too Large\n",
    500: b"500 Internal Server Error\n",
}
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_INTERNAL_ERROR = Response(status=500, headers=_TEXT, body=_ERROR_BODIES[500])


async def serve_https(
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext,
    host: str,
    port: int,
    limits: Limits = Limits(),
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` over HTTPS on `host:port` until cancelled or `shutdown` is set.

    Args:
        handler: called once per complete request; its exceptions become 500 answers.
        ssl_context: a server context (see `authd.server.tls.server_ssl_context`).
        host: the IP to bind; empty binds all interfaces.
        port: the port; 0 picks a free one (read it from `task_status`).
        limits: sizes, timeouts and the connection cap.
        shutdown: when set, shut down gracefully and return.
        task_status: receives the bound (host, port) once listening.

    Raises:
        OSError: the address cannot be bound.
    """
    await _serve(
        handler,
        ssl_context=ssl_context,
        host=host,
        port=port,
        limits=limits,
        shutdown=shutdown,
        task_status=task_status,
    )


async def serve_http(
    handler: Handler,
    *,
    host: str,
    port: int,
    limits: Limits = Limits(),
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` over plain HTTP (the optional health listener); as `serve_https`."""
    await _serve(
        handler,
        ssl_context=None,
        host=host,
        port=port,
        limits=limits,
        shutdown=shutdown,
        task_status=task_status,
    )


async def serve_stream(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    limits: Limits = Limits(),
    client: tuple[str, int] | None = None,
) -> None:
    """Serve HTTP/1.1 on one already-open stream until it closes, then close it.

    The listeners use this for every connection; tests and in-process callers can pass any
    `trio.abc.Stream` (an `SSLStream`, or one end of `trio.testing.memory_stream_pair`).
    """
    await _Connection(stream, handler, limits, client, _Shared()).serve()


class _Shared:
    """What the connections of one server share: the shutdown flag and their idle scopes."""

    __slots__ = ("closing", "idle")

    def __init__(self) -> None:
        self.closing = False
        self.idle: set[trio.CancelScope] = set()

    def begin_shutdown(self) -> None:
        """From now on close connections after their current request; close idle ones now."""
        self.closing = True
        for scope in self.idle:
            scope.cancel()


class _Server:
    """The accept side: connection cap, TLS wrapping, one task per connection."""

    def __init__(
        self, handler: Handler, ssl_context: ssl.SSLContext | None, limits: Limits
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.limits = limits
        self.shared = _Shared()
        self.slots = trio.Semaphore(limits.max_connections)
        self.per_client: dict[str, int] = {}

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept while a connection slot is free; at the cap, new clients wait in the backlog."""
        while True:
            await self.slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                self.slots.release()
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                _log.warning("accept failed, out of resources", error=str(exc))
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self.handle, stream)

    async def handle(self, tcp: trio.SocketStream) -> None:
        """Serve one accepted TCP connection, then free its slot.

        A client address already holding `max_connections_per_client` connections has the new
        one closed at once, before any TLS work.
        """
        client = _peer(tcp)
        host = client[0] if client is not None else ""
        held = self.per_client.get(host, 0)
        try:
            if held >= self.limits.max_connections_per_client:
                _log.debug("connection over the per-client cap closed", client=host)
                await _abort(tcp)
                return
            self.per_client[host] = held + 1
            try:
                stream: trio.abc.Stream = tcp
                if self.ssl_context is not None:
                    stream = trio.SSLStream(
                        tcp, self.ssl_context, server_side=True, https_compatible=True
                    )
                await _Connection(stream, self.handler, self.limits, client, self.shared).serve()
            finally:
                left = self.per_client[host] - 1
                if left:
                    self.per_client[host] = left
                else:
                    del self.per_client[host]
        finally:
            self.slots.release()


async def _serve(
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext | None,
    host: str,
    port: int,
    limits: Limits,
    shutdown: trio.Event | None,
    task_status: trio.TaskStatus[tuple[str, int]],
) -> None:
    """Bind, serve, and on `shutdown` drain gracefully (see the module docstring)."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    server = _Server(handler, ssl_context, limits)
    try:
        sockname = listeners[0].socket.getsockname()
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(server.accept_loop, listener, connections)
                task_status.started((sockname[0], sockname[1]))
                if shutdown is not None:
                    await shutdown.wait()
                    accepting.cancel_scope.cancel()
            # Only a shutdown gets here; an outside cancellation goes straight out.
            for listener in listeners:
                listener.socket.close()
            server.shared.begin_shutdown()
            connections.cancel_scope.deadline = trio.current_time() + limits.shutdown_grace
    finally:
        for listener in listeners:
            listener.socket.close()


class _Connection:
    """One HTTP/1.1 connection: a loop of request cycles over one stream."""

    __slots__ = (
        "client",
        "conn",
        "handler",
        "limits",
        "phase",
        "received",
        "scope",
        "shared",
        "started",
        "stream",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        limits: Limits,
        client: tuple[str, int] | None,
        shared: _Shared,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.client = client
        self.shared = shared
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.started = False
        self.phase = "head"
        self.received = 0
        self.scope = trio.CancelScope()

    async def serve(self) -> None:
        """Serve requests until the client or a limit ends the connection; never raises
        for anything a client can cause."""
        # One cancel scope for the connection's life; each phase moves its deadline. This
        # costs far less per request than a fresh scope per phase.
        scope = self.scope
        scope.deadline = trio.current_time() + self.limits.header_timeout
        try:
            with scope:
                first = True
                while not self.shared.closing and await self._cycle(first=first):
                    first = False
            if scope.cancelled_caught and self.phase != "answer" and self.started:
                # Timed out reading a request that had begun: tell the client why.
                await self._refuse(408, linger=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away, the TLS handshake failed, or it spoke no TLS
        except Exception:
            # A bug here must cost one connection, not the server.
            _log.exception("http connection failed", client=self.client)
        finally:
            self.shared.idle.discard(scope)
            await self._close()

    async def _cycle(self, *, first: bool) -> bool:
        """Serve one request; True when the connection may carry another.

        Deadlines: the first head is due `header_timeout` after accept (TLS handshake
        included). Once a request's first byte arrives its head is due within
        `header_timeout`, its body within `body_timeout` if it must be waited for. The handler,
        the response write and the wait for the next request then share `idle_timeout`, set
        when the handler is called (the review handler bounds itself far below it: STS calls
        end within `--sts-timeout`).
        """
        conn = self.conn
        limits = self.limits
        scope = self.scope
        self.phase = "head"
        # `started`: a byte of this request has arrived. Until then the connection is idle
        # and a shutdown may close it.
        pending = 0 if first else len(conn.trailing_data[0])
        self.started = pending > 0
        if self.started:
            scope.deadline = trio.current_time() + limits.header_timeout
        try:
            request = await self._receive_head(first=first)
            if request is None:
                return False  # the client closed the connection
            if _two_framings(request):
                raise _AmbiguousFraming
            if self.received + pending > limits.max_head_bytes and (
                _head_size(request) > limits.max_head_bytes
            ):
                # h11 bounds only heads that arrive in pieces; this one came whole.
                raise _HeadTooLarge
            self.phase = "body"
            body = await self._read_body(request)
            if body is None:
                return False
            self.phase = "answer"
            # One deadline for the handler, the response write and the wait for the next
            # request: moving a trio deadline costs microseconds, so it moves once per request.
            scope.deadline = trio.current_time() + limits.idle_timeout
            response = await self._call(request, body)
            await self._send(response, head=request.method == b"HEAD")
        except (h11.RemoteProtocolError, _BodyTooLarge, _HeadTooLarge, _AmbiguousFraming) as exc:
            # h11 hints 501 for a transfer coding it lacks: still the client's error, so a 400.
            hint = exc.error_status_hint
            await self._refuse(hint if hint < 500 else 400)
            return False
        if conn.our_state is h11.MUST_CLOSE or self.shared.closing:
            return False
        conn.start_next_cycle()
        return True

    async def _receive_head(self, *, first: bool) -> h11.Request | None:
        """Read until a request head is complete; None if the client closed instead."""
        conn = self.conn
        self.received = 0
        event = conn.next_event()
        if event is h11.NEED_DATA:
            idle = not self.started
            if idle:
                self.shared.idle.add(self.scope)
            try:
                while event is h11.NEED_DATA:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    self.received += len(data)
                    conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytes-likes
                    event = conn.next_event()
                    if idle:
                        idle = False
                        self.started = True
                        self.shared.idle.discard(self.scope)
                        if event is h11.NEED_DATA and not first:
                            limit = self.limits.header_timeout
                            self.scope.deadline = trio.current_time() + limit
            finally:
                if idle:
                    self.shared.idle.discard(self.scope)
        return event if isinstance(event, h11.Request) else None

    async def _read_body(self, request: h11.Request) -> bytes | None:
        """The whole body of `request`, or None if the client closed mid-body.

        Raises:
            _BodyTooLarge: Content-Length or the bytes received exceed `max_body_bytes`.
            h11.RemoteProtocolError: bad framing.
        """
        limit = self.limits.max_body_bytes
        conn = self.conn
        chunks: list[bytes | bytearray] = []
        size = 0
        waiting = False
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if not waiting:
                    # More must be read: refuse a declared oversize body before reading it,
                    # and start the body's clock. (A body that came with its head is counted
                    # below, without this cost.)
                    waiting = True
                    if _content_length(request) > limit:
                        raise _BodyTooLarge
                    self.scope.deadline = trio.current_time() + self.limits.body_timeout
                if conn.they_are_waiting_for_100_continue:
                    await self._send_bytes(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                data = await self.stream.receive_some(RECEIVE_SIZE)
                conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytes-likes
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise _BodyTooLarge
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None
        if len(chunks) == 1:
            return bytes(chunks[0])
        return b"".join(chunks)

    async def _call(self, event: h11.Request, body: bytes) -> Response:
        """Run the handler on the request; an exception in it becomes a logged 500."""
        path, _, query = event.target.partition(b"?")
        request = Request(
            method=event.method.decode("ascii"),
            path=path.decode("latin-1"),
            query=query.decode("latin-1") if query else "",
            headers=event.headers,
            body=body,
            client=self.client,
        )
        try:
            return await self.handler(request)
        except Exception:
            _log.exception(
                "request handler failed",
                method=request.method,
                path=request.path,
                client=self.client,
            )
            return _INTERNAL_ERROR

    async def _send(self, response: Response, *, head: bool) -> None:
        """Write `response`; a response h11 rejects (bad header, status) becomes a 500."""
        close = self.shared.closing
        try:
            event = _response_event(response, close=close)
        except h11.LocalProtocolError as exc:
            _log.error("handler returned an invalid response", error=str(exc), client=self.client)
            response = _INTERNAL_ERROR
            event = _response_event(response, close=close)
        conn = self.conn
        out = conn.send(event) or b""
        if response.body and not head:
            out += conn.send(h11.Data(data=response.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)

    async def _refuse(self, status: int, *, linger: bool = True) -> None:
        """Answer an error status with `Connection: close` if still possible, then drain."""
        conn = self.conn
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = _ERROR_BODIES.get(status, b"%d\n" % status)
        event = _response_event(Response(status=status, headers=_TEXT, body=body), close=True)
        # The connection's own deadline may be about to expire (or has); this answer gets its own.
        self.scope.deadline = math.inf
        with trio.move_on_after(
            self.limits.header_timeout + (self.limits.linger_timeout if linger else 0)
        ):
            out = (conn.send(event) or b"") + (conn.send(h11.Data(data=body)) or b"")
            await self._send_bytes(out + (conn.send(h11.EndOfMessage()) or b""))
            if linger:
                await self._linger()

    async def _linger(self) -> None:
        """Read and drop what the client still sends, briefly, so it can read our answer."""
        received = 0
        with trio.move_on_after(self.limits.linger_timeout):
            while received < LINGER_BYTES:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                received += len(data)

    async def _send_bytes(self, data: bytes | None) -> None:
        """Write raw bytes produced by h11."""
        if data:
            await self.stream.send_all(data)

    async def _close(self) -> None:
        """Close the stream; TLS close_notify gets a short deadline (the peer may be gone)."""
        with trio.move_on_after(CLOSE_TIMEOUT):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.aclose()


def _head_size(request: h11.Request) -> int:
    """The size of `request`'s head on the wire: request line, header lines, blank line."""
    size = len(request.method) + len(request.target) + 13
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size


def _content_length(request: h11.Request) -> int:
    """The declared Content-Length (h11 has validated it), or 0 when there is none."""
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return 0


def _two_framings(request: h11.Request) -> bool:
    """True when `request` carries both Content-Length and Transfer-Encoding.

    h11 lets Transfer-Encoding win, as RFC 9112 allows; a server in front that honours
    Content-Length instead would see a different request, so authd refuses both at once.
    """
    names = {name for name, _ in request.headers}
    return b"content-length" in names and b"transfer-encoding" in names


class _AmbiguousFraming(Exception):
    """The request gives both Content-Length and Transfer-Encoding."""

    error_status_hint = 400


class _BodyTooLarge(Exception):
    """The request body is over `Limits.max_body_bytes`."""

    error_status_hint = 413


class _HeadTooLarge(Exception):
    """The request head is over `Limits.max_head_bytes`."""

    error_status_hint = 431


def _response_event(response: Response, *, close: bool) -> h11.Response:
    """The h11 event for `response` with the server's own headers added."""
    headers = [
        *response.headers,
        (b"content-length", b"%d" % len(response.body)),
        (b"date", _date.get()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return h11.Response(
        status_code=response.status,
        headers=headers,  # type: ignore[arg-type]  # h11 takes str and bytes mixed
        reason=_REASONS.get(response.status, b""),
    )


class _DateHeader:
    """The Date header value, formatted at most once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self) -> bytes:
        """The value for the current second."""
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = formatdate(now, usegmt=True).encode("ascii")
        return self.value


_date = _DateHeader()


async def _abort(tcp: trio.SocketStream) -> None:
    """Close a connection that will not be served."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await tcp.aclose()


def _peer(stream: trio.SocketStream) -> tuple[str, int] | None:
    """The client's (host, port), or None if the socket is already gone."""
    try:
        address = stream.socket.getpeername()
    except OSError:
        return None
    return (str(address[0]), int(address[1]))
