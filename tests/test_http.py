"""Tests for authd.server.http: real TLS on 127.0.0.1, every limit, errors, graceful shutdown."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from authd.errors import ConfigError
from authd.server.http import (
    Handler,
    Limits,
    Request,
    Response,
    serve_http,
    serve_https,
    serve_stream,
)
from authd.server.tls import KeyPair, load_or_create_keypair, server_ssl_context

TEXT = ((b"content-type", b"text/plain; charset=utf-8"),)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """A generated key pair shared by the module's servers."""
    state: Path = tmp_path_factory.mktemp("state")
    return load_or_create_keypair(state, address="127.0.0.1", hostname="localhost")


def _client_context(pair: KeyPair) -> ssl.SSLContext:
    """A client context that trusts only the generated certificate."""
    return ssl.create_default_context(cadata=pair.cert_pem.decode())


async def echo(request: Request) -> Response:
    """Answer with what the server parsed, as JSON."""
    doc = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "body": request.body.decode("latin-1"),
        "client": list(request.client) if request.client else None,
        "x-test": (request.header(b"x-test") or b"").decode(),
    }
    return Response(
        status=200,
        headers=((b"content-type", b"application/json"),),
        body=json.dumps(doc).encode(),
    )


@asynccontextmanager
async def running(
    handler: Handler,
    *,
    pair: KeyPair | None,
    limits: Limits = Limits(),  # noqa: B008 - frozen value
) -> AsyncIterator[tuple[str, int]]:
    """Run an HTTPS (or, without a pair, plain HTTP) server on 127.0.0.1:0 for the block."""
    async with trio.open_nursery() as nursery:
        if pair is None:
            serve = partial(serve_http, handler, host="127.0.0.1", port=0, limits=limits)
        else:
            ctx = server_ssl_context(pair)
            serve = partial(
                serve_https, handler, ssl_context=ctx, host="127.0.0.1", port=0, limits=limits
            )
        address: tuple[str, int] = await nursery.start(serve)
        yield address
        nursery.cancel_scope.cancel()


