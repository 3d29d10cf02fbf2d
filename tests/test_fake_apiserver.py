"""The fake kube-apiserver speaks the real protocol: kubectl drives it, httpx lists and watches it.

kubectl (client-go) is the judge of discovery, OpenAPI, tables, apply's patches, replace and
delete; httpx checks the list/watch semantics the Kubernetes API concepts page documents
(resourceVersion, bookmarks, 410 Expired, chunked streams) and the test controls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.apiserver import ADMIN_TOKEN, FakeApiServer, User, rule

CM_PATH = "/api/v1/namespaces/kube-system/configmaps"
IIM_PATH = "/apis/iamauthenticator.k8s.aws/v1alpha1/iamidentitymappings"
AWS_AUTH = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: aws-auth
  namespace: kube-system
data:
  mapRoles: |
    - rolearn: arn:aws:iam::111122223333:role/nodes
      username: system:node:{{EC2PrivateDNSName}}
      groups: [system:bootstrappers, system:nodes]
"""
AWS_AUTH_EDITED = (
    AWS_AUTH
    + """\
  mapUsers: |
    - userarn: arn:aws:iam::111122223333:user/alice
      username: alice
"""
)
MAPPING = """\
apiVersion: iamauthenticator.k8s.aws/v1alpha1
kind: IAMIdentityMapping
metadata:
  name: kubernetes-admin
spec:
  arn: arn:aws:iam::111122223333:user/KubernetesAdmin
  username: kubernetes-admin
  groups:
  - system:masters
"""
needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed"
)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """A started fake API server with the IAMIdentityMapping CRD installed."""
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def client(api: FakeApiServer) -> Iterator[httpx.Client]:
    """An httpx client that trusts the fake's CA and sends the admin token."""
    with httpx.Client(
        base_url=api.url,
        verify=api.client_context(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    ) as c:
        yield c


class Kubectl:
    """kubectl with a kubeconfig for the fake and a private cache directory."""

    def __init__(self, api: FakeApiServer, tmp: Path, token: str = ADMIN_TOKEN) -> None:
        self.kubeconfig = api.write_kubeconfig(tmp / f"kubeconfig-{token}", token=token)
        self.env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "LANG": "C.UTF-8"}
        self.tmp = tmp

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.tmp}/cache", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        out = self(*args, stdin=stdin)
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture
def kubectl(api: FakeApiServer, tmp_path: Path) -> Kubectl:
    """kubectl pointed at the fake with the admin token (skips when kubectl is missing)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    return Kubectl(api, tmp_path)


def events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The watch events of a streamed response, one JSON line each."""
    for line in response.iter_lines():
        if line:
            yield json.loads(line)


def watch(client: httpx.Client, path: str, **params: str) -> Any:
    """A streaming watch request on `path`."""
    return client.stream("GET", path, params={"watch": "1", **params})


