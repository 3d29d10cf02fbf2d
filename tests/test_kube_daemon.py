"""The real daemon follows aws-auth and IAMIdentityMappings in the fake API server, live.

kubectl applies, edits and deletes the objects through the fake over HTTPS; the daemon lists and
watches them with its own kubeconfig; tokens come from `authd token` for identities made in moto
and every review is a real one (STS is moto behind the signature-checking front).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunAuthd
from tests.daemon import Daemon, base_env
from tests.fakes.apiserver import FakeApiServer, User
from tests.fakes.moto import IamRole, IamUser
from tests.fakes.sts_front import StsFront
from tests.test_fake_apiserver import Kubectl

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

CLUSTER = "kube-cluster"
AUTHD_TOKEN = "authd-service-account-token"


def aws_auth(users: str, roles: str = "") -> str:
    """An aws-auth manifest with `mapUsers` (and `mapRoles`) as given, indented as a block."""

    def block(text: str) -> str:
        return "".join(f"    {line}\n" for line in text.splitlines())

    manifest = (
        "apiVersion: v1\nkind: ConfigMap\n"
        "metadata:\n  name: aws-auth\n  namespace: kube-system\n"
        "data:\n"
        f"  mapUsers: |\n{block(users)}"
    )
    if roles:
        manifest += f"  mapRoles: |\n{block(roles)}"
    return manifest


def user_entry(arn: str, username: str) -> str:
    """One `mapUsers` entry."""
    return f"- userarn: {arn}\n  username: {username}\n  groups: [devs]\n"


def identity_mapping(name: str, arn: str, username: str) -> str:
    """An IAMIdentityMapping manifest, as kops renders its inline identityMappings."""
    return (
        "apiVersion: iamauthenticator.k8s.aws/v1alpha1\nkind: IAMIdentityMapping\n"
        f"metadata:\n  name: {name}\n"
        f"spec:\n  arn: {arn}\n  username: {username}\n  groups:\n  - system:masters\n"
    )


def token(run_authd: RunAuthd, env: dict[str, str], *args: str) -> str:
    """A token from `authd token --token-only` for this cluster."""
    out = run_authd(["token", "-i", CLUSTER, "--token-only", *args], env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def review(client: httpx.Client, bearer: str) -> tuple[int, dict[str, object]]:
    """POST a TokenReview; (status, the answer's status section)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
    response = client.post("/authenticate", json={**body, "spec": {"token": bearer}})
    return response.status_code, response.json()["status"]


def username(client: httpx.Client, bearer: str) -> object:
    """The username a review answers with (None when denied)."""
    return review(client, bearer)[1].get("user", {}).get("username")  # type: ignore[union-attr]


def eventually(check: object, *, seconds: float = 15) -> None:
    """Poll `check()` until it is truthy."""
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApiServer]:
    """The fake API server, with a token for authd (everything allowed until forbidden)."""
    with FakeApiServer() as server:
        server.add_token(AUTHD_TOKEN, User(name="system:serviceaccount:kube-system:authd"))
        yield server


@pytest.fixture
def kubectl(api: FakeApiServer, tmp_path: Path) -> Kubectl:
    """kubectl as the cluster admin."""
    return Kubectl(api, tmp_path)


@dataclass
class Setup:
    """The fake API server, kubectl as admin, STS, and a way to get tokens and start authd."""

    api: FakeApiServer
    kubectl: Kubectl
    tmp: Path
    sts: StsFront
    run_authd: RunAuthd
    env: dict[str, str]
    user: IamUser

    def token(self, *args: str) -> str:
        """A token of the IAM user (with `-r ROLE`: of a role it assumes)."""
        return token(self.run_authd, self.env | self.user.env(), *args)

    def start(self, *args: str) -> Daemon:
        """The daemon, with its kubeconfig for the fake."""
        return start(self.api, self.tmp, self.sts, *args)


@pytest.fixture
def setup(
    api: FakeApiServer,
    kubectl: Kubectl,
    tmp_path: Path,
    *,
    sts_front: StsFront,
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
) -> Setup:
    """Everything a test here needs."""
    return Setup(api, kubectl, tmp_path, sts_front, run_authd, client_env, iam_user)


def start(api: FakeApiServer, tmp_path: Path, sts: StsFront, *args: str) -> Daemon:
    """The daemon with its own kubeconfig for the fake (the admin token is not authd's)."""
    kubeconfig = api.write_kubeconfig(tmp_path / "authd-kubeconfig.json", token=AUTHD_TOKEN)
    daemon = Daemon(
        [f"--kubeconfig={kubeconfig}", f"--extra-sts-endpoint={sts.url}", *args],
        state=tmp_path,
        env=base_env(),
    )
    daemon.wait_for("listening")
    return daemon


