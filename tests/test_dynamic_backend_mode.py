"""The dynamic backend-mode file switches the chain live, keeps it on a bad version, reverts."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from authd.config import FileConfig, ServerSettings
from authd.errors import ConfigError, NotMappedError
from authd.metrics import Metrics
from authd.server.backends import Backends
from authd.server.targets import parse_backend_mode_file
from tests.kubehelpers import wait_until
from tests.test_backends import (
    FAST,
    config_text,
    dynamic_doc,
    role_identity,
    user_identity,
)


def mode_doc(modes: str, *, updated: float | None = None) -> bytes:
    """A backend-mode file naming `modes`, written `updated` (unix seconds; default now)."""
    stamp = str(int(time.time() if updated is None else updated))
    return json.dumps({"backendMode": modes, "Version": "1", "LastUpdatedDateTime": stamp}).encode()


def save(path: Path, data: bytes) -> None:
    """Write-then-rename, as a config manager does."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_parse_validates_modes_as_the_flag_does() -> None:
    """Modes are space separated and checked like --backend-mode; keys ignore case; DynamicFile
    needs a DynamicFile path."""
    doc = b'{"BACKENDMODE": "File DynamicFile", "version": "2", "LastUpdatedDateTime": "5"}'
    parsed = parse_backend_mode_file(doc, path="m.json", dynamicfile_path="/d.json")
    assert (parsed.modes, parsed.version, parsed.last_updated) == (
        ("MountedFile", "DynamicFile"),
        "2",
        "5",
    )
    with pytest.raises(ConfigError, match='backend-mode "Nope" is not a valid mode'):
        parse_backend_mode_file(b'{"backendMode": "Nope"}', path="m.json", dynamicfile_path="")
    with pytest.raises(ConfigError, match="dynamicfilepath is not set"):
        parse_backend_mode_file(
            b'{"backendMode": "DynamicFile"}', path="m.json", dynamicfile_path=""
        )
    with pytest.raises(ConfigError, match="at least one backend-mode"):
        parse_backend_mode_file(b'{"backendMode": ""}', path="m.json", dynamicfile_path="")


@dataclass
class Env:
    """Backends serving, with the backend-mode file path."""

    backends: Backends
    metrics: Metrics
    mode_file: Path

    def sample(self, name: str, **labels: str) -> float | None:
        """One metric sample."""
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """--backend-mode MountedFile, a DynamicFile mapping the Dyn role, no backend-mode file yet."""
    dynamic = tmp_path / "mappings.json"
    dynamic.write_bytes(dynamic_doc())
    mode_file = tmp_path / "modes" / "backend-mode.json"
    mode_file.parent.mkdir()
    config = tmp_path / "config.yaml"
    extra = f"  dynamicfilepath: {dynamic}\n  dynamicBackendModePath: {mode_file}\n"
    config.write_text(config_text(extra=extra))
    settings = ServerSettings.resolve(
        flags={"backend_mode": "MountedFile"}, env={}, file=FileConfig.from_file(config)
    )
    metrics = Metrics(process_collector=False)
    backends = Backends(settings, metrics)
    backends.load_all()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: backends.serve_reloads(timing=FAST, task_status=task_status)
        )
        yield Env(backends, metrics, mode_file)
        nursery.cancel_scope.cancel()


async def mapped(env: Env, identity: object) -> str | None:
    """The username the live chain gives `identity`, or None when denied."""
    try:
        result = await env.backends.chain.map(identity)  # type: ignore[arg-type]
    except NotMappedError:
        return None
    return result.user.username


async def test_the_file_switches_the_chain_and_deletion_reverts(env: Env) -> None:
    """No file: --backend-mode. Then MountedFile+DynamicFile (DynamicFile started on demand),
    DynamicFile alone (upstream's gauges and latency), a bad version (chain kept, /readyz
    degraded), and deletion (back to --backend-mode)."""
    assert env.backends.chain.names == ("MountedFile",)
    assert await mapped(env, role_identity()) is None
    assert env.backends.readiness() == (True, "MountedFile: ok\n")

    save(env.mode_file, mode_doc("MountedFile DynamicFile"))
    await wait_until(lambda: env.backends.chain.names == ("MountedFile", "DynamicFile"))
    assert await mapped(env, role_identity()) == "dyn-admin"
    assert await mapped(env, user_identity()) == "alice"
    assert env.backends.readiness() == (True, "MountedFile: ok\nDynamicFile: ok\n")
    assert env.sample("aws_iam_authenticator_dynamic_file_enabled") == 1
    assert env.sample("aws_iam_authenticator_dynamic_file_only") == 0

    save(env.mode_file, mode_doc("DynamicFile", updated=time.time() - 3))
    await wait_until(lambda: env.backends.chain.names == ("DynamicFile",))
    assert await mapped(env, user_identity()) is None
    assert env.sample("aws_iam_authenticator_dynamic_file_only") == 1
    latency = {"type": "dynamic_backend_mode"}
    assert env.sample("aws_iam_authenticator_dynamic_e2e_latency_seconds_count", **latency) == 1
    assert env.sample("aws_iam_authenticator_dynamic_e2e_latency_seconds_sum", **latency) >= 3  # type: ignore[operator]

    save(env.mode_file, mode_doc("MountedFile Nope"))
    await wait_until(lambda: not env.backends.readiness()[0])
    _, text = env.backends.readiness()
    assert "backend mode: degraded, keeping DynamicFile" in text
    assert 'backend-mode "Nope" is not a valid mode' in text
    assert env.backends.chain.names == ("DynamicFile",)
    assert env.sample("authd_reloads_total", source="dynamicBackendMode", result="error") == 1

    env.mode_file.unlink()
    await wait_until(lambda: env.backends.chain.names == ("MountedFile",))
    assert await mapped(env, user_identity()) == "alice"
    assert env.backends.readiness() == (True, "MountedFile: ok\n")