@needs_kubectl
def test_kubectl_applies_edits_and_deletes_aws_auth(api: FakeApiServer, kubectl: Kubectl) -> None:
    """kubectl apply creates aws-auth, applying an edit sends a strategic merge patch, delete
    removes it."""
    assert "configmap/aws-auth created" in kubectl.ok("apply", "-f", "-", stdin=AWS_AUTH)
    got = json.loads(kubectl.ok("get", "-n", "kube-system", "configmap", "aws-auth", "-o", "json"))
    assert "rolearn: arn:aws:iam::111122223333:role/nodes" in got["data"]["mapRoles"]
    meta = got["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and int(meta["resourceVersion"]) > 0
    assert "configured" in kubectl.ok("apply", "-f", "-", stdin=AWS_AUTH_EDITED)
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert [p.content_type for p in patches] == ["application/strategic-merge-patch+json"]
    assert patches[0].query["fieldValidation"] == "Strict"
    edited = api.get_object("ConfigMap", "aws-auth", "kube-system")
    assert edited is not None
    assert "alice" in edited["data"]["mapUsers"]
    assert int(edited["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    table = kubectl.ok("get", "-n", "kube-system", "configmaps")
    assert table.split()[:3] == ["NAME", "DATA", "AGE"]
    assert table.split()[3:5] == ["aws-auth", "2"]
    assert "deleted" in kubectl.ok("delete", "-n", "kube-system", "configmap", "aws-auth")
    gone = kubectl("get", "-n", "kube-system", "configmap", "aws-auth")
    assert gone.returncode == 1
    assert 'Error from server (NotFound): configmaps "aws-auth" not found' in gone.stderr


@needs_kubectl
def test_kubectl_manages_iamidentitymappings(api: FakeApiServer, kubectl: Kubectl) -> None:
    """kubectl applies, lists (with the CRD's columns), edits and deletes an IAMIdentityMapping."""
    out = kubectl.ok("apply", "-f", "-", stdin=MAPPING)
    assert "iamidentitymapping.iamauthenticator.k8s.aws/kubernetes-admin created" in out
    lines = kubectl.ok("get", "iamidentitymappings").splitlines()
    assert lines[0].split() == ["NAME", "ARN", "USERNAME", "AGE"]
    assert lines[1].split()[:3] == [
        "kubernetes-admin",
        "arn:aws:iam::111122223333:user/KubernetesAdmin",
        "kubernetes-admin",
    ]
    kubectl.ok(
        "apply", "-f", "-", stdin=MAPPING.replace("username: kubernetes-admin", "username: root")
    )
    assert [r.content_type for r in api.requests if r.method == "PATCH"] == [
        "application/merge-patch+json"
    ]
    got = json.loads(kubectl.ok("get", "iamidentitymapping", "kubernetes-admin", "-o", "json"))
    assert got["spec"]["username"] == "root"
    assert got["metadata"]["generation"] == 2
    assert "namespace" not in got["metadata"]
    kubectl.ok("delete", "iamidentitymapping", "kubernetes-admin")
    assert api.get_object("IAMIdentityMapping", "kubernetes-admin") is None


@needs_kubectl
def test_kubectl_create_replace_and_conflicts(api: FakeApiServer, kubectl: Kubectl) -> None:
    """create twice is AlreadyExists; replace with the current resourceVersion works and with a
    stale one is Conflict."""
    kubectl.ok("create", "-f", "-", stdin=AWS_AUTH)
    again = kubectl("create", "-f", "-", stdin=AWS_AUTH)
    assert "(AlreadyExists)" in again.stderr
    current = json.loads(kubectl.ok("get", "-n", "kube-system", "cm", "aws-auth", "-o", "json"))
    current["data"]["extra"] = "1"
    kubectl.ok("replace", "-f", "-", stdin=json.dumps(current))
    current["data"]["extra"] = "2"
    stale = kubectl("replace", "-f", "-", stdin=json.dumps(current))
    assert stale.returncode == 1
    assert "(Conflict)" in stale.stderr
    assert "the object has been modified" in stale.stderr
    stored = api.get_object("ConfigMap", "aws-auth", "kube-system")
    assert stored is not None
    assert stored["data"]["extra"] == "1"
    roles = kubectl.tmp / "mapRoles"
    roles.write_text("- rolearn: arn:aws:iam::111122223333:role/x\n  username: x\n")
    kubectl.ok("create", "configmap", "from-file", "-n", "kube-system", f"--from-file={roles}")
    assert api.requests[-1].content_type == "application/vnd.kubernetes.protobuf"
    made = api.get_object("ConfigMap", "from-file", "kube-system")
    assert made is not None
    assert made["data"] == {"mapRoles": roles.read_text()}
    assert set(made["metadata"]) == {
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "resourceVersion",
    }


@needs_kubectl
def test_watch_replays_kubectl_edits_then_streams_live(
    api: FakeApiServer, kubectl: Kubectl, client: httpx.Client
) -> None:
    """A watch from a list's resourceVersion sees kubectl's create, edit and delete, bookmarks,
    live writes, and a clean chunked end at timeoutSeconds."""
    listed = client.get(CM_PATH).json()
    assert listed["kind"] == "ConfigMapList" and listed["items"] == []
    everywhere = client.get("/api/v1/configmaps").json()
    assert everywhere["metadata"]["resourceVersion"] == listed["metadata"]["resourceVersion"]
    kubectl.ok("apply", "-f", "-", stdin=AWS_AUTH)
    kubectl.ok("apply", "-f", "-", stdin=AWS_AUTH_EDITED)
    kubectl.ok("delete", "-n", "kube-system", "cm", "aws-auth")
    params = {
        "resourceVersion": listed["metadata"]["resourceVersion"],
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "5",
    }
    with watch(client, CM_PATH, **params) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"] == "application/json"
        stream = events(response)
        seen = [next(stream) for _ in range(3)]
        assert [e["type"] for e in seen] == ["ADDED", "MODIFIED", "DELETED"]
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in seen]
        assert rvs == sorted(rvs) and len(set(rvs)) == 3
        assert "mapUsers" in seen[1]["object"]["data"]
        api.bookmark()
        mark = next(stream)
        assert mark == {
            "type": "BOOKMARK",
            "object": {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": api.resource_version, "creationTimestamp": None},
            },
        }
        api.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "x", "namespace": "kube-system"},
            }
        )
        api.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "y", "namespace": "default"},
            }
        )
        live = next(stream)
        assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "x")
        api.end_watches()
        assert list(stream) == []


