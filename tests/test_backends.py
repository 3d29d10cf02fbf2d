"""Backends hot-reload MountedFile and DynamicFile through real inotify, with the real chain."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import yaml
from structlog.testing import capture_logs

from authd.config import FileConfig, MappingConfig, ServerSettings
from authd.config.yamlevents import LOADER, from_node, tree_from_events
from authd.errors import NotMappedError, ReservedPrefixError
from authd.identity import Identity
from authd.metrics import Metrics
from authd.server.backends import Backends
from authd.server.reload import Timing

ACCOUNT = "123456789012"
FAST = Timing(debounce=0.03, empty_grace=0.3, resync=60.0)
WAIT = 10.0
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
DYN_ROLE = f"arn:aws:iam::{ACCOUNT}:role/Dyn"


def user_identity(name: str = "alice") -> Identity:
    """An IAM user identity as STS reports it."""
    arn = f"arn:aws:iam::{ACCOUNT}:user/{name}"
    return Identity(
        arn=arn,
        canonical_arn=arn,
        account_id=ACCOUNT,
        user_id="AIDAALICE",
        session_name="",
        access_key_id="AKIAALICE",
    )


def role_identity(role: str = "Dyn", session: str = "i-0123456789abcdef0") -> Identity:
    """An assumed-role identity (the session name is an instance ID)."""
    return Identity(
        arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}",
        canonical_arn=f"arn:aws:iam::{ACCOUNT}:role/{role}",
        account_id=ACCOUNT,
        user_id=f"AROA{role.upper()}:{session}",
        session_name=session,
        access_key_id="ASIAROLE",
    )


def config_text(username: str = "alice", *, extra: str = "", groups: str = "[dev]") -> str:
    """A config file mapping alice to `username`."""
    return (
        "clusterID: reload-test\n"
        "server:\n"
        f"{extra}"
        "  mapUsers:\n"
        f"  - userarn: {ALICE}\n"
        f"    username: {username}\n"
        f"    groups: {groups}\n"
    )


def dynamic_doc(username: str = "dyn-admin", *, updated: str = "1700000000") -> bytes:
    """A DynamicFile mapping the Dyn role."""
    doc = {
        "Version": "1",
        "LastUpdatedDateTime": updated,
        "mapRoles": [{"rolearn": DYN_ROLE, "username": username, "groups": ["ops"]}],
        "mapUsers": [],
        "mapAccounts": [],
    }
    return json.dumps(doc, indent=2).encode()


def save(path: Path, data: str | bytes) -> None:
    """Write-then-rename, as editors and config managers do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


@dataclass
class Env:
    """Backends serving reloads, plus its metrics and files."""

    backends: Backends
    metrics: Metrics
    config: Path
    dynamic: Path

    def sample(self, name: str, **labels: str) -> float | None:
        """One metric sample from the backends' registry."""
        return self.metrics.registry.get_sample_value(name, labels)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Bounded wait for a condition that a reload makes true (checked after each check)."""
        with trio.fail_after(WAIT):
            while not condition():
                reloaders = self.backends.reloaders
                checks = [r.checks for r in reloaders]
                async with trio.open_nursery() as nursery:
                    for reloader, seen in zip(reloaders, checks, strict=True):
                        nursery.start_soon(_first_check, reloader, seen + 1, nursery)


async def _first_check(reloader: object, count: int, nursery: trio.Nursery) -> None:
    """Return (cancelling siblings) when `reloader` has judged `count` reads."""
    await reloader.wait_checked(count)  # type: ignore[attr-defined]
    nursery.cancel_scope.cancel()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """MountedFile + DynamicFile backends with their reloaders running on real inotify."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text())
    dynamic = tmp_path / "dynamic" / "mappings.json"
    dynamic.parent.mkdir()
    dynamic.write_bytes(dynamic_doc())
    settings = ServerSettings.resolve(
        flags={"backend_mode": "MountedFile,DynamicFile", "dynamicfile_path": str(dynamic)},
        env={},
        file=FileConfig.from_file(config),
    )
    metrics = Metrics(process_collector=False)
    backends = Backends(settings, metrics)
    backends.load_all()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: backends.serve_reloads(timing=FAST, task_status=task_status)
        )
        yield Env(backends, metrics, config, dynamic)
        nursery.cancel_scope.cancel()


def mapped(env: Env, backend: str, identity: Identity) -> str | None:
    """The username `backend`'s current snapshot gives `identity`, without the chain."""
    table = env.backends.by_name[backend].table
    entry = table.lookup(identity) if table is not None else None
    return entry.username if entry is not None else None


async def username(env: Env, identity: Identity) -> str:
    """Map through the real chain and return the username."""
    result = await env.backends.chain.map(identity)
    return result.user.username


