"""The Kubernetes backends log `authd validate`'s findings of each new version of aws-auth and of
each new or edited IAMIdentityMapping, live from the fake API server, and never refuse one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from authd.mapping.chain import Backend
from authd.mapping.lint import lint_configmap_data, lint_identity_mapping
from authd.metrics import Metrics
from authd.server.kubebackends import ConfigMapBackend, CrdBackend
from tests.fakes.apiserver import FakeApiServer
from tests.kubehelpers import FAST, identity, open_fake_client, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Async generator 'http:ResourceWarning")

ACCOUNT = "111122223333"
NODES = f"arn:aws:iam::{ACCOUNT}:role/Nodes"
WITH_PATH = f"arn:aws:iam::{ACCOUNT}:role/teams/Deploy"
SOURCE = "configmap/kube-system/aws-auth"
MAP_ROLES = f"""\
- rolearn: {NODES}
  username: nodes
- rolearn: {WITH_PATH}
  username: deploy
  groups:
  - system:masters
"""

Row = tuple[str, int | None, str, str]


def rows(logs: list[dict[str, Any]]) -> list[Row]:
    """(file, line, key, rule) of each `mapping finding` log event, in order."""
    return [
        (e["file"], e["line"], e["key"], e["rule"]) for e in logs if e["event"] == "mapping finding"
    ]


def aws_auth(map_roles: str, **extra: str) -> dict[str, Any]:
    """The aws-auth ConfigMap object with this `mapRoles` (and other data keys)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "aws-auth", "namespace": "kube-system"},
        "data": {"mapRoles": map_roles, **extra},
    }


def mapping(name: str, arn: str, username: str, groups: list[str]) -> dict[str, Any]:
    """An IAMIdentityMapping object without a status (authd writes it)."""
    return {
        "apiVersion": "iamauthenticator.k8s.aws/v1alpha1",
        "kind": "IAMIdentityMapping",
        "metadata": {"name": name},
        "spec": {"arn": arn, "username": username, "groups": groups},
    }


def test_configmap_data_lines_are_counted_inside_each_data_key() -> None:
    """Findings of live aws-auth data carry the rule codes of a manifest, lines counted inside
    the data key's string (sorted by data key, then line), a data key as a whole at line 1; the
    gate silences role_path."""
    data = {"mapRoles": MAP_ROLES, "mapusers": "- userarn: x\n"}
    assert [(f.line, f.key, f.rule) for f in lint_configmap_data(data, src=SOURCE)] == [
        (3, "data.mapRoles[1].rolearn", "role_path"),
        (5, "data.mapRoles[1].groups", "system_masters"),
        (1, "data.mapusers", "unknown_key"),
    ]
    gated = lint_configmap_data(data, src=SOURCE, role_path_match=True)
    assert "role_path" not in [f.rule for f in gated]


def test_identity_mapping_findings_name_the_spec_key_and_no_line() -> None:
    """An IAMIdentityMapping's spec is linted as in a manifest; there is no line (0)."""
    spec = {"arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/Dev/s", "usrname": "dev"}
    found = lint_identity_mapping(spec, src="iamidentitymapping/dev")
    assert [(f.file, f.line, f.key, f.rule) for f in found] == [
        ("iamidentitymapping/dev", 0, "spec.arn", "assumed_role_arn"),
        ("iamidentitymapping/dev", 0, "spec.usrname", "unknown_key"),
    ]


def applied(metrics: Metrics) -> float:
    """How many versions the EKSConfigMap backend has applied."""
    sample = metrics.registry.get_sample_value(
        "authd_reloads_total", {"source": "EKSConfigMap", "result": "ok"}
    )
    return sample or 0.0


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