def test_watch_without_resource_version_starts_with_the_current_state(
    api: FakeApiServer, client: httpx.Client
) -> None:
    """resourceVersion unset sends synthetic ADDED events; sendInitialEvents ends them with an
    annotated bookmark; a field selector turns an object leaving the selection into DELETED."""
    for name in ("aws-auth", "other"):
        api.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "kube-system", "labels": {"app": name}},
            }
        )
    with watch(
        client, CM_PATH, fieldSelector="metadata.name=aws-auth", timeoutSeconds="5"
    ) as response:
        stream = events(response)
        first = next(stream)
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "aws-auth")
        api.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "other",
                    "namespace": "kube-system",
                    "labels": {"app": "other"},
                },
                "data": {"a": "b"},
            }
        )
        api.delete_object("ConfigMap", "aws-auth", "kube-system")
        gone = next(stream)
        assert (gone["type"], gone["object"]["metadata"]["name"]) == ("DELETED", "aws-auth")
    with watch(client, CM_PATH, labelSelector="app=other", timeoutSeconds="5") as response:
        stream = events(response)
        assert next(stream)["type"] == "ADDED"
        api.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "other",
                    "namespace": "kube-system",
                    "labels": {"app": "moved"},
                },
            }
        )
        left = next(stream)
        assert left["type"] == "DELETED"
        assert left["object"]["metadata"]["resourceVersion"] == api.resource_version
    params = {
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "5",
    }
    with watch(client, CM_PATH, **params) as response:
        stream = events(response)
        added, mark = next(stream), next(stream)
        assert added["type"] == "ADDED"
        assert mark["type"] == "BOOKMARK"
        assert mark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_compaction_expires_old_resource_versions(api: FakeApiServer, client: httpx.Client) -> None:
    """After compact(), a watch from an older resourceVersion gets one ERROR event with a 410
    Expired Status (or an HTTP 410 when so configured), and continue tokens expire."""
    for i in range(3):
        api.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm{i}", "namespace": "kube-system"},
            }
        )
    page = client.get(CM_PATH, params={"limit": "2"}).json()
    assert [o["metadata"]["name"] for o in page["items"]] == ["cm0", "cm1"]
    assert "kind" not in page["items"][0]
    assert page["metadata"]["remainingItemCount"] == 1
    old = page["metadata"]["resourceVersion"]
    api.put_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm0a", "namespace": "kube-system"},
        }
    )
    rest = client.get(
        CM_PATH, params={"limit": "2", "continue": page["metadata"]["continue"]}
    ).json()
    assert [o["metadata"]["name"] for o in rest["items"]] == ["cm2"]
    assert rest["metadata"]["resourceVersion"] == old
    horizon = api.compact()
    expired = client.get(CM_PATH, params={"limit": "2", "continue": page["metadata"]["continue"]})
    assert expired.status_code == 410
    assert expired.json()["reason"] == "Expired"
    with watch(client, CM_PATH, resourceVersion=old) as response:
        assert response.status_code == 200
        assert list(events(response)) == [
            {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {old} ({horizon})",
                    "reason": "Expired",
                    "code": 410,
                },
            }
        ]
    api.watch.expired_as = "http"
    answer = client.get(CM_PATH, params={"watch": "true", "resourceVersion": old})
    assert answer.status_code == 410
    assert answer.json()["message"] == f"too old resource version: {old} ({horizon})"
    with watch(client, CM_PATH, resourceVersion=str(horizon), timeoutSeconds="1") as response:
        assert response.status_code == 200
        assert list(events(response)) == []


