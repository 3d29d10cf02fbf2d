"""The daemon logs `authd validate`'s findings, same rule codes, at start and at every reload."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from authd.config import FileConfig, ServerSettings
from authd.metrics import Metrics
from authd.server.backends import Backends
from tests.test_backends import (
    ACCOUNT,
    DYN_ROLE,
    FAST,
    Env,
    config_text,
    mapped,
    role_identity,
    save,
    user_identity,
)

PATH_ROLE = f"arn:aws:iam::{ACCOUNT}:role/team/Path"


def findings(logs: list[dict[str, Any]]) -> list[tuple[str, int, str, str]]:
    """(file name, line, key, rule) of each `mapping finding` log event."""
    return [
        (Path(e["file"]).name, e["line"], e["key"], e["rule"])
        for e in logs
        if e["event"] == "mapping finding"
    ]


def dynamic_with_masters(username: str) -> bytes:
    """A DynamicFile whose one role entry grants system:masters."""
    entry = {"rolearn": DYN_ROLE, "username": username, "groups": ["system:masters"]}
    return json.dumps({"mapRoles": [entry]}, indent=2).encode()


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[Env, list[dict[str, Any]]]]:
    """Backends started on files with findings, the start-up logs captured."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text(groups="[system:masters]"))
    dynamic = tmp_path / "mappings.json"
    dynamic.write_bytes(dynamic_with_masters("dyn"))
    settings = ServerSettings.resolve(
        flags={"backend_mode": "MountedFile,DynamicFile", "dynamicfile_path": str(dynamic)},
        env={},
        file=FileConfig.from_file(config),
    )
    metrics = Metrics(process_collector=False)
    backends = Backends(settings, metrics)
    with capture_logs() as logs:
        backends.load_all()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: backends.serve_reloads(timing=FAST, task_status=task_status)
        )
        yield Env(backends, metrics, config, dynamic), logs
        nursery.cancel_scope.cancel()


async def test_findings_are_logged_at_start_and_at_each_reload_and_never_refuse(
    started: tuple[Env, list[dict[str, Any]]],
) -> None:
    """Start logs each file's findings; a reload with an error-level finding still applies."""
    env, start_logs = started
    assert findings(start_logs) == [
        ("config.yaml", 6, "server.mapUsers[0].groups", "system_masters"),
        ("mappings.json", 6, "mapRoles[0].groups", "system_masters"),
    ]
    extra = f"  mapRoles:\n  - rolearn: {PATH_ROLE}\n    username: p\n"
    with capture_logs() as logs:
        save(env.config, config_text("alice-v2", extra=extra))
        save(env.dynamic, dynamic_with_masters("dyn-v2"))
        await env.until(
            lambda: (
                mapped(env, "MountedFile", user_identity()) == "alice-v2"
                and mapped(env, "DynamicFile", role_identity()) == "dyn-v2"
            )
        )
    got = findings(logs)
    assert ("config.yaml", 4, "server.mapRoles[0].rolearn", "role_path") in got
    assert ("mappings.json", 6, "mapRoles[0].groups", "system_masters") in got
    event = next(e for e in logs if e.get("rule") == "role_path")
    assert event["severity"] == "error" and event["log_level"] == "warning"
