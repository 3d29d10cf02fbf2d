"""An httpx transport for trio that speaks HTTP/1.1 over a small keep-alive pool.

authd sends one GET to STS per new token, so the cost of that GET is a large part of a review.
httpx's default transport (httpcore) scans every pooled connection with a `select()` on each
request and goes through several layers per read; this transport keeps the same interface
(`httpx.AsyncBaseTransport`, httpx's timeouts and exceptions) and does only what one GET needs:

- one pool per origin (scheme, host, port), idle connections kept LIFO: checkout pops the most
  recently used one and polls only that socket, so it is O(1) however many are idle;
- at most `max_connections` open at once; beyond that a request waits (the `pool` timeout),
  and a connection freed for another origin is closed to make room;
- requests and answers are framed by authd/server/sts/http1.py, a strict subset of h11 (its
  tests check it against h11); a connection goes back to the pool only once its answer has
  been read to the end, both sides may go on and nothing else has been read from it; any
  error, an unread body, or `Connection: close` (either way) drops it;
- an idle connection is polled (one `poll()` on that socket alone) before reuse: one the
  server has closed since is dropped and a new one opened. A request is never sent twice:
  a connection closed while the request was on its way fails as httpx would, and retrying is
  the caller's decision (authd's STS guard retries, counts and rate-limits every attempt);
- a request's `target` extension (httpx's, which StsClient uses) is sent as the request
  target instead of the URL's path and query;
- httpx's per-request timeouts (`connect`, `read`, `write`, `pool`) apply to each step, and
  every failure is raised as the httpx exception of the same meaning (ConnectError,
  ReadTimeout, RemoteProtocolError, ...), so callers classify errors as they would with httpx.

It is an `httpx.AsyncBaseTransport` and nothing else: StsClient sends through
`handle_async_request` whatever the transport, so tests with `httpx.MockTransport` run the same
code. Requests that must go through a proxy are routed to httpx's own proxy transport
(authd/server/proxies.py); this one connects directly. The server benchmark measures it
against httpx's `AsyncHTTPTransport` (docs/BENCHMARKS.md, the server section).

Redirects are httpx's business above the transport (authd never follows them); this transport
returns a 3xx like any other answer. https uses `trio.SSLStream` with the host as SNI and a
verifying context unless one is given.
"""

from __future__ import annotations

import math
import select
import ssl
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Final

import httpx
import trio

from authd.server.sts import http1

__all__ = ["Http1Transport"]

Origin = tuple[bytes, str, int]

