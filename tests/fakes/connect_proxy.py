"""A forward proxy stand-in: CONNECT tunnels and absolute-URI requests, counted per target.

A real threaded TCP server on 127.0.0.1 (port 0) that speaks the two things an HTTP client
sends a proxy: `CONNECT host:port` (answered `200`, then bytes are relayed both ways, so TLS
runs end to end between the client and the target) and a plain request with an absolute URI
(`GET http://host/path`, any method, with a body: forwarded to the target as an origin-form
request, one per connection). The proxy never resolves the names it is asked for: `route` maps
every `host:port` to a local address, so a test can name the real STS or EC2 host and still
reach a stand-in on loopback. `tunnels` and `forwarded` count what went through, per
`host:port` as the client asked for it.
"""

from __future__ import annotations

import contextlib
import http.client
import selectors
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Callable

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te"}
Route = Callable[[str, int], tuple[str, int]]


class ConnectProxy:
    """The proxy; `url` is what HTTPS_PROXY/HTTP_PROXY name. Stop it with `stop()`."""

    def __init__(self, route: Route) -> None:
        """Serve at once from a daemon thread.

        Args:
            route: (host, port) asked for -> (address, port) actually connected to.
        """
        self.route = route
        self.tunnels: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def total(self) -> int:
        """Tunnels and forwarded requests so far, all targets."""
        with self._lock:
            return sum(self.tunnels.values()) + sum(self.forwarded.values())

    def count(self, kind: Counter[str], target: str) -> None:
        """Count one use of `target` (under the lock: handlers run in threads)."""
        with self._lock:
            kind[target] += 1

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def always_to(port: int, host: str = "127.0.0.1") -> Route:
    """A route sending every target to `host:port` (one stand-in behind every name)."""
    return lambda _host, _port: (host, port)


class _Handler(socketserver.StreamRequestHandler):
    proxy: ConnectProxy

    def handle(self) -> None:
        """One client connection: a CONNECT tunnel, or one forwarded request."""
        line = self.rfile.readline(65537).decode("latin-1").rstrip("\r\n")
        headers = self._headers()
        if not line:
            return
        method, target, _version = line.split(" ", 2)
        if method == "CONNECT":
            self._tunnel(target)
        else:
            self._forward(method, target, headers)

    def _headers(self) -> list[tuple[str, str]]:
        """Header lines up to the blank line."""
        headers: list[tuple[str, str]] = []
        while (raw := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        return headers

    def _tunnel(self, target: str) -> None:
        """Answer 200 and relay bytes both ways until either side closes."""
        host, _, port = target.rpartition(":")
        self.proxy.count(self.proxy.tunnels, f"{host.strip('[]')}:{port}")
        try:
            upstream = socket.create_connection(self.proxy.route(host.strip("[]"), int(port)))
        except OSError:
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        with upstream:
            # The client sends nothing more before the 200, so rfile has buffered nothing.
            _relay(self.connection, upstream)

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        """Send one absolute-URI request on to its (routed) target and its answer back."""
        scheme, _, rest = target.partition("://")
        authority, slash, path = rest.partition("/")
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
        port = int(port_text) if port_text else (443 if scheme == "https" else 80)
        self.proxy.count(self.proxy.forwarded, f"{host}:{port}")
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = self.rfile.read(length) if length else None
        address, routed_port = self.proxy.route(host, port)
        upstream = http.client.HTTPConnection(address, routed_port, timeout=30)
        try:
            upstream.putrequest(method, slash + path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.endheaders(body)
            answer = upstream.getresponse()
            content = answer.read()
        finally:
            upstream.close()
        skip = HOP_BY_HOP | {"content-length"}
        head = [f"HTTP/1.1 {answer.status} {answer.reason}"]
        head += [f"{k}: {v}" for k, v in answer.getheaders() if k.lower() not in skip]
        head += ["connection: close", f"content-length: {len(content)}"]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + content)


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes between the two sockets until one of them closes."""
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        while True:
            for key, _ in selector.select(timeout=30):
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(OSError):
                    data = source.recv(65536)
                    if data:
                        key.data.sendall(data)
                        continue
                return
