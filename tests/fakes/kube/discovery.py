"""What kubectl reads before it touches a resource: discovery, OpenAPI v3 and server-side tables.

- Discovery in the unaggregated form (`/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`).
  kubectl asks for the aggregated form first and falls back when the answer's Content-Type is
  plain `application/json`, as it does against servers that predate aggregated discovery.
- OpenAPI v3: the `/openapi/v3` index and one document per group-version whose PATCH operations
  carry `x-kubernetes-group-version-kind` and the `fieldValidation` parameter. That is what
  kubectl's field-validation check looks for; finding it, kubectl leaves validation to the server
  and sends `fieldValidation=Strict`. The documents have no component schemas, so kubectl builds
  ConfigMap patches from its compiled-in types (strategic merge) and custom-resource patches as
  JSON merge patches, exactly as it does for a server without OpenAPI.
- `Table` (meta.k8s.io/v1) answers for `kubectl get`'s `Accept: ...;as=Table` requests, with the
  real columns (ConfigMap: Name, Data, Age; custom resources: the CRD's printer columns).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from typing import Any

from tests.fakes.kube.resources import ResourceType

Doc = dict[str, Any]

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}
NAMESPACES = ResourceType(
    group="",
    version="v1",
    kind="Namespace",
    plural="namespaces",
    singular="namespace",
    namespaced=False,
    short_names=("ns",),
)


def api_versions(address: str) -> Doc:
    """`GET /api`."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def resource_list(group_version: str, rtypes: Sequence[ResourceType]) -> Doc:
    """`GET /api/v1` or `GET /apis/{group}/{version}`: an APIResourceList."""
    resources: list[Doc] = []
    for rtype in rtypes:
        entry: Doc = {
            "name": rtype.plural,
            "singularName": rtype.singular,
            "namespaced": rtype.namespaced,
            "kind": rtype.kind,
            "verbs": ["get", "list", "watch"] if rtype is NAMESPACES else ALL_VERBS,
            "storageVersionHash": _hash(rtype.api_version + rtype.kind),
        }
        if rtype.short_names:
            entry["shortNames"] = list(rtype.short_names)
        if rtype.categories:
            entry["categories"] = list(rtype.categories)
        resources.append(entry)
        if rtype.status_subresource:
            resources.append(
                {
                    "name": f"{rtype.plural}/status",
                    "singularName": "",
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def api_group(group: str, versions: Sequence[str]) -> Doc:
    """`GET /apis/{group}`: an APIGroup."""
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": listed,
        "preferredVersion": listed[0],
    }


def api_group_list(groups: dict[str, list[str]]) -> Doc:
    """`GET /apis`: an APIGroupList."""
    found = [api_group(g, v) for g, v in sorted(groups.items())]
    for doc in found:
        del doc["kind"], doc["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": found}


def openapi_index(group_versions: Sequence[str]) -> Doc:
    """`GET /openapi/v3`: where each group-version's document lives."""
    paths = {}
    for gv in group_versions:
        prefix = "api" if "/" not in gv else "apis"
        paths[f"{prefix}/{gv}"] = {
            "serverRelativeURL": f"/openapi/v3/{prefix}/{gv}?hash={_hash(gv).upper()}"
        }
    return {"paths": paths}


def openapi_document(rtypes: Sequence[ResourceType]) -> Doc:
    """`GET /openapi/v3/{api|apis}/...`: operations enough for kubectl's checks."""
    paths: Doc = {}
    for rtype in rtypes:
        gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
        where = (
            f"{rtype.base_path}/namespaces/{{namespace}}" if rtype.namespaced else rtype.base_path
        )
        patch_types = ["application/json-patch+json", "application/merge-patch+json"]
        if not rtype.custom:
            patch_types.append("application/strategic-merge-patch+json")
        params = [
            {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for n in ("dryRun", "fieldManager", "fieldValidation", "force")
        ]
        item = {
            "get": {
                "operationId": f"read{rtype.kind}",
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": gvk,
            },
            "put": {
                "operationId": f"replace{rtype.kind}",
                "x-kubernetes-action": "put",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
            },
            "patch": {
                "operationId": f"patch{rtype.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "requestBody": {
                    "content": {t: {"schema": {"type": "object"}} for t in patch_types}
                },
            },
        }
        paths[f"{where}/{rtype.plural}/{{name}}"] = item
        paths[f"{where}/{rtype.plural}"] = {
            "post": {
                "operationId": f"create{rtype.kind}",
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
            },
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }


def wants_table(accept: str) -> bool:
    """Does the Accept header ask for a meta.k8s.io Table first?"""
    first = accept.split(",", 1)[0].replace(" ", "")
    return "as=Table" in first and "g=meta.k8s.io" in first


_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
_AGE_COLUMN = {
    "name": "Age",
    "type": "string",
    "format": "",
    "description": "CreationTimestamp is a timestamp representing the server time when this "
    "object was created.",
    "priority": 0,
}


def table(
    rtype: ResourceType, objs: Sequence[Doc], *, include: str, rv: str, now: datetime.datetime
) -> Doc:
    """A meta.k8s.io/v1 Table of `objs` with the columns the real server prints."""
    columns: list[Doc] = [_NAME_COLUMN]
    if rtype.custom:
        for col in rtype.printer_columns:
            columns.append(
                {
                    "name": col["name"],
                    "type": col["type"],
                    "format": col.get("format", ""),
                    "description": col.get("description", ""),
                    "priority": col.get("priority", 0),
                }
            )
        if not rtype.printer_columns:
            columns.append(_AGE_COLUMN)
    elif rtype.kind == "ConfigMap":
        columns += [
            {
                "name": "Data",
                "type": "integer",
                "format": "",
                "priority": 0,
                "description": "Data contains the configuration data.",
            },
            _AGE_COLUMN,
        ]
    else:
        columns += [
            {
                "name": "Status",
                "type": "string",
                "format": "",
                "priority": 0,
                "description": "The status of the namespace",
            },
            _AGE_COLUMN,
        ]
    rows = [{"cells": _cells(rtype, obj, now), **_row_object(obj, include)} for obj in objs]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns,
        "rows": rows,
    }


