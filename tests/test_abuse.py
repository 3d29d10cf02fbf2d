"""Connection abuse against the real `authd server`: every limit answers or cuts as documented.

docs/server.md ("Connection limits") says what a client sees at each limit; docs/RELIABILITY.md
says what was run. One daemon with small limits (given as flags, so the suite stays fast) serves
the module. Abusers connect from other loopback addresses (127.0.0.2 and up) so that the
per-client cap, which would otherwise count them against the well-behaved client on 127.0.0.1,
is exercised on purpose only. After every abuse the well-behaved client is served, and at the end
the daemon is alive and logged no connection failure (a bug in the listener is logged as
`http connection failed`).

Closing by a deadline is asserted to happen (within the deadline plus a generous slack) and not
to happen before the deadline: the daemon cannot close early because the machine is slow, so
the lower bound is not a timing assertion that can flake.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authd.config import ServerSettings
from authd.config.file import FileConfig
from authd.errors import ConfigError
from tests.daemon import Daemon, base_env

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
IDLE_TIMEOUT = 3.0
MAX_HEADER = 4096
MAX_BODY = 64 * 1024
PER_CLIENT = 30
# Deadlines are asserted with this much slack: a loaded 2-core machine may be late, never early.
SLACK = 5.0
EARLY = 0.2  # the client's clock starts a little after the server's accept

CONFIG = """\
clusterID: abuse-test
server:
  mapUsers:
  - userarn: arn:aws:iam::123456789012:user/alice
    username: alice
    groups: [dev]
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The real daemon with small limits; checked alive and without listener errors at the end."""
    state = tmp_path_factory.mktemp("abuse")
    config = state / "config.yaml"
    config.write_text(CONFIG)
    proc = Daemon(
        [
            f"--config={config}",
            f"--header-timeout={HEADER_TIMEOUT}s",
            f"--body-timeout={BODY_TIMEOUT}s",
            f"--idle-timeout={IDLE_TIMEOUT}s",
            f"--max-header-bytes={MAX_HEADER}",
            f"--max-body-bytes={MAX_BODY}",
            f"--max-connections-per-client={PER_CLIENT}",
            "--max-connections=300",
        ],
        state=state,
        env=base_env(),
    )
    try:
        proc.wait_for("listening")
        yield proc
        assert proc.proc.poll() is None, "".join(proc.lines)
        assert not proc.events("http connection failed"), "".join(proc.lines)
        assert not proc.events("request handler failed"), "".join(proc.lines)
    finally:
        proc.stop()


def context(daemon: Daemon) -> ssl.SSLContext:
    """A client TLS context trusting exactly the daemon's certificate."""
    return ssl.create_default_context(cafile=daemon.cert)


def tcp(daemon: Daemon, source: str = "127.0.0.2") -> socket.socket:
    """A plain TCP connection to the webhook port from `source`."""
    sock = socket.create_connection(
        ("127.0.0.1", daemon.port), timeout=HEADER_TIMEOUT + SLACK, source_address=(source, 0)
    )
    return sock


def tls(daemon: Daemon, source: str = "127.0.0.2") -> ssl.SSLSocket:
    """A TLS connection (handshake done) to the webhook from `source`."""
    return context(daemon).wrap_socket(tcp(daemon, source), server_hostname="localhost")


def served(daemon: Daemon) -> None:
    """The well-behaved client on 127.0.0.1: a fresh connection, /healthz and a review answered."""
    with daemon.client() as client:
        assert client.get("/healthz").text == "ok"
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": "not-a-token"},
        }
        answer = client.post("/authenticate", json=review)
        assert answer.status_code == 200
        assert answer.json()["status"]["authenticated"] is False


def closed(sock: socket.socket, *, within: float) -> float:
    """Read (and drop) until the peer closes; the seconds it took. Fails if still open after
    `within`."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                break
            except ssl.SSLError as exc:
                if "UNEXPECTED_EOF" in str(exc):
                    break
                raise
            if not data:
                break
    except TimeoutError:
        pytest.fail(f"connection still open {within} s later")
    return time.monotonic() - start


def responses(sock: socket.socket, *, within: float = SLACK) -> list[tuple[int, bytes, bool]]:
    """Every response on `sock` until the server closes it: (status, body, `Connection: close`).

    The server always frames with Content-Length. Fails if it is still open after `within`.
    """
    data = bytearray()
    sock.settimeout(within)
    try:
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pytest.fail(f"connection still open {within} s later; got {bytes(data[:200])!r}")
    found = []
    rest = bytes(data)
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head {head[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        length = int(headers.get(b"content-length", b"0"))
        if status == 100:
            continue
        found.append((status, rest[:length], headers.get(b"connection") == b"close"))
        rest = rest[length:]
    return found


def get(path: str = "/healthz", *extra: str) -> bytes:
    """A GET request's bytes."""
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: localhost", *extra, "", ""])).encode()


