"""`authd token` as a real process against moto's STS (through the signature-checking front)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from authd.config import FileConfig, ServerSettings
from tests.conftest import RunAuthd
from tests.fakes.moto import IamRole, IamUser, MotoAws, caller_identity, decode_token
from tests.fakes.sts_front import StsFront

CLUSTER = "test-cluster"


def exec_credential(stdout: str) -> dict[str, object]:
    """Parse the one line `authd token` prints."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    document = json.loads(lines[0])
    assert isinstance(document, dict)
    return document


def token_of(stdout: str) -> str:
    """The token inside an ExecCredential line."""
    status = exec_credential(stdout)["status"]
    assert isinstance(status, dict)
    return str(status["token"])


def test_user_token_names_the_user(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """A token from static env keys is accepted by STS for its cluster and names the IAM user."""
    done = run_authd(["token", "-i", CLUSTER], client_env | iam_user.env())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    answer = caller_identity(token_of(done.stdout), CLUSTER)
    assert answer.status == 200, answer.body
    assert answer.arn == iam_user.arn


def test_wrong_cluster_id_is_refused_by_sts(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """Replaying a token with another cluster ID fails the signature: 403 SignatureDoesNotMatch."""
    done = run_authd(["token", "-i", CLUSTER, "--token-only"], client_env | iam_user.env())
    assert done.returncode == 0, done.stderr
    answer = caller_identity(done.stdout.strip(), "another-cluster")
    assert answer.status == 403
    assert "SignatureDoesNotMatch" in answer.body


def test_role_token_names_the_assumed_role(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    iam_role: IamRole,
    sts_front: StsFront,
) -> None:
    """With -r the token is signed by AssumeRole credentials; STS names the assumed role."""
    args = ["token", "-i", CLUSTER, "-r", iam_role.arn, "-s", "alice-session", "-e", "ext-1"]
    before = len(sts_front.seen)
    done = run_authd(args, client_env | iam_user.env())
    assert done.returncode == 0, done.stderr
    assert "AssumeRole" in sts_front.actions()[before:]
    answer = caller_identity(token_of(done.stdout), CLUSTER)
    assert answer.status == 200, answer.body
    assert answer.arn == iam_role.assumed_arn("alice-session")
    assert answer.user_id.endswith(":alice-session")


def test_role_default_session_name_is_the_go_sdk_one(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser, iam_role: IamRole
) -> None:
    """Without a session name the assumed role's session is `aws-go-sdk-<nanoseconds>`."""
    done = run_authd(["token", "-i", CLUSTER, "-r", iam_role.arn], client_env | iam_user.env())
    assert done.returncode == 0, done.stderr
    answer = caller_identity(token_of(done.stdout), CLUSTER)
    assert re.fullmatch(rf"{re.escape(iam_role.assumed_arn(''))}aws-go-sdk-\d{{16,}}", answer.arn)


def test_forward_session_name_reuses_the_callers_session(
    run_authd: RunAuthd, client_env: dict[str, str], iam_role: IamRole, moto_aws: MotoAws
) -> None:
    """--forward-session-name takes the session part of the caller's UserId.

    See B7 in docs/upstream-compat.md.
    """
    # Start as the assumed-role session "carol": STS gives its UserId as AROA...:carol.
    assumed = moto_aws.sts.assume_role(RoleArn=iam_role.arn, RoleSessionName="carol")
    issued = assumed["Credentials"]
    env = client_env | {
        "AWS_ACCESS_KEY_ID": issued["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": issued["SecretAccessKey"],
        "AWS_SESSION_TOKEN": issued["SessionToken"],
    }
    done = run_authd(["token", "-i", CLUSTER, "-r", iam_role.arn, "--forward-session-name"], env)
    assert done.returncode == 0, done.stderr
    token = token_of(done.stdout)
    answer = caller_identity(token, CLUSTER)
    assert answer.arn == iam_role.assumed_arn("carol")
    # Signed with the new AssumeRole credentials, not the ones passed in.
    query = dict(parse_qsl(urlsplit(decode_token(token)).query))
    assert not query["X-Amz-Credential"].startswith(issued["AccessKeyId"])
    assert "X-Amz-Security-Token" in query


def test_exec_credential_shape(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """Output is compact JSON with upstream's key order and a 14-minute whole-second expiry."""
    started = datetime.now(UTC).replace(microsecond=0)
    done = run_authd(["token", "-i", CLUSTER], client_env | iam_user.env())
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    document = exec_credential(line)
    assert list(document) == ["kind", "apiVersion", "spec", "status"]
    assert document["kind"] == "ExecCredential"
    assert document["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    assert document["spec"] == {"interactive": False}
    status = document["status"]
    assert isinstance(status, dict)
    assert list(status) == ["expirationTimestamp", "token"]
    assert line == json.dumps(document, separators=(",", ":"))
    stamp = str(status["expirationTimestamp"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    expiry = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    query = dict(parse_qsl(urlsplit(decode_token(str(status["token"]))).query))
    signed = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert expiry - signed == timedelta(minutes=14)
    assert started <= signed <= datetime.now(UTC)


def test_presigned_url_matches_upstream_layout(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """The URL's parameters come in upstream's order with host;x-k8s-aws-id signed, expires 60."""
    env = client_env | iam_user.env() | {"AWS_REGION": "us-west-2"}
    del env["AWS_ENDPOINT_URL_STS"]
    done = run_authd(["token", "-i", CLUSTER, "--token-only"], env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("k8s-aws-v1.")
    assert "=" not in token
    assert re.fullmatch(r"k8s-aws-v1\.[A-Za-z0-9_-]+", token)
    url = decode_token(token)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "sts.us-west-2.amazonaws.com", "/")
    names = [piece.split("=", 1)[0] for piece in parts.query.split("&")]
    assert names == [
        "Action",
        "Version",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ]
    query = dict(parse_qsl(parts.query))
    assert query["Action"] == "GetCallerIdentity"
    assert query["Version"] == "2011-06-15"
    assert query["X-Amz-Expires"] == "60"
    assert "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id" in parts.query
    assert re.fullmatch(
        rf"{iam_user.access_key_id}/\d{{8}}/us-west-2/sts/aws4_request", query["X-Amz-Credential"]
    )


@pytest.mark.parametrize(
    ("exec_info", "expected"),
    [
        ("", "client.authentication.k8s.io/v1beta1"),
        ('{"apiVersion":"client.authentication.k8s.io/v1"}', "client.authentication.k8s.io/v1"),
        (
            '{"apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":false}}',
            "client.authentication.k8s.io/v1beta1",
        ),
        ('{"kind":"ExecCredential"}', "client.authentication.k8s.io/v1beta1"),
    ],
)
def test_api_version_follows_exec_info(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    exec_info: str,
    expected: str,
) -> None:
    """apiVersion echoes KUBERNETES_EXEC_INFO's v1 or v1beta1, defaulting to v1beta1."""
    env = client_env | iam_user.env() | {"KUBERNETES_EXEC_INFO": exec_info}
    done = run_authd(["token", "-i", CLUSTER], env)
    assert done.returncode == 0, done.stderr
    assert exec_credential(done.stdout)["apiVersion"] == expected
    assert done.stderr == ""


def test_v1alpha1_warns_on_stderr(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """v1alpha1 is still answered, with a deprecation warning on stderr."""
    info = '{"apiVersion":"client.authentication.k8s.io/v1alpha1"}'
    done = run_authd(
        ["token", "-i", CLUSTER], client_env | iam_user.env() | {"KUBERNETES_EXEC_INFO": info}
    )
    assert done.returncode == 0, done.stderr
    assert exec_credential(done.stdout)["apiVersion"] == "client.authentication.k8s.io/v1alpha1"
    assert "deprecated" in done.stderr


@pytest.mark.parametrize(
    ("exec_info", "message"),
    [
        ("{not json", "could not get token: KUBERNETES_EXEC_INFO is not valid JSON"),
        ("[1, 2]", "could not get token: KUBERNETES_EXEC_INFO is not a JSON object"),
        (
            '{"apiVersion":"client.authentication.k8s.io/v2"}',
            "could not get token: KUBERNETES_EXEC_INFO names unsupported apiVersion "
            '"client.authentication.k8s.io/v2"',
        ),
    ],
)
def test_bad_exec_info_is_one_line_error(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    exec_info: str,
    message: str,
) -> None:
    """Malformed KUBERNETES_EXEC_INFO or an unknown apiVersion: one stderr line, exit 1."""
    env = client_env | iam_user.env() | {"KUBERNETES_EXEC_INFO": exec_info}
    done = run_authd(["token", "-i", CLUSTER], env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(message)


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["token"], {}, "Error: cluster ID not specified\n"),
        (
            ["token", "-i", CLUSTER, "-s", "me", "--forward-session-name"],
            {},
            "Error: cannot specify both --forward-session-name and --session-name parameter\n",
        ),
        (
            ["token", "-i", CLUSTER, "-r", "arn:aws:iam::123:role/x"],
            {},
            'could not get token: invalid role ARN "arn:aws:iam::123:role/x": expected '
            "arn:<partition>:iam::<12-digit account>:role/<name>\n",
        ),
        (
            ["token", "-i", CLUSTER],
            {"DEFAULT_ROLE": "not-an-arn"},
            'could not get token: invalid role ARN "not-an-arn": expected '
            "arn:<partition>:iam::<12-digit account>:role/<name>\n",
        ),
        (["token", "-i", "a", "-i", "b"], {}, "Error: token takes one --cluster-id, got 2\n"),
    ],
)
def test_usage_errors_are_one_line(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    args: list[str],
    extra_env: dict[str, str],
    message: str,
) -> None:
    """Missing cluster ID, conflicting session flags and a bad role ARN: one line, exit 1."""
    keys = {"AWS_ACCESS_KEY_ID": "AKIAUNUSED", "AWS_SECRET_ACCESS_KEY": "unused"}
    done = run_authd(args, client_env | keys | extra_env)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", message)


def test_no_credentials_names_the_sources_tried(
    run_authd: RunAuthd, client_env: dict[str, str]
) -> None:
    """With no credentials anywhere the error says so and lists the sources tried."""
    done = run_authd(["token", "-i", CLUSTER], client_env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(
        'could not get token: no AWS credentials found (profile "default"; tried: '
    )
    for source in (
        "environment variables",
        "shared credentials file",
        "SSO",
        "EC2 instance metadata",
    ):
        assert source in done.stderr


def test_sts_refusing_assume_role_is_one_line(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    iam_role: IamRole,
    sts_front: StsFront,
) -> None:
    """STS answering AccessDenied to AssumeRole gives one clear line and exit 1."""
    with sts_front.refusing("AssumeRole", code="AccessDenied", message="not allowed here"):
        done = run_authd(["token", "-i", CLUSTER, "-r", iam_role.arn], client_env | iam_user.env())
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"could not get token: STS refused to assume role {iam_role.arn}: "
        "AccessDenied: not allowed here\n"
    )


def test_unreachable_sts_for_assume_role_is_one_line(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser, iam_role: IamRole
) -> None:
    """A connection failure during AssumeRole is reported on one line, without a traceback."""
    env = client_env | iam_user.env() | {"AWS_ENDPOINT_URL_STS": "http://127.0.0.1:9"}
    done = run_authd(["token", "-i", CLUSTER, "-r", iam_role.arn], env | {"AWS_MAX_ATTEMPTS": "1"})
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"could not get token: cannot assume role {iam_role.arn}: ")
    assert "Traceback" not in done.stderr


def test_precedence_flag_env_config(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser, tmp_path: Path
) -> None:
    """Cluster ID and region come from flag, then env, then the config file (keys any case)."""
    config = tmp_path / "authd.yaml"
    config.write_text("ClusterID: from-config\nREGION: eu-west-1\ntokenOnly: true\n")
    env = client_env | iam_user.env()
    del env["AWS_ENDPOINT_URL_STS"]

    def credential_scope(args: list[str], extra: dict[str, str]) -> tuple[str, str]:
        done = run_authd(["token", "-c", str(config), *args], env | extra)
        assert done.returncode == 0, done.stderr
        url = decode_token(done.stdout.strip())  # tokenOnly from the config file
        return urlsplit(url).netloc, dict(parse_qsl(urlsplit(url).query))["X-Amz-Credential"]

    host, _ = credential_scope([], {})
    assert host == "sts.eu-west-1.amazonaws.com"  # config region beats AWS_REGION
    host, _ = credential_scope(["--region", "ap-south-1"], {})
    assert host == "sts.ap-south-1.amazonaws.com"
    # The cluster ID is only in the signature: check which one STS accepts.
    env["AWS_ENDPOINT_URL_STS"] = client_env["AWS_ENDPOINT_URL_STS"]
    for args, extra, expected in (
        ([], {}, "from-config"),
        ([], {"KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID": "from-env"}, "from-env"),
        (["-i", "from-flag"], {"KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID": "from-env"}, "from-flag"),
    ):
        done = run_authd(["token", "-c", str(config), *args], env | extra)
        assert done.returncode == 0, done.stderr
        assert caller_identity(done.stdout.strip(), expected).status == 200
        assert caller_identity(done.stdout.strip(), "someone-else").status == 403


def test_bad_config_file_is_one_line(
    run_authd: RunAuthd, client_env: dict[str, str], tmp_path: Path
) -> None:
    """A config file that does not parse is named with its line, exit 1."""
    config = tmp_path / "bad.yaml"
    config.write_text("clusterID: [unclosed\n")
    done = run_authd(["token", "-c", str(config)], client_env)
    assert done.returncode == 1
    assert done.stderr.startswith(f'Error: Can\'t read configuration file "{config}": {config}:1: ')
    assert done.stderr.count("\n") == 1


def test_wrong_type_in_config_names_file_line_and_key(
    run_authd: RunAuthd, client_env: dict[str, str], tmp_path: Path
) -> None:
    """A config value of the wrong type is refused with the file, line and key, exit 1."""
    config = tmp_path / "authd.yaml"
    config.write_text("clusterID: c\ntokenOnly: maybe\n")
    done = run_authd(["token", "-c", str(config)], client_env)
    assert done.returncode == 1
    assert done.stderr == (f'Error: {config}:2: tokenOnly: expected true or false, got "maybe"\n')


def test_cluster_id_means_the_same_to_token_and_server(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser, tmp_path: Path
) -> None:
    """An unquoted `clusterID: 0123` is cluster `123` for `authd token` and for the server."""
    config = tmp_path / "authd.yaml"
    config.write_text("clusterID: 0123\ntokenOnly: true\n")
    server = ServerSettings.resolve(flags={}, env={}, file=FileConfig.from_file(config))
    assert server.cluster_id == "123"
    done = run_authd(["token", "-c", str(config)], client_env | iam_user.env())
    assert done.returncode == 0, done.stderr
    assert caller_identity(done.stdout.strip(), server.cluster_id).status == 200
    assert caller_identity(done.stdout.strip(), "83").status == 403  # not YAML 1.1's octal


def test_aws_iam_authenticator_entry_point(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """The `aws-iam-authenticator` command is the same program."""
    done = run_authd(
        ["token", "-i", CLUSTER, "--token-only"],
        client_env | iam_user.env(),
        program="aws-iam-authenticator",
    )
    assert done.returncode == 0, done.stderr
    assert caller_identity(done.stdout.strip(), CLUSTER).arn == iam_user.arn