async def test_mounted_file_edit_is_applied_without_restart(env: Env) -> None:
    """An edit of --config is served by the chain and counted per backend."""
    assert await username(env, user_identity()) == "alice"
    save(env.config, config_text("alice-v2"))
    await env.until(lambda: mapped(env, "MountedFile", user_identity()) == "alice-v2")
    assert await username(env, user_identity()) == "alice-v2"
    assert env.sample("authd_backend_reloads_total", backend="MountedFile") == 2.0
    assert env.sample("authd_backend_mappings", backend="MountedFile") == 1.0
    assert env.sample("authd_backend_reload_latency_seconds_count", backend="MountedFile") == 1.0
    assert (
        env.sample("authd_backend_last_good_load_timestamp_seconds", backend="MountedFile") or 0
    ) > 0
    ok, text = env.backends.readiness()
    assert ok and text == "MountedFile: ok\nDynamicFile: ok\n"


async def test_broken_yaml_keeps_the_last_good_mapping(env: Env) -> None:
    """Invalid YAML is logged with file and line, counted, and /readyz says degraded."""
    with capture_logs() as logs:
        save(env.config, config_text() + "  mapRoles: [unclosed\n")
        await env.until(lambda: env.backends.by_name["MountedFile"].problem is not None)
    assert await username(env, user_identity()) == "alice"
    ok, text = env.backends.readiness()
    assert not ok
    assert "MountedFile: degraded, serving the last good mapping: Can't read configuration" in text
    # The unclosed `[` is on line 7; the parser only notices at the end of the text (line 8).
    assert f"{env.config}:7: " in text
    failure = next(e for e in logs if e["event"] == "reload failed; keeping the last good mapping")
    assert failure["file"] == str(env.config) and failure["line"] == 7
    assert env.sample("authd_backend_reload_errors_total", backend="MountedFile") == 1.0
    assert env.sample("authd_reloads_total", source="config", result="error") == 1.0
    save(env.config, config_text("alice-fixed"))
    await env.until(lambda: env.backends.by_name["MountedFile"].ready)
    assert await username(env, user_identity()) == "alice-fixed"


@pytest.mark.parametrize(
    ("broken", "line", "key"),
    [
        (config_text(groups="{a: b}"), 6, "server.mapUsers[0].groups"),
        (config_text().replace(ALICE, "arn:aws:iam::nope"), 4, "server.mapUsers[0].userarn"),
    ],
    ids=["wrong-type", "bad-arn"],
)
async def test_invalid_mounted_file_names_line_and_key(
    env: Env, broken: str, line: int, key: str
) -> None:
    """A wrong type or an ARN that does not parse is refused with the file, line and key."""
    with capture_logs() as logs:
        save(env.config, broken)
        await env.until(lambda: env.backends.by_name["MountedFile"].problem is not None)
    failure = next(e for e in logs if e["event"] == "reload failed; keeping the last good mapping")
    assert (failure["line"], failure["key"]) == (line, key)
    assert f"{env.config}:{line}: {key}" in env.backends.readiness()[1]
    assert await username(env, user_identity()) == "alice"


async def test_restart_only_settings_warn_and_mappings_apply(env: Env) -> None:
    """A changed port is a warning for the next restart; the mapping change in it applies."""
    with capture_logs() as logs:
        save(env.config, config_text("alice-v3", extra="  port: 4444\n"))
        await env.until(lambda: any(e["event"] == "configuration reloaded" for e in logs))
    warning = next(e for e in logs if e["event"].startswith("config settings changed"))
    assert warning["keys"] == ["server.port"]
    assert await username(env, user_identity()) == "alice-v3"


async def test_reserved_prefixes_reload_for_every_backend(env: Env) -> None:
    """reservedPrefixConfig from the reloaded config applies to the DynamicFile backend too."""
    assert await username(env, role_identity()) == "dyn-admin"
    extra = (
        "  reservedPrefixConfig:\n"
        "  - backendMode: DynamicFile\n"
        "    usernamePrefixReserveList: [dyn-]\n"
    )
    save(env.config, config_text(extra=extra))
    await env.until(lambda: env.backends.by_name["DynamicFile"].reserved_prefixes == ("dyn-",))
    with pytest.raises(ReservedPrefixError):
        await env.backends.chain.map(role_identity())


async def test_dynamic_file_edit_applies_and_records_upstream_latency(env: Env) -> None:
    """A DynamicFile edit is served; upstream's e2e latency is observed from the second load."""
    save(env.dynamic, dynamic_doc("dyn-v2", updated=str(int(time.time()) - 2)))
    await env.until(lambda: mapped(env, "DynamicFile", role_identity()) == "dyn-v2")
    assert await username(env, role_identity()) == "dyn-v2"
    count = env.sample(
        "aws_iam_authenticator_dynamic_e2e_latency_seconds_count", type="dynamic_file"
    )
    assert count == 1.0
    assert (
        env.sample("aws_iam_authenticator_dynamic_e2e_latency_seconds_sum", type="dynamic_file")
        or 0
    ) >= 2


