"""Watch streams as kube-apiserver sends them, and the controls tests use to disturb them.

A watch answers 200 with `Transfer-Encoding: chunked`, one JSON event per line and per chunk:
`{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": {...}}`. The semantics are
the documented ones ("Efficient detection of changes" in the Kubernetes API concepts):

- `resourceVersion` unset or "0": synthetic ADDED events for every current object, then changes.
  `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan` and bookmarks) does the same
  and then sends a BOOKMARK annotated `k8s.io/initial-events-end: "true"`.
- `resourceVersion=N`: every change after N, replayed from history, then live. When N predates the
  history the stream is one ERROR event carrying a 410 `Expired` Status ("too old resource
  version: N (H)") and a clean end, as the real server does; `expired_as="http"` makes it an HTTP
  410 instead. A watcher that falls behind a compaction gets the same ERROR event.
- A selector applies to old and new states: an object that starts matching is ADDED, one that
  stops matching is DELETED.
- BOOKMARK events (only with `allowWatchBookmarks=true`) carry just the kind, apiVersion and
  `metadata.resourceVersion`; sent by `bookmark()` and, if set, every `bookmark_interval` seconds.
- `timeoutSeconds` (default 1800, the server's minimum request timeout) ends the stream with the
  closing zero-length chunk.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from tests.fakes.kube import status
from tests.fakes.kube.resources import ResourceType
from tests.fakes.kube.selectors import field_selector, label_selector
from tests.fakes.kube.store import Event, Store, rtype_id

Doc = dict[str, Any]
DEFAULT_TIMEOUT = 1800.0


class StreamHandler(Protocol):
    """What a watch needs from the HTTP handler it runs in."""

    wfile: Any

    def send_response(self, code: int, message: str | None = None) -> None: ...
    def send_header(self, keyword: str, value: str) -> None: ...
    def end_headers(self) -> None: ...
    def record(self, code: int) -> None: ...
    def abort(self) -> None: ...
    def _json(self, code: int, doc: Doc) -> None: ...


class WatchControls:
    """Shared state every open watch consults; all changes notify the store's condition."""

    def __init__(self, store: Store, *, expired_as: str, bookmark_interval: float | None) -> None:
        self.store = store
        self.expired_as = expired_as
        self.bookmark_interval = bookmark_interval
        self.drop_epoch = self.end_epoch = self.bookmark_epoch = self.garble_epoch = 0
        self.drop_mid = False
        self.stall_until = 0.0
        self.closing = False
        self.open = 0

    def _change(self, **values: Any) -> None:
        with self.store.cond:
            for name, value in values.items():
                setattr(self, name, value)
            self.store.cond.notify_all()

    def drop(self, *, mid_event: bool) -> None:
        """Cut every open watch."""
        self._change(drop_epoch=self.drop_epoch + 1, drop_mid=mid_event)

    def end(self) -> None:
        """End every open watch cleanly."""
        self._change(end_epoch=self.end_epoch + 1)

    def bookmark(self) -> None:
        """A bookmark on every open watch that allows them."""
        self._change(bookmark_epoch=self.bookmark_epoch + 1)

    def garble(self) -> None:
        """One line that is not a JSON event on every open watch."""
        self._change(garble_epoch=self.garble_epoch + 1)

    def stall(self, seconds: float | None) -> None:
        """Hold every watch for `seconds` (None: until `stall(0)`)."""
        until = math.inf if seconds is None else (time.monotonic() + seconds if seconds else 0.0)
        self._change(stall_until=until)

    def close(self) -> None:
        """Server shutdown: end everything cleanly."""
        self._change(closing=True, stall_until=0.0)

    def wait_open(self, count: int, timeout: float) -> bool:
        """Wait until `count` watches are streaming."""
        with self.store.cond:
            return self.store.cond.wait_for(lambda: self.open >= count, timeout=timeout)


GARBLED = b'{"type":"MODIFIED","object":{"metadata":{"name":\x00 not JSON\n'
"""What `garble()` sends: one line (one chunk) that no JSON decoder accepts."""


