"""authd.jsoncodec: orjson's speed without losing what the json module accepts."""

from __future__ import annotations

import json

import pytest

from authd import jsoncodec


def test_dumps_is_compact_and_keeps_key_order() -> None:
    """Compact separators, keys in insertion order, as json.dumps with (",", ":")."""
    value = {"b": [1, 2.5, None, True], "a": {"z": "x", "y": ""}}
    assert jsoncodec.dumps(value) == json.dumps(value, separators=(",", ":")).encode()


def test_dumps_writes_non_ascii_as_utf8() -> None:
    """Non-ASCII text is written as UTF-8, which decodes to the same string."""
    assert jsoncodec.dumps({"name": "caf\u00e9"}) == '{"name":"caf\u00e9"}'.encode()


def test_dumps_falls_back_for_a_lone_surrogate() -> None:
    """A lone surrogate (orjson refuses it) is escaped, as json.dumps does."""
    encoded = jsoncodec.dumps({"session": "a\ud800b"})
    assert encoded == b'{"session":"a\\ud800b"}'
    assert json.loads(encoded) == {"session": "a\ud800b"}


def test_dumps_uses_default_and_raises_type_error_without_it() -> None:
    """Objects JSON has no type for go through `default`; without one it is a TypeError."""
    assert jsoncodec.dumps({"x": {1, 2}}, default=sorted) == b'{"x":[1,2]}'
    with pytest.raises(TypeError):
        jsoncodec.dumps({"x": object()})


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'{"token":"k8s-aws-v1.abc"}', {"token": "k8s-aws-v1.abc"}),
        (b'{"token":"\\ud800"}', {"token": "\ud800"}),  # orjson refuses, json accepts
        ('{"n": NaN}', {"n": float("nan")}),
        ('{"x": 1}'.encode("utf-16"), {"x": 1}),
    ],
)
def test_loads_accepts_what_json_accepts(data: bytes | str, value: object) -> None:
    """Whatever the json module decodes decodes here too, to the same value."""
    decoded = jsoncodec.loads(data)
    assert repr(decoded) == repr(value)


def test_loads_reads_integers_beyond_64_bits_as_floats() -> None:
    """orjson's one difference kept: authd reads only strings from these documents."""
    assert jsoncodec.loads(b'{"n":123456789012345678901234567890}') == {"n": 1.2345678901234568e29}


@pytest.mark.parametrize(
    "data", [b"", b"{", b"\xff\xfe\xfd", b'{"a":1}x', b"[" * 200_000 + b"]" * 200_000]
)
def test_loads_refuses_what_is_not_json_with_value_error(data: bytes) -> None:
    """Broken JSON, undecodable bytes and absurd nesting are a ValueError."""
    with pytest.raises(ValueError):
        jsoncodec.loads(data)