def post(body: bytes, path: str = "/authenticate") -> bytes:
    """A POST request with a Content-Length body."""
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_many_idle_connections_are_closed_by_the_header_deadline(daemon: Daemon) -> None:
    """100 connections that never send a byte (TCP only, and TLS done but no request) hold no
    one up: the well-behaved client is served meanwhile, and each is closed, unanswered, once
    `--header-timeout` has passed."""
    sources = [f"127.0.0.{n}" for n in range(2, 6)]
    idle = [tcp(daemon, sources[n % 4]) for n in range(80)]
    idle += [tls(daemon, sources[n % 4]) for n in range(20)]
    opened = time.monotonic()
    served(daemon)
    for sock in idle:
        closed(sock, within=HEADER_TIMEOUT + SLACK)
    assert time.monotonic() - opened >= HEADER_TIMEOUT - EARLY
    for sock in idle:
        sock.close()
    served(daemon)


def test_tls_handshakes_that_never_finish_are_cut(daemon: Daemon) -> None:
    """A client that sends half a ClientHello, or completes TCP and sends nothing, is closed by
    the header deadline (it covers the handshake); others are served meanwhile."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = context(daemon).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16  # a TLS handshake record
    partial = tcp(daemon)
    partial.sendall(hello[: len(hello) // 2])
    silent = tcp(daemon)
    started = time.monotonic()
    served(daemon)
    closed(partial, within=HEADER_TIMEOUT + SLACK)
    closed(silent, within=HEADER_TIMEOUT + SLACK)
    assert time.monotonic() - started >= HEADER_TIMEOUT - EARLY
    partial.close()
    silent.close()
    served(daemon)


def _trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send `data` one byte a second until told to stop or the server closes."""
    for byte in data:
        if stop.wait(1.0):
            return
        try:
            sock.send(bytes([byte]))
        except OSError:
            return


@pytest.mark.parametrize("after_a_request", [False, True], ids=["first-head", "second-head"])
def test_slowloris_gets_408_and_close(daemon: Daemon, after_a_request: bool) -> None:
    """A head sent a byte a second is answered 408 and closed at the header deadline, the first
    request of a connection or a later one (its clock starts at its first byte); the
    well-behaved client is served while it trickles."""
    sock = tls(daemon)
    if after_a_request:
        sock.sendall(get())
        sock.settimeout(SLACK)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    stop = threading.Event()
    sender = threading.Thread(
        target=_trickle, args=(sock, get("/healthz", "X-Slow: " + "s" * 60), stop), daemon=True
    )
    started = time.monotonic()
    sender.start()
    try:
        served(daemon)
        answers = responses(sock, within=HEADER_TIMEOUT + SLACK)
    finally:
        stop.set()
        sender.join()
        sock.close()
    assert [(status, close) for status, _, close in answers] == [(408, True)]
    assert time.monotonic() - started >= HEADER_TIMEOUT - EARLY
    served(daemon)


def test_stalled_body_gets_408_and_close(daemon: Daemon) -> None:
    """A body that stops arriving is answered 408 at `--body-timeout`."""
    sock = tls(daemon)
    sock.sendall(post(b"{" * 100)[:-90])
    started = time.monotonic()
    served(daemon)
    answers = responses(sock, within=BODY_TIMEOUT + SLACK)
    sock.close()
    assert [(status, close) for status, _, close in answers] == [(408, True)]
    assert time.monotonic() - started >= BODY_TIMEOUT - EARLY


def test_kept_alive_connection_is_closed_at_the_idle_deadline(daemon: Daemon) -> None:
    """After its answer, a connection that sends nothing more is closed without an answer once
    `--idle-timeout` has passed."""
    sock = tls(daemon)
    sock.sendall(get())
    sock.settimeout(SLACK)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    closed(sock, within=IDLE_TIMEOUT + SLACK)
    sock.close()
    assert time.monotonic() - answered >= IDLE_TIMEOUT - 1.0 - EARLY  # 1 s: the /healthz call
    served(daemon)


