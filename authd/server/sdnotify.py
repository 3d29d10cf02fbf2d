"""systemd's readiness protocol (`Type=notify`), without libsystemd: datagrams to `$NOTIFY_SOCKET`.

The service manager passes a socket address in `NOTIFY_SOCKET`: a file-system path, or an
abstract name written with a leading `@`. Each message is one datagram of `KEY=value` lines
(`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=...`, `MONOTONIC_USEC=...`,
`EXTEND_TIMEOUT_USEC=...`). Without the
variable (not run by systemd, or `Type=simple`) every call is a no-op. A message that cannot be
sent is logged once per kind and dropped: telling systemd must never stop a review. See
docs/deploy-systemd.md for what the daemon sends and when.
"""

from __future__ import annotations

import errno
import socket
import time

import structlog

log = structlog.get_logger("authd.sdnotify")


def socket_address(value: str) -> str | bytes | None:
    """The address `sendto` takes for a `NOTIFY_SOCKET` value; None when it is not usable.

    `@name` is the abstract name `\\0name`; an absolute path is used as is. Other forms
    (`vsock:` of newer systemd, a relative path) are not supported.
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends state changes to the service manager, or nothing when there is none.

    Args:
        notify_socket: the `NOTIFY_SOCKET` value from the process environment (the CLI hands
            it in), or None/"" when unset.
    """

    def __init__(self, notify_socket: str | None) -> None:
        self.raw = notify_socket or ""
        self.address = socket_address(self.raw) if self.raw else None
        self._warned: set[str] = set()
        if self.raw and self.address is None:
            log.warning("NOTIFY_SOCKET not supported; not notifying systemd", value=self.raw)

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to tell."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one datagram of `KEY=value` lines (keyword order); True when it was sent.

        Values must be one line each: a newline in a STATUS would end the field early.
        """
        if self.address is None:
            return False
        lines = [f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
        message = ("\n".join(lines) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full queue drops the message, never blocks the loop
                sock.sendto(message, self.address)
        except OSError as exc:
            kind = next(iter(fields), "")
            if kind not in self._warned:
                self._warned.add(kind)
                reason = errno.errorcode.get(exc.errno or 0, "") or str(exc)
                log.warning("could not notify systemd", message=kind, error=reason)
            return False
        return True

    def ready(self, status: str) -> bool:
        """`READY=1`: start-up (or a reload) is complete."""
        return self.send(READY=1, STATUS=status)

    def reloading(self, status: str) -> bool:
        """`RELOADING=1` with the `MONOTONIC_USEC=` systemd 253+ requires next to it."""
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS=status)

    def stopping(self, status: str) -> bool:
        """`STOPPING=1`: shutdown has begun."""
        return self.send(STOPPING=1, STATUS=status)

    def extend_start(self, seconds: float) -> bool:
        """`EXTEND_TIMEOUT_USEC=`: still starting and alive; wait `seconds` more from now."""
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def status(self, status: str) -> bool:
        """`STATUS=`: a free-form line `systemctl status` shows."""
        return self.send(STATUS=status)