def test_dropped_watches_break_the_stream(api: FakeApiServer, client: httpx.Client) -> None:
    """drop_watches() cuts a watch without the closing chunk; mid-event, after half a JSON line."""
    with watch(client, CM_PATH, resourceVersion=api.resource_version) as response:
        api.drop_watches()
        with pytest.raises(httpx.RemoteProtocolError):
            list(events(response))
    api.put_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "kube-system"},
        }
    )
    received = b""
    with watch(client, CM_PATH, resourceVersion="1000") as response:
        assert api.wait_for_watches(1)
        api.drop_watches(mid_event=True)
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += chunk
    assert received and not received.endswith(b"\n")
    with pytest.raises(json.JSONDecodeError):
        json.loads(received.splitlines()[-1])


@pytest.mark.parametrize("mid_event", [False, True])
def test_a_watch_cut_after_compaction_just_closes(
    api: FakeApiServer, client: httpx.Client, *, mid_event: bool
) -> None:
    """A watch whose position was compacted away, then cut, ends as a cut stream: no 410 answer
    is written into the open chunked body (the client never sees an illegal chunk header)."""
    with watch(client, CM_PATH, resourceVersion=api.resource_version) as response:
        assert api.wait_for_watches(1)
        api.stall_watches()  # the edit below stays unsent: the watch's position predates it
        api.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "x", "namespace": "kube-system"},
            }
        )
        api.compact()
        api.drop_watches(mid_event=mid_event)
        with pytest.raises(httpx.RemoteProtocolError) as cut:
            for _ in response.iter_raw():
                pass
    assert "incomplete chunked read" in str(cut.value)
    assert [r.status for r in api.requests if r.query.get("watch")] == [200]
    api.release_watches()


def test_stalled_watches_send_nothing_until_released(
    api: FakeApiServer, client: httpx.Client
) -> None:
    """While stalled a watch sends nothing (the client times out); after release it resumes."""
    start = api.resource_version
    api.stall_watches()
    api.put_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "kube-system"},
        }
    )
    quick = httpx.Timeout(10, read=0.3)
    params = {"watch": "1", "resourceVersion": start}
    with (
        client.stream("GET", CM_PATH, params=params, timeout=quick) as response,
        pytest.raises(httpx.ReadTimeout),
    ):
        for _ in response.iter_raw():
            pass
    api.release_watches()
    with watch(client, CM_PATH, resourceVersion=start, timeoutSeconds="1") as response:
        assert [e["type"] for e in events(response)] == ["ADDED"]


def test_timed_stall_releases_itself(api: FakeApiServer, client: httpx.Client) -> None:
    """stall_watches(seconds) holds events back for that long, then they flow without a release."""
    start = api.resource_version
    api.put_object(configmap("x"))
    api.stall_watches(0.3)
    with watch(client, CM_PATH, resourceVersion=start, timeoutSeconds="5") as response:
        assert next(events(response))["type"] == "ADDED"
    assert api.watch.stall_until < time.monotonic()


def test_tokens_and_rules(api: FakeApiServer, client: httpx.Client) -> None:
    """No or unknown token is 401; a reader token lists and watches kube-system but gets 403 with
    RBAC's wording for updates, other namespaces and verbs taken away with forbid()."""
    assert httpx.get(f"{api.url}{CM_PATH}", verify=api.client_context()).status_code == 401
    bad = client.get(CM_PATH, headers={"Authorization": "Bearer nope"})
    assert (bad.status_code, bad.json()["reason"]) == (401, "Unauthorized")
    reader = User(
        name="system:serviceaccount:kube-system:authd",
        rules=(rule(["get", "list", "watch"], "configmaps", namespaces=["kube-system"]),),
    )
    api.add_token("reader", reader)
    as_reader = {"Authorization": "Bearer reader"}
    api.put_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "aws-auth", "namespace": "kube-system"},
        }
    )
    assert client.get(CM_PATH, headers=as_reader).status_code == 200
    obj = client.get(f"{CM_PATH}/aws-auth", headers=as_reader).json()
    denied = client.put(f"{CM_PATH}/aws-auth", headers=as_reader, json=obj)
    assert denied.status_code == 403
    assert denied.json()["message"] == (
        'configmaps "aws-auth" is forbidden: User "system:serviceaccount:kube-system:authd" '
        'cannot update resource "configmaps" in API group "" in the namespace "kube-system"'
    )
    other = client.get("/api/v1/namespaces/default/configmaps", headers=as_reader)
    assert other.status_code == 403
    api.forbid("reader", "watch", resource="configmaps")
    assert client.get(CM_PATH, headers=as_reader, params={"watch": "1"}).status_code == 403
    assert [r.status for r in api.requests if r.user == reader.name] == [200, 200, 403, 403, 403]
    api.set_tokens({"only": User(name="only")})
    assert client.get(CM_PATH).status_code == 401
    assert client.get(CM_PATH, headers={"Authorization": "Bearer only"}).status_code == 200