def send_then_half_close(sock: ssl.SSLSocket, data: bytes, pieces: int = 1) -> None:
    """Send `data` in `pieces` writes, then shut the sending side (so a refusal's linger ends at
    once), tolerating a server that already closed."""
    step = len(data) // pieces + 1
    try:
        for at in range(0, len(data), step):
            sock.sendall(data[at : at + step])
        socket.socket.shutdown(sock, socket.SHUT_WR)
    except OSError:
        pass  # refused and closed before the rest; the answer is still to be read


def test_oversized_head_gets_431(daemon: Daemon) -> None:
    """A head over `--max-header-bytes`, sent at once or in pieces, gets 431 and close; one just
    under the limit is served."""
    big = get("/healthz", "X-Big: " + "b" * MAX_HEADER)
    for pieces in (1, 8):
        sock = tls(daemon)
        send_then_half_close(sock, big, pieces)
        answers = responses(sock)
        sock.close()
        assert [(status, close) for status, _, close in answers] == [(431, True)], pieces
    sock = tls(daemon)
    send_then_half_close(sock, get("/healthz", "X-Fits: " + "f" * (MAX_HEADER - 200)))
    assert [status for status, _, _ in responses(sock)] == [200]
    sock.close()
    served(daemon)


@pytest.mark.parametrize(
    ("name", "request_bytes", "pieces"),
    [
        (
            "declared",
            b"POST /authenticate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % (MAX_BODY + 1),
            1,
        ),
        ("whole", post(b"x" * (MAX_BODY + 1)), 1),
        (
            "chunked",
            b"POST /authenticate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"%x\r\n%s\r\n" % (16384, b"c" * 16384)) * 8
            + b"0\r\n\r\n",
            8,
        ),
    ],
)
def test_oversized_body_gets_413(
    daemon: Daemon, name: str, request_bytes: bytes, pieces: int
) -> None:
    """A body over `--max-body-bytes` gets 413 and close: a Content-Length over it before the
    body is sent, a whole one sent at once, a chunked one as it passes the limit."""
    sock = tls(daemon)
    send_then_half_close(sock, request_bytes, pieces)
    answers = responses(sock)
    sock.close()
    assert [(status, close) for status, _, close in answers] == [(413, True)], name
    served(daemon)


def test_body_at_the_limit_is_read(daemon: Daemon) -> None:
    """A body of exactly `--max-body-bytes` is read and handed on (the app refuses it as not a
    TokenReview) and the connection goes on."""
    sock = tls(daemon)
    send_then_half_close(sock, post(b"x" * MAX_BODY) + get())
    assert [status for status, _, _ in responses(sock)] == [400, 200]
    sock.close()


def test_pipelined_requests_are_answered_in_order(daemon: Daemon) -> None:
    """Requests sent back to back in one write are answered in order; an oversized one in the
    pipe gets its 431 after the answers before it, and ends the connection."""
    review = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"})
    sock = tls(daemon)
    sock.sendall(
        get()
        + post(b"{")
        + post(review.encode())
        + get("/readyz")
        + get("/nope", "Connection: close")
    )
    answers = responses(sock)
    sock.close()
    assert [status for status, _, _ in answers] == [200, 400, 200, 200, 404]
    assert answers[0][1] == b"ok"
    assert json.loads(answers[2][1])["status"]["authenticated"] is False

    sock = tls(daemon)
    send_then_half_close(sock, get() + get("/healthz", "X-Big: " + "b" * MAX_HEADER) + get())
    answers = responses(sock)
    sock.close()
    assert [(status, close) for status, _, close in answers] == [(200, False), (431, True)]
    served(daemon)


def test_half_closed_sockets(daemon: Daemon) -> None:
    """A client that shuts its sending side after its requests still reads every answer, then
    the close; one that shuts it before a request (before or after the TLS handshake) is closed
    unanswered, at once rather than at a deadline."""
    sock = tls(daemon)
    sock.sendall(get() + get("/readyz"))
    socket.socket.shutdown(sock, socket.SHUT_WR)  # TCP half-close under the TLS session
    answers = responses(sock, within=HEADER_TIMEOUT - 0.5)
    sock.close()
    assert [(status, close) for status, _, close in answers] == [(200, False), (200, False)]

    sock = tls(daemon)
    socket.socket.shutdown(sock, socket.SHUT_WR)
    closed(sock, within=HEADER_TIMEOUT - 0.5)
    sock.close()

    raw = tcp(daemon)
    raw.shutdown(socket.SHUT_WR)
    closed(raw, within=HEADER_TIMEOUT - 0.5)
    raw.close()
    served(daemon)


