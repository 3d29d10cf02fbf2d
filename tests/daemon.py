"""Start and stop the real `authd server` process for integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment that never reaches instance metadata or real AWS."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "KUBERNETES_"))
    }
    env.update(AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


class Daemon:
    """A running `authd server` child process; its stderr is collected line by line."""

    def __init__(self, args: Sequence[str], *, state: Path, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.state = state
        self.kubeconfig = state / "kubeconfig.yaml"
        command = [
            sys.executable,
            "-m",
            "authd",
            "server",
            f"--port={self.port}",
            f"--state-dir={state / 'state'}",
            f"--generate-kubeconfig={self.kubeconfig}",
            *args,
        ]
        self.proc = subprocess.Popen(
            command,
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def url(self) -> str:
        """The HTTPS base URL of the webhook."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> str:
        """The path of the certificate the daemon serves (and clients should trust)."""
        return str(self.state / "state" / "cert.pem")

    def events(self, name: str) -> list[dict[str, object]]:
        """The JSON log lines whose event is `name`."""
        found = []
        for line in list(self.lines):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == name:
                found.append(doc)
        return found

    def wait_for(
        self, event: str, *, count: int = 1, timeout: float = 20.0
    ) -> list[dict[str, object]]:
        """Wait until `count` log lines with `event` were written; fail if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(event)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the reader drain the pipe
                raise AssertionError(f"daemon exited {self.proc.returncode}: {''.join(self.lines)}")
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} log line within {timeout}s: {''.join(self.lines)}")

    def client(self) -> httpx.Client:
        """An HTTPS client that trusts exactly the daemon's certificate."""
        context = ssl.create_default_context(cafile=self.cert)
        return httpx.Client(base_url=self.url, verify=context, timeout=10)

    def signal(self, signum: int) -> None:
        """Send `signum` to the daemon."""
        self.proc.send_signal(signum)

    def stop(self, *, timeout: float = 15.0) -> int:
        """SIGTERM, wait for exit, return the exit code (kill if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode
