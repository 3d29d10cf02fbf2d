"""Reads the protobuf bodies kubectl's typed clients send (`kubectl create configmap ...`).

Built-in types go over the wire as `application/vnd.kubernetes.protobuf`: the magic `k8s\\0`, then
a `runtime.Unknown` envelope (1: TypeMeta{1: apiVersion, 2: kind}, 2: raw bytes of the object).
This decodes a ConfigMap (1: ObjectMeta, 2: data, 3: binaryData, 4: immutable) with the
ObjectMeta fields a client sets (name, generateName, namespace, resourceVersion, labels,
annotations, finalizers) into the JSON shape the rest of the fake works on. Answers stay JSON,
which client-go's typed clients accept too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from tests.fakes.kube import status

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
Doc = dict[str, Any]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, varint or length-delimited bytes) for each field of one message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            yield number, data[pos : pos + size]
            pos += size
        else:
            raise status.bad_request(f"unsupported protobuf wire type {wire}")


def _entry(data: bytes) -> tuple[str, bytes]:
    parts = {n: v for n, v in _fields(data) if isinstance(v, bytes)}
    return parts.get(1, b"").decode(), parts.get(2, b"")


def _object_meta(data: bytes) -> Doc:
    strings = {1: "name", 2: "generateName", 3: "namespace", 6: "resourceVersion"}
    maps = {11: "labels", 12: "annotations"}
    meta: Doc = {}
    for number, value in _fields(data):
        if not isinstance(value, bytes):
            continue
        if number in strings and value:  # generated marshallers write empty strings too
            meta[strings[number]] = value.decode()
        elif number in maps:
            key, item = _entry(value)
            meta.setdefault(maps[number], {})[key] = item.decode()
        elif number == 14:
            meta.setdefault("finalizers", []).append(value.decode())
    return meta


def decode(body: bytes) -> Doc:
    """The JSON form of a protobuf-encoded ConfigMap; 415 for anything else."""
    if not body.startswith(MAGIC):
        raise status.bad_request("protobuf body without the k8s magic prefix")
    envelope = {n: v for n, v in _fields(body[len(MAGIC) :]) if isinstance(v, bytes)}
    type_meta = {n: v for n, v in _fields(envelope.get(1, b"")) if isinstance(v, bytes)}
    api_version, kind = type_meta.get(1, b"").decode(), type_meta.get(2, b"").decode()
    if (api_version, kind) != ("v1", "ConfigMap"):
        raise status.unsupported_media(["application/json"])
    obj: Doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}
    for number, value in _fields(envelope.get(2, b"")):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _object_meta(value)
        elif number == 2 and isinstance(value, bytes):
            key, item = _entry(value)
            obj.setdefault("data", {})[key] = item.decode()
        elif number == 3 and isinstance(value, bytes):
            key, item = _entry(value)
            obj.setdefault("binaryData", {})[key] = base64.b64encode(item).decode()
        elif number == 4:
            obj["immutable"] = bool(value)
    return obj