def test_garbage_and_plain_http_on_the_tls_port_are_closed(daemon: Daemon) -> None:
    """Bytes that are not TLS end that connection only."""
    for data in (get(), b"\x00" * 1000, b"\x16\x03\x01\xff\xff" + b"x" * 100):
        sock = tcp(daemon)
        sock.sendall(data)
        closed(sock, within=HEADER_TIMEOUT + SLACK)
        sock.close()
    served(daemon)


def test_per_client_cap_closes_the_extra_connection_at_once(daemon: Daemon) -> None:
    """A client IP holding `--max-connections-per-client` connections has its next one closed
    before the TLS handshake; other IPs are served; once it lets go it is served again."""
    source = "127.0.0.9"
    held = [tcp(daemon, source) for _ in range(PER_CLIENT)]
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        tls(daemon, source)
    served(daemon)
    for sock in held:
        sock.close()
    for _ in range(50):
        try:
            sock = tls(daemon, source)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            time.sleep(0.1)  # the daemon has not yet seen every close
            continue
        sock.sendall(get("/healthz", "Connection: close"))
        assert [status for status, _, _ in responses(sock)] == [200]
        sock.close()
        break
    else:
        pytest.fail("the capped client was never served again")


def test_connections_over_the_global_cap_wait_then_are_served(tmp_path: Path) -> None:
    """With every slot held by idle connections, a new client waits in the backlog (no
    handshake) and is served once the header deadline frees a slot."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    proc = Daemon(
        [f"--config={config}", "--max-connections=5", f"--header-timeout={HEADER_TIMEOUT}s"],
        state=tmp_path,
        env=base_env(),
    )
    try:
        proc.wait_for("listening")
        idle = [tcp(proc, f"127.0.0.{2 + n}") for n in range(5)]
        waiting = tcp(proc, "127.0.0.1")
        waiting.settimeout(0.5)
        with pytest.raises(TimeoutError):  # no slot: the server does not even answer TLS
            context(proc).wrap_socket(waiting, server_hostname="localhost")
        waiting.close()
        served(proc)  # waits in the backlog until the idle ones are cut
        for sock in idle:
            closed(sock, within=SLACK)
            sock.close()
        served(proc)
    finally:
        assert proc.stop() == 0


def test_limit_flags_and_keys_resolve_and_are_checked() -> None:
    """Each listener limit has a config key, a flag that wins over it, and a range check naming
    the flag."""
    text = (
        "clusterID: c\nserver:\n  maxConnections: 7\n  maxHeaderBytes: 100\n"
        "  maxBodyBytes: 200\n  headerTimeout: 3s\n  bodyTimeout: 4s\n  idleTimeout: 5s\n"
    )
    file = FileConfig.from_text(text, path="config.yaml")
    s = ServerSettings.resolve(flags={}, env={}, file=file)
    got = (s.max_connections, s.max_header_bytes, s.max_body_bytes)
    assert (*got, s.header_timeout, s.body_timeout, s.idle_timeout) == (7, 100, 200, 3, 4, 5)
    s = ServerSettings.resolve(
        flags={"header_timeout": "500ms", "max_connections": "9"}, env={}, file=file
    )
    assert (s.header_timeout, s.max_connections) == (0.5, 9)
    d = ServerSettings.resolve(flags={"cluster_ids": "c"}, env={}, file=None)
    assert (d.max_connections, d.max_header_bytes, d.max_body_bytes) == (1000, 16384, 1048576)
    assert (d.header_timeout, d.body_timeout, d.idle_timeout) == (10, 30, 60)
    for flag, attr in (("--idle-timeout", "idle_timeout"), ("--max-body-bytes", "max_body_bytes")):
        with pytest.raises(ConfigError, match=f"{flag}: must be greater than zero"):
            ServerSettings.resolve(flags={attr: "0", "cluster_ids": "c"}, env={}, file=None)
