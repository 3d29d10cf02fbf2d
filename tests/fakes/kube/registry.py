"""The verbs on stored objects, with the real server's rules (kube-apiserver's generic registry).

- create: name or generateName; the URL's namespace wins and must exist; server-set `uid`,
  `creationTimestamp`, `resourceVersion` and, for custom resources, `generation: 1`; a custom
  resource with a status subresource loses any `.status` it was created with; 409 AlreadyExists.
- update (PUT) and patch: 409 Conflict when the body's `metadata.resourceVersion` is stale; a
  custom resource must name one (custom resources do not allow unconditional updates); the main
  resource keeps the stored `.status` and `/status` changes nothing but `.status`; `generation`
  grows when anything outside metadata and status changes; a write that changes nothing is not
  stored and emits no event.
- delete: preconditions; ConfigMaps answer a `Status`, custom resources the deleted object.
- list: `resourceVersion` ("" latest, "0" any, N not older than N), `resourceVersionMatch=Exact`,
  `limit`/`continue` (a continue token pins the list to its first page's resourceVersion and
  expires with the history), label and field selectors; ConfigMap list items carry no
  kind/apiVersion (typed lists omit them) while custom-resource items do.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import secrets
import uuid
from collections.abc import Callable
from typing import Any

from tests.fakes.kube import status
from tests.fakes.kube.discovery import NAMESPACES
from tests.fakes.kube.patch import json_patch, merge_patch, strategic_merge_patch
from tests.fakes.kube.resources import ResourceType, validate
from tests.fakes.kube.selectors import field_selector, label_selector
from tests.fakes.kube.store import Store, key_of

Doc = dict[str, Any]
Clock = Callable[[], datetime.datetime]

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
_SERVER_META = ("uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def stamp(now: datetime.datetime) -> str:
    """RFC 3339 at whole seconds, as metadata timestamps are written."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Create, read, update, patch, delete and list objects in a `Store`."""

    def __init__(self, store: Store, *, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.fresh_wait = 3.0  # how long a list waits for a resourceVersion not yet reached

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Doc:
        """The object, or 404."""
        obj = self.store.get(rtype, namespace, name)
        if obj is None:
            raise status.not_found(rtype.group, rtype.plural, name)
        return obj

    def create(
        self, rtype: ResourceType, namespace: str, body: Doc, *, strict: bool, dry_run: bool
    ) -> Doc:
        """POST: the stored object, or raise ApiError."""
        obj = self._check_body(rtype, namespace, body)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise status.ApiError(
                status.failure(
                    500,
                    "InternalError",
                    "Internal error occurred: resourceVersion should not be set on objects to "
                    "be created",
                )
            )
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        if not meta.get("name"):
            raise status.invalid(
                rtype.kind,
                rtype.group,
                "",
                [
                    (
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    )
                ],
            )
        for field in _SERVER_META:
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = stamp(self.clock())
        if rtype.custom:
            meta["generation"] = 1
            if rtype.status_subresource:
                obj.pop("status", None)
        with self.store.cond:
            obj = validate(rtype, obj, None, strict=strict)
            if self.store.get(rtype, namespace if rtype.namespaced else "", meta["name"]):
                raise status.already_exists(rtype.group, rtype.plural, meta["name"])
            if dry_run:
                return obj
            return self.store.write(rtype, obj)

    def update(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        body: Doc,
        *,
        subresource: str,
        strict: bool,
        dry_run: bool,
    ) -> Doc:
        """PUT: the stored object (unchanged if the write changes nothing), or raise ApiError."""
        obj = self._check_body(rtype, namespace, body)
        if obj["metadata"].get("name") != name:
            raise status.bad_request(
                f"the name of the object ({obj['metadata'].get('name', '')}) does not match "
                f"the name on the URL ({name})"
            )
        with self.store.cond:
            old = self.get(rtype, namespace if rtype.namespaced else "", name)
            wanted = obj["metadata"].get("resourceVersion")
            if not wanted and rtype.custom:
                raise status.invalid(
                    rtype.kind,
                    rtype.group,
                    name,
                    [
                        (
                            "metadata.resourceVersion",
                            "FieldValueInvalid",
                            "Invalid value: 0x0: must be specified for an update",
                        )
                    ],
                )
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise status.conflict(rtype.group, rtype.plural, name)
            new = self._merge_server_fields(rtype, old, obj, subresource=subresource)
            new = validate(rtype, new, old, strict=strict)
            if _same(new, old) or dry_run:
                return old if _same(new, old) else new
            return self.store.write(rtype, new)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str,
        strict: bool,
        dry_run: bool,
    ) -> Doc:
        """PATCH with a merge, strategic merge or JSON patch; the stored object or ApiError."""
        accepted = [JSON_PATCH, MERGE] if rtype.custom else [JSON_PATCH, MERGE, STRATEGIC]
        if content_type not in accepted:
            raise status.unsupported_media(accepted)
        with self.store.cond:
            old = self.get(rtype, namespace if rtype.namespaced else "", name)
            if content_type == MERGE:
                patched = merge_patch(old, patch)
            elif content_type == STRATEGIC:
                patched = strategic_merge_patch(old, patch)
            else:
                patched = json_patch(old, patch)
            if not isinstance(patched, dict):
                raise status.bad_request("the patch did not produce an object")
            patched.setdefault("metadata", {})
            patched["metadata"].setdefault("resourceVersion", old["metadata"]["resourceVersion"])
            return self.update(
                rtype,
                namespace,
                name,
                patched,
                subresource=subresource,
                strict=strict,
                dry_run=dry_run,
            )

    def delete(
        self, rtype: ResourceType, namespace: str, name: str, options: Doc, *, dry_run: bool
    ) -> Doc:
        """DELETE: a Status (ConfigMaps) or the deleted object (custom resources)."""
        with self.store.cond:
            old = self.get(rtype, namespace if rtype.namespaced else "", name)
            pre = options.get("preconditions") or {}
            meta = old["metadata"]
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise _precondition(
                    rtype,
                    name,
                    f"UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise _precondition(
                    rtype,
                    name,
                    f"ResourceVersion in precondition: {pre['resourceVersion']}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            gone = old if dry_run else self.store.write(rtype, None, key=key_of(rtype, old))
        if rtype.custom:
            return gone
        return status.success(name, rtype.group, rtype.plural, meta["uid"])

    def delete_collection(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, str], *, dry_run: bool
    ) -> Doc:
        """DELETE on a collection: the list of what was deleted."""
        with self.store.cond:
            doomed = self.list(rtype, namespace, query)
            for obj in doomed["items"]:
                meta = obj["metadata"]
                if not dry_run:
                    self.store.write(rtype, None, key=key_of(rtype, {"metadata": meta}))
            doomed["metadata"] = {"resourceVersion": str(self.store.rv)}
            return doomed

    def list(self, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> Doc:
        """GET on a collection, following the documented resourceVersion semantics."""
        matches = _selector(query)
        rv_param, match = query.get("resourceVersion", ""), query.get("resourceVersionMatch", "")
        start = ""
        if query.get("continue"):
            rv, start = _decode_continue(query["continue"])
            try:
                items = self.store.snapshot(rtype, namespace, rv)
            except status.ApiError:
                raise status.ApiError(
                    status.expired(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter."
                    )
                ) from None
        elif match == "Exact":
            if rv_param in ("", "0"):
                raise status.bad_request(
                    'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden '
                    'for resourceVersion "0"'
                )
            rv = int(rv_param)
            items = self.store.snapshot(rtype, namespace, rv)
        else:
            if rv_param not in ("", "0"):
                self._wait_for(int(rv_param))
            with self.store.cond:
                rv, items = self.store.rv, self.store.items(rtype, namespace)
        items = [o for o in items if matches(o) and _after(o, start)]
        limit = int(query.get("limit") or 0)
        meta: Doc = {"resourceVersion": str(rv)}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = _encode_continue(rv, _sort_key(last))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if not rtype.custom:
            for obj in items:
                obj.pop("kind", None)
                obj.pop("apiVersion", None)
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": meta,
            "items": items,
        }

    def _wait_for(self, rv: int) -> None:
        with self.store.cond:
            if not self.store.cond.wait_for(lambda: self.store.rv >= rv, timeout=self.fresh_wait):
                raise status.too_large(rv)

    def _check_body(self, rtype: ResourceType, namespace: str, body: Any) -> Doc:
        if not isinstance(body, dict):
            raise status.bad_request("the body of the request was not a JSON object")
        obj = copy.deepcopy(body)
        if obj.get("apiVersion") != rtype.api_version or obj.get("kind") != rtype.kind:
            raise status.bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({rtype.api_version})"
                if obj.get("apiVersion") != rtype.api_version
                else f"the kind in the data ({obj.get('kind')}) does not match the expected "
                f"kind ({rtype.kind})"
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise status.bad_request("metadata must be an object")
        if rtype.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise status.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
            if self.store.get(NAMESPACES, "", namespace) is None:
                raise status.not_found("", "namespaces", namespace)
        else:
            meta.pop("namespace", None)
        return obj

    @staticmethod
    def _merge_server_fields(rtype: ResourceType, old: Doc, obj: Doc, *, subresource: str) -> Doc:
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
            return new
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        for field in _SERVER_META:
            meta.pop(field, None)
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        if rtype.custom and rtype.status_subresource:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        if rtype.custom:
            spec_old = {k: v for k, v in old.items() if k not in ("metadata", "status")}
            spec_new = {k: v for k, v in new.items() if k not in ("metadata", "status")}
            if spec_old != spec_new:
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        return new


def _same(new: Doc, old: Doc) -> bool:
    return new == old


def _precondition(rtype: ResourceType, name: str, detail: str) -> status.ApiError:
    error = status.conflict(rtype.group, rtype.plural, name)
    qualified = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
    error.status["message"] = (
        f'Operation cannot be fulfilled on {qualified} "{name}": Precondition failed: {detail}'
    )
    return error


def _selector(query: dict[str, str]) -> Callable[[Doc], bool]:
    labels = label_selector(query.get("labelSelector", ""))
    fields = field_selector(query.get("fieldSelector", ""))
    return lambda obj: labels(obj) and fields(obj)


def _sort_key(meta: Doc) -> str:
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _after(obj: Doc, start: str) -> bool:
    return not start or _sort_key(obj["metadata"]) > start


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(raw["rv"]), str(raw["start"]).rstrip("\x00")
    except (ValueError, KeyError, TypeError):
        raise status.bad_request(f"continue key is not valid: {token}") from None
