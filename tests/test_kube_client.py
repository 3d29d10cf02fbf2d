"""KubeClient against httpx.MockTransport: the wire format of each verb, watch parsing, errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from authd.server.kube import Conflict, Forbidden, Gone, KubeError, NotFound, Unauthorized
from authd.server.kube.client import KubeClient, WatchEvent, object_key

# httpx reads bodies through nested async generators and a watch stopped early abandons them
# (encode/httpx#3686); trio warns when it finalizes them. That is httpx's, not this code's.
pytestmark = pytest.mark.filterwarnings("ignore:Async generator 'httpx\\.:ResourceWarning")

CM = "/api/v1/namespaces/kube-system/configmaps"
Handler = Callable[[httpx.Request], httpx.Response]


class Chunks(httpx.AsyncByteStream):
    """A response body delivered in the given chunks; an exception in the list is raised there.

    An iterator object rather than an async generator, so abandoning it mid-way leaves nothing
    for trio to finalize.
    """

    def __init__(self, chunks: Iterable[bytes | Exception]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = next(self._chunks, None)
        if chunk is None:
            raise StopAsyncIteration
        if isinstance(chunk, Exception):
            raise chunk
        return chunk


def status(code: int, message: str, reason: str = "") -> dict[str, Any]:
    """A Kubernetes Status object as the API server sends it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def line(kind: str, obj: dict[str, Any]) -> bytes:
    """One watch event line."""
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def cm(name: str, rv: str, **data: str) -> dict[str, Any]:
    """A ConfigMap in kube-system."""
    meta = {"name": name, "namespace": "kube-system", "resourceVersion": rv}
    return {"kind": "ConfigMap", "metadata": meta, "data": data}


def client_for(handler: Handler, **kwargs: Any) -> KubeClient:
    """A KubeClient whose requests `handler` answers."""
    http = httpx.AsyncClient(base_url="https://kube.test", transport=httpx.MockTransport(handler))
    return KubeClient(http, **kwargs)


async def watch_all(client: KubeClient, **kwargs: Any) -> list[WatchEvent]:
    """Every event of one watch on CM from resourceVersion 5."""
    async with aclosing(client.watch(CM, resource_version="5", **kwargs)) as events:
        return [event async for event in events]


async def test_list_follows_continue_and_keeps_first_version() -> None:
    """A paged list is fetched to the end with the caller's params, at the first page's version."""
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        seen.append(query)
        if "continue" not in query:
            meta = {"resourceVersion": "10", "continue": "tok"}
            return httpx.Response(200, json={"metadata": meta, "items": [cm("a", "3")]})
        meta = {"resourceVersion": "11"}
        return httpx.Response(200, json={"metadata": meta, "items": [cm("b", "4")]})

    answer = await client_for(handler).list(CM, params={"limit": "1"})
    assert [object_key(item) for item in answer.items] == ["kube-system/a", "kube-system/b"]
    assert answer.resource_version == "10"
    assert seen == [{"limit": "1"}, {"limit": "1", "continue": "tok"}]


@pytest.mark.parametrize(
    ("code", "error"),
    [(401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict), (410, Gone)],
)
async def test_statuses_map_to_error_classes(code: int, error: type[KubeError]) -> None:
    """Each API status becomes its class; the message has verb, path, code and Status message."""
    client = client_for(lambda _: httpx.Response(code, json=status(code, "server says no")))
    with pytest.raises(error) as caught:
        await client.get(f"{CM}/aws-auth")
    text = str(caught.value)
    assert text.startswith(f"get {CM}/aws-auth: {code} ")
    assert text.endswith(": server says no")
    assert caught.value.status == code


async def test_other_status_and_non_json_body_are_plain_kube_errors() -> None:
    """A 500 with a text body is a KubeError (no subclass) quoting the text."""
    client = client_for(lambda _: httpx.Response(500, text="etcd is down"))
    with pytest.raises(KubeError) as caught:
        await client.list(CM)
    assert type(caught.value) is KubeError
    assert str(caught.value) == f"list {CM}: 500 Internal Server Error: etcd is down"