async def test_broken_dynamic_file_names_line_and_key(env: Env) -> None:
    """Invalid JSON, a wrong type or a bad ARN keep the last table; the log names line and key."""
    cases = [
        (b'{\n  "mapRoles": [\n    {"rolearn": }\n  ]\n}\n', 3, None),
        (dynamic_doc().replace(b'"ops"', b"42"), 8, "mapRoles[0].groups"),
        (dynamic_doc().replace(DYN_ROLE.encode(), b"arn:aws:iam::bad"), 6, "mapRoles[0].rolearn"),
    ]
    for index, (data, line, key) in enumerate(cases, start=1):
        with capture_logs() as logs:
            save(env.dynamic, data)
            await env.until(
                lambda index=index: (
                    env.sample("authd_backend_reload_errors_total", backend="DynamicFile") == index
                )
            )
        failure = next(
            e for e in logs if e["event"] == "reload failed; keeping the last good mapping"
        )
        assert (failure["file"], failure["line"], failure["key"]) == (str(env.dynamic), line, key)
        assert await username(env, role_identity()) == "dyn-admin"
        assert "DynamicFile: degraded, serving the last good mapping" in env.backends.readiness()[1]
    save(env.dynamic, dynamic_doc("dyn-good"))
    await env.until(lambda: env.backends.by_name["DynamicFile"].ready)
    assert await username(env, role_identity()) == "dyn-good"


async def test_deleted_dynamic_file_clears_its_mappings(env: Env) -> None:
    """As upstream, a deleted DynamicFile clears its mappings; it is not ready until it is back."""
    env.dynamic.unlink()
    await env.until(lambda: env.backends.by_name["DynamicFile"].table is None)
    with pytest.raises(NotMappedError):
        await env.backends.chain.map(role_identity())
    assert "DynamicFile: " in env.backends.readiness()[1]
    assert "file was deleted; its mappings are cleared" in env.backends.readiness()[1]
    assert env.sample("authd_backend_mappings", backend="DynamicFile") == 0.0
    save(env.dynamic, dynamic_doc("dyn-back"))
    await env.until(lambda: env.backends.by_name["DynamicFile"].ready)
    assert await username(env, role_identity()) == "dyn-back"


async def test_deleted_config_keeps_serving_its_last_mapping(env: Env) -> None:
    """A deleted --config keeps its mappings (degraded) and recovers when it is back."""
    env.config.unlink()
    await env.until(lambda: env.backends.by_name["MountedFile"].problem is not None)
    assert await username(env, user_identity()) == "alice"
    assert "file was deleted; serving the last good mapping" in env.backends.readiness()[1]
    save(env.config, config_text())
    await env.until(lambda: env.backends.by_name["MountedFile"].ready)


