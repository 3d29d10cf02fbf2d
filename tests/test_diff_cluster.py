"""`authd diff` with the live cluster as OLD or NEW: objects applied with kubectl to the fake API
server, read through `--kubeconfig`, compared with files as the backends apply them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authd.cli import main
from tests.fakes.apiserver import FakeApiServer
from tests.test_fake_apiserver import Kubectl

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role"
USER = f"arn:aws:iam::{ACCOUNT}:user"

AWS_AUTH = f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: aws-auth
  namespace: kube-system
data:
  mapRoles: |
    - rolearn: {ROLE}/Admin
      username: admin
      groups: [system:masters]
    - rolearn: {ROLE}/Dev
      username: dev
  mapUsers: |
    - userarn: {USER}/Alice
      username: alice
"""
# The same mappings as the config file a cluster moves away from.
CONFIG = f"""\
clusterID: test
server:
  mapUsers:
  - userarn: {USER}/alice
    username: alice
  mapRoles:
  - roleARN: {ROLE}/dev
    username: dev
  - rolearn: {ROLE}/Admin
    username: admin
    groups: [system:masters]
"""


def identity_mapping(name: str, arn: str, username: str, groups: str = "[devs]") -> str:
    """An IAMIdentityMapping manifest."""
    return (
        "apiVersion: iamauthenticator.k8s.aws/v1alpha1\nkind: IAMIdentityMapping\n"
        f"metadata:\n  name: {name}\nspec:\n  arn: {arn}\n  username: {username}\n"
        f"  groups: {groups}\n"
    )


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """The fake API server."""
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def kubectl(api: FakeApiServer, tmp_path: Path) -> Kubectl:
    """kubectl as the cluster admin, with the kubeconfig `authd diff` uses too."""
    return Kubectl(api, tmp_path)


def diff(
    capsys: pytest.CaptureFixture[str], kubectl: Kubectl, *args: str, json_out: bool = True
) -> tuple[int, Any, str]:
    """Run `authd diff ARGS --kubeconfig K` in-process: exit code, parsed stdout, stderr."""
    flags = ["--kubeconfig", str(kubectl.kubeconfig), *(["-o", "json"] if json_out else [])]
    code = main(["diff", *args, *flags], {})
    out, err = capsys.readouterr()
    return code, (json.loads(out) if json_out and out else out), err


def test_live_aws_auth_against_files(
    kubectl: Kubectl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The applied aws-auth equals a config file with the same mappings; against an edited
    manifest the changes and the masters moves are those of the live object."""
    kubectl.ok("apply", "-f", "-", stdin=AWS_AUTH)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    code, document, _ = diff(capsys, kubectl, str(config), "cluster:aws-auth")
    assert (code, document["changes"]) == (0, [])

    edited = tmp_path / "aws-auth.yaml"
    edited.write_text(AWS_AUTH.replace("groups: [system:masters]", "groups: [admins]"))
    code, document, _ = diff(capsys, kubectl, "cluster:aws-auth", str(edited))
    assert code == 1
    assert [(c["key"], c["change"]) for c in document["changes"]] == [(f"{ROLE}/admin", "changed")]
    assert document["losesMasters"] == [f"{ROLE}/admin"]

    kubectl.ok("delete", "configmap", "-n", "kube-system", "aws-auth")
    code, document, err = diff(capsys, kubectl, "cluster:aws-auth", str(config))
    assert code == 1
    assert {c["change"] for c in document["changes"]} == {"added"}
    assert "configmap/kube-system/aws-auth does not exist" in err


def test_live_identity_mappings_against_manifests(
    kubectl: Kubectl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Applied IAMIdentityMappings (no status written: nothing runs the controller here) compare
    equal to the same manifests in a file, and a removed object shows as removed."""
    admin = identity_mapping("admin", f"{ROLE}/Admin", "admin", "[system:masters]")
    dev = identity_mapping("dev", f"{ROLE}/Dev", "dev")
    kubectl.ok("apply", "-f", "-", stdin=f"{admin}---\n{dev}")
    manifests = tmp_path / "mappings.yaml"
    manifests.write_text(f"{dev}---\n{admin}")
    code, document, _ = diff(capsys, kubectl, "cluster:iamidentitymappings", str(manifests))
    assert (code, document["changes"]) == (0, [])

    manifests.write_text(dev)
    code, out, _ = diff(
        capsys, kubectl, "cluster:iamidentitymappings", str(manifests), json_out=False
    )
    assert code == 1
    assert out.splitlines() == [
        f"- {ROLE}/admin (role): username='admin' groups=[system:masters]",
        f"loses system:masters: {ROLE}/admin",
    ]


def test_cluster_trouble_is_exit_2_with_one_line(
    api: FakeApiServer, kubectl: Kubectl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown `cluster:` name, a kubeconfig that does not exist and a refused token each exit
    2 with one line naming the source, no traceback."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    code, out, err = diff(capsys, kubectl, "cluster:configmaps", str(config), json_out=False)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "cluster:configmaps" in err and "cluster:aws-auth" in err

    code = main(["diff", "cluster:aws-auth", str(config), "--kubeconfig", "/nonexistent"], {})
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("authd diff: cluster:aws-auth: ")

    stranger = api.write_kubeconfig(tmp_path / "stranger", token="not-a-known-token")
    code = main(["diff", "cluster:aws-auth", str(config), "--kubeconfig", str(stranger)], {})
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "401" in err