RECEIVE_SIZE: Final = 65536
DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
_HTTP11: Final = {"http_version": b"HTTP/1.1"}
_COALESCE_BYTES: Final = 64 * 1024


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over trio TCP (and TLS) streams with a bounded keep-alive pool.

    Give it to `StsClient` (or to an `httpx.AsyncClient`); close it to close the idle
    connections. Timeouts come with each request (httpx's `timeout` extension).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        keepalive_expiry: float = 5.0,
    ) -> None:
        """Configure the pool.

        Args:
            ssl_context: the client context for https; default `ssl.create_default_context()`
                (certificates and host names verified), made on first https use.
            max_connections: open connections at most, all origins together (at least 1).
            keepalive_expiry: an idle connection older than this many seconds is not reused.

        Raises:
            ValueError: `max_connections` below 1 or a negative `keepalive_expiry`.
        """
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if keepalive_expiry < 0:
            raise ValueError("keepalive_expiry must not be negative")
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0  # connections open or being opened, idle ones included
        self._waiters: deque[_Waiter] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open or being opened right now (idle ones included)."""
        return self._open

    @property
    def waiting_requests(self) -> int:
        """Requests waiting for room in the pool right now."""
        return len(self._waiters)

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for a request."""
        return sum(len(idle) for idle in self._idle.values())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` and return the response once its head has arrived.

        The body is read through the response's stream; reading it to the end returns the
        connection to the pool, closing the response early drops the connection.

        Raises:
            httpx.TransportError: the httpx exception for what failed (connect, pool, read,
                write, protocol); a timeout as its `*Timeout` kind.
        """
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts = request.extensions.get("timeout", {})
        conn = await self._checkout(_origin(request.url), timeouts)
        kept = False
        try:
            head = await conn.exchange(request, timeouts)
            kept = True
        finally:
            if not kept:
                self._discard(conn)
        return httpx.Response(
            head.status_code,
            headers=head.headers,
            stream=_ResponseStream(self, conn, timeouts.get("read")),
            extensions={**_HTTP11, "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        """Close every idle connection; connections in use are closed when released."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
                self._open -= 1
        self._idle.clear()

    # --- the pool ------------------------------------------------------------------------------

    async def _checkout(self, origin: Origin, timeouts: Mapping[str, float | None]) -> _Connection:
        """A live idle connection to `origin`, or a new one (waiting for room if at the cap)."""
        idle = self._idle.get(origin)
        if idle:
            conn = idle.pop()
            if trio.current_time() - conn.idle_since <= self._keepalive_expiry and (
                conn.looks_alive()
            ):
                return conn
            # Dead or too old (and so, likely, any older one): use its place for a new one.
            conn.close()
            return await self._connect(origin, timeouts)
        if self._open < self._max_connections:
            self._open += 1
            return await self._connect(origin, timeouts)
        if self._close_idle_elsewhere():
            return await self._connect(origin, timeouts)
        handed = await self._wait_for_room(origin, timeouts.get("pool"))
        if handed is None:
            return await self._connect(origin, timeouts)
        return handed

    def _close_idle_elsewhere(self) -> bool:
        """Close the oldest idle connection of any origin to free its place; False if none."""
        for origin, idle in self._idle.items():
            if idle:
                idle.pop(0).close()
                if not idle:
                    del self._idle[origin]
                return True
        return False

    async def _wait_for_room(self, origin: Origin, within: float | None) -> _Connection | None:
        """Wait until a connection to `origin` (returned) or a free place (None) is handed over.

        Raises:
            httpx.PoolTimeout: nothing was handed over within `within` seconds.
        """
        waiter = _Waiter(origin)
        self._waiters.append(waiter)
        got = False
        try:
            with trio.CancelScope(deadline=_expiry(within)):
                await waiter.event.wait()
                got = True
        finally:
            if got:
                pass
            elif waiter.event.is_set():
                # Handed over in the same instant as a timeout or cancellation: pass it on.
                self._give_back(waiter.handed)
            else:
                self._waiters.remove(waiter)
        if not got:
            raise httpx.PoolTimeout(f"no connection free within {within} s (pool timeout)")
        return waiter.handed

    def _give_back(self, handed: _Connection | None) -> None:
        """Return what a waiter could not use: a connection to the pool, or its free place."""
        if handed is None:
            self._free_place()
        else:
            self._release(handed)

    def _release(self, conn: _Connection) -> None:
        """A connection is free for its next request: hand it to a waiter or keep it idle."""
        if self._closed:
            self._discard(conn)
            return
        conn.idle_since = trio.current_time()
        if self._waiters:
            for waiter in self._waiters:
                if waiter.origin == conn.origin:
                    self._waiters.remove(waiter)
                    waiter.hand(conn)
                    return
            # Only other origins wait: this connection's place is worth more to them.
            conn.close()
            self._waiters.popleft().hand(None)
            return
        self._idle.setdefault(conn.origin, []).append(conn)

    def _discard(self, conn: _Connection) -> None:
        """Close a connection that cannot be reused and free its place."""
        conn.close()
        self._free_place()

    def _free_place(self) -> None:
        """One connection fewer: let the first waiter open one, or lower the count."""
        if self._waiters:
            self._waiters.popleft().hand(None)
        else:
            self._open -= 1

    async def _connect(self, origin: Origin, timeouts: Mapping[str, float | None]) -> _Connection:
        """Open a connection to `origin` in a place already counted; free it on failure.

        Raises:
            httpx.ConnectTimeout: TCP connect plus TLS handshake took longer than `connect`.
            httpx.ConnectError: refused, unreachable, unresolvable, or the TLS handshake failed.
        """
        scheme, host, port = origin
        timeout = timeouts.get("connect")
        opened: tuple[trio.abc.Stream, trio.SocketStream] | None = None
        try:
            with trio.CancelScope(deadline=_expiry(timeout)):
                opened = await self._open_stream(scheme, host, port)
        except (OSError, trio.BrokenResourceError) as exc:
            raise httpx.ConnectError(_describe(exc)) from exc
        finally:
            if opened is None:
                self._free_place()
        if opened is None:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} took over {timeout} s")
        return _Connection(origin, *opened)

    async def _open_stream(
        self, scheme: bytes, host: str, port: int
    ) -> tuple[trio.abc.Stream, trio.SocketStream]:
        """TCP, then TLS for https; the stream to speak HTTP on and the TCP stream below it."""
        tcp = await trio.open_tcp_stream(host, port)
        if scheme != b"https":
            return tcp, tcp
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        tls = trio.SSLStream(tcp, self._ssl_context, server_hostname=host, https_compatible=True)
        done = False
        try:
            await tls.do_handshake()
            done = True
        finally:
            if not done:  # failed, timed out or cancelled: the socket is ours to close
                tcp.socket.close()
        return tls, tcp


class _Waiter:
    """A request waiting for room in the pool, and what it was handed."""

    __slots__ = ("event", "handed", "origin")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.event = trio.Event()
        self.handed: _Connection | None = None

    def hand(self, conn: _Connection | None) -> None:
        """Give this waiter a connection to its origin, or (None) a place to open one."""
        self.handed = conn
        self.event.set()


class _Connection:
    """One HTTP/1.1 connection: its stream, socket, parser and pool bookkeeping."""

    __slots__ = ("idle_since", "origin", "parser", "poller", "step", "stream", "tcp")

    def __init__(self, origin: Origin, stream: trio.abc.Stream, tcp: trio.SocketStream) -> None:
        self.origin = origin
        self.stream = stream
        self.tcp = tcp
        self.parser = http1.ResponseParser()
        self.step = "write"  # what the exchange under way is doing: "write" or "read"
        self.idle_since = 0.0
        # poll, not select: the daemon may hold over a thousand sockets, past select's limit.
        self.poller = select.poll()
        self.poller.register(tcp.socket.fileno(), select.POLLIN)

    def looks_alive(self) -> bool:
        """An idle connection must have nothing to read: readable means closed or garbage."""
        try:
            return not self.poller.poll(0)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        """Close the socket now (no TLS close_notify: the peer needs none to free it)."""
        self.tcp.socket.close()

    async def exchange(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> http1.ResponseHead:
        """Send `request` and read the response head.

        One cancel scope covers both; its deadline moves at each step (httpx's timeouts are
        per step). A scope per step cost more than the step's own Python work.

        Raises:
            httpx.TransportError: the httpx kind of the failure.
        """
        method = request.method.encode("ascii", "replace")  # "?" fails the method check
        write, read = timeouts.get("write"), timeouts.get("read")
        target = request.extensions.get("target") or request.url.raw_path
        head = http1.request_head(method, target, request.headers.raw)
        with trio.CancelScope() as timer:
            await self._send_request(request, head, write, timer)
            self.parser.start(method, close=head.close)
            while not isinstance(event := self.parser.next_event(), http1.ResponseHead):
                self.step = "read"
                timer.deadline = _expiry(read)
                await self._read()
            return event
        # Only reached when the deadline of the step under way passed.
        if self.step == "write":
            raise httpx.WriteTimeout(f"sending the request took over {write} s")
        raise httpx.ReadTimeout(f"no answer within {read} s (read timeout)")

    async def _send_request(
        self,
        request: httpx.Request,
        head: http1.RequestHead,
        within: float | None,
        timer: trio.CancelScope,
    ) -> None:
        """Write the request head and body, framed as its headers say, each write by `timer`."""
        length, chunked = head.length, head.chunked
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):
            # In memory already (always so for a GET): small bodies go in the head's write.
            body = b"".join(stream)
            _check_length(length, len(body), chunked=chunked)
            if chunked:
                body = http1.chunk(body) + http1.chunk(b"") if body else http1.chunk(b"")
            if len(body) <= _COALESCE_BYTES:
                await self._write(head.data + body, within, timer)
            else:
                await self._write(head.data, within, timer)
                await self._write(body, within, timer)
            return
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("authd's transport sends httpx byte streams only")
        await self._write(head.data, within, timer)
        chunks = stream.__aiter__()
        sent = 0
        try:
            async for piece in chunks:
                sent += len(piece)
                if piece:
                    await self._write(http1.chunk(piece) if chunked else piece, within, timer)
        finally:
            # A failed write leaves the body unread: finalise its generator now, not in the GC.
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()
        _check_length(length, sent, chunked=chunked)
        if chunked:
            await self._write(http1.chunk(b""), within, timer)

    async def _write(self, data: bytes, within: float | None, timer: trio.CancelScope) -> None:
        """Write bytes, `timer` set to fire `within` seconds from now."""
        if not data:
            return
        self.step = "write"
        timer.deadline = _expiry(within)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.WriteError(_describe(exc)) from exc

    async def receive(self, within: float | None) -> None:
        """Read what has arrived (within `within` seconds) and feed it to the parser.

        Raises:
            httpx.ReadTimeout, httpx.ReadError: as named.
        """
        with trio.CancelScope(deadline=_expiry(within)) as scope:
            await self._read()
        if scope.cancelled_caught:
            raise httpx.ReadTimeout(f"no answer within {within} s (read timeout)")

    async def _read(self) -> None:
        """Read what has arrived and feed it to the parser.

        Raises:
            httpx.ReadError: the connection broke.
        """
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.ReadError(_describe(exc)) from exc
        self.parser.receive_data(bytes(data))


def _check_length(declared: int | None, sent: int, *, chunked: bool) -> None:
    """A body must be as long as its Content-Length says, and have a framing header (h11's rules).

    Raises:
        httpx.LocalProtocolError: it is not, or it has none.
    """
    if declared is None:
        if sent and not chunked:
            raise httpx.LocalProtocolError("a request body needs Content-Length or chunked")
    elif declared != sent:
        raise httpx.LocalProtocolError(f"Content-Length {declared} but {sent} bytes of body")


class _ResponseStream(httpx.AsyncByteStream):
    """A response body read through the parser; the connection goes back to the pool at its end.

    Its own async iterator (not an async generator), so leaving it early leaves nothing for
    the garbage collector to finalise: `aclose` alone decides the connection's fate.
    """

    def __init__(self, transport: Http1Transport, conn: _Connection, timeout: float | None) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._timeout = timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The body's chunks, chunked or Content-Length framing undone by the parser."""
        return self

    async def __anext__(self) -> bytes:
        """The next chunk of the body; at its end the connection is released.

        Raises:
            StopAsyncIteration: the body is complete (or the stream was closed).
            httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError: as named.
        """
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        while True:
            event = conn.parser.next_event()
            if event is http1.NEED_DATA:
                await conn.receive(self._timeout)
            elif isinstance(event, bytes):
                return event
            else:
                self._conn = None
                if conn.parser.reusable:
                    self._transport._release(conn)
                else:
                    self._transport._discard(conn)
                raise StopAsyncIteration

    async def aclose(self) -> None:
        """Drop the connection unless the body was read to its end (then it is pooled)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._discard(conn)


def _origin(url: httpx.URL) -> Origin:
    """(scheme, host, port) of `url`; the port defaults by scheme.

    Raises:
        httpx.UnsupportedProtocol: a scheme other than http and https.
    """
    scheme = url.raw_scheme
    default = DEFAULT_PORTS.get(scheme)
    if default is None:
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
    return scheme, url.host, url.port or default


def _expiry(timeout: float | None) -> float:
    """The trio deadline `timeout` seconds from now (never, for None)."""
    return math.inf if timeout is None else trio.current_time() + timeout


def _describe(exc: BaseException) -> str:
    """The text of an exception and, when it only wraps another (trio does), of the cause."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause):
        return f"{text}: {cause}" if str(exc) else str(cause)
    return text
