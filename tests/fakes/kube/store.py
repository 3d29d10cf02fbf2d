"""The fake's etcd: objects, one cluster-wide resourceVersion counter, and the event history.

Every write bumps the counter, stamps the object's `metadata.resourceVersion` with it (as a
string, as the real server does) and appends an event (ADDED, MODIFIED or DELETED, with the
object before the write) to the history. Watches replay the history after their resourceVersion
and then wait on `cond` for more. `compact()` drops the history, as etcd compaction does, so a
resourceVersion older than the compaction point is answered with 410 Expired; `snapshot()`
rebuilds the state at an older resourceVersion from the history, which serves
`resourceVersionMatch=Exact` lists and `continue` tokens.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any

from tests.fakes.kube import status
from tests.fakes.kube.resources import ResourceType

Doc = dict[str, Any]
Key = tuple[str, str, str]  # (group/plural, namespace or "", name)


def rtype_id(rtype: ResourceType) -> str:
    """The key prefix for one resource type."""
    return f"{rtype.group}/{rtype.plural}"


def key_of(rtype: ResourceType, obj: Doc) -> Key:
    """Where `obj` lives in the store."""
    meta = obj["metadata"]
    return (rtype_id(rtype), meta.get("namespace", "") if rtype.namespaced else "", meta["name"])


@dataclass(frozen=True, slots=True)
class Event:
    """One write: its resourceVersion, type, the object after (before, for DELETED) and before."""

    rv: int
    type: str
    resource: str
    obj: Doc
    prev: Doc | None


class Store:
    """Objects and history behind one lock; `cond` is notified on every write and control."""

    def __init__(self, *, first_rv: int = 1000) -> None:
        self.cond = threading.Condition()
        self.rv = first_rv
        self.horizon = first_rv
        self._objects: dict[Key, Doc] = {}
        self._history: list[Event] = []

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Doc | None:
        """A copy of the stored object, or None."""
        with self.cond:
            obj = self._objects.get((rtype_id(rtype), namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def write(self, rtype: ResourceType, obj: Doc | None, *, key: Key | None = None) -> Doc:
        """Store `obj` (None deletes `key`), bump the resourceVersion, record and notify.

        Returns the stored object (for a delete, the last state with the delete's resourceVersion).
        """
        with self.cond:
            key = key or key_of(rtype, obj or {})
            prev = self._objects.get(key)
            self.rv += 1
            if obj is None:
                if prev is None:
                    raise status.not_found(rtype.group, rtype.plural, key[2])
                stored = copy.deepcopy(prev)
                stored["metadata"]["resourceVersion"] = str(self.rv)
                del self._objects[key]
                kind = "DELETED"
            else:
                stored = copy.deepcopy(obj)
                stored["metadata"]["resourceVersion"] = str(self.rv)
                self._objects[key] = stored
                kind = "MODIFIED" if prev is not None else "ADDED"
            self._history.append(Event(self.rv, kind, key[0], copy.deepcopy(stored), prev))
            self.cond.notify_all()
            return copy.deepcopy(stored)

    def items(self, rtype: ResourceType, namespace: str | None) -> list[Doc]:
        """Copies of the current objects of one type, in key order."""
        with self.cond:
            return self._select(self._objects, rtype, namespace)

    def snapshot(self, rtype: ResourceType, namespace: str | None, rv: int) -> list[Doc]:
        """The objects as they were at `rv`; 410 when the history no longer reaches back."""
        with self.cond:
            if rv < self.horizon:
                raise status.ApiError(status.too_old(rv, self.horizon))
            state = dict(self._objects)
            for event in reversed(self._history):
                if event.rv <= rv:
                    break
                key = key_of_event(event)
                if event.prev is None:
                    state.pop(key, None)
                else:
                    state[key] = event.prev
            return self._select(state, rtype, namespace)

    def events_after(self, rv: int, resource: str) -> list[Event]:
        """Events of one type newer than `rv`; 410 when `rv` predates the history (call locked)."""
        if rv < self.horizon:
            raise status.ApiError(status.too_old(rv, self.horizon))
        return [e for e in self._history if e.rv > rv and e.resource == resource]

    def compact(self) -> int:
        """Forget the history; resourceVersions before now become too old. Returns the horizon."""
        with self.cond:
            self.horizon = self.rv
            self._history.clear()
            self.cond.notify_all()
            return self.horizon

    @staticmethod
    def _select(objects: dict[Key, Doc], rtype: ResourceType, namespace: str | None) -> list[Doc]:
        prefix = rtype_id(rtype)
        return [
            copy.deepcopy(obj)
            for key, obj in sorted(objects.items())
            if key[0] == prefix and (namespace is None or key[1] == namespace)
        ]


def key_of_event(event: Event) -> Key:
    """The store key an event wrote."""
    meta = event.obj["metadata"]
    return (event.resource, meta.get("namespace", ""), meta["name"])