async def test_transport_failure_is_a_kube_error_without_status() -> None:
    """A connection error is translated, not leaked as an httpx exception."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(KubeError) as caught:
        await client_for(handler).get(CM)
    assert caught.value.status is None
    assert "ConnectError: connection refused" in str(caught.value)


async def test_watch_request_and_events_split_across_chunks() -> None:
    """The watch asks for bookmarks from the version; lines split or joined by chunks parse."""
    requests: list[httpx.Request] = []
    body = line("ADDED", cm("a", "6")) + line("BOOKMARK", {"metadata": {"resourceVersion": "7"}})
    body += line("DELETED", cm("a", "8"))

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        pieces = [body[:5], body[5:70], body[70:71], body[71:]]
        return httpx.Response(200, stream=Chunks(pieces))

    events = await watch_all(client_for(handler), params={"fieldSelector": "metadata.name=a"})
    assert [(e.type, e.resource_version) for e in events] == [
        ("ADDED", "6"),
        ("BOOKMARK", "7"),
        ("DELETED", "8"),
    ]
    assert dict(requests[0].url.params) == {
        "fieldSelector": "metadata.name=a",
        "watch": "1",
        "resourceVersion": "5",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
    }
    assert requests[0].extensions["timeout"]["read"] == 330


async def test_watch_error_event_with_410_is_gone() -> None:
    """An ERROR event carrying a 410 Status (how the apiserver says 'too old') raises Gone."""
    expired = status(410, "too old resource version: 5 (20)", "Expired")
    body = [line("ADDED", cm("a", "6")), line("ERROR", expired)]
    client = client_for(lambda _: httpx.Response(200, stream=Chunks(body)))
    with pytest.raises(Gone, match=r"410 Gone: too old resource version: 5 \(20\)"):
        await watch_all(client)


async def test_watch_error_event_other_code_and_http_410() -> None:
    """An ERROR event with a 500 is a KubeError; an HTTP 410 answer to the watch is Gone."""
    body = [line("ERROR", status(500, "internal error"))]
    client = client_for(lambda _: httpx.Response(200, stream=Chunks(body)))
    with pytest.raises(KubeError, match="500 Internal Server Error: internal error"):
        await watch_all(client)
    gone = client_for(lambda _: httpx.Response(410, json=status(410, "too old")))
    with pytest.raises(Gone):
        await watch_all(gone)


async def test_watch_stream_cut_mid_event_fails() -> None:
    """A stream that ends inside an event line, or drops mid-body, is an error, not an event."""
    cut = line("ADDED", cm("a", "6")) + line("MODIFIED", cm("a", "7"))[:20]
    client = client_for(lambda _: httpx.Response(200, stream=Chunks([cut])))
    with pytest.raises(KubeError, match="ended in the middle of an event"):
        await watch_all(client)

    def dropped(request: httpx.Request) -> httpx.Response:
        error = httpx.RemoteProtocolError("peer closed connection", request=request)
        return httpx.Response(200, stream=Chunks([line("ADDED", cm("a", "6")), error]))

    with pytest.raises(KubeError, match="RemoteProtocolError"):
        await watch_all(client_for(dropped))


async def test_watch_line_over_limit_fails_without_reading_on() -> None:
    """An event line longer than the bound fails once the bound is passed, not at the end."""
    served = 0

    def endless() -> Iterable[bytes]:
        nonlocal served
        while True:
            served += 1
            yield b"x" * 1000

    client = client_for(
        lambda _: httpx.Response(200, stream=Chunks(endless())), max_event_bytes=5000
    )
    with pytest.raises(KubeError, match="longer than 5000 bytes"):
        await watch_all(client)
    assert served <= 7


async def test_watch_unreadable_line_fails() -> None:
    """A line that is not a watch event is an error naming it."""
    client = client_for(lambda _: httpx.Response(200, stream=Chunks([b"<html>\n"])))
    with pytest.raises(KubeError, match="unreadable watch event"):
        await watch_all(client)


async def test_writes_send_the_right_method_body_and_content_type() -> None:
    """create POSTs, replace PUTs with the version, patch_status merge-patches /status."""
    seen: list[tuple[str, str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.method, request.url.path, request.headers["content-type"], body))
        return httpx.Response(200, json=body)

    client = client_for(handler)
    path = "/apis/iamauthenticator.k8s.aws/v1alpha1/iamidentitymappings"
    obj = {"metadata": {"name": "m", "resourceVersion": "9"}, "spec": {"arn": "x"}}
    assert await client.create(path, obj) == obj
    assert await client.replace(f"{path}/m", obj) == obj
    await client.patch_status(f"{path}/m", {"status": {"canonicalARN": "x"}})
    assert seen == [
        ("POST", path, "application/json", obj),
        ("PUT", f"{path}/m", "application/json", obj),
        (
            "PATCH",
            f"{path}/m/status",
            "application/merge-patch+json",
            {"status": {"canonicalARN": "x"}},
        ),
    ]


async def test_replace_without_version_is_refused_and_409_is_conflict() -> None:
    """replace never sends an unconditional PUT; a stale version comes back as Conflict."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(409, json=status(409, "the object has been modified"))

    client = client_for(handler)
    with pytest.raises(KubeError, match=r"no metadata\.resourceVersion"):
        await client.replace(f"{CM}/a", {"metadata": {"name": "a"}})
    assert calls == 0
    with pytest.raises(Conflict, match=r"replace .*: 409 Conflict: the object has been modified"):
        await client.replace(f"{CM}/a", cm("a", "3"))
