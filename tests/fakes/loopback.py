"""One threaded HTTP server on 127.0.0.1 (port 0), shared by the fakes that speak HTTP."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    """`handler` served from a daemon thread on a free loopback port, until `stop()`."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        *,
        tls: ssl.SSLContext | None = None,
        port: int = 0,
    ) -> None:
        """Serve `handler` on `port` (0: a free one; a server restarting passes its old one)."""
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """`http(s)://127.0.0.1:<port>`."""
        return f"{self._scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        """The port served."""
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving, close the socket, wait for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