def _row_object(obj: Doc, include: str) -> Doc:
    if include == "None":
        return {}
    if include == "Object":
        return {"object": obj}
    return {
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }
    }


def _cells(rtype: ResourceType, obj: Doc, now: datetime.datetime) -> list[Any]:
    meta = obj["metadata"]
    age = human_age(meta.get("creationTimestamp"), now)
    if not rtype.custom:
        if rtype.kind == "ConfigMap":
            return [
                meta["name"],
                len(obj.get("data") or {}) + len(obj.get("binaryData") or {}),
                age,
            ]
        return [meta["name"], obj.get("status", {}).get("phase", "Active"), age]
    if not rtype.printer_columns:
        return [meta["name"], age]
    cells: list[Any] = [meta["name"]]
    for col in rtype.printer_columns:
        value: Any = obj
        for part in col["jsonPath"].strip(".").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if col["type"] == "date":
            value = human_age(value, now) if value else "<unknown>"
        cells.append(value)
    return cells


_DAY = 86400
# (below this many seconds, the big unit, the optional small unit), as client-go's HumanDuration.
_AGE_STEPS = (
    (120, ("s", 1), None),
    (600, ("m", 60), ("s", 1)),
    (3 * 3600, ("m", 60), None),
    (8 * 3600, ("h", 3600), ("m", 60)),
    (2 * _DAY, ("h", 3600), None),
    (8 * _DAY, ("d", _DAY), ("h", 3600)),
    (2 * 365 * _DAY, ("d", _DAY), None),
    (8 * 365 * _DAY, ("y", 365 * _DAY), ("d", _DAY)),
)


def human_age(stamp: str | None, now: datetime.datetime) -> str:
    """A creationTimestamp as kubectl's AGE column words it: `42s`, `3m12s`, `5h`, `12d`."""
    if not stamp:
        return "<unknown>"
    then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((now - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    for below, (big, big_size), small in _AGE_STEPS:
        if seconds < below:
            text = f"{seconds // big_size}{big}"
            if small is not None and (seconds % big_size) // small[1]:
                text += f"{(seconds % big_size) // small[1]}{small[0]}"
            return text
    return f"{seconds // (365 * _DAY)}y"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
