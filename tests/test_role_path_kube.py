"""The RolePathMatch gate in the Kubernetes backends: aws-auth and IAMIdentityMapping entries
whose role ARN has a path match that role's sessions only with the gate on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio

from authd.config import ServerSettings
from authd.mapping.chain import Backend
from authd.mapping.configmap import parse_configmap
from authd.mapping.crd import parse_mappings
from authd.metrics import Metrics
from authd.server.backends import Backends
from authd.server.kubebackends import ConfigMapBackend, CrdBackend
from tests.fakes.apiserver import FakeApiServer
from tests.kubehelpers import FAST, identity, open_fake_client, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Async generator 'http:ResourceWarning")

ACCOUNT = "111122223333"
WITH_PATH = f"arn:aws:iam::{ACCOUNT}:role/teams/Deploy"
# The canonical ARN of every session of that role: STS never shows the path.
SESSION_ROLE = f"arn:aws:iam::{ACCOUNT}:role/Deploy"
MAP_ROLES = f"- rolearn: {WITH_PATH}\n  username: deploy\n  groups: [devs]\n"


def test_configmap_role_with_path_matches_sessions_only_with_the_gate() -> None:
    """Off: only the ARN as written maps. On: the path-less ARN maps too, not counted twice."""
    off = parse_configmap({"mapRoles": MAP_ROLES})
    assert off.table.lookup(identity(SESSION_ROLE)) is None
    on = parse_configmap({"mapRoles": MAP_ROLES}, role_path_match=True)
    assert on.table.lookup(identity(SESSION_ROLE)).username == "deploy"  # type: ignore[union-attr]
    assert on.table.lookup(identity(WITH_PATH)).username == "deploy"  # type: ignore[union-attr]
    assert (len(off.table), len(on.table)) == (1, 1)


def test_configmap_later_entry_still_wins_with_the_gate() -> None:
    """An entry for the path-less ARN written after the one with a path wins, as duplicates do."""
    roles = MAP_ROLES + f"- rolearn: {SESSION_ROLE}\n  username: plain\n"
    table = parse_configmap({"mapRoles": roles}, role_path_match=True).table
    assert table.lookup(identity(SESSION_ROLE)).username == "plain"  # type: ignore[union-attr]
    assert len(table) == 2


def mapping(name: str, arn: str, username: str) -> dict[str, Any]:
    """An IAMIdentityMapping object whose status.canonicalARN is already written."""
    return {
        "apiVersion": "iamauthenticator.k8s.aws/v1alpha1",
        "kind": "IAMIdentityMapping",
        "metadata": {"name": name, "resourceVersion": "3"},
        "spec": {"arn": arn, "username": username, "groups": ["devs"]},
        "status": {"canonicalARN": arn.lower()},
    }


def test_crd_role_with_path_matches_sessions_only_with_the_gate() -> None:
    """Off: the path-less ARN is unmapped. On: it maps, and an object naming that ARN itself keeps
    it whatever the names' order."""
    objects = {"a-deploy": mapping("a-deploy", WITH_PATH, "deploy")}
    assert parse_mappings(objects).table.lookup(identity(SESSION_ROLE)) is None
    on = parse_mappings(objects, role_path_match=True).table
    assert on.lookup(identity(SESSION_ROLE)).username == "deploy"  # type: ignore[union-attr]
    assert len(on) == 1
    objects["z-plain"] = mapping("z-plain", SESSION_ROLE, "plain")
    both = parse_mappings(objects, role_path_match=True).table
    assert both.lookup(identity(SESSION_ROLE)).username == "plain"  # type: ignore[union-attr]
    assert both.lookup(identity(WITH_PATH)).username == "deploy"  # type: ignore[union-attr]
    assert len(both) == 2


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """The fake API server, started."""
    with FakeApiServer() as server:
        yield server


def username(backend: Backend, arn: str) -> str | None:
    """The username `backend`'s current table maps `arn` to."""
    if backend.table is None:
        return None
    entry = backend.table.lookup(identity(arn))
    return entry.username if entry is not None else None


async def test_live_configmap_backend_applies_the_gate(api: FakeApiServer) -> None:
    """Through the fake API server, the gated backend maps the role's sessions; the ungated one,
    fed the same object, does not."""
    api.put_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "aws-auth", "namespace": "kube-system"},
            "data": {"mapRoles": MAP_ROLES},
        }
    )
    metrics = Metrics(process_collector=False)
    gated, plain = Backend("EKSConfigMap"), Backend("EKSConfigMap")
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        for backend, gate in ((gated, True), (plain, False)):
            source = ConfigMapBackend(
                backend=backend, client=client, metrics=metrics, role_path_match=gate, backoff=FAST
            )
            await nursery.start(source.run)
        await wait_until(lambda: username(gated, WITH_PATH) == "deploy")
        await wait_until(lambda: username(plain, WITH_PATH) == "deploy")
        assert username(gated, SESSION_ROLE) == "deploy"
        assert username(plain, SESSION_ROLE) is None
        nursery.cancel_scope.cancel()


async def test_live_crd_backend_applies_the_gate(api: FakeApiServer) -> None:
    """Through the fake API server, the gated CRD backend maps the role's sessions."""
    api.put_object(mapping("deploy", WITH_PATH, "deploy"))
    metrics = Metrics(process_collector=False)
    backend = Backend("CRD")
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = CrdBackend(
            backend=backend, client=client, metrics=metrics, role_path_match=True, backoff=FAST
        )
        await nursery.start(source.run)
        await wait_until(lambda: username(backend, SESSION_ROLE) == "deploy")
        nursery.cancel_scope.cancel()


async def test_daemon_backends_pass_the_gate_to_both_kubernetes_backends(
    api: FakeApiServer,
) -> None:
    """`--feature-gates RolePathMatch=true` reaches EKSConfigMap and CRD as the daemon builds
    them: both map the sessions of a role written with a path."""
    api.put_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "aws-auth", "namespace": "kube-system"},
            "data": {"mapRoles": MAP_ROLES},
        }
    )
    api.put_object(mapping("deploy", WITH_PATH, "crd-deploy"))
    settings = ServerSettings.resolve(
        flags={
            "cluster_ids": ["test"],
            "backend_mode": "EKSConfigMap,CRD",
            "feature_gates": "RolePathMatch=true",
        },
        env={},
        file=None,
    )
    backends = Backends(
        settings, Metrics(process_collector=False), open_kube=lambda: open_fake_client(api)
    )
    backends.load_all()
    async with trio.open_nursery() as nursery:
        await nursery.start(backends.serve_reloads)
        configmap, crd = backends.by_name["EKSConfigMap"], backends.by_name["CRD"]
        await wait_until(lambda: username(configmap, SESSION_ROLE) == "deploy")
        await wait_until(lambda: username(crd, SESSION_ROLE) == "crd-deploy")
        nursery.cancel_scope.cancel()