async def test_dynamic_file_missing_at_start_is_picked_up(tmp_path: Path) -> None:
    """A DynamicFile (and its directory) absent at start: not ready, then served when written."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text())
    dynamic = tmp_path / "later" / "mappings.json"
    settings = ServerSettings.resolve(
        flags={"backend_mode": "DynamicFile", "dynamicfile_path": str(dynamic)},
        env={},
        file=FileConfig.from_file(config),
    )
    backends = Backends(settings, Metrics(process_collector=False))
    backends.load_all()
    ready, text = backends.readiness()
    assert not ready and text == f"DynamicFile: {dynamic}: file does not exist yet\n"
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: backends.serve_reloads(timing=FAST, task_status=task_status)
        )
        dynamic.parent.mkdir()
        save(dynamic, dynamic_doc())
        with trio.fail_after(WAIT):
            while not backends.readiness()[0]:
                await backends.reloaders[-1].wait_checked(backends.reloaders[-1].checks + 1)
        result = await backends.chain.map(role_identity())
        assert result.user.username == "dyn-admin"
        nursery.cancel_scope.cancel()


async def test_sighup_trigger_reloads_both_files(env: Env) -> None:
    """reload_all re-reads and re-applies both files even when nothing changed."""
    with trio.fail_after(WAIT):
        await env.backends.reload_all()
    assert env.sample("authd_backend_reloads_total", backend="MountedFile") == 2.0
    assert env.sample("authd_backend_reloads_total", backend="DynamicFile") == 2.0


async def test_reviews_in_flight_see_one_whole_snapshot(tmp_path: Path) -> None:
    """Reviews that span reloads get username, groups and reserved prefixes of one version only.

    Version k maps the role to username `v<k>-<dns>` and group `g<k>`, and reserves the prefix
    `v<k+1>`: a review mixing version k+1's table with version k's prefixes would be denied,
    and one mixing username and groups would show different numbers.
    """
    config = tmp_path / "config.yaml"

    def version(k: int) -> str:
        return (
            "clusterID: reload-test\n"
            "server:\n"
            "  reservedPrefixConfig:\n"
            "  - backendMode: MountedFile\n"
            f"    usernamePrefixReserveList: [v{k + 1}-]\n"
            "  mapRoles:\n"
            f"  - rolearn: arn:aws:iam::{ACCOUNT}:role/Dyn\n"
            f"    username: v{k}-{{{{EC2PrivateDNSName}}}}\n"
            f"    groups: [g{k}, '{{{{SessionName}}}}']\n"
        )

    config.write_text(version(0))
    settings = ServerSettings.resolve(flags={}, env={}, file=FileConfig.from_file(config))
    backends = Backends(settings, Metrics(process_collector=False))
    backends.load_all()

    async def slow_dns(instance: str) -> str:
        for _ in range(3):  # several checkpoints: reloads happen mid-review
            await trio.lowlevel.checkpoint()
        return f"ip-{instance}"

    seen: set[int] = set()
    failures: list[str] = []

    async def review_loop(stop: trio.Event) -> None:
        while not stop.is_set():
            try:
                result = await backends.chain.map(role_identity(), resolve_private_dns=slow_dns)
            except Exception as exc:  # every failure is the test's finding
                failures.append(repr(exc))
                continue
            k = int(result.user.username.split("-", 1)[0][1:])
            if result.user.groups[0] != f"g{k}":
                failures.append(f"mixed: {result.user}")
            seen.add(k)

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: backends.serve_reloads(timing=FAST, task_status=task_status)
        )
        stop = trio.Event()
        for _ in range(8):
            nursery.start_soon(review_loop, stop)
        reloader = backends.reloaders[0]
        for k in range(1, 21):
            checks = reloader.checks
            save(config, version(k))
            with trio.fail_after(WAIT):
                await reloader.wait_checked(checks + 1)
            assert backends.by_name["MountedFile"].ready
        stop.set()
        nursery.cancel_scope.cancel()
    assert failures == []
    assert len(seen) > 10


FAST_PATH_TEXTS = [
    "clusterID: a\nserver:\n  port: 0123\n  mapAccounts: [000011112222, '000011112222']\n",
    "clusterID: 'x'\nserver: {mapUsers: [{userarn: 'arn:aws:iam::1:user/a', groups: [a, b]}]}\n",
    "clusterID: a\nclusterid: b\nserver:\n  kubeconfigPregenerated: yes\n  stsTimeout: 1.5\n",
    "# comment\nclusterID: [a, b]\nserver:\n  mapRoles:\n"
    "  - rolearn: >\n      folded\n    username: ~\n",
    "clusterID: a\nserver:\n  hostname: 2026-01-01\n  master: null\n  unknown: {x: [1, {y: z}]}\n",
    "",
    "---\n",
    "[1, 2]\n",
]


@pytest.mark.parametrize("text", FAST_PATH_TEXTS)
def test_event_builder_matches_the_composer(text: str) -> None:
    """The fast YAML path builds exactly the values, locations and warnings of the composer."""
    fast_warnings: list[str] = []
    fast = tree_from_events(text, src="c.yaml", warnings=fast_warnings)
    slow_warnings: list[str] = []
    node = yaml.compose(text, Loader=LOADER)
    slow = None if node is None else from_node(node, src="c.yaml", path="", warnings=slow_warnings)
    assert _dump(fast) == _dump(slow)
    assert fast_warnings == slow_warnings


def _dump(val: object) -> object:
    """A located tree as comparable data: (value, file, line, key, text, unquoted)."""
    if val is None:
        return None
    value = val.value  # type: ignore[attr-defined]
    if isinstance(value, list):
        inner: object = [_dump(v) for v in value]
    elif isinstance(value, dict):
        inner = {k: _dump(v) for k, v in value.items()}
    else:
        inner = (type(value).__name__, value)
    located: Any = val
    return (
        inner,
        located.src,
        located.line,
        located.key,
        located.text,
        located.unquoted_number,
    )


def test_anchors_and_merge_keys_take_the_composer_path() -> None:
    """Anchors and merge keys are resolved as before (the composer path)."""
    text = (
        "base: &b {username: x}\nclusterID: a\nserver:\n  mapUsers:\n"
        "  - <<: *b\n    userarn: arn:aws:iam::123456789012:user/a\n"
    )
    file = FileConfig.from_text(text, path="c.yaml")
    mapping = MappingConfig.from_file_config(file)
    assert mapping.map_users[0].username == "x"
