"""`labelSelector` and `fieldSelector` query parameters, parsed and matched as the server does.

Label selectors take the full syntax (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`,
`!a`, comma-joined). Field selectors take `=`, `==` and `!=` on the fields every resource
supports, `metadata.name` and `metadata.namespace`; any other field is a 400, as for the real
ConfigMap and custom-resource endpoints.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.fakes.kube import status

Doc = dict[str, Any]
Matcher = Callable[[Doc], bool]

_SET = re.compile(r"^\s*([^\s!=,()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_FIELDS = ("metadata.name", "metadata.namespace")


def _split(selector: str) -> list[str]:
    """Split on the commas that are not inside `( )`."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _label_term(term: str) -> Matcher:
    match = _SET.match(term)
    if match:
        key, op, values = (
            match.group(1),
            match.group(2),
            {v.strip() for v in match.group(3).split(",") if v.strip()},
        )
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (s.strip() for s in term.split(op, 1))
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if re.match(r"^[A-Za-z0-9./_-]+$", term):
        return lambda labels: term in labels
    raise status.bad_request(f"unable to parse requirement: {term!r}")


def label_selector(selector: str) -> Matcher:
    """A predicate on whole objects for `labelSelector=...` (empty selects everything)."""
    terms = [_label_term(t) for t in _split(selector)]

    def matches(obj: Doc) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(term(labels) for term in terms)

    return matches


def field_selector(selector: str) -> Matcher:
    """A predicate on whole objects for `fieldSelector=...` (empty selects everything)."""
    terms: list[tuple[str, bool, str]] = []
    for term in _split(selector):
        for op in ("!=", "==", "="):
            if op in term:
                field, value = (s.strip() for s in term.split(op, 1))
                break
        else:
            raise status.bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
        if field not in _FIELDS:
            raise status.bad_request(
                f'"{field}" is not a known field selector: only "metadata.name", '
                '"metadata.namespace"'
            )
        terms.append((field, op != "!=", value))

    def matches(obj: Doc) -> bool:
        meta = obj.get("metadata", {})
        return all(
            (meta.get(field.split(".", 1)[1], "") == value) == equal
            for field, equal, value in terms
        )

    return matches
