"""`authd token` and awscli's `aws eks get-token` make interchangeable tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.conftest import RunAuthd
from tests.fakes.moto import IamUser, caller_identity, decode_token

AWS = Path(sys.executable).parent / "aws"
CLUSTER = "compat-cluster"


def awscli_token(env: dict[str, str]) -> str:
    """Run `aws eks get-token` and return its token."""
    done = subprocess.run(
        [str(AWS), "eks", "get-token", "--cluster-name", CLUSTER],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["status"]["token"])


def authd_token(run_authd: RunAuthd, env: dict[str, str]) -> str:
    """Run `authd token --token-only` and return its token."""
    done = run_authd(["token", "-i", CLUSTER, "--token-only"], env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def shape(token: str) -> tuple[str, str, list[str], dict[str, str]]:
    """(scheme, host, sorted parameter names, parameters) of a token's URL."""
    parts = urlsplit(decode_token(token))
    query = dict(parse_qsl(parts.query))
    return parts.scheme, parts.netloc, sorted(query), query


def test_same_parameters_and_signed_headers_as_awscli(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """Both tokens have the same parameters, signed headers, host and expiry; STS takes both."""
    env = client_env | iam_user.env()
    ours, theirs = authd_token(run_authd, env), awscli_token(env)
    scheme, host, names, query = shape(ours)
    other_scheme, other_host, other_names, other_query = shape(theirs)
    assert (scheme, host, names) == (other_scheme, other_host, other_names)
    assert query["X-Amz-SignedHeaders"] == other_query["X-Amz-SignedHeaders"] == "host;x-k8s-aws-id"
    assert query["X-Amz-Expires"] == other_query["X-Amz-Expires"] == "60"
    assert query["Action"] == other_query["Action"] == "GetCallerIdentity"
    assert query["Version"] == other_query["Version"]
    assert (
        query["X-Amz-Credential"].split("/")[2:] == other_query["X-Amz-Credential"].split("/")[2:]
    )
    for token in (ours, theirs):
        answer = caller_identity(token, CLUSTER)
        assert (answer.status, answer.arn) == (200, iam_user.arn)


@pytest.mark.parametrize("region", ["eu-west-1", "cn-north-1", "us-gov-west-1"])
def test_same_regional_host_as_awscli(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser, region: str
) -> None:
    """With regional endpoints both name the same STS host and scope, in every partition."""
    env = client_env | iam_user.env() | {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    env["AWS_STS_REGIONAL_ENDPOINTS"] = "regional"
    del env["AWS_ENDPOINT_URL_STS"]
    ours, theirs = shape(authd_token(run_authd, env)), shape(awscli_token(env))
    assert ours[:3] == theirs[:3]
    assert ours[1].startswith(f"sts.{region}.")
    assert ours[3]["X-Amz-Credential"].split("/")[2] == region
