"""Kubernetes API verbs over one `httpx.AsyncClient`: list, watch, get, create, replace, status.

Paths are API paths as kubectl prints them with `-v=6` (`/api/v1/namespaces/kube-system/configmaps`,
`/apis/iamauthenticator.k8s.aws/v1alpha1/iamidentitymappings/<name>`). Every failure is a
`KubeError` subclass whose message names the verb, the path and the server's Status message;
httpx's own exceptions never leave this module.

A watch is a chunked stream of JSON lines (`{"type": ..., "object": ...}`). Lines are read with a
bound (`max_event_bytes`, 4 MiB by default) so a broken or hostile server cannot grow memory
without limit, and the stream's read timeout is the watch's `timeoutSeconds` plus a margin, so a
watch that goes silent (not even a bookmark) fails instead of hanging.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, cast

import httpx

from authd import jsoncodec
from authd.server.kube import KubeError, error_for

__all__ = [
    "MAX_EVENT_BYTES",
    "STALL_MARGIN",
    "KubeClient",
    "LineReader",
    "ObjectList",
    "WatchEvent",
    "object_key",
    "resource_version",
]

MAX_EVENT_BYTES = 4 * 1024 * 1024
STALL_MARGIN = 30.0
_MERGE_PATCH = "application/merge-patch+json"
_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})


@dataclass(frozen=True, slots=True)
class ObjectList:
    """One list answer: the items, and the resourceVersion to watch from."""

    items: tuple[dict[str, Any], ...]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event: `type` is ADDED, MODIFIED, DELETED or BOOKMARK; `object` as sent."""

    type: str
    object: dict[str, Any] = field(repr=False)

    @property
    def resource_version(self) -> str:
        """The object's `metadata.resourceVersion` ("" when missing)."""
        return resource_version(self.object)


def resource_version(obj: Mapping[str, Any]) -> str:
    """`metadata.resourceVersion` of an object or list, "" when it has none."""
    metadata = obj.get("metadata")
    value = metadata.get("resourceVersion", "") if isinstance(metadata, Mapping) else ""
    return value if isinstance(value, str) else ""


