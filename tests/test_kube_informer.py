"""Informer against a scripted API on httpx.MockTransport: list, watch, relist, backoff, health."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest
import trio

from authd.server.kube.client import KubeClient
from authd.server.kube.informer import Backoff, Informer
from tests.test_kube_client import Chunks, cm, line, status

pytestmark = pytest.mark.filterwarnings("ignore:Async generator 'httpx\\.:ResourceWarning")

CM = "/api/v1/namespaces/kube-system/configmaps"
Answer = httpx.Response | Callable[[], httpx.Response]


class Hang(httpx.AsyncByteStream):
    """A body that sends `first` and then nothing, until the reader is cancelled."""

    def __init__(self, first: bytes = b"", *, then_end_after: float | None = None) -> None:
        self._first = first
        self._end_after = then_end_after

    def __aiter__(self) -> Hang:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        if self._end_after is not None:
            await trio.sleep(self._end_after)
            raise StopAsyncIteration
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class ScriptedApi:
    """Answers lists and watches from two scripts; once a script runs out, the answer hangs."""

    def __init__(self, *, lists: list[Answer], watches: list[Answer]) -> None:
        self.lists, self.watches = lists, watches
        self.requests: list[dict[str, str]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        self.requests.append(query)
        script = self.watches if "watch" in query else self.lists
        if not script:
            return httpx.Response(200, stream=Hang())
        answer = script.pop(0)
        return answer if isinstance(answer, httpx.Response) else answer()

    def watch_versions(self) -> list[str]:
        return [q["resourceVersion"] for q in self.requests if "watch" in q]

    def client(self) -> KubeClient:
        transport = httpx.MockTransport(self.handler)
        return KubeClient(httpx.AsyncClient(base_url="https://kube.test", transport=transport))


class Recorder:
    """Collects what the informer reports."""

    def __init__(self) -> None:
        self.sets: list[dict[str, str]] = []
        self.states: list[tuple[bool, str]] = []

    def on_change(self, objects: Mapping[str, Mapping[str, Any]]) -> None:
        self.sets.append({key: obj["metadata"]["resourceVersion"] for key, obj in objects.items()})

    def on_state(self, healthy: bool, reason: str) -> None:
        self.states.append((healthy, reason))


def listing(rv: str, *items: dict[str, Any]) -> httpx.Response:
    """A list answer at resourceVersion `rv`."""
    return httpx.Response(200, json={"metadata": {"resourceVersion": rv}, "items": list(items)})


def stream(*lines: bytes, end: bool = True) -> httpx.Response:
    """A 200 watch answer sending `lines`, then ending (or hanging when `end` is false)."""
    body = b"".join(lines)
    return httpx.Response(200, stream=Chunks([body]) if end else Hang(body))


def informer(api: ScriptedApi, rec: Recorder, **kwargs: Any) -> Informer:
    """An informer on CM reporting to `rec`."""
    kwargs.setdefault("rand", lambda: 0.0)
    return Informer(api.client(), CM, on_change=rec.on_change, on_state=rec.on_state, **kwargs)


async def wait_until(done: Callable[[], bool]) -> None:
    """Return once `done()` holds; polling is free under the autojump clock."""
    with trio.fail_after(600):
        while not done():  # noqa: ASYNC110 - the condition spans several callbacks
            await trio.sleep(0.01)


async def run_until(inf: Informer, done: Callable[[], bool]) -> None:
    """Run `inf` until `done()` holds, then cancel it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(inf.run)
        await wait_until(done)
        nursery.cancel_scope.cancel()


async def test_lists_then_follows_events_and_bookmarks(autojump_clock: trio.abc.Clock) -> None:
    """The set follows ADDED/MODIFIED/DELETED; a bookmark moves the version but not the set."""
    bookmark = {"kind": "ConfigMap", "metadata": {"resourceVersion": "13"}}
    api = ScriptedApi(
        lists=[listing("10", cm("a", "1"))],
        watches=[
            stream(
                line("ADDED", cm("b", "11")),
                line("MODIFIED", cm("a", "12")),
                line("BOOKMARK", bookmark),
                line("DELETED", cm("b", "14")),
                line("BOOKMARK", {"metadata": {"resourceVersion": "15"}}),
            )
        ],
    )
    rec = Recorder()
    inf = informer(api, rec)
    await run_until(inf, lambda: len(api.watch_versions()) == 2)
    assert rec.sets == [
        {"kube-system/a": "1"},
        {"kube-system/a": "1", "kube-system/b": "11"},
        {"kube-system/a": "12", "kube-system/b": "11"},
        {"kube-system/a": "12"},
    ]
    assert api.watch_versions() == ["10", "15"]
    assert api.requests[1]["allowWatchBookmarks"] == "true"
    assert (inf.events, inf.bookmarks, inf.relists, inf.watch_restarts) == (3, 2, 0, 1)
    assert rec.states == [(True, "listed 1 objects at resourceVersion 10")]


