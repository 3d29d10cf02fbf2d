"""The resource types the fake serves (ConfigMaps built in, custom resources from CRD YAML).

A `ResourceType` holds what discovery, routing and validation need: group, version, kind, plural,
scope, the status subresource and, for a custom resource, its OpenAPI v3 schema and printer
columns. `validate()` does what the real server does to a written object: for ConfigMaps it
checks names, data keys and `immutable`; for custom resources it prunes fields the structural
schema does not declare (or, under `fieldValidation=Strict`, rejects them), drops nulls, and
checks types and required fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.kube import status

Doc = dict[str, Any]

CRD_FILE = Path(__file__).resolve().parents[3] / "config" / "crd-iamidentitymapping.yaml"
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceType:
    """One served resource: enough for discovery, the URL layout and write validation."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    custom: bool = False
    schema: Doc | None = None
    printer_columns: tuple[Doc, ...] = ()

    @property
    def api_version(self) -> str:
        """`v1` or `group/version`."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        """`ConfigMapList`, `IAMIdentityMappingList`."""
        return f"{self.kind}List"

    @property
    def base_path(self) -> str:
        """`/api/v1` or `/apis/group/version`."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


CONFIGMAPS = ResourceType(
    group="",
    version="v1",
    kind="ConfigMap",
    plural="configmaps",
    singular="configmap",
    namespaced=True,
    short_names=("cm",),
)


def load_crd(path: Path) -> ResourceType:
    """The served version of the `apiextensions.k8s.io/v1` CustomResourceDefinition at `path`."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    crd = next(d for d in docs if d.get("kind") == "CustomResourceDefinition")
    spec = crd["spec"]
    names = spec["names"]
    version = next(v for v in spec["versions"] if v.get("served", True))
    return ResourceType(
        group=spec["group"],
        version=version["name"],
        kind=names["kind"],
        plural=names["plural"],
        singular=names.get("singular", names["kind"].lower()),
        namespaced=spec["scope"] == "Namespaced",
        short_names=tuple(names.get("shortNames", ())),
        categories=tuple(names.get("categories", ())),
        status_subresource="status" in version.get("subresources", {}),
        custom=True,
        schema=version["schema"]["openAPIV3Schema"],
        printer_columns=tuple(version.get("additionalPrinterColumns", ())),
    )


def validate(rtype: ResourceType, obj: Doc, old: Doc | None, *, strict: bool) -> Doc:
    """The object as the server would store it, or raise `ApiError` (400 strict, 422 invalid)."""
    name = obj.get("metadata", {}).get("name", "")
    causes: list[tuple[str, str, str]] = []
    if not _SUBDOMAIN.match(name) or len(name) > 253:
        causes.append(
            (
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character",
            )
        )
    if rtype.custom:
        obj = _validate_custom(rtype, obj, causes, strict=strict)
    else:
        _validate_configmap(obj, old, causes, strict=strict)
    if causes:
        raise status.invalid(rtype.kind, rtype.group, name, causes)
    return obj


_CONFIGMAP_FIELDS = {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"}


def _validate_configmap(
    obj: Doc, old: Doc | None, causes: list[tuple[str, str, str]], *, strict: bool
) -> None:
    unknown = sorted(set(obj) - _CONFIGMAP_FIELDS)
    if unknown and strict:
        fields = ", ".join(f'unknown field "{f}"' for f in unknown)
        raise status.bad_request(f"strict decoding error: {fields}")
    for key in unknown:
        del obj[key]
    seen: set[str] = set()
    for field in ("data", "binaryData"):
        values = obj.get(field) or {}
        if not isinstance(values, dict):
            raise status.bad_request(
                f'ConfigMap in version "v1" cannot be handled as a ConfigMap: {field} must be a map'
            )
        for key, value in values.items():
            if not _CONFIG_KEY.match(key):
                causes.append(
                    (
                        f"{field}[{key}]",
                        "FieldValueInvalid",
                        f'Invalid value: "{key}": a valid config key must consist of '
                        "alphanumeric characters, '-', '_' or '.'",
                    )
                )
            if key in seen:
                causes.append(
                    (
                        f"data[{key}]",
                        "FieldValueInvalid",
                        f'Invalid value: "{key}": duplicate of key present in binaryData',
                    )
                )
            seen.add(key)
            if not isinstance(value, str):
                raise status.bad_request(
                    'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot '
                    f"unmarshal {_type_name(value)} into Go struct field ConfigMap.{field} of "
                    "type string"
                )
    if old is not None and old.get("immutable"):
        for field in ("data", "binaryData"):
            if (old.get(field) or {}) != (obj.get(field) or {}):
                causes.append(
                    (
                        field,
                        "FieldValueForbidden",
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                )
        if not obj.get("immutable"):
            causes.append(
                (
                    "immutable",
                    "FieldValueForbidden",
                    "Forbidden: field is immutable when `immutable` is set",
                )
            )


def _validate_custom(
    rtype: ResourceType, obj: Doc, causes: list[tuple[str, str, str]], *, strict: bool
) -> Doc:
    schema = rtype.schema or {}
    unknown: list[str] = []
    kept: Doc = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
    rest = {k: v for k, v in obj.items() if k not in kept}
    pruned = _prune(rest, schema, "", unknown)
    if unknown and strict:
        fields = ", ".join(f'unknown field "{f}"' for f in unknown)
        raise status.bad_request(f"strict decoding error: {fields}")
    kept.update(pruned)
    for key, value in pruned.items():
        _check(value, schema.get("properties", {}).get(key, {}), key, causes)
    return kept


def _prune(value: Doc, schema: Doc, path: str, unknown: list[str]) -> Doc:
    """Drop undeclared fields and nulls, as structural-schema pruning does."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    props = schema.get("properties", {})
    out: Doc = {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in props:
            unknown.append(where)
            continue
        if item is None and not props[key].get("nullable"):
            continue
        sub = props[key]
        if isinstance(item, dict) and sub.get("type") == "object":
            out[key] = _prune(item, sub, where, unknown)
        else:
            out[key] = item
    return out


def _check(value: Any, schema: Doc, path: str, causes: list[tuple[str, str, str]]) -> None:
    kind = schema.get("type")
    expected = _TYPES.get(kind or "")
    if expected is not None and (
        not isinstance(value, expected)
        or (kind in ("integer", "number") and isinstance(value, bool))
    ):
        got = _type_name(value)
        causes.append(
            (
                path,
                "FieldValueTypeInvalid",
                f'Invalid value: "{got}": {path} in body must be of type {kind}: "{got}"',
            )
        )
        return
    if isinstance(value, dict):
        for required in schema.get("required", ()):
            if required not in value:
                causes.append((f"{path}.{required}", "FieldValueRequired", "Required value"))
        for key, item in value.items():
            _check(item, schema.get("properties", {}).get(key, {}), f"{path}.{key}", causes)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, schema.get("items", {}), f"{path}[{i}]", causes)


def _type_name(value: Any) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str)):
        if isinstance(value, kind):
            return name
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"
