"""Http1Transport against real local servers: keep-alive pool, framing, timeouts, errors, TLS."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import trio
import trio.testing
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from authd.errors import StsUnavailableError
from authd.server.proxies import Proxies
from authd.server.sts.client import MAX_BODY_BYTES, StsClient, open_sts_client
from authd.server.sts.transport import Http1Transport
from authd.token import EndpointPolicy, PresignedRequest, encode, verify
from tests.fakes.apiserver import serving_cert
from tests.fakes.moto import IamUser
from tests.fakes.sts_front import StsFront

IDENTITY = b'{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Arn":"x"}}}'


# --- a scriptable HTTP/1.1 server on 127.0.0.1 ------------------------------------------------


class Peer:
    """The server's side of one accepted connection: read requests, write raw bytes."""

    def __init__(self, stream: trio.abc.Stream, number: int) -> None:
        self.stream = stream
        self.number = number
        self.leftover = b""

    async def request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its body; None when the client closed the connection."""
        # A fresh h11 per request: the tests write responses as raw bytes, not through h11.
        conn = h11.Connection(h11.SERVER)
        if self.leftover:  # (receiving b"" would tell h11 the connection closed)
            conn.receive_data(self.leftover)
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                conn.receive_data(data)  # type: ignore[arg-type]
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                self.leftover = bytes(conn.trailing_data[0])
                return head, body
            else:
                return None

    async def send(self, data: bytes) -> None:
        """Write raw response bytes (the test writes the framing itself)."""
        await self.stream.send_all(data)

    async def send_in_pieces(self, data: bytes, size: int) -> None:
        """Write `data` in `size`-byte pieces, each read by the client before the next."""
        for start in range(0, len(data), size):
            await self.stream.send_all(data[start : start + size])
            await trio.testing.wait_all_tasks_blocked()

    async def close(self) -> None:
        """Close the connection at once."""
        await trio.aclose_forcefully(self.stream)


Script = Callable[[Peer], Awaitable[None]]


@dataclass
class Server:
    """What the test server saw: connections accepted, requests, the most open at once."""

    port: int = 0
    scheme: str = "http"
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[h11.Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The base URL to send requests to."""
        return f"{self.scheme}://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serving(script: Script, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """Run `script` for every connection on a fresh 127.0.0.1 port until the block ends."""
    server = Server(scheme="https" if tls else "http")

    async def handle(stream: trio.SocketStream) -> None:
        server.connections += 1
        server.open_now += 1
        server.most_open = max(server.most_open, server.open_now)
        wrapped: trio.abc.Stream = stream
        if tls is not None:
            wrapped = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
        try:
            await script(_Recording(wrapped, server.connections, server))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            server.open_now -= 1
            await trio.aclose_forcefully(wrapped)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


class _Recording(Peer):
    """A Peer that also records each request on the server."""

    def __init__(self, stream: trio.abc.Stream, number: int, server: Server) -> None:
        super().__init__(stream, number)
        self.server = server

    async def request(self) -> tuple[h11.Request, bytes] | None:
        """As Peer.request, recording the head."""
        got = await super().request()
        if got is not None:
            self.server.requests.append(got[0])
        return got


def ok(body: bytes = IDENTITY, *, extra: bytes = b"") -> bytes:
    """A 200 with a Content-Length body."""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


async def answer_all(peer: Peer) -> None:
    """Answer every request on the connection with `ok()`."""
    while await peer.request() is not None:
        await peer.send(ok())


def client(transport: Http1Transport, **timeouts: float) -> httpx.AsyncClient:
    """An httpx client over `transport`, as the daemon builds it (no redirects)."""
    timeout = httpx.Timeout(5.0, **timeouts)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)


# --- keep-alive and the pool ---------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    """Three GETs in a row travel on one TCP connection, which then waits idle in the pool."""
    transport = Http1Transport()
    async with serving(answer_all) as server, client(transport) as http:
        for _ in range(3):
            response = await http.get(f"{server.url}/?Action=GetCallerIdentity")
            assert response.status_code == 200 and response.content == IDENTITY
        assert server.connections == 1 and len(server.requests) == 3
        assert transport.open_connections == 1 and transport.idle_connections == 1
        assert server.requests[0].target == b"/?Action=GetCallerIdentity"
        assert (b"host", b"127.0.0.1:%d" % server.port) in server.requests[0].headers


async def test_pool_bound_makes_requests_wait_for_a_free_connection() -> None:
    """With max_connections=2, six concurrent GETs never use more than 2 connections, and all
    are answered once the held ones are released."""
    release = trio.Event()
    arrived = 0

    async def slow(peer: Peer) -> None:
        nonlocal arrived
        while await peer.request() is not None:
            arrived += 1
            await release.wait()
            await peer.send(ok())

    transport = Http1Transport(max_connections=2)
    statuses: list[int] = []
    async with serving(slow) as server, client(transport) as http:

        async def get() -> None:
            statuses.append((await http.get(server.url + "/")).status_code)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(get)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert arrived == 2 and transport.open_connections == 2
                assert transport.waiting_requests == 4
                release.set()
        assert statuses == [200] * 6
        assert server.most_open == 2 and server.connections == 2


async def test_pool_timeout_when_every_connection_stays_busy() -> None:
    """A request that finds the only connection busy past the pool timeout gets PoolTimeout."""
    never = trio.Event()

    async def stall(peer: Peer) -> None:
        await peer.request()
        await never.wait()

    transport = Http1Transport(max_connections=1)
    async with serving(stall) as server, client(transport, pool=0.1, read=30) as http:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(http.get, server.url + "/")
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert len(server.requests) == 1
            with pytest.raises(httpx.PoolTimeout):
                await http.get(server.url + "/")
            nursery.cancel_scope.cancel()
        # The cancelled request gave its place back: a new request can open a connection.
        assert transport.open_connections == 0


async def test_idle_connection_of_another_origin_is_closed_to_make_room() -> None:
    """At the cap, an idle connection to origin A is closed so that origin B can connect."""
    transport = Http1Transport(max_connections=1)
    async with serving(answer_all) as a, serving(answer_all) as b, client(transport) as http:
        assert (await http.get(a.url + "/")).status_code == 200
        assert (await http.get(b.url + "/")).status_code == 200
        assert transport.open_connections == 1 and a.connections == b.connections == 1


async def test_server_closing_between_requests_costs_no_error() -> None:
    """An idle connection the server has closed is seen to be dead before use: even POSTs,
    which are never retried, go out on a new connection without error."""

    closed_send, closed = trio.open_memory_channel[int](10)

    async def one_then_close(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(ok())
            await peer.close()
            await closed_send.send(peer.number)

    async with serving(one_then_close) as server, client(Http1Transport()) as http:
        for _ in range(3):
            assert (await http.post(server.url + "/", content=b"x")).status_code == 200
            await closed.receive()  # the close has reached the idle connection's socket
        assert server.connections == 3 and len(server.requests) == 3


async def test_request_on_a_connection_closed_under_it_is_not_sent_twice() -> None:
    """A connection the server closes as the request arrives fails that request (the caller,
    authd's STS guard, decides about retrying and counts it); the next request gets a new
    connection."""

    async def close_on_second(peer: Peer) -> None:
        served = 0
        while await peer.request() is not None:
            if served == 1 and peer.number == 1:
                await peer.close()  # a keep-alive timeout racing the request
                return
            await peer.send(ok())
            served += 1

    transport = Http1Transport()
    async with serving(close_on_second) as server, client(transport) as http:
        assert (await http.get(server.url + "/")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.get(server.url + "/")
        assert transport.open_connections == 0
        assert (await http.get(server.url + "/")).status_code == 200
        assert server.connections == 2 and len(server.requests) == 3


async def test_connection_close_answer_is_not_pooled() -> None:
    """A response saying `Connection: close` leaves no connection behind in the pool."""

    async def closing(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(ok(extra=b"connection: close\r\n"))

    transport = Http1Transport()
    async with serving(closing) as server, client(transport) as http:
        assert (await http.get(server.url + "/")).content == IDENTITY
        assert transport.open_connections == 0 and transport.idle_connections == 0


async def test_response_closed_before_its_end_drops_the_connection() -> None:
    """Closing a response with body left unread closes its connection instead of pooling it."""

    async def big(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(ok(b"x" * 300_000))

    transport = Http1Transport()
    async with serving(big) as server, client(transport) as http:
        async with http.stream("GET", server.url + "/") as response:
            chunks = response.stream.__aiter__()
            async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                assert await anext(chunks)
        assert transport.open_connections == 0
        assert len((await http.get(server.url + "/")).content) == 300_000
        assert server.connections == 2 and transport.idle_connections == 1


async def test_aclose_closes_idle_connections() -> None:
    """Closing the client closes its idle connections: the server sees them end."""
    ended = trio.Event()

    async def note_end(peer: Peer) -> None:
        await answer_all(peer)
        ended.set()

    transport = Http1Transport()
    async with serving(note_end) as server:
        async with client(transport) as http:
            await http.get(server.url + "/")
        with trio.fail_after(5):
            await ended.wait()
        assert transport.open_connections == 0


# --- framing ----------------------------------------------------------------------------------


async def test_chunked_body_is_reassembled() -> None:
    """A chunked answer sent in several writes arrives whole, and the connection is reused."""

    async def chunked(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b'{"a":', b'"b"', b"}"):
                await peer.send_in_pieces(b"%x\r\n%s\r\n" % (len(part), part), 3)
            await peer.send(b"0\r\n\r\n")

    async with serving(chunked) as server, client(Http1Transport()) as http:
        for _ in range(2):
            assert (await http.get(server.url + "/")).content == b'{"a":"b"}'
        assert server.connections == 1


async def test_content_length_body_split_across_writes() -> None:
    """A Content-Length body that arrives in pieces is read to its declared end."""

    async def split(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send_in_pieces(ok(b"0123456789" * 1000), 4000)

    async with serving(split) as server, client(Http1Transport()) as http:
        assert (await http.get(server.url + "/")).content == b"0123456789" * 1000


async def test_request_body_and_headers_reach_the_server() -> None:
    """A POST's body and the caller's headers are sent as given."""
    bodies: list[bytes] = []

    async def echo(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            bodies.append(got[1])
            await peer.send(ok())

    async with serving(echo) as server, client(Http1Transport()) as http:
        await http.post(server.url + "/p?q=1", content=b"hello", headers={"x-k8s-aws-id": "c1"})
        (request,) = server.requests
        assert request.method == b"POST" and request.target == b"/p?q=1"
        assert (b"x-k8s-aws-id", b"c1") in request.headers and bodies == [b"hello"]


async def test_redirect_is_returned_not_followed() -> None:
    """A 302 comes back as the answer; its Location is never requested."""

    async def redirect(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(
                b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/elsewhere\r\n"
                b"content-length: 0\r\n\r\n"
            )

    transport = Http1Transport()
    http = httpx.AsyncClient(transport=transport, timeout=5, follow_redirects=True)
    async with serving(redirect) as server, http:
        # Even a client told to follow redirects gets the 302 from a transport-level send.
        response = await transport.handle_async_request(http.build_request("GET", server.url))
        assert response.status_code == 302
        await response.aclose()
        assert len(server.requests) == 1


# StsClient closes the `aiter_bytes` generator it leaves early, but httpx nests two more async
# generators under it (aiter_raw, BoundAsyncStream.__aiter__) that only the garbage collector
# finalises; trio then warns. Harmless (the connection is closed by `response.aclose()`), and not
# this transport's doing: MockTransport answers are pre-read, so test_sts.py never sees it.
@pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning")
async def test_body_over_the_sts_limit_is_refused_by_the_client_reader() -> None:
    """StsClient over Http1Transport stops reading past MAX_BODY_BYTES and the connection is
    dropped, not pooled with unread bytes."""

    async def huge(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(ok(b" " * (MAX_BODY_BYTES * 4)))

    transport = Http1Transport()
    async with serving(huge) as server, transport:
        request = _presigned_for(server.url)
        with pytest.raises(StsUnavailableError, match="body larger than"):
            await StsClient(transport).get_caller_identity(request, cluster_id="c1")
        assert transport.open_connections == 0


async def test_malformed_answer_is_a_protocol_error() -> None:
    """Bytes that are not HTTP become httpx.RemoteProtocolError."""

    async def garbage(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"SPDY/9 what\r\n\r\n")

    async with serving(garbage) as server, client(Http1Transport()) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url + "/")


async def test_server_closing_mid_body_is_a_protocol_error() -> None:
    """A body cut short by the server closing is an error, not a short answer."""

    async def cut(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await peer.close()

    transport = Http1Transport()
    async with serving(cut) as server, client(transport) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url + "/")
        assert transport.open_connections == 0


# --- timeouts and connection errors -------------------------------------------------------------


async def test_read_timeout() -> None:
    """A server that never answers trips the read timeout as httpx.ReadTimeout."""
    never = trio.Event()

    async def silent(peer: Peer) -> None:
        await peer.request()
        await never.wait()

    transport = Http1Transport()
    async with serving(silent) as server, client(transport, read=0.1) as http:
        with trio.fail_after(5), pytest.raises(httpx.ReadTimeout):
            await http.get(server.url + "/")
        assert transport.open_connections == 0


async def test_write_timeout() -> None:
    """A server that never reads trips the write timeout once the socket buffers are full."""
    never = trio.Event()

    async def deaf(peer: Peer) -> None:
        await never.wait()

    async with serving(deaf) as server, client(Http1Transport(), write=0.2) as http:
        with trio.fail_after(10), pytest.raises(httpx.WriteTimeout):
            await http.post(server.url + "/", content=b"x" * (64 * 1024 * 1024))


async def test_connect_timeout_covers_the_tls_handshake() -> None:
    """A TCP server that never speaks TLS trips the connect timeout as httpx.ConnectTimeout."""
    never = trio.Event()

    async def mute(peer: Peer) -> None:
        await never.wait()

    transport = Http1Transport()
    async with serving(mute) as server, client(transport, connect=0.1) as http:
        with trio.fail_after(5), pytest.raises(httpx.ConnectTimeout):
            await http.get(f"https://127.0.0.1:{server.port}/")
        assert transport.open_connections == 0


async def test_connection_refused_is_a_connect_error() -> None:
    """Nothing listening on the port: httpx.ConnectError, and no place is held in the pool."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = Http1Transport()
    async with client(transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")
    assert transport.open_connections == 0


async def test_unsupported_scheme_is_refused() -> None:
    """Only http and https are spoken."""
    async with client(Http1Transport()) as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


def test_bad_pool_settings_are_refused() -> None:
    """A pool without room or with a negative expiry is a programming error."""
    with pytest.raises(ValueError, match="max_connections"):
        Http1Transport(max_connections=0)
    with pytest.raises(ValueError, match="keepalive_expiry"):
        Http1Transport(keepalive_expiry=-1)


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a self-signed 127.0.0.1 certificate."""
    cert, key = serving_cert(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def test_https_with_a_trusted_certificate_keeps_the_connection(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """https through a context that trusts the server: answers, one TLS connection reused."""
    server_context, client_context = tls_pair
    async with (
        serving(answer_all, tls=server_context) as server,
        client(Http1Transport(ssl_context=client_context)) as http,
    ):
        for _ in range(2):
            assert (await http.get(server.url + "/")).content == IDENTITY
        assert server.connections == 1


async def test_https_default_context_refuses_an_untrusted_certificate(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The default context verifies: a self-signed certificate fails as httpx.ConnectError."""
    server_context, _ = tls_pair
    transport = Http1Transport()
    async with serving(answer_all, tls=server_context) as server, client(transport) as http:
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            await http.get(server.url + "/")
        assert transport.open_connections == 0


# --- StsClient over the transport ------------------------------------------------------------


def _presigned_for(origin: str) -> PresignedRequest:
    """A checked request for an unsigned-but-well-formed URL on `origin` (a local server)."""
    now = datetime.now(UTC)
    url = (
        f"{origin}/?Action=GetCallerIdentity&Version=2011-06-15"
        "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIAEXAMPLE%2F{now:%Y%m%d}%2Fus-east-1%2Fsts%2Faws4_request"
        f"&X-Amz-Date={now:%Y%m%dT%H%M%SZ}&X-Amz-Expires=60"
        "&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&X-Amz-Signature=" + "ab" * 32
    )
    policy = EndpointPolicy.create(partition="aws", extra_origins=[origin])
    return verify(encode(url), now=now, policy=policy)


async def test_sts_client_over_http1_transport_against_moto(
    sts_front: StsFront, iam_user: IamUser
) -> None:
    """A real presigned token, checked by the STS front and answered by moto, yields the
    IAM user's identity through StsClient over Http1Transport, twice on one connection."""
    credentials = Credentials(iam_user.access_key_id, iam_user.secret_access_key)
    policy = EndpointPolicy.create(partition="aws", extra_origins=[sts_front.url])
    transport = Http1Transport()
    async with transport:
        for _ in range(2):
            presigned = AWSRequest(
                method="GET",
                url=f"{sts_front.url}/?Action=GetCallerIdentity&Version=2011-06-15",
                headers={"x-k8s-aws-id": "cluster-1"},
            )
            SigV4QueryAuth(credentials, "sts", "us-east-1", expires=60).add_auth(presigned)
            request = verify(encode(str(presigned.url)), now=datetime.now(UTC), policy=policy)
            identity = await StsClient(transport).get_caller_identity(
                request, cluster_id="cluster-1"
            )
            assert identity.arn == iam_user.arn
            assert identity.access_key_id == iam_user.access_key_id
        assert transport.open_connections == 1 and transport.idle_connections == 1


async def test_sts_client_classifies_redirect_timeout_and_cut_body() -> None:
    """Over the production transport a 302 is unavailable (not followed), a body cut short a
    read error carrying the status, and a silent server a GET error."""
    never = trio.Event()

    async def script(peer: Peer) -> None:
        got = await peer.request()
        assert got is not None
        if peer.number == 1:
            await peer.send(
                b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/\r\n"
                b"content-length: 0\r\nconnection: close\r\n\r\n"
            )
        elif peer.number == 2:
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
            await peer.close()
        else:
            await never.wait()

    transport = Http1Transport()
    async with serving(script) as server, transport:
        sts = StsClient(transport, timeout=0.2)
        request = _presigned_for(server.url)
        with pytest.raises(StsUnavailableError, match="got 302") as redirect:
            await sts.get_caller_identity(request, cluster_id="c1")
        assert redirect.value.status == 302
        with pytest.raises(StsUnavailableError, match="error reading HTTP result") as cut:
            await sts.get_caller_identity(request, cluster_id="c1")
        assert cut.value.status == 200
        with trio.fail_after(5), pytest.raises(StsUnavailableError, match="error during GET"):
            await sts.get_caller_identity(request, cluster_id="c1")
        assert len(server.requests) == 3


async def test_sts_client_carries_no_cookie_from_one_call_to_the_next() -> None:
    """A cookie STS sets on one user's call is not sent with the next one through the daemon's
    client (`open_sts_client`), as upstream's Go client, which has no cookie jar, sends none."""
    identity = (
        b'{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Arn":'
        b'"arn:aws:iam::123456789012:user/Alice","Account":"123456789012","UserId":"AIDA1"}}}'
    )

    async def cookie_setter(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(ok(identity, extra=b"set-cookie: session=from-sts; Path=/\r\n"))

    async with (
        serving(cookie_setter) as server,
        open_sts_client(step_timeout=5, proxies=Proxies()) as sts,
    ):
        for _ in range(2):
            found = await sts.get_caller_identity(_presigned_for(server.url), cluster_id="c1")
            assert found.user_id == "AIDA1"
        assert len(server.requests) == 2 and server.connections == 1
        assert all(name != b"cookie" for name, _ in server.requests[1].headers)
