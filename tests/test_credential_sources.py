"""Each credential source botocore supports yields a token STS accepts.

See authd 7 in docs/upstream-compat.md.

SSO is not tested: no local stand-in serves the SSO portal's GetRoleCredentials (docs/client.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.conftest import RunAuthd
from tests.fakes.moto import IamRole, IamUser, MotoAws, caller_identity, decode_token
from tests.fakes.sts_front import StsFront

CLUSTER = "sources-cluster"


def token(run_authd: RunAuthd, env: dict[str, str], *extra: str, stdin: str | None = None) -> str:
    """Run `authd token --token-only` and return the token (the run must succeed)."""
    done = run_authd(["token", "-i", CLUSTER, "--token-only", *extra], env, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def aws_dir(env: dict[str, str]) -> Path:
    """~/.aws of the client's temporary HOME."""
    path = Path(env["HOME"]) / ".aws"
    path.mkdir(exist_ok=True)
    return path


def test_shared_credentials_profile(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """AWS_PROFILE selects a profile of ~/.aws/credentials."""
    (aws_dir(client_env) / "credentials").write_text(
        "[default]\naws_access_key_id = AKIAWRONGWRONGWRONG0\naws_secret_access_key = x\n"
        f"[dev]\naws_access_key_id = {iam_user.access_key_id}\n"
        f"aws_secret_access_key = {iam_user.secret_access_key}\n"
    )
    signed = token(run_authd, client_env | {"AWS_PROFILE": "dev"})
    assert caller_identity(signed, CLUSTER).arn == iam_user.arn


def test_credential_process(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """A config profile's credential_process script supplies the keys."""
    script = Path(client_env["HOME"]) / "creds.sh"
    expiry = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = {
        "Version": 1,
        "AccessKeyId": iam_user.access_key_id,
        "SecretAccessKey": iam_user.secret_access_key,
        "Expiration": expiry,
    }
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(answer)}\nEOF\n")
    script.chmod(0o700)
    (aws_dir(client_env) / "config").write_text(f"[profile proc]\ncredential_process = {script}\n")
    signed = token(run_authd, client_env | {"AWS_PROFILE": "proc"})
    assert caller_identity(signed, CLUSTER).arn == iam_user.arn


def test_failing_credential_process_is_one_line(
    run_authd: RunAuthd, client_env: dict[str, str]
) -> None:
    """A credential_process that fails is reported on one line, exit 1."""
    script = Path(client_env["HOME"]) / "fail.sh"
    script.write_text("#!/bin/sh\necho 'sso session expired' >&2\nexit 3\n")
    script.chmod(0o700)
    (aws_dir(client_env) / "config").write_text(f"[default]\ncredential_process = {script}\n")
    done = run_authd(["token", "-i", CLUSTER], client_env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("could not get token: cannot load AWS credentials: ")
    assert "sso session expired" in done.stderr


def test_web_identity(
    run_authd: RunAuthd, client_env: dict[str, str], iam_role: IamRole, sts_front: StsFront
) -> None:
    """AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE go through AssumeRoleWithWebIdentity."""
    token_file = Path(client_env["HOME"]) / "web-identity-token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2QifQ.c2lnbmF0dXJl")
    env = client_env | {
        "AWS_ROLE_ARN": iam_role.arn,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_SESSION_NAME": "pod-session",
    }
    before = len(sts_front.seen)
    signed = token(run_authd, env)
    assert "AssumeRoleWithWebIdentity" in sts_front.actions()[before:]
    assert caller_identity(signed, CLUSTER).arn == iam_role.assumed_arn("pod-session")


def test_instance_metadata(
    run_authd: RunAuthd, client_env: dict[str, str], sts_front: StsFront
) -> None:
    """With nothing else configured, credentials come from instance metadata (moto's IMDS)."""
    env = client_env | {"AWS_EC2_METADATA_SERVICE_ENDPOINT": sts_front.url + "/"}
    del env["AWS_EC2_METADATA_DISABLED"]
    before = len(sts_front.seen)
    signed = token(run_authd, env)
    paths = [seen.path for seen in sts_front.seen[before:]]
    assert "/latest/api/token" in paths  # IMDSv2
    assert "/latest/meta-data/iam/security-credentials/" in paths
    query = dict(parse_qsl(urlsplit(decode_token(signed)).query))
    # moto's instance role hands out these fixed temporary credentials.
    assert query["X-Amz-Credential"].startswith("test-key/")
    assert query["X-Amz-Security-Token"] == "test-session-token"
    # The front verified the signature with the secret it saw in the IMDS answer.
    assert caller_identity(signed, CLUSTER).status == 200
    assert caller_identity(signed, "other").status == 403


class _ContainerCredentials(BaseHTTPRequestHandler):
    answer: bytes = b""

    def do_GET(self) -> None:
        """Serve the credentials JSON the ECS/EKS agent would."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def container_endpoint(moto_aws: MotoAws, iam_role: IamRole) -> Iterator[str]:
    """A loopback container-credentials endpoint serving AssumeRole credentials of `iam_role`."""
    issued = moto_aws.sts.assume_role(RoleArn=iam_role.arn, RoleSessionName="task-session")
    credentials = issued["Credentials"]

    class Handler(_ContainerCredentials):
        answer = json.dumps(
            {
                "AccessKeyId": credentials["AccessKeyId"],
                "SecretAccessKey": credentials["SecretAccessKey"],
                "Token": credentials["SessionToken"],
                "Expiration": credentials["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/credentials"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_container_credentials(
    run_authd: RunAuthd, client_env: dict[str, str], iam_role: IamRole, container_endpoint: str
) -> None:
    """AWS_CONTAINER_CREDENTIALS_FULL_URI (ECS, EKS Pod Identity) supplies the keys."""
    env = client_env | {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": container_endpoint,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "pod-identity-token",
    }
    signed = token(run_authd, env)
    assert caller_identity(signed, CLUSTER).arn == iam_role.assumed_arn("task-session")


def test_assume_role_profile_with_mfa_prompt(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    iam_role: IamRole,
    sts_front: StsFront,
) -> None:
    """An assume-role profile with mfa_serial prompts on stderr and reads the code from stdin."""
    (aws_dir(client_env) / "credentials").write_text(
        f"[base]\naws_access_key_id = {iam_user.access_key_id}\n"
        f"aws_secret_access_key = {iam_user.secret_access_key}\n"
    )
    (aws_dir(client_env) / "config").write_text(
        f"[profile admin]\nrole_arn = {iam_role.arn}\nsource_profile = base\n"
        "role_session_name = mfa-session\n"
        f"mfa_serial = arn:aws:iam::123456789012:mfa/{iam_user.name}\n"
    )
    before = len(sts_front.seen)
    done = run_authd(
        ["token", "-i", CLUSTER, "--token-only"],
        client_env | {"AWS_PROFILE": "admin"},
        stdin="123456\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "Assume Role MFA token code: "
    assert "AssumeRole" in sts_front.actions()[before:]
    assert caller_identity(done.stdout.strip(), CLUSTER).arn == iam_role.assumed_arn("mfa-session")


def test_environment_keys_win_over_profile(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser, moto_aws: MotoAws
) -> None:
    """Keys in the environment are used even when AWS_PROFILE names a profile, as botocore does."""
    other = moto_aws.create_user("other")
    (aws_dir(client_env) / "credentials").write_text(
        f"[dev]\naws_access_key_id = {other.access_key_id}\n"
        f"aws_secret_access_key = {other.secret_access_key}\n"
    )
    signed = token(run_authd, client_env | iam_user.env() | {"AWS_PROFILE": "dev"})
    assert caller_identity(signed, CLUSTER).arn == iam_user.arn


def test_partial_environment_keys_are_one_line(
    run_authd: RunAuthd, client_env: dict[str, str]
) -> None:
    """An access key without its secret is a clear one-line error."""
    done = run_authd(["token", "-i", CLUSTER], client_env | {"AWS_ACCESS_KEY_ID": "AKIAONLY"})
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("could not get token: environment credentials: ")
