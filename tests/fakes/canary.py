"""A loopback canary: a listener no request may ever reach, counting every connection it accepts.

The fuzzers (tests/fuzzing.py) put its address, in many spellings, into the tokens they make; a
correct server refuses all of them locally, so `hits` must stay 0. Every accepted connection is
a hit, whatever it then says: a plain HTTP request, a TLS ClientHello, or nothing at all. A
plain HTTP request is answered as STS would answer one (200 and an identity), so a request
that did get here would also show up as a false accept.

It listens on 127.0.0.1 port 0 and, where the host has IPv6 loopback, on [::1] with the same
port, so `[::1]:<port>` spellings would land here too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading

_ANSWER = json.dumps(
    {
        "GetCallerIdentityResponse": {
            "GetCallerIdentityResult": {
                "Arn": "arn:aws:iam::123456789012:user/Alice",
                "Account": "123456789012",
                "UserId": "AIDAALICE",
            }
        }
    }
).encode()
_HTTP_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_ANSWER)).encode() + b"\r\n\r\n" + _ANSWER
)
_TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello


class Canary:
    """The listener; `start()` binds, `hits` counts accepted connections, `stop()` closes."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._hits = 0
        self._kinds: list[str] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self.port = 0

    def start(self) -> Canary:
        """Listen on 127.0.0.1:0 (and [::1] on the same port when possible); returns self."""
        v4 = socket.create_server(("127.0.0.1", 0))
        self.port = v4.getsockname()[1]
        self._sockets.append(v4)
        with contextlib.suppress(OSError):  # no IPv6 loopback here: the v4 listener suffices
            self._sockets.append(socket.create_server(("::1", self.port), family=socket.AF_INET6))
        for sock in self._sockets:
            sock.settimeout(0.2)
            thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop accepting and close the listeners."""
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()

    @property
    def hits(self) -> int:
        """Connections accepted so far (plain HTTP, TLS, or silent alike)."""
        with self._lock:
            return self._hits

    def wait_greeted(self, count: int, *, timeout: float = 10.0) -> list[str]:
        """Wait (bounded) until `count` connections have been looked at; their kinds."""
        with self._lock:
            self._lock.wait_for(lambda: len(self._kinds) >= count, timeout=timeout)
            return list(self._kinds)

    def kinds(self) -> list[str]:
        """What each accepted connection started with: `http`, `tls` or `silent`."""
        with self._lock:
            return list(self._kinds)

    def netlocs(self) -> list[str]:
        """`host:port` spellings that name this canary (or would, to a lax URL parser)."""
        port = self.port
        hosts = [
            "127.0.0.1",
            "localhost",
            "LocalHost",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "127.000.000.001",
            "127.0.0.1.",
            "localhost.",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[0:0:0:0:0:ffff:7f00:1]",
            "%31%32%37.0.0.1",
            "127.0.0.1%2e",
            "127.0.0.2",
        ]
        ports = [str(port), f"0{port}", f"00{port}", str(port + 65536)]
        return [f"{host}:{p}" for host in hosts for p in ports]

    def _accept(self, listener: socket.socket) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._hits += 1
            with conn:
                self._greet(conn)

    def _greet(self, conn: socket.socket) -> None:
        """Note what the connection starts with; answer as an STS would if it speaks HTTP."""
        conn.settimeout(1.0)
        try:
            first = conn.recv(4096)
        except OSError:
            first = b""
        kind = "silent" if not first else "tls" if first[0] == _TLS_HANDSHAKE else "http"
        with self._lock:
            self._kinds.append(kind)
            self._lock.notify_all()
        if kind == "http":
            with contextlib.suppress(OSError):
                conn.sendall(_HTTP_ANSWER)
