"""The CRD backend: the IAMIdentityMapping table, and authd as the controller writing status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio

from authd.mapping.chain import Backend
from authd.mapping.crd import PATH, canonical_arn, parse_mappings
from authd.metrics import Metrics
from authd.server.kubebackends import CrdBackend
from tests.fakes.apiserver import ADMIN_TOKEN, FakeApiServer, User
from tests.kubehelpers import FAST, identity, open_fake_client, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Async generator 'http:ResourceWarning")

ROLE = "arn:aws:iam::111122223333:role/KubernetesAdmin"


def mapping(name: str, arn: str, username: str, status: str | None = None) -> dict[str, Any]:
    """An IAMIdentityMapping object, with `status.canonicalARN` when given."""
    obj: dict[str, Any] = {
        "apiVersion": "iamauthenticator.k8s.aws/v1alpha1",
        "kind": "IAMIdentityMapping",
        "metadata": {"name": name, "resourceVersion": "7"},
        "spec": {"arn": arn, "username": username, "groups": ["system:masters"]},
    }
    if status is not None:
        obj["status"] = {"canonicalARN": status}
    return obj


def test_lookup_is_by_status_canonical_arn_only_when_it_matches_spec() -> None:
    """Only objects whose status holds the lower-cased canonical spec.arn map; the others are
    due a status write (missing or stale), and a malformed one is refused alone."""
    assumed = "arn:aws:sts::111122223333:assumed-role/Dev/alice"
    objects = {
        "admin": mapping("admin", ROLE, "admin", status=ROLE.lower()),
        "dev": mapping("dev", assumed, "dev"),
        "stale": mapping("stale", "arn:aws:iam::111122223333:user/Bob", "bob", status="x"),
        "bad": mapping("bad", "not-an-arn", "bad"),
    }
    version = parse_mappings(objects)
    assert version.table.lookup(identity(ROLE)).username == "admin"  # type: ignore[union-attr]
    assert version.table.lookup(identity("arn:aws:iam::111122223333:role/Dev")) is None
    writes = {w.name: w.canonical_arn for w in version.writes}
    assert writes == {
        "dev": "arn:aws:iam::111122223333:role/dev",
        "stale": "arn:aws:iam::111122223333:user/bob",
    }
    assert version.rejected[0].startswith("iamidentitymappings/bad: ")
    assert not version.table.is_account_allowed("111122223333")
    assert canonical_arn(assumed) == "arn:aws:iam::111122223333:role/dev"


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """The fake API server with the IAMIdentityMapping CRD installed, started."""
    with FakeApiServer() as server:
        yield server


def username(backend: Backend, arn: str) -> str | None:
    """The username `backend`'s current table maps `arn` to."""
    entry = backend.table.lookup(identity(arn)) if backend.table is not None else None
    return entry.username if entry is not None else None


async def test_authd_writes_status_and_then_maps_new_and_edited_objects(
    api: FakeApiServer,
) -> None:
    """kops' inline identityMappings arrive as objects without status: authd writes
    status.canonicalARN through the status subresource and then maps them; an edited ARN gets
    its status rewritten; a deleted object stops mapping."""
    metrics = Metrics(process_collector=False)
    backend = Backend("CRD")
    api.put_object(mapping("kops-admin", ROLE, "kops-admin"))
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = CrdBackend(backend=backend, client=client, metrics=metrics, backoff=FAST)
        await nursery.start(source.run)
        assert backend.ready
        await wait_until(lambda: username(backend, ROLE) == "kops-admin")
        stored = api.get_object("IAMIdentityMapping", "kops-admin")
        assert stored is not None and stored["status"] == {"canonicalARN": ROLE.lower()}
        patches = [r for r in api.requests if r.method == "PATCH"]
        assert [r.path for r in patches] == [f"{PATH}/kops-admin/status"]

        other = "arn:aws:iam::111122223333:role/Other"
        edited = mapping("kops-admin", other, "kops-admin", status=ROLE.lower())
        api.put_object(edited)
        await wait_until(lambda: username(backend, other) == "kops-admin")
        assert username(backend, ROLE) is None
        written = {"result": "ok"}
        await wait_until(
            lambda: metrics.registry.get_sample_value("authd_crd_status_writes_total", written) == 2
        )

        api.delete_object("IAMIdentityMapping", "kops-admin")
        await wait_until(lambda: username(backend, other) is None)
        assert backend.ready
        nursery.cancel_scope.cancel()


async def test_status_write_forbidden_degrades_until_allowed(api: FakeApiServer) -> None:
    """Without RBAC for iamidentitymappings/status the object stays unusable and /readyz says
    why; once granted, the retry writes it and the backend is ready."""
    backend = Backend("CRD")
    api.forbid(ADMIN_TOKEN, "patch", "update", resource="iamidentitymappings/status")
    api.put_object(mapping("admin", ROLE, "admin"))
    async with open_fake_client(api) as client, trio.open_nursery() as nursery:
        source = CrdBackend(
            backend=backend, client=client, metrics=Metrics(process_collector=False), backoff=FAST
        )
        await nursery.start(source.run)
        await wait_until(lambda: backend.problem is not None)
        assert "cannot write status.canonicalARN of admin" in str(backend.problem)
        assert "403" in str(backend.problem)
        assert username(backend, ROLE) is None
        api.set_tokens({ADMIN_TOKEN: User(name="kubernetes-admin", groups=("system:masters",))})
        await wait_until(lambda: username(backend, ROLE) == "admin" and backend.ready)
        nursery.cancel_scope.cancel()
