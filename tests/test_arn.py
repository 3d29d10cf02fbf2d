"""ARN canonicalisation and path stripping against the spec's vectors.

See R1-R9 in docs/upstream-compat.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authd import token
from authd.arn import PARTITIONS, PrincipalType, canonicalize, strip_path
from authd.errors import ArnError

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "arn-canonical.json").read_text()
)


@pytest.mark.parametrize(
    "vector", VECTORS, ids=[f"{i}-{v['in'] or 'empty'}" for i, v in enumerate(VECTORS)]
)
def test_canonical_vector(vector: dict[str, Any]) -> None:
    """Each vector yields its canonical ARN and type, or exactly its upstream error text."""
    if "error" in vector:
        with pytest.raises(ArnError) as caught:
            canonicalize(vector["in"])
        assert str(caught.value) == vector["error"]
    else:
        assert canonicalize(vector["in"]) == (PrincipalType[vector["type"]], vector["out"])


def test_vectors_cover_every_principal_type_and_error() -> None:
    """The vector file exercises every non-NONE principal type and at least one error."""
    types = {v["type"] for v in VECTORS if "type" in v}
    assert types == {t.name for t in PrincipalType} - {"NONE"}
    assert any("error" in v for v in VECTORS)


def test_every_partition_is_recognised() -> None:
    """All eight partitions are accepted and an assumed role keeps its partition."""
    assert len(PARTITIONS) == 8
    for partition in PARTITIONS:
        arn = f"arn:{partition}:sts::111122223333:assumed-role/R/s"
        assert canonicalize(arn)[1] == f"arn:{partition}:iam::111122223333:role/R"


def test_empty_role_name_is_not_an_error() -> None:
    """`assumed-role//S` gives an empty role name without error, as upstream (R9)."""
    result = canonicalize("arn:aws:sts::123456789012:assumed-role//S")
    assert result == (PrincipalType.ASSUMED_ROLE, "arn:aws:iam::123456789012:role/")


@pytest.mark.parametrize(
    ("arn", "expected"),
    [
        ("arn:aws:iam::123456789012:role/Org/Team/Admin", "arn:aws:iam::123456789012:role/Admin"),
        ("arn:aws-cn:iam::123456789012:role/p/Admin", "arn:aws-cn:iam::123456789012:role/Admin"),
        ("arn:aws:iam::123456789012:role/Admin", "arn:aws:iam::123456789012:role/Admin"),
        ("arn:aws:iam::123456789012:user/Alice", "arn:aws:iam::123456789012:user/Alice"),
        ("arn:aws:iam::123456789012:user/dev/Alice", "arn:aws:iam::123456789012:user/dev/Alice"),
        (
            "arn:aws:sts::123456789012:federated-user/Bob",
            "arn:aws:sts::123456789012:federated-user/Bob",
        ),
    ],
)
def test_strip_path(arn: str, expected: str) -> None:
    """Only role ARNs with a path lose it; everything else comes back unchanged."""
    assert strip_path(arn) == expected


@pytest.mark.parametrize(
    ("arn", "error"),
    [
        ("NOT AN ARN", "arn 'NOT AN ARN' is invalid: 'arn: invalid prefix'"),
        ("arn:aws:iam::1", "arn 'arn:aws:iam::1' is invalid: 'arn: not enough sections'"),
        (
            "arn:x:iam::1:role/a/b",
            "arn 'arn:x:iam::1:role/a/b' does not have a recognized partition",
        ),
    ],
)
def test_strip_path_rejects_malformed_arns(arn: str, error: str) -> None:
    """strip_path applies the same R1-R3 checks and texts as canonicalize."""
    with pytest.raises(ArnError) as caught:
        strip_path(arn)
    assert str(caught.value) == error


def test_partition_names_are_the_token_verifiers() -> None:
    """ARN parsing accepts exactly the partitions whose STS hosts the verifier knows."""
    assert tuple(token._PARTITIONS) == PARTITIONS
    for name in token._PARTITIONS:
        kind, _ = canonicalize(f"arn:{name}:iam::123456789012:user/a")
        assert kind is PrincipalType.USER
        assert token.EndpointPolicy.create(partition=name).partition == name
    with pytest.raises(ArnError):
        canonicalize("arn:aws-mars:iam::123456789012:user/a")
