"""List then watch one collection, keeping the current set of its objects, through any failure.

The loop is client-go's reflector, cut down to what authd needs (docs/kubernetes.md):

1. list; hand the whole set to `on_change`;
2. watch from the list's resourceVersion with bookmarks; apply each ADDED/MODIFIED/DELETED and
   hand the new set to `on_change`; a BOOKMARK only advances the resourceVersion;
3. when the watch ends (the server's `timeoutSeconds`), drops, is cut mid-event or stalls,
   watch again from the last resourceVersion seen; on 410 Gone, list again (step 1);
4. any failure (401, 403, 5xx, transport) is reported through `on_state(False, reason)` and
   retried after a capped, jittered exponential backoff; the backoff starts again from its
   initial delay once a watch has stayed up for `Backoff.reset_after` seconds.

`on_state(True, reason)` is called once the first list succeeds and whenever a list or watch
succeeds after a failure. While failing, the set last handed to `on_change` stays the truth the
caller should keep.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import trio

from authd.server.kube import Forbidden, Gone, KubeError, Unauthorized
from authd.server.kube.client import KubeClient, WatchEvent, object_key

__all__ = ["Backoff", "Informer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with jitter.

    Retry `n` waits `min(cap, initial * 2**n)` stretched by up to `jitter` (0.2: up to 20 %
    longer); the informer starts again from retry 0 after `reset_after` healthy seconds.
    """

    initial: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap or self.jitter < 0 or self.reset_after < 0:
            raise ValueError(f"backoff: bad settings {self}")

    def delay(self, attempt: int, *, rand: float) -> float:
        """Seconds to wait before retry number `attempt` (0-based); `rand` is in [0, 1)."""
        base = min(self.cap, self.initial * 2.0 ** min(attempt, 62))
        return base * (1 + self.jitter * rand)


Sleep = Callable[[float], Awaitable[None]]


class Informer:
    """The current objects of one collection (`path`, `params`), followed by list then watch.

    Args:
        client: the API client.
        path: the collection (`/api/v1/namespaces/kube-system/configmaps`).
        params: list/watch selectors (`{"fieldSelector": "metadata.name=aws-auth"}`).
        on_change: called with the full current set (key `ns/name`, or `name` when
            cluster-scoped) after each list and after each ADDED, MODIFIED or DELETED event; the
            mapping is a fresh copy the callee may keep.
        on_state: called with `(healthy, reason)`: `(False, "401 Unauthorized: ...")`,
            `(False, "403 Forbidden: ...")`, `(False, "list failing: ...")`,
            `(False, "watch failing: ...")` on every failure; `(True, ...)` on recovery.
        backoff: retry delays.
        timeout_seconds: the watch's `timeoutSeconds`; silence for this plus `stall_margin`
            drops the watch.
        clock, sleep, rand: trio's by default; tests inject their own.

    Counters (the caller exports them as metrics): `lists` (every list that succeeded),
    `relists` (lists after the first), `watch_restarts` (watches opened after the first),
    `events` (ADDED/MODIFIED/DELETED applied), `bookmarks`, `failures` (each `on_state(False)`).
    """

    def __init__(
        self,
        client: KubeClient,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        on_change: Callable[[Mapping[str, Mapping[str, Any]]], None],
        on_state: Callable[[bool, str], None],
        backoff: Backoff = Backoff(),
        timeout_seconds: int = 300,
        stall_margin: float = 30.0,
        clock: Callable[[], float] = trio.current_time,
        sleep: Sleep = trio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self._path = path
        self._params = dict(params or {})
        self._on_change = on_change
        self._on_state = on_state
        self._backoff = backoff
        self._timeout_seconds = timeout_seconds
        self._stall_margin = stall_margin
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._objects: dict[str, dict[str, Any]] = {}
        self._version = ""
        self._healthy: bool | None = None
        self._attempt = 0
        self.lists = 0
        self.relists = 0
        self.watch_restarts = 0
        self.watches = 0
        self.events = 0
        self.bookmarks = 0
        self.failures = 0

    @property
    def resource_version(self) -> str:
        """The resourceVersion the next watch starts from ("" before the first list)."""
        return self._version

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the collection until cancelled.

        `task_status.started()` is called after the first list attempt, whether it succeeded
        (`on_change` has had the set) or failed (`on_state(False, ...)` has been called), so
        start-up never waits on the API server. Never returns; cancel its nursery to stop it.
        """
        listed = await self._list()
        task_status.started()
        while True:
            if not listed:
                await self._pause()
                listed = await self._list()
                continue
            listed = await self._watch()
            if listed:
                await self._pause()

    async def _list(self) -> bool:
        """List; on success the set and resourceVersion are replaced. False after a failure."""
        try:
            answer = await self._client.list(self._path, params=self._params)
        except KubeError as exc:
            self._fail(exc, "list failing")
            return False
        if self.lists:
            self.relists += 1
        self.lists += 1
        self._objects = {object_key(item): item for item in answer.items}
        self._version = answer.resource_version
        self._recover(f"listed {len(self._objects)} objects at resourceVersion {self._version}")
        self._on_change(dict(self._objects))
        return True

    async def _watch(self) -> bool:
        """One watch, to its end. True to watch again, False to list again (410 Gone)."""
        if self.watches:
            self.watch_restarts += 1
        self.watches += 1
        started = self._clock()
        try:
            async with aclosing(
                self._client.watch(
                    self._path,
                    resource_version=self._version,
                    params=self._params,
                    timeout_seconds=self._timeout_seconds,
                    stall_margin=self._stall_margin,
                    on_open=self._opened,
                )
            ) as events:
                async for event in events:
                    self._apply(event)
        except Gone:
            self._forget_if_healthy(started)
            return False
        except KubeError as exc:
            self._forget_if_healthy(started)
            self._fail(exc, "watch failing")
            return True
        self._forget_if_healthy(started)
        return True

    def _opened(self) -> None:
        self._recover(f"watching from resourceVersion {self._version}")

    def _apply(self, event: WatchEvent) -> None:
        version = event.resource_version
        if version:
            self._version = version
        if event.type == "BOOKMARK":
            self.bookmarks += 1
            return
        key = object_key(event.object)
        if event.type == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = event.object
        self.events += 1
        self._on_change(dict(self._objects))

    def _fail(self, exc: KubeError, what: str) -> None:
        if isinstance(exc, Unauthorized | Forbidden):
            reason = f"{exc.summary} ({exc.verb} {exc.path})"
        else:
            reason = f"{what}: {exc}"
        self.failures += 1
        self._healthy = False
        self._on_state(False, reason)

    def _recover(self, reason: str) -> None:
        if self._healthy is not True:
            self._healthy = True
            self._on_state(True, reason)

    def _forget_if_healthy(self, started: float) -> None:
        """A watch that stayed up long enough resets the backoff to its first step."""
        if self._clock() - started >= self._backoff.reset_after:
            self._attempt = 0

    async def _pause(self) -> None:
        delay = self._backoff.delay(self._attempt, rand=self._rand())
        self._attempt += 1
        await self._sleep(delay)
