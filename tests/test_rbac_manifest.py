"""config/rbac.yaml: its rules are the least privilege, kubectl accepts it, and they suffice.

The sufficiency test gives the real daemon a token whose permissions are exactly the manifest's
rules (translated for the fake API server, which checks them per request as RBAC would) and
sees both Kubernetes backends ready and the CRD status written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.daemon import Daemon, base_env
from tests.fakes.apiserver import FakeApiServer, User, rule
from tests.fakes.kube.auth import Rule
from tests.fakes.kube.resources import ResourceType

RBAC = Path(__file__).resolve().parents[1] / "config" / "rbac.yaml"
SA = {"kind": "ServiceAccount", "name": "aws-iam-authenticator", "namespace": "kube-system"}
AUTHD_TOKEN = "aws-iam-authenticator-sa-token"
GROUP = "rbac.authorization.k8s.io"
MAPPING = {
    "apiVersion": "iamauthenticator.k8s.aws/v1alpha1",
    "kind": "IAMIdentityMapping",
    "metadata": {"name": "admin"},
    "spec": {"arn": "arn:aws:iam::111122223333:role/Admin", "username": "admin"},
}


def manifest() -> dict[str, dict[str, Any]]:
    """The manifest's objects by kind (each kind appears once)."""
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs)
    return by_kind


def fake_rules(objects: dict[str, dict[str, Any]]) -> tuple[Rule, ...]:
    """The ClusterRole's and the Role's rules as the fake checks them (Role: its namespace)."""
    rules: list[Rule] = []
    for kind in ("ClusterRole", "Role"):
        role = objects[kind]
        namespace = role["metadata"].get("namespace")
        for r in role["rules"]:
            rules.append(
                rule(
                    r["verbs"],
                    r["resources"],
                    namespaces=[namespace] if namespace else None,
                    names=r.get("resourceNames"),
                )
            )
    return tuple(rules)


def test_the_rules_are_the_least_privilege() -> None:
    """Only list/watch/get on IAMIdentityMappings, patch on their status, and list/watch/get on
    kube-system/aws-auth alone; both bindings give them to the one service account."""
    objects = manifest()
    assert set(objects) == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    }
    assert objects["ServiceAccount"]["metadata"] == {
        "name": SA["name"],
        "namespace": SA["namespace"],
    }
    assert objects["ClusterRole"]["rules"] == [
        {
            "apiGroups": ["iamauthenticator.k8s.aws"],
            "resources": ["iamidentitymappings"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["iamauthenticator.k8s.aws"],
            "resources": ["iamidentitymappings/status"],
            "verbs": ["patch"],
        },
    ]
    assert objects["Role"]["metadata"]["namespace"] == "kube-system"
    assert objects["Role"]["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["aws-auth"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    for binding, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        doc = objects[binding]
        assert doc["roleRef"] == {
            "apiGroup": GROUP,
            "kind": role,
            "name": objects[role]["metadata"]["name"],
        }
        assert doc["subjects"] == [SA]
        assert doc["metadata"].get("namespace") == objects[role]["metadata"].get("namespace")


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """The fake API server, also serving the RBAC and ServiceAccount types kubectl must map."""
    with FakeApiServer() as server:
        server.resources += [
            ResourceType(group="", version="v1", kind="ServiceAccount", plural="serviceaccounts",
                         singular="serviceaccount", namespaced=True, short_names=("sa",)),
            *(
                ResourceType(group=GROUP, version="v1", kind=kind, plural=f"{kind.lower()}s",
                             singular=kind.lower(), namespaced=kind.startswith("Role"))
                for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
            ),
        ]  # fmt: skip
        yield server


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_client_dry_run_accepts_it(api: FakeApiServer, tmp_path: Path) -> None:
    """`kubectl apply --dry-run=client -f config/rbac.yaml` maps and validates every object (it
    needs a server for discovery even in client dry-run: the fake is that server)."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    out = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path}/cache",
         "apply", "--dry-run=client", "-f", str(RBAC)],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for line in (
        "serviceaccount/aws-iam-authenticator created (dry run)",
        "clusterrole.rbac.authorization.k8s.io/aws-iam-authenticator created (dry run)",
        "clusterrolebinding.rbac.authorization.k8s.io/aws-iam-authenticator created (dry run)",
        "role.rbac.authorization.k8s.io/aws-iam-authenticator created (dry run)",
        "rolebinding.rbac.authorization.k8s.io/aws-iam-authenticator created (dry run)",
    ):
        assert line in out.stdout
    assert not [r for r in api.requests if r.method != "GET" and r.status < 300]  # nothing written


def eventually(check: Any, *, seconds: float = 15) -> None:
    """Poll `check()` (state in the daemon's process and the fake's threads) until it holds."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_the_rules_are_enough_for_both_backends(api: FakeApiServer, tmp_path: Path) -> None:
    """With exactly the manifest's permissions the daemon's EKSConfigMap and CRD backends are
    ready and status.canonicalARN is written, with no request refused; taking the status patch
    away makes the CRD backend report RBAC's 403 (so the check can fail)."""
    api.add_token(AUTHD_TOKEN, User(name="system:serviceaccount:kube-system:aws-iam-authenticator",
                                    rules=fake_rules(manifest())))  # fmt: skip
    api.put_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "aws-auth", "namespace": "kube-system"},
            "data": {"mapUsers": "- userarn: arn:aws:iam::111122223333:user/a\n  username: a\n"},
        }
    )
    api.put_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "other", "namespace": "kube-system"},
        }
    )
    api.put_object(MAPPING)
    kubeconfig = api.write_kubeconfig(tmp_path / "authd-kubeconfig", token=AUTHD_TOKEN)
    daemon = Daemon(
        [f"--kubeconfig={kubeconfig}", "--cluster-id=rbac", "--backend-mode=EKSConfigMap,CRD"],
        state=tmp_path,
        env=base_env(),
    )
    try:
        daemon.wait_for("listening")
        with daemon.client() as client:

            def ready() -> httpx.Response:
                return client.get("/readyz")

            eventually(lambda: ready().status_code == 200)
            assert (
                ready().text == "EKSConfigMap: ok\nCRD: ok\n"
                or ready().text == "CRD: ok\nEKSConfigMap: ok\n"
            )
            eventually(lambda: (api.get_object("IAMIdentityMapping", "admin") or {}).get("status"))
            status = api.get_object("IAMIdentityMapping", "admin")["status"]  # type: ignore[index]
            assert status == {"canonicalARN": "arn:aws:iam::111122223333:role/admin"}
            mine = [r for r in api.requests if r.user and r.user.endswith("aws-iam-authenticator")]
            assert mine and all(r.status < 400 for r in mine)
            configmap_reads = [r for r in mine if r.path.endswith("/configmaps")]
            assert configmap_reads
            assert all(
                r.query.get("fieldSelector") == "metadata.name=aws-auth" for r in configmap_reads
            )

            api.forbid(AUTHD_TOKEN, "patch", resource="iamidentitymappings/status")
            api.put_object({**MAPPING, "metadata": {"name": "second"}})
            eventually(lambda: "403" in ready().text)
            assert ready().status_code == 503
    finally:
        assert daemon.stop() == 0
