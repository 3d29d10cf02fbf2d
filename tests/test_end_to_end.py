"""The whole path: real clients make tokens, the real daemon verifies them against moto as STS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, RunAuthd
from tests.daemon import Daemon, base_env
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.moto import IamRole, IamUser
from tests.fakes.sts_front import StsFront

CLUSTER = "e2e-cluster"


@pytest.fixture
def identities(iam_user: IamUser, iam_role: IamRole) -> tuple[IamUser, IamRole]:
    """A mapped IAM user and a mapped role, created in moto."""
    return iam_user, iam_role


@pytest.fixture
def daemon(
    tmp_path: Path, sts_front: StsFront, identities: tuple[IamUser, IamRole]
) -> Iterator[Daemon]:
    """The daemon with moto (behind the front) as its only allowed STS."""
    user, role = identities
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""\
clusterID: {CLUSTER}
server:
  mapRoles:
  - rolearn: {role.arn}
    username: "admin:{{{{SessionName}}}}"
    groups: [system:masters]
  mapUsers:
  - userarn: {user.arn}
    username: dev-{{{{AccountID}}}}
    groups: [developers]
"""
    )
    proc = Daemon(
        [f"--config={config}", f"--extra-sts-endpoint={sts_front.url}"],
        state=tmp_path,
        env=base_env(),
    )
    proc.wait_for("listening")
    yield proc
    assert proc.stop() == 0