def _line(kind: str, obj: Doc) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class WatchStream:
    """One watch request, from its headers to its last chunk."""

    def __init__(
        self,
        handler: StreamHandler | BaseHTTPRequestHandler,
        controls: WatchControls,
        rtype: ResourceType,
        namespace: str | None,
        query: dict[str, str],
    ) -> None:
        self.h: Any = handler
        self.c = controls
        self.rtype = rtype
        self.namespace = namespace
        self.bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")
        self.initial_events = query.get("sendInitialEvents") == "true"
        self.rv = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        if self.initial_events and (match != "NotOlderThan" or not self.bookmarks):
            raise status.invalid(
                "ListOptions",
                "meta.k8s.io",
                "",
                [
                    (
                        "resourceVersionMatch",
                        "FieldValueForbidden",
                        "Forbidden: sendInitialEvents requires resourceVersionMatch="
                        "NotOlderThan and allowWatchBookmarks=true",
                    )
                ],
            )
        if match and not self.initial_events:
            raise status.bad_request("resourceVersionMatch is forbidden for watch")
        if self.rv not in ("", "0") and not self.rv.isdigit():
            raise status.bad_request(f'invalid resource version "{self.rv}"')
        labels = label_selector(query.get("labelSelector", ""))
        fields = field_selector(query.get("fieldSelector", ""))

        def matches(obj: Doc) -> bool:
            in_namespace = namespace is None or obj["metadata"].get("namespace", "") == namespace
            return in_namespace and labels(obj) and fields(obj)

        self.matches = matches
        self.deadline = time.monotonic() + float(query.get("timeoutSeconds") or DEFAULT_TIMEOUT)
        self.cursor = 0

    def run(self) -> None:
        """Stream until timeout, a control, or the client going away."""
        with self.c.store.cond:
            lines, expired = self._start_locked()
            epochs = (
                self.c.drop_epoch,
                self.c.end_epoch,
                self.c.bookmark_epoch,
                self.c.garble_epoch,
            )
            self.c.open += 1
            self.c.store.cond.notify_all()
        try:
            if expired is not None and self.c.expired_as == "http":
                self.h._json(410, expired)
                return
            self._headers()
            if expired is not None:
                self._chunk(_line("ERROR", expired))
                self._chunk(b"")
                return
            for line in lines:
                self._chunk(line)
            try:
                self._loop(epochs)
            except status.ApiError:
                # The headers are out: an error answer would land inside the chunked body.
                self.h.abort()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.h.close_connection = True
        finally:
            with self.c.store.cond:
                self.c.open -= 1
                self.c.store.cond.notify_all()

    def _start_locked(self) -> tuple[list[bytes], Doc | None]:
        store = self.c.store
        if self.rv in ("", "0") or self.initial_events:
            self.cursor = store.rv
            lines = [
                _line("ADDED", o)
                for o in store.items(self.rtype, self.namespace)
                if self.matches(o)
            ]
            if self.initial_events:
                lines.append(self._bookmark(initial_end=True))
            return lines, None
        self.cursor = int(self.rv)
        try:
            store.events_after(self.cursor, rtype_id(self.rtype))
        except status.ApiError as error:
            return [], error.status
        return [], None

    def _headers(self) -> None:
        self.h.record(200)
        self.h.send_response(200)
        self.h.send_header("Content-Type", "application/json")
        self.h.send_header("Transfer-Encoding", "chunked")
        self.h.send_header("Cache-Control", "no-cache, private")
        self.h.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.h.wfile.flush()

    def _loop(self, epochs: tuple[int, int, int, int]) -> None:
        self._drop, self._end, self._bookmark_seen, self._garble = epochs
        self._next_bookmark = time.monotonic() + (self.c.bookmark_interval or math.inf)
        while True:
            with self.c.store.cond:
                decided = self._decide()
                while decided is None:
                    self.c.store.cond.wait(timeout=self._wait_time())
                    decided = self._decide()
            action, lines = decided
            if action in ("cut", "cut-mid"):
                if action == "cut-mid":
                    line = lines[0] if lines else self._bookmark()
                    self._chunk(line[: len(line) // 2])
                self.h.abort()
                return
            for line in lines:
                self._chunk(line)
            if action == "end":
                self._chunk(b"")
                return

    def _decide(self) -> tuple[str, list[bytes]] | None:
        """What to do next (call locked): ("send"|"end"|"cut"|"cut-mid", lines), None to wait."""
        now = time.monotonic()
        control = self._control()
        if control is not None:
            return control
        if self.c.stall_until > now:
            return None
        if self.c.garble_epoch != self._garble:
            self._garble = self.c.garble_epoch
            return "send", [GARBLED]
        try:
            lines = self._pending()
        except status.ApiError as error:
            return "end", [_line("ERROR", error.status)]
        if self.c.bookmark_epoch != self._bookmark_seen or now >= self._next_bookmark:
            self._bookmark_seen = self.c.bookmark_epoch
            self._next_bookmark = now + (self.c.bookmark_interval or math.inf)
            if self.bookmarks:
                self.cursor = self.c.store.rv
                lines.append(self._bookmark())
        if now >= self.deadline:
            return "end", lines
        return ("send", lines) if lines else None

    def _control(self) -> tuple[str, list[bytes]] | None:
        """The end or cut a test control asked for (call locked), or None."""
        if self.c.closing or self.c.end_epoch != self._end:
            return "end", []
        if self.c.drop_epoch == self._drop:
            return None
        if not self.c.drop_mid:
            return "cut", []
        with contextlib.suppress(status.ApiError):
            return "cut-mid", self._pending()  # cut the next real event in half
        return "cut-mid", []

    def _wait_time(self) -> float:
        now = time.monotonic()
        if self.c.stall_until > now:
            return min(self.c.stall_until - now, 3600.0)
        return max(0.0, min(self.deadline, self._next_bookmark, now + 3600.0) - now)

    def _pending(self) -> list[bytes]:
        """Lines for the events after the cursor (call locked); moves the cursor past them."""
        events = self.c.store.events_after(self.cursor, rtype_id(self.rtype))
        lines = [line for e in events if (line := self._filtered(e)) is not None]
        if events:
            self.cursor = events[-1].rv
        return lines

    def _filtered(self, event: Event) -> bytes | None:
        now_in = event.type != "DELETED" and self.matches(event.obj)
        was_in = event.prev is not None and self.matches(event.prev)
        if event.type == "DELETED":
            return _line("DELETED", event.obj) if was_in else None
        if now_in and was_in:
            return _line("MODIFIED", event.obj)
        if now_in:
            return _line("ADDED", event.obj)
        if was_in:
            gone = dict(event.prev or {})
            gone["metadata"] = {**gone["metadata"], "resourceVersion": str(event.rv)}
            return _line("DELETED", gone)
        return None

    def _bookmark(self, *, initial_end: bool = False) -> bytes:
        meta: Doc = {"resourceVersion": str(self.cursor), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return _line(
            "BOOKMARK",
            {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": meta},
        )
