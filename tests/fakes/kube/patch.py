"""The three PATCH bodies kube-apiserver takes: JSON merge, strategic merge, JSON patch.

`merge_patch` is RFC 7386. `strategic_merge_patch` is the subset ConfigMaps need: maps merge like
a merge patch, lists are replaced, and the directives kubectl emits (`$patch: replace|delete`,
`$retainKeys`, `$setElementOrder/...`, `$deleteFromPrimitiveList/...`) are honoured or dropped.
`json_patch` is RFC 6902 (add, remove, replace, move, copy, test).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.fakes.kube import status

Doc = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """`target` with the RFC 7386 merge patch applied (neither argument is changed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """`target` with a strategic merge patch applied, for types whose lists have no merge keys."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    body = {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive == "replace":
        return copy.deepcopy(body)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            out[name] = [v for v in out.get(name) or [] if v not in value]
    if "$retainKeys" in patch:
        out = {k: v for k, v in out.items() if k in patch["$retainKeys"]}
    for key, value in body.items():
        if value is None:
            out.pop(key, None)
            continue
        merged = strategic_merge_patch(out.get(key), value)
        if merged is None:
            out.pop(key, None)
        else:
            out[key] = merged
    return out


def json_patch(target: Doc, ops: Any) -> Doc:
    """`target` with the RFC 6902 operations applied; a failed op raises a 422-free ApiError."""
    if not isinstance(ops, list):
        raise status.bad_request(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        )
    doc: Any = copy.deepcopy(target)
    for op in ops:
        doc = _apply_op(doc, op)
    if not isinstance(doc, dict):
        raise status.bad_request("the patch replaced the whole object with a non-object")
    return doc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise status.bad_request(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise status.ApiError(
                status.failure(422, "Invalid", f"doc is missing path: {path}: missing value")
            ) from None
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    try:
        return parent[int(parts[-1])] if isinstance(parent, list) else parent[parts[-1]]
    except (KeyError, IndexError, ValueError, TypeError):
        raise status.ApiError(
            status.failure(422, "Invalid", f"doc is missing key: {path}: missing value")
        ) from None


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    value = _get(doc, path)
    parts = _pointer(path)
    parent = _parent(doc, parts, path)
    if isinstance(parent, list):
        del parent[int(parts[-1])]
    else:
        del parent[parts[-1]]
    return doc, value


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if index > len(parent):
            raise status.ApiError(status.failure(422, "Invalid", f"index out of range: {path}"))
        parent.insert(index, copy.deepcopy(value))
    elif isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    else:
        raise status.ApiError(status.failure(422, "Invalid", f"doc is missing path: {path}"))
    return doc


def _apply_op(doc: Any, op: Doc) -> Any:
    kind, path = op.get("op"), op.get("path", "")
    if kind == "add":
        return _add(doc, path, op.get("value"))
    if kind == "remove":
        return _remove(doc, path)[0]
    if kind == "replace":
        _get(doc, path)
        doc, _ = _remove(doc, path) if _pointer(path) else (doc, None)
        return _add(doc, path, op.get("value"))
    if kind == "move":
        doc, value = _remove(doc, op["from"])
        return _add(doc, path, value)
    if kind == "copy":
        return _add(doc, path, _get(doc, op["from"]))
    if kind == "test":
        if _get(doc, path) != op.get("value"):
            raise status.ApiError(
                status.failure(422, "Invalid", f"testing value {path} failed: test failed")
            )
        return doc
    raise status.bad_request(f"Unexpected kind: {kind}")