@pytest.mark.parametrize("how", ["event", "http"])
async def test_gone_relists_and_the_set_is_the_new_truth(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    """A 410 (ERROR event or HTTP status) lists again; the set becomes exactly the new list."""
    expired = status(410, "too old resource version: 10 (30)", "Expired")
    gone = stream(line("ERROR", expired)) if how == "event" else httpx.Response(410, json=expired)
    api = ScriptedApi(
        lists=[listing("10", cm("a", "1"), cm("b", "2")), listing("30", cm("c", "25"))],
        watches=[gone],
    )
    rec = Recorder()
    inf = informer(api, rec)
    await run_until(inf, lambda: len(api.watch_versions()) == 2)
    assert rec.sets[-1] == {"kube-system/c": "25"}
    assert api.watch_versions() == ["10", "30"]
    assert (inf.relists, inf.failures) == (1, 0)
    assert all(healthy for healthy, _ in rec.states)


async def test_dropped_stream_reconnects_from_last_version(autojump_clock: trio.abc.Clock) -> None:
    """A stream cut mid-event keeps what came before and watches again from there, no relist."""

    def dropped() -> httpx.Response:
        error = httpx.RemoteProtocolError("peer closed connection without sending complete body")
        body = line("ADDED", cm("b", "11")) + line("MODIFIED", cm("b", "12"))[:30]
        return httpx.Response(200, stream=Chunks([body, error]))

    api = ScriptedApi(
        lists=[listing("10")], watches=[dropped, stream(line("ADDED", cm("c", "13")))]
    )
    rec = Recorder()
    inf = informer(api, rec)
    await run_until(inf, lambda: len(api.watch_versions()) == 3)
    assert api.watch_versions() == ["10", "11", "13"]
    assert rec.sets[-1] == {"kube-system/b": "11", "kube-system/c": "13"}
    assert (inf.lists, inf.relists, inf.watch_restarts) == (1, 0, 2)
    assert [h for h, _ in rec.states] == [True, False, True]
    assert rec.states[1][1].startswith(f"watch failing: watch {CM}: RemoteProtocolError")


async def test_401_then_403_are_reported_and_retried(autojump_clock: trio.abc.Clock) -> None:
    """401 on list and 403 on watch report unhealthy with the status, then recover by retrying."""
    unauthorized = httpx.Response(401, json=status(401, "Unauthorized", "Unauthorized"))
    forbidden = httpx.Response(
        403, json=status(403, 'configmaps is forbidden: User "authd" cannot watch', "Forbidden")
    )
    api = ScriptedApi(
        lists=[unauthorized, listing("10", cm("a", "1"))],
        watches=[forbidden, stream(line("ADDED", cm("b", "11")), end=False)],
    )
    rec = Recorder()
    inf = informer(api, rec)
    started: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(inf.run)
        started.append(len(rec.states))  # start-up returns after the first (failed) list
        await wait_until(lambda: len(rec.sets) >= 2)
        nursery.cancel_scope.cancel()
    assert started == [1]
    assert rec.states == [
        (False, f"401 Unauthorized: Unauthorized (list {CM})"),
        (True, "listed 1 objects at resourceVersion 10"),
        (False, f'403 Forbidden: configmaps is forbidden: User "authd" cannot watch (watch {CM})'),
        (True, "watching from resourceVersion 10"),
    ]
    assert inf.failures == 2
    assert rec.sets[-1] == {"kube-system/a": "1", "kube-system/b": "11"}


def test_backoff_doubles_caps_and_jitters() -> None:
    """Delays double from `initial` up to `cap`; jitter only lengthens, by at most its share."""
    backoff = Backoff(initial=0.5, cap=30.0, jitter=0.2)
    assert [backoff.delay(n, rand=0.0) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.delay(100, rand=0.999) == pytest.approx(30 * 1.1998)
    with pytest.raises(ValueError, match="bad settings"):
        Backoff(initial=0.0)


async def test_failures_back_off_and_a_healthy_watch_resets(autojump_clock: trio.abc.Clock) -> None:
    """Repeated failures wait longer each time; a watch that stayed up a while starts over."""
    error = httpx.Response(500, json=status(500, "etcdserver: request timed out"))
    long_watch = httpx.Response(200, stream=Hang(then_end_after=61.0))
    api = ScriptedApi(
        lists=[error, error, error, listing("10")], watches=[long_watch, error, error]
    )
    rec = Recorder()
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await trio.sleep(seconds)

    inf = informer(api, rec, sleep=sleep, backoff=Backoff(initial=0.5, cap=30.0, reset_after=60.0))
    await run_until(inf, lambda: len(api.watch_versions()) == 4)
    assert delays == [0.5, 1, 2, 0.5, 1, 2]
    assert inf.failures == 5
    assert rec.states[0] == (False, f"list failing: list {CM}: 500 Internal Server Error: "
                             "etcdserver: request timed out")  # fmt: skip


async def test_cancel_stops_the_informer_mid_watch(autojump_clock: trio.abc.Clock) -> None:
    """Cancelling the nursery ends run() promptly while a watch is open; nothing is swallowed."""
    api = ScriptedApi(lists=[listing("10")], watches=[])
    inf = informer(api, Recorder())
    with trio.move_on_after(5) as scope:
        await inf.run()
    assert scope.cancelled_caught
    assert api.watch_versions() == ["10"]
    assert api.requests[0] == {}
