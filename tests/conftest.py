"""Shared fixtures: a real moto_server as AWS, the STS front before it, and client processes.

- `moto_server` (session): the `moto_server` process on 127.0.0.1, port 0.
- `sts_front` (session): tests/fakes/sts_front.StsFront; its `url` is "STS" for code under test
  (it checks presigned signatures, as moto does not).
- `moto_aws` (session): tests/fakes/moto.MotoAws, admin clients to create users and roles.
- `iam_user`, `iam_role` (function): a fresh IAM user with keys / a fresh role.
- `client_env` (function): a minimal environment for a client subprocess: a temporary HOME,
  STS at the front, region us-east-1, instance metadata off, no AWS credentials.
- `run_authd` (function): run the installed `authd` console script as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.fakes.moto import IamRole, IamUser, MotoAws, MotoServer, start_moto_server
from tests.fakes.sts_front import StsFront

BIN = Path(sys.executable).parent
RunAuthd = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """The real moto_server process, stopped at the end of the session."""
    server = start_moto_server(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sts_front(moto_server: MotoServer) -> Iterator[StsFront]:
    """The signature-checking front before moto: use `sts_front.url` as the STS endpoint."""
    front = StsFront(moto_server.url)
    front.start()
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture(scope="session")
def moto_aws(sts_front: StsFront) -> MotoAws:
    """Admin clients that create identities in moto through the front."""
    return MotoAws(sts_front.url)


@pytest.fixture
def iam_user(moto_aws: MotoAws) -> IamUser:
    """A fresh IAM user with an access key the front knows."""
    return moto_aws.create_user()


@pytest.fixture
def iam_role(moto_aws: MotoAws) -> IamRole:
    """A fresh IAM role."""
    return moto_aws.create_role()


@pytest.fixture
def client_env(tmp_path: Path, sts_front: StsFront) -> dict[str, str]:
    """A clean environment for a client process: nothing inherited from the test runner."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AWS_ENDPOINT_URL_STS": sts_front.url,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",  # awscli (botocore) reads only this one
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def run_authd() -> RunAuthd:
    """Run `authd ARGS...` (the installed console script) with exactly the given environment."""

    def run(
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        program: str = "authd",
        stdin: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / program), *args],
            env=dict(env),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