class Raw:
    """A byte-level HTTP client over any trio stream, for what httpx will not send."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    async def response(self, *, head: bool = False) -> tuple[int, dict[bytes, bytes], bytes]:
        """Read one response: status, headers (lower-case names), body (by Content-Length,
        none when answering HEAD)."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                raise EOFError(f"connection closed; got {self.buffer!r}")
        status_and_headers, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = status_and_headers.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            if not await self._fill():
                raise EOFError("connection closed mid-body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    async def closed(self) -> bytes:
        """Read to the end of the connection; returns whatever came before it."""
        while await self._fill():
            pass
        return self.buffer


@asynccontextmanager
async def raw_tls(address: tuple[str, int], pair: KeyPair) -> AsyncIterator[Raw]:
    """A raw client over TLS that verifies the generated certificate; closed after the block."""
    stream = await trio.open_ssl_over_tcp_stream(
        address[0], address[1], ssl_context=_client_context(pair), https_compatible=True
    )
    async with stream:
        yield Raw(stream)


@asynccontextmanager
async def raw_tcp(address: tuple[str, int]) -> AsyncIterator[Raw]:
    """A raw client over plain TCP; closed after the block."""
    async with await trio.open_tcp_stream(*address) as stream:
        yield Raw(stream)


# --- the happy path -------------------------------------------------------------------------


async def test_https_round_trip_with_verified_certificate(pair: KeyPair) -> None:
    """httpx verifying the generated cert gets the parsed request echoed, with server headers."""
    async with (
        running(echo, pair=pair) as (_host, port),
        httpx.AsyncClient(verify=_client_context(pair)) as client,
    ):
        for host in ("localhost", "127.0.0.1"):
            reply = await client.post(
                f"https://{host}:{port}/a/b?x=1&y=2", content=b"hello", headers={"X-Test": "v"}
            )
            assert reply.status_code == 200
            assert reply.http_version == "HTTP/1.1"
            doc = reply.json()
            assert doc["method"] == "POST"
            assert doc["path"] == "/a/b"
            assert doc["query"] == "x=1&y=2"
            assert doc["body"] == "hello"
            assert doc["x-test"] == "v"
            assert doc["client"][0] == "127.0.0.1"
            assert reply.headers["content-type"] == "application/json"
            assert int(reply.headers["content-length"]) == len(reply.content)
            assert reply.headers["date"].endswith(" GMT")


async def test_keep_alive_reuses_one_connection(pair: KeyPair) -> None:
    """Several requests from one client travel over a single connection (same client port)."""
    async with (
        running(echo, pair=pair) as (host, port),
        httpx.AsyncClient(verify=_client_context(pair)) as client,
    ):
        ports = set()
        for _ in range(5):
            reply = await client.get(f"https://{host}:{port}/")
            ports.add(reply.json()["client"][1])
        assert len(ports) == 1


async def test_pipelined_requests_are_answered_in_order(pair: KeyPair) -> None:
    """Two requests written back to back get two responses, in order, on one connection."""
    async with running(echo, pair=pair) as address, raw_tls(address, pair) as raw:
        await raw.send(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        )
        first = json.loads((await raw.response())[2])
        second = json.loads((await raw.response())[2])
        assert (first["path"], second["path"], second["body"]) == ("/one", "/two", "abc")


async def test_head_request_gets_headers_only() -> None:
    """A HEAD answer carries the Content-Length of the body but no body bytes."""
    async with running(echo, pair=None) as address, raw_tcp(address) as raw:
        await raw.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await raw.response(head=True)
        assert status == 200
        assert int(headers[b"content-length"]) > 0
        # Body bytes after the HEAD answer would show up before the next status line.
        status, _, body = await raw.response()
        assert (status, json.loads(body)["path"]) == (200, "/g")


async def test_plain_http_variant_serves_the_same_handler() -> None:
    """serve_http (the health listener) answers over plain TCP."""
    async with running(echo, pair=None) as (host, port), httpx.AsyncClient() as client:
        reply = await client.get(f"http://{host}:{port}/healthz")
        assert reply.status_code == 200
        assert reply.json()["path"] == "/healthz"


async def test_expect_100_continue_is_honoured() -> None:
    """A client waiting for 100 Continue gets it, then its body is read and answered."""
    async with running(echo, pair=None) as address, raw_tcp(address) as raw:
        await raw.send(
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _, _ = await raw.response()
        assert status == 100
        await raw.send(b"12345")
        status, _, body = await raw.response()
        assert status == 200
        assert json.loads(body)["body"] == "12345"


# --- limits ---------------------------------------------------------------------------------


def _counting(calls: list[str]) -> Handler:
    async def handler(request: Request) -> Response:
        calls.append(request.path)
        return await echo(request)

    return handler


async def test_head_over_16_kib_gets_431(pair: KeyPair) -> None:
    """A request head over 16 KiB is answered 431 without reaching the handler."""
    calls: list[str] = []
    async with (
        running(_counting(calls), pair=pair) as (host, port),
        httpx.AsyncClient(verify=_client_context(pair)) as client,
    ):
        url = f"https://{host}:{port}/"
        reply = await client.get(url, headers={"X-Big": "a" * 17_000})
        assert reply.status_code == 431
        assert reply.headers["connection"] == "close"
        assert calls == []
        ok = await client.get(url, headers={"X-Big": "a" * 15_000})
        assert ok.status_code == 200
        assert calls == ["/"]


async def test_content_length_over_1_mib_is_refused_before_the_body_is_sent(
    pair: KeyPair,
) -> None:
    """A Content-Length over 1 MiB gets 413 at once, before any body byte is sent."""
    calls: list[str] = []
    async with running(_counting(calls), pair=pair) as address, raw_tls(address, pair) as raw:
        await raw.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n")
        with trio.fail_after(5):
            status, headers, _ = await raw.response()
        assert (status, headers[b"connection"]) == (413, b"close")
        assert calls == []


async def test_body_limit_with_httpx_sending_it_all(pair: KeyPair) -> None:
    """A client that sends a 2 MiB body anyway still reads the 413; exactly 1 MiB passes."""
    calls: list[str] = []
    async with (
        running(_counting(calls), pair=pair) as (host, port),
        httpx.AsyncClient(verify=_client_context(pair)) as client,
    ):
        url = f"https://{host}:{port}/"
        reply = await client.post(url, content=b"x" * (2 * 1024 * 1024))
        assert reply.status_code == 413
        assert calls == []
        reply = await client.post(url, content=b"y" * (1024 * 1024))
        assert reply.status_code == 200
        assert len(reply.json()["body"]) == 1024 * 1024


async def test_chunked_body_over_limit_gets_413(pair: KeyPair) -> None:
    """A chunked body is counted while read: past 1 MiB it gets 413; under, it is joined."""
    calls: list[str] = []

    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"z" * 65536

    async with (
        running(_counting(calls), pair=pair) as (host, port),
        httpx.AsyncClient(verify=_client_context(pair)) as client,
    ):
        url = f"https://{host}:{port}/"
        reply = await client.post(url, content=chunks(24))
        assert reply.status_code == 413
        assert calls == []
        reply = await client.post(url, content=chunks(3))
        assert reply.status_code == 200
        assert reply.json()["body"] == "z" * 3 * 65536


async def _memory_server(
    limits: Limits = Limits(),  # noqa: B008 - frozen value
) -> tuple[Raw, Callable[[trio.Nursery], None]]:
    """A connection served over an in-memory pipe, so the autojump clock can drive timeouts."""
    client, server = trio.testing.memory_stream_pair()

    def start(nursery: trio.Nursery) -> None:
        nursery.start_soon(partial(serve_stream, server, echo, limits=limits))

    return Raw(client), start


async def test_slow_head_gets_408_after_10_seconds(autojump_clock: trio.abc.Clock) -> None:
    """A head still incomplete 10 s after the connection opened is answered 408 and closed."""
    raw, start = await _memory_server()
    async with trio.open_nursery() as nursery:
        start(nursery)
        begin = trio.current_time()
        await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        status, headers, _ = await raw.response()
        assert status == 408
        assert headers[b"connection"] == b"close"
        assert trio.current_time() - begin == pytest.approx(10)
        assert await raw.closed() == b""


async def test_head_trickling_past_16_kib_gets_431(autojump_clock: trio.abc.Clock) -> None:
    """A head that keeps growing without ending is refused with 431 once it passes 16 KiB."""
    raw, start = await _memory_server()
    async with trio.open_nursery() as nursery:
        start(nursery)
        await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with trio.move_on_after(5):  # the server stops reading once it has refused
            for _ in range(40):
                await raw.send(b"X-Filler: " + b"f" * 988 + b"\r\n")
        status, headers, _ = await raw.response()
        assert (status, headers[b"connection"]) == (431, b"close")


async def test_silent_connection_is_closed_without_answer(autojump_clock: trio.abc.Clock) -> None:
    """A connection that sends nothing is closed after the header timeout, with no bytes."""
    raw, start = await _memory_server()
    async with trio.open_nursery() as nursery:
        start(nursery)
        begin = trio.current_time()
        assert await raw.closed() == b""
        assert trio.current_time() - begin == pytest.approx(10)


async def test_idle_keep_alive_closes_after_60_seconds(autojump_clock: trio.abc.Clock) -> None:
    """Between requests a connection may idle 60 s; then it is closed without a 408."""
    raw, start = await _memory_server()
    async with trio.open_nursery() as nursery:
        start(nursery)
        await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await raw.response())[0] == 200
        await trio.sleep(59)
        await raw.send(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")  # within the idle limit
        assert (await raw.response())[0] == 200
        begin = trio.current_time()
        assert await raw.closed() == b""
        assert trio.current_time() - begin == pytest.approx(60)


async def test_started_second_head_gets_the_header_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Once the next request's first byte arrives, its head is due within 10 s, not 60."""
    raw, start = await _memory_server()
    async with trio.open_nursery() as nursery:
        start(nursery)
        await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await raw.response()
        await trio.sleep(30)
        await raw.send(b"GET / HT")
        begin = trio.current_time()
        assert (await raw.response())[0] == 408
        assert trio.current_time() - begin == pytest.approx(10)


async def test_slow_handler_is_not_cut_by_the_header_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A handler may take longer than the 10 s header timeout: it and the wait for the next
    request share the 60 s idle timeout, counted from the moment the handler is called."""

    async def slow(request: Request) -> Response:
        await trio.sleep(15)
        return Response(status=200, body=b"late")

    client, server = trio.testing.memory_stream_pair()
    raw = Raw(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server, slow)
        begin = trio.current_time()
        await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await raw.response()
        assert (status, body) == (200, b"late")
        assert trio.current_time() - begin == pytest.approx(15)
        assert await raw.closed() == b""
        assert trio.current_time() - begin == pytest.approx(60)


async def test_stalled_body_gets_408(autojump_clock: trio.abc.Clock) -> None:
    """A body that stops arriving is answered 408 after the body timeout."""
    raw, start = await _memory_server(Limits(body_timeout=5))
    async with trio.open_nursery() as nursery:
        start(nursery)
        await raw.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        begin = trio.current_time()
        assert (await raw.response())[0] == 408
        assert trio.current_time() - begin == pytest.approx(5)


async def test_tls_handshake_must_finish_within_the_header_timeout(pair: KeyPair) -> None:
    """A TCP client that never starts TLS is dropped after the (here short) header timeout."""
    limits = Limits(header_timeout=0.3)
    async with running(echo, pair=pair, limits=limits) as address, raw_tcp(address) as raw:
        begin = trio.current_time()
        with trio.fail_after(5):
            assert await raw.closed() == b""
        assert trio.current_time() - begin >= 0.25


async def test_connections_over_the_cap_wait_for_a_free_slot(pair: KeyPair) -> None:
    """With a cap of one, a second client waits until the first connection closes."""
    ctx = _client_context(pair)
    async with running(echo, pair=pair, limits=Limits(max_connections=1)) as (host, port):
        url = f"https://{host}:{port}/"
        first = httpx.AsyncClient(verify=ctx)
        assert (await first.get(url)).status_code == 200  # holds the only slot (keep-alive)
        replies: list[int] = []
        second_done = trio.Event()

        async def second() -> None:
            async with httpx.AsyncClient(verify=ctx) as client:
                replies.append((await client.get(url)).status_code)
            second_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            with trio.move_on_after(0.5):
                await second_done.wait()
            assert replies == []  # still waiting in the listen backlog
            await first.aclose()
            with trio.fail_after(5):
                await second_done.wait()
        assert replies == [200]


# --- errors ---------------------------------------------------------------------------------


async def test_plain_http_and_garbage_on_the_tls_port_do_not_hurt(pair: KeyPair) -> None:
    """Plain HTTP or random bytes on the TLS port end that connection; the server goes on."""
    async with running(echo, pair=pair) as address:
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4):
            async with raw_tcp(address) as raw:
                await raw.send(junk)
                with trio.fail_after(5):
                    leftover = await raw.closed()
                assert not leftover.startswith(b"HTTP/")
        async with httpx.AsyncClient(verify=_client_context(pair)) as client:
            reply = await client.get(f"https://{address[0]}:{address[1]}/still")
            assert reply.status_code == 200


async def test_protocol_error_gets_400_and_close(pair: KeyPair) -> None:
    """A malformed request over TLS is answered 400 with Connection: close, then closed."""
    async with running(echo, pair=pair) as address, raw_tls(address, pair) as raw:
        await raw.send(b"NOT AN HTTP REQUEST\r\n\r\n")
        status, headers, _ = await raw.response()
        assert (status, headers[b"connection"]) == (400, b"close")
        assert await raw.closed() == b""


async def test_handler_exception_is_a_logged_500_and_the_connection_survives(
    pair: KeyPair,
) -> None:
    """A handler that raises yields 500 and an error log; the same connection serves on."""

    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return await echo(request)

    async with (
        running(handler, pair=pair) as (host, port),
        httpx.AsyncClient(verify=_client_context(pair)) as client,
    ):
        with capture_logs() as logs:
            reply = await client.get(f"https://{host}:{port}/boom")
        assert reply.status_code == 500
        assert reply.text == "500 Internal Server Error\n"
        failures = [x for x in logs if x["event"] == "request handler failed"]
        assert failures and failures[0]["log_level"] == "error"
        assert failures[0]["path"] == "/boom"
        after = await client.get(f"https://{host}:{port}/ok")
        assert after.status_code == 200


async def test_invalid_response_from_handler_becomes_500() -> None:
    """A response h11 cannot send (a header with a newline) is replaced by a 500."""

    async def handler(request: Request) -> Response:
        return Response(status=200, headers=((b"x-bad", b"a\r\nb"),), body=b"")

    async with running(handler, pair=None) as (host, port), httpx.AsyncClient() as client:
        assert (await client.get(f"http://{host}:{port}/")).status_code == 500


def test_nonsense_limits_are_refused() -> None:
    """Limits that would make the server unusable raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match="max_connections"):
        Limits(max_connections=0)
    with pytest.raises(ConfigError, match="header_timeout"):
        Limits(header_timeout=0)
    with pytest.raises(ConfigError, match="shutdown_grace"):
        Limits(shutdown_grace=-1)


# --- graceful shutdown ----------------------------------------------------------------------


async def test_graceful_shutdown_finishes_in_flight_and_closes_idle(pair: KeyPair) -> None:
    """On shutdown: idle connections close, new ones are refused, a slow request still gets
    its answer (with Connection: close), and then the server returns."""
    entered, release, stopped = trio.Event(), trio.Event(), trio.Event()
    shutdown = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            entered.set()
            await release.wait()
        return Response(status=200, headers=TEXT, body=b"done")

    async def server(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        await serve_https(
            handler,
            ssl_context=server_ssl_context(pair),
            host="127.0.0.1",
            port=0,
            shutdown=shutdown,
            task_status=task_status,
        )
        stopped.set()

    slow_reply: list[httpx.Response] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server)
            async with raw_tls((host, port), pair) as idle:
                await idle.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await idle.response())[0] == 200

                async def slow() -> None:
                    async with httpx.AsyncClient(verify=_client_context(pair)) as client:
                        slow_reply.append(await client.get(f"https://{host}:{port}/slow"))

                nursery.start_soon(slow)
                await entered.wait()
                shutdown.set()
                assert await idle.closed() == b""  # the idle keep-alive connection is closed
            with pytest.raises(OSError):
                await trio.open_tcp_stream(host, port)  # no longer accepting
            assert not stopped.is_set()  # still draining the slow request
            release.set()
            await stopped.wait()
    assert slow_reply[0].status_code == 200
    assert slow_reply[0].text == "done"
    assert slow_reply[0].headers["connection"] == "close"