def object_key(obj: Mapping[str, Any]) -> str:
    """`namespace/name` for a namespaced object, `name` for a cluster-scoped one."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return ""
    name, namespace = metadata.get("name", ""), metadata.get("namespace", "")
    return f"{namespace}/{name}" if namespace else str(name)


class KubeClient:
    """The verbs authd needs on the Kubernetes API, over an `httpx.AsyncClient` it does not own.

    Build it with `authd.server.kube.connection.open_client`, which sets the base URL, TLS,
    bearer token and timeouts; tests may pass any client (an `httpx.MockTransport` one).
    """

    def __init__(self, http: httpx.AsyncClient, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._http = http
        self._max_event_bytes = max_event_bytes

    async def list(self, path: str, *, params: Mapping[str, str] | None = None) -> ObjectList:
        """Every object in the collection at `path`, following `continue` tokens to the end.

        Returns:
            The items and the list's resourceVersion (of the first page: the pages of one list
            are one consistent snapshot).

        Raises:
            Gone: a `continue` token expired (list again from the start).
            KubeError: any other failure.
        """
        query = dict(params or {})
        items: list[dict[str, Any]] = []
        version = ""
        while True:
            page = await self._json("list", "GET", path, params=query)
            found = page.get("items")
            if not isinstance(found, list):
                raise KubeError("the answer is not a list (no items)", verb="list", path=path)
            items.extend(item for item in found if isinstance(item, dict))
            version = version or resource_version(page)
            metadata = page.get("metadata")
            token = metadata.get("continue", "") if isinstance(metadata, dict) else ""
            if not token:
                return ObjectList(tuple(items), version)
            query["continue"] = token

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        params: Mapping[str, str] | None = None,
        timeout_seconds: int = 300,
        stall_margin: float = STALL_MARGIN,
        on_open: Callable[[], None] | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes to the collection at `path` after `resource_version`, with bookmarks.

        Ends when the server ends the watch (after `timeout_seconds`). Close it early with
        `contextlib.aclosing`. `on_open` is called once the server has accepted the watch.

        Raises:
            Gone: the resourceVersion is too old (HTTP 410, or an ERROR event with a 410 Status).
            KubeError: any other failure, including a dropped connection, a line cut short at
                the end of the stream, a line over `max_event_bytes`, an ERROR event, and no
                data at all for `timeout_seconds + stall_margin` seconds.
        """
        query = {
            **(params or {}),
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        timeout = self._http.timeout
        read_timeout = httpx.Timeout(
            connect=timeout.connect, read=timeout_seconds + stall_margin, write=timeout.write,
            pool=timeout.pool,
        )  # fmt: skip
        request = self._http.build_request("GET", path, params=query, timeout=read_timeout)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, "watch", path) from exc
        try:
            if response.status_code != 200:
                await response.aread()
                raise _status_error(response, "watch", path)
            if on_open is not None:
                on_open()
            reader = LineReader(limit=self._max_event_bytes, path=path)
            chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
            async with aclosing(chunks):
                async for chunk in chunks:
                    for line in reader.feed(chunk):
                        yield _event(line, path)
            reader.finish()
        except httpx.TimeoutException as exc:
            detail = f"no data for {timeout_seconds + stall_margin:g} s (stalled watch)"
            raise KubeError(detail, verb="watch", path=path) from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc, "watch", path) from exc
        finally:
            await response.aclose()

    async def get(self, path: str) -> dict[str, Any]:
        """The object at `path`.

        Raises:
            NotFound: there is no such object.
            KubeError: any other failure.
        """
        return await self._json("get", "GET", path)

    async def create(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST `obj` to the collection at `path`; the created object as stored.

        Raises:
            Conflict: an object with that name exists.
            KubeError: any other failure.
        """
        return await self._json("create", "POST", path, body=obj)

    async def replace(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT `obj` at `path`, only if it is still at `obj`'s `metadata.resourceVersion`.

        Raises:
            Conflict: the object changed since `obj` was read (read it again and retry).
            KubeError: `obj` has no resourceVersion (an unconditional update is refused here),
                or any other failure.
        """
        if not resource_version(obj):
            raise KubeError(
                "the object has no metadata.resourceVersion; refusing an unconditional update",
                verb="replace",
                path=path,
            )
        return await self._json("replace", "PUT", path, body=obj)

    async def patch_status(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge-patch `patch` into the status subresource of the object at `path`.

        `path` is the object's path; `/status` is appended unless it is there already.

        Raises:
            NotFound: no such object, or its resource has no status subresource.
            KubeError: any other failure.
        """
        target = path if path.endswith("/status") else f"{path}/status"
        return await self._json(
            "patch_status", "PATCH", target, body=patch, content_type=_MERGE_PATCH
        )

    async def _json(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        content = None if body is None else jsoncodec.dumps(body)
        headers = {} if body is None else {"Content-Type": content_type}
        try:
            response = await self._http.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc, verb, path) from exc
        if not 200 <= response.status_code < 300:
            raise _status_error(response, verb, path)
        try:
            doc = jsoncodec.loads(response.content)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise KubeError("the answer is not a JSON object", verb=verb, path=path)
        return doc


class LineReader:
    """Splits a byte stream into newline-terminated lines, refusing any longer than `limit`.

    The apiserver ends every watch event with a newline, so bytes left over at the end are an
    event cut short.
    """

    def __init__(self, *, limit: int, path: str) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._path = path

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete non-blank lines `chunk` finishes (without their newlines).

        Raises:
            KubeError: a line (complete or not) is longer than the limit.
        """
        self._buffer += chunk
        lines: list[bytes] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            if end - start > self._limit:
                raise self._too_long()
            if self._buffer[start:end].strip():
                lines.append(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self._limit:
            raise self._too_long()
        return lines

    def finish(self) -> None:
        """Check the stream ended between lines.

        Raises:
            KubeError: it ended inside a line.
        """
        if self._buffer.strip():
            raise KubeError(
                f"the stream ended in the middle of an event ({len(self._buffer)} bytes)",
                verb="watch",
                path=self._path,
            )

    def _too_long(self) -> KubeError:
        return KubeError(
            f"a watch event is longer than {self._limit} bytes", verb="watch", path=self._path
        )


def _event(line: bytes, path: str) -> WatchEvent:
    """One watch line as an event; ERROR events and malformed lines become exceptions."""
    try:
        doc = jsoncodec.loads(line)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("object"), dict):
        raise KubeError(f"unreadable watch event: {line[:120]!r}", verb="watch", path=path)
    kind, obj = doc.get("type"), doc["object"]
    if kind == "ERROR":
        code = obj.get("code")
        status = code if isinstance(code, int) else 500
        message = str(obj.get("message", "")) or "watch ERROR event"
        raise error_for(status, message, verb="watch", path=path)
    if kind not in _EVENT_TYPES:
        raise KubeError(f"unknown watch event type {kind!r}", verb="watch", path=path)
    return WatchEvent(str(kind), obj)


def _status_error(response: httpx.Response, verb: str, path: str) -> KubeError:
    """The exception for a non-2xx answer, with the server's Status message when it sent one."""
    try:
        doc = jsoncodec.loads(response.content)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str) and doc["message"]:
        detail = doc["message"]
    else:
        detail = response.text.strip()[:200] or response.reason_phrase or "no message"
    return error_for(response.status_code, detail, verb=verb, path=path)


def _transport_error(exc: httpx.HTTPError, verb: str, path: str) -> KubeError:
    """A KubeError for a request that got no (complete) answer."""
    detail = str(exc) or type(exc).__name__
    return KubeError(f"{type(exc).__name__}: {detail}", verb=verb, path=path)
