"""The real `moto_server` process as a local AWS, and helpers to make IAM users and roles in it.

`start_moto_server()` runs `moto_server -H 127.0.0.1 -p 0` and reads back the port it printed.
`MotoAws` talks to it through the STS front (tests/fakes/sts_front.py) with botocore clients, so
the front sees every secret it hands out. `caller_identity()` replays a token the way the
authenticator server does (GET the presigned URL with `x-k8s-aws-id`) and returns what "STS" says.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ACCOUNT_ID = "123456789012"  # moto's default account
ADMIN_KEY = "AKIAMOTOADMIN0000000"
ADMIN_SECRET = "moto-admin-secret"  # moto checks no signature; the front forwards IAM calls as-is
_RUNNING = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class MotoServer:
    """A running moto_server process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """Terminate the process and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_moto_server(log: Path, *, timeout: float = 60.0) -> MotoServer:
    """Start `moto_server` on 127.0.0.1 port 0 and return once it printed its address.

    Its output goes to `log` (a pipe nobody reads would fill up and stall it).
    """
    executable = Path(sys.executable).parent / "moto_server"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(log.parent)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _RUNNING.search(log.read_bytes())
        if found:
            return MotoServer(
                process=process, url=f"http://127.0.0.1:{int(found.group(1))}", log=log
            )
        if process.poll() is not None:
            break
        time.sleep(0.05)  # polling a log file: there is no event to wait on
    process.kill()
    raise RuntimeError(f"moto_server did not start: {log.read_text(errors='replace')}")


@dataclass(frozen=True, slots=True, kw_only=True)
class IamUser:
    """An IAM user with one access key."""

    name: str
    arn: str
    access_key_id: str
    secret_access_key: str = field(repr=False)

    def env(self) -> dict[str, str]:
        """The user's keys as environment variables."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class IamRole:
    """An IAM role and the ARN of the session STS names after AssumeRole."""

    name: str
    arn: str

    def assumed_arn(self, session: str) -> str:
        """`arn:aws:sts::<account>:assumed-role/<name>/<session>`."""
        return f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{self.name}/{session}"


class MotoAws:
    """Admin access to moto (through the front) for setting up identities."""

    def __init__(self, endpoint: str, *, region: str = "us-east-1") -> None:
        import botocore.session

        self.endpoint = endpoint
        session = botocore.session.Session()
        options: dict[str, Any] = {
            "region_name": region,
            "endpoint_url": endpoint,
            "aws_access_key_id": ADMIN_KEY,
            "aws_secret_access_key": ADMIN_SECRET,
        }
        self.iam = session.create_client("iam", **options)
        self.sts = session.create_client("sts", **options)

    def create_user(self, prefix: str = "user") -> IamUser:
        """A new IAM user with an access key; the front learns its secret on the way."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        arn = self.iam.create_user(UserName=name)["User"]["Arn"]
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return IamUser(
            name=name,
            arn=arn,
            access_key_id=key["AccessKeyId"],
            secret_access_key=key["SecretAccessKey"],
        )

    def create_role(self, prefix: str = "role") -> IamRole:
        """A new IAM role anyone in the account may assume (moto enforces no policy)."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        trust = (
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
            f'"Principal":{{"AWS":"arn:aws:iam::{ACCOUNT_ID}:root"}},"Action":"sts:AssumeRole"}}]}}'
        )
        arn = self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        return IamRole(name=name, arn=arn)


@dataclass(frozen=True, slots=True, kw_only=True)
class StsAnswer:
    """What STS said about a replayed token."""

    status: int
    body: str
    arn: str = ""
    user_id: str = ""


def decode_token(token: str) -> str:
    """The presigned URL inside a `k8s-aws-v1.` token."""
    assert token.startswith("k8s-aws-v1."), token[:20]
    payload = token[len("k8s-aws-v1.") :]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


def caller_identity(token: str, cluster_id: str) -> StsAnswer:
    """GET the token's URL with `x-k8s-aws-id: cluster_id`, as the authenticator server does."""
    url = decode_token(token)
    response = httpx.get(url, headers={"x-k8s-aws-id": cluster_id}, timeout=30)
    answer = StsAnswer(status=response.status_code, body=response.text)
    if response.status_code != 200:
        return answer
    root = ET.fromstring(response.text)  # noqa: S314 - answers of a local moto under test
    values = {e.tag.rsplit("}", 1)[-1]: (e.text or "") for e in root.iter()}
    return StsAnswer(
        status=200, body=response.text, arn=values.get("Arn", ""), user_id=values.get("UserId", "")
    )