def authd_token(run_authd: RunAuthd, env: dict[str, str], *args: str) -> str:
    """`authd token --token-only` with `env`; the token it printed."""
    out = run_authd(["token", "-i", CLUSTER, "--token-only", *args], env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def review(daemon: Daemon, token: str) -> tuple[int, dict[str, object]]:
    """POST a v1 TokenReview; (HTTP status, status section of the answer)."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    with daemon.client() as client:
        response = client.post("/authenticate", json=body)
    return response.status_code, response.json()["status"]


def test_user_token_from_authd_is_mapped(
    daemon: Daemon,
    run_authd: RunAuthd,
    client_env: dict[str, str],
    identities: tuple[IamUser, IamRole],
) -> None:
    """An IAM user's `authd token` is verified by STS and mapped with templates rendered."""
    user, _ = identities
    token = authd_token(run_authd, client_env | user.env())
    status, answer = review(daemon, token)
    assert status == 200
    assert answer["authenticated"] is True
    assert answer["user"] == {
        "username": "dev-123456789012",
        "uid": answer["user"]["uid"],  # type: ignore[index]
        "groups": ["developers"],
        "extra": answer["user"]["extra"],  # type: ignore[index]
    }
    assert answer["user"]["extra"]["arn"] == [user.arn]  # type: ignore[index]
    [line] = daemon.wait_for("review")
    assert line["decision"] == "allow"
    assert line["arn"] == user.arn
    assert line["username"] == "dev-123456789012"
    assert token[11:] not in "".join(daemon.lines)


def test_assumed_role_token_maps_the_role_with_session_name(
    daemon: Daemon,
    run_authd: RunAuthd,
    client_env: dict[str, str],
    identities: tuple[IamUser, IamRole],
) -> None:
    """`authd token -r ROLE -s SESSION` maps through the role entry; SessionName is rendered."""
    user, role = identities
    token = authd_token(run_authd, client_env | user.env(), "-r", role.arn, "-s", "jane@corp")
    status, answer = review(daemon, token)
    assert (status, answer["authenticated"]) == (200, True)
    assert answer["user"]["username"] == "admin:jane-corp"  # type: ignore[index]
    assert answer["user"]["groups"] == ["system:masters"]  # type: ignore[index]
    assert answer["user"]["extra"]["arn"] == [role.assumed_arn("jane@corp")]  # type: ignore[index]


def test_awscli_token_is_accepted(
    daemon: Daemon, client_env: dict[str, str], identities: tuple[IamUser, IamRole]
) -> None:
    """A token from `aws eks get-token` (awscli) is accepted like one from authd."""
    user, _ = identities
    out = subprocess.run(
        [str(BIN / "aws"), "eks", "get-token", "--cluster-name", CLUSTER, "--output", "json"],
        env=client_env | user.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    token = json.loads(out.stdout)["status"]["token"]
    status, answer = review(daemon, token)
    assert (status, answer["authenticated"]) == (200, True)
    assert answer["user"]["username"] == "dev-123456789012"  # type: ignore[index]


def test_token_for_another_cluster_is_refused_by_sts(
    daemon: Daemon,
    run_authd: RunAuthd,
    client_env: dict[str, str],
    identities: tuple[IamUser, IamRole],
) -> None:
    """A token signed for another cluster ID fails STS's signature check: a cacheable denial."""
    user, _ = identities
    out = run_authd(["token", "-i", "other-cluster", "--token-only"], client_env | user.env())
    seen = len(daemon.events("review"))
    status, answer = review(daemon, out.stdout.strip())
    assert status == 200
    assert answer == {"authenticated": False, "user": {}}  # no status.error: cacheable
    line = daemon.wait_for("review", count=seen + 1)[seen]
    assert line["reason"] == "sts_rejected"
    assert "SignatureDoesNotMatch" in str(line["error"])


def test_unmapped_identity_is_refused_with_reason(
    daemon: Daemon, run_authd: RunAuthd, client_env: dict[str, str], moto_aws: object
) -> None:
    """A verified identity with no mapping is refused with not_mapped, and the log names it."""
    stranger = moto_aws.create_user("stranger")  # type: ignore[attr-defined]
    status, answer = review(daemon, authd_token(run_authd, client_env | stranger.env()))
    assert (status, answer) == (200, {"authenticated": False, "user": {}})
    [line] = daemon.wait_for("review")
    assert (line["decision"], line["reason"], line["arn"]) == ("deny", "not_mapped", stranger.arn)


def test_verify_command_prints_identity_and_mapping(
    tmp_path: Path,
    sts_front: StsFront,
    run_authd: RunAuthd,
    client_env: dict[str, str],
    identities: tuple[IamUser, IamRole],
) -> None:
    """`authd verify -t TOKEN -o json --config` shows the identity and the mapping decision."""
    user, _ = identities
    config = tmp_path / "verify.yaml"
    config.write_text(
        f"clusterID: {CLUSTER}\nserver:\n  mapUsers:\n"
        f"  - userarn: {user.arn}\n    username: verified\n"
    )
    token = authd_token(run_authd, client_env | user.env())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "authd",
            "verify",
            "-t",
            token,
            "-o",
            "json",
            f"--config={config}",
            f"--extra-sts-endpoint={sts_front.url}",
        ],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ARN"] == user.arn
    assert report["AccessKeyID"] == user.access_key_id
    assert report["Mapping"] == {
        "Allowed": True,
        "Backend": "MountedFile",
        "Username": "verified",
        "Groups": [],
    }


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_logs_in_through_the_webhook(
    tmp_path: Path, client_env: dict[str, str], identities: tuple[IamUser, IamRole], daemon: Daemon
) -> None:
    """kubectl runs `aws-iam-authenticator token` from its kubeconfig; the API server's webhook
    call to authd turns the token into the user `kubectl auth whoami` shows."""
    user, role = identities
    api = FakeApiServer(daemon.kubeconfig)
    api.start()
    try:
        kubeconfig = tmp_path / "user.kubeconfig"
        kubeconfig.write_text(
            f"""\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "{api.url}", certificate-authority: "{api.ca_file}"}}
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: {BIN / "aws-iam-authenticator"}
      args: ["token", "-i", "{CLUSTER}", "-r", "{role.arn}", "-s", "kubectl"]
      interactiveMode: Never
contexts:
- name: x
  context: {{cluster: c, user: u}}
current-context: x
"""
        )
        out = subprocess.run(
            ["kubectl", f"--kubeconfig={kubeconfig}", "auth", "whoami", "-o", "json"],
            env=client_env | user.env(),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        api.stop()
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)["status"]["userInfo"]
    assert info["username"] == "admin:kubectl"
    assert info["groups"] == ["system:masters"]
    assert info["extra"]["arn"] == [role.assumed_arn("kubectl")]