async def test_shutdown_grace_bounds_a_stuck_request() -> None:
    """A request that never finishes is cut off when the grace period ends."""
    shutdown = trio.Event()
    entered = trio.Event()

    async def stuck(request: Request) -> Response:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    errors: list[Exception] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(
                    serve_http,
                    stuck,
                    host="127.0.0.1",
                    port=0,
                    limits=Limits(shutdown_grace=0.2),
                    shutdown=shutdown,
                )
            )

            async def client() -> None:
                async with httpx.AsyncClient() as http:
                    try:
                        await http.get(f"http://{host}:{port}/")
                    except httpx.HTTPError as exc:
                        errors.append(exc)

            nursery.start_soon(client)
            await entered.wait()
            begin = trio.current_time()
            shutdown.set()
    assert trio.current_time() - begin >= 0.2
    assert len(errors) == 1


# --- issue 13: request smuggling and one client's share of the connections -------------------


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["length-first", "encoding-first"],
)
async def test_content_length_with_transfer_encoding_gets_400_and_close(
    pair: KeyPair, head: bytes
) -> None:
    """A request framed both by Content-Length and Transfer-Encoding is refused 400 and closed,
    and its handler never runs."""
    seen: list[str] = []

    async def recording(request: Request) -> Response:
        seen.append(request.path)
        return await echo(request)

    async with running(recording, pair=pair) as address, raw_tls(address, pair) as raw:
        await raw.send(head + b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await raw.response()
        assert (status, headers[b"connection"]) == (400, b"close")
        with trio.fail_after(5):
            leftover = await raw.closed()
        assert b"HTTP/1.1" not in leftover
    assert seen == []


async def test_one_client_cannot_hold_more_than_its_connection_cap(pair: KeyPair) -> None:
    """Over `max_connections_per_client`, a client's new connection is closed at once while
    its earlier ones keep working; once one closes, the client may connect again."""
    limits = Limits(max_connections=10, max_connections_per_client=2)
    async with running(echo, pair=pair, limits=limits) as address:
        async with raw_tls(address, pair) as first, raw_tls(address, pair) as second:
            async with raw_tcp(address) as third:
                with trio.fail_after(5):
                    assert await third.closed() == b""
            await first.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await first.response())[0] == 200
            await second.send(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await second.response())[0] == 200
        with trio.fail_after(5):
            async with raw_tls(address, pair) as again:
                await again.send(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await again.response())[0] == 200


def test_per_client_cap_must_be_at_least_one() -> None:
    """A per-client cap of zero would refuse everyone, so it is a configuration error."""
    with pytest.raises(ConfigError, match="max_connections_per_client"):
        Limits(max_connections_per_client=0)
