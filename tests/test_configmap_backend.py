"""The EKSConfigMap backend: the aws-auth table, and the live backend over the fake API server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from authd.errors import ConfigError
from authd.mapping.chain import Backend
from authd.mapping.configmap import parse_configmap
from authd.metrics import Metrics
from authd.server.kubebackends import ConfigMapBackend
from tests.fakes.apiserver import ADMIN_TOKEN, FakeApiServer
from tests.kubehelpers import FAST, identity, open_fake_client, wait_until

# httpx/httpcore leave inner stream generators to the GC when a watch is cut (trio warns).
pytestmark = pytest.mark.filterwarnings("ignore:Async generator 'http:ResourceWarning")

ROLE = "arn:aws:iam::111122223333:role/Nodes"
ADMIN = "arn:aws:iam::111122223333:user/Admin"

MAP_ROLES = f"""\
- rolearn: {ROLE}
  username: system:node:{{{{EC2PrivateDNSName}}}}
  groups:
    - system:bootstrappers
    - system:nodes
- roleARN: not-an-arn
  username: broken
- RoleArn: arn:aws:iam::111122223333:role/Ops
  username: ops
"""
MAP_USERS = f"""\
- userarn: {ADMIN}
  username: admin
  groups: [system:masters]
"""


def test_one_bad_entry_is_rejected_alone_with_its_key_path_and_line() -> None:
    """A role whose ARN does not parse is left out, named `data.mapRoles[1].roleARN` at line 6 of
    that key's string; every other entry, users and accounts apply."""
    version = parse_configmap(
        {"mapRoles": MAP_ROLES, "mapUsers": MAP_USERS, "mapAccounts": "- '444455556666'\n"}
    )
    [error] = version.rejected
    assert (error.key, error.line) == ("data.mapRoles[1].roleARN", 6)
    assert "not-an-arn" in str(error)
    table = version.table
    assert len(table) == 4
    assert table.lookup(identity(ROLE)).groups == ("system:bootstrappers", "system:nodes")  # type: ignore[union-attr]
    assert table.lookup(identity("arn:aws:iam::111122223333:role/OPS")).username == "ops"  # type: ignore[union-attr]
    assert table.lookup(identity(ADMIN.lower())).username == "admin"  # type: ignore[union-attr]
    assert table.is_account_allowed("444455556666")


def test_arns_are_not_canonicalised_as_upstream() -> None:
    """An assumed-role ARN written in aws-auth never matches (a warning says so), as upstream."""
    assumed = "arn:aws:sts::111122223333:assumed-role/Dev/alice"
    version = parse_configmap({"mapRoles": f"- rolearn: {assumed}\n  username: dev\n"})
    assert version.rejected == ()
    assert "never matches" in version.warnings[0]
    assert version.table.lookup(identity("arn:aws:iam::111122223333:role/Dev")) is None


def test_data_keys_are_exact_and_empty_values_are_skipped() -> None:
    """`mapusers` is not `mapUsers`; values upstream treats as empty give no entries."""
    version = parse_configmap({"mapusers": MAP_USERS, "mapRoles": "''", "mapAccounts": "  "})
    assert len(version.table) == 0
    assert version.rejected == ()


def test_yaml_that_does_not_parse_refuses_the_version() -> None:
    """A data key whose YAML is broken raises, naming the key and the line inside it."""
    with pytest.raises(ConfigError) as caught:
        parse_configmap({"mapUsers": MAP_USERS, "mapRoles": "- rolearn: [a\n  username: x\n"})
    assert caught.value.key == "data.mapRoles"
    assert caught.value.line is not None
    with pytest.raises(ConfigError, match="expected a list"):
        parse_configmap({"mapRoles": "rolearn: x\n"})


def aws_auth(map_roles: str = MAP_ROLES, map_users: str = MAP_USERS) -> dict[str, Any]:
    """The aws-auth ConfigMap object."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "aws-auth", "namespace": "kube-system"},
        "data": {"mapRoles": map_roles, "mapUsers": map_users},
    }


@pytest.fixture
def api() -> AsyncIterator[FakeApiServer]:
    """The fake API server, started."""
    with FakeApiServer() as server:
        yield server  # type: ignore[misc]


def username(backend: Backend, arn: str) -> str | None:
    """The username `backend`'s current table maps `arn` to."""
    if backend.table is None:
        return None
    entry = backend.table.lookup(identity(arn))
    return entry.username if entry is not None else None