def test_aws_auth_followed_live(setup: Setup) -> None:
    """Created after start, edited, one bad entry, broken YAML, a cut watch, a 410 after
    compaction, RBAC denial and deletion: each seen in /readyz and in real reviews."""
    api, kubectl, iam_user = setup.api, setup.kubectl, setup.user
    daemon = setup.start(f"--cluster-id={CLUSTER}", "--backend-mode=EKSConfigMap")
    bearer = setup.token()
    try:
        with daemon.client() as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert "EKSConfigMap: configmap/kube-system/aws-auth does not exist" in ready.text
            assert username(client, bearer) is None

            kubectl.ok("apply", "-f", "-", stdin=aws_auth(user_entry(iam_user.arn, "u1")))
            eventually(lambda: username(client, bearer) == "u1")
            assert client.get("/readyz").status_code == 200

            bad = "- userarn: not-an-arn\n  username: nobody\n"
            edited = aws_auth(bad + user_entry(iam_user.arn, "u2"))
            kubectl.ok("apply", "-f", "-", stdin=edited)
            eventually(lambda: username(client, bearer) == "u2")
            [rejected] = daemon.events("aws-auth entry rejected; the other entries apply")
            assert (rejected["key"], rejected["line"]) == ("data.mapUsers[0].userarn", 1)
            assert client.get("/readyz").status_code == 200

            kubectl.ok("apply", "-f", "-", stdin=aws_auth("- userarn: [unclosed\n"))
            eventually(lambda: client.get("/readyz").status_code == 503)
            degraded = client.get("/readyz").text
            assert "EKSConfigMap: degraded, serving the last good mapping" in degraded
            assert "data.mapUsers" in degraded
            assert username(client, bearer) == "u2"

            api.drop_watches(mid_event=True)
            kubectl.ok("apply", "-f", "-", stdin=aws_auth(user_entry(iam_user.arn, "u3")))
            eventually(lambda: username(client, bearer) == "u3")
            assert client.get("/readyz").status_code == 200

            api.stall_watches()
            kubectl.ok("apply", "-f", "-", stdin=aws_auth(user_entry(iam_user.arn, "u4")))
            api.drop_watches()
            eventually(lambda: api.watch.open == 0)
            api.compact()
            api.release_watches()
            eventually(lambda: username(client, bearer) == "u4")

            api.forbid(AUTHD_TOKEN, "list", "watch", resource="configmaps")
            api.drop_watches()
            eventually(lambda: "403 Forbidden" in client.get("/readyz").text)
            assert client.get("/readyz").status_code == 503
            assert username(client, bearer) == "u4"  # the last good table serves

            api.add_token(AUTHD_TOKEN, User(name="system:serviceaccount:kube-system:authd"))
            eventually(lambda: client.get("/readyz").status_code == 200)
            kubectl.ok("delete", "-n", "kube-system", "configmap", "aws-auth")
            eventually(lambda: username(client, bearer) is None)
            gone = client.get("/readyz").text
            assert "configmap/kube-system/aws-auth was deleted; its mappings are cleared" in gone
            metrics = client.get("/metrics").text
    finally:
        assert daemon.stop() == 0
    assert 'authd_kube_relists_total{backend="EKSConfigMap"}' in metrics
    assert 'authd_backend_rejected_entries{backend="EKSConfigMap"} 0.0' in metrics
    assert "aws_iam_authenticator_configmap_watch_failures_total" in metrics
    relists = _sample(metrics, 'authd_kube_relists_total{backend="EKSConfigMap"}')
    assert relists >= 1


def test_kops_crd_only_start_and_status_written(setup: Setup, iam_role: IamRole) -> None:
    """kops' CRD-only arguments (--cluster-id, no --config): authd writes status.canonicalARN of
    an IAMIdentityMapping applied with kubectl, then maps the role; deleting it denies."""
    kubectl = setup.kubectl
    daemon = setup.start(
        f"--cluster-id={CLUSTER}", "--kubeconfig-pregenerated=true", "--backend-mode=CRD"
    )
    bearer = setup.token("-r", iam_role.arn)
    try:
        with daemon.client() as client:
            assert client.get("/readyz").status_code == 200
            manifest = identity_mapping("kops-admin", iam_role.arn, "kops-admin")
            kubectl.ok("apply", "-f", "-", stdin=manifest)
            eventually(lambda: username(client, bearer) == "kops-admin")
            got = json.loads(kubectl.ok("get", "iamidentitymapping", "kops-admin", "-o", "json"))
            assert got["status"]["canonicalARN"] == iam_role.arn.lower()
            assert client.get("/readyz").text == "CRD: ok\n"

            kubectl.ok("delete", "iamidentitymapping", "kops-admin")
            eventually(lambda: username(client, bearer) is None)
    finally:
        assert daemon.stop() == 0


def test_backend_mode_file_switches_to_the_crd_and_reverts(setup: Setup) -> None:
    """Started with MountedFile only, the backend-mode file switches to `CRD MountedFile` (the
    CRD backend starts then) and, once deleted, back to MountedFile."""
    iam_user = setup.user
    mode_file = setup.tmp / "backend-mode.json"
    config = setup.tmp / "config.yaml"
    config.write_text(
        f"clusterID: {CLUSTER}\nserver:\n  dynamicBackendModePath: {mode_file}\n"
        f"  mapUsers:\n  - userarn: {iam_user.arn}\n    username: from-file\n"
    )
    daemon = setup.start(f"--config={config}")
    bearer = setup.token()
    setup.kubectl.ok(
        "apply", "-f", "-", stdin=identity_mapping("crd-user", iam_user.arn, "from-crd")
    )
    try:
        with daemon.client() as client:
            assert username(client, bearer) == "from-file"
            doc = {"backendMode": "CRD MountedFile", "Version": "1", "LastUpdatedDateTime": "1"}
            mode_file.write_text(json.dumps(doc))
            daemon.wait_for("backend mode switched")
            eventually(lambda: username(client, bearer) == "from-crd")
            assert client.get("/readyz").text == "CRD: ok\nMountedFile: ok\n"
            mode_file.unlink()
            daemon.wait_for("backend mode switched", count=2)
            assert username(client, bearer) == "from-file"
            assert client.get("/readyz").text == "MountedFile: ok\n"
    finally:
        assert daemon.stop() == 0


def _sample(text: str, series: str) -> float:
    """The value of one series in a Prometheus exposition."""
    line = next(line for line in text.splitlines() if line.startswith(series + " "))
    return float(line.split()[-1])
