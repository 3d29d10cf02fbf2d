"""The kube client and informer over real HTTPS against the fake kube-apiserver (tests/fakes/kube).

Real time here, not the autojump clock: the fake runs in threads, and a jumping trio clock
would fire httpx's read timeouts while the fake is still writing. Backoffs are kept short.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from authd.server.kube import Conflict, Forbidden, KubeError, NotFound, Unauthorized
from authd.server.kube.client import KubeClient
from authd.server.kube.connection import connection_from, open_client
from authd.server.kube.informer import Backoff, Informer
from tests.fakes.kube.auth import User, rule
from tests.fakes.kube.server import ADMIN_TOKEN, FakeApiServer

pytestmark = [
    pytest.mark.filterwarnings("ignore:Async generator 'httpx\\.:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Async generator 'httpcore\\.:ResourceWarning"),
]

CM = "/api/v1/namespaces/kube-system/configmaps"
AWS_AUTH = {"fieldSelector": "metadata.name=aws-auth"}
MAPPINGS = "/apis/iamauthenticator.k8s.aws/v1alpha1/iamidentitymappings"
TOKEN = "authd-token"
AUTHD = User(
    name="system:serviceaccount:kube-system:aws-iam-authenticator",
    rules=(rule(["get", "list", "watch"], "configmaps", namespaces=["kube-system"]),),
)
QUICK = Backoff(initial=0.05, cap=0.2, jitter=0.2, reset_after=60.0)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """The fake API server, with an admin token and authd's narrow service account token."""
    with FakeApiServer() as server:
        server.add_token(TOKEN, AUTHD)
        yield server


def aws_auth(roles: str) -> dict[str, Any]:
    """The aws-auth ConfigMap with this mapRoles text."""
    meta = {"name": "aws-auth", "namespace": "kube-system"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"mapRoles": roles}}


def other_cm(name: str) -> dict[str, Any]:
    """A kube-system ConfigMap the aws-auth selector must not pick up."""
    meta = {"name": name, "namespace": "kube-system"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {}}


@asynccontextmanager
async def client_for(
    api: FakeApiServer, tmp_path: Path, token: str = TOKEN
) -> AsyncIterator[KubeClient]:
    """A KubeClient built the production way: kubeconfig file -> connection_from -> open_client."""
    kubeconfig = api.write_kubeconfig(tmp_path / f"kc-{token}.json", token=token)
    async with open_client(connection_from(kubeconfig=str(kubeconfig), master="", env={})) as c:
        yield c


class Follower:
    """An informer on aws-auth with what it reported."""

    def __init__(self, client: KubeClient, **kwargs: Any) -> None:
        self.sets: list[dict[str, Any]] = []
        self.states: list[tuple[bool, str]] = []
        kwargs.setdefault("backoff", QUICK)
        kwargs.setdefault("params", AWS_AUTH)
        self.informer = Informer(client, CM, on_change=self._change, on_state=self._state, **kwargs)

    def _change(self, objects: Mapping[str, Mapping[str, Any]]) -> None:
        self.sets.append({key: dict(obj.get("data") or {}) for key, obj in objects.items()})

    def _state(self, healthy: bool, reason: str) -> None:
        self.states.append((healthy, reason))

    @property
    def current(self) -> dict[str, Any]:
        """The last set handed over."""
        return self.sets[-1] if self.sets else {}


async def wait_until(done: Callable[[], bool]) -> None:
    """Return once `done()` holds; fail after 10 s."""
    with trio.fail_after(10):
        while not done():  # noqa: ASYNC110 - the fake runs in other threads; nothing to wait on
            await trio.sleep(0.02)


def watching(api: FakeApiServer) -> Callable[[], bool]:
    """A non-blocking check that the fake has a watch open (its own wait would block trio)."""
    return lambda: api.wait_for_watches(1, 0)


def roles(follower: Follower) -> str | None:
    """mapRoles of aws-auth in the follower's current set."""
    return follower.current.get("kube-system/aws-auth", {}).get("mapRoles")


