"""Run every mapping vector (tests/vectors/mapping.json) through the real config and chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authd.config import FeatureGates, FileConfig, MappingConfig
from authd.errors import MappingError
from authd.identity import Identity
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.dynamicfile import DynamicFileTable
from authd.mapping.file import MountedFileTable

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "mapping.json").read_text()
)
# Features a vector may need; every one is built now. A new need in the vectors fails the
# test below instead of being skipped silently.
# Vectors whose Identity Center role suffix is upstream's test value, not the 16 hex digits
# Identity Center appends: authd matches the suffix exactly, so each is run with a real one
# after checking that the original is refused (docs/upstream-compat.md, mapping 5).
SSO_SUFFIXES = {"mounted_sso_match_gate_on": ("_123123123", "_0123456789abcdef")}
SUPPORTED_NEEDS = {"dynamicfile", "dynamicfile-strict", "sso", "scrubbed-accounts", "ec2"}


def _backend(vector: dict[str, Any]) -> Backend:
    """Build the vector's backend from its config text with its options."""
    options = vector.get("options", {})
    if vector["backend"] == "DynamicFile":
        table = DynamicFileTable.from_bytes(
            vector["config"].encode(),
            path="dynamic.json",
            userid_strict=options.get("dynamicfile_userid_strict", False),
        )
        return Backend("DynamicFile", table)
    assert vector["backend"] == "MountedFile"
    gates = FeatureGates.from_mapping(options.get("feature_gates", {}))
    mapping = MappingConfig.from_file_config(
        FileConfig.from_text(vector["config"], path="config.yaml")
    )
    table = MountedFileTable.from_config(mapping, sso_role_match=gates.sso_role_match)
    return Backend(
        "MountedFile", table, reserved_prefixes=mapping.reserved_prefixes_for("MountedFile")
    )


def test_vectors_need_only_built_features() -> None:
    """Every feature named in a vector's `needs` is one this suite runs, so none is skipped."""
    needs = {need for vector in VECTORS for need in vector.get("needs", [])}
    assert needs <= SUPPORTED_NEEDS, f"vectors need unbuilt features: {needs - SUPPORTED_NEEDS}"
    assert len(VECTORS) >= 30


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
async def test_mapping_vector(vector: dict[str, Any]) -> None:
    """The chain maps (or denies) the vector's identity exactly as the vector expects."""
    lookups: list[str] = []

    async def resolve(instance_id: str) -> str:
        lookups.append(instance_id)
        return f"ip-10-0-0-1.{instance_id}.internal"

    chain = MapperChain(
        [_backend(vector)],
        scrubbed_accounts=vector.get("options", {}).get("scrubbed_accounts", ()),
    )
    if vector["name"] in SSO_SUFFIXES:
        with pytest.raises(MappingError):
            await chain.map(Identity(**vector["identity"]), resolve_private_dns=resolve)
        old, new = SSO_SUFFIXES[vector["name"]]
        vector = json.loads(json.dumps(vector).replace(old, new))
    identity = Identity(**vector["identity"])
    expect = vector["expect"]
    if expect.get("denied"):
        with pytest.raises(MappingError):
            await chain.map(identity, resolve_private_dns=resolve)
        # A session name that is not an instance ID is refused before any EC2 lookup.
        assert lookups == []
        return
    result = await chain.map(identity, resolve_private_dns=resolve)
    assert result.user.username == expect["username"]
    assert list(result.user.groups) == expect["groups"]
    assert result.user.uid == expect["uid"]
    assert result.user.extra == expect.get("extra", {})
    assert result.backend == vector["backend"]