async def test_live_backend_follows_creation_edits_bad_yaml_and_deletion(
    api: FakeApiServer,
) -> None:
    """Missing at start (not ready), created, edited, broken (last good kept, degraded), fixed,
    then deleted (cleared, not ready): each followed live from the watch."""
    metrics = Metrics(process_collector=False)
    backend = Backend("EKSConfigMap")
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = ConfigMapBackend(backend=backend, client=client, metrics=metrics, backoff=FAST)
        await nursery.start(source.run)
        assert backend.problem == "configmap/kube-system/aws-auth does not exist"
        assert backend.table is None

        api.put_object(aws_auth())
        await wait_until(lambda: username(backend, ADMIN) == "admin")
        assert backend.ready
        rejected = metrics.registry.get_sample_value(
            "authd_backend_rejected_entries", {"backend": "EKSConfigMap"}
        )
        assert rejected == 1

        api.put_object(aws_auth(map_users=MAP_USERS.replace("admin", "root")))
        await wait_until(lambda: username(backend, ADMIN) == "root")

        api.put_object(aws_auth(map_roles="- rolearn: [broken\n"))
        await wait_until(lambda: backend.problem is not None)
        assert "data.mapRoles" in str(backend.problem)
        assert username(backend, ADMIN) == "root"

        api.put_object(aws_auth())
        await wait_until(lambda: backend.ready and username(backend, ADMIN) == "admin")

        api.delete_object("ConfigMap", "aws-auth", "kube-system")
        await wait_until(lambda: backend.table is None)
        assert (
            backend.problem
            == "configmap/kube-system/aws-auth was deleted; its mappings are cleared"
        )
        nursery.cancel_scope.cancel()
    assert (
        metrics.registry.get_sample_value(
            "authd_backend_reload_errors_total", {"backend": "EKSConfigMap"}
        )
        == 1
    )


async def test_forbidden_marks_not_ready_and_keeps_the_last_good_table(
    api: FakeApiServer,
) -> None:
    """A 403 on the watch after a good list: not ready with RBAC's reason, last table serving,
    upstream's watch-failure counter counting; granted again, the backend recovers."""
    metrics = Metrics(process_collector=False)
    backend = Backend("EKSConfigMap")
    api.put_object(aws_auth())
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = ConfigMapBackend(backend=backend, client=client, metrics=metrics, backoff=FAST)
        await nursery.start(source.run)
        assert username(backend, ADMIN) == "admin"
        api.forbid(ADMIN_TOKEN, "list", "watch", resource="configmaps")
        api.drop_watches()
        await wait_until(lambda: backend.problem is not None and "403" in backend.problem)
        assert username(backend, ADMIN) == "admin"
        assert (
            metrics.registry.get_sample_value(
                "aws_iam_authenticator_configmap_watch_failures_total"
            )
            or 0
        ) >= 1
        api.set_tokens({ADMIN_TOKEN: _admin()})
        api.put_object(aws_auth(map_users=MAP_USERS.replace("admin", "back")))
        await wait_until(lambda: backend.ready and username(backend, ADMIN) == "back")
        nursery.cancel_scope.cancel()


async def test_compaction_relists_and_a_dropped_watch_reconnects(api: FakeApiServer) -> None:
    """An edit made while the watch was cut mid-event arrives after the reconnect; after the
    history is compacted the 410 leads to a relist that sees the newest version."""
    metrics = Metrics(process_collector=False)
    backend = Backend("EKSConfigMap")
    api.put_object(aws_auth())
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = ConfigMapBackend(backend=backend, client=client, metrics=metrics, backoff=FAST)
        await nursery.start(source.run)
        await trio.to_thread.run_sync(api.wait_for_watches, 1)
        api.drop_watches(mid_event=True)
        api.put_object(aws_auth(map_users=MAP_USERS.replace("admin", "after-drop")))
        await wait_until(lambda: username(backend, ADMIN) == "after-drop")

        # The watch is held, then cut with the edit unsent, and the history compacted before
        # the informer (on this trio thread) can watch again: its resourceVersion is gone.
        api.stall_watches()
        api.put_object(aws_auth(map_users=MAP_USERS.replace("admin", "after-compact")))
        api.drop_watches()
        await trio.to_thread.run_sync(_wait_closed, api)
        api.compact()
        api.release_watches()
        await wait_until(lambda: username(backend, ADMIN) == "after-compact")
        assert source.informer.relists == 1
        nursery.cancel_scope.cancel()
    assert source.informer.watch_restarts >= 1
    exported = metrics.registry.get_sample_value(
        "authd_kube_watch_restarts_total", {"backend": "EKSConfigMap"}
    )
    assert exported == source.informer.watch_restarts


def _wait_closed(api: FakeApiServer) -> None:
    """Block until the fake has no watch open."""
    deadline = time.monotonic() + 10
    while api.watch.open and time.monotonic() < deadline:
        time.sleep(0.005)


def _admin() -> Any:
    from tests.fakes.apiserver import User

    return User(name="kubernetes-admin", groups=("system:masters",))