async def test_initial_list_then_added_modified_deleted_and_bookmarks(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """The set starts as listed and follows other clients' writes; a bookmark moves the version."""
    api.put_object(aws_auth("v1"))
    api.put_object(other_cm("unrelated"))
    async with client_for(api, tmp_path) as client, trio.open_nursery() as nursery:
        f = Follower(client)
        await nursery.start(f.informer.run)
        assert f.sets == [{"kube-system/aws-auth": {"mapRoles": "v1"}}]
        await wait_until(watching(api))
        watch = next(r for r in api.requests if r.query.get("watch"))
        assert watch.query["allowWatchBookmarks"] == "true"
        assert watch.query["resourceVersion"] == f.informer.resource_version
        api.put_object(aws_auth("v2"))
        await wait_until(lambda: roles(f) == "v2")
        api.put_object(other_cm("unrelated-2"))
        api.delete_object("ConfigMap", "aws-auth", "kube-system")
        await wait_until(lambda: f.current == {})
        changes = len(f.sets)
        api.put_object(other_cm("unrelated-3"))
        api.bookmark()
        await wait_until(lambda: f.informer.bookmarks >= 1)
        assert f.informer.resource_version == api.resource_version
        assert len(f.sets) == changes
        api.put_object(aws_auth("v3"))
        await wait_until(lambda: roles(f) == "v3")
        nursery.cancel_scope.cancel()
    assert [s.get("kube-system/aws-auth") for s in f.sets] == [
        {"mapRoles": "v1"},
        {"mapRoles": "v2"},
        None,
        {"mapRoles": "v3"},
    ]
    assert (f.informer.lists, f.informer.events, f.informer.failures) == (1, 3, 0)
    assert f.states == [(True, f.states[0][1])]


@pytest.mark.parametrize("expired_as", ["event", "http"])
async def test_410_after_compaction_relists_to_the_truth(
    api: FakeApiServer, tmp_path: Path, expired_as: str
) -> None:
    """Changes missed while the history was compacted arrive by a relist, not by events."""
    api.watch.expired_as = expired_as
    api.put_object(aws_auth("before"))
    async with client_for(api, tmp_path) as client, trio.open_nursery() as nursery:
        f = Follower(client)
        await nursery.start(f.informer.run)
        await wait_until(watching(api))
        api.stall_watches()
        api.put_object(aws_auth("missed-1"))
        api.put_object(aws_auth("after"))
        api.compact()
        api.end_watches()
        await wait_until(lambda: f.informer.relists == 1 and api.wait_for_watches(1, 0))
        api.release_watches()
        assert f.current == {"kube-system/aws-auth": {"mapRoles": "after"}}
        api.put_object(aws_auth("live"))
        await wait_until(lambda: roles(f) == "live")
        nursery.cancel_scope.cancel()
    assert "missed-1" not in [s.get("kube-system/aws-auth", {}).get("mapRoles") for s in f.sets]
    assert f.informer.failures == 0


async def test_dropped_stream_mid_event_reconnects_from_last_version(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """A watch cut inside an event line is re-established from the last version; no relist."""
    api.put_object(aws_auth("v1"))
    async with client_for(api, tmp_path) as client, trio.open_nursery() as nursery:
        f = Follower(client)
        await nursery.start(f.informer.run)
        await wait_until(watching(api))
        version = f.informer.resource_version
        api.stall_watches()
        api.put_object(aws_auth("v2"))
        api.drop_watches(mid_event=True)
        api.release_watches()
        await wait_until(lambda: roles(f) == "v2")
        nursery.cancel_scope.cancel()
    watches = [r.query["resourceVersion"] for r in api.requests if r.query.get("watch")]
    assert watches[:2] == [version, version]
    assert (f.informer.lists, f.informer.watch_restarts) == (1, 1)
    assert [h for h, _ in f.states] == [True, False, True]
    assert f.states[1][1].startswith(f"watch failing: watch {CM}: ")


async def test_server_timeout_ends_cleanly_and_reconnects(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """A watch the server ends (its timeoutSeconds) is watched again with no failure reported."""
    async with client_for(api, tmp_path) as client, trio.open_nursery() as nursery:
        f = Follower(client, timeout_seconds=1)
        await nursery.start(f.informer.run)
        await wait_until(lambda: f.informer.watch_restarts >= 2)
        api.put_object(aws_auth("v1"))
        await wait_until(lambda: roles(f) == "v1")
        nursery.cancel_scope.cancel()
    assert f.informer.failures == 0


async def test_stalled_watch_is_dropped_and_reestablished(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """A watch silent past timeoutSeconds + margin fails by read timeout and is watched again."""
    async with client_for(api, tmp_path) as client, trio.open_nursery() as nursery:
        f = Follower(client, timeout_seconds=1, stall_margin=0.5)
        await nursery.start(f.informer.run)
        await wait_until(watching(api))
        api.stall_watches()
        await wait_until(lambda: f.informer.failures >= 1)
        api.release_watches()
        api.put_object(aws_auth("after-stall"))
        await wait_until(lambda: roles(f) == "after-stall")
        nursery.cancel_scope.cancel()
    assert f.states[1] == (False, f"watch failing: watch {CM}: no data for 1.5 s (stalled watch)")
    assert f.informer.lists == 1


async def test_401_and_403_report_then_recover(api: FakeApiServer, tmp_path: Path) -> None:
    """An unknown token and a revoked verb turn the state unhealthy; granting them recovers."""
    api.put_object(aws_auth("v1"))
    async with client_for(api, tmp_path, token="late-token") as client, trio.open_nursery() as n:
        f = Follower(client)
        await n.start(f.informer.run)
        assert f.sets == []
        assert f.states[0][0] is False and f.states[0][1].startswith("401 Unauthorized: ")
        api.add_token("late-token", AUTHD)
        await wait_until(lambda: roles(f) == "v1")
        api.forbid("late-token", "watch", resource="configmaps")
        api.end_watches()
        await wait_until(lambda: f.states[-1][0] is False)
        assert f.states[-1][1].startswith("403 Forbidden: ")
        assert f.states[-1][1].endswith(f"(watch {CM})")
        api.add_token("late-token", AUTHD)
        api.put_object(aws_auth("v2"))
        await wait_until(lambda: roles(f) == "v2")
        n.cancel_scope.cancel()
    assert [h for h, _ in f.states][-2:] == [False, True]
    assert f.sets[0] == {"kube-system/aws-auth": {"mapRoles": "v1"}}


async def test_verbs_on_iamidentitymappings(api: FakeApiServer, tmp_path: Path) -> None:
    """create, get, replace (with the version precondition) and status patch on the CRD."""
    mapping = {
        "apiVersion": "iamauthenticator.k8s.aws/v1alpha1",
        "kind": "IAMIdentityMapping",
        "metadata": {"name": "admin"},
        "spec": {"arn": "arn:aws:iam::111122223333:user/Admin", "username": "admin"},
    }
    async with client_for(api, tmp_path, token=ADMIN_TOKEN) as client:
        created = await client.create(MAPPINGS, mapping)
        assert created["metadata"]["resourceVersion"]
        with pytest.raises(Conflict):
            await client.create(MAPPINGS, mapping)
        patched = await client.patch_status(
            f"{MAPPINGS}/admin",
            {"status": {"canonicalARN": "arn:aws:iam::111122223333:user/admin"}},
        )
        assert patched["status"]["canonicalARN"] == "arn:aws:iam::111122223333:user/admin"
        stale = {**created, "spec": {**created["spec"], "username": "stale"}}
        with pytest.raises(Conflict, match=f"replace {MAPPINGS}/admin: 409 Conflict: "):
            await client.replace(f"{MAPPINGS}/admin", stale)
        current = await client.get(f"{MAPPINGS}/admin")
        current["spec"]["username"] = "root"
        replaced = await client.replace(f"{MAPPINGS}/admin", current)
        assert replaced["spec"]["username"] == "root"
        with pytest.raises(NotFound):
            await client.get(f"{MAPPINGS}/nobody")
        listed = await client.list(MAPPINGS)
        assert [m["metadata"]["name"] for m in listed.items] == ["admin"]
        assert listed.resource_version == api.resource_version
    async with client_for(api, tmp_path, token="nobody") as client:
        with pytest.raises(Unauthorized):
            await client.list(MAPPINGS)
    async with client_for(api, tmp_path) as client:
        with pytest.raises(Forbidden, match="403 Forbidden: "):
            await client.list(MAPPINGS)


async def test_in_cluster_token_rotation(api: FakeApiServer, tmp_path: Path) -> None:
    """In-cluster: the second request carries the token the kubelet rotated into the file."""
    api.add_token("sa-token-1", User(name="old-token"))
    api.add_token("sa-token-2", User(name="new-token"))
    token = tmp_path / "token"
    token.write_text("sa-token-1")
    host, port = api.url.removeprefix("https://").split(":")
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    conn = connection_from(
        kubeconfig="", master="", env=env, token_file=str(token), ca_file=str(api.ca_file)
    )
    async with open_client(conn) as client:
        await client.list(CM)
        (tmp_path / "next").write_text("sa-token-2\n")
        (tmp_path / "next").replace(token)
        await client.list(CM)
    assert [r.user for r in api.requests if r.path == CM] == ["old-token", "new-token"]


def test_exec_plugin_kubeconfig_is_refused(api: FakeApiServer, tmp_path: Path) -> None:
    """A kubeconfig whose user runs `aws eks get-token` is refused before any request is made."""
    path = api.write_kubeconfig(tmp_path / "kc.json")
    doc = json.loads(path.read_text())
    doc["users"][0]["user"] = {
        "exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws"}
    }
    path.write_text(json.dumps(doc))
    with pytest.raises(KubeError, match="user 'fake' gets its credentials from an exec"):
        connection_from(kubeconfig=str(path), master="", env={})
    assert api.requests == []
