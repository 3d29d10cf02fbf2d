"""Fuzzing the config file, the DynamicFile, aws-auth ConfigMaps, IAMIdentityMappings and reloads.

The strategies and invariants are tests/fuzzing_files.py's (docs/RELIABILITY.md): every input
parses or fails with the documented ConfigError, a parsed table answers lookups, and a version
that fails to parse never replaces the last good snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from authd.config import MappingConfig
from authd.errors import ConfigError
from authd.mapping.chain import Backend
from authd.mapping.file import MountedFileTable
from authd.server.reload import Change
from tests.fuzzing import run
from tests.fuzzing_files import (
    GOOD_CONFIG,
    ReloadHarness,
    check_config,
    check_configmap,
    check_crd,
    check_dynamic_file,
    config_files,
    configmap_data,
    crd_objects,
    dynamic_files,
    reload_versions,
)


def test_config_files_parse_or_fail_with_config_error() -> None:
    """300 config versions: parsed, resolved and linted, or refused with a ConfigError."""
    assert run(config_files(), check_config, 300) == 300


def test_dynamic_files_parse_or_fail_with_config_error() -> None:
    """300 DynamicFile versions: a table that answers lookups, or a ConfigError naming the file."""
    assert run(dynamic_files(), check_dynamic_file, 300) == 300


def test_configmaps_parse_or_fail_with_config_error() -> None:
    """300 aws-auth `data` values: bad entries left out and reported, else a ConfigError."""
    assert run(configmap_data(), check_configmap, 300) == 300


def test_identity_mappings_never_raise() -> None:
    """300 sets of IAMIdentityMapping objects: a malformed one is refused alone."""
    assert run(crd_objects(), check_crd, 300) == 300


def test_a_version_that_fails_to_parse_keeps_the_last_good_snapshot(tmp_path: Path) -> None:
    """300 versions of the config and the DynamicFile judged by the reloader's own steps."""
    harness = ReloadHarness(tmp_path)
    assert run(reload_versions(), harness.check, 300) == 300


def test_the_snapshot_check_sees_a_good_version_applied(tmp_path: Path) -> None:
    """A good version replaces the snapshot and a bad one does not, so both branches are live."""
    harness = ReloadHarness(tmp_path)
    before = harness.mounted.table
    harness.check(("config", GOOD_CONFIG.replace(b"username: alice", b"username: alice2")))
    assert harness.mounted.table is not before
    kept = harness.mounted.table
    harness.check(("config", b"server: [unclosed"))
    assert harness.mounted.table is kept


def test_the_snapshot_check_catches_a_target_that_swaps_in_a_bad_version(tmp_path: Path) -> None:
    """A target that publishes something on a refused version fails the check."""
    harness = ReloadHarness(tmp_path)
    path, target, backend = harness.targets["config"]
    harness.targets["config"] = (path, _PublishesOnReject(target, backend), backend)
    with pytest.raises(AssertionError, match="failed to parse was applied"):
        harness.check(("config", b"server: [unclosed"))


class _PublishesOnReject:
    """A broken reload target: on a refused version it publishes an empty table anyway."""

    def __init__(self, target: Any, backend: Backend) -> None:
        self._target = target
        self._backend = backend

    def parse(self, data: bytes) -> Any:
        return self._target.parse(data)

    def apply(self, parsed: Any, change: Change) -> None:
        self._target.apply(parsed, change)

    def reject(self, error: ConfigError, change: Change) -> None:
        self._backend.publish(MountedFileTable.from_config(MappingConfig()))
        self._backend.mark_not_ready(str(error))

    def missing(self, change: Change) -> None:
        self._target.missing(change)