async def test_configmap_findings_are_logged_once_per_data_and_never_refuse(
    api: FakeApiServer,
) -> None:
    """Each applied aws-auth logs its findings (the error-level role_path one applies anyway); a
    change outside `data` logs nothing again; a data edit logs the new version's findings."""
    api.put_object(aws_auth(MAP_ROLES))
    backend = Backend("EKSConfigMap")
    metrics = Metrics(process_collector=False)
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = ConfigMapBackend(backend=backend, client=client, metrics=metrics, backoff=FAST)
        with capture_logs() as logs:
            await nursery.start(source.run)
        assert rows(logs) == [
            (SOURCE, 3, "data.mapRoles[1].rolearn", "role_path"),
            (SOURCE, 5, "data.mapRoles[1].groups", "system_masters"),
        ]
        event = next(e for e in logs if e.get("rule") == "role_path")
        assert (event["severity"], event["log_level"]) == ("error", "warning")
        assert username(backend, WITH_PATH) == "deploy" and backend.ready

        labelled = aws_auth(MAP_ROLES)
        labelled["metadata"]["labels"] = {"team": "platform"}
        before = applied(metrics)
        with capture_logs() as logs:
            api.put_object(labelled)
            await wait_until(lambda: applied(metrics) > before)
        assert rows(logs) == []

        with capture_logs() as logs:
            api.put_object(aws_auth(MAP_ROLES.replace("Nodes", "Nodes2"), mapAccounts="- '1'\n"))
            await wait_until(lambda: username(backend, NODES + "2") == "nodes")
        assert rows(logs) == [
            (SOURCE, 1, "data.mapAccounts", "map_accounts"),
            (SOURCE, 1, "data.mapAccounts[0]", "invalid_arn"),
            (SOURCE, 3, "data.mapRoles[1].rolearn", "role_path"),
            (SOURCE, 5, "data.mapRoles[1].groups", "system_masters"),
        ]
        nursery.cancel_scope.cancel()


async def test_configmap_backend_with_the_gate_logs_no_role_path(api: FakeApiServer) -> None:
    """With RolePathMatch on, the live backend's findings leave role_path out, as validate does."""
    api.put_object(aws_auth(MAP_ROLES))
    backend = Backend("EKSConfigMap")
    metrics = Metrics(process_collector=False)
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = ConfigMapBackend(
            backend=backend, client=client, metrics=metrics, role_path_match=True, backoff=FAST
        )
        with capture_logs() as logs:
            await nursery.start(source.run)
        assert rows(logs) == [(SOURCE, 5, "data.mapRoles[1].groups", "system_masters")]
        nursery.cancel_scope.cancel()


async def test_crd_findings_are_logged_once_per_spec(api: FakeApiServer) -> None:
    """Each IAMIdentityMapping's findings are logged when it appears; authd's own status write
    does not log them again; editing one spec logs that object's findings alone."""
    api.put_object(mapping("admin", WITH_PATH, "admin", ["system:masters"]))
    api.put_object(mapping("nodes", NODES, "nodes", ["system:nodes"]))
    backend = Backend("CRD")
    metrics = Metrics(process_collector=False)
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = CrdBackend(backend=backend, client=client, metrics=metrics, backoff=FAST)
        with capture_logs() as logs:
            await nursery.start(source.run)
            # The objects map once authd's status writes come back through the watch.
            await wait_until(lambda: username(backend, NODES) == "nodes")
            await wait_until(lambda: username(backend, WITH_PATH) == "admin")
        assert rows(logs) == [
            ("iamidentitymapping/admin", None, "spec.arn", "role_path"),
            ("iamidentitymapping/admin", None, "spec.groups", "system_masters"),
        ]

        with capture_logs() as logs:
            api.put_object(mapping("nodes", NODES, "nodes", ["system:masters"]))
            await wait_until(lambda: backend.table is not None and username(backend, NODES) is None)
            await wait_until(lambda: username(backend, NODES) == "nodes")
        assert rows(logs) == [("iamidentitymapping/nodes", None, "spec.groups", "system_masters")]
        nursery.cancel_scope.cancel()