@needs_kubectl
def test_kubectl_reports_forbidden(api: FakeApiServer, tmp_path: Path) -> None:
    """kubectl shows the fake's 403 as `Error from server (Forbidden)`."""
    api.add_token("reader", User(name="reader", rules=(rule(["get", "list"], "configmaps"),)))
    reader = Kubectl(api, tmp_path, token="reader")
    assert reader("get", "-n", "kube-system", "cm").returncode == 0
    out = reader("create", "-f", "-", stdin=AWS_AUTH)
    assert "Error from server (Forbidden)" in out.stderr
    assert 'cannot create resource "configmaps"' in out.stderr
    whoami = json.loads(reader.ok("auth", "whoami", "-o", "json"))
    assert whoami["status"]["userInfo"] == {
        "username": "reader",
        "groups": ["system:authenticated"],
    }


def test_fail_next_injects_errors(api: FakeApiServer, client: httpx.Client) -> None:
    """fail_next(500, 2, verb="list") fails exactly the next two lists, nothing else."""
    api.fail_next(500, 2, verb="list")
    assert client.get(f"{CM_PATH}/missing").status_code == 404
    codes = [client.get(CM_PATH).status_code for _ in range(3)]
    assert codes == [500, 500, 200]


def test_custom_resource_rules(api: FakeApiServer, client: httpx.Client) -> None:
    """The CRD's rules hold: pruning, schema checks, the status subresource, generation,
    resourceVersion preconditions, no-op writes, and delete returning the object."""
    body = {
        "apiVersion": "iamauthenticator.k8s.aws/v1alpha1",
        "kind": "IAMIdentityMapping",
        "metadata": {"name": "m"},
        "spec": {"arn": "arn:aws:iam::1:user/a", "username": "a", "bogus": 1},
        "status": {"userID": "X"},
    }
    strict = client.post(IIM_PATH, json=body, params={"fieldValidation": "Strict"})
    assert (strict.status_code, strict.json()["message"]) == (
        400,
        'strict decoding error: unknown field "spec.bogus"',
    )
    created = client.post(IIM_PATH, json=body)
    assert created.status_code == 201
    obj = created.json()
    assert "bogus" not in obj["spec"] and "status" not in obj
    assert obj["metadata"]["generation"] == 1
    missing = client.post(IIM_PATH, json={**body, "metadata": {"name": "n"}, "spec": {"arn": "x"}})
    assert missing.status_code == 422
    assert missing.json()["details"]["causes"][0]["field"] == "spec.username"
    no_rv = {k: v for k, v in obj.items()}
    no_rv["metadata"] = {"name": "m"}
    assert client.put(f"{IIM_PATH}/m", json=no_rv).status_code == 422
    with_status = {**obj, "status": {"userID": "AIDA"}}
    status_put = client.put(
        f"{IIM_PATH}/m/status", json={**with_status, "spec": {"arn": "changed", "username": "a"}}
    )
    assert status_put.status_code == 200
    after = status_put.json()
    assert after["status"] == {"userID": "AIDA"} and after["spec"]["arn"] == "arn:aws:iam::1:user/a"
    assert after["metadata"]["generation"] == 1
    stale = client.put(f"{IIM_PATH}/m", json={**obj, "spec": {"arn": "y", "username": "a"}})
    assert (stale.status_code, stale.json()["reason"]) == (409, "Conflict")
    same = client.put(f"{IIM_PATH}/m", json=after)
    assert same.json()["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    edited = client.patch(
        f"{IIM_PATH}/m",
        content=json.dumps({"spec": {"username": "b"}, "status": None}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).json()
    assert edited["metadata"]["generation"] == 2 and edited["status"] == {"userID": "AIDA"}
    smp = client.patch(
        f"{IIM_PATH}/m",
        content="{}",
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert smp.status_code == 415
    deleted = client.delete(f"{IIM_PATH}/m")
    assert deleted.json()["kind"] == "IAMIdentityMapping"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    uid = client.post(CM_PATH, json=cm).json()["metadata"]["uid"]
    assert client.delete(f"{CM_PATH}/c").json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": "c", "kind": "configmaps", "uid": uid},
    }


def configmap(name: str, namespace: str = "kube-system", **data: str) -> dict[str, Any]:
    """A ConfigMap manifest."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def test_list_resource_version_semantics(api: FakeApiServer, client: httpx.Client) -> None:
    """resourceVersion "" and "0" read the latest state, Exact reads the past from history,
    a resourceVersion the store has not reached is a 504 Timeout, and Exact is 410 after compact."""
    api.put_object(configmap("a", v="1"))
    first = api.resource_version
    api.put_object(configmap("a", v="2"))
    api.put_object(configmap("b"))
    for rv in ("", "0", first):
        latest = client.get(CM_PATH, params={"resourceVersion": rv}).json()
        assert [o["data"] for o in latest["items"]] == [{"v": "2"}, {}]
        assert latest["metadata"]["resourceVersion"] == api.resource_version
    past = client.get(CM_PATH, params={"resourceVersion": first, "resourceVersionMatch": "Exact"})
    assert [o["data"] for o in past.json()["items"]] == [{"v": "1"}]
    assert past.json()["metadata"]["resourceVersion"] == first
    api.registry.fresh_wait = 0.05
    ahead = client.get(CM_PATH, params={"resourceVersion": str(int(api.resource_version) + 5)})
    assert (ahead.status_code, ahead.json()["reason"]) == (504, "Timeout")
    api.compact()
    gone = client.get(CM_PATH, params={"resourceVersion": first, "resourceVersionMatch": "Exact"})
    assert (gone.status_code, gone.json()["reason"]) == (410, "Expired")


def test_periodic_bookmarks_follow_the_interval() -> None:
    """With bookmark_interval set, an idle watch that allows bookmarks receives them unprompted."""
    with (
        FakeApiServer(bookmark_interval=0.1) as api,
        httpx.Client(
            base_url=api.url,
            verify=api.client_context(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        ) as client,
    ):
        params = {"resourceVersion": api.resource_version, "allowWatchBookmarks": "1"}
        with watch(client, CM_PATH, **params) as response:
            stream = events(response)
            marks = [next(stream), next(stream)]
    assert [m["type"] for m in marks] == ["BOOKMARK", "BOOKMARK"]


def test_patches_deletecollection_and_immutable(api: FakeApiServer, client: httpx.Client) -> None:
    """JSON patch (with test ops), preconditioned delete, deletecollection by label, and the
    `immutable` rule all behave as the real ConfigMap endpoint does."""
    created = client.post(CM_PATH, json=configmap("p", k="v")).json()
    ops = [
        {"op": "test", "path": "/data/k", "value": "v"},
        {"op": "add", "path": "/data/n", "value": "1"},
    ]
    patched = client.patch(
        f"{CM_PATH}/p", json=ops, headers={"Content-Type": "application/json-patch+json"}
    )
    assert patched.json()["data"] == {"k": "v", "n": "1"}
    failed = client.patch(
        f"{CM_PATH}/p",
        json=[*ops[:1], {"op": "test", "path": "/data/k", "value": "x"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert failed.status_code == 422
    stale = client.request(
        "DELETE",
        f"{CM_PATH}/p",
        json={"preconditions": {"resourceVersion": created["metadata"]["resourceVersion"]}},
    )
    assert (stale.status_code, stale.json()["reason"]) == (409, "Conflict")
    frozen = client.post(CM_PATH, json={**configmap("frozen", k="v"), "immutable": True}).json()
    frozen["data"] = {"k": "changed"}
    refused = client.put(f"{CM_PATH}/frozen", json=frozen)
    assert refused.status_code == 422
    assert refused.json()["details"]["causes"][0]["field"] == "data"
    for name in ("l1", "l2"):
        body = configmap(name)
        body["metadata"]["labels"] = {"sweep": "yes"}
        client.post(CM_PATH, json=body)
    swept = client.delete(CM_PATH, params={"labelSelector": "sweep=yes"}).json()
    assert [o["metadata"]["name"] for o in swept["items"]] == ["l1", "l2"]
    left = client.get(CM_PATH).json()["items"]
    assert [o["metadata"]["name"] for o in left] == ["frozen", "p"]
    wrong_ns = client.post(CM_PATH, json=configmap("w", namespace="default"))
    assert wrong_ns.status_code == 400
    missing_ns = client.post(
        "/api/v1/namespaces/nope/configmaps", json=configmap("w", namespace="nope")
    )
    assert (missing_ns.status_code, missing_ns.json()["message"]) == (
        404,
        'namespaces "nope" not found',
    )
